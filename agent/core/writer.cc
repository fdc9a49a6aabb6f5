#include "agent/core/writer.h"

#include <malloc.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace fabric::agent {

namespace {

nat::Batch Inverse(const nat::Batch& b) {
  nat::Batch out;
  out.remove = b.add;
  out.add = b.remove;
  return out;
}

}  // namespace

void GiveBackFreedMemory() { malloc_trim(0); }

ReturnFreedMemory::~ReturnFreedMemory() { GiveBackFreedMemory(); }

Writer::Writer(std::unique_ptr<Store> store, nat::Backend* backend, Options options)
    : options_(std::move(options)),
      backend_name_(backend->name()),
      backend_(backend),
      store_(std::move(store)),
      allocator_(options_.dynamic_lo, options_.dynamic_hi),
      hub_(options_.max_watches) {
  std::lock_guard<std::mutex> lock(mu_);
  PublishLocked({});
}

absl::Status Writer::Start(
    const std::function<absl::Status(StoreContents&, State*, nat::PortAllocator*,
                                     StoreWrite* cleanup)>& build) {
  std::lock_guard<std::mutex> lock(mu_);
  auto fail = [&](absl::Status s) {
    not_ready_reason_ = std::string(s.message());
    PublishLocked({});
    return s;
  };
  absl::StatusOr<StoreContents> contents = store_->Load();
  if (!contents.ok()) return fail(contents.status());
  State state;
  StoreWrite cleanup;
  if (absl::Status s = build(*contents, &state, &allocator_, &cleanup); !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = store_->Commit(cleanup); !s.ok()) return fail(s);
  state_ = std::move(state);
  absl::StatusOr<nat::SyncReport> report = nat::Sync(*backend_, state_.Desired());
  if (!report.ok()) {
    return fail(absl::Status(report.status().code(),
                             absl::StrCat("kernel sync failed: ", report.status().message())));
  }
  ready_ = true;
  not_ready_reason_.clear();
  KnownGoodNowLocked();
  PublishLocked({});
  return absl::OkStatus();
}

void Writer::KnownGoodNowLocked() {
  absl::StatusOr<uint32_t> g = backend_->Generation();
  verified_generation_.store(g.ok() ? int64_t{*g} : -1, std::memory_order_release);
}

absl::StatusOr<uint32_t> Writer::KernelGeneration() const {
  if (options_.reader == nullptr) return absl::UnimplementedError("no reader");
  std::lock_guard<std::mutex> reading(read_mu_);
  return options_.reader->Generation();
}

absl::StatusOr<std::map<std::string, uint64_t>> Writer::ConnectionCounts() const {
  if (options_.reader == nullptr) return absl::UnimplementedError("no reader");
  std::lock_guard<std::mutex> reading(read_mu_);
  return options_.reader->ConnectionCounts();
}

absl::StatusOr<std::vector<std::string>> Writer::ForwardDropChains() const {
  if (options_.reader == nullptr) return absl::UnimplementedError("no reader");
  std::lock_guard<std::mutex> reading(read_mu_);
  return options_.reader->ForwardDropChains();
}

void Writer::MarkKnownGood(uint32_t generation) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<uint32_t> now = backend_->Generation();
  if (now.ok() && *now == generation) {
    verified_generation_.store(generation, std::memory_order_release);
  }
}

absl::Status Writer::CheckLocked(absl::Time deadline) const {
  if (deadline != absl::InfiniteFuture() && options_.now() > deadline) {
    return absl::DeadlineExceededError(
        "the call's deadline passed before the agent could start it; nothing "
        "was changed");
  }
  if (!ready_) {
    return absl::UnavailableError(absl::StrCat("agent not ready: ", not_ready_reason_));
  }
  return absl::OkStatus();
}

absl::Status Writer::MutateStatus(absl::Time deadline,
                                  const std::function<absl::Status(Txn&)>& fn) {
  return Mutate<bool>(deadline, [&fn](Txn& txn) -> absl::StatusOr<bool> {
           if (absl::Status s = fn(txn); !s.ok()) return s;
           return true;
         })
      .status();
}

