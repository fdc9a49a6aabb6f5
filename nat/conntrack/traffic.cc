#include "nat/conntrack/traffic.h"

#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_compat.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nat/conntrack/ctnetlink.h"
#include "nat/netlink/socket.h"

namespace fabric::nat {

namespace {

// Room for bursts of destroy events (each ~250 bytes) while the thread is
// busy; beyond it the kernel reports ENOBUFS and drops events.
constexpr int kEventBuffer = 8 << 20;

absl::Status Errno(const std::string& what) {
  int e = errno;
  return absl::Status(e == EPERM || e == EACCES ? absl::StatusCode::kPermissionDenied
                                                : absl::StatusCode::kUnavailable,
                      absl::StrCat("conntrack accounting: ", what, ": ", std::strerror(e)));
}

}  // namespace

std::optional<FlowKey> KeyOf(const ctnetlink::Flow& f) {
  if (!f.dnat()) return std::nullopt;
  return FlowKey{f.family, f.l4proto, f.dst_port, f.dst, f.reply_src, f.reply_src_port};
}

absl::StatusOr<std::unique_ptr<TrafficAccounting>> TrafficAccounting::Start(Options options) {
  std::unique_ptr<TrafficAccounting> t(new TrafficAccounting());
  t->options_ = options;
  absl::StatusOr<std::unique_ptr<netlink::NetlinkSocket>> dumper = netlink::NetlinkSocket::Open();
  if (!dumper.ok()) return dumper.status();
  t->dumper_ = *std::move(dumper);

  t->events_socket_ = mnl_socket_open(NETLINK_NETFILTER);
  if (t->events_socket_ == nullptr) return Errno("cannot open a netfilter netlink socket");
  if (mnl_socket_bind(t->events_socket_, NF_NETLINK_CONNTRACK_DESTROY, MNL_SOCKET_AUTOPID) < 0) {
    return Errno("cannot subscribe to conntrack destroy events");
  }
  int fd = mnl_socket_get_fd(t->events_socket_);
  int size = kEventBuffer;
  // FORCE needs CAP_NET_ADMIN (which the agent has); the plain option is
  // capped by net.core.rmem_max.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  t->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->stop_fd_ < 0) return Errno("eventfd");
  t->thread_ = std::thread([p = t.get()] { p->Run(); });
  return t;
}

TrafficAccounting::~TrafficAccounting() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (stop_fd_ >= 0) close(stop_fd_);
  if (events_socket_ != nullptr) mnl_socket_close(events_socket_);
}

void TrafficAccounting::Add(const ctnetlink::Flow& f) {
  std::optional<FlowKey> key = KeyOf(f);
  if (!key.has_value()) return;
  events_.fetch_add(1);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ended_.find(*key);
  if (it == ended_.end()) {
    if (ended_.size() >= options_.max_keys) {
      dropped_.fetch_add(1);
      return;
    }
    it = ended_.emplace(*key, Traffic{}).first;
  }
  it->second += Traffic{0, 1, f.packets, f.bytes};
}

void TrafficAccounting::Run() {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  pollfd fds[2] = {{mnl_socket_get_fd(events_socket_), POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    for (;;) {
      ssize_t n = recv(fds[0].fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == ENOBUFS) {
          lost_.fetch_add(1);
          continue;
        }
        break;  // EAGAIN: drained
      }
      int len = static_cast<int>(n);
      for (const nlmsghdr* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
           mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
        if (std::optional<ctnetlink::Flow> f = ctnetlink::ParseFlow(nlh); f && f->destroyed) {
          Add(*f);
        }
      }
    }
  }
}

absl::StatusOr<TrafficTable> TrafficAccounting::Read() {
  TrafficTable out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = ended_;
  }
  std::lock_guard<std::mutex> lock(dump_mu_);
  for (Family family : {Family::kIPv4, Family::kIPv6}) {
    ctnetlink::HostPortQuery q;
    q.family = family;
    absl::Status s = dumper_->Request(
        absl::StrCat("conntrack accounting: dump ", FamilyName(family)),
        [&](char* b, uint32_t seq) { return ctnetlink::BuildDumpRequest(b, seq, q, 0, 0); },
        [&](const nlmsghdr* nlh) {
          std::optional<ctnetlink::Flow> f = ctnetlink::ParseFlow(nlh);
          if (!f.has_value()) return absl::OkStatus();
          std::optional<FlowKey> key = KeyOf(*f);
          if (!key.has_value()) return absl::OkStatus();
          auto it = out.find(*key);
          if (it == out.end()) {
            // Open connections' keys are bounded by what is mapped; the
            // cap guards against anything else.
            if (out.size() >= 2 * options_.max_keys) return absl::OkStatus();
            it = out.emplace(*key, Traffic{}).first;
          }
          it->second += Traffic{1, 0, f->packets, f->bytes};
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
  }
  return out;
}

}  // namespace fabric::nat
