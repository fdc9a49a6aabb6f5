#include "agent/unary_server.h"

#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cni/http2_io.h"

namespace fabric::agent {

namespace {

constexpr size_t kPrefix = cni::kGrpcPrefix;
constexpr char kPeerGone[] = "the client closed the connection";

// The connection's one call, shared with nghttp2's callbacks.
struct Call {
  const UnaryServerLimits* limits = nullptr;
  int32_t stream = 0;  // the first request stream; 0 before it
  absl::Time started;  // when its headers began
  std::string method, path, content_type, encoding, timeout, traceparent;
  size_t header_bytes = 0;
  bool headers_too_large = false;
  std::string body;  // DATA, prefix included
  bool body_too_large = false;
  bool request_ended = false;  // END_STREAM seen
  bool closed = false;         // the stream is gone (answered, or reset)
  std::string answer;          // prefix + response, sent from `sent`
  size_t sent = 0;
  std::vector<std::pair<std::string, std::string>> trailers;
  std::string protocol_error;
};

int OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto* c = static_cast<Call*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  if (c->stream != 0) {
    // One call a connection: gRPC clients retry a refused stream elsewhere.
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  c->stream = frame->hd.stream_id;
  c->started = absl::Now();
  return 0;
}

int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* user) {
  auto* c = static_cast<Call*>(user);
  if (frame->hd.stream_id != c->stream) return 0;
  // As HTTP/2 counts a header list: 32 bytes of overhead a field.
  c->header_bytes += namelen + valuelen + 32;
  if (c->header_bytes > c->limits->max_header_bytes) {
    c->headers_too_large = true;
    return 0;
  }
  absl::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":method") {
    c->method = std::move(v);
  } else if (n == ":path") {
    c->path = std::move(v);
  } else if (n == "content-type") {
    c->content_type = std::move(v);
  } else if (n == "grpc-encoding") {
    c->encoding = std::move(v);
  } else if (n == "grpc-timeout") {
    c->timeout = std::move(v);
  } else if (n == "traceparent") {
    c->traceparent = std::move(v);
  }
  return 0;
}

int OnData(nghttp2_session*, uint8_t, int32_t stream, const uint8_t* data, size_t len, void* user) {
  auto* c = static_cast<Call*>(user);
  if (stream != c->stream || c->body_too_large) return 0;
  if (c->body.size() + len > c->limits->max_request_bytes + kPrefix) {
    c->body_too_large = true;
    c->body.clear();
    c->body.shrink_to_fit();
    return 0;
  }
  c->body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* c = static_cast<Call*>(user);
  if (frame->hd.stream_id != c->stream || c->stream == 0) return 0;
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
    c->request_ended = true;
  }
  return 0;
}

int OnStreamClose(nghttp2_session*, int32_t stream, uint32_t, void* user) {
  auto* c = static_cast<Call*>(user);
  if (stream == c->stream) c->closed = true;
  return 0;
}

int OnError(nghttp2_session*, int, const char* msg, size_t len, void* user) {
  static_cast<Call*>(user)->protocol_error.assign(msg, len);
  return 0;
}