absl::Status Writer::CommitLocked(Txn& txn) {
  const nat::Batch& batch = txn.batch();
  bool applied = false;
  absl::Status s = store_->Commit(txn.write(), [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    // From here until the snapshot is out, a kernel read may see a state
    // no snapshot describes; the log says which elements.
    LogBatch(kernel_seq_.load(std::memory_order_acquire) + 1, batch);
    kernel_seq_.fetch_add(1, std::memory_order_acq_rel);
    absl::Status k = backend_->Apply(batch);
    applied = k.ok();
    if (!applied) kernel_seq_.fetch_add(1, std::memory_order_acq_rel);
    return k;
  });
  if (!s.ok()) {
    if (applied) {
      // COMMIT failed after the kernel took the batch: take it back.
      absl::Status undo = backend_->Apply(Inverse(batch));
      kernel_seq_.fetch_add(1, std::memory_order_acq_rel);
      if (!undo.ok()) {
        ready_ = false;
        not_ready_reason_ = absl::StrCat(
            "the store could not commit a change the kernel had applied (", s.message(),
            ") and taking it back from the kernel failed (", undo.message(),
            "); restart the agent to resync the kernel from the store");
        PublishLocked({});
        return absl::InternalError(not_ready_reason_);
      }
    }
    return s;  // ~Txn returns its ports and ids
  }
  txn.MarkCommitted();
  if (applied) {
    // Our batch moved the generation on by one; anything more was someone
    // else, and the kernel is no longer known to match.
    int64_t known = verified_generation_.load(std::memory_order_acquire);
    std::optional<uint32_t> after = backend_->LastChangeGeneration();
    verified_generation_.store(
        known >= 0 && after.has_value() && int64_t{*after} == known + 1 ? int64_t{*after} : -1,
        std::memory_order_release);
  }
  state_ = txn.TakeState();
  PublishLocked(txn.TakeEvents());
  if (applied) kernel_seq_.fetch_add(1, std::memory_order_acq_rel);
  return absl::OkStatus();
}

void Writer::PublishLocked(std::vector<v1::MappingEvent> events) {
  auto snap = std::make_shared<Snapshot>();
  snap->state = state_;  // shares every table
  snap->version = ++version_;
  snap->ready = ready_;
  snap->not_ready_reason = not_ready_reason_;
  snap->repairs = repairs_;
  snap->last_repair = last_repair_;
  snap->ports_held = allocator_.held();
  snap->dynamic_lo = allocator_.dynamic_lo();
  snap->dynamic_hi = allocator_.dynamic_hi();
  snap->leases = state_.leases_by_port.size();
  hub_.Publish(std::move(snap), events);
}

absl::StatusOr<std::pair<nat::KernelState, std::shared_ptr<const Snapshot>>>
Writer::ReadKernelConsistent() const {
  if (options_.reader != nullptr) {
    std::lock_guard<std::mutex> reading(read_mu_);
    for (int attempt = 0; attempt < 5; ++attempt) {
      uint64_t before = kernel_seq_.load(std::memory_order_acquire);
      std::shared_ptr<const Snapshot> snap = snapshot();
      if (before % 2 != 0) {
        absl::SleepFor(absl::Milliseconds(1));
        continue;
      }
      absl::StatusOr<nat::KernelState> state = options_.reader->Read();
      // A dump that commits kept disturbing: the read under the lock below.
      if (!state.ok() && !absl::IsUnavailable(state.status())) return state.status();
      if (!state.ok()) break;
      uint64_t after = kernel_seq_.load(std::memory_order_acquire);
      if (after == before && snapshot()->version == snap->version) {
        return std::make_pair(*std::move(state), std::move(snap));
      }
    }
  }
  // No reader of its own, or commits kept interleaving: read under the lock.
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<nat::KernelState> state = backend_->Read();
  if (!state.ok()) return state.status();
  return std::make_pair(*std::move(state), snapshot());
}

void Writer::LogBatch(uint64_t key, const nat::Batch& batch) {
  std::lock_guard<std::mutex> l(log_mu_);
  if (batch.size() > kBatchLogElements) {
    // Too big to keep: a read it interleaves with falls back.
    forgotten_ = key;
    return;
  }
  batch_log_.emplace_back(key, std::make_shared<const nat::Batch>(batch));
  batch_log_elements_ += batch.size();
  while (batch_log_.size() > kBatchLogCommits || batch_log_elements_ > kBatchLogElements) {
    forgotten_ = batch_log_.front().first;
    batch_log_elements_ -= batch_log_.front().second->size();
    batch_log_.pop_front();
  }
}

