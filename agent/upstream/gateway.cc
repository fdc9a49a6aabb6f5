#include "agent/upstream/gateway.h"

#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/wan/routes.h"

namespace fabric::agent::upstream {

namespace {

// The lowest-metric default route's gateway.
absl::StatusOr<Ipv4> PickGateway(const std::vector<wan::DefaultRoute>& routes) {
  std::optional<Ipv4> best;
  uint32_t best_metric = 0;
  bool tie = false;
  for (const wan::DefaultRoute& r : routes) {
    if (!r.via_gateway || r.gateway == Ipv4{}) continue;
    if (!best || r.metric < best_metric) {
      best = r.gateway;
      best_metric = r.metric;
      tie = false;
    } else if (r.metric == best_metric && r.gateway != *best) {
      tie = true;
    }
  }
  if (!best) {
    return absl::NotFoundError("no IPv4 default route via a gateway in this network namespace "
                               "(give the gateway explicitly: --gateway IP)");
  }
  if (tie) {
    return absl::FailedPreconditionError(
        absl::StrCat("several IPv4 default routes with metric ", best_metric,
                     " via different gateways; give one explicitly (--gateway IP)"));
  }
  return *best;
}

}  // namespace

absl::StatusOr<Ipv4> ParseDefaultGateway(absl::string_view table) {
  absl::StatusOr<std::vector<wan::DefaultRoute>> routes = wan::ParseDefaultRoutes(table);
  if (!routes.ok()) return routes.status();
  return PickGateway(*routes);
}

absl::StatusOr<Ipv4> DefaultGateway(const std::string& path) {
  absl::StatusOr<std::vector<wan::DefaultRoute>> routes = wan::ReadDefaultRoutes(path);
  if (!routes.ok()) {
    return absl::Status(routes.status().code(),
                        absl::StrCat(routes.status().message(),
                                     " (give the gateway explicitly: --gateway IP)"));
  }
  return PickGateway(*routes);
}

}  // namespace fabric::agent::upstream
