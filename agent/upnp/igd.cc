#include "agent/upnp/igd.h"

#include <algorithm>
#include <fstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/markup.h"
#include "agent/owners/upnp.h"
#include "agent/upnp/description.h"
#include "agent/upnp/igd_reply.h"

namespace fabric::agent::upnp {

namespace internal {

absl::StatusOr<std::string> Required(const SoapCall& call, absl::string_view name) {
  const std::string* v = call.Argument(name);
  if (v == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, " is missing"));
  return *v;
}

absl::StatusOr<uint32_t> Unsigned(const SoapCall& call, absl::string_view name, uint32_t max) {
  absl::StatusOr<std::string> v = Required(call, name);
  if (!v.ok()) return v.status();
  absl::string_view text = absl::StripAsciiWhitespace(*v);
  uint32_t n = 0;
  if (text.empty() || text.size() > 10 ||
      text.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(text, &n) || n > max) {
    return absl::InvalidArgumentError(absl::StrCat(name, " is not a number 0-", max));
  }
  return n;
}

}  // namespace internal

namespace {

using internal::Fault;
using internal::Ok;
using internal::Out;
using internal::Required;
using internal::Unsigned;
using Reply = IgdControl::Reply;

constexpr size_t kMaxDescription = 256;
constexpr int kDefaultListSize = 1000;

absl::StatusOr<uint16_t> Port(const SoapCall& call, absl::string_view name) {
  absl::StatusOr<uint32_t> n = Unsigned(call, name, 65535);
  if (!n.ok()) return n.status();
  return static_cast<uint16_t>(*n);
}

absl::StatusOr<nat::Protocol> ProtocolArg(const SoapCall& call) {
  absl::StatusOr<std::string> v = Required(call, "NewProtocol");
  if (!v.ok()) return v.status();
  std::string p = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(*v));
  if (p == "TCP") return nat::Protocol::kTcp;
  if (p == "UDP") return nat::Protocol::kUdp;
  return absl::InvalidArgumentError(absl::StrCat("NewProtocol must be TCP or UDP, not ", *v));
}

absl::StatusOr<bool> Boolean(const SoapCall& call, absl::string_view name) {
  absl::StatusOr<std::string> v = Required(call, name);
  if (!v.ok()) return v.status();
  std::string b = absl::AsciiStrToLower(absl::StripAsciiWhitespace(*v));
  if (b == "1" || b == "true" || b == "yes") return true;
  if (b == "0" || b == "false" || b == "no") return false;
  return absl::InvalidArgumentError(absl::StrCat(name, " must be 0 or 1"));
}

// Only the wildcard (empty) remote host is served.
bool WildcardHost(const SoapCall& call) {
  const std::string* host = call.Argument("NewRemoteHost");
  return host == nullptr || absl::StripAsciiWhitespace(*host).empty();
}

std::string ProtocolText(nat::Protocol p) { return p == nat::Protocol::kUdp ? "UDP" : "TCP"; }

// The longest prefix of `s` of at most `max` bytes that does not split a
// UTF-8 sequence.
std::string Truncated(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

Reply FromOutcome(const SoapCall& call, const UpnpResult& r) {
  const bool v2 = call.version >= 2;
  switch (r.outcome) {
    case UpnpOutcome::kOk: return Ok(call);
    case UpnpOutcome::kNotAuthorized: return Fault(606, r.detail);
    case UpnpOutcome::kConflict: return Fault(718, r.detail);
    case UpnpOutcome::kOtherMechanism: return Fault(v2 ? 729 : 718, r.detail);
    case UpnpOutcome::kNoPortMaps: return Fault(v2 ? 728 : 501, r.detail);
    case UpnpOutcome::kNoSuchEntry: return Fault(714, r.detail);
    case UpnpOutcome::kNoneInRange: return Fault(730, r.detail);
    case UpnpOutcome::kNetworkFailure:
    case UpnpOutcome::kActionFailed: return Fault(501, r.detail);
  }
  return Fault(501, r.detail);
}

Out EntryFields(const owners::UpnpEntry& e) {
  return {{"NewInternalPort", absl::StrCat(e.internal_port)},
          {"NewInternalClient", e.internal_client},
          {"NewEnabled", "1"},
          {"NewPortMappingDescription", e.description},
          {"NewLeaseDuration", absl::StrCat(e.lease_remaining)}};
}

}  // namespace

