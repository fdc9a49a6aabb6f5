// Backend: the only component that changes kernel NAT state.
//
// Implementations: NftablesBackend (libnftnl over netlink, table
// `inet fabric_nat`), FakeBackend (testonly, in memory). The agent's core
// owns one Backend and serializes every call (thread-compatible).
//
// The desired state is a RuleSet (nat/types.h). Changes travel as a Batch of
// elements to remove and to add, applied all-or-nothing; Sync() below finds
// the smallest batch that makes the kernel match a desired RuleSet.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nat/types.h"

namespace fabric::nat {

// A set of changes, applied together: `remove` first, then `add`.
struct Batch {
  RuleSet remove;
  RuleSet add;

  bool empty() const { return remove.empty() && add.empty(); }
  size_t size() const { return remove.size() + add.size(); }
  std::string DebugString() const;
};

// `batch` applied to `rules` with a kernel's semantics, for backends that
// keep or rewrite whole rule sets: removals first, then additions; removing
// an element that is not there is kNotFound, adding one that is there
// kAlreadyExists, each naming the element; on error `rules` is unchanged.
absl::Status ApplyBatch(const Batch& batch, RuleSet* rules);

// Adds every element of `more` to `into` (a set union of each kind).
void Union(RuleSet* into, const RuleSet& more);

// Adds `more`'s removals and additions to `into`.
void Merge(Batch* into, const Batch& more);

// The changes that turn `current` into `desired`.
Batch Diff(const RuleSet& current, const RuleSet& desired);

// Removes from `from` every element that `elements` holds (of each kind).
void EraseAll(RuleSet* from, const RuleSet& elements);

// What a backend read back from the kernel.
struct KernelState {
  // Our table exists.
  bool table_present = false;
  // Every chain, rule and map of our layout is present and as we made it.
  // When false, `problem` says what is wrong and only a Replace can heal it.
  bool layout_intact = false;
  std::string problem;
  // The elements found in our maps and sets (whatever the layout's state).
  RuleSet rules;
  // The marker of the agent that made the table (Backend::SetOwner), if
  // the backend keeps one; empty otherwise.
  std::string owner;
  // Packets each pinhole let through, and connections each DNAT element
  // translated, where the backend counts them.
  std::map<Pinhole, uint64_t> pinhole_packets;
  std::map<DnatElement, uint64_t> dnat_connections;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "nftables", "fake".
  virtual std::string name() const = 0;

  // Applies every change in `batch` or none of them. REQUIRES: the table
  // exists with an intact layout (after Replace). Errors name the offending
  // change: kNotFound removing an element the kernel lacks, kAlreadyExists
  // adding one it holds, kFailedPrecondition when the table is missing,
  // kUnavailable when the kernel could not be reached, kInternal otherwise.
  virtual absl::Status Apply(const Batch& batch) = 0;

  // Atomically replaces our table with one that holds exactly `desired`
  // (creating it if missing). Nothing outside our table is touched.
  virtual absl::Status Replace(const RuleSet& desired) = 0;

  // Reads back what the kernel holds in our table.
  virtual absl::StatusOr<KernelState> Read() const = 0;
  // Read() for a caller that knows which elements changed while it read
  // (the agent's comparison outside its writer's lock): a dump disturbed by
  // those changes is not read again. It may then miss an element nobody
  // changed (a hash set's chunk skipped it) but never invents one. The
  // counters (pinhole_packets, dnat_connections) may be left empty. By
  // default, Read().
  virtual absl::StatusOr<KernelState> ReadDuringWrites() const { return Read(); }
  // Which of `elements` the kernel holds (key and target alike), each
  // looked up on its own where the backend can (nftables: single ports),
  // so that changes to other elements cannot make it miss one. By
  // default, from a Read().
  virtual absl::StatusOr<DnatSet> HoldsDnat(
      const DnatSet& elements) const;

  // Removes our table and everything in it. OK if it does not exist.
  virtual absl::Status DeleteTable() = 0;

  // The kernel's ruleset generation, which every committed change by
  // anyone moves on (nftables). Lets a periodic check skip reading the
  // table back when nothing changed since it was last found right.
  // kUnimplemented where the kernel has none (x_tables, the fake).
  virtual absl::StatusOr<uint32_t> Generation() const {
    return absl::UnimplementedError("no ruleset generation");
  }
  // The generation right after this backend's last successful Apply or
  // Replace, if it knows it.
  virtual std::optional<uint32_t> LastChangeGeneration() const { return std::nullopt; }

  // The marker Replace leaves on the table (the agent's store id), read back
  // into KernelState::owner, so that an agent can tell a table another
  // agent made. Backends without a place for it ignore it (iptables).
  virtual void SetOwner(const std::string& owner) {}

  // Connections our NAT rules translated since they were made, by kind
  // ("dnat", "hairpin", "masquerade", "localhost", "snat"): a rules-only read, cheap
  // at any number of mappings. kUnimplemented where not counted.
  virtual absl::StatusOr<std::map<std::string, uint64_t>> ConnectionCounts() const {
    return absl::UnimplementedError("this backend does not count connections");
  }

  // Other tables' base chains at the forward hook that drop what they do
  // not accept (policy drop, or a last rule that drops), as
  // "inet/filter/forward (policy drop)": there, DNAT'd connections die
  // whatever our table does. kUnimplemented where not looked at.
  virtual absl::StatusOr<std::vector<std::string>> ForwardDropChains() const {
    return absl::UnimplementedError("this backend does not look at other tables");
  }
};

// What Sync did.
struct SyncReport {
  enum class Action { kNone, kApplied, kReplaced };
  Action action = Action::kNone;
  // For kApplied: the batch. For kReplaced: what the kernel lacked (add)
  // and held beyond the desired state (remove), as far as could be read.
  Batch changes;
  // For kReplaced: why the layout had to be rebuilt.
  std::string reason;
  std::string DebugString() const;
};

// Makes the kernel hold exactly `desired` with the smallest change: nothing
// when it already does, one element batch when the layout is intact, a
// Replace otherwise (or when the element batch fails because the kernel
// changed between the read and the apply).
absl::StatusOr<SyncReport> Sync(Backend& backend, const RuleSet& desired);

}  // namespace fabric::nat
