// Writer: the single serialized writer of NAT state. Its mutex is the only
// lock that guards the state, the store, the port allocator and the
// kernel; every change goes through Mutate(), and every reader takes the
// latest immutable snapshot instead (snapshot()), which never waits for a
// write.
//
// One transaction (Mutate):
//   lock -> deadline and readiness checks -> fn(txn) on a copy of the state
//   -> SQLite BEGIN IMMEDIATE, the rows -> the kernel batch -> COMMIT
//   -> the copy becomes the state -> snapshot and events published
//   -> unlock -> after-unlock work (conntrack cleanup, logs).
// A failure anywhere before COMMIT undoes everything: fn's error or the
// kernel's refusal rolls the SQLite transaction back and the txn returns
// its ports and ids; the state never saw it. If COMMIT itself fails after
// the kernel applied the batch, the inverse batch is applied; if that fails
// too, the writer marks itself not ready (a restart resyncs the kernel to
// the store). A success means the change is on disk and in the kernel.
//
// Kernel reads for Check, Diagnose and the periodic check run outside the
// lock: a sequence count, odd while a commit is between its kernel batch
// and its snapshot, tells whether a read matches a snapshot
// (ReadKernelConsistent retries until one does). Diagnose and the periodic
// check need no retry (CompareKernel): the writer keeps the last
// commits' kernel batches, and the elements of those that interleaved with
// a read are the only ones the read may show either way.
//
// Thread-safe. Never calls out (callbacks, RPCs, waits on other threads)
// while holding its lock, except the owner unit's fn, which must not either.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/core/events.h"
#include "agent/core/snapshot.h"
#include "agent/core/state.h"
#include "agent/core/txn.h"
#include "agent/store.h"
#include "nat/backend/backend.h"
#include "nat/port_allocator.h"

namespace fabric::agent {

// Gives the heap's free pages back to the system (malloc_trim).
void GiveBackFreedMemory();

// GiveBackFreedMemory when it goes out of scope. Declared before the
// locals of a big read or rebuild (tens of MB at 100k mappings), it runs
// once they are gone; otherwise the process keeps their peak as RSS. The
// agent's start-up calls GiveBackFreedMemory itself, before serving.
struct ReturnFreedMemory {
  ReturnFreedMemory() = default;
  ReturnFreedMemory(const ReturnFreedMemory&) = delete;
  ReturnFreedMemory& operator=(const ReturnFreedMemory&) = delete;
  ~ReturnFreedMemory();
};

class Writer {
 public:
  struct Options {
    uint16_t dynamic_lo = 32768;
    uint16_t dynamic_hi = 60999;
    std::function<absl::Time()> now = [] { return absl::Now(); };
    size_t max_watches = 64;
    // A second backend on its own kernel connection, for reads outside the
    // writer's lock (Backends are thread-compatible: the writer's one is
    // used under the lock only). Null: reads take the lock.
    nat::Backend* reader = nullptr;
  };

  Writer(std::unique_ptr<Store> store, nat::Backend* backend, Options options);

  // Start-up, before any Mutate: `build` fills the state from the store's
  // contents and holds their ports (on the allocator it is given); then
  // `cleanup` is committed, the kernel is made to match in one batch, and
  // the writer becomes ready. On failure it stays not ready with the reason.
  // `build` may take (move) what it keeps out of the contents.
  absl::Status Start(
      const std::function<absl::Status(StoreContents&, State*, nat::PortAllocator*,
                                       StoreWrite* cleanup)>& build);

  // Runs `fn` as one transaction (see the file comment). kDeadlineExceeded,
  // having done nothing, when `deadline` passed before the writer could
  // start it; kUnavailable when not ready.
  template <typename T>
  absl::StatusOr<T> Mutate(absl::Time deadline,
                           const std::function<absl::StatusOr<T>(Txn&)>& fn);
  // Mutate for functions that return only a status.
  absl::Status MutateStatus(absl::Time deadline, const std::function<absl::Status(Txn&)>& fn);

