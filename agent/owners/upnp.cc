#include "agent/owners/upnp.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"
#include "agent/owners/mappings.h"

namespace fabric::agent::owners {

using nat::PortMapping;
using nat::PortScope;

namespace {

UpnpResult Refuse(Txn& txn, UpnpOutcome outcome, std::string detail) {
  txn.Discard();
  UpnpResult r;
  r.outcome = outcome;
  r.detail = std::move(detail);
  return r;
}

std::string PortText(nat::Protocol protocol, uint16_t port) {
  return absl::StrCat(nat::ProtocolName(protocol), " port ", port);
}

// The lease `r` names by its external port, if any.
const MappingRecord* LeaseAt(const State& st, nat::Protocol protocol, uint16_t port) {
  const std::string* id = st.leases_by_port.Find(LeasePortKey(protocol, port));
  return id == nullptr ? nullptr : st.mappings.Find(*id);
}

UpnpResult Add(Txn& txn, const UpnpRequest& r, const LeasePolicy& policy,
               nat::ConntrackCleaner* ct) {
  State& st = txn.state();
  if (!st.external_address.has_value()) {
    return Refuse(txn, UpnpOutcome::kNetworkFailure, "no external address");
  }
  if (std::optional<std::string> why = RefusedClient(st, r.client)) {
    return Refuse(txn, UpnpOutcome::kNotAuthorized, *why);
  }
  const bool any = r.op == UpnpRequest::Op::kAddAny;
  const std::string client = r.client.ToString();
  // 0: permanent (IGD:1) or the longest lease (IGD:2); never beyond either
  // limit.
  const uint32_t cap = std::min<uint32_t>(kUpnpMaxLease, policy.max_lifetime);
  const bool permanent = r.lease_seconds == 0 && r.permanent_ok;
  const uint32_t lease = permanent ? 0 : r.lease_seconds == 0 ? cap
                                                              : std::min(r.lease_seconds, cap);

  PortMapping n;
  n.protocol = r.protocol;
  n.host_ip = st.external_address;
  n.target_ip = r.client;
  n.target_port = r.internal_port;
  const PortScope scope = PortScope::Of(n);
  uint16_t want = r.external_port != 0 ? r.external_port : r.internal_port;

  if (const MappingRecord* held = LeaseAt(st, r.protocol, want)) {
    MappingRecord rec = *held;
    const bool own = rec.target_ip() == client;
    const bool pcp = rec.owner().kind() == v1::OWNER_KIND_PCP;
    if (!own || pcp) {
      if (!any) {
        return Refuse(txn, own ? UpnpOutcome::kOtherMechanism : UpnpOutcome::kConflict,
                      absl::StrCat(PortText(r.protocol, want), " is mapped to ",
                                   rec.target_ip(), ":", rec.nat.target_port,
                                   pcp ? " by PCP (only PCP with its nonce changes it)" : ""));
      }
      // AddAnyPortMapping: another port below.
    } else if (rec.owner().kind() == v1::OWNER_KIND_UPNP &&
               rec.nat.target_port == r.internal_port) {
      // The same mapping again: a refresh (lease, description).
      if (permanent) {
        rec.clear_expires_at();
      } else {
        rec.set_expires_at(txn.now() + absl::Seconds(lease));
      }
      rec.set_description(r.description);
      std::string id = rec.id();
      RefreshMapping(txn, std::move(rec));
      UpnpResult ok;
      ok.external_port = want;
      ok.lease_seconds = lease;
      ok.detail = absl::StrCat("refreshed ", id);
      return ok;
    } else {
      // The host's own NAT-PMP lease, or its UPnP lease to another internal
      // port: replaced.
      RemoveMapping(txn, rec.id(), ct);
    }
  }
  if (std::optional<std::pair<LeaseOutcome, std::string>> full =
          RoomForLease(st, client, policy)) {
    return Refuse(txn, UpnpOutcome::kNoPortMaps, full->second);
  }
  // The client's own NAT-PMP companion hold on the port is no obstacle.
  FreeOwnCompanion(txn, client, r.protocol, want);

  v1::PortMapping proto;
  proto.set_id(txn.NewMappingId());  // first: the allocator names the holder by it
  proto.mutable_owner()->set_kind(v1::OWNER_KIND_UPNP);
  proto.mutable_owner()->set_id(client);
  proto.set_protocol(ToProto(r.protocol));
  proto.set_host_ip(st.external_address->ToString());
  proto.set_target_ip(client);
  proto.set_target_port(r.internal_port);
  proto.set_port_count(1);
  proto.set_description(r.description);
  if (!permanent) *proto.mutable_expires_at() = ToTimestamp(txn.now() + absl::Seconds(lease));
  const std::string holder = MappingHolder(proto);
  const std::vector<Segment> allowed = AllowedPorts(policy, txn.allocator());

  absl::StatusOr<uint16_t> port = want;
  if (any) {
    port = HoldLeasePort(txn, scope, want, policy, allowed, holder);
    if (!port.ok()) {
      return Refuse(txn, UpnpOutcome::kNoPortMaps,
                    absl::StrCat(port.status().message(), " (leases take ",
                                 DescribeAllowed(policy, txn.allocator()), ")"));
    }
  } else {
    if (!Allowed(allowed, want)) {
      return Refuse(txn, UpnpOutcome::kOtherMechanism,
                    absl::StrCat(PortText(r.protocol, want), " is outside the ports leases take (",
                                 DescribeAllowed(policy, txn.allocator()), ")"));
    }
    if (absl::Status s = txn.Reserve(scope, want, 1, holder); !s.ok()) {
      std::optional<std::string> by = txn.allocator().ConflictingHolder(scope, want);
      return Refuse(txn, UpnpOutcome::kOtherMechanism,
                    by ? absl::StrCat(PortText(r.protocol, want), " is held by ", *by)
                       : std::string(s.message()));
    }
  }
  n.host_port = *port;
  proto.set_host_port(*port);
  *proto.mutable_created_at() = ToTimestamp(txn.now());
  IndexLease(st, PutMapping(txn, proto, n, v1::MappingEvent::TYPE_ADDED, ct));
  UpnpResult ok;
  ok.external_port = *port;
  ok.lease_seconds = lease;
  ok.detail = absl::StrCat("new lease ", proto.id());
  return ok;
}

// Why `client` may not delete `m`, or nullopt.
std::optional<std::string> NotDeletable(const MappingRecord& m, const std::string& client) {
  if (m.target_ip() != client) {
    return absl::StrCat("the mapping belongs to ", m.target_ip());
  }
  if (m.owner().kind() == v1::OWNER_KIND_PCP) {
    return "it is a PCP lease: only PCP with its nonce deletes it";
  }
  return std::nullopt;
}

UpnpResult Delete(Txn& txn, const UpnpRequest& r, nat::ConntrackCleaner* ct) {
  const std::string client = r.client.ToString();
  const MappingRecord* m = LeaseAt(txn.state(), r.protocol, r.external_port);
  if (m == nullptr) {
    return Refuse(txn, UpnpOutcome::kNoSuchEntry,
                  absl::StrCat("no mapping of ", PortText(r.protocol, r.external_port)));
  }
  if (std::optional<std::string> why = NotDeletable(*m, client)) {
    return Refuse(txn, UpnpOutcome::kNotAuthorized, *why);
  }
  std::string id = m->id();
  RemoveMapping(txn, id, ct);
  UpnpResult ok;
  ok.deleted = 1;
  ok.detail = absl::StrCat("deleted ", id);
  return ok;
}

UpnpResult DeleteRange(Txn& txn, const UpnpRequest& r, nat::ConntrackCleaner* ct) {
  const std::string client = r.client.ToString();
  std::vector<std::pair<uint16_t, std::string>> ids;
  txn.state().leases_by_port.ForEach([&](const std::string&, const std::string& id) {
    const MappingRecord* m = txn.state().mappings.Find(id);
    if (m == nullptr || m->nat.protocol != r.protocol) return;
    if (m->nat.host_port < r.external_port || m->nat.host_port > r.end_port) return;
    if (NotDeletable(*m, client)) return;
    ids.emplace_back(m->nat.host_port, id);
  });
  if (ids.empty()) {
    return Refuse(txn, UpnpOutcome::kNoneInRange,
                  absl::StrCat("no ", nat::ProtocolName(r.protocol), " mapping of ", client,
                               " in ports ", r.external_port, "-", r.end_port));
  }
  std::sort(ids.begin(), ids.end());
  for (const auto& [port, id] : ids) RemoveMapping(txn, id, ct);
  UpnpResult ok;
  ok.deleted = static_cast<int>(ids.size());
  ok.detail = absl::StrCat("deleted ", ids.size());
  return ok;
}

}  // namespace

UpnpResult Upnp(Txn& txn, const UpnpRequest& r, const LeasePolicy& policy,
                nat::ConntrackCleaner* ct) {
  switch (r.op) {
    case UpnpRequest::Op::kAdd:
    case UpnpRequest::Op::kAddAny:
      return Add(txn, r, policy, ct);
    case UpnpRequest::Op::kDelete:
      return Delete(txn, r, ct);
    case UpnpRequest::Op::kDeleteRange:
      return DeleteRange(txn, r, ct);
  }
  return Refuse(txn, UpnpOutcome::kActionFailed, "unknown operation");
}

namespace {

UpnpEntry EntryOf(const MappingRecord& m, absl::Time now) {
  UpnpEntry e;
  e.protocol = m.nat.protocol;
  e.external_port = m.nat.host_port;
  e.internal_client = m.target_ip();
  e.internal_port = m.nat.target_port;
  e.description = m.description();
  e.kind = m.owner().kind();
  if (m.has_expires_at()) {
    int64_t left = absl::ToInt64Seconds(
        absl::Ceil(m.expires_at() - now, absl::Seconds(1)));
    e.lease_remaining = static_cast<uint32_t>(std::clamp<int64_t>(left, 1, UINT32_MAX));
  }
  return e;
}

}  // namespace

std::vector<UpnpEntry> UpnpEntries(const State& st, absl::Time now) {
  std::vector<UpnpEntry> out;
  out.reserve(st.leases_by_port.size());
  st.leases_by_port.ForEach([&](const std::string&, const std::string& id) {
    if (const MappingRecord* m = st.mappings.Find(id)) out.push_back(EntryOf(*m, now));
  });
  std::sort(out.begin(), out.end(), [](const UpnpEntry& a, const UpnpEntry& b) {
    return std::make_tuple(static_cast<int>(a.protocol), a.external_port) <
           std::make_tuple(static_cast<int>(b.protocol), b.external_port);
  });
  return out;
}

std::optional<UpnpEntry> UpnpEntryAt(const State& st, nat::Protocol protocol, uint16_t port,
                                     absl::Time now) {
  const MappingRecord* m = LeaseAt(st, protocol, port);
  if (m == nullptr) return std::nullopt;
  return EntryOf(*m, now);
}

}  // namespace fabric::agent::owners
