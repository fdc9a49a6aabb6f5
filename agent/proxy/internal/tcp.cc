// TCP: accept, limits, nonblocking connect to the target, then splice both
// ways through a pipe per direction. Level-triggered: a side is in epoll for
// reading while its outgoing pipe has room and it has not said EOF, and for
// writing while its incoming pipe holds bytes the socket would not take; a
// side with neither is out of epoll (so a half-closed peer's EPOLLHUP does not
// spin the loop). EOF one way becomes shutdown(SHUT_WR) on the other once the
// pipe is empty; the connection closes when both ways are done, and is reset
// both ways on any error.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "agent/proxy/internal/loop.h"

namespace fabric::agent::proxy::internal {
namespace {

constexpr int kAcceptsPerEvent = 64;
// Rounds of splice per event for one connection, so one fast connection
// cannot starve the others (level-triggered epoll comes back for the rest).
constexpr int kPumpRounds = 16;

void Reset(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

void NoDelay(int fd) {
  int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

bool MakePipe(Pipe& p, int size) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  p.r = fds[0];
  p.w = fds[1];
  fcntl(p.w, F_SETPIPE_SZ, size);  // best effort: the default (64 KiB) also works
  return true;
}

void ClosePipe(Pipe& p) {
  if (p.r >= 0) close(p.r);
  if (p.w >= 0) close(p.w);
  p.r = p.w = -1;
}

// The result of one direction's round.
enum class Flow { kIdle, kMoved, kError };

// Moves bytes from `src` through `p` into `dst`. `cap`: what `p` may hold.
Flow MoveOneWay(int src, Pipe& p, int dst, size_t cap, bool& src_eof, bool& dst_shut,
                std::atomic<uint64_t>& total, std::atomic<uint64_t>& forward_total) {
  bool moved = false;
  if (!src_eof && !p.full && p.bytes < cap) {
    ssize_t n =
        splice(src, nullptr, p.w, nullptr, cap - p.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      p.bytes += static_cast<size_t>(n);
      moved = true;
    } else if (n == 0) {
      src_eof = true;
      moved = true;
    } else if (errno == EAGAIN) {
      p.full = p.bytes > 0;
    } else if (errno != EINTR) {
      return Flow::kError;
    }
  }
  if (p.bytes > 0) {
    ssize_t n = splice(p.r, nullptr, dst, nullptr, p.bytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      p.bytes -= static_cast<size_t>(n);
      p.full = false;
      total.fetch_add(n, std::memory_order_relaxed);
      forward_total.fetch_add(n, std::memory_order_relaxed);
      moved = true;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return Flow::kError;
    }
  }
  if (src_eof && p.bytes == 0 && !dst_shut) {
    shutdown(dst, SHUT_WR);
    dst_shut = true;
    moved = true;
  }
  return moved ? Flow::kMoved : Flow::kIdle;
}

}  // namespace

void Loop::OnTcpAccept(PortSocket* socket) {
  Forward* f = socket->forward;
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    sockaddr_in6 peer{};
    socklen_t len = sizeof(peer);
    int fd =
        accept4(socket->fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        PauseListener(socket);
      }
      return;
    }
    nat::IpAddress client = nat::IpAddress::FromBytes(nat::Family::kIPv6, peer.sin6_addr.s6_addr);
    int& per_client = tcp_per_client_[client];
    if (static_cast<int>(f->members.size()) >= options_.max_connections_per_forward ||
        per_client >= options_.max_connections_per_client ||
        static_cast<int>(conns_.size()) >= options_.max_connections) {
      if (per_client == 0) tcp_per_client_.erase(client);
      // Counted before the reset, so whoever sees the reset sees the count.
      totals_.connections_refused.fetch_add(1, std::memory_order_relaxed);
      f->counters->connections_refused.fetch_add(1, std::memory_order_relaxed);
      Reset(fd);
      continue;
    }
    int target = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(socket->target_port);
    std::memcpy(&to.sin_addr, f->spec.target_ip.bytes(), 4);
    if (target < 0 || (connect(target, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0 &&
                       errno != EINPROGRESS)) {
      if (target >= 0) close(target);
      if (per_client == 0) tcp_per_client_.erase(client);
      totals_.connect_failures.fetch_add(1, std::memory_order_relaxed);
      f->counters->connect_failures.fetch_add(1, std::memory_order_relaxed);
      Reset(fd);
      continue;
    }
    ++per_client;
    auto conn = std::make_unique<TcpConn>();
    conn->id = next_id_++;
    conn->forward = f;
    conn->client_ip = client;
    conn->client.fd = fd;
    conn->client.conn = conn.get();
    conn->target.fd = target;
    conn->target.conn = conn.get();
    f->members.insert(conn->id);
    totals_.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    totals_.active_connections.fetch_add(1, std::memory_order_relaxed);
    f->counters->connections_accepted.fetch_add(1, std::memory_order_relaxed);
    f->counters->active_connections.fetch_add(1, std::memory_order_relaxed);
    SetInterest(&conn->target, EPOLLOUT);
    AddTimer(Now() + absl::ToInt64Nanoseconds(options_.connect_timeout), conn->id,
             TimerKind::kConnect);
    conns_[conn->id] = std::move(conn);
  }
}

void Loop::OnTcpSide(TcpSide* side, uint32_t events) {
  TcpConn* conn = side->conn;
  if (conn->connecting) {
    if (side == &conn->target) OnConnected(conn);
    return;
  }
  if (Pump(conn)) UpdateTcpInterest(conn);
}

void Loop::OnConnected(TcpConn* conn) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(conn->target.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == EINPROGRESS || err == EALREADY) return;
  if (err != 0 || !MakePipe(conn->up, options_.pipe_size) ||
      !MakePipe(conn->down, options_.pipe_size)) {
    totals_.connect_failures.fetch_add(1, std::memory_order_relaxed);
    conn->forward->counters->connect_failures.fetch_add(1, std::memory_order_relaxed);
    CloseConn(conn, /*reset=*/true);
    return;
  }
  conn->connecting = false;
  NoDelay(conn->client.fd);
  NoDelay(conn->target.fd);
  if (Pump(conn)) UpdateTcpInterest(conn);
}

