// NftablesBackend: realizes a RuleSet in table `inet fabric_nat` through
// libnftnl netlink batches (no `nft` process). Every change is one batch,
// committed or rolled back whole by the kernel; each kernel error is mapped
// to the change that caused it. Nothing outside table `inet fabric_nat` is
// touched, except the `route_localnet` sysctl of interfaces in
// `localhost_interfaces`.
//
// Which rules the table holds depends on which sets have elements
// (nftables/encode.h), so the backend remembers how many elements each set
// held after its last Read, Replace or Apply, and an Apply that fills a set
// or empties one changes the rules in the same batch.
//
// Thread-compatible: the agent's core serializes all calls (Read included:
// it refreshes what the backend remembers).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "nat/backend/backend.h"
#include "nat/backend/nftables/encode.h"
#include "nat/netlink/socket.h"

namespace fabric::nat {

class NftablesBackend : public Backend {
 public:
  // Opens the netlink socket. kPermissionDenied without CAP_NET_ADMIN.
  static absl::StatusOr<std::unique_ptr<NftablesBackend>> Create();

  std::string name() const override { return "nftables"; }
  absl::Status Apply(const Batch& batch) override;
  absl::Status Replace(const RuleSet& desired) override;
  absl::StatusOr<KernelState> Read() const override;
  absl::StatusOr<KernelState> ReadDuringWrites() const override;
  absl::StatusOr<DnatSet> HoldsDnat(
      const DnatSet& elements) const override;
  absl::StatusOr<std::map<std::string, uint64_t>> ConnectionCounts() const override;
  absl::StatusOr<std::vector<std::string>> ForwardDropChains() const override;
  absl::Status DeleteTable() override;

  // The ruleset generation after our last successful batch, so that event
  // listeners can tell our own changes from someone else's.
  uint32_t last_generation() const { return last_generation_; }
  absl::StatusOr<uint32_t> Generation() const override;
  void SetOwner(const std::string& owner) override { owner_ = owner; }
  std::optional<uint32_t> LastChangeGeneration() const override {
    if (last_generation_ == 0) return std::nullopt;
    return last_generation_;
  }
  uint32_t port_id() const { return socket_->port_id(); }

 private:
  explicit NftablesBackend(std::unique_ptr<netlink::NetlinkSocket> socket)
      : socket_(std::move(socket)) {}
  absl::Status Send(const nftables::EncodedBatch& batch,
                    absl::string_view operation);
  // One attempt at Read(); kAborted when a dump was inconsistent, unless
  // `disturbed_ok` (ReadDuringWrites): then a repeated element is kept once,
  // and no counters are decoded.
  absl::StatusOr<KernelState> ReadOnce(bool disturbed_ok = false) const;
  // The layout sizes a read found (sizes_), or none without the table.
  void NoteSizes(const KernelState& state) const;

  std::unique_ptr<netlink::NetlinkSocket> socket_;
  uint32_t last_generation_ = 0;
  std::string owner_;
  // The kernel's set sizes as of our last Read, Replace or Apply; nullopt
  // before the first, after DeleteTable, or when a batch's fate is unknown
  // (the socket failed). Apply reads the kernel first when it is nullopt.
  mutable std::optional<nftables::SetSizes> sizes_;
};

// Turns /proc/sys/net/ipv4/conf/<interface>/route_localnet on, remembering
// the value it had, or (off) back to that value (0 if unknown). Only an
// existing interface of the calling thread's network namespace; never "all"
// or "default" (kInvalidArgument; kFailedPrecondition when it does not
// exist). Thread-safe.
absl::Status SetRouteLocalnet(const std::string& interface, bool on);
// Where the remembered values are also kept (the agent names a file in its
// run dir, so a restart still restores them); empty: memory only.
void SetRouteLocalnetMemory(const std::string& path);

}  // namespace fabric::nat
