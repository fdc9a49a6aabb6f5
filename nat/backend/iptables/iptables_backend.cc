#include "nat/backend/iptables/iptables_backend.h"

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nat/backend/iptables/internal/libiptc.h"
#include "nat/backend/iptables/internal/rules.h"
#include "nat/backend/nftables/nftables_backend.h"  // SetRouteLocalnet

namespace fabric::nat {

LayoutExpectation::View LayoutExpectation::Get() const {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

void LayoutExpectation::BeginWrite() {
  std::lock_guard<std::mutex> lock(mu_);
  if (view_.generation % 2 == 0) ++view_.generation;
}

void LayoutExpectation::EndWrite(const std::map<std::string, std::string>& tables) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [table, fingerprint] : tables) view_.fingerprints[table] = fingerprint;
  view_.generation += view_.generation % 2 == 0 ? 2 : 1;
}

namespace {

using namespace iptables_internal;  // NOLINT: this file's own internals

absl::Status Fail(Family family, const std::string& what, const char* table) {
  int err = errno;
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (err == EPERM) code = absl::StatusCode::kPermissionDenied;
  // The kernel's check that the table did not change since we read it.
  if (err == EAGAIN) code = absl::StatusCode::kUnavailable;
  return absl::Status(
      code, absl::StrCat("libiptc (", FamilyName(family), " ", table, "): ", what, ": ",
                         family == Family::kIPv4 ? iptc_strerror(err) : ip6tc_strerror(err)));
}

// One table in a transaction: the handle we change, and what our chains and
// jumps held when we read it, to put back if a later commit fails.
class TableTxn {
 public:
  virtual ~TableTxn() = default;
  virtual Family family() const = 0;
  virtual const char* table() const = 0;
  std::string key() const { return absl::StrCat(FamilyName(family()), " ", table()); }
  // Our rules in the table as read.
  virtual void Read(KernelState* state, std::vector<std::string>* problems) = 0;
  // Our chains to hold exactly what `rules` calls for, the jumps present.
  virtual absl::Status Write(const RuleSet& rules) = 0;
  // Our chains and jumps gone.
  virtual absl::Status Remove() = 0;
  virtual bool changed() const = 0;
  // libiptc's commit of the prepared handle.
  virtual absl::Status Commit() = 0;
  // Reads the table afresh and prepares our chains and jumps as they were
  // before; Commit() then writes that.
  virtual absl::Status PrepareRollback() = 0;
  // Of the prepared handle.
  virtual std::string Fingerprint() = 0;
};

template <typename F>
class TableTxnOf : public TableTxn {
 public:
  static absl::StatusOr<std::unique_ptr<TableTxn>> Open(const char* table) {
    auto txn = std::unique_ptr<TableTxnOf>(new TableTxnOf(table));
    if (txn->handle_.h == nullptr) return Fail(F::kFamily, "open table", table);
    txn->Remember();
    return std::unique_ptr<TableTxn>(std::move(txn));
  }

  Family family() const override { return F::kFamily; }
  const char* table() const override { return table_; }
  bool changed() const override { return changed_; }

  void Read(KernelState* state, std::vector<std::string>* problems) override {
    ReadTable<F>(handle_.h, table_, state, problems);
  }

