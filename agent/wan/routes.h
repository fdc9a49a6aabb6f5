// The IPv4 default routes of a network namespace, as the kernel lists them
// in /proc/<thread>/net/route: the one parser behind both the WAN interface
// the agent follows (address_watcher.h: DefaultRouteInterface) and the
// gateway the upstream client asks (agent/upstream/gateway.h). Pure parsing
// plus one file read; thread-safe. The file is the calling thread's
// (/proc/thread-self), so a thread that entered another network namespace
// sees that namespace's routes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::agent::wan {

inline constexpr char kRouteFile[] = "/proc/thread-self/net/route";

struct DefaultRoute {
  std::string interface;
  std::array<uint8_t, 4> gateway{};  // 0.0.0.0: none (a route straight out of the interface)
  bool via_gateway = false;          // RTF_GATEWAY
  uint32_t metric = 0;
};

// The routes of `table` (the text of a route file) to 0.0.0.0/0 that are up,
// in file order. kInvalidArgument naming a line that is not
// "Iface Destination Gateway Flags RefCnt Use Metric Mask ...".
absl::StatusOr<std::vector<DefaultRoute>> ParseDefaultRoutes(absl::string_view table);

// Reads `path` and parses it. kUnavailable when it cannot be read.
absl::StatusOr<std::vector<DefaultRoute>> ReadDefaultRoutes(const std::string& path = kRouteFile);

}  // namespace fabric::agent::wan
