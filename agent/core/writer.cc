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
    const std::function<absl::Status(const StoreContents&, State*, nat::PortAllocator*,
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

void Writer::MarkKnownGood(uint32_t generation) {
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
    // no snapshot describes.
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
      if (!state.ok()) return state.status();
      uint64_t after = kernel_seq_.load(std::memory_order_acquire);
      if (after == before && snapshot()->version == snap->version) {
        // Big reads leave freed memory in malloc's arenas: give it back.
        malloc_trim(0);
        return std::make_pair(*std::move(state), std::move(snap));
      }
    }
  }
  // No reader of its own, or commits kept interleaving: read under the lock.
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<nat::KernelState> state = backend_->Read();
  if (!state.ok()) return state.status();
  malloc_trim(0);
  return std::make_pair(*std::move(state), snapshot());
}

absl::StatusOr<nat::SyncReport> Writer::Resync() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<nat::SyncReport> report = RepairLocked();
  malloc_trim(0);
  return report;
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
