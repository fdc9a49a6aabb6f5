// The status page at / on the metrics address: one self-contained HTML
// document (no scripts, no external assets; a Content-Security-Policy that
// allows neither), refreshed by the browser every few seconds, rendered from
// one snapshot of the core: readiness, backend, uptime, WAN address and
// counts, the mappings (owner, protocol, host address and port, target,
// expiry, connections, bytes, description), the attachments, the IPv6 pinholes, the recent
// repairs and what they restored, and the front-ends. Every string is
// escaped (agent/markup.h): ids, descriptions and owner ids come from
// clients.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/core/snapshot.h"
#include "nat/conntrack/traffic.h"
#include "fabric/nat/v1/nat.pb.h"

namespace fabric::agent {

struct StatusPageInputs {
  v1::GetStatusResponse status;
  std::shared_ptr<const Snapshot> snapshot;
  std::vector<std::pair<absl::Time, std::string>> repairs;  // newest first
  std::vector<std::string> frontends;  // "NAT-PMP and PCP on udp 5351, LAN lan0"
  // Other tables' forward chains that drop DNAT'd connections.
  std::vector<std::string> forward_drops;
  absl::Time now;
  // Connections per DNAT element (Backend's element counters); empty: not
  // read, and the column shows "-".
  std::optional<std::map<nat::DnatElement, uint64_t>> connections;
  // Conntrack accounting's table (operator_http.h: TrafficOf); empty: off,
  // and the bytes column shows "-".
  std::optional<nat::TrafficTable> traffic;
  // --upstream: a mapping's state on the LAN's gateway; unset: none.
  std::function<std::string(const v1::PortMapping&)> upstream;
  size_t max_rows = 1000;  // per table; the rest is counted, and in /api/v1
  int refresh_seconds = 5;
};

std::string RenderStatusPage(const StatusPageInputs& in);

}  // namespace fabric::agent
