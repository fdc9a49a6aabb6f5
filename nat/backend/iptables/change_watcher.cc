#include "nat/backend/iptables/change_watcher.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nat/backend/iptables/internal/libiptc.h"

namespace fabric::nat {

using iptables_internal::Fingerprint;
using iptables_internal::Handle;
using iptables_internal::TableKey;
using iptables_internal::V4;
using iptables_internal::V6;

absl::StatusOr<std::unique_ptr<IptablesChangeWatcher>> IptablesChangeWatcher::Open(
    std::shared_ptr<LayoutExpectation> expectation, Options options) {
  int fd4 = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  int fd6 = fd4 < 0 ? -1 : socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd4 < 0 || fd6 < 0) {
    int err = errno;
    if (fd4 >= 0) close(fd4);
    return absl::Status(
        err == EPERM ? absl::StatusCode::kPermissionDenied : absl::StatusCode::kUnavailable,
        absl::StrCat("iptables change watcher: raw socket: ", std::strerror(err)));
  }
  return std::unique_ptr<IptablesChangeWatcher>(
      new IptablesChangeWatcher(std::move(expectation), options, fd4, fd6));
}

IptablesChangeWatcher::~IptablesChangeWatcher() {
  close(fd4_);
  close(fd6_);
}

absl::StatusOr<std::string> IptablesChangeWatcher::Info(Family family, const char* table) const {
  // ipt_getinfo and ip6t_getinfo are the same struct under two names.
  ipt_getinfo info{};
  std::strncpy(info.name, table, sizeof(info.name) - 1);
  socklen_t len = sizeof(info);
  int fd = family == Family::kIPv4 ? fd4_ : fd6_;
  int opt = family == Family::kIPv4 ? IPT_SO_GET_INFO : IP6T_SO_GET_INFO;
  int level = family == Family::kIPv4 ? IPPROTO_IP : IPPROTO_IPV6;
  if (getsockopt(fd, level, opt, &info, &len) != 0) {
    return absl::UnavailableError(absl::StrCat("iptables change watcher: ", FamilyName(family), " ",
                                               table, ": ", std::strerror(errno)));
  }
  return absl::StrCat(info.size, "/", info.num_entries);
}

absl::StatusOr<bool> IptablesChangeWatcher::Poll(std::string* what) {
  LayoutExpectation::View expected = expectation_->Get();
  if (expected.generation % 2 == 1 || expected.fingerprints.empty()) return false;
  std::string differs;
  for (const char* table : {"nat", "filter"}) {
    for (Family family : {Family::kIPv4, Family::kIPv6}) {
      std::string key = absl::StrCat(FamilyName(family), " ", table);
      auto want = expected.fingerprints.find(key);
      if (want == expected.fingerprints.end()) continue;
      absl::StatusOr<std::string> info = Info(family, table);
      if (!info.ok()) return info.status();
      Seen& seen = seen_[key];
      if (seen.info != *info || seen.fingerprint.empty()) {
        // Read the table only when its size says something changed.
        std::string fingerprint;
        if (family == Family::kIPv4) {
          Handle<V4> h(table);
          if (h.h != nullptr) fingerprint = Fingerprint<V4>(h.h, table);
        } else {
          Handle<V6> h(table);
          if (h.h != nullptr) fingerprint = Fingerprint<V6>(h.h, table);
        }
        seen = {*info, fingerprint};
      }
      if (seen.fingerprint != want->second && differs.empty()) {
        differs = absl::StrCat("iptables ", key, ": ",
                               seen.fingerprint.empty() ? "unreadable" : seen.fingerprint,
                               ", expected ", want->second);
      }
    }
  }
  // A write of ours during the look: it proves nothing either way.
  if (expectation_->Get().generation != expected.generation) return false;
  if (differs.empty()) return false;
  if (what != nullptr) *what = differs;
  return true;
}

absl::StatusOr<bool> IptablesChangeWatcher::Wait(absl::Duration timeout, std::string* what) {
  absl::Time now = absl::Now();
  if (now < next_poll_) {
    absl::Duration nap = std::min(timeout, next_poll_ - now);
    absl::SleepFor(nap);
    if (absl::Now() < next_poll_) return false;
  }
  uint64_t generation = expectation_->Get().generation;
  absl::StatusOr<bool> changed = Poll(what);
  // Overlapped a write of the backend: look again soon rather than in a
  // second.
  bool overlapped = generation % 2 == 1 || expectation_->Get().generation != generation;
  next_poll_ = absl::Now() + (overlapped ? absl::Milliseconds(20) : options_.poll_interval);
  return changed;
}

absl::StatusOr<bool> IptablesChangeWatcher::Drain(std::string* what) {
  (void)what;
  return false;
}

}  // namespace fabric::nat
