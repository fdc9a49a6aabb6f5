// ForwardAcceptKeeper: --forward_accept=FAMILY/TABLE/CHAIN (repeatable).
// At start it puts our `ct status dnat accept` rule at the top of each
// named chain and takes it out of every chain no longer named
// (nat/backend/nftables/forward_accept.h); then a thread keeps it there:
// on every foreign change to those tables (a firewall reload with
// `nft -f`, a table deleted and recreated; the same nftables events that
// repair our own table) and once per period. Every change it makes is
// logged and counted as a repair (nat_repairs_total, the status page's
// recent repairs).
//
// nftables only. Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/metrics.h"
#include "nat/backend/nftables/forward_accept.h"
#include "nat/backend/nftables/monitor.h"

namespace fabric::agent {

class ForwardAcceptKeeper {
 public:
  struct Options {
    absl::Duration period = absl::Seconds(30);
  };

  // Makes the kernel match `wanted` once (a kernel refusal is an error;
  // a chain that does not exist yet is not, and is logged), then, unless
  // `wanted` is empty, keeps it so in a thread.
  static absl::StatusOr<std::unique_ptr<ForwardAcceptKeeper>> Start(
      std::set<nat::nftables::ChainRef> wanted, Metrics* metrics, Options options);
  // Stops the thread; the rules stay.
  ~ForwardAcceptKeeper();

  // For the status page: "forward accept: inet/filter/forward in place".
  std::string StatusLine() const;

 private:
  ForwardAcceptKeeper() = default;
  void Run();
  // Ensure, log and count what changed; `why` says what prompted it.
  void EnsureNow(const std::string& why);

  std::set<nat::nftables::ChainRef> wanted_;
  Metrics* metrics_ = nullptr;
  Options options_;
  std::unique_ptr<nat::nftables::ForwardAccept> rules_;  // used by one thread at a time
  std::unique_ptr<nat::ChangeMonitor> monitor_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::string status_;  // guarded by mu_
};

}  // namespace fabric::agent