ssize_t ReadAnswer(nghttp2_session* session, int32_t stream, uint8_t* buf, size_t length,
                   uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* c = static_cast<Call*>(source->ptr);
  size_t n = std::min(length, c->answer.size() - c->sent);
  std::memcpy(buf, c->answer.data() + c->sent, n);
  c->sent += n;
  if (c->sent == c->answer.size()) {
    // The stream ends with the trailers, not with the message.
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    std::vector<nghttp2_nv> nva = cni::NameValues(c->trailers);
    if (nghttp2_submit_trailer(session, stream, nva.data(), nva.size()) != 0) {
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return static_cast<ssize_t>(n);
}

// What the call asked for, or the status that refuses it.
absl::Status Validate(const Call& c, const UnaryHandlers& handlers, UnaryCall* call,
                      absl::string_view* message) {
  if (c.headers_too_large) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request headers over ", c.limits->max_header_bytes, " bytes"));
  }
  if (c.method != "POST") {
    return absl::InternalError(absl::StrCat("method \"", c.method, "\" is not POST"));
  }
  if (!absl::StartsWith(c.content_type, "application/grpc")) {
    return absl::InternalError(
        absl::StrCat("content-type \"", c.content_type, "\" is not application/grpc"));
  }
  if (!c.encoding.empty() && c.encoding != "identity") {
    return absl::UnimplementedError(
        absl::StrCat("grpc-encoding \"", c.encoding, "\" is not supported (only identity)"));
  }
  if (handlers.find(c.path) == handlers.end()) {
    return absl::UnimplementedError(absl::StrCat("unknown method ", c.path));
  }
  if (c.body_too_large) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request message larger than ", c.limits->max_request_bytes, " bytes"));
  }
  if (c.body.size() < kPrefix) {
    return absl::InternalError("request holds no message");
  }
  uint32_t len = cni::GrpcMessageLength(c.body.data());
  if (c.body[0] != 0)
    return absl::InternalError("request message is compressed without grpc-encoding");
  if (c.body.size() != kPrefix + size_t{len}) {
    return absl::InternalError(
        absl::StrCat("request is ", c.body.size(), " bytes for one message of ", len));
  }
  call->path = c.path;
  call->traceparent = c.traceparent;
  if (!c.timeout.empty()) {
    if (std::optional<absl::Duration> d = ParseGrpcTimeout(c.timeout)) {
      call->deadline = c.started + *d;
    }
  }
  *message = absl::string_view(c.body).substr(kPrefix);
  return absl::OkStatus();
}

// Queues the answer: the message and trailers, or trailers only.
int Answer(nghttp2_session* session, Call& c, const absl::Status& status) {
  std::vector<std::pair<std::string, std::string>> head = {{":status", "200"},
                                                           {"content-type", "application/grpc"}};
  c.trailers = {{"grpc-status", absl::StrCat(static_cast<int>(status.code()))}};
  if (!status.ok()) c.trailers.emplace_back("grpc-message", PercentEncode(status.message()));
  if (!status.ok()) head.insert(head.end(), c.trailers.begin(), c.trailers.end());
  std::vector<nghttp2_nv> nva = cni::NameValues(head);
  if (!status.ok()) {
    return nghttp2_submit_response(session, c.stream, nva.data(), nva.size(), nullptr);
  }
  nghttp2_data_provider provider;
  provider.source.ptr = &c;
  provider.read_callback = ReadAnswer;
  return nghttp2_submit_response(session, c.stream, nva.data(), nva.size(), &provider);
}

// After the answer: no more writes, and what the client still sends (a
// SETTINGS ACK, a WINDOW_UPDATE) is read until it closes, for at most a
// second. Closing at once would make those writes fail with EPIPE in the
// client, which may then report a lost connection instead of the answer
// waiting unread in its socket.
void Linger(int fd) {
  shutdown(fd, SHUT_WR);
  absl::Time until = absl::Now() + absl::Seconds(1);
  char sink[4096];
  while (cni::WaitFor(fd, POLLIN, until).ok()) {
    ssize_t n = read(fd, sink, sizeof(sink));
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return;
  }
}

