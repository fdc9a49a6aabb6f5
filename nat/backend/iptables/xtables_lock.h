// XtablesLock: the lock iptables(8), ip6tables(8), iptables-restore,
// kube-proxy and docker take around every read-change-commit of an
// x_tables table (flock(2) on /run/xtables.lock, iptables' XT_LOCK_NAME).
// libiptc replaces a whole table per commit, so a writer that does not
// take it can silently undo another's change made between its read and its
// commit; the iptables backend holds it from before it reads a table until
// its last commit (or rollback) is done.
//
// The file is machine-wide (every network namespace shares it): hold it
// only for the few milliseconds a commit takes.
//
// Thread-compatible; one object per holding.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fabric::nat {

// The path iptables uses (iptables 1.8, xshared.h).
inline constexpr char kXtablesLockPath[] = "/run/xtables.lock";

class XtablesLock {
 public:
  // Takes the lock on `path` (created 0600 if missing), waiting at most
  // `timeout`. kUnavailable when another process holds it all that time,
  // naming the file and the holder ("pid 4242 (kube-proxy)") when
  // /proc/locks shows it; kFailedPrecondition when the file cannot be
  // opened.
  static absl::StatusOr<std::unique_ptr<XtablesLock>> Acquire(const std::string& path,
                                                              absl::Duration timeout);
  ~XtablesLock();  // releases
  XtablesLock(const XtablesLock&) = delete;
  XtablesLock& operator=(const XtablesLock&) = delete;

 private:
  explicit XtablesLock(int fd) : fd_(fd) {}
  const int fd_;
};

// Who holds a lock on the file open as `fd`, from /proc/locks: "pid 4242
// (kube-proxy)", or "" when unknown.
std::string DescribeLockHolder(int fd);

}  // namespace fabric::nat
