#include "agent/owners/leases.h"

#include <algorithm>
#include <tuple>
#include <utility>
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

// UPnP names each protocol's port on its own: only NAT-PMP/PCP leases
// hold a companion.
std::optional<PortScope> CompanionScope(const MappingRecord& m, const PortMapping& n) {
  if (n.protocol == nat::Protocol::kSctp || m.owner().kind() == v1::OWNER_KIND_UPNP) {
    return std::nullopt;
  }
  PortScope other = PortScope::Of(n);
  other.protocol = n.protocol == nat::Protocol::kTcp ? nat::Protocol::kUdp
                                                     : nat::Protocol::kTcp;
  return other;
}

std::string CompanionHolder(const MappingRecord& m) {
  return absl::StrCat(MappingHolder(m), " (companion port)");
}

// Why `r` may not change lease `m` of the same client, or nullopt. A PCP
// lease answers only to its nonce, so NAT-PMP (which has none) cannot
// refresh or delete it.
std::optional<std::string> NotItsLease(const LeaseRequest& r, const MappingRecord& m) {
  if (m.owner().kind() != v1::OWNER_KIND_PCP) return std::nullopt;
  if (r.kind != v1::OWNER_KIND_PCP) {
    return absl::StrCat("lease ", m.id(), " is a PCP lease: only PCP with its nonce changes it");
  }
  if (m.pcp_nonce() != r.nonce) return absl::StrCat("nonce does not match lease ", m.id());
  return std::nullopt;
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
      const MappingRecord& m = *st.mappings.Find(id);
      if (m.target_ip() != client) return;
      // NAT-PMP's "delete all" is about NAT-PMP's own leases: a PCP lease
      // can only be deleted with its nonce.
      if (r.kind == v1::OWNER_KIND_NATPMP && m.owner().kind() == v1::OWNER_KIND_PCP) return;
      if (!r.all_protocols &&
          m.nat.protocol != r.protocol) {
        return;
      }
      ids.push_back(id);
    });
    std::sort(ids.begin(), ids.end());
  }
  for (const std::string& id : ids) {
    if (std::optional<std::string> why = NotItsLease(r, *st.mappings.Find(id))) {
      return Refuse(txn, LeaseOutcome::kNotAuthorized, *why);
    }
  }
  if (ids.empty()) return {LeaseOutcome::kOk, 0, 0, "nothing to delete"};
  for (const std::string& id : ids) RemoveMapping(txn, id, ct);
  return {LeaseOutcome::kOk, 0, 0, absl::StrCat("deleted ", ids.size())};
}

}  // namespace

std::vector<Segment> AllowedPorts(const LeasePolicy& policy, const nat::PortAllocator& a) {
  uint16_t lo = policy.port_lo, hi = policy.port_hi;
  if (!policy.avoid_dynamic_range || a.dynamic_hi() < lo || a.dynamic_lo() > hi) {
    return {{lo, hi}};
  }
  std::vector<Segment> out;
  if (lo < a.dynamic_lo()) out.push_back({lo, static_cast<uint16_t>(a.dynamic_lo() - 1)});
  if (hi > a.dynamic_hi()) out.push_back({static_cast<uint16_t>(a.dynamic_hi() + 1), hi});
  return out;
}

std::string DescribeAllowed(const LeasePolicy& policy, const nat::PortAllocator& a) {
  std::string text = absl::StrCat(policy.port_lo, "-", policy.port_hi);
  if (policy.avoid_dynamic_range) {
    absl::StrAppend(&text, " outside the containers' ", a.dynamic_lo(), "-", a.dynamic_hi());
  }
  return text;
}

absl::StatusOr<uint16_t> HoldLeasePort(Txn& txn, const nat::PortScope& scope, uint16_t want,
                                       const LeasePolicy& policy,
                                       const std::vector<Segment>& allowed,
                                       const std::string& holder) {
  const nat::PortAllocator& a = txn.allocator();
  for (size_t i = 0; i < allowed.size(); ++i) {
    if (!allowed[i].Contains(want)) continue;
    // Its own segment first, then the other.
    absl::StatusOr<uint16_t> p =
        txn.AllocateNear(scope, want, 1, allowed[i].lo, allowed[i].hi, holder);
    if (p.ok() || allowed.size() == 1) return p;
    const Segment& other = allowed[1 - i];
    return txn.AllocateNear(scope, other.lo, 1, other.lo, other.hi, holder);
  }
  if (policy.avoid_dynamic_range && want >= a.dynamic_lo() && want <= a.dynamic_hi()) {
    // Inside the dynamic range: walk out from its edges, nearest first,
    // within the segments below and above it.
    int down = -1, down_end = 0;    // empty unless a segment is below
    int up = 65536, up_end = 65535;  // empty unless a segment is above
    for (const Segment& seg : allowed) {
      if (seg.hi < a.dynamic_lo()) std::tie(down, down_end) = std::make_pair(seg.hi, seg.lo);
      if (seg.lo > a.dynamic_hi()) std::tie(up, up_end) = std::make_pair(seg.lo, seg.hi);
    }
    while (down >= down_end || up <= up_end) {
      bool take_down = down >= down_end && (up > up_end || want - down <= up - want);
      int p = take_down ? down-- : up++;
      if (!a.ConflictingHolder(scope, static_cast<uint16_t>(p)).has_value()) {
        return txn.AllocateNear(scope, static_cast<uint16_t>(p), 1, static_cast<uint16_t>(p),
                                static_cast<uint16_t>(p), holder);
      }
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "no free port left for ", scope.ToString(), " outside the dynamic range"));
  }
  absl::Status last = absl::ResourceExhaustedError("no port range allowed");
  for (const Segment& seg : allowed) {
    absl::StatusOr<uint16_t> p = txn.AllocateNear(scope, seg.lo, 1, seg.lo, seg.hi, holder);
    if (p.ok()) return p;
    last = p.status();
  }
  return last;
}