  absl::Status Write(const RuleSet& rules) override {
    Plan<F> plan = PlanFor<F>(rules);
    xtc_handle* h = handle_.h;
    changed_ = true;
    for (const Jump& j : kJumps) {
      if (std::strcmp(j.table, table_) != 0) continue;
      if (!F::IsChain(j.chain, h) && !F::Create(j.chain, h))
        return Fail(F::kFamily, j.chain, table_);
      if (!F::Flush(j.chain, h)) return Fail(F::kFamily, j.chain, table_);
      if (!HasJump<F>(h, j)) {
        EntryBuilder<F> jump = JumpEntry<F>(j);
        if (!F::Append(j.builtin, jump.entry(), h)) return Fail(F::kFamily, j.builtin, table_);
      }
    }
    auto& entries = std::strcmp(table_, "nat") == 0 ? plan.nat : plan.filter;
    for (auto& [chain, b] : entries) {
      if (!F::Append(chain, b.entry(), h)) {
        return Fail(F::kFamily, absl::StrCat("append to ", chain), table_);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Remove() override {
    xtc_handle* h = handle_.h;
    for (const Jump& j : kJumps) {
      if (std::strcmp(j.table, table_) != 0) continue;
      if (absl::Status s = DropJumps(h, j, 0); !s.ok()) return s;
    }
    for (const char* chain : OurChains(table_)) {
      if (!F::IsChain(chain, h)) continue;
      changed_ = true;
      if (!F::Flush(chain, h) || !F::Delete(chain, h)) return Fail(F::kFamily, chain, table_);
    }
    return absl::OkStatus();
  }

  absl::Status Commit() override {
    if (!F::Commit(handle_.h)) return Fail(F::kFamily, "commit", table_);
    return absl::OkStatus();
  }

  absl::Status PrepareRollback() override {
    // The table as the kernel holds it now (our commit landed, or not).
    handle_.Reset(F::Init(table_));
    xtc_handle* h = handle_.h;
    if (h == nullptr) return Fail(F::kFamily, "open table", table_);
    changed_ = true;
    for (const Chain& c : chains_) {
      if (!c.existed) continue;
      if (!F::IsChain(c.name, h) && !F::Create(c.name, h)) return Fail(F::kFamily, c.name, table_);
      if (!F::Flush(c.name, h)) return Fail(F::kFamily, c.name, table_);
      for (const std::vector<uint8_t>& bytes : c.entries) {
        if (!F::Append(c.name, reinterpret_cast<const typename F::Entry*>(bytes.data()), h)) {
          return Fail(F::kFamily, absl::StrCat("restore ", c.name), table_);
        }
      }
    }
    // Write and Replace only add jumps, at the end: drop the ones added.
    // Remove took them: append them again (at the end of the chain).
    for (size_t i = 0; i < std::size(kJumps); ++i) {
      const Jump& j = kJumps[i];
      if (std::strcmp(j.table, table_) != 0) continue;
      if (absl::Status s = DropJumps(h, j, jumps_[i]); !s.ok()) return s;
      for (int n = CountJumps<F>(h, j); n < jumps_[i]; ++n) {
        EntryBuilder<F> jump = JumpEntry<F>(j);
        if (!F::Append(j.builtin, jump.entry(), h)) return Fail(F::kFamily, j.builtin, table_);
      }
    }
    for (const Chain& c : chains_) {
      if (c.existed || !F::IsChain(c.name, h)) continue;
      if (!F::Flush(c.name, h) || !F::Delete(c.name, h)) return Fail(F::kFamily, c.name, table_);
    }
    return absl::OkStatus();
  }

  std::string Fingerprint() override {
    return iptables_internal::Fingerprint<F>(handle_.h, table_);
  }

 private:
  explicit TableTxnOf(const char* table) : table_(table), handle_(table) {}

  // Copies our chains' rules (re-appendable: a standard verdict gets its
  // name back, which libiptc resolves again) and counts the jumps.
  void Remember() {
    xtc_handle* h = handle_.h;
    for (const char* name : OurChains(table_)) {
      Chain c{name, F::IsChain(name, h) != 0, {}};
      if (c.existed) {
        for (const auto* e = F::First(name, h); e != nullptr; e = F::Next(e, h)) {
          const auto* p = reinterpret_cast<const uint8_t*>(e);
          std::vector<uint8_t> bytes(p, p + e->next_offset);
          auto* t = reinterpret_cast<xt_entry_target*>(bytes.data() + e->target_offset);
          if (t->u.user.name[0] == '\0') {
            std::strncpy(t->u.user.name, F::Target(e, h), sizeof(t->u.user.name) - 1);
          }
          c.entries.push_back(std::move(bytes));
        }
      }
      chains_.push_back(std::move(c));
    }
    for (size_t i = 0; i < std::size(kJumps); ++i) {
      jumps_[i] = std::strcmp(kJumps[i].table, table_) == 0 ? CountJumps<F>(h, kJumps[i]) : 0;
    }
  }

  // Deletes the jumps of `j` past the first `keep`.
  absl::Status DropJumps(xtc_handle* h, const Jump& j, int keep) {
    for (;;) {
      unsigned n = 0, last = 0;
      int seen = 0;
      for (const auto* e = F::First(j.builtin, h); e != nullptr; e = F::Next(e, h), ++n) {
        if (std::strcmp(F::Target(e, h), j.chain) == 0) {
          ++seen;
          last = n;
        }
      }
      if (seen <= keep) return absl::OkStatus();
      changed_ = true;
      if (!F::DeleteNum(j.builtin, last, h)) return Fail(F::kFamily, j.builtin, table_);
    }
  }

  struct Chain {
    const char* name;
    bool existed;
    std::vector<std::vector<uint8_t>> entries;
  };
  const char* const table_;
  Handle<F> handle_;
  bool changed_ = false;
  std::vector<Chain> chains_;
  int jumps_[std::size(kJumps)] = {};
};

// The tables a change writes, in commit order.
using Txn = std::vector<std::unique_ptr<TableTxn>>;

absl::Status OpenInto(Txn* txn, Family family, const char* table) {
  absl::StatusOr<std::unique_ptr<TableTxn>> t =
      family == Family::kIPv4 ? TableTxnOf<V4>::Open(table) : TableTxnOf<V6>::Open(table);
  if (!t.ok()) return t.status();
  txn->push_back(std::move(*t));
  return absl::OkStatus();
}

// The families whose nat table `rules` touches.
void FamiliesOf(const RuleSet& rules, std::set<Family>* out) {
  for (const DnatElement& e : rules.dnat) out->insert(e.family);
  for (const Prefix& p : rules.masquerade) out->insert(p.family());
  for (const SnatRule& r : rules.snat) out->insert(r.source.family());
  for (const Prefix& p : rules.hairpin) out->insert(p.family());
  if (!rules.localhost_interfaces.empty()) out->insert(Family::kIPv4);
}

// Commits every changed table in order; when one fails, rolls back it and
// those before it, newest first. Records in `expectation` what the tables
// hold afterwards.
absl::Status CommitAll(Txn& txn, TableCommitter* committer, LayoutExpectation* expectation) {
  auto commit = [committer](TableTxn& t) {
    std::function<absl::Status()> real = [&t] { return t.Commit(); };
    return committer == nullptr ? real() : committer->Commit(t.family(), t.table(), real);
  };
  if (expectation != nullptr) expectation->BeginWrite();
  std::map<std::string, std::string> fingerprints;
  absl::Status failed;
  size_t k = 0;
  for (; k < txn.size(); ++k) {
    if (!txn[k]->changed()) continue;
    fingerprints[txn[k]->key()] = txn[k]->Fingerprint();
    failed = commit(*txn[k]);
    if (!failed.ok()) break;
  }
  if (failed.ok()) {
    if (expectation != nullptr) expectation->EndWrite(fingerprints);
    return absl::OkStatus();
  }
  // Table k too: libiptc's commit is two calls (replace, then counters), and
  // the replace may have landed.
  std::vector<std::string> restored, left;
  for (size_t i = k + 1; i-- > 0;) {
    TableTxn& t = *txn[i];
    if (!t.changed()) continue;
    absl::Status s = t.PrepareRollback();
    std::string fingerprint = s.ok() ? t.Fingerprint() : "";
    if (s.ok()) s = commit(t);
    if (s.ok()) {
      fingerprints[t.key()] = fingerprint;
      if (i < k) restored.push_back(t.key());
    } else {
      fingerprints[t.key()] = LayoutExpectation::kUnknown;
      left.push_back(absl::StrCat(t.key(), " (", s.message(), ")"));
    }
  }
  if (expectation != nullptr) expectation->EndWrite(fingerprints);
  if (!left.empty()) {
    return absl::InternalError(absl::StrCat(
        failed.message(), "; rollback failed, left changed: ", absl::StrJoin(left, ", "),
        "; the next sync repairs them"));
  }
  return absl::Status(
      failed.code(),
      absl::StrCat(
          failed.message(),
          restored.empty() ? "" : absl::StrCat("; rolled back ", absl::StrJoin(restored, ", ")),
          "; nothing changed"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<IptablesBackend>> IptablesBackend::Create() {
  return Create(IptablesOptions());
}

absl::StatusOr<std::unique_ptr<IptablesBackend>> IptablesBackend::Create(IptablesOptions options) {
  Handle<V4> probe("nat");
  if (probe.h == nullptr) {
    return absl::Status(
        errno == EPERM ? absl::StatusCode::kPermissionDenied : absl::StatusCode::kUnavailable,
        absl::StrCat("iptables (legacy) nat table unavailable: ", V4::Error(),
                     " (is the iptable_nat module loaded?)"));
  }
  return std::unique_ptr<IptablesBackend>(new IptablesBackend(std::move(options)));
}

namespace {
// The IPv6 firewall and its pinholes are nftables only.
absl::Status RefuseFirewall(const RuleSet& r) {
  if (r.firewall6_interfaces.empty() && r.pinholes.empty()) return absl::OkStatus();
  return absl::UnimplementedError(
      "the IPv6 firewall and its pinholes need the nftables backend (--backend=nftables)");
}

// SNAT rules as the nftables backend takes them: each valid, at most
// kMaxSnatRules in all.
absl::Status CheckSnat(const std::set<SnatRule>& rules) {
  if (rules.size() > kMaxSnatRules) {
    return absl::ResourceExhaustedError(absl::StrCat(
        rules.size(), " SNAT rules asked for; at most ", kMaxSnatRules,
        " (one rule each): nothing changed"));
  }
  for (const SnatRule& r : rules) {
    if (absl::Status s = r.Validate(); !s.ok()) return s;
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status IptablesBackend::Replace(const RuleSet& desired) {
  if (absl::Status s = RefuseFirewall(desired); !s.ok()) return s;
  if (absl::Status s = CheckSnat(desired.snat); !s.ok()) return s;
  for (const std::string& i : desired.localhost_interfaces) {
    if (absl::Status s = SetRouteLocalnet(i, true); !s.ok()) return s;
  }
  absl::StatusOr<std::unique_ptr<XtablesLock>> lock =
      XtablesLock::Acquire(options_.lock_path, options_.lock_timeout);
  if (!lock.ok()) return lock.status();
  Txn txn;
  for (const char* table : {"nat", "filter"}) {
    for (Family f : {Family::kIPv4, Family::kIPv6}) {
      if (absl::Status s = OpenInto(&txn, f, table); !s.ok()) return s;
      if (absl::Status s = txn.back()->Write(desired); !s.ok()) return s;
    }
  }
  return CommitAll(txn, options_.committer, options_.expectation.get());
}

absl::Status IptablesBackend::Apply(const Batch& batch) {
  if (batch.empty()) return absl::OkStatus();
  if (absl::Status s = RefuseFirewall(batch.add); !s.ok()) return s;
  std::set<Family> families;
  FamiliesOf(batch.remove, &families);
  FamiliesOf(batch.add, &families);
  // New SNAT rules are counted against the cap across both families.
  if (!batch.add.snat.empty()) families = {Family::kIPv4, Family::kIPv6};
  absl::StatusOr<std::unique_ptr<XtablesLock>> lock =
      XtablesLock::Acquire(options_.lock_path, options_.lock_timeout);
  if (!lock.ok()) return lock.status();
  // Read and change under the lock, so no cooperating writer's change
  // falls between our read and our commit.
  Txn txn;
  KernelState state;
  std::vector<std::string> problems;
  for (Family f : families) {
    if (absl::Status s = OpenInto(&txn, f, "nat"); !s.ok()) return s;
    txn.back()->Read(&state, &problems);
  }
  if (!state.table_present) {
    return absl::FailedPreconditionError("iptables chains FABRIC-* are missing");
  }
  RuleSet next = state.rules;
  if (absl::Status s = ApplyBatch(batch, &next); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("iptables: ", s.message(), "; nothing changed"));
  }
  if (!batch.add.snat.empty()) {
    if (absl::Status s = CheckSnat(next.snat); !s.ok()) return s;
  }
  for (const std::string& i : batch.add.localhost_interfaces) {
    if (absl::Status s = SetRouteLocalnet(i, true); !s.ok()) return s;
  }
  for (auto& t : txn) {
    if (absl::Status s = t->Write(next); !s.ok()) return s;
  }
  if (absl::Status s = CommitAll(txn, options_.committer, options_.expectation.get()); !s.ok()) {
    return s;
  }
  lock->reset();
  for (const std::string& i : batch.remove.localhost_interfaces) {
    SetRouteLocalnet(i, false).IgnoreError();
  }
  return absl::OkStatus();
}

absl::StatusOr<KernelState> IptablesBackend::Read() const {
  KernelState state;
  std::vector<std::string> problems;
  std::map<std::string, std::string> fingerprints;
  auto read = [&](auto family_tag, const char* table) {
    using F = decltype(family_tag);
    Handle<F> handle(table);
    if (handle.h == nullptr) {
      problems.push_back(absl::StrCat(TableKey<F>(table), " unreadable"));
      return;
    }
    ReadTable<F>(handle.h, table, &state, &problems);
    fingerprints[TableKey<F>(table)] = iptables_internal::Fingerprint<F>(handle.h, table);
  };
  if (options_.expectation != nullptr) options_.expectation->BeginWrite();
  for (const char* table : {"nat", "filter"}) {
    read(V4{}, table);
    read(V6{}, table);
  }
  state.layout_intact = state.table_present && problems.empty();
  state.problem = absl::StrJoin(problems, "; ");
  // What an intact layout holds is what the watcher should expect; a
  // damaged one is about to be rebuilt by a Replace, which records its own.
  if (options_.expectation != nullptr) {
    options_.expectation->EndWrite(state.layout_intact ? fingerprints
                                                       : std::map<std::string, std::string>{});
  }
  return state;
}

absl::Status IptablesBackend::DeleteTable() {
  absl::StatusOr<std::unique_ptr<XtablesLock>> lock =
      XtablesLock::Acquire(options_.lock_path, options_.lock_timeout);
  if (!lock.ok()) return lock.status();
  Txn txn;
  for (const char* table : {"nat", "filter"}) {
    for (Family f : {Family::kIPv4, Family::kIPv6}) {
      // A family whose table the kernel lacks holds none of our chains.
      if (!OpenInto(&txn, f, table).ok()) continue;
      if (absl::Status s = txn.back()->Remove(); !s.ok()) return s;
    }
  }
  return CommitAll(txn, options_.committer, options_.expectation.get());
}

}  // namespace fabric::nat
