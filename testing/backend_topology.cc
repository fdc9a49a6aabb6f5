#include "testing/backend_topology.h"

namespace fabric::testing {

absl::StatusOr<BackendTopology> MakeBackendTopology() {
  BackendTopology t;
  absl::StatusOr<std::unique_ptr<Netns>> host = Netns::Create("host");
  absl::StatusOr<std::unique_ptr<Netns>> outside = Netns::Create("out");
  absl::StatusOr<std::unique_ptr<Netns>> container = Netns::Create("ctr");
  for (const auto* ns : {&host, &outside, &container}) {
    if (!ns->ok()) return ns->status();
  }
  t.host = std::move(*host);
  t.outside = std::move(*outside);
  t.container = std::move(*container);
  absl::Status s = Link(*t.host, "wan0", "192.0.2.1/24 192.0.2.10/24 2001:db8::1/64",
                        *t.outside, "eth0", "192.0.2.2/24 2001:db8::2/64");
  if (s.ok()) {
    s = Link(*t.host, "ctr0", "10.99.0.1/24 fd00:99::1/64", *t.container, "eth0",
             "10.99.0.2/24 fd00:99::2/64");
  }
  if (s.ok()) {
    s = t.container
            ->Exec("ip route add default via 10.99.0.1 && ip -6 route add default via fd00:99::1")
            .status();
  }
  if (s.ok()) {
    s = t.host->Exec("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1").status();
  }
  if (!s.ok()) return s;
  return t;
}

nat::DnatElement Dnat(nat::Protocol proto, std::optional<nat::IpAddress> host_ip,
                      uint16_t host_port, const char* target, uint16_t target_port) {
  nat::PortMapping m;
  m.protocol = proto;
  m.host_ip = host_ip;
  m.host_port = host_port;
  m.target_ip = *nat::IpAddress::Parse(target);
  m.target_port = target_port;
  return m.ToElements().front();
}

}  // namespace fabric::testing
