// ForwardsWatcher: keeps the static forwards equal to --forwards_file. It
// applies the file at start, on Reload() (SIGHUP) and whenever the file
// changes (inotify on its directory, so an editor's write-by-rename counts
// too). A valid file is applied as one transaction; an invalid one (or one
// that conflicts with another owner's port) changes nothing, is logged
// with the exact error, counted (nat_operations_total{op="forwards_reload"}
// and its errors) and shown on the status page until a good one comes.
//
// Threading: one thread of its own; Reload() may be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "agent/core.h"
#include "agent/forwards.h"
#include "agent/metrics.h"

namespace fabric::agent {

class ForwardsWatcher {
 public:
  // `options`: how the file is read (ForwardsOptions: the SNAT entries'
  // default interface, the agent's --wan_interface).
  static absl::StatusOr<std::unique_ptr<ForwardsWatcher>> Start(
      AgentCore* core, Metrics* metrics, std::string path, ForwardsOptions options = {});
  ~ForwardsWatcher();

  // Reads and applies the file now; `why` goes into the log line.
  void Reload(const std::string& why);
  // The WAN interface moved (the agent follows the default route): SNAT
  // entries without an out_interface now leave through `interface`; the
  // file is applied again when it differs.
  void SetWanInterface(const std::string& interface);
  // "static forwards from F: 3 applied" or "...: <error>; 3 kept".
  std::string StatusLine() const;

 private:
  ForwardsWatcher(AgentCore* core, Metrics* metrics, std::string path, ForwardsOptions options,
                  int inotify, int wake);
  void Run();

  AgentCore* const core_;
  Metrics* const metrics_;
  const std::string path_;
  ForwardsOptions options_;  // guarded by mu_ (wan_interface changes)
  const int inotify_;
  const int wake_;  // eventfd: stop
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  mutable std::mutex mu_;  // serializes Reload; guards the two below
  std::string last_error_;
  size_t applied_ = 0;
  size_t snat_applied_ = 0;
  int proxied_ = 0;                  // guarded by mu_: of applied_, through the proxy
};

}  // namespace fabric::agent
