// The operator's HTTP endpoints on --metrics_address (127.0.0.1:9333 by
// default): / (the status page, status_page.h), /metrics (Prometheus text, names as promtool wants them),
// /healthz (the liveness/readiness probe), and read-only JSON:
//   /api/v1/status                 GetStatusResponse
//   /api/v1/mappings[?owner_kind=K&owner_id=ID]  ListMappingsResponse
//   /api/v1/leases                 the NAT-PMP, PCP and UPnP leases
// in the gRPC API's JSON mapping with its proto field names (what
// `fabricctl --json` prints). Every read comes from the core's latest
// snapshot and never waits for a write.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/core.h"
#include "agent/http_server.h"
#include "agent/metrics.h"
#include "nat/conntrack/traffic.h"

namespace fabric::agent {

// The connections the kernel counted on mapping `m`'s elements.
uint64_t ConnectionsOf(const MappingRecord& m, const std::map<nat::DnatElement, uint64_t>& counts);

// The traffic conntrack accounted to mapping `m`'s translations: keys of
// its protocol and host ports, on its host address (or any), whose replies
// came from its target. With `used`, the keys counted are added to it.
nat::Traffic TrafficOf(const MappingRecord& m, const nat::TrafficTable& table,
                       std::set<nat::FlowKey>* used = nullptr);

// One read of the traffic table, and the traffic of each mapping of a
// snapshot. Forgets the ended totals of keys no mapping of the snapshot
// covers any more (read() may be called with every mapping's traffic).
struct MappingTraffic {
  nat::TrafficTable table;
  // Computes TrafficOf for `m`.
  nat::Traffic Of(const MappingRecord& m) const { return TrafficOf(m, table); }
};
absl::StatusOr<MappingTraffic> ReadTraffic(nat::TrafficAccounting* accounting,
                                           const Snapshot& snap);

// nat_mapping_connections_total (and, with traffic,
// nat_mapping_bytes_total), one series per mapping.
std::string PerMappingSeries(const Snapshot& snap,
                             const std::map<nat::DnatElement, uint64_t>& counts,
                             const MappingTraffic* traffic = nullptr);

// `frontends`: what the status page lists under Front-ends. With
// `per_mapping` (--metrics_per_mapping), /metrics also has one
// nat_mapping_connections_total series per mapping (a kernel read per
// scrape).
// `traffic` (may be null: --conntrack_accounting off or unavailable) adds
// bytes, packets and open connections per mapping to the status page and
// /api/v1/mappings.
std::map<std::string, HttpServer::Handler> OperatorHandlers(
    AgentCore* core, Metrics* metrics, std::function<std::vector<std::string>()> frontends,
    bool per_mapping = false, nat::TrafficAccounting* traffic = nullptr);

}  // namespace fabric::agent
