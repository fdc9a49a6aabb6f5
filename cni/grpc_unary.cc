#include "cni/grpc_unary.h"

#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "cni/http2_io.h"

namespace fabric::cni {

namespace {

constexpr size_t kPrefix = kGrpcPrefix;
// All response headers and trailers together, names and values.
constexpr size_t kMaxHeaderBytes = 16 << 10;

// gRPC's mapping of an HTTP status that is not 200 to a code
// (doc/http-grpc-status-mapping.md in the grpc sources).
absl::StatusCode CodeOfHttpStatus(int http) {
  switch (http) {
    case 400: return absl::StatusCode::kInternal;
    case 401: return absl::StatusCode::kUnauthenticated;
    case 403: return absl::StatusCode::kPermissionDenied;
    case 404: return absl::StatusCode::kUnimplemented;
    case 429: case 502: case 503: case 504: return absl::StatusCode::kUnavailable;
    default: return absl::StatusCode::kUnknown;
  }
}

// And of an HTTP/2 stream error that came without a grpc-status
// (doc/PROTOCOL-HTTP2.md, "Errors").
absl::StatusCode CodeOfStreamError(uint32_t error) {
  switch (error) {
    case NGHTTP2_REFUSED_STREAM: return absl::StatusCode::kUnavailable;
    case NGHTTP2_CANCEL: return absl::StatusCode::kCancelled;
    case NGHTTP2_ENHANCE_YOUR_CALM: return absl::StatusCode::kResourceExhausted;
    case NGHTTP2_INADEQUATE_SECURITY: return absl::StatusCode::kPermissionDenied;
    default: return absl::StatusCode::kInternal;
  }
}

// One call's state, shared with nghttp2's callbacks.
struct Exchange {
  size_t max_response_bytes = 0;
  std::string body;  // prefix + request, then sent from `sent`
  size_t sent = 0;
  int32_t stream = -1;