IgdControl::IgdControl(AgentCore* core, IgdConfig config, std::function<absl::Time()> now)
    : core_(core), config_(std::move(config)), now_(std::move(now)), started_(now_()) {}

Reply IgdControl::Handle(const std::string& control_path, const SoapCall& call,
                         const nat::IpAddress& client) const {
  absl::string_view type = call.service_type;
  auto base = [&](const char* full) {
    absl::string_view f = full;
    return f.substr(0, f.rfind(':') + 1);
  };
  auto version = [](const char* full) {
    absl::string_view f = full;
    int v = 0;
    return absl::SimpleAtoi(f.substr(f.rfind(':') + 1), &v) ? v : 0;
  };
  // The service at this path, at its version or a lower one.
  for (const ServicePaths* s : {&kIpConnection, &kCommonInterfaceConfig, &kIpv6Firewall}) {
    if (control_path != s->control_path) continue;
    if (s == &kIpv6Firewall && !config_.ipv6_firewall) break;
    if (!absl::StartsWith(type, base(s->type)) || call.version > version(s->type)) {
      return Fault(401, absl::StrCat(control_path, " serves ", s->type, ", not ", type));
    }
    if (s == &kIpv6Firewall) return Ipv6Firewall(call, client);
    if (client.family() != nat::Family::kIPv4) {
      return Fault(606, "port mappings are for IPv4 LAN hosts");
    }
    return s == &kIpConnection ? IpConnection(call, client) : CommonInterface(call);
  }
  return Fault(401, absl::StrCat("no service at ", control_path));
}

Reply IgdControl::IpConnection(const SoapCall& call, const nat::IpAddress& client) const {
  const std::string& a = call.action;
  const bool v2 = call.version >= 2;
  if (a == "AddPortMapping") return AddMapping(call, client, false);
  if (a == "DeletePortMapping") return DeleteMapping(call, client);
  if (a == "GetSpecificPortMappingEntry") return SpecificEntry(call);
  if (a == "GetGenericPortMappingEntry") return GenericEntry(call);
  if (a == "GetExternalIPAddress") {
    std::optional<nat::IpAddress> ext = core_->external_address();
    return Ok(call, {{"NewExternalIPAddress", ext ? ext->ToString() : ""}});
  }
  if (a == "GetStatusInfo") {
    int64_t up = std::max<int64_t>(0, absl::ToInt64Seconds(now_() - started_));
    return Ok(call, {{"NewConnectionStatus",
                      core_->external_address() ? "Connected" : "Disconnected"},
                     {"NewLastConnectionError", "ERROR_NONE"},
                     {"NewUptime", absl::StrCat(up)}});
  }
  if (a == "GetConnectionTypeInfo") {
    return Ok(call, {{"NewConnectionType", "IP_Routed"},
                     {"NewPossibleConnectionTypes", "IP_Routed"}});
  }
  if (a == "GetNATRSIPStatus") {
    return Ok(call, {{"NewRSIPAvailable", "0"}, {"NewNATEnabled", "1"}});
  }
  if (v2 && a == "AddAnyPortMapping") return AddMapping(call, client, true);
  if (v2 && a == "DeletePortMappingRange") return DeleteRange(call, client);
  if (v2 && a == "GetListOfPortMappings") return ListMappings(call, client);
  return Fault(401, absl::StrCat(call.service_type, " has no action ", a));
}

