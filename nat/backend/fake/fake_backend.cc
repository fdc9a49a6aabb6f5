#include "nat/backend/fake/fake_backend.h"

#include "absl/strings/str_cat.h"

namespace fabric::nat {

namespace {
template <typename T, typename F>
absl::Status CheckRemove(const std::set<T>& have, const std::set<T>& remove,
                         F describe) {
  for (const auto& x : remove) {
    if (have.count(x) == 0) {
      return absl::NotFoundError(
          absl::StrCat("remove ", describe(x), ": not in the table"));
    }
  }
  return absl::OkStatus();
}

template <typename T, typename F>
absl::Status CheckAdd(const std::set<T>& have, const std::set<T>& add,
                      F describe) {
  for (const auto& x : add) {
    if (have.count(x) != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("add ", describe(x), ": already in the table"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
void ApplyTo(std::set<T>& have, const std::set<T>& remove,
             const std::set<T>& add) {
  for (const auto& x : remove) have.erase(x);
  have.insert(add.begin(), add.end());
}
}  // namespace

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
  auto dnat = [](const DnatElement& e) { return e.ToString(); };
  auto prefix = [](const Prefix& p) { return p.ToString(); };
  auto name = [](const std::string& s) { return s; };
  // Removing then adding the same element in one batch is allowed.
  RuleSet after_remove = rules_;
  for (absl::Status s :
       {CheckRemove(rules_.dnat, batch.remove.dnat, dnat),
        CheckRemove(rules_.masquerade, batch.remove.masquerade, prefix),
        CheckRemove(rules_.hairpin, batch.remove.hairpin, prefix),
        CheckRemove(rules_.localhost_interfaces,
                    batch.remove.localhost_interfaces, name)}) {
    if (!s.ok()) return s;
  }
  ApplyTo(after_remove.dnat, batch.remove.dnat, {});
  ApplyTo(after_remove.masquerade, batch.remove.masquerade, {});
  ApplyTo(after_remove.hairpin, batch.remove.hairpin, {});
  ApplyTo(after_remove.localhost_interfaces, batch.remove.localhost_interfaces,
          {});
  for (absl::Status s :
       {CheckAdd(after_remove.dnat, batch.add.dnat, dnat),
        CheckAdd(after_remove.masquerade, batch.add.masquerade, prefix),
        CheckAdd(after_remove.hairpin, batch.add.hairpin, prefix),
        CheckAdd(after_remove.localhost_interfaces,
                 batch.add.localhost_interfaces, name)}) {
    if (!s.ok()) return s;
  }
  ApplyTo(after_remove.dnat, {}, batch.add.dnat);
  ApplyTo(after_remove.masquerade, {}, batch.add.masquerade);
  ApplyTo(after_remove.hairpin, {}, batch.add.hairpin);
  ApplyTo(after_remove.localhost_interfaces, {},
          batch.add.localhost_interfaces);
  rules_ = std::move(after_remove);
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
