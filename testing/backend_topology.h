// The three-namespace topology the backend kernel tests share, and a
// helper to make DNAT elements:
//
//   outside   eth0 192.0.2.2/24 2001:db8::2/64
//      |
//   host      wan0 192.0.2.1/24 192.0.2.10/24 2001:db8::1/64   (rules go here)
//             ctr0 10.99.0.1/24 fd00:99::1/64
//      |
//   container eth0 10.99.0.2/24 fd00:99::2/64 (default routes via host)
//
// The outside has no route to the container network: only DNAT (and
// conntrack's reverse translation) gets packets there and back.
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "nat/types.h"
#include "testing/netns.h"

namespace fabric::testing {

struct BackendTopology {
  std::unique_ptr<Netns> host, outside, container;
};

absl::StatusOr<BackendTopology> MakeBackendTopology();

// The (first) element of a mapping host_port -> target:target_port.
nat::DnatElement Dnat(nat::Protocol proto, std::optional<nat::IpAddress> host_ip,
                      uint16_t host_port, const char* target, uint16_t target_port);

}  // namespace fabric::testing
