#include "agent/socket_front.h"

#include <nghttp2/nghttp2.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/server.h"
#include "grpcpp/server_posix.h"

namespace fabric::agent {

namespace {

constexpr absl::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kMaxWaiting = 256;
constexpr absl::Duration kFirstBytesWait = absl::Seconds(1);

struct InflaterFree {
  void operator()(nghttp2_hd_inflater* i) const { nghttp2_hd_inflate_del(i); }
};

// The :path in one complete header block, decoded from a fresh HPACK
// state (the first block of a connection).
std::optional<std::string> PathIn(absl::string_view block) {
  nghttp2_hd_inflater* raw = nullptr;
  if (nghttp2_hd_inflate_new(&raw) != 0) return std::nullopt;
  std::unique_ptr<nghttp2_hd_inflater, InflaterFree> inflater(raw);
  auto* in = reinterpret_cast<const uint8_t*>(block.data());
  size_t left = block.size();
  std::optional<std::string> path;
  for (;;) {
    nghttp2_nv nv;
    int flags = 0;
    ssize_t used = nghttp2_hd_inflate_hd2(inflater.get(), &nv, &flags, in, left, 1);
    if (used < 0) return std::nullopt;
    in += used;
    left -= static_cast<size_t>(used);
    if ((flags & NGHTTP2_HD_INFLATE_EMIT) != 0 &&
        absl::string_view(reinterpret_cast<const char*>(nv.name), nv.namelen) == ":path") {
      path.emplace(reinterpret_cast<const char*>(nv.value), nv.valuelen);
    }
    if ((flags & NGHTTP2_HD_INFLATE_FINAL) != 0) break;
    if (used == 0 && (flags & NGHTTP2_HD_INFLATE_EMIT) == 0) return std::nullopt;
  }
  return path;
}

}  // namespace

std::optional<std::string> FirstCallPath(absl::string_view bytes) {
  if (!absl::StartsWith(bytes, kPreface)) return std::nullopt;
  size_t pos = kPreface.size();
  // SETTINGS, WINDOW_UPDATE and PING may come first; a few of them at most.
  for (int frame = 0; frame < 8; ++frame) {
    if (bytes.size() - pos < 9) return std::nullopt;
    const auto* h = reinterpret_cast<const uint8_t*>(bytes.data() + pos);
    size_t len = (size_t{h[0]} << 16) | (size_t{h[1]} << 8) | h[2];
    uint8_t type = h[3];
    uint8_t flags = h[4];
    uint32_t stream =
        ((uint32_t{h[5]} << 24) | (uint32_t{h[6]} << 16) | (uint32_t{h[7]} << 8) | h[8]) &
        0x7fffffffu;
    if (bytes.size() - pos - 9 < len) return std::nullopt;
    absl::string_view payload = bytes.substr(pos + 9, len);
    pos += 9 + len;
    if (type == NGHTTP2_SETTINGS || type == NGHTTP2_WINDOW_UPDATE || type == NGHTTP2_PING) {
      continue;
    }
    if (type != NGHTTP2_HEADERS || stream == 0 || (flags & NGHTTP2_FLAG_END_HEADERS) == 0) {
      return std::nullopt;
    }
    size_t skip = 0, pad = 0;
    if ((flags & NGHTTP2_FLAG_PADDED) != 0) {
      if (payload.empty()) return std::nullopt;
      pad = static_cast<uint8_t>(payload[0]);
      skip = 1;
    }
    if ((flags & NGHTTP2_FLAG_PRIORITY) != 0) skip += 5;
    if (skip + pad > payload.size()) return std::nullopt;
    return PathIn(payload.substr(skip, payload.size() - skip - pad));
  }
  return std::nullopt;
}

class SocketFront::Impl {
 public:
  Impl(std::string path, int listen_fd, int epoll_fd, int wake_fd, grpc::Server* server,
       UnaryHandlers handlers, SocketFrontOptions options)
      : path_(std::move(path)),
        listen_fd_(listen_fd),
        epoll_fd_(epoll_fd),
        wake_fd_(wake_fd),
        server_(server),
        handlers_(std::move(handlers)),
        options_(options) {
    struct stat st;
    if (stat(path_.c_str(), &st) == 0) bound_ = {st.st_dev, st.st_ino};
    door_ = std::thread([this] { Door(); });
    for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Work(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    queued_.notify_all();
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    door_.join();
    for (std::thread& t : workers_) t.join();
    for (const auto& [fd, since] : waiting_) close(fd);
    for (int fd : queue_) close(fd);
    close(listen_fd_);
    close(epoll_fd_);
    close(wake_fd_);
    // The socket file goes with the listener (clients then read "no agent
    // socket"), unless another agent has bound a new one there since.
    struct stat st;
    if (stat(path_.c_str(), &st) == 0 && bound_ == std::make_pair(st.st_dev, st.st_ino)) {
      unlink(path_.c_str());
    }
  }

  std::atomic<uint64_t> served{0};
  std::atomic<uint64_t> handed{0};

 private:
  void ToGrpc(int fd) {
    // Counted first: gRPC may answer before AddInsecureChannelFromFd returns.
    handed.fetch_add(1, std::memory_order_relaxed);
    if (options_.on_route) options_.on_route(false);
    grpc::AddInsecureChannelFromFd(server_, fd);
  }

  void Accept() {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors (EMFILE, ENFILE, ENOBUFS): the listening socket
        // stays readable, so back off instead of spinning; EAGAIN: all taken.
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return;
      }
      epoll_event e{};
      e.events = EPOLLIN | EPOLLRDHUP;
      e.data.fd = fd;
      if (waiting_.size() >= kMaxWaiting || epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &e) != 0) {
        ToGrpc(fd);
        continue;
      }
      waiting_[fd] = absl::Now();
    }
  }

  // The connection's first bytes are here: which server takes it.
  void Route(int fd) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    waiting_.erase(fd);
    char buf[16 << 10];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) {
      close(fd);  // closed without a byte
      return;
    }
    std::optional<std::string> path =
        n > 0 ? FirstCallPath(absl::string_view(buf, static_cast<size_t>(n))) : std::nullopt;
    if (path.has_value() && handlers_.contains(*path)) {
      std::unique_lock<std::mutex> l(mu_);
      // As many waiting as there are workers: a client that holds a worker
      // (slow to send, or slow to read its answer, up to io_timeout) can
      // only delay that many; the rest go to gRPC's server, slower but not
      // behind it.
      if (queue_.size() < static_cast<size_t>(options_.workers)) {
        if (options_.on_route) options_.on_route(true);
        queue_.push_back(fd);
        l.unlock();
        queued_.notify_one();
        return;
      }
    }
    ToGrpc(fd);
  }

  void Door() {
    for (;;) {
      epoll_event events[64];
      int n = epoll_wait(epoll_fd_, events, 64, waiting_.empty() ? -1 : 100);
      if (n < 0 && errno != EINTR) return;
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == wake_fd_) return;
        if (fd == listen_fd_) {
          Accept();
        } else {
          Route(fd);
        }
      }
      // Silent for a second: gRPC's server decides what to do with it.
      absl::Time now = absl::Now();
      std::vector<int> late;
      for (const auto& [fd, since] : waiting_) {
        if (now - since > kFirstBytesWait) late.push_back(fd);
      }
      for (int fd : late) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
        waiting_.erase(fd);
        ToGrpc(fd);
      }
    }
  }

  void Work() {
    for (;;) {
      int fd;
      {
        std::unique_lock<std::mutex> l(mu_);
        queued_.wait(l, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        fd = queue_.front();
        queue_.pop_front();
      }
      (void)ServeUnaryConnection(fd, handlers_, options_.limits);
      served.fetch_add(1, std::memory_order_relaxed);
    }
  }

  const std::string path_;
  std::pair<dev_t, ino_t> bound_{0, 0};
  const int listen_fd_;
  const int epoll_fd_;
  const int wake_fd_;
  grpc::Server* const server_;
  const UnaryHandlers handlers_;
  const SocketFrontOptions options_;
  absl::flat_hash_map<int, absl::Time> waiting_;  // the door thread's
  std::mutex mu_;
  std::condition_variable queued_;
  std::deque<int> queue_;  // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::thread door_;
  std::vector<std::thread> workers_;
};