bool Allowed(const std::vector<Segment>& allowed, uint16_t port) {
  return std::any_of(allowed.begin(), allowed.end(),
                     [port](const Segment& s) { return s.Contains(port); });
}

std::optional<std::pair<LeaseOutcome, std::string>> RoomForLease(const State& st,
                                                                 const std::string& client,
                                                                 const LeasePolicy& policy) {
  const int* count = st.leases_per_client.Find(client);
  if (count != nullptr && *count >= policy.max_per_client) {
    return std::make_pair(LeaseOutcome::kQuota,
                          absl::StrCat(client, " already holds ", *count, " leases"));
  }
  if (st.leases_by_port.size() >= static_cast<size_t>(std::max(policy.max_leases, 0))) {
    return std::make_pair(LeaseOutcome::kNoResources,
                          absl::StrCat("the agent already holds ", st.leases_by_port.size(),
                                       " leases (--natpmp_max_leases)"));
  }
  return std::nullopt;
}

std::optional<std::string> RefusedClient(const State& state, const IpAddress& client) {
  for (const auto& [network, n] : state.network.containers) {
    if (network.Contains(client)) {
      return absl::StrCat(client.ToString(), " is inside container network ",
                          network.Network().ToString());
    }
  }
  if (state.mapping_targets.Find(client.ToString()) != nullptr) {
    return absl::StrCat(client.ToString(), " is the target of another owner's mapping");
  }
  return std::nullopt;
}

void IndexLease(State& state, const MappingRecord& m) {
  if (m.owner().kind() != v1::OWNER_KIND_UPNP) state.leases.Put(LeaseKeyOf(m), m.id());
  state.leases_by_port.Put(LeasePortKeyOf(m), m.id());
  const int* n = state.leases_per_client.Find(m.target_ip());
  state.leases_per_client.Put(m.target_ip(), (n == nullptr ? 0 : *n) + 1);
}

void UnindexLease(State& state, const MappingRecord& m) {
  const std::string* id = state.leases_by_port.Find(LeasePortKeyOf(m));
  if (id == nullptr || *id != m.id()) return;
  state.leases_by_port.Erase(LeasePortKeyOf(m));
  if (m.owner().kind() != v1::OWNER_KIND_UPNP) state.leases.Erase(LeaseKeyOf(m));
  const int* n = state.leases_per_client.Find(m.target_ip());
  if (n == nullptr || *n <= 1) {
    state.leases_per_client.Erase(m.target_ip());
  } else {
    state.leases_per_client.Put(m.target_ip(), *n - 1);
  }
}

void HoldCompanion(Txn& txn, const MappingRecord& m) {
  std::optional<PortScope> other = CompanionScope(m, m.nat);
  if (!other || txn.allocator().ConflictingHolder(*other, m.nat.host_port).has_value()) return;
  if (txn.Reserve(*other, m.nat.host_port, 1, CompanionHolder(m)).ok()) {
    txn.state().companions.Put(m.id(), *other);
  }
}

void HoldCompanionAtStart(State& state, nat::PortAllocator& allocator, const MappingRecord& m) {
  std::optional<PortScope> other = CompanionScope(m, m.nat);
  if (!other || allocator.ConflictingHolder(*other, m.nat.host_port).has_value()) return;
  if (allocator.Reserve(*other, m.nat.host_port, 1, CompanionHolder(m)).ok()) {
    state.companions.Put(m.id(), *other);
  }
}

void FreeOwnCompanion(Txn& txn, const std::string& client, nat::Protocol protocol,
                      uint16_t port) {
  std::string freed;
  txn.state().companions.ForEach([&](const std::string& id, const PortScope& comp) {
    if (!freed.empty() || comp.protocol != protocol) return;
    const MappingRecord* other = txn.state().mappings.Find(id);
    if (other != nullptr && other->target_ip() == client && other->nat.host_port == port) {
      freed = id;
    }
  });
  if (!freed.empty()) ReleaseCompanion(txn, *txn.state().mappings.Find(freed));
}

