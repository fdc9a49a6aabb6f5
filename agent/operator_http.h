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
#include <string>
#include <vector>

#include "agent/core.h"
#include "agent/http_server.h"
#include "agent/metrics.h"

namespace fabric::agent {

// The connections the kernel counted on mapping `m`'s elements.
uint64_t ConnectionsOf(const MappingRecord& m, const std::map<nat::DnatElement, uint64_t>& counts);

// nat_mapping_connections_total, one series per mapping.
std::string PerMappingSeries(const Snapshot& snap,
                             const std::map<nat::DnatElement, uint64_t>& counts);

// `frontends`: what the status page lists under Front-ends. With
// `per_mapping` (--metrics_per_mapping), /metrics also has one
// nat_mapping_connections_total series per mapping (a kernel read per
// scrape).
std::map<std::string, HttpServer::Handler> OperatorHandlers(
    AgentCore* core, Metrics* metrics, std::function<std::vector<std::string>()> frontends,
    bool per_mapping = false);

}  // namespace fabric::agent
