// Fuzz target for what the agent's unary server reads from a client: the
// input drives the client's bytes (the preface or not, then frames:
// HEADERS HPACK-encoded from gRPC's request header names with canned or
// input values, DATA holding a length-prefixed message or raw bytes,
// RST_STREAM, WINDOW_UPDATE, PING, SETTINGS, any type raw), which
// FirstCallPath classifies and ServeUnaryConnection serves from a
// socketpair. Neither may crash or hang; the server ends at its own bound.
#include <nghttp2/nghttp2.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "agent/socket_front.h"
#include "agent/unary_server.h"
#include "testing/http2_frames.h"

namespace {

using fabric::testing::AppendFrame;
using fabric::testing::FuzzInput;

std::string RequestHeaders(nghttp2_hd_deflater* deflater, FuzzInput& in) {
  static const char* const kNames[] = {":method",      ":path",         ":scheme", "content-type",
                                       "grpc-timeout", "grpc-encoding", "te",      "traceparent"};
  static const char* const kValues[] = {"POST", "/a/B",     "http",     "application/grpc",
                                        "100m", "identity", "trailers", "gzip"};
  return fabric::testing::FuzzHeaderBlock(deflater, in, 9, kNames, kValues);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  nghttp2_hd_deflater* deflater = nullptr;
  if (nghttp2_hd_deflate_new(&deflater, 4096) != 0) return 0;
  std::string bytes;
  if (in.Byte() % 8 != 0) bytes = fabric::testing::kHttp2Preface;
  AppendFrame(&bytes, NGHTTP2_SETTINGS, 0, 0, "");
  for (int frames = 0; frames < 16 && !in.empty(); ++frames) {
    uint8_t kind = in.Byte();
    uint8_t flags = in.Byte();
    uint32_t stream = kind & 0x80 ? in.Byte() : 1;
    switch (kind % 6) {
      case 0:
        AppendFrame(&bytes, NGHTTP2_HEADERS,
                    flags & (NGHTTP2_FLAG_END_STREAM | NGHTTP2_FLAG_END_HEADERS), stream,
                    RequestHeaders(deflater, in));
        break;
      case 1: {
        std::string payload = in.Bytes(in.Byte());
        if (flags & 0x40) payload = fabric::testing::GrpcFramed(payload, flags & 0x02);
        AppendFrame(&bytes, NGHTTP2_DATA, flags & NGHTTP2_FLAG_END_STREAM, stream, payload);
        break;
      }
      case 2:
        AppendFrame(&bytes, NGHTTP2_RST_STREAM, 0, stream, std::string(3, '\0') + in.Bytes(1));
        break;
      case 3:
        AppendFrame(&bytes, NGHTTP2_WINDOW_UPDATE, 0, stream, in.Bytes(4));
        break;
      case 4:
        AppendFrame(&bytes, in.Byte() % 12, flags, stream, in.Bytes(in.Byte() % 64));
        break;
      default:
        bytes += in.Bytes(in.Byte() % 32);
    }
  }
  nghttp2_hd_deflate_del(deflater);

  (void)fabric::agent::FirstCallPath(bytes);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  // Fits the socket's buffer (bounded input); the client ends its writing,
  // so the server reads EOF after it.
  if (write(sv[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    __builtin_trap();
  }
  shutdown(sv[1], SHUT_WR);
  fabric::agent::UnaryHandlers handlers;
  handlers["/a/B"] = [](const fabric::agent::UnaryCall&, absl::string_view request,
                        std::string* out) {
    *out = std::string(request);
    return absl::OkStatus();
  };
  fabric::agent::UnaryServerLimits limits;
  limits.max_request_bytes = 1024;
  limits.io_timeout = absl::Seconds(1);
  absl::Time start = absl::Now();
  absl::Status s = fabric::agent::ServeUnaryConnection(sv[0], handlers, limits);
  close(sv[1]);
  // The client ended: the server is done at once, never at its bound.
  if (absl::Now() - start > absl::Milliseconds(900)) __builtin_trap();
  if (s.message().size() > 512) __builtin_trap();
  return 0;
}
