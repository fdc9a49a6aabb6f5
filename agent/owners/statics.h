// Static port forwards (--forwards_file, agent/forwards.h): mappings of
// owner kind static, owner id the forward's name, held through the same
// allocator as everything else (a conflict names the holder). The file is
// the truth: ApplyStaticForwards makes the static mappings exactly the
// file's in one transaction (unchanged forwards are kept as they are, with
// their ids; changed ones are replaced; the rest removed), or changes
// nothing. The file's SNAT rules go with them (StaticConfig).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "agent/core/txn.h"
#include "agent/proxy/proxy.h"
#include "nat/conntrack/conntrack.h"
#include "nat/types.h"

namespace fabric::agent {

struct StaticForward {
  std::string name;
  nat::PortMapping mapping;  // host_ip nullopt: every local address
  // An IPv6 host side (mapping.host_ip, :: for every IPv6 address) for an
  // IPv4 target: the kernel cannot NAT between families, so the in-agent
  // proxy (agent/proxy) serves it instead of a DNAT rule.
  bool proxy = false;
};

// Everything the file asks for: port forwards, and fixed-address SNAT
// rules (a router's static public address for its LAN networks).
struct StaticConfig {
  std::vector<StaticForward> forwards;
  std::vector<nat::SnatRule> snat;
};

struct StaticDiff {
  int added = 0, removed = 0, kept = 0;  // forwards, proxied ones included
  int snat_added = 0, snat_removed = 0;
  int proxied = 0;  // of the forwards now, those the proxy serves
  bool proxy_changed = false;  // a proxied forward was added or removed
};

namespace owners {

// The static SNAT rules become exactly `wanted.snat` in the same
// transaction. They are kernel state only, not stored: the file is their
// truth, and the agent applies it again at every start (State::static_snat).
//
// Proxied forwards (StaticForward::proxy) hold their IPv6 ports in the
// allocator like any mapping and have their listeners bound by `proxy`
// inside the transaction (a port in use fails all of it); they are served
// after the commit, and the removed ones closed then. Like the SNAT rules
// they are not stored (State::static_proxies): the file applies them again
// at start. kFailedPrecondition for a proxied forward without a proxy.
absl::StatusOr<StaticDiff> ApplyStaticForwards(Txn& txn, const StaticConfig& wanted,
                                               nat::ConntrackCleaner* conntrack,
                                               proxy::Proxy* proxy = nullptr);

}  // namespace owners
}  // namespace fabric::agent
