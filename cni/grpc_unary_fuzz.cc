// Fuzz target for what the plugin reads from the agent's socket: the input
// drives a sequence of HTTP/2 frames after the server's SETTINGS, which
// CallUnary reads from a socketpair. Header blocks are HPACK-encoded
// (nghttp2's deflater) from names gRPC answers with and values from the
// input, so the fuzzer reaches the gRPC layer (status, message, prefix)
// and not only nghttp2's frame checks. CallUnary must never crash or hang,
// an answer it accepts is within its bound, and its errors stay short.
#include <nghttp2/nghttp2.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "cni/grpc_unary.h"
#include "testing/http2_frames.h"

namespace {

constexpr size_t kMaxAnswer = 1024;

using fabric::testing::AppendFrame;
using Input = fabric::testing::FuzzInput;

std::string HeaderBlock(nghttp2_hd_deflater* deflater, Input& in) {
  static const char* const kNames[] = {":status",      "content-type",  "grpc-status",
                                       "grpc-message", "grpc-encoding", "x-other"};
  static const char* const kValues[] = {"200", "application/grpc", "0", "5", "14", "503"};
  return fabric::testing::FuzzHeaderBlock(deflater, in, 6, kNames, kValues);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  nghttp2_hd_deflater* deflater = nullptr;
  if (nghttp2_hd_deflate_new(&deflater, 4096) != 0) return 0;
  std::string bytes;
  AppendFrame(&bytes, NGHTTP2_SETTINGS, 0, 0, "");
  for (int frames = 0; frames < 16 && !in.empty(); ++frames) {
    uint8_t kind = in.Byte();
    uint8_t flags = in.Byte();
    uint32_t stream = kind & 0x80 ? in.Byte() : 1;  // our stream is 1
    switch (kind % 6) {
      case 0:  // HEADERS
        AppendFrame(&bytes, NGHTTP2_HEADERS, flags & (NGHTTP2_FLAG_END_STREAM | NGHTTP2_FLAG_END_HEADERS),
              stream, HeaderBlock(deflater, in));
        break;
      case 1: {  // DATA: a gRPC message (prefix from the input) or raw bytes
        std::string payload;
        if (flags & 0x40) {
          std::string body = in.Bytes(in.Byte());
          uint32_t len = flags & 0x20 ? in.Byte() : body.size();
          payload = std::string{static_cast<char>(flags & 0x02), static_cast<char>(len >> 24),
                                static_cast<char>(len >> 16), static_cast<char>(len >> 8),
                                static_cast<char>(len)} + body;
        } else {
          payload = in.Bytes(in.Byte());
        }
        AppendFrame(&bytes, NGHTTP2_DATA, flags & NGHTTP2_FLAG_END_STREAM, stream, payload);
        break;
      }
      case 2:  // RST_STREAM
        AppendFrame(&bytes, NGHTTP2_RST_STREAM, 0, stream, std::string(3, '\0') + in.Bytes(1));
        break;
      case 3:  // GOAWAY
        AppendFrame(&bytes, NGHTTP2_GOAWAY, 0, 0, std::string(3, '\0') + in.Bytes(5));
        break;
      case 4:  // PING, SETTINGS, WINDOW_UPDATE, or any type with raw payload
        AppendFrame(&bytes, in.Byte() % 12, flags, stream, in.Bytes(in.Byte() % 64));
        break;
      default:  // raw bytes
        bytes += in.Bytes(in.Byte() % 32);
    }
  }
  nghttp2_hd_deflate_del(deflater);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  // Fits the socket's buffer (bounded input); the server end stays open
  // for the request and ends its writing, so the client reads EOF.
  if (write(sv[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    __builtin_trap();
  }
  shutdown(sv[1], SHUT_WR);
  fabric::cni::UnaryCall call;
  call.path = "/fabric.nat.v1.AttachmentService/Attach";
  call.request = "request";
  call.deadline = absl::Now() + absl::Seconds(5);
  call.max_response_bytes = kMaxAnswer;
  absl::Time start = absl::Now();
  absl::StatusOr<std::string> r = fabric::cni::CallUnary(sv[0], call);
  close(sv[0]);
  close(sv[1]);
  // The peer ended: the answer comes at once, never at the deadline.
  if (absl::Now() - start > absl::Seconds(4)) __builtin_trap();
  if (r.ok() && r->size() > kMaxAnswer) __builtin_trap();
  if (!r.ok() && r.status().message().size() > 512) __builtin_trap();
  return 0;
}
