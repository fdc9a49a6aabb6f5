// The loop: commands from other threads, forwards, timers, dispatch.
#include "agent/proxy/internal/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fabric::agent::proxy::internal {
namespace {

constexpr int kMaxEvents = 128;
constexpr int64_t kRearmDelayNs = 100'000'000;  // after EMFILE: 100 ms

// Whether a socket bound to `a` and one bound to `b` (same family) collide.
bool Overlaps(const nat::IpAddress& a, const nat::IpAddress& b) {
  return a == b || a.IsUnspecified() || b.IsUnspecified();
}

}  // namespace

ProxyCounters AtomicCounters::Snapshot() const {
  ProxyCounters c;
  c.connections_accepted = connections_accepted.load(std::memory_order_relaxed);
  c.connections_refused = connections_refused.load(std::memory_order_relaxed);
  c.connect_failures = connect_failures.load(std::memory_order_relaxed);
  c.active_connections = active_connections.load(std::memory_order_relaxed);
  c.udp_flows_created = udp_flows_created.load(std::memory_order_relaxed);
  c.udp_flows_refused = udp_flows_refused.load(std::memory_order_relaxed);
  c.udp_flows_expired = udp_flows_expired.load(std::memory_order_relaxed);
  c.active_udp_flows = active_udp_flows.load(std::memory_order_relaxed);
  c.bytes_to_target = bytes_to_target.load(std::memory_order_relaxed);
  c.bytes_to_client = bytes_to_client.load(std::memory_order_relaxed);
  return c;
}

absl::StatusOr<std::unique_ptr<Loop>> Loop::Create(const ProxyOptions& options) {
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) return absl::InternalError(absl::StrCat("proxy: epoll_create1: ", strerror(errno)));
  int wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakefd < 0) {
    int e = errno;
    close(epfd);
    return absl::InternalError(absl::StrCat("proxy: eventfd: ", strerror(e)));
  }
  std::unique_ptr<Loop> loop(new Loop(options, epfd, wakefd));
  loop->SetInterest(&loop->wake_, EPOLLIN);
  if (!loop->wake_.registered) return absl::InternalError("proxy: epoll_ctl on the eventfd failed");
  return loop;
}

Loop::Loop(const ProxyOptions& options, int epfd, int wakefd)
    : options_(options), epfd_(epfd), wake_(Handler::Kind::kWake), datagram_(65536) {
  wake_.fd = wakefd;
}

Loop::~Loop() {
  while (!forwards_.empty()) {
    auto it = forwards_.begin();
    std::unique_ptr<Forward> f = std::move(it->second);
    forwards_.erase(it);
    DestroyForward(f.get());
    dead_forwards_.push_back(std::move(f));
  }
  dead_conns_.clear();
  dead_flows_.clear();
  dead_forwards_.clear();
  // Listeners queued but never served close with their Command.
  commands_.clear();
  close(wake_.fd);
  close(epfd_);
}

int64_t Loop::Now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Loop::SetInterest(Handler* h, uint32_t events) {
  if (events == 0) {
    if (h->registered) {
      epoll_ctl(epfd_, EPOLL_CTL_DEL, h->fd, nullptr);
      h->registered = false;
    }
    h->interest = 0;
    return;
  }
  if (h->registered && h->interest == events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  int op = h->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(epfd_, op, h->fd, &ev) == 0) {
    h->registered = true;
    h->interest = events;
  }
}

void Loop::AddTimer(int64_t when_ns, uint64_t id, TimerKind kind) {
  timers_.push(Timer{when_ns, id, kind});
}

int Loop::TimeoutMs(int64_t now) const {
  if (timers_.empty()) return -1;
  int64_t wait = timers_.top().when_ns - now;
  if (wait <= 0) return 0;
  return static_cast<int>(std::min<int64_t>((wait + 999'999) / 1'000'000, 60'000));
}

void Loop::RunTimers(int64_t now) {
  while (!timers_.empty() && timers_.top().when_ns <= now) {
    Timer t = timers_.top();
    timers_.pop();
    switch (t.kind) {
      case TimerKind::kConnect:
        OnConnectTimeout(t.id);
        break;
      case TimerKind::kUdpIdle:
        OnUdpIdle(t.id, now);
        break;
      case TimerKind::kRearm: {
        std::vector<PortSocket*> paused = std::move(paused_);
        paused_.clear();
        for (PortSocket* s : paused) SetInterest(s, EPOLLIN);
        break;
      }
    }
  }
}

void Loop::PauseListener(PortSocket* socket) {
  SetInterest(socket, 0);
  if (std::find(paused_.begin(), paused_.end(), socket) == paused_.end()) {
    if (paused_.empty()) AddTimer(Now() + kRearmDelayNs, 0, TimerKind::kRearm);
    paused_.push_back(socket);
  }
}

void Loop::Run() {
  // splice(2) into a socket whose peer is gone raises SIGPIPE on this thread
  // (it has no MSG_NOSIGNAL); blocked here, it stays pending on this thread
  // and never reaches the process, and the call still fails with EPIPE.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  epoll_event events[kMaxEvents];
  while (!stop_) {
    int n = epoll_wait(epfd_, events, kMaxEvents, TimeoutMs(Now()));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      auto* h = static_cast<Handler*>(events[i].data.ptr);
      switch (h->kind) {
        case Handler::Kind::kWake: {
          uint64_t v;
          (void)!read(wake_.fd, &v, sizeof(v));
          RunCommands();
          break;
        }
        case Handler::Kind::kTcpListen: {
          auto* s = static_cast<PortSocket*>(h);
          if (!s->forward->closed) OnTcpAccept(s);
          break;
        }
        case Handler::Kind::kUdpListen: {
          auto* s = static_cast<PortSocket*>(h);
          if (!s->forward->closed) OnUdpListen(s);
          break;
        }
        case Handler::Kind::kTcpSide: {
          auto* side = static_cast<TcpSide*>(h);
          if (!side->conn->closed) OnTcpSide(side, events[i].events);
          break;
        }
        case Handler::Kind::kUdpFlow: {
          auto* flow = static_cast<UdpFlow*>(h);
          if (!flow->closed) OnUdpFlow(flow);
          break;
        }
      }
    }
    RunTimers(Now());
    dead_conns_.clear();
    dead_flows_.clear();
    dead_forwards_.clear();
  }
  // Whoever still waits (or comes later) must not wait for a loop that is gone.
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  done_seq_ = next_seq_;
  done_cv_.notify_all();
}