absl::StatusOr<std::unique_ptr<SocketFront>> SocketFront::Start(const std::string& path,
                                                                grpc::Server* grpc_server,
                                                                UnaryHandlers handlers,
                                                                SocketFrontOptions options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path \"", path, "\" is empty or over ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", strerror(errno)));
  // 0600 from the start: no moment in which others could connect.
  mode_t old_umask = umask(0177);
  int bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  umask(old_umask);
  if (bound != 0 || listen(fd, 1024) != 0) {
    int e = bound != 0 ? bind_errno : errno;
    if (bound == 0) unlink(path.c_str());  // ours, and never listened on
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", path, ": ", strerror(e)));
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = fd;
  bool ok = ep >= 0 && wake >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == 0;
  e.data.fd = wake;
  ok = ok && epoll_ctl(ep, EPOLL_CTL_ADD, wake, &e) == 0;
  if (!ok) {
    int err = errno;
    close(fd);
    if (ep >= 0) close(ep);
    if (wake >= 0) close(wake);
    return absl::UnavailableError(absl::StrCat("epoll: ", strerror(err)));
  }
  return std::unique_ptr<SocketFront>(new SocketFront(
      std::make_unique<Impl>(path, fd, ep, wake, grpc_server, std::move(handlers), options)));
}

SocketFront::SocketFront(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SocketFront::~SocketFront() = default;

uint64_t SocketFront::served_here() const { return impl_->served.load(); }
uint64_t SocketFront::handed_to_grpc() const { return impl_->handed.load(); }

}  // namespace fabric::agent
