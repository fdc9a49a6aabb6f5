#include "agent/owners/mappings.h"

#include "agent/core/convert.h"
#include "agent/owners/leases.h"

namespace fabric::agent::owners {

void ForgetFlowsAfterCommit(Txn& txn, const nat::PortMapping& m,
                            nat::ConntrackCleaner* conntrack) {
  if (conntrack == nullptr || m.protocol == nat::Protocol::kTcp) return;
  txn.AfterUnlock([conntrack, m] {
    conntrack->ForgetHostPorts(m.family(), m.protocol, m.host_ip, m.host_port,
                               m.last_host_port())
        .IgnoreError();
  });
}

absl::StatusOr<v1::PortMapping> AddMapping(Txn& txn, v1::PortMapping proto,
                                           nat::PortMapping nat,
                                           nat::ConntrackCleaner* conntrack) {
  // The id first: the allocator names the holder by it.
  proto.set_id(txn.NewMappingId());
  std::string holder = MappingHolder(proto);
  if (nat.host_port == 0) {
    absl::StatusOr<uint16_t> port =
        txn.Allocate(nat::PortScope::Of(nat), nat.port_count, holder);
    if (!port.ok()) return port.status();
    nat.host_port = *port;
    if (nat.target_port == 0) nat.target_port = *port;
  } else if (absl::Status s =
                 txn.Reserve(nat::PortScope::Of(nat), nat.host_port, nat.port_count, holder);
             !s.ok()) {
    return s;
  }
  proto.set_host_port(nat.host_port);
  proto.set_target_port(nat.target_port);
  proto.set_port_count(nat.port_count);
  *proto.mutable_created_at() = ToTimestamp(txn.now());
  PutMapping(txn, proto, nat, v1::MappingEvent::TYPE_ADDED, conntrack);
  return proto;
}

const MappingRecord& PutMapping(Txn& txn, const v1::PortMapping& proto,
                                const nat::PortMapping& nat, v1::MappingEvent::Type type,
                                nat::ConntrackCleaner* conntrack) {
  txn.write().put_mappings.push_back(proto);
  for (const nat::DnatElement& e : nat.ToElements()) txn.batch().add.dnat.insert(e);
  if (const MappingRecord* old = txn.state().mappings.Find(proto.id())) {
    UnindexTarget(txn.state(), *old);
    if (old->owner().id() != proto.owner().id()) {
      txn.state().by_owner.Remove(old->owner().id(), proto.id());
    }
  }
  MappingRecord rec(proto, nat);
  IndexTarget(txn.state(), rec);
  txn.state().by_owner.Add(proto.owner().id(), proto.id());
  txn.state().mappings.Put(proto.id(), std::move(rec));
  txn.Publish(type, proto);
  ForgetFlowsAfterCommit(txn, nat, conntrack);
  return *txn.state().mappings.Find(proto.id());
}

void RefreshMapping(Txn& txn, MappingRecord rec) {
  v1::PortMapping stored = rec.ToProto();
  txn.write().put_mappings.push_back(stored);
  txn.Publish(v1::MappingEvent::TYPE_UPDATED, stored);
  txn.state().mappings.Put(stored.id(), std::move(rec));
}

void RemoveMapping(Txn& txn, const std::string& id, nat::ConntrackCleaner* conntrack) {
  const MappingRecord* found = txn.state().mappings.Find(id);
  if (found == nullptr) return;
  MappingRecord m = *found;
  txn.write().delete_mappings.push_back(id);
  for (const nat::DnatElement& e : m.nat.ToElements()) txn.batch().remove.dnat.insert(e);
  if (IsLease(m)) {
    ReleaseCompanion(txn, m);
    UnindexLease(txn.state(), m);
  }
  UnindexTarget(txn.state(), m);
  txn.state().by_owner.Remove(m.owner().id(), id);
  txn.Release(nat::PortScope::Of(m.nat), m.nat.host_port, m.nat.port_count,
              MappingHolder(m));
  txn.state().mappings.Erase(id);
  txn.Publish(v1::MappingEvent::TYPE_REMOVED, m.ToProto());
  ForgetFlowsAfterCommit(txn, m.nat, conntrack);
}

namespace {

// Whether `m`'s target counts as another owner's (State::mapping_targets):
// containers' and API mappings do; leases are the LAN host's own, and a
// static forward the router's admin points at a LAN host leaves that host
// free to ask for its other ports itself.
bool CountsAsTarget(const MappingRecord& m) {
  return !IsLease(m) && m.owner().kind() != v1::OWNER_KIND_STATIC;
}

}  // namespace

void IndexTarget(State& state, const MappingRecord& m) {
  if (!CountsAsTarget(m)) return;
  std::string key = m.target_ip();  // canonical text
  const int* n = state.mapping_targets.Find(key);
  state.mapping_targets.Put(key, (n == nullptr ? 0 : *n) + 1);
}

void UnindexTarget(State& state, const MappingRecord& m) {
  if (!CountsAsTarget(m)) return;
  std::string key = m.target_ip();  // canonical text
  const int* n = state.mapping_targets.Find(key);
  if (n == nullptr) return;
  if (*n <= 1) {
    state.mapping_targets.Erase(key);
  } else {
    state.mapping_targets.Put(key, *n - 1);
  }
}

}  // namespace fabric::agent::owners
