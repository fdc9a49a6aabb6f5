#include "nat/backend/iptables/xtables_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace fabric::nat {

absl::StatusOr<std::unique_ptr<XtablesLock>> XtablesLock::Acquire(const std::string& path,
                                                                  absl::Duration timeout) {
  int fd = open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("xtables lock ", path, ": cannot open: ", std::strerror(errno)));
  }
  absl::Time give_up = absl::Now() + timeout;
  // Short naps first: a commit holds the lock for milliseconds.
  absl::Duration nap = absl::Milliseconds(1);
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return std::unique_ptr<XtablesLock>(new XtablesLock(fd));
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int err = errno;
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("xtables lock ", path, ": flock: ", std::strerror(err)));
    }
    absl::Time now = absl::Now();
    if (now >= give_up) break;
    absl::SleepFor(std::min(nap, give_up - now));
    nap = std::min(nap * 2, absl::Milliseconds(50));
  }
  std::string holder = DescribeLockHolder(fd);
  close(fd);
  return absl::UnavailableError(absl::StrCat(
      "xtables lock ", path, " is held", holder.empty() ? "" : absl::StrCat(" by ", holder),
      " for more than ", absl::FormatDuration(timeout),
      "; nothing changed (another iptables writer is busy or stuck)"));
}

XtablesLock::~XtablesLock() { close(fd_); }  // closing releases the flock

std::string DescribeLockHolder(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return "";
  // /proc/locks: "1: FLOCK  ADVISORY  WRITE 4242 fd:01:131 0 EOF"; lines
  // with "->" are waiters.
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (f.size() < 6 || f[1] == "->" || f[1] != "FLOCK") continue;
    // The device field's hex digits may come without leading zeros.
    std::vector<std::string> dev = absl::StrSplit(f[5], ':');
    if (dev.size() != 3) continue;
    unsigned long maj = std::strtoul(dev[0].c_str(), nullptr, 16);
    unsigned long min = std::strtoul(dev[1].c_str(), nullptr, 16);
    unsigned long ino = std::strtoul(dev[2].c_str(), nullptr, 10);
    if (maj != major(st.st_dev) || min != minor(st.st_dev) || ino != st.st_ino) continue;
    std::string pid = f[4];
    std::ifstream comm(absl::StrCat("/proc/", pid, "/comm"));
    std::string name;
    std::getline(comm, name);
    return name.empty() ? absl::StrCat("pid ", pid) : absl::StrCat("pid ", pid, " (", name, ")");
  }

  return "";
}

}  // namespace fabric::nat