  std::map<std::string, std::string> headers;  // response headers and trailers
  size_t header_bytes = 0;
  std::string response;  // the DATA frames, prefix included
  bool closed = false;   // our stream ended
  uint32_t stream_error = 0;
  std::optional<absl::Status> failure;  // set by a callback: the call is over
  std::string protocol_error;            // nghttp2's word on what the peer sent
};

ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                 nghttp2_data_source* source, void*) {
  auto* x = static_cast<Exchange*>(source->ptr);
  size_t n = std::min(length, x->body.size() - x->sent);
  std::memcpy(buf, x->body.data() + x->sent, n);
  x->sent += n;
  if (x->sent == x->body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* user) {
  auto* x = static_cast<Exchange*>(user);
  if (frame->hd.stream_id != x->stream) return 0;
  x->header_bytes += namelen + valuelen;
  if (x->header_bytes > kMaxHeaderBytes) {
    x->failure = absl::ResourceExhaustedError(absl::StrCat(
        "the agent's answer has more than ", kMaxHeaderBytes, " bytes of headers"));
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  x->headers[std::string(reinterpret_cast<const char*>(name), namelen)] =
      std::string(reinterpret_cast<const char*>(value), valuelen);
  return 0;
}

int OnData(nghttp2_session*, uint8_t, int32_t stream, const uint8_t* data, size_t len,
           void* user) {
  auto* x = static_cast<Exchange*>(user);
  if (stream != x->stream) return 0;
  if (x->response.size() + len > x->max_response_bytes + kPrefix) {
    x->failure = absl::ResourceExhaustedError(absl::StrCat(
        "the agent's answer is longer than ", x->max_response_bytes, " bytes"));
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  x->response.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int OnStreamClose(nghttp2_session*, int32_t stream, uint32_t error, void* user) {
  auto* x = static_cast<Exchange*>(user);
  if (stream != x->stream) return 0;
  x->closed = true;
  x->stream_error = error;
  return 0;
}

int OnError(nghttp2_session*, int, const char* msg, size_t len, void* user) {
  static_cast<Exchange*>(user)->protocol_error.assign(msg, len);
  return 0;
}

// A stream the agent reset before its grpc-status.
absl::Status ResetError(uint32_t error) {
  return absl::Status(CodeOfStreamError(error),
                      absl::StrCat("the agent reset the call (HTTP/2 error ",
                                   nghttp2_http2_strerror(error), ")"));
}

// The call's outcome from what the stream carried.
absl::StatusOr<std::string> Outcome(Exchange& x) {
  auto header = [&](const char* name) -> const std::string* {
    auto it = x.headers.find(name);
    return it == x.headers.end() ? nullptr : &it->second;
  };
  const std::string* http = header(":status");
  int http_status = 0;
  if (http == nullptr || !absl::SimpleAtoi(*http, &http_status)) {
    if (x.stream_error != 0) return ResetError(x.stream_error);
    return absl::InternalError("the agent's answer has no HTTP status");
  }
  if (http_status != 200) {
    return absl::Status(CodeOfHttpStatus(http_status),
                        absl::StrCat("the agent answered HTTP status ", http_status));
  }
  const std::string* type = header("content-type");
  if (type == nullptr || !absl::StartsWith(*type, "application/grpc")) {
    return absl::UnknownError(absl::StrCat("the agent's answer is not gRPC (content-type \"",
                                           type == nullptr ? "" : *type, "\")"));
  }
  const std::string* grpc_status = header("grpc-status");
  int code = 0;
  if (grpc_status == nullptr) {
    if (x.stream_error != 0) return ResetError(x.stream_error);
    return absl::UnknownError("the agent's answer ended without a grpc-status");
  }
  if (!absl::SimpleAtoi(*grpc_status, &code) || code < 0 || code > 16) {
    return absl::UnknownError(
        absl::StrCat("the agent's answer has grpc-status \"", *grpc_status, "\""));
  }
  if (code != 0) {
    const std::string* message = header("grpc-message");
    return absl::Status(static_cast<absl::StatusCode>(code),
                        message == nullptr ? "" : PercentDecode(*message));
  }
  // Exactly one uncompressed message.
  if (x.response.size() < kPrefix) {
    return absl::InternalError("the agent's answer holds no message");
  }
  uint32_t len = GrpcMessageLength(x.response.data());
  if (x.response[0] != 0) {
    return absl::InternalError("the agent's answer is compressed, which this client did not ask for");
  }
  if (x.response.size() != kPrefix + len) {
    return absl::InternalError(absl::StrCat("the agent's answer is ", x.response.size(),
                                            " bytes for a message of ", len));
  }
  return x.response.substr(kPrefix);
}

// Reads what the peer sent before it closed; true when our stream ended in
// it.
bool DrainAfterClose(int fd, nghttp2_session* session, Exchange* x) {
  char buf[16 << 10];
  while (!x->closed) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (nghttp2_session_mem_recv(session, reinterpret_cast<uint8_t*>(buf), n) < 0 || x->failure) {
      break;
    }
  }
  return x->closed;
}

}  // namespace

std::string GrpcTimeout(absl::Duration remaining) {
  if (remaining <= absl::ZeroDuration()) return "0n";
  // The finest unit in which the value has at most 8 digits, rounded up.
  const std::pair<absl::Duration, char> units[] = {
      {absl::Nanoseconds(1), 'n'}, {absl::Microseconds(1), 'u'}, {absl::Milliseconds(1), 'm'},
      {absl::Seconds(1), 'S'},     {absl::Minutes(1), 'M'},      {absl::Hours(1), 'H'}};
  for (const auto& [unit, letter] : units) {
    absl::Duration rest;
    int64_t n = absl::IDivDuration(remaining + unit - absl::Nanoseconds(1), unit, &rest);
    if (n <= 99999999) return absl::StrCat(n, std::string(1, letter));
  }
  return "99999999H";
}

std::string PercentDecode(absl::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

absl::StatusOr<std::string> CallUnary(int fd, const UnaryCall& call) {
  if (call.request.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError("request too long for one gRPC message");
  }
  if (absl::Status s = SetNonBlocking(fd); !s.ok()) return s;

  Exchange x;
  x.max_response_bytes = call.max_response_bytes;
  x.body = GrpcMessage(call.request);

  absl::StatusOr<SessionPtr> made =
      NewSession(/*server=*/false, &x, [](nghttp2_session_callbacks* cb) {
        nghttp2_session_callbacks_set_on_header_callback(cb, OnHeader);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnData);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnStreamClose);
        nghttp2_session_callbacks_set_error_callback2(cb, OnError);
      });
  if (!made.ok()) return made.status();
  SessionPtr session = *std::move(made);

  // No pushes; a window that takes the whole bounded answer at once.
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
       static_cast<uint32_t>(std::min<size_t>(call.max_response_bytes + kPrefix, (1u << 31) - 1))},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(kMaxHeaderBytes)},
  };
  nghttp2_submit_settings(session.get(), NGHTTP2_FLAG_NONE, settings,
                          sizeof(settings) / sizeof(settings[0]));
  nghttp2_session_set_local_window_size(session.get(), NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(settings[1].value));

  std::vector<std::pair<std::string, std::string>> fields = {
      {":method", "POST"},          {":scheme", "http"},
      {":path", call.path},         {":authority", "fabric-agent"},
      {"te", "trailers"},           {"content-type", "application/grpc"},
      {"user-agent", "fabric-nat"},
  };
  if (call.deadline != absl::InfiniteFuture()) {
    fields.emplace_back("grpc-timeout", GrpcTimeout(call.deadline - absl::Now()));
  }
  for (const auto& kv : call.metadata) fields.push_back(kv);
  std::vector<nghttp2_nv> nva = NameValues(fields);
  nghttp2_data_provider provider;
  provider.source.ptr = &x;
  provider.read_callback = ReadBody;
  x.stream = nghttp2_submit_request(session.get(), nullptr, nva.data(), nva.size(), &provider,
                                    nullptr);
  if (x.stream < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot send the call: ", nghttp2_strerror(x.stream)));
  }

  char buf[16 << 10];
  std::string pending;
  while (!x.closed) {
    if (absl::Status s = FlushSession(fd, session.get(), &pending, call.deadline,
                                      "the agent closed the connection before answering");
        !s.ok()) {
      // A server that closed after answering fails our last writes (a
      // SETTINGS ACK): its answer may still wait unread in the socket.
      if (!absl::IsUnavailable(s) || !DrainAfterClose(fd, session.get(), &x)) return s;
      break;
    }
    if (!nghttp2_session_want_read(session.get()) && !nghttp2_session_want_write(session.get())) {
      if (!x.protocol_error.empty()) {
        return absl::InternalError(
            absl::StrCat("the agent does not answer in HTTP/2: ", x.protocol_error));
      }
      return absl::UnavailableError("the agent ended the connection before answering");
    }
    if (absl::Status s = WaitFor(fd, POLLIN, call.deadline); !s.ok()) return s;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("read: ", strerror(errno)));
    }
    if (n == 0) {
      return absl::UnavailableError("the agent closed the connection before answering");
    }
    ssize_t used = nghttp2_session_mem_recv(session.get(), reinterpret_cast<uint8_t*>(buf), n);
    if (x.failure) return *x.failure;
    if (used < 0) {
      return absl::InternalError(
          absl::StrCat("the agent does not answer in HTTP/2: ", nghttp2_strerror(used)));
    }
    // Once our stream has closed (inside mem_recv) nothing more is sent:
    // the connection ends with the process.
  }
  return Outcome(x);
}

}  // namespace fabric::cni
