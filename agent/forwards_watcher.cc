#include "agent/forwards_watcher.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/forwards.h"
#include "agent/log.h"

namespace fabric::agent {

namespace {

std::string Dir(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string Base(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ForwardsWatcher>> ForwardsWatcher::Start(
    AgentCore* core, Metrics* metrics, std::string path, ForwardsOptions options) {
  int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (in < 0) return absl::UnavailableError(absl::StrCat("inotify: ", strerror(errno)));
  if (inotify_add_watch(in, Dir(path).c_str(),
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM) <
      0) {
    int e = errno;
    close(in);
    return absl::FailedPreconditionError(absl::StrCat(
        "--forwards_file ", path, ": cannot watch its directory ", Dir(path), ": ", strerror(e)));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(in);
    return absl::UnavailableError(absl::StrCat("eventfd: ", strerror(errno)));
  }
  std::unique_ptr<ForwardsWatcher> w(
      new ForwardsWatcher(core, metrics, std::move(path), std::move(options), in, wake));
  w->Reload("start");
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

ForwardsWatcher::ForwardsWatcher(AgentCore* core, Metrics* metrics, std::string path,
                                 ForwardsOptions options, int inotify, int wake)
    : core_(core),
      metrics_(metrics),
      path_(std::move(path)),
      options_(std::move(options)),
      inotify_(inotify),
      wake_(wake) {}

ForwardsWatcher::~ForwardsWatcher() {
  stopping_ = true;
  uint64_t one = 1;
  (void)!write(wake_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  close(inotify_);
  close(wake_);
}

void ForwardsWatcher::Run() {
  const std::string base = Base(path_);
  alignas(inotify_event) char buf[4096];
  while (!stopping_) {
    pollfd fds[2] = {{inotify_, POLLIN, 0}, {wake_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (stopping_) return;
    bool ours = false;
    ssize_t n;
    while ((n = read(inotify_, buf, sizeof buf)) > 0) {
      for (char* p = buf; p < buf + n;) {
        auto* e = reinterpret_cast<inotify_event*>(p);
        if (e->len > 0 && base == e->name) ours = true;
        if (e->mask & IN_Q_OVERFLOW) ours = true;
        p += sizeof(inotify_event) + e->len;
      }
    }
    if (!ours) continue;
    // An editor may write in steps: let it finish.
    usleep(50 * 1000);
    while (read(inotify_, buf, sizeof buf) > 0) {
    }
    Reload("the file changed");
  }
}

void ForwardsWatcher::SetWanInterface(const std::string& interface) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (options_.default_out_interface == interface) return;
    options_.default_out_interface = interface;
  }
  Reload(absl::StrCat("the WAN interface is now ", interface));
}

void ForwardsWatcher::Reload(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Time start = absl::Now();
  absl::StatusOr<StaticConfig> forwards = LoadForwardsFile(path_, options_);
  absl::StatusOr<StaticDiff> diff =
      forwards.ok() ? core_->ApplyStaticForwards(*forwards) : forwards.status();
  metrics_->RecordOperation("forwards_reload", diff.ok(), absl::Now() - start);
  if (!diff.ok()) {
    last_error_ = std::string(diff.status().message());
    applied_ = 0;
    core_->snapshot()->state.mappings.ForEach([&](const std::string&, const MappingRecord& m) {
      if (m.owner().kind() == v1::OWNER_KIND_STATIC) ++applied_;
    });
    snat_applied_ = core_->snapshot()->state.static_snat.size();
    LogLine(absl::StrCat("forwards file ", path_, " (", why, "): ", EscapeForLog(last_error_),
                         "; keeping the previous ", applied_, " forward(s) and ", snat_applied_,
                         " SNAT rule(s)"));
    return;
  }
  last_error_.clear();
  applied_ = forwards->forwards.size();
  proxied_ = diff->proxied;
  snat_applied_ = forwards->snat.size();
  LogLine(absl::StrCat("forwards file ", path_, " (", why, "): ", applied_, " forward(s): added ",
                       diff->added, ", removed ", diff->removed, ", kept ", diff->kept, "; ",
                       snat_applied_, " SNAT rule(s): added ", diff->snat_added, ", removed ",
                       diff->snat_removed));
}

std::string ForwardsWatcher::StatusLine() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (last_error_.empty()) {
    std::string proxied;
    if (proxied_ > 0) {
      proxied = absl::StrCat(" (", proxied_, " through the IPv6-to-IPv4 proxy");
      if (proxy::Proxy* p = core_->proxy(); p != nullptr) {
        proxy::ProxyCounters c = p->counters();
        absl::StrAppend(&proxied, ": ", c.active_connections, " connection(s) and ",
                        c.active_udp_flows, " UDP flow(s) open, ", c.connections_accepted,
                        " accepted, ", c.connections_refused + c.udp_flows_refused,
                        " refused by its limits");
      }
      proxied += ")";
    }
    return absl::StrCat("static forwards from ", path_, ": ", applied_, " applied", proxied, ", ",
                        snat_applied_, " SNAT rule(s)");
  }
  return absl::StrCat("static forwards from ", path_, ": ERROR ", last_error_, "; ", applied_,
                      " kept, ", snat_applied_, " SNAT rule(s)");
}

}  // namespace fabric::agent