void ReleaseCompanion(Txn& txn, const MappingRecord& m) {
  const PortScope* scope = txn.state().companions.Find(m.id());
  if (scope == nullptr) return;
  PortScope copy = *scope;
  txn.Release(copy, m.nat.host_port, 1, CompanionHolder(m));
  txn.state().companions.Erase(m.id());
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
  if (std::optional<std::string> why = RefusedClient(st, r.client)) {
    return Refuse(txn, LeaseOutcome::kNotAuthorized, *why);
  }

  // A repeated request refreshes the lease and keeps its port.
  if (const std::string* existing = st.leases.Find(LeaseKey(client, r.protocol, r.internal_port))) {
    MappingRecord rec = *st.mappings.Find(*existing);
    if (std::optional<std::string> why = NotItsLease(r, rec)) {
      return Refuse(txn, LeaseOutcome::kNotAuthorized, *why);
    }
    if (r.prefer_failure && r.suggested_port != 0 && r.suggested_port != rec.nat.host_port) {
      return Refuse(txn, LeaseOutcome::kCannotProvide, "lease exists on another port");
    }
    rec.set_expires_at(now + absl::Seconds(lifetime));
    uint16_t port = rec.nat.host_port;
    RefreshMapping(txn, std::move(rec));
    return {LeaseOutcome::kOk, port, lifetime, "refreshed"};
  }

  if (std::optional<std::pair<LeaseOutcome, std::string>> full =
          RoomForLease(st, client, policy)) {
    return Refuse(txn, full->first, full->second);
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
  std::vector<Segment> allowed = AllowedPorts(policy, txn.allocator());
  if (suggested != 0) FreeOwnCompanion(txn, client, r.protocol, suggested);
  if (r.prefer_failure && suggested != 0 &&
      (!Allowed(allowed, suggested) || txn.allocator().ConflictingHolder(scope, suggested).has_value())) {
    std::optional<std::string> holder_of = txn.allocator().ConflictingHolder(scope, suggested);
    return Refuse(txn, LeaseOutcome::kCannotProvide,
                  holder_of ? absl::StrCat("port ", suggested, " is held by ", *holder_of)
                            : absl::StrCat("port ", suggested, " is outside ",
                                           DescribeAllowed(policy, txn.allocator())));
  }
  // The port wanted: the suggestion when inside --natpmp_port_range, else
  // the internal port.
  uint16_t want = suggested != 0 && suggested >= policy.port_lo && suggested <= policy.port_hi
                      ? suggested
                      : r.internal_port;
  // The id first: the allocator names the holder by it.
  proto.set_id(txn.NewMappingId());
  absl::StatusOr<uint16_t> port =
      HoldLeasePort(txn, scope, want, policy, allowed, MappingHolder(proto));
  if (!port.ok()) {
    return Refuse(txn, LeaseOutcome::kNoResources,
                  absl::StrCat(port.status().message(), " (leases take ",
                               DescribeAllowed(policy, txn.allocator()), ")"));
  }
  nat_mapping.host_port = *port;
  proto.set_host_port(*port);
  *proto.mutable_created_at() = ToTimestamp(now);
  const MappingRecord& rec =
      PutMapping(txn, proto, nat_mapping, v1::MappingEvent::TYPE_ADDED, ct);
  IndexLease(st, rec);
  HoldCompanion(txn, rec);
  return {LeaseOutcome::kOk, *port, lifetime, absl::StrCat("new lease ", proto.id())};
}

int ExpireLeases(Txn& txn, nat::ConntrackCleaner* ct) {
  if (txn.state().leases_need_move) MoveLeases(txn, ct);
  std::vector<std::string> expired;
  txn.state().mappings.ForEach([&](const std::string& id, const MappingRecord& m) {
    if (m.has_expires_at() && m.expires_at() <= txn.now()) {
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
    if (IsLease(m) && m.nat.host_ip != address) ids.push_back(id);
  });
  std::sort(ids.begin(), ids.end());
  std::vector<std::string> dropped;
  for (const std::string& id : ids) {
    MappingRecord m = *st.mappings.Find(id);
    ReleaseCompanion(txn, m);
    txn.Release(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m));
    PortMapping n = m.nat;
    n.host_ip = address;
    if (!txn.Reserve(PortScope::Of(n), n.host_port, 1, MappingHolder(m)).ok()) {
      // Held again for RemoveMapping to release.
      txn.Reserve(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m))
          .IgnoreError();
      dropped.push_back(id);
      continue;
    }
    for (const auto& e : m.nat.ToElements()) txn.batch().remove.dnat.insert(e);
    v1::PortMapping p = m.ToProto();
    p.set_host_ip(address.ToString());
    HoldCompanion(txn, PutMapping(txn, p, n, v1::MappingEvent::TYPE_UPDATED, ct));
  }
  for (const std::string& id : dropped) RemoveMapping(txn, id, ct);
  st.leases_need_move = false;
}

}  // namespace fabric::agent::owners
