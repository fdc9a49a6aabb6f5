// The mapping table's rules, shared by every owner unit: adding a mapping
// (an id, its host ports, its row, its kernel elements, its event) and
// removing one (the same in reverse, plus a lease's index entries and
// companion port), always inside a transaction (agent/core/txn.h).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "agent/core/txn.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent::owners {

// Gives `proto` an id, holds its host ports (host port 0: allocates from
// the dynamic range) and adds it to the transaction. Returns it as stored.
// kAlreadyExists naming the holder; kResourceExhausted when no port is free.
absl::StatusOr<v1::PortMapping> AddMapping(Txn& txn, v1::PortMapping proto,
                                           nat::PortMapping nat,
                                           nat::ConntrackCleaner* conntrack);

// Adds an already allocated mapping (its ports held by the caller) to the
// state, the store row, the kernel batch and the events. Returns the record
// as the transaction's state holds it (valid until the next write to the
// mapping table).
const MappingRecord& PutMapping(Txn& txn, const v1::PortMapping& proto,
                                const nat::PortMapping& nat, v1::MappingEvent::Type type,
                                nat::ConntrackCleaner* conntrack);

// Stores and announces (TYPE_UPDATED) a changed record whose kernel form
// and owner are unchanged: a lease's new expiry or description.
void RefreshMapping(Txn& txn, MappingRecord rec);

// Removes mapping `id` (which must exist): row, kernel elements, ports,
// lease index and companion port, and tells subscribers.
void RemoveMapping(Txn& txn, const std::string& id, nat::ConntrackCleaner* conntrack);

// The index of other owners' targets (State::mapping_targets) that
// NAT-PMP/PCP consult; PutMapping and RemoveMapping keep it, start-up
// fills it. Leases and static forwards are not indexed.
void IndexTarget(State& state, const MappingRecord& m);
void UnindexTarget(State& state, const MappingRecord& m);

// Datagram flows keep their translation (or their lack of one) as long as
// the client keeps sending: after commit, outside the lock, forget them so
// the next packet is translated afresh.
void ForgetFlowsAfterCommit(Txn& txn, const nat::PortMapping& m,
                            nat::ConntrackCleaner* conntrack);

}  // namespace fabric::agent::owners