// --- control

void Loop::Submit(Command command) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stopped_) return;  // the listener (if any) closes with `command`
  uint64_t seq = command.seq = next_seq_++;
  commands_.push_back(std::move(command));
  uint64_t one = 1;
  (void)!write(wake_.fd, &one, sizeof(one));
  done_cv_.wait(lock, [&] { return done_seq_ >= seq; });
}

void Loop::RunCommands() {
  std::deque<Command> commands;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(commands_);
  }
  uint64_t last = 0;
  for (Command& c : commands) {
    switch (c.kind) {
      case Command::Kind::kServe:
        AddForward(std::move(c.listener), std::move(c.counters));
        break;
      case Command::Kind::kClose:
        RemoveForward(c.key);
        break;
      case Command::Kind::kStop:
        stop_ = true;
        break;
    }
    last = c.seq;
  }
  if (last == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  done_seq_ = std::max(done_seq_, last);
  if (stop_) stopped_ = true;
  done_cv_.notify_all();
}

void Loop::Serve(std::unique_ptr<Listener> listener) {
  Command c{Command::Kind::kServe, nullptr, listener->key(), std::make_shared<AtomicCounters>()};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    // The table changes now, so a Bind right after this sees the new
    // forward; the loop acts on the queue in order.
    served_[c.key] = Served{listener->spec(), listener->fds(), c.counters};
  }
  c.listener = std::move(listener);
  Submit(std::move(c));
}

bool Loop::Close(const ForwardKey& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (served_.erase(key) == 0) return false;
  }
  Submit(Command{Command::Kind::kClose, nullptr, key, nullptr});
  return true;
}

void Loop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    served_.clear();
  }
  Submit(Command{Command::Kind::kStop, nullptr, ForwardKey{}, nullptr});
}

std::optional<std::vector<int>> Loop::DupServed(const ProxySpec& spec) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = served_.find(ForwardKey::Of(spec));
  if (it == served_.end() || it->second.spec.port_count != spec.port_count) return std::nullopt;
  std::vector<int> fds;
  for (int fd : it->second.fds) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
      for (int x : fds) close(x);
      return std::nullopt;
    }
    fds.push_back(d);
  }
  return fds;
}

std::string Loop::DescribeHolder(nat::Protocol protocol, const nat::IpAddress& ip,
                                 uint16_t port) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, served] : served_) {
    const ProxySpec& s = served.spec;
    if (s.protocol == protocol && Overlaps(s.listen_ip, ip) && port >= s.listen_port &&
        port - s.listen_port < s.port_count) {
      return absl::StrCat("forward '", s.name, "' (", s.ToString(), ")");
    }
  }
  return "";
}

std::vector<ForwardKey> Loop::Keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ForwardKey> keys;
  for (const auto& [key, served] : served_) keys.push_back(key);
  return keys;
}

std::optional<ProxyCounters> Loop::ForwardCounters(const ForwardKey& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = served_.find(key);
  if (it == served_.end()) return std::nullopt;
  return it->second.counters->Snapshot();
}

// --- forwards

void Loop::AddForward(std::unique_ptr<Listener> listener,
                      std::shared_ptr<AtomicCounters> counters) {
  ForwardKey key = listener->key();
  RemoveForward(key);  // a re-target replaces the old forward
  auto f = std::make_unique<Forward>();
  f->spec = listener->spec();
  f->counters = std::move(counters);
  std::vector<int> fds = listener->Release();
  Handler::Kind kind = f->spec.protocol == nat::Protocol::kTcp ? Handler::Kind::kTcpListen
                                                               : Handler::Kind::kUdpListen;
  for (size_t i = 0; i < fds.size(); ++i) {
    auto s =
        std::make_unique<PortSocket>(kind, f.get(), static_cast<uint16_t>(f->spec.target_port + i));
    s->fd = fds[i];
    SetInterest(s.get(), EPOLLIN);
    f->sockets.push_back(std::move(s));
  }
  forwards_[key] = std::move(f);
}

void Loop::RemoveForward(const ForwardKey& key) {
  auto it = forwards_.find(key);
  if (it == forwards_.end()) return;
  std::unique_ptr<Forward> f = std::move(it->second);
  forwards_.erase(it);
  DestroyForward(f.get());
  dead_forwards_.push_back(std::move(f));
}

void Loop::DestroyForward(Forward* f) {
  f->closed = true;
  std::vector<uint64_t> members(f->members.begin(), f->members.end());
  for (uint64_t id : members) {
    if (auto c = conns_.find(id); c != conns_.end()) {
      CloseConn(c->second.get(), /*reset=*/true);
    } else if (auto u = flows_.find(id); u != flows_.end()) {
      CloseFlow(u->second.get());
    }
  }
  for (auto& s : f->sockets) {
    paused_.erase(std::remove(paused_.begin(), paused_.end(), s.get()), paused_.end());
    SetInterest(s.get(), 0);
    close(s->fd);
    s->fd = -1;
  }
}

}  // namespace fabric::agent::proxy::internal
