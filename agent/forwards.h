// The static forwards file (--forwards_file), JSON:
//   {"forwards": [
//      {"name": "web", "protocol": "tcp", "host_ip": "", "host_port": 8080,
//       "target": "192.168.1.100:80"},
//      {"name": "games", "protocol": "udp", "host_port": "27015-27020",
//       "target": "192.168.1.50:27015-27020"}]}
// name: 1-64 of [A-Za-z0-9._-], unique. protocol: tcp, udp or sctp.
// host_ip: empty or absent for every local address, else an address of the
// target's family (or IPv6 for an IPv4 target, below). host_port: a port or "lo-hi"; the target's ports, when a
// range, must be as many. At most 4,096 forwards and 1 MiB. Parsing is all
// or nothing: an error names the file, the entry and the field.
//
// Fixed-address SNAT, beside "forwards":
//   "snat": [{"source": "10.20.0.0/24", "to": "203.0.113.5", "out_interface": "wan0"}]
// New connections from `source` (a network, host bits clear, not /0)
// leaving through `out_interface` to a destination outside `source` get
// source address `to` (a unicast address of the source's family), before
// any masquerade. out_interface absent: the agent's --wan_interface when it
// has one, else any interface; "" says any interface explicitly. At most
// 256 entries (nat::kMaxSnatRules); one source and interface at most once.
//
// IPv6 clients to IPv4 hosts: an IPv6 host_ip ("2001:db8::1", or "::" for
// every IPv6 address) with an IPv4 target, TCP or UDP, is served by the
// in-agent proxy (StaticForward::proxy; agent/proxy), since the kernel
// cannot NAT between families. The reverse (IPv4 host, IPv6 target) is
// refused.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/owners/statics.h"

namespace fabric::agent {

inline constexpr size_t kMaxForwardsFile = 1 << 20;
inline constexpr size_t kMaxForwards = 4096;

struct ForwardsOptions {
  // The out_interface of a SNAT entry that names none (--wan_interface);
  // empty: any interface.
  std::string default_out_interface;
};

// `text` as the file at `path` (for messages). kInvalidArgument naming the
// entry and field.
absl::StatusOr<StaticConfig> ParseForwards(absl::string_view text, const std::string& path,
                                           const ForwardsOptions& options = {});
// Reads and parses `path`. kNotFound when it does not exist.
absl::StatusOr<StaticConfig> LoadForwardsFile(const std::string& path,
                                              const ForwardsOptions& options = {});

}  // namespace fabric::agent
