#include "agent/operator_http.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"
#include "agent/owner_kind.h"
#include "agent/status_page.h"
#include "google/protobuf/util/json_util.h"

namespace fabric::agent {

namespace {

using Response = HttpServer::Response;

Response Json(const google::protobuf::Message& m) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(m, &text, o).ok()) {
    return {500, "application/json", "{\"error\":\"cannot encode the answer\"}\n", {}};
  }
  return {200, "application/json", text + "\n", {}};
}

Response JsonError(int code, const std::string& message) {
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) escaped += c;
  }
  return {code, "application/json", absl::StrCat("{\"error\":\"", escaped, "\"}\n"), {}};
}

// "upnp", "UPNP" or "OWNER_KIND_UPNP".
bool ParseKind(const std::string& text, v1::OwnerKind* kind) {
  std::string t = absl::AsciiStrToLower(text);
  if (absl::StartsWith(t, "owner_kind_")) t = t.substr(11);
  for (v1::OwnerKind k : kOwnerKinds) {
    if (t == OwnerKindName(k)) {
      *kind = k;
      return true;
    }
  }
  return false;
}

Response Mappings(AgentCore* core, nat::TrafficAccounting* accounting,
                  const HttpServer::Request& r) {
  v1::OwnerKind kind = v1::OWNER_KIND_UNSPECIFIED;
  std::string owner_id, page_token;
  int page_size = 0;
  for (const auto& [name, value] : r.query) {
    if (name == "owner_kind") {
      if (!ParseKind(value, &kind)) {
        return JsonError(400, absl::StrCat("owner_kind must be one of cni, natpmp, pcp, upnp, "
                                           "api; not ", value.substr(0, 64)));
      }
    } else if (name == "owner_id") {
      owner_id = value;
    } else if (name == "page_size") {
      if (!absl::SimpleAtoi(value, &page_size)) {
        return JsonError(400, absl::StrCat("page_size must be a number, not ", value.substr(0, 64)));
      }
    } else if (name == "page_token") {
      page_token = value;
    } else {
      return JsonError(400, absl::StrCat("unknown parameter ", name.substr(0, 64),
                                         " (owner_kind, owner_id, page_size, page_token)"));
    }
  }
  if (!owner_id.empty() && kind == v1::OWNER_KIND_UNSPECIFIED) {
    return JsonError(400, "owner_id needs owner_kind");
  }
  v1::ListMappingsResponse out;
  absl::StatusOr<std::map<nat::DnatElement, uint64_t>> counts = core->MappingConnections();
  std::shared_ptr<const Snapshot> snap = core->snapshot();
  std::optional<MappingTraffic> traffic;
  if (accounting != nullptr) {
    if (absl::StatusOr<MappingTraffic> t = ReadTraffic(accounting, *snap); t.ok()) {
      traffic = *std::move(t);
    }
  }
  absl::StatusOr<AgentCore::Page> page =
      core->ListMappingsPage(kind, owner_id, page_size, page_token);
  if (!page.ok()) return JsonError(400, std::string(page.status().message()));
  out.set_next_page_token(page->next_page_token);
  for (v1::PortMapping& m : page->mappings) {
    if (const MappingRecord* rec = snap->state.mappings.Find(m.id())) {
      if (counts.ok()) m.set_connections(ConnectionsOf(*rec, *counts));
      if (traffic.has_value()) {
        nat::Traffic t = traffic->Of(*rec);
        m.set_bytes(t.bytes);
        m.set_packets(t.packets);
        m.set_open_connections(t.open);
      }
    }
    *out.add_mappings() = std::move(m);
  }
  return Json(out);
}

