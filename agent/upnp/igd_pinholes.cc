// IgdControl's WANIPv6FirewallControl:1 actions (igd.h): IPv6 pinholes
// through the agent's IPv6 firewall, for the requester's own IPv6 address
// only (the request must come over IPv6 from that address). Faults: 402 bad
// arguments, 606 another address or another host's pinhole, 701 no room,
// 702 firewall off, 704 no such pinhole, 705 a protocol other than TCP (6)
// or UDP (17), 706 internal port 0, 707 protocol wildcard (65535), 709
// (CheckPinholeWorking) no packet through it yet.
#include <fstream>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/owners/pinholes.h"
#include "agent/upnp/igd.h"
#include "agent/upnp/igd_reply.h"

namespace fabric::agent::upnp {

namespace {

using internal::Fault;
using internal::Ok;
using internal::Unsigned;
using Reply = IgdControl::Reply;

Reply FromOutcome(const PinholeResult& r) {
  switch (r.outcome) {
    case PinholeOutcome::kOk: return Fault(501, "unreachable");
    case PinholeOutcome::kNotAuthorized: return Fault(606, r.detail);
    case PinholeOutcome::kNoSuchEntry: return Fault(704, r.detail);
    case PinholeOutcome::kSpaceExhausted: return Fault(701, r.detail);
    case PinholeOutcome::kFirewallDisabled: return Fault(702, r.detail);
    case PinholeOutcome::kActionFailed: return Fault(501, r.detail);
  }
  return Fault(501, r.detail);
}

// The conntrack timeout a flow of `protocol` keeps once established.
uint32_t OutboundTimeout(int protocol) {
  const char* file = protocol == 17 ? "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
                                    : "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";
  std::ifstream in(file);
  uint32_t v = 0;
  if (!(in >> v)) v = protocol == 17 ? 120 : 432000;
  return v;
}

}  // namespace

Reply IgdControl::Ipv6Firewall(const SoapCall& call, const nat::IpAddress& client) const {
  const std::string& a = call.action;
  if (a == "GetFirewallStatus") {
    return Ok(call, {{"FirewallEnabled", "1"}, {"InboundPinholeAllowed", "1"}});
  }
  if (client.is_v4()) {
    return Fault(606, "pinholes are for the requester's own IPv6 address: ask over IPv6");
  }
  if (a == "GetOutboundPinholeTimeout") {
    absl::StatusOr<uint32_t> protocol = Unsigned(call, "Protocol", 65535);
    if (!protocol.ok()) return Fault(402, std::string(protocol.status().message()));
    return Ok(call, {{"OutboundPinholeTimeout", absl::StrCat(OutboundTimeout(*protocol))}});
  }
  PinholeRequest r;
  r.client = client;
  if (a == "AddPinhole") {
    const std::string* remote = call.Argument("RemoteHost");
    const std::string* internal = call.Argument("InternalClient");
    absl::StatusOr<uint32_t> remote_port = Unsigned(call, "RemotePort", 65535);
    absl::StatusOr<uint32_t> port = Unsigned(call, "InternalPort", 65535);
    absl::StatusOr<uint32_t> protocol = Unsigned(call, "Protocol", 65535);
    absl::StatusOr<uint32_t> lease = Unsigned(call, "LeaseTime", UINT32_MAX);
    for (const absl::Status& s :
         {remote_port.status(), port.status(), protocol.status(), lease.status()}) {
      if (!s.ok()) return Fault(402, std::string(s.message()));
    }
    if (remote == nullptr || internal == nullptr) {
      return Fault(402, "RemoteHost and InternalClient are required");
    }
    if (*lease < 1 || *lease > kMaxPinholeLease) {
      return Fault(402, absl::StrCat("LeaseTime must be 1-", kMaxPinholeLease));
    }
    if (*remote_port != 0) {
      return Fault(402, "only the wildcard remote port (0) is served: a pinhole admits every "
                        "remote port");
    }
    if (*port == 0) return Fault(706, "the internal port must be given");
    if (*protocol == 65535) return Fault(707, "the protocol must be given");
    if (*protocol != 6 && *protocol != 17) {
      return Fault(705, absl::StrCat("protocol ", *protocol, ": only TCP (6) and UDP (17)"));
    }
    absl::StatusOr<nat::IpAddress> target =
        nat::IpAddress::Parse(std::string(absl::StripAsciiWhitespace(*internal)));
    if (!target.ok() || target->is_v4()) {
      return Fault(402, absl::StrCat("InternalClient is not an IPv6 address: ", *internal));
    }
    if (*target != client) {
      return Fault(606, absl::StrCat(client.ToString(), " may open pinholes only to itself, not "
                                     "to ", target->ToString()));
    }
    absl::string_view rh = absl::StripAsciiWhitespace(*remote);
    if (!rh.empty()) {
      absl::StatusOr<nat::IpAddress> ip = nat::IpAddress::Parse(rh);
      if (!ip.ok() || ip->is_v4()) {
        return Fault(402, absl::StrCat("RemoteHost is not an IPv6 address: ", rh));
      }
      r.remote = *ip;
    }
    r.op = PinholeRequest::Op::kAdd;
    r.protocol = *protocol == 6 ? nat::Protocol::kTcp : nat::Protocol::kUdp;
    r.internal_port = static_cast<uint16_t>(*port);
    r.lease_seconds = *lease;
    PinholeResult result = core_->Pinhole(r, config_.policy);
    if (result.outcome != PinholeOutcome::kOk) return FromOutcome(result);
    Reply ok = Ok(call, {{"UniqueID", absl::StrCat(result.unique_id)}});
    ok.detail = result.detail;
    return ok;
  }
  absl::StatusOr<uint32_t> id = Unsigned(call, "UniqueID", 65535);
  if (!id.ok()) return Fault(402, std::string(id.status().message()));
  r.unique_id = *id;
  if (a == "UpdatePinhole" || a == "DeletePinhole") {
    if (a == "UpdatePinhole") {
      absl::StatusOr<uint32_t> lease = Unsigned(call, "NewLeaseTime", UINT32_MAX);
      if (!lease.ok()) return Fault(402, std::string(lease.status().message()));
      if (*lease < 1 || *lease > kMaxPinholeLease) {
        return Fault(402, absl::StrCat("NewLeaseTime must be 1-", kMaxPinholeLease));
      }
      r.lease_seconds = *lease;
      r.op = PinholeRequest::Op::kUpdate;
    } else {
      r.op = PinholeRequest::Op::kDelete;
    }
    PinholeResult result = core_->Pinhole(r, config_.policy);
    if (result.outcome != PinholeOutcome::kOk) return FromOutcome(result);
    Reply ok = Ok(call);
    ok.detail = result.detail;
    return ok;
  }
  if (a == "GetPinholePackets" || a == "CheckPinholeWorking") {
    const PinholeRecord* rec = nullptr;
    std::shared_ptr<const Snapshot> snap = core_->snapshot();
    PinholeOutcome o = owners::PinholeOf(snap->state, client, *id, &rec);
    if (o != PinholeOutcome::kOk) {
      return FromOutcome({o, 0, absl::StrCat("pinhole ", *id)});
    }
    absl::StatusOr<std::map<nat::Pinhole, uint64_t>> packets = core_->PinholePackets();
    if (!packets.ok()) return Fault(501, std::string(packets.status().message()));
    auto it = packets->find(rec->nat);
    uint64_t n = it == packets->end() ? 0 : it->second;
    if (a == "GetPinholePackets") {
      return Ok(call, {{"PinholePackets", absl::StrCat(n & 0xFFFFFFFFu)}});
    }
    if (n == 0) return Fault(709, absl::StrCat("no packet through pinhole ", *id, " yet"));
    return Ok(call, {{"IsWorking", "1"}});
  }
  return Fault(401, absl::StrCat(call.service_type, " has no action ", a));
}

}  // namespace fabric::agent::upnp
