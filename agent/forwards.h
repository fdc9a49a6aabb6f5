// The static forwards file (--forwards_file), JSON:
//   {"forwards": [
//      {"name": "web", "protocol": "tcp", "host_ip": "", "host_port": 8080,
//       "target": "192.168.1.100:80"},
//      {"name": "games", "protocol": "udp", "host_port": "27015-27020",
//       "target": "192.168.1.50:27015-27020"}]}
// name: 1-64 of [A-Za-z0-9._-], unique. protocol: tcp, udp or sctp.
// host_ip: empty or absent for every local address, else an address of the
// target's family. host_port: a port or "lo-hi"; the target's ports, when a
// range, must be as many. At most 4,096 forwards and 1 MiB. Parsing is all
// or nothing: an error names the file, the entry and the field.
//
// (SNAT entries and IPv6-to-IPv4 forwards are not served yet: a file that
// asks for them is refused, saying so.)
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/owners/statics.h"

namespace fabric::agent {

inline constexpr size_t kMaxForwardsFile = 1 << 20;
inline constexpr size_t kMaxForwards = 4096;

// `text` as the file at `path` (for messages). kInvalidArgument naming the
// entry and field.
absl::StatusOr<std::vector<StaticForward>> ParseForwards(absl::string_view text,
                                                         const std::string& path);
// Reads and parses `path`. kNotFound when it does not exist.
absl::StatusOr<std::vector<StaticForward>> LoadForwardsFile(const std::string& path);

}  // namespace fabric::agent