Reply IgdControl::AddMapping(const SoapCall& call, const nat::IpAddress& client,
                             bool any) const {
  const bool v2 = call.version >= 2;
  if (!call.Argument("NewRemoteHost")) return Fault(402, "NewRemoteHost is missing");
  absl::StatusOr<uint16_t> ext = Port(call, "NewExternalPort");
  absl::StatusOr<nat::Protocol> protocol = ProtocolArg(call);
  absl::StatusOr<uint16_t> internal = Port(call, "NewInternalPort");
  absl::StatusOr<std::string> internal_client = Required(call, "NewInternalClient");
  absl::StatusOr<bool> enabled = Boolean(call, "NewEnabled");
  absl::StatusOr<std::string> description = Required(call, "NewPortMappingDescription");
  absl::StatusOr<uint32_t> lease = Unsigned(call, "NewLeaseDuration", UINT32_MAX);
  for (const absl::Status& s : {ext.status(), protocol.status(), internal.status(),
                                internal_client.status(), enabled.status(),
                                description.status(), lease.status()}) {
    if (!s.ok()) return Fault(402, std::string(s.message()));
  }
  if (!WildcardHost(call)) return Fault(726, "only the wildcard remote host is served");
  if (*ext == 0 && !any) return Fault(716, "AddPortMapping needs an external port");
  if (*internal == 0) return Fault(v2 ? 732 : 402, "the internal port must not be 0");
  absl::StatusOr<nat::IpAddress> target =
      nat::IpAddress::Parse(std::string(absl::StripAsciiWhitespace(*internal_client)));
  if (!target.ok() || !target->is_v4()) {
    return Fault(402, absl::StrCat("NewInternalClient is not an IPv4 address: ", *internal_client));
  }
  if (*target != client) {
    return Fault(606, absl::StrCat(client.ToString(), " may map only to itself, not to ",
                                   target->ToString()));
  }
  if (!*enabled) return Fault(402, "disabled mappings are not kept: delete the mapping instead");
  UpnpRequest r;
  r.op = any ? UpnpRequest::Op::kAddAny : UpnpRequest::Op::kAdd;
  r.client = client;
  r.protocol = *protocol;
  r.external_port = *ext;
  r.internal_port = *internal;
  r.lease_seconds = *lease;
  r.permanent_ok = !v2;
  r.description = Truncated(*description, kMaxDescription);
  if (config_.same_port) {
    if (!any && *ext != *internal) {
      return Fault(724, "this gateway maps an external port only to the same internal port");
    }
    r.op = UpnpRequest::Op::kAdd;
    r.external_port = *internal;
  }
  UpnpResult result = core_->Upnp(r, config_.policy);
  if (result.outcome != UpnpOutcome::kOk) return FromOutcome(call, result);
  Reply ok = any ? Ok(call, {{"NewReservedPort", absl::StrCat(result.external_port)}}) : Ok(call);
  ok.detail = absl::StrCat(result.detail, " ", ProtocolText(r.protocol), " ",
                           result.external_port, " -> ", client.ToString(), ":", r.internal_port,
                           " for ", result.lease_seconds, " s");
  return ok;
}

Reply IgdControl::DeleteMapping(const SoapCall& call, const nat::IpAddress& client) const {
  absl::StatusOr<uint16_t> ext = Port(call, "NewExternalPort");
  absl::StatusOr<nat::Protocol> protocol = ProtocolArg(call);
  for (const absl::Status& s : {ext.status(), protocol.status()}) {
    if (!s.ok()) return Fault(402, std::string(s.message()));
  }
  if (!WildcardHost(call)) return Fault(714, "mappings are held for the wildcard remote host only");
  UpnpRequest r;
  r.op = UpnpRequest::Op::kDelete;
  r.client = client;
  r.protocol = *protocol;
  r.external_port = *ext;
  UpnpResult result = core_->Upnp(r, config_.policy);
  if (result.outcome != UpnpOutcome::kOk) return FromOutcome(call, result);
  Reply ok = Ok(call);
  ok.detail = result.detail;
  return ok;
}

