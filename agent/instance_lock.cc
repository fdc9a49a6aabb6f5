#include "agent/instance_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace fabric::agent {

namespace {

std::string ReadAll(int fd) {
  std::string out;
  char buf[512];
  ssize_t n;
  lseek(fd, 0, SEEK_SET);
  while ((n = read(fd, buf, sizeof(buf))) > 0 && out.size() < 4096) out.append(buf, n);
  return std::string(absl::StripTrailingAsciiWhitespace(out));
}

// Opens and locks `path`; the fd, or kFailedPrecondition quoting what the
// holder wrote. Re-opens when the file was replaced between open and lock
// (a holder that exits removes its netns file).
absl::StatusOr<int> LockFile(const std::string& path, const std::string& what) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      std::string holder = ReadAll(fd);
      close(fd);
      if (err != EWOULDBLOCK) {
        return absl::InternalError(absl::StrCat("cannot lock ", path, ": ", std::strerror(err)));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "another fabric-agent already runs ", what, " (", holder.empty() ? "unknown" : holder,
          "; lock ", path, "); stop it first, or give this one its own --state_dir and run it "
          "in another network namespace"));
    }
    struct stat held, now;
    if (fstat(fd, &held) == 0 && stat(path.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
        held.st_dev == now.st_dev) {
      return fd;
    }
    close(fd);  // replaced meanwhile: lock the new file
  }
  return absl::InternalError(absl::StrCat("cannot lock ", path, ": it keeps being replaced"));
}

absl::Status Describe(int fd, const std::string& state_dir, const std::string& socket) {
  std::string text =
      absl::StrCat("pid ", getpid(), ", state dir ", state_dir, ", socket ", socket, "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text.data(), text.size(), 0) < 0) {
    return absl::InternalError(absl::StrCat("cannot write the lock file: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<InstanceLock>> InstanceLock::Acquire(const std::string& state_dir,
                                                                    const std::string& run_dir,
                                                                    const std::string& socket) {
  std::unique_ptr<InstanceLock> lock(new InstanceLock());
  absl::StatusOr<int> fd =
      LockFile(absl::StrCat(state_dir, "/agent.lock"), absl::StrCat("on state dir ", state_dir));
  if (!fd.ok()) return fd.status();
  lock->state_fd_ = *fd;
  struct stat ns;
  if (stat("/proc/self/ns/net", &ns) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot identify the network namespace: ", std::strerror(errno)));
  }
  mkdir(run_dir.c_str(), 0755);
  lock->netns_path_ = absl::StrCat(run_dir, "/netns-", ns.st_ino, ".lock");
  fd = LockFile(lock->netns_path_, absl::StrCat("in this network namespace (net:[", ns.st_ino, "])"));
  if (!fd.ok()) {
    lock->netns_path_.clear();
    return fd.status();
  }
  lock->netns_fd_ = *fd;
  for (int f : {lock->state_fd_, lock->netns_fd_}) {
    if (absl::Status s = Describe(f, state_dir, socket); !s.ok()) return s;
  }
  return lock;
}

InstanceLock::~InstanceLock() {
  // The netns file names a namespace that may go away with this agent:
  // remove it while still holding it (a waiter re-checks the inode).
  if (netns_fd_ >= 0) {
    if (!netns_path_.empty()) unlink(netns_path_.c_str());
    close(netns_fd_);
  }
  if (state_fd_ >= 0) close(state_fd_);
}

}  // namespace fabric::agent
