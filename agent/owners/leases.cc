#include "agent/owners/leases.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"
#include "agent/owners/mappings.h"

namespace fabric::agent::owners {

using nat::IpAddress;
using nat::PortMapping;
using nat::PortScope;

namespace {

LeaseResult Refuse(Txn& txn, LeaseOutcome outcome, std::string detail) {
  txn.Discard();
  return {outcome, 0, 0, std::move(detail)};
}

std::optional<PortScope> CompanionScope(const PortMapping& n) {
  if (n.protocol == nat::Protocol::kSctp) return std::nullopt;
  PortScope other = PortScope::Of(n);
  other.protocol = n.protocol == nat::Protocol::kTcp ? nat::Protocol::kUdp
                                                     : nat::Protocol::kTcp;
  return other;
}

std::string CompanionHolder(const v1::PortMapping& m) {
  return absl::StrCat(MappingHolder(m), " (companion port)");
}

LeaseResult DeleteLeases(Txn& txn, const LeaseRequest& r, nat::ConntrackCleaner* ct) {
  State& st = txn.state();
  std::vector<std::string> ids;
  std::string client = r.client.ToString();
  if (r.internal_port != 0 && !r.all_protocols) {
    if (const std::string* id = st.leases.Find(LeaseKey(client, r.protocol, r.internal_port))) {
      ids.push_back(*id);
    }
  } else {
    st.leases.ForEach([&](const std::string&, const std::string& id) {
      const v1::PortMapping& m = st.mappings.Find(id)->proto;
      if (m.target_ip() != client) return;
      if (!r.all_protocols &&
          FromProto(m.protocol()).value_or(nat::Protocol::kTcp) != r.protocol) {
        return;
      }
      ids.push_back(id);
    });
    std::sort(ids.begin(), ids.end());
  }
  for (const std::string& id : ids) {
    const v1::PortMapping& m = st.mappings.Find(id)->proto;
    if (r.kind == v1::OWNER_KIND_PCP && m.owner().kind() == v1::OWNER_KIND_PCP &&
        m.pcp_nonce() != r.nonce) {
      return Refuse(txn, LeaseOutcome::kNotAuthorized,
                    absl::StrCat("nonce does not match lease ", id));
    }
  }
  if (ids.empty()) return {LeaseOutcome::kOk, 0, 0, "nothing to delete"};
  for (const std::string& id : ids) RemoveMapping(txn, id, ct);
  return {LeaseOutcome::kOk, 0, 0, absl::StrCat("deleted ", ids.size())};
}

}  // namespace

void IndexLease(State& state, const v1::PortMapping& m) {
  state.leases.Put(LeaseKeyOf(m), m.id());
  const int* n = state.leases_per_client.Find(m.target_ip());
  state.leases_per_client.Put(m.target_ip(), (n == nullptr ? 0 : *n) + 1);
}

void UnindexLease(State& state, const v1::PortMapping& m) {
  const std::string* id = state.leases.Find(LeaseKeyOf(m));
  if (id == nullptr || *id != m.id()) return;
  state.leases.Erase(LeaseKeyOf(m));
  const int* n = state.leases_per_client.Find(m.target_ip());
  if (n == nullptr || *n <= 1) {
    state.leases_per_client.Erase(m.target_ip());
  } else {
    state.leases_per_client.Put(m.target_ip(), *n - 1);
  }
}

void HoldCompanion(Txn& txn, const MappingRecord& m) {
  std::optional<PortScope> other = CompanionScope(m.nat);
  if (!other || txn.allocator().ConflictingHolder(*other, m.nat.host_port).has_value()) return;
  if (txn.Reserve(*other, m.nat.host_port, 1, CompanionHolder(m.proto)).ok()) {
    txn.state().companions.Put(m.proto.id(), *other);
  }
}

void HoldCompanionAtStart(State& state, nat::PortAllocator& allocator, const MappingRecord& m) {
  std::optional<PortScope> other = CompanionScope(m.nat);
  if (!other || allocator.ConflictingHolder(*other, m.nat.host_port).has_value()) return;
  if (allocator.Reserve(*other, m.nat.host_port, 1, CompanionHolder(m.proto)).ok()) {
    state.companions.Put(m.proto.id(), *other);
  }
}

void ReleaseCompanion(Txn& txn, const MappingRecord& m) {
  const PortScope* scope = txn.state().companions.Find(m.proto.id());
  if (scope == nullptr) return;
  PortScope copy = *scope;
  txn.Release(copy, m.nat.host_port, 1, CompanionHolder(m.proto));
  txn.state().companions.Erase(m.proto.id());
}

LeaseResult Lease(Txn& txn, const LeaseRequest& r, const LeasePolicy& policy,
                  nat::ConntrackCleaner* ct) {
  if (r.lifetime == 0) return DeleteLeases(txn, r, ct);
  State& st = txn.state();
  if (!st.external_address.has_value()) {
    return Refuse(txn, LeaseOutcome::kNetworkFailure, "no external address");
  }
  absl::Time now = txn.now();
  uint32_t lifetime = std::min(r.lifetime, policy.max_lifetime);
  std::string client = r.client.ToString();

  // A repeated request refreshes the lease and keeps its port.
  if (const std::string* existing = st.leases.Find(LeaseKey(client, r.protocol, r.internal_port))) {
    MappingRecord rec = *st.mappings.Find(*existing);
    if (r.kind == v1::OWNER_KIND_PCP && rec.proto.owner().kind() == v1::OWNER_KIND_PCP &&
        rec.proto.pcp_nonce() != r.nonce) {
      return Refuse(txn, LeaseOutcome::kNotAuthorized,
                    absl::StrCat("nonce does not match lease ", rec.proto.id()));
    }
    if (r.prefer_failure && r.suggested_port != 0 && r.suggested_port != rec.nat.host_port) {
      return Refuse(txn, LeaseOutcome::kCannotProvide, "lease exists on another port");
    }
    *rec.proto.mutable_expires_at() = ToTimestamp(now + absl::Seconds(lifetime));
    txn.write().put_mappings.push_back(rec.proto);
    txn.Publish(v1::MappingEvent::TYPE_UPDATED, rec.proto);
    uint16_t port = rec.nat.host_port;
    std::string id = rec.proto.id();  // not from rec: it is moved
    st.mappings.Put(id, std::move(rec));
    return {LeaseOutcome::kOk, port, lifetime, "refreshed"};
  }

  const int* count = st.leases_per_client.Find(client);
  if (count != nullptr && *count >= policy.max_per_client) {
    return Refuse(txn, LeaseOutcome::kQuota,
                  absl::StrCat(client, " already holds ", *count, " leases"));
  }

  v1::PortMapping proto;
  proto.mutable_owner()->set_kind(r.kind);
  proto.mutable_owner()->set_id(client);
  proto.set_protocol(ToProto(r.protocol));
  proto.set_host_ip(st.external_address->ToString());
  proto.set_target_ip(client);
  proto.set_target_port(r.internal_port);
  proto.set_port_count(1);
  proto.set_description(r.kind == v1::OWNER_KIND_PCP ? "PCP MAP" : "NAT-PMP");
  if (r.kind == v1::OWNER_KIND_PCP) proto.set_pcp_nonce(r.nonce);
  *proto.mutable_expires_at() = ToTimestamp(now + absl::Seconds(lifetime));

  PortMapping nat_mapping;
  nat_mapping.protocol = r.protocol;
  nat_mapping.host_ip = st.external_address;
  nat_mapping.target_ip = r.client;
  nat_mapping.target_port = r.internal_port;
  PortScope scope = PortScope::Of(nat_mapping);

  // The client's own companion hold on the suggested port is no obstacle:
  // it becomes a real lease (and comes back if this request fails: the
  // transaction undoes the release).
  uint16_t suggested = r.suggested_port;
  bool in_range = suggested >= policy.port_lo && suggested <= policy.port_hi;
  if (suggested != 0) {
    std::string freed;
    st.companions.ForEach([&](const std::string& id, const PortScope& comp) {
      if (!freed.empty()) return;
      const MappingRecord* other = st.mappings.Find(id);
      if (other != nullptr && other->proto.target_ip() == client &&
          other->nat.host_port == suggested && comp.protocol == r.protocol) {
        freed = id;
      }
    });
    if (!freed.empty()) ReleaseCompanion(txn, *st.mappings.Find(freed));
  }
  if (r.prefer_failure && suggested != 0 &&
      (!in_range || txn.allocator().ConflictingHolder(scope, suggested).has_value())) {
    std::optional<std::string> holder_of = txn.allocator().ConflictingHolder(scope, suggested);
    return Refuse(txn, LeaseOutcome::kCannotProvide,
                  holder_of ? absl::StrCat("port ", suggested, " is held by ", *holder_of)
                            : absl::StrCat("port ", suggested, " is outside ", policy.port_lo,
                                           "-", policy.port_hi));
  }
  uint16_t start = in_range ? suggested
                            : (r.internal_port >= policy.port_lo &&
                                       r.internal_port <= policy.port_hi
                                   ? r.internal_port
                                   : policy.port_lo);
  // The id first: the allocator names the holder by it.
  proto.set_id(txn.NewMappingId());
  absl::StatusOr<uint16_t> port = txn.AllocateNear(scope, start, 1, policy.port_lo,
                                                   policy.port_hi, MappingHolder(proto));
  if (!port.ok()) {
    return Refuse(txn, LeaseOutcome::kNoResources, std::string(port.status().message()));
  }
  nat_mapping.host_port = *port;
  proto.set_host_port(*port);
  *proto.mutable_created_at() = ToTimestamp(now);
  PutMapping(txn, proto, nat_mapping, v1::MappingEvent::TYPE_ADDED, ct);
  IndexLease(st, proto);
  HoldCompanion(txn, MappingRecord{proto, nat_mapping});
  return {LeaseOutcome::kOk, *port, lifetime, absl::StrCat("new lease ", proto.id())};
}

int ExpireLeases(Txn& txn, nat::ConntrackCleaner* ct) {
  if (txn.state().leases_need_move) MoveLeases(txn, ct);
  std::vector<std::string> expired;
  txn.state().mappings.ForEach([&](const std::string& id, const MappingRecord& m) {
    if (m.proto.has_expires_at() && FromTimestamp(m.proto.expires_at()) <= txn.now()) {
      expired.push_back(id);
    }
  });
  std::sort(expired.begin(), expired.end());
  for (const std::string& id : expired) RemoveMapping(txn, id, ct);
  return static_cast<int>(expired.size());
}

void MoveLeases(Txn& txn, nat::ConntrackCleaner* ct) {
  State& st = txn.state();
  if (!st.external_address.has_value()) return;
  const IpAddress address = *st.external_address;
  // Take every lease that sits on another address off its old port, then
  // onto the new address; a lease whose port is taken there is dropped.
  std::vector<std::string> ids;
  st.mappings.ForEach([&](const std::string& id, const MappingRecord& m) {
    if (IsLease(m.proto) && m.nat.host_ip != address) ids.push_back(id);
  });
  std::sort(ids.begin(), ids.end());
  std::vector<std::string> dropped;
  for (const std::string& id : ids) {
    MappingRecord m = *st.mappings.Find(id);
    ReleaseCompanion(txn, m);
    txn.Release(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m.proto));
    PortMapping n = m.nat;
    n.host_ip = address;
    if (!txn.Reserve(PortScope::Of(n), n.host_port, 1, MappingHolder(m.proto)).ok()) {
      // Held again for RemoveMapping to release.
      txn.Reserve(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m.proto))
          .IgnoreError();
      dropped.push_back(id);
      continue;
    }
    for (const auto& e : m.nat.ToElements()) txn.batch().remove.dnat.insert(e);
    v1::PortMapping p = m.proto;
    p.set_host_ip(address.ToString());
    PutMapping(txn, p, n, v1::MappingEvent::TYPE_UPDATED, ct);
    HoldCompanion(txn, MappingRecord{p, n});
  }
  for (const std::string& id : dropped) RemoveMapping(txn, id, ct);
  st.leases_need_move = false;
}

}  // namespace fabric::agent::owners
