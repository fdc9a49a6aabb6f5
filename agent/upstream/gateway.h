// Finding the LAN's gateway: the next hop of this network namespace's IPv4
// default route, as the kernel lists it in /proc/<thread>/net/route
// (parsed by agent/wan/routes.h).
// Used by clients.cc (when no gateway is given) and fabricctl's upstream
// commands. Pure parsing plus one file read; thread-safe. The file is the
// calling thread's (/proc/thread-self), so a thread that entered another
// network namespace sees that namespace's routes.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/upstream/types.h"
#include "agent/wan/routes.h"

namespace fabric::agent::upstream {

using wan::kRouteFile;

// The gateway of the default route in `table` (the text of a
// /proc/net/route file). Several default routes: the lowest metric; two
// with different gateways at the same metric is kFailedPrecondition (pass
// the gateway explicitly). None: kNotFound. A malformed file:
// kInvalidArgument naming the line.
absl::StatusOr<Ipv4> ParseDefaultGateway(absl::string_view table);

// Reads `path` and parses it.
absl::StatusOr<Ipv4> DefaultGateway(const std::string& path = kRouteFile);

}  // namespace fabric::agent::upstream
