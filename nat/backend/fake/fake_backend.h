// FakeBackend: an in-memory Backend with the kernel's semantics (removing a
// missing element or adding a present one fails the whole batch), and hooks
// to inject failures and simulate foreign changes. testonly.
#pragma once

#include <deque>
#include <string>

#include "nat/backend/backend.h"

namespace fabric::nat {

class FakeBackend : public Backend {
 public:
  std::string name() const override { return "fake"; }
  absl::Status Apply(const Batch& batch) override;
  absl::Status Replace(const RuleSet& desired) override;
  absl::StatusOr<KernelState> Read() const override;
  absl::Status DeleteTable() override;

  // The next Apply/Replace calls fail with these, in order, changing nothing.
  void FailNext(absl::Status status) { failures_.push_back(std::move(status)); }

  // Direct access, to simulate someone else editing the table.
  RuleSet& mutable_rules() { return rules_; }
  const RuleSet& rules() const { return rules_; }
  void set_table_present(bool present) { table_present_ = present; }
  void break_layout(std::string problem) { problem_ = std::move(problem); }

  int applies() const { return applies_; }
  int replaces() const { return replaces_; }

 private:
  absl::Status TakeFailure();

  RuleSet rules_;
  bool table_present_ = false;
  std::string problem_;
  std::deque<absl::Status> failures_;
  int applies_ = 0;
  int replaces_ = 0;
};

}  // namespace fabric::nat
