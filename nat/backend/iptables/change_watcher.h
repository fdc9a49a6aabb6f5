// IptablesChangeWatcher: notices within about a second when someone else
// changes our iptables chains. x_tables sends no change events (unlike
// nftables' netlink group), so the watcher polls: each poll asks the kernel
// for every table's size and entry count (IPT_SO_GET_INFO, no rules
// copied); only a table whose size changed is read, and its fingerprint
// (rule counts of our chains, jumps from the built-in chains:
// internal/libiptc.h) compared with the one the writing backend recorded
// in the shared LayoutExpectation.
//
// What it cannot see: a rule of ours rewritten in place by one of the same
// size and count (`iptables -R`), or such a rewrite paired with a change
// elsewhere that keeps the table's size. The periodic check
// (--reconcile_interval) compares every rule and catches those.
//
// Works in the network namespace of the thread that opens it; call Wait
// from threads in that namespace. Thread-compatible.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nat/backend/iptables/iptables_backend.h"

namespace fabric::nat {

class IptablesChangeWatcher {
 public:
  struct Options {
    absl::Duration poll_interval;
  };
  // kPermissionDenied without CAP_NET_RAW (the raw socket libiptc uses too).
  static absl::StatusOr<std::unique_ptr<IptablesChangeWatcher>> Open(
      std::shared_ptr<LayoutExpectation> expectation, Options options = {absl::Seconds(1)});
  ~IptablesChangeWatcher();

  // Waits up to `timeout` for the next poll. True when our chains differ
  // from what the backend last recorded; `what` says where. False while
  // nothing was recorded yet, or when a write of the backend overlapped
  // the look (looked at again soon).
  absl::StatusOr<bool> Wait(absl::Duration timeout, std::string* what);
  // A poller queues nothing: always false.
  absl::StatusOr<bool> Drain(std::string* what);

  // One look now.
  absl::StatusOr<bool> Poll(std::string* what);

 private:
  IptablesChangeWatcher(std::shared_ptr<LayoutExpectation> expectation, Options options, int fd4,
                        int fd6)
      : expectation_(std::move(expectation)), options_(options), fd4_(fd4), fd6_(fd6) {}

  struct Seen {
    std::string info;         // size and entry count from IPT_SO_GET_INFO
    std::string fingerprint;  // of the table when it had that info
  };
  absl::StatusOr<std::string> Info(Family family, const char* table) const;

  const std::shared_ptr<LayoutExpectation> expectation_;
  const Options options_;
  const int fd4_, fd6_;
  absl::Time next_poll_ = absl::InfinitePast();
  std::map<std::string, Seen> seen_;  // by table key
};

}  // namespace fabric::nat
