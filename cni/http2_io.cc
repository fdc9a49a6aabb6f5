#include "cni/http2_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace fabric::cni {

namespace {

int MillisUntil(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  // Rounded up: a poll that returns early only loops once more.
  int64_t ms = absl::ToInt64Milliseconds(left + absl::Milliseconds(1) - absl::Nanoseconds(1));
  return static_cast<int>(std::min<int64_t>(ms, std::numeric_limits<int>::max()));
}

}  // namespace

absl::StatusOr<SessionPtr> NewSession(bool server, void* user,
                                      const std::function<void(nghttp2_session_callbacks*)>& set) {
  nghttp2_session_callbacks* callbacks = nullptr;
  if (nghttp2_session_callbacks_new(&callbacks) != 0) {
    return absl::ResourceExhaustedError("out of memory");
  }
  set(callbacks);
  nghttp2_session* session = nullptr;
  int rv = server ? nghttp2_session_server_new(&session, callbacks, user)
                  : nghttp2_session_client_new(&session, callbacks, user);
  nghttp2_session_callbacks_del(callbacks);  // the session keeps a copy
  if (rv != 0) return absl::ResourceExhaustedError("out of memory");
  return SessionPtr(session);
}

absl::Status SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return absl::UnavailableError(absl::StrCat("fcntl: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status WaitFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int ms = MillisUntil(deadline);
    if (ms == 0) return absl::DeadlineExceededError("Deadline Exceeded");
    int n = poll(&p, 1, ms);
    if (n > 0) return absl::OkStatus();
    if (n == 0) continue;  // the loop's MillisUntil decides
    if (errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll: ", strerror(errno)));
    }
  }
}

absl::Status FlushSession(int fd, nghttp2_session* session, std::string* scratch,
                          absl::Time deadline, absl::string_view peer_gone) {
  std::string& out = *scratch;
  out.clear();
  for (;;) {
    const uint8_t* data = nullptr;
    ssize_t n = nghttp2_session_mem_send(session, &data);
    if (n < 0) return absl::InternalError(absl::StrCat("HTTP/2: ", nghttp2_strerror(n)));
    if (n == 0) break;
    out.append(reinterpret_cast<const char*>(data), n);
  }
  size_t off = 0;
  while (off < out.size()) {
    // No SIGPIPE from a peer that has gone: the error says so instead.
    ssize_t w = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += w;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (absl::Status s = WaitFor(fd, POLLOUT, deadline); !s.ok()) return s;
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return absl::UnavailableError(peer_gone);
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
    }
  }
  return absl::OkStatus();
}

std::vector<nghttp2_nv> NameValues(std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (auto& [name, value] : fields) {
    nva.push_back({reinterpret_cast<uint8_t*>(name.data()),
                   reinterpret_cast<uint8_t*>(value.data()), name.size(), value.size(),
                   NGHTTP2_NV_FLAG_NONE});
  }
  return nva;
}

std::string GrpcMessage(const std::string& message) {
  uint32_t len = static_cast<uint32_t>(message.size());
  std::string out;
  out.reserve(kGrpcPrefix + message.size());
  out.push_back('\0');
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(len >> shift));
  out += message;
  return out;
}

uint32_t GrpcMessageLength(const char* prefix) {
  const auto* p = reinterpret_cast<const uint8_t*>(prefix);
  return (uint32_t{p[1]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 8) | p[4];
}

}  // namespace fabric::cni
