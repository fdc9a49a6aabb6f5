// IptablesBackend: realizes a RuleSet with libiptc in the legacy x_tables
// (no `iptables` process), for hosts that run iptables rather than
// nftables. The same behaviour as the nftables backend, in chains of its
// own that the built-in chains jump to:
//
//   nat    FABRIC-HOSTPORTS     one DNAT rule per element  (PREROUTING, OUTPUT:
//                                                            -m addrtype --dst-type LOCAL)
//   nat    FABRIC-POSTROUTING   masquerade, hairpin, localhost (POSTROUTING)
//   filter FABRIC-FORWARD       -m conntrack --ctstate DNAT -j ACCEPT (FORWARD)
//
// for IPv4 (iptables) and IPv6 (ip6tables). libiptc replaces a whole table
// per commit, so every change costs time in proportion to the rules in the
// table (unlike nftables' one element); each table's commit is atomic, the
// two families and the filter table are separate commits.
//
// Thread-compatible: the agent's core serializes all calls.
#pragma once

#include <memory>
#include <string>

#include "nat/backend/backend.h"

namespace fabric::nat {

class IptablesBackend : public Backend {
 public:
  // kPermissionDenied without CAP_NET_ADMIN; kUnavailable when the kernel
  // has no legacy iptables nat table.
  static absl::StatusOr<std::unique_ptr<IptablesBackend>> Create();

  std::string name() const override { return "iptables"; }
  absl::Status Apply(const Batch& batch) override;
  absl::Status Replace(const RuleSet& desired) override;
  absl::StatusOr<KernelState> Read() const override;
  absl::Status DeleteTable() override;

 private:
  IptablesBackend() = default;
};

}  // namespace fabric::nat
