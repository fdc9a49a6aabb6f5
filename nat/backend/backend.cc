#include "nat/backend/backend.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace fabric::nat {

namespace {
template <typename S>
S Minus(const S& a, const S& b) {
  S out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(),
                      std::inserter(out, out.end()));
  return out;
}

RuleSet Minus(const RuleSet& a, const RuleSet& b) {
  RuleSet out;
  out.dnat = Minus(a.dnat, b.dnat);
  out.masquerade = Minus(a.masquerade, b.masquerade);
  out.snat = Minus(a.snat, b.snat);
  out.hairpin = Minus(a.hairpin, b.hairpin);
  out.localhost_interfaces =
      Minus(a.localhost_interfaces, b.localhost_interfaces);
  out.firewall6_interfaces = Minus(a.firewall6_interfaces, b.firewall6_interfaces);
  out.pinholes = Minus(a.pinholes, b.pinholes);
  return out;
}
}  // namespace

std::string Batch::DebugString() const {
  std::string out;
  if (!remove.empty()) absl::StrAppend(&out, "remove:\n", remove.DebugString());
  if (!add.empty()) absl::StrAppend(&out, "add:\n", add.DebugString());
  return out;
}

namespace {
std::string Describe(const DnatElement& e) { return e.ToString(); }
std::string Describe(const Prefix& p) { return p.ToString(); }
std::string Describe(const std::string& s) { return s; }
std::string Describe(const Pinhole& p) { return p.ToString(); }
std::string Describe(const SnatRule& r) { return "snat " + r.ToString(); }

template <typename S>
absl::Status RemoveAll(S& have, const S& remove) {
  for (const auto& x : remove) {
    if (have.erase(x) == 0) {
      return absl::NotFoundError(absl::StrCat("remove ", Describe(x), ": not in the table"));
    }
  }
  return absl::OkStatus();
}

template <typename S>
absl::Status AddAll(S& have, const S& add) {
  for (const auto& x : add) {
    if (!have.insert(x).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("add ", Describe(x), ": already in the table"));
    }
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status ApplyBatch(const Batch& batch, RuleSet* rules) {
  RuleSet next = *rules;
  absl::Status s = RemoveAll(next.dnat, batch.remove.dnat);
  if (s.ok()) s = RemoveAll(next.masquerade, batch.remove.masquerade);
  if (s.ok()) s = RemoveAll(next.snat, batch.remove.snat);
  if (s.ok()) s = RemoveAll(next.hairpin, batch.remove.hairpin);
  if (s.ok()) s = RemoveAll(next.localhost_interfaces, batch.remove.localhost_interfaces);
  if (s.ok()) s = RemoveAll(next.firewall6_interfaces, batch.remove.firewall6_interfaces);
  if (s.ok()) s = RemoveAll(next.pinholes, batch.remove.pinholes);
  if (s.ok()) s = AddAll(next.dnat, batch.add.dnat);
  if (s.ok()) s = AddAll(next.masquerade, batch.add.masquerade);
  if (s.ok()) s = AddAll(next.snat, batch.add.snat);
  if (s.ok()) s = AddAll(next.hairpin, batch.add.hairpin);
  if (s.ok()) s = AddAll(next.localhost_interfaces, batch.add.localhost_interfaces);
  if (s.ok()) s = AddAll(next.firewall6_interfaces, batch.add.firewall6_interfaces);
  if (s.ok()) s = AddAll(next.pinholes, batch.add.pinholes);
  if (s.ok()) *rules = std::move(next);
  return s;
}

void Union(RuleSet* into, const RuleSet& more) {
  into->dnat.insert(more.dnat.begin(), more.dnat.end());
  into->masquerade.insert(more.masquerade.begin(), more.masquerade.end());
  into->snat.insert(more.snat.begin(), more.snat.end());
  into->hairpin.insert(more.hairpin.begin(), more.hairpin.end());
  into->localhost_interfaces.insert(more.localhost_interfaces.begin(),
                                    more.localhost_interfaces.end());
  into->firewall6_interfaces.insert(more.firewall6_interfaces.begin(),
                                    more.firewall6_interfaces.end());
  into->pinholes.insert(more.pinholes.begin(), more.pinholes.end());
}

void Merge(Batch* into, const Batch& more) {
  Union(&into->remove, more.remove);
  Union(&into->add, more.add);
}

Batch Diff(const RuleSet& current, const RuleSet& desired) {
  return Batch{Minus(current, desired), Minus(desired, current)};
}

namespace {
template <typename S>
void EraseEach(S& from, const S& elements) {
  for (const auto& e : elements) from.erase(e);
}
}  // namespace

absl::StatusOr<DnatSet> Backend::HoldsDnat(
    const DnatSet& elements) const {
  absl::StatusOr<KernelState> state = Read();
  if (!state.ok()) return state.status();
  DnatSet held;
  for (const DnatElement& e : elements) {
    if (state->rules.dnat.count(e) > 0) held.insert(e);
  }
  return held;
}

void EraseAll(RuleSet* from, const RuleSet& elements) {
  EraseEach(from->dnat, elements.dnat);
  EraseEach(from->masquerade, elements.masquerade);
  EraseEach(from->snat, elements.snat);
  EraseEach(from->hairpin, elements.hairpin);
  EraseEach(from->localhost_interfaces, elements.localhost_interfaces);
  EraseEach(from->firewall6_interfaces, elements.firewall6_interfaces);
  EraseEach(from->pinholes, elements.pinholes);
}

namespace {
// "3 (dnat tcp 0.0.0.0:8080 -> 10.22.0.5:80, masquerade 10.22.0.0/16, ...)"
std::string Sample(const RuleSet& r) {
  std::vector<std::string> items;
  for (const auto& e : r.dnat) items.push_back("dnat " + e.ToString());
  for (const auto& p : r.masquerade) items.push_back("masquerade " + p.ToString());
  for (const auto& x : r.snat) items.push_back("snat " + x.ToString());
  for (const auto& p : r.hairpin) items.push_back("hairpin " + p.ToString());
  for (const auto& i : r.localhost_interfaces) items.push_back("localhost " + i);
  for (const auto& i : r.firewall6_interfaces) items.push_back("firewall6 " + i);
  for (const auto& p : r.pinholes) items.push_back("pinhole " + p.ToString());
  std::string out = absl::StrCat(items.size());
  if (items.empty()) return out;
  out += " (";
  for (size_t i = 0; i < items.size() && i < 3; ++i) {
    absl::StrAppend(&out, i ? ", " : "", items[i]);
  }
  return absl::StrCat(out, items.size() > 3 ? ", ...)" : ")");
}
}  // namespace

std::string SyncReport::DebugString() const {
  switch (action) {
    case Action::kNone:
      return "in sync";
    case Action::kApplied:
      return absl::StrCat("restored ", Sample(changes.add), ", removed ",
                          Sample(changes.remove));
    case Action::kReplaced:
      return absl::StrCat("rebuilt the table (", reason, "); it lacked ",
                          Sample(changes.add), " and held ",
                          Sample(changes.remove), " extra");
  }
  return "";
}

absl::StatusOr<SyncReport> Sync(Backend& backend, const RuleSet& desired) {
  absl::StatusOr<KernelState> state = backend.Read();
  if (!state.ok()) return state.status();
  SyncReport report;
  report.changes = Diff(state->rules, desired);
  if (!state->table_present || !state->layout_intact) {
    report.action = SyncReport::Action::kReplaced;
    report.reason = state->table_present ? state->problem : "table missing";
    if (absl::Status s = backend.Replace(desired); !s.ok()) return s;
    return report;
  }
  if (report.changes.empty()) return report;
  report.action = SyncReport::Action::kApplied;
  absl::Status s = backend.Apply(report.changes);
  if (s.ok()) return report;
  // Someone changed the table between Read and Apply: rebuild it whole.
  report.action = SyncReport::Action::kReplaced;
  report.reason = absl::StrCat("element batch failed: ", s.message());
  if (absl::Status r = backend.Replace(desired); !r.ok()) return r;
  return report;
}

}  // namespace fabric::nat