// A label value in the text exposition format: \\, \" and \n escaped.
std::string Label(absl::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

std::string PerMappingSeries(const Snapshot& snap,
                             const std::map<nat::DnatElement, uint64_t>& counts,
                             const MappingTraffic* traffic) {
  auto sorted = snap.state.mappings.Sorted();
  auto labels = [](const std::string& id, const MappingRecord& rec) {
    return absl::StrCat("{id=\"", Label(id), "\",owner=\"", OwnerKindName(rec.owner().kind()),
                        "\",owner_id=\"", Label(rec.owner().id()), "\"} ");
  };
  std::string out =
      "# HELP nat_mapping_connections_total Connections each mapping translated (since its "
      "rule was laid).\n# TYPE nat_mapping_connections_total counter\n";
  for (const auto& [id, rec] : sorted) {
    absl::StrAppend(&out, "nat_mapping_connections_total", labels(id, *rec),
                    ConnectionsOf(*rec, counts), "\n");
  }
  if (traffic != nullptr) {
    absl::StrAppend(&out,
                    "# HELP nat_mapping_bytes_total Bytes (both directions) of each mapping's "
                    "connections, open or ended since the agent started (conntrack "
                    "accounting).\n# TYPE nat_mapping_bytes_total counter\n");
    for (const auto& [id, rec] : sorted) {
      absl::StrAppend(&out, "nat_mapping_bytes_total", labels(id, *rec),
                      traffic->Of(*rec).bytes, "\n");
    }
  }
  return out;
}

nat::Traffic TrafficOf(const MappingRecord& m, const nat::TrafficTable& table,
                       std::set<nat::FlowKey>* used) {
  nat::Traffic sum;
  const uint8_t proto = static_cast<uint8_t>(m.nat.protocol);
  for (const nat::DnatElement& e : m.nat.ToElements()) {
    for (uint32_t p = e.port_lo; p <= e.port_hi; ++p) {
      const uint16_t target_port = e.is_range() ? static_cast<uint16_t>(p) : e.target_port;
      // Keys are ordered by family, protocol and port first; the default
      // address sorts before every other.
      for (auto it = table.lower_bound({e.family, proto, static_cast<uint16_t>(p), {}, {}, 0});
           it != table.end() && it->first.family == e.family && it->first.l4proto == proto &&
           it->first.dst_port == p;
           ++it) {
        const nat::FlowKey& k = it->first;
        if (k.target != e.target_ip || k.target_port != target_port) continue;
        if (e.host_ip.has_value() && k.dst != *e.host_ip) continue;
        sum += it->second;
        if (used != nullptr) used->insert(k);
      }
    }
  }
  return sum;
}

absl::StatusOr<MappingTraffic> ReadTraffic(nat::TrafficAccounting* accounting,
                                           const Snapshot& snap) {
  absl::StatusOr<nat::TrafficTable> table = accounting->Read();
  if (!table.ok()) return table.status();
  std::set<nat::FlowKey> used;
  snap.state.mappings.ForEach(
      [&](const std::string&, const MappingRecord& m) { TrafficOf(m, *table, &used); });
  // Keys this read saw that no mapping covers belong to mappings that
  // went; keys that arrived since the read are left for the next one.
  accounting->Retain(
      [&](const nat::FlowKey& k) { return used.count(k) > 0 || table->count(k) == 0; });
  return MappingTraffic{*std::move(table)};
}

uint64_t ConnectionsOf(const MappingRecord& m, const std::map<nat::DnatElement, uint64_t>& counts) {
  uint64_t n = 0;
  for (const nat::DnatElement& e : m.nat.ToElements()) {
    auto it = counts.find(e);
    if (it != counts.end()) n += it->second;
  }
  return n;
}

std::map<std::string, HttpServer::Handler> OperatorHandlers(
    AgentCore* core, Metrics* metrics, std::function<std::vector<std::string>()> frontends,
    bool per_mapping, nat::TrafficAccounting* traffic) {
  std::map<std::string, HttpServer::Handler> h;
  h["/"] = [core, metrics, frontends, traffic](const HttpServer::Request&) {
    StatusPageInputs in;
    in.status = core->Status();
    in.snapshot = core->snapshot();
    in.repairs = metrics->RecentRepairs();
    in.frontends = frontends();
    if (auto drops = core->ForwardDropChains(); drops.ok()) in.forward_drops = *std::move(drops);
    in.now = absl::Now();
    in.upstream = [core](const v1::PortMapping& m) { return core->UpstreamOf(m); };
    // Per-mapping counts cost a whole kernel read: only for tables a page
    // can show.
    if (in.snapshot->state.mappings.size() <= in.max_rows) {
      absl::StatusOr<std::map<nat::DnatElement, uint64_t>> c = core->MappingConnections();
      if (c.ok()) in.connections = *std::move(c);
      if (traffic != nullptr) {
        if (absl::StatusOr<MappingTraffic> t = ReadTraffic(traffic, *in.snapshot); t.ok()) {
          in.traffic = std::move(t->table);
        }
      }
    }
    Response r{200, "text/html; charset=utf-8", RenderStatusPage(in), {}};
    // Nothing on the page may run or load: ids and descriptions come from
    // clients.
    r.headers.emplace_back("Content-Security-Policy",
                           "default-src 'none'; style-src 'unsafe-inline'");
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    return r;
  };
  h["/metrics"] = [core, metrics, per_mapping, traffic](const HttpServer::Request&) {
    std::shared_ptr<const Snapshot> snap = core->snapshot();
    std::map<v1::OwnerKind, size_t> counts;
    snap->state.mappings.ForEach(
        [&](const std::string&, const MappingRecord& m) { ++counts[m.owner().kind()]; });
    std::vector<std::pair<std::string, size_t>> by_owner;
    for (v1::OwnerKind k : kOwnerKinds) by_owner.emplace_back(OwnerKindName(k), counts[k]);
    absl::StatusOr<std::map<std::string, uint64_t>> connections = core->ConnectionCounts();
    std::string text = metrics->Render(core->Desired(), by_owner,
                                       connections.ok() ? &*connections : nullptr);
    if (absl::StatusOr<std::vector<std::string>> drops = core->ForwardDropChains(); drops.ok()) {
      absl::StrAppend(&text,
                      "# HELP nat_forward_drop_chains Other tables' forward chains that drop "
                      "DNAT'd connections (see fabricctl diagnose).\n"
                      "# TYPE nat_forward_drop_chains gauge\n"
                      "nat_forward_drop_chains ",
                      drops->size(), "\n");
    }
    if (traffic != nullptr) {
      absl::StrAppend(&text,
                      "# HELP nat_conntrack_events_lost_total Conntrack destroy-event overruns "
                      "(bytes of the connections they carried are missing from the per-mapping "
                      "counts).\n# TYPE nat_conntrack_events_lost_total counter\n"
                      "nat_conntrack_events_lost_total ",
                      traffic->lost_events(), "\n");
    }
    if (per_mapping) {
      absl::StatusOr<std::map<nat::DnatElement, uint64_t>> counts = core->MappingConnections();
      std::optional<MappingTraffic> t;
      if (traffic != nullptr) {
        if (absl::StatusOr<MappingTraffic> r = ReadTraffic(traffic, *snap); r.ok()) {
          t = *std::move(r);
        }
      }
      if (counts.ok()) text += PerMappingSeries(*snap, *counts, t.has_value() ? &*t : nullptr);
    }
    return Response{200, "text/plain; version=0.0.4", std::move(text), {}};
  };
  h["/healthz"] = [core](const HttpServer::Request&) {
    v1::GetStatusResponse st = core->Status();
    return st.ready() ? Response{200, "text/plain", "ok\n", {}}
                      : Response{503, "text/plain", absl::StrCat(st.reason(), "\n"), {}};
  };
  h["/api/v1/status"] = [core](const HttpServer::Request&) { return Json(core->Status()); };
  h["/api/v1/mappings"] = [core, traffic](const HttpServer::Request& r) {
    return Mappings(core, traffic, r);
  };
  h["/api/v1/leases"] = [core](const HttpServer::Request& r) {
    if (!r.query.empty()) return JsonError(400, "/api/v1/leases takes no parameters");
    v1::ListMappingsResponse out;
    for (v1::PortMapping& m : core->ListMappings(v1::OWNER_KIND_UNSPECIFIED, "")) {
      if (IsLease(m)) *out.add_mappings() = std::move(m);
    }
    return Json(out);
  };
  return h;
}

}  // namespace fabric::agent
