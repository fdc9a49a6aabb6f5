#include "nat/backend/fake/fake_backend.h"

namespace fabric::nat {

absl::Status FakeBackend::TakeFailure() {
  if (failures_.empty()) return absl::OkStatus();
  absl::Status s = failures_.front();
  failures_.pop_front();
  return s;
}

absl::Status FakeBackend::Apply(const Batch& batch) {
  if (absl::Status s = TakeFailure(); !s.ok()) return s;
  if (!table_present_) {
    return absl::FailedPreconditionError("table inet fabric_nat is missing");
  }
  if (absl::Status s = ApplyBatch(batch, &rules_); !s.ok()) return s;
  ++applies_;
  return absl::OkStatus();
}

absl::Status FakeBackend::Replace(const RuleSet& desired) {
  if (absl::Status s = TakeFailure(); !s.ok()) return s;
  rules_ = desired;
  table_present_ = true;
  problem_.clear();
  ++replaces_;
  return absl::OkStatus();
}

absl::StatusOr<KernelState> FakeBackend::Read() const {
  KernelState state;
  state.table_present = table_present_;
  state.layout_intact = table_present_ && problem_.empty();
  state.problem = problem_;
  if (table_present_) state.rules = rules_;
  return state;
}

absl::Status FakeBackend::DeleteTable() {
  table_present_ = false;
  rules_ = RuleSet{};
  return absl::OkStatus();
}

}  // namespace fabric::nat