bool Loop::Pump(TcpConn* conn) {
  const size_t cap = static_cast<size_t>(options_.pipe_size);
  AtomicCounters& fc = *conn->forward->counters;
  for (int round = 0; round < kPumpRounds; ++round) {
    Flow up = MoveOneWay(conn->client.fd, conn->up, conn->target.fd, cap, conn->client_eof,
                         conn->target_shut, totals_.bytes_to_target, fc.bytes_to_target);
    Flow down = MoveOneWay(conn->target.fd, conn->down, conn->client.fd, cap, conn->target_eof,
                           conn->client_shut, totals_.bytes_to_client, fc.bytes_to_client);
    if (up == Flow::kError || down == Flow::kError) {
      CloseConn(conn, /*reset=*/true);
      return false;
    }
    if (conn->target_shut && conn->client_shut) {
      CloseConn(conn, /*reset=*/false);
      return false;
    }
    if (up == Flow::kIdle && down == Flow::kIdle) break;
  }
  return true;
}

void Loop::UpdateTcpInterest(TcpConn* conn) {
  const size_t cap = static_cast<size_t>(options_.pipe_size);
  uint32_t c = 0, t = 0;
  if (!conn->client_eof && !conn->up.full && conn->up.bytes < cap) c |= EPOLLIN;
  if (conn->down.bytes > 0) c |= EPOLLOUT;
  if (!conn->target_eof && !conn->down.full && conn->down.bytes < cap) t |= EPOLLIN;
  if (conn->up.bytes > 0) t |= EPOLLOUT;
  SetInterest(&conn->client, c);
  SetInterest(&conn->target, t);
}

void Loop::CloseConn(TcpConn* conn, bool reset) {
  if (conn->closed) return;
  conn->closed = true;
  // Counted first: whoever sees the close sees the gauge without it.
  Forward* f = conn->forward;
  f->members.erase(conn->id);
  f->counters->active_connections.fetch_sub(1, std::memory_order_relaxed);
  totals_.active_connections.fetch_sub(1, std::memory_order_relaxed);
  SetInterest(&conn->client, 0);
  SetInterest(&conn->target, 0);
  if (reset) {
    Reset(conn->client.fd);
    Reset(conn->target.fd);
  } else {
    close(conn->client.fd);
    close(conn->target.fd);
  }
  ClosePipe(conn->up);
  ClosePipe(conn->down);
  if (auto it = tcp_per_client_.find(conn->client_ip); it != tcp_per_client_.end()) {
    if (--it->second <= 0) tcp_per_client_.erase(it);
  }
  auto it = conns_.find(conn->id);
  dead_conns_.push_back(std::move(it->second));
  conns_.erase(it);
}

void Loop::OnConnectTimeout(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end() || !it->second->connecting) return;
  TcpConn* conn = it->second.get();
  totals_.connect_failures.fetch_add(1, std::memory_order_relaxed);
  conn->forward->counters->connect_failures.fetch_add(1, std::memory_order_relaxed);
  CloseConn(conn, /*reset=*/true);
}

}  // namespace fabric::agent::proxy::internal
