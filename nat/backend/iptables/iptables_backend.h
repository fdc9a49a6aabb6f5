// IptablesBackend: realizes a RuleSet with libiptc in the legacy x_tables
// (no `iptables` process), for hosts that run iptables rather than
// nftables. The same behaviour as the nftables backend, in chains of its
// own that the built-in chains jump to:
//
//   nat    FABRIC-HOSTPORTS     one DNAT rule per element  (PREROUTING, OUTPUT:
//                                                            -m addrtype
//                                                            --dst-type LOCAL)
//   nat    FABRIC-POSTROUTING   masquerade, hairpin, localhost (POSTROUTING)
//   filter FABRIC-FORWARD       -m conntrack --ctstate DNAT -j ACCEPT (FORWARD)
//
// for IPv4 (iptables) and IPv6 (ip6tables). libiptc replaces a whole table
// per commit, so every change costs time in proportion to the rules in the
// table (unlike nftables' one element).
//
// All or nothing across tables: a change is up to four commits (nat and
// filter, IPv4 and IPv6), each atomic on its own. Under the xtables lock the
// backend reads every table it will change, keeps the previous contents of
// our chains and jumps, then commits in a fixed order (IPv4 nat, IPv6 nat,
// IPv4 filter, IPv6 filter; an Apply changes only the nat tables of the
// families its batch touches). When commit k fails, tables k..1 get their
// previous contents back, newest first, before the lock is released.
//
// Thread-compatible: the agent's core serializes all calls.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/time/time.h"
#include "nat/backend/backend.h"
#include "nat/backend/iptables/xtables_lock.h"

namespace fabric::nat {

// Writes one prepared table to the kernel. The backend calls it for every
// commit, rollbacks included, in order; tests wrap it to fail a chosen
// commit, before the real one or after it has landed.
class TableCommitter {
 public:
  virtual ~TableCommitter() = default;
  // `commit` is libiptc's commit of `table` ("nat", "filter") of `family`.
  virtual absl::Status Commit(Family family, const std::string& table,
                              const std::function<absl::Status()>& commit) = 0;
};

// What the backend last left in our chains, as a fingerprint per table
// ("ipv4 nat" -> "FABRIC-HOSTPORTS=3 ... PREROUTING>FABRIC-HOSTPORTS=1"),
// shared by the backend that writes and the change watcher that compares.
// The generation is odd while a write is under way, so a watcher that saw
// it change during its look knows to look again. Thread-safe.
class LayoutExpectation {
 public:
  // A fingerprint that never matches: the state after a failed rollback.
  static constexpr char kUnknown[] = "?";

  struct View {
    uint64_t generation = 0;
    std::map<std::string, std::string> fingerprints;
  };
  View Get() const;
  void BeginWrite();
  // Replaces the fingerprints of the tables in `tables`; ends the write.
  void EndWrite(const std::map<std::string, std::string>& tables);

 private:
  mutable std::mutex mu_;
  View view_;  // guarded by mu_
};

struct IptablesOptions {
  // The lock every iptables writer takes; a private path in tests.
  std::string lock_path = kXtablesLockPath;
  absl::Duration lock_timeout = absl::Seconds(5);
  // Null: libiptc's commit as it is.
  TableCommitter* committer = nullptr;
  // Null: no one watches. The writing backend records here what it
  // committed (and what an intact Read found).
  std::shared_ptr<LayoutExpectation> expectation;
};

class IptablesBackend : public Backend {
 public:
  // kPermissionDenied without CAP_NET_ADMIN; kUnavailable when the kernel
  // has no legacy iptables nat table.
  static absl::StatusOr<std::unique_ptr<IptablesBackend>> Create();
  static absl::StatusOr<std::unique_ptr<IptablesBackend>> Create(IptablesOptions options);

  std::string name() const override { return "iptables"; }
  // Besides Backend's codes: kUnavailable when the xtables lock stayed
  // held past `lock_timeout` (naming the holder) or a table changed
  // between our read and our commit (EAGAIN); either way nothing changed.
  // A failed commit rolls back the tables already committed; should a
  // rollback fail too, kInternal says which tables are left changed.
  absl::Status Apply(const Batch& batch) override;
  absl::Status Replace(const RuleSet& desired) override;
  absl::StatusOr<KernelState> Read() const override;
  absl::Status DeleteTable() override;

 private:
  explicit IptablesBackend(IptablesOptions options) : options_(std::move(options)) {}

  const IptablesOptions options_;
};

}  // namespace fabric::nat