bool Writer::InFluxSince(uint64_t before, nat::RuleSet* in_flux) const {
  std::lock_guard<std::mutex> l(log_mu_);
  if (forgotten_ != 0 && forgotten_ >= before) return false;
  *in_flux = {};
  for (auto it = batch_log_.rbegin(); it != batch_log_.rend() && it->first >= before; ++it) {
    // Added or removed: the kernel may show it either way.
    nat::Union(in_flux, it->second->add);
    nat::Union(in_flux, it->second->remove);
  }
  return true;
}

void Writer::KernelComparison::Compare(const nat::RuleSet& in_flux) {
  desired = snapshot->state.Desired();
  diff = nat::Diff(kernel.rules, desired);
  nat::EraseAll(&diff.add, in_flux);
  nat::EraseAll(&diff.remove, in_flux);
}

absl::StatusOr<Writer::KernelComparison> Writer::CompareKernel() const {
  if (options_.reader != nullptr) {
    std::lock_guard<std::mutex> reading(read_mu_);
    // Every batch at or after `before` (an odd `before` is a commit under
    // way) was applied during the reads, or is about to be; commits before
    // it published their snapshot before the first read began.
    uint64_t before = kernel_seq_.load(std::memory_order_acquire);
    KernelComparison c;
    bool have = false;
    for (int attempt = 0; attempt < 4; ++attempt) {
      absl::StatusOr<nat::KernelState> state = options_.reader->ReadDuringWrites();
      if (!state.ok()) return state.status();
      if (have && state->table_present && c.kernel.table_present) {
        // A disturbed dump may miss an element nobody changed: what either
        // read saw is there (or in flux).
        nat::Union(&state->rules, c.kernel.rules);
      }
      c.kernel = *std::move(state);
      nat::RuleSet in_flux;
      if (!InFluxSince(before, &in_flux)) {
        // The log no longer reaches back to the first read: start afresh.
        before = kernel_seq_.load(std::memory_order_acquire);
        have = false;
        continue;
      }
      // Taken after the log: it holds every commit whose batch is not in
      // flux.
      c.snapshot = snapshot();
      c.exact = before % 2 == 0 && kernel_seq_.load(std::memory_order_acquire) == before;
      c.Compare(in_flux);
      if (c.exact || c.in_sync()) return c;
      if (!c.diff.add.dnat.empty() && c.diff.add.dnat.size() <= kLookupsPerCompare) {
        // Elements the dump did not show, looked up one by one: a dump
        // that commits disturbed skips some that nobody changed.
        absl::StatusOr<nat::DnatSet> held =
            options_.reader->HoldsDnat(c.diff.add.dnat);
        if (held.ok()) {
          for (const nat::DnatElement& e : *held) {
            c.diff.add.dnat.erase(e);
            c.kernel.rules.dnat.insert(e);
          }
          // And those a commit removed after the read, before the lookup.
          if (InFluxSince(before, &in_flux)) nat::EraseAll(&c.diff.add, in_flux);
          if (c.in_sync()) return c;
        }
      }
      have = true;
    }
  }
  // The last word: a read that matches a snapshot exactly.
  auto read = ReadKernelConsistent();
  if (!read.ok()) return read.status();
  KernelComparison c;
  c.kernel = std::move(read->first);
  c.snapshot = std::move(read->second);
  c.exact = true;
  c.Compare({});
  return c;
}

absl::StatusOr<nat::SyncReport> Writer::Resync() {
  ReturnFreedMemory after;  // the sync's reads, once the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  return RepairLocked();
}

absl::StatusOr<nat::SyncReport> Writer::RepairLocked() {
  absl::StatusOr<nat::SyncReport> report = nat::Sync(*backend_, state_.Desired());
  if (!report.ok()) return report;
  KnownGoodNowLocked();
  if (report->action != nat::SyncReport::Action::kNone) {
    ++repairs_;
    last_repair_ = options_.now();
    PublishLocked({});
  }
  return report;
}

bool Writer::KernelDrifted(const absl::Status& s) {
  return absl::IsNotFound(s) || absl::IsAlreadyExists(s);
}

absl::Status Writer::KernelError(const absl::Status& s) {
  if (absl::IsNotFound(s) || absl::IsAlreadyExists(s) || absl::IsFailedPrecondition(s)) {
    return absl::InternalError(absl::StrCat("the kernel refused the change: ", s.message()));
  }
  return s;
}

absl::Status Writer::Backup(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  return store_->Backup(path);
}

}  // namespace fabric::agent