Reply IgdControl::DeleteRange(const SoapCall& call, const nat::IpAddress& client) const {
  absl::StatusOr<uint16_t> start = Port(call, "NewStartPort");
  absl::StatusOr<uint16_t> end = Port(call, "NewEndPort");
  absl::StatusOr<nat::Protocol> protocol = ProtocolArg(call);
  absl::StatusOr<bool> manage = Boolean(call, "NewManage");
  for (const absl::Status& s : {start.status(), end.status(), protocol.status(), manage.status()}) {
    if (!s.ok()) return Fault(402, std::string(s.message()));
  }
  if (*start > *end) return Fault(733, absl::StrCat("start ", *start, " is past end ", *end));
  // NewManage asks for other hosts' mappings too; no LAN host may delete
  // another's, so it deletes the requester's own either way.
  UpnpRequest r;
  r.op = UpnpRequest::Op::kDeleteRange;
  r.client = client;
  r.protocol = *protocol;
  r.external_port = *start;
  r.end_port = *end;
  UpnpResult result = core_->Upnp(r, config_.policy);
  if (result.outcome != UpnpOutcome::kOk) return FromOutcome(call, result);
  Reply ok = Ok(call);
  ok.detail = result.detail;
  return ok;
}

Reply IgdControl::SpecificEntry(const SoapCall& call) const {
  absl::StatusOr<uint16_t> ext = Port(call, "NewExternalPort");
  absl::StatusOr<nat::Protocol> protocol = ProtocolArg(call);
  for (const absl::Status& s : {ext.status(), protocol.status()}) {
    if (!s.ok()) return Fault(402, std::string(s.message()));
  }
  if (!WildcardHost(call)) return Fault(714, "mappings are held for the wildcard remote host only");
  std::optional<owners::UpnpEntry> e =
      owners::UpnpEntryAt(core_->snapshot()->state, *protocol, *ext, now_());
  if (!e) {
    return Fault(714, absl::StrCat("no mapping of ", ProtocolText(*protocol), " port ", *ext));
  }
  return Ok(call, EntryFields(*e));
}

Reply IgdControl::GenericEntry(const SoapCall& call) const {
  absl::StatusOr<uint32_t> index = Unsigned(call, "NewPortMappingIndex", UINT32_MAX);
  if (!index.ok()) return Fault(402, std::string(index.status().message()));
  std::vector<owners::UpnpEntry> all = owners::UpnpEntries(core_->snapshot()->state, now_());
  if (*index >= all.size()) {
    return Fault(713, absl::StrCat("index ", *index, " of ", all.size(), " mappings"));
  }
  const owners::UpnpEntry& e = all[*index];
  Out out = {{"NewRemoteHost", ""},
             {"NewExternalPort", absl::StrCat(e.external_port)},
             {"NewProtocol", ProtocolText(e.protocol)}};
  for (auto& f : EntryFields(e)) out.push_back(std::move(f));
  return Ok(call, out);
}