  // The latest committed state and status; never waits for a write.
  std::shared_ptr<const Snapshot> snapshot() const { return hub_.latest(); }
  EventHub& hub() { return hub_; }

  // Reads the kernel outside the lock and returns it with the snapshot it
  // matches: the read is repeated while commits interleave, and taken under
  // the lock after a few tries.
  absl::StatusOr<std::pair<nat::KernelState, std::shared_ptr<const Snapshot>>>
  ReadKernelConsistent() const;
  // The kernel compared with the state, outside the lock and without
  // waiting for commits to pause (Diagnose, the periodic check). A commit
  // that interleaves with the read may show either way in the kernel, so
  // the elements its batch touched are left out of `diff`; everything else
  // must match. The reader's dumps may be disturbed by those commits
  // (Backend::ReadDuringWrites: a hash set's chunk can then miss an element
  // nobody changed, the same ones read after read), so an element missing
  // while commits interleaved is looked up by itself (Backend::HoldsDnat),
  // other findings are read again, and what is still found after a few
  // reads is settled by a read under ReadKernelConsistent's rules. A
  // finding is never an artefact of concurrent writes.
  struct KernelComparison {
    nat::KernelState kernel;
    std::shared_ptr<const Snapshot> snapshot;
    nat::RuleSet desired;  // snapshot->state.Desired()
    // Turns the kernel's elements into `desired`, elements in flux left out.
    nat::Batch diff;
    // No commit interleaved: `kernel` is exactly what the kernel held at
    // `snapshot`.
    bool exact = false;
    // Nothing to report: the table is there, its layout intact, no diff.
    bool in_sync() const {
      return kernel.table_present && kernel.layout_intact && diff.empty();
    }
    // Sets `desired` from `snapshot` and `diff` from `kernel`, leaving out
    // the elements `in_flux` holds.
    void Compare(const nat::RuleSet& in_flux);
  };
  absl::StatusOr<KernelComparison> CompareKernel() const;
  // The reader's Backend::ConnectionCounts (a rules-only read) and
  // Backend::ForwardDropChains.
  absl::StatusOr<std::map<std::string, uint64_t>> ConnectionCounts() const;
  absl::StatusOr<std::vector<std::string>> ForwardDropChains() const;

  // Makes the kernel match the state again (the repair path). Counts a
  // repair when it changed anything.
  absl::StatusOr<nat::SyncReport> Resync();

  // The kernel's ruleset generation (through the reader), and whether it is
  // the one at which the kernel was last known to match the state: then
  // nobody has changed anything since, and a check need not read the table.
  // The known generation follows the writer's own batches (each moves it on
  // by one) and is forgotten when anything else moved it.
  absl::StatusOr<uint32_t> KernelGeneration() const;
  bool KnownGood(uint32_t generation) const {
    return verified_generation_.load(std::memory_order_acquire) == int64_t{generation};
  }
  // After a read that matched the state: remember `generation` as known
  // good if the kernel is still at it.
  void MarkKnownGood(uint32_t generation) const;

  // A consistent copy of the store at `path`.
  absl::Status Backup(const std::string& path);

  absl::Time now() const { return options_.now(); }
  const std::string& backend_name() const { return backend_name_; }

 private:
  // REQUIRES: mu_ held. Commits `txn` (store, kernel), takes its state and
  // publishes; on failure everything is undone and the status returned.
  absl::Status CommitLocked(Txn& txn);
  // REQUIRES: mu_ held.
  void PublishLocked(std::vector<v1::MappingEvent> events);
  absl::Status CheckLocked(absl::Time deadline) const;
  // REQUIRES: mu_ held. Sync of the kernel to the state; counts a repair
  // when it changed anything.
  absl::StatusOr<nat::SyncReport> RepairLocked();
  // The kernel refused a batch because it does not hold what the state
  // says (an element missing or already there).
  static bool KernelDrifted(const absl::Status& s);
  // A commit failure as the caller sees it: the kernel's refusals (which
  // the backend reports as kNotFound, kAlreadyExists, kFailedPrecondition)
  // must not read as "no such container" or "rules missing" to a CNI
  // plugin; they are kInternal naming the kernel.
  static absl::Status KernelError(const absl::Status& s);