absl::Status Serve(int fd, const UnaryHandlers& handlers, const UnaryServerLimits& limits) {
  if (absl::Status s = cni::SetNonBlocking(fd); !s.ok()) return s;
  Call c;
  c.limits = &limits;
  absl::StatusOr<cni::SessionPtr> made =
      cni::NewSession(/*server=*/true, &c, [](nghttp2_session_callbacks* cb) {
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, OnBeginHeaders);
        nghttp2_session_callbacks_set_on_header_callback(cb, OnHeader);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnData);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnFrame);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnStreamClose);
        nghttp2_session_callbacks_set_error_callback2(cb, OnError);
      });
  if (!made.ok()) return made.status();
  cni::SessionPtr session = *std::move(made);
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(limits.max_header_bytes)},
  };
  nghttp2_submit_settings(session.get(), NGHTTP2_FLAG_NONE, settings,
                          sizeof(settings) / sizeof(settings[0]));

  absl::Time deadline = absl::Now() + limits.io_timeout;
  bool answered = false;
  // Nothing is sent before the first read: a connection comes here with
  // its call's headers already sent (agent/socket_front.h), and a small
  // call then gets SETTINGS and its whole answer in one write.
  bool received = false;
  char buf[16 << 10];
  std::string scratch;
  for (;;) {
    if (c.request_ended && !answered) {
      UnaryCall call;
      absl::string_view message;
      absl::Status status = Validate(c, handlers, &call, &message);
      std::string response;
      if (status.ok()) status = handlers.at(call.path)(call, message, &response);
      if (status.ok()) c.answer = cni::GrpcMessage(response);
      if (int rv = Answer(session.get(), c, status); rv != 0) {
        return absl::InternalError(absl::StrCat("HTTP/2: ", nghttp2_strerror(rv)));
      }
      answered = true;
      // The handler's time is its own; writing the answer gets a new bound.
      deadline = absl::Now() + limits.io_timeout;
    }
    if (received) {
      if (absl::Status s = cni::FlushSession(fd, session.get(), &scratch, deadline, kPeerGone);
          !s.ok()) {
        return s;
      }
    }
    if (answered && c.closed) {
      nghttp2_submit_goaway(session.get(), NGHTTP2_FLAG_NONE, c.stream, NGHTTP2_NO_ERROR, nullptr,
                            0);
      (void)cni::FlushSession(fd, session.get(), &scratch, deadline, kPeerGone);
      Linger(fd);
      return absl::OkStatus();
    }
    if (c.closed) return absl::UnavailableError("the client reset the call");
    if (!nghttp2_session_want_read(session.get()) && !nghttp2_session_want_write(session.get())) {
      if (!c.protocol_error.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the client does not speak HTTP/2: ", c.protocol_error));
      }
      return absl::UnavailableError("the connection ended before a call");
    }
    if (absl::Status s = cni::WaitFor(fd, POLLIN, deadline); !s.ok()) return s;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("read: ", strerror(errno)));
    }
    if (n == 0) return absl::UnavailableError(kPeerGone);
    ssize_t used = nghttp2_session_mem_recv(session.get(), reinterpret_cast<uint8_t*>(buf), n);
    received = true;
    if (used < 0) {
      // nghttp2 has queued a GOAWAY naming the error: sent best effort.
      (void)cni::FlushSession(fd, session.get(), &scratch, absl::Now() + absl::Milliseconds(100),
                              kPeerGone);
      return absl::InvalidArgumentError(
          absl::StrCat("the client does not speak HTTP/2: ", nghttp2_strerror(used)));
    }
  }
}

}  // namespace

absl::Status ServeUnaryConnection(int fd, const UnaryHandlers& handlers,
                                  const UnaryServerLimits& limits) {
  absl::Status s = Serve(fd, handlers, limits);
  close(fd);
  return s;
}

std::optional<absl::Duration> ParseGrpcTimeout(absl::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  int64_t n = 0;
  for (char ch : value.substr(0, value.size() - 1)) {
    if (!absl::ascii_isdigit(ch)) return std::nullopt;
    n = n * 10 + (ch - '0');
  }
  switch (value.back()) {
    case 'H':
      return absl::Hours(n);
    case 'M':
      return absl::Minutes(n);
    case 'S':
      return absl::Seconds(n);
    case 'm':
      return absl::Milliseconds(n);
    case 'u':
      return absl::Microseconds(n);
    case 'n':
      return absl::Nanoseconds(n);
    default:
      return std::nullopt;
  }
}

std::string PercentEncode(absl::string_view message) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (char ch : message) {
    auto b = static_cast<unsigned char>(ch);
    if (b < 0x20 || b > 0x7E || b == '%') {
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 15]);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

}  // namespace fabric::agent
