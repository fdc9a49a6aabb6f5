// InstanceLock: one fabric-agent per state directory and per network
// namespace, checked before the agent touches the kernel. Two agents on one
// namespace would each make the kernel table match their own store (the
// second, with an empty store, would delete every rule of the first); two
// on one store would corrupt each other's view of it.
//
// Each guard is an flock(2) on a file: <state_dir>/agent.lock, and
// <run_dir>/netns-<inode of /proc/self/ns/net>.lock. The holder writes its
// pid, state dir and socket into both, so a refused agent can name the one
// that runs. The locks go when the process exits, whatever the way.
//
// Thread-compatible.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace fabric::agent {

class InstanceLock {
 public:
  // kFailedPrecondition naming the other agent (pid, state dir, socket)
  // when either lock is held; kInternal for I/O errors, with the path.
  static absl::StatusOr<std::unique_ptr<InstanceLock>> Acquire(const std::string& state_dir,
                                                               const std::string& run_dir,
                                                               const std::string& socket);
  ~InstanceLock();

 private:
  InstanceLock() = default;
  int state_fd_ = -1;
  int netns_fd_ = -1;
  std::string netns_path_;
};

}  // namespace fabric::agent