  const Options options_;
  const std::string backend_name_;
  nat::Backend* const backend_;

  mutable std::mutex mu_;
  std::unique_ptr<Store> store_;        // guarded by mu_
  nat::PortAllocator allocator_;        // guarded by mu_
  State state_;                         // guarded by mu_
  bool ready_ = false;                  // guarded by mu_
  std::string not_ready_reason_ = "starting";  // guarded by mu_
  uint64_t version_ = 0;                // guarded by mu_
  uint64_t repairs_ = 0;                // guarded by mu_
  absl::Time last_repair_ = absl::InfinitePast();  // guarded by mu_
  // REQUIRES: mu_ held. The kernel matches the state now: remember its
  // generation (or forget, if it cannot be read).
  void KnownGoodNowLocked();
  // The generation at which the kernel last matched the state; -1: unknown.
  // Written under mu_.
  mutable std::atomic<int64_t> verified_generation_{-1};  // knowledge, not state
  // Serializes the users of options_.reader.
  mutable std::mutex read_mu_;
  // Odd while a commit's kernel batch is applied but its snapshot not yet
  // published (see ReadKernelConsistent).
  std::atomic<uint64_t> kernel_seq_{0};
  // The last commits' kernel batches, each under the (odd) kernel_seq_
  // value it was applied at, for CompareKernel. Bounded by
  // kBatchLogCommits and kBatchLogElements; `forgotten_` is the newest key
  // dropped (0: none). An entry goes in before kernel_seq_ moves, so a
  // reader that sees the count moved finds the batch.
  static constexpr size_t kBatchLogCommits = 256;
  static constexpr size_t kBatchLogElements = 16384;
  // CompareKernel looks up at most this many elements a disturbed dump
  // did not show, one by one; more are settled by reading again.
  static constexpr size_t kLookupsPerCompare = 512;
  // The elements of every logged batch at or after kernel_seq_ value
  // `before`, into `in_flux`; false when the log no longer reaches back
  // that far.
  bool InFluxSince(uint64_t before, nat::RuleSet* in_flux) const;
  mutable std::mutex log_mu_;
  std::deque<std::pair<uint64_t, std::shared_ptr<const nat::Batch>>> batch_log_;  // log_mu_
  size_t batch_log_elements_ = 0;  // guarded by log_mu_
  uint64_t forgotten_ = 0;         // guarded by log_mu_
  void LogBatch(uint64_t key, const nat::Batch& batch);
  EventHub hub_;
};

template <typename T>
absl::StatusOr<T> Writer::Mutate(absl::Time deadline,
                                 const std::function<absl::StatusOr<T>(Txn&)>& fn) {
  std::vector<std::function<void()>> after;
  absl::StatusOr<T> result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = CheckLocked(deadline); !s.ok()) return s;
    // A second attempt only after the kernel drifted from the state (an
    // element someone deleted by hand that this change removes): repaired,
    // then the change runs again on the repaired kernel.
    for (int attempt = 0;; ++attempt) {
      Txn txn(state_, &allocator_, options_.now());
      result = fn(txn);
      if (!result.ok()) return result.status();  // ~Txn undoes its ports
      if (txn.discarded()) return result;
      absl::Status s = CommitLocked(txn);
      if (s.ok()) {
        after = txn.TakeAfterUnlock();
        break;
      }
      if (attempt == 0 && KernelDrifted(s) && RepairLocked().ok()) continue;
      return KernelError(s);
    }
  }
  for (auto& f : after) f();
  return result;
}

}  // namespace fabric::agent
