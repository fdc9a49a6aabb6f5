#include "agent/status_page.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/core/convert.h"
#include "agent/markup.h"
#include "agent/operator_http.h"
#include "agent/owner_kind.h"
#include "agent/version.h"

namespace fabric::agent {

namespace {

constexpr char kStyle[] =
    "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
    "text-align:left;font-family:monospace;white-space:nowrap}th{background:#eee}"
    ".ok{color:#070}.bad{color:#b00}.note{color:#666}";

std::string Td(absl::string_view text) { return absl::StrCat("<td>", MarkupEscape(text), "</td>"); }

std::string When(absl::Time t, absl::Time now) {
  return absl::StrCat(absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone()), " (",
                      absl::FormatDuration(absl::Trunc(t - now, absl::Seconds(1))), ")");
}

std::string HostPort(const std::string& ip, uint32_t port, uint32_t count) {
  bool v6 = ip.find(':') != std::string::npos;
  std::string host = ip.empty() ? "*" : v6 ? absl::StrCat("[", ip, "]") : ip;
  return count > 1 ? absl::StrCat(host, ":", port, "-", port + count - 1)
                   : absl::StrCat(host, ":", port);
}

// "999 B", "1.5 KiB", "12.0 MiB".
std::string Bytes(uint64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

// "… and N more" under a table that was cut.
std::string More(size_t shown, size_t total, absl::string_view api) {
  if (total <= shown) return "";
  return absl::StrCat("<p class=note>… and ", total - shown, " more: ", MarkupEscape(api),
                      "</p>");
}

}  // namespace

std::string RenderStatusPage(const StatusPageInputs& in) {
  const v1::GetStatusResponse& st = in.status;
  const State& state = in.snapshot->state;
  std::string h = absl::StrCat(
      "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
      "<meta http-equiv=refresh content=",
      in.refresh_seconds, "><title>fabric-agent status</title><style>", kStyle,
      "</style></head><body><h1>fabric-agent ", MarkupEscape(kVersion), "</h1>");

  absl::Time started = FromTimestamp(st.started_at());
  absl::StrAppend(
      &h, "<table id=summary>",
      "<tr><th>ready</th><td class=", st.ready() ? "ok>yes" : "bad>no: ",
      st.ready() ? "" : MarkupEscape(st.reason()), "</td></tr>",
      "<tr><th>backend</th>", Td(st.backend()), "</tr>",
      "<tr><th>uptime</th>", Td(absl::FormatDuration(absl::Trunc(in.now - started, absl::Seconds(1)))),
      "</tr><tr><th>WAN address</th>",
      Td(state.external_address ? state.external_address->ToString() : "none"), "</tr>",
      "<tr><th>mappings</th>", Td(absl::StrCat(state.mappings.size())), "</tr>",
      "<tr><th>leases</th>", Td(absl::StrCat(state.leases_by_port.size())), "</tr>",
      "<tr><th>attachments</th>", Td(absl::StrCat(state.attachments.size())), "</tr>",
      "<tr><th>IPv6 pinholes</th>", Td(absl::StrCat(state.pinholes.size())), "</tr>",
      "<tr><th>repairs</th>", Td(absl::StrCat(st.repairs())), "</tr></table>");

  if (!in.forward_drops.empty()) {
    absl::StrAppend(&h, "<h2 class=bad>Forward chains that drop DNAT'd connections</h2>"
                        "<ul id=forward_drops>");
    for (const std::string& c : in.forward_drops) {
      absl::StrAppend(&h, "<li class=bad>", MarkupEscape(c),
                      ": published ports do not work through it; add <code>ct status dnat "
                      "accept</code> at its top</li>");
    }
    absl::StrAppend(&h, "</ul>");
  }
  absl::StrAppend(&h, "<h2>Front-ends</h2><ul id=frontends>");
  for (const std::string& f : in.frontends) absl::StrAppend(&h, "<li>", MarkupEscape(f), "</li>");
  if (in.frontends.empty()) absl::StrAppend(&h, "<li>the CNI plugin and the API only</li>");
  absl::StrAppend(&h, "</ul>");

  // Mappings, by id.
  absl::StrAppend(&h, "<h2>Mappings</h2><table id=mappings><tr><th>id</th><th>owner</th>"
                      "<th>owner id</th><th>proto</th><th>host</th><th>target</th>"
                      "<th>expires</th><th>connections</th><th>open</th><th>bytes</th>"
                      "<th>upstream</th><th>description</th></tr>");
  size_t shown = 0;
  // The first max_rows by id, without sorting all of them.
  for (const MappingRecord* rec :
       SelectMappings(state, v1::OWNER_KIND_UNSPECIFIED, "", "", in.max_rows)) {
    if (shown == in.max_rows) break;  // 0: none (SelectMappings' 0 is all)
    ++shown;
    const v1::PortMapping m = rec->ToProto();
    std::string protocol(nat::ProtocolName(rec->nat.protocol));
    absl::StrAppend(&h, "<tr>", Td(m.id()), Td(OwnerKindName(m.owner().kind())),
                    Td(m.owner().id()), Td(protocol),
                    Td(HostPort(m.host_ip(), m.host_port(), m.port_count())),
                    Td(HostPort(m.target_ip(), m.target_port(), m.port_count())),
                    Td(m.has_expires_at() ? When(FromTimestamp(m.expires_at()), in.now) : "-"),
                    Td(in.connections ? absl::StrCat(ConnectionsOf(*rec, *in.connections)) : "-"));
    if (in.traffic.has_value()) {
      nat::Traffic t = TrafficOf(*rec, *in.traffic);
      absl::StrAppend(&h, Td(absl::StrCat(t.open)), Td(Bytes(t.bytes)));
    } else {
      absl::StrAppend(&h, Td("-"), Td("-"));
    }
    absl::StrAppend(&h, Td(in.upstream ? in.upstream(m) : ""), Td(m.description()), "</tr>");
  }
  absl::StrAppend(&h, "</table>", More(shown, state.mappings.size(), "/api/v1/mappings"));

  absl::StrAppend(&h, "<h2>Attachments</h2><table id=attachments><tr><th>container</th>"
                      "<th>interface</th><th>network</th><th>addresses</th>"
                      "<th>mappings</th></tr>");
  shown = 0;
  for (const auto& [key, rec] : state.attachments.Sorted()) {
    if (shown == in.max_rows) break;
    ++shown;
    const v1::Attachment& a = rec->proto;
    absl::StrAppend(&h, "<tr>", Td(a.key().container_id()), Td(a.key().ifname()),
                    Td(a.key().network_name()),
                    Td(absl::StrJoin(a.container_addresses(), " ")),
                    Td(absl::StrCat(rec->mapping_ids.size())), "</tr>");
  }
  absl::StrAppend(&h, "</table>", More(shown, state.attachments.size(), "fabricctl list"));

  if (!state.firewall6_interface.empty()) {
    absl::StrAppend(&h, "<h2>IPv6 pinholes (firewall on ", MarkupEscape(state.firewall6_interface),
                    ")</h2><table id=pinholes><tr><th>id</th><th>internal</th><th>proto</th>"
                    "<th>remote</th><th>expires</th></tr>");
    for (const auto& [id, rec] : state.pinholes.Sorted()) {
      absl::StrAppend(&h, "<tr>", Td(absl::StrCat(rec->proto.unique_id())),
                      Td(HostPort(rec->proto.internal_client(), rec->proto.internal_port(), 1)),
                      Td(nat::ProtocolName(rec->nat.protocol)),
                      Td(rec->proto.remote_host().empty() ? "any" : rec->proto.remote_host()),
                      Td(When(FromTimestamp(rec->proto.expires_at()), in.now)), "</tr>");
    }
    absl::StrAppend(&h, "</table>");
  }

  absl::StrAppend(&h, "<h2>Recent repairs</h2><table id=repairs><tr><th>when</th>"
                      "<th>what</th></tr>");
  for (const auto& [when, what] : in.repairs) {
    absl::StrAppend(&h, "<tr>", Td(When(when, in.now)), Td(what), "</tr>");
  }
  absl::StrAppend(&h, "</table>");
  if (in.repairs.empty()) absl::StrAppend(&h, "<p class=note>none since the start</p>");
  absl::StrAppend(&h, "<p class=note>JSON: /api/v1/status, /api/v1/mappings, /api/v1/leases; "
                      "Prometheus: /metrics. Refreshes every ",
                  in.refresh_seconds, " s.</p></body></html>\n");
  return h;
}

}  // namespace fabric::agent