Reply IgdControl::ListMappings(const SoapCall& call, const nat::IpAddress& client) const {
  absl::StatusOr<uint16_t> start = Port(call, "NewStartPort");
  absl::StatusOr<uint16_t> end = Port(call, "NewEndPort");
  absl::StatusOr<nat::Protocol> protocol = ProtocolArg(call);
  absl::StatusOr<bool> manage = Boolean(call, "NewManage");
  absl::StatusOr<uint32_t> number = Unsigned(call, "NewNumberOfPorts", 65535);
  for (const absl::Status& s :
       {start.status(), end.status(), protocol.status(), manage.status(), number.status()}) {
    if (!s.ok()) return Fault(402, std::string(s.message()));
  }
  if (*start > *end) return Fault(733, absl::StrCat("start ", *start, " is past end ", *end));
  const size_t limit = *number == 0 ? kDefaultListSize : *number;
  const std::string me = client.ToString();
  std::string list =
      "<p:PortMappingList xmlns:p=\"urn:schemas-upnp-org:gw:WANIPConnection\" "
      "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
      "xsi:schemaLocation=\"urn:schemas-upnp-org:gw:WANIPConnection "
      "http://www.upnp.org/schemas/gw/WANIPConnection-v2.xsd\">";
  size_t n = 0;
  for (const owners::UpnpEntry& e : owners::UpnpEntries(core_->snapshot()->state, now_())) {
    if (n == limit) break;
    if (e.protocol != *protocol || e.external_port < *start || e.external_port > *end) continue;
    if (!*manage && e.internal_client != me) continue;
    absl::StrAppend(&list, "<p:PortMappingEntry><p:NewRemoteHost></p:NewRemoteHost>",
                    "<p:NewExternalPort>", e.external_port, "</p:NewExternalPort>",
                    "<p:NewProtocol>", ProtocolText(e.protocol), "</p:NewProtocol>",
                    "<p:NewInternalPort>", e.internal_port, "</p:NewInternalPort>",
                    "<p:NewInternalClient>", e.internal_client, "</p:NewInternalClient>",
                    "<p:NewEnabled>1</p:NewEnabled><p:NewDescription>",
                    MarkupEscape(e.description), "</p:NewDescription><p:NewLeaseTime>",
                    e.lease_remaining, "</p:NewLeaseTime></p:PortMappingEntry>");
    ++n;
  }
  if (n == 0) {
    return Fault(730, absl::StrCat("no ", ProtocolText(*protocol), " mapping in ", *start, "-",
                                   *end));
  }
  list += "</p:PortMappingList>";
  Reply ok = {200, SoapResponse(call, {}, {{"NewPortListing", list}}), 0, ""};
  return ok;
}

std::string IgdControl::Wan() const {
  return config_.wan_interface_now ? config_.wan_interface_now() : config_.wan_interface;
}

uint64_t IgdControl::WanValue(const std::string& name) const {
  const std::string wan = Wan();
  if (wan.empty()) return 0;
  std::ifstream in(absl::StrCat(config_.sys_class_net, "/", wan, "/", name));
  int64_t v = 0;
  if (!(in >> v) || v < 0) return 0;
  return static_cast<uint64_t>(v);
}

Reply IgdControl::CommonInterface(const SoapCall& call) const {
  const std::string& a = call.action;
  // ui4 counters wrap (WANCommonInterfaceConfig:1, 2.2.9).
  auto counter = [&](const char* file) {
    return absl::StrCat(WanValue(absl::StrCat("statistics/", file)) & 0xFFFFFFFFu);
  };
  if (a == "GetCommonLinkProperties") {
    uint64_t mbps = WanValue("speed");
    std::string bits = absl::StrCat(std::min<uint64_t>(mbps * 1000000, 0xFFFFFFFFu));
    std::string state;
    if (const std::string wan = Wan(); !wan.empty()) {
      std::ifstream in(absl::StrCat(config_.sys_class_net, "/", wan, "/operstate"));
      in >> state;
    }
    bool up = state == "up" || (state == "unknown" && WanValue("carrier") == 1);
    return Ok(call, {{"NewWANAccessType", "Ethernet"},
                     {"NewLayer1UpstreamMaxBitRate", bits},
                     {"NewLayer1DownstreamMaxBitRate", bits},
                     {"NewPhysicalLinkStatus", up ? "Up" : "Down"}});
  }
  if (a == "GetTotalBytesSent") return Ok(call, {{"NewTotalBytesSent", counter("tx_bytes")}});
  if (a == "GetTotalBytesReceived") {
    return Ok(call, {{"NewTotalBytesReceived", counter("rx_bytes")}});
  }
  if (a == "GetTotalPacketsSent") {
    return Ok(call, {{"NewTotalPacketsSent", counter("tx_packets")}});
  }
  if (a == "GetTotalPacketsReceived") {
    return Ok(call, {{"NewTotalPacketsReceived", counter("rx_packets")}});
  }
  return Fault(401, absl::StrCat(call.service_type, " has no action ", a));
}

}  // namespace fabric::agent::upnp
