// HTTP/2 and gRPC bytes built by hand, for the fuzz targets and tests of the
// plugin's client (cni/grpc_unary.h) and the agent's unary server
// (agent/unary_server.h): frames, HPACK header blocks, length-prefixed
// messages, and a reader of fuzz input.
#pragma once

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fabric::testing {

constexpr char kHttp2Preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Fuzz input read a byte or a run at a time; zeros once it is used up.
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ == end_; }
  uint8_t Byte() { return p_ == end_ ? 0 : *p_++; }
  std::string Bytes(size_t n) {
    n = std::min<size_t>(n, end_ - p_);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// One frame: the 9-byte header (24-bit length, type, flags, stream), then
// the payload.
inline void AppendFrame(std::string* out, uint8_t type, uint8_t flags, uint32_t stream,
                        const std::string& payload) {
  uint32_t len = static_cast<uint32_t>(payload.size());
  *out += std::string{static_cast<char>(len >> 16),    static_cast<char>(len >> 8),
                      static_cast<char>(len),          static_cast<char>(type),
                      static_cast<char>(flags),        static_cast<char>(stream >> 24),
                      static_cast<char>(stream >> 16), static_cast<char>(stream >> 8),
                      static_cast<char>(stream)};
  *out += payload;
}

// A header block, HPACK-encoded with `deflater` (its state carries over).
inline std::string EncodeHeaders(nghttp2_hd_deflater* deflater,
                                 std::vector<std::pair<std::string, std::string>> fields) {
  std::vector<nghttp2_nv> nva;
  for (auto& [name, value] : fields) {
    nva.push_back({reinterpret_cast<uint8_t*>(name.data()),
                   reinterpret_cast<uint8_t*>(value.data()), name.size(), value.size(),
                   NGHTTP2_NV_FLAG_NONE});
  }
  std::string block(nghttp2_hd_deflate_bound(deflater, nva.data(), nva.size()), '\0');
  ssize_t len = nghttp2_hd_deflate_hd(deflater, reinterpret_cast<uint8_t*>(block.data()),
                                      block.size(), nva.data(), nva.size());
  block.resize(len < 0 ? 0 : static_cast<size_t>(len));
  return block;
}

// A header block of fewer than `max_fields` fields drawn from `in`: each
// a name of `names` and either that table's value of `values` or up to 31
// bytes of the input, HPACK-encoded with `deflater`.
template <size_t N>
std::string FuzzHeaderBlock(nghttp2_hd_deflater* deflater, FuzzInput& in, int max_fields,
                            const char* const (&names)[N], const char* const (&values)[N]) {
  std::vector<std::pair<std::string, std::string>> fields;
  int n = in.Byte() % max_fields;
  for (int i = 0; i < n; ++i) {
    uint8_t b = in.Byte();
    fields.emplace_back(names[b % N], (b & 0x80) ? in.Bytes(in.Byte() % 32) : values[(b >> 3) % N]);
  }
  return EncodeHeaders(deflater, std::move(fields));
}

// A gRPC message: the compressed flag, a big-endian length, the bytes.
inline std::string GrpcFramed(const std::string& message, char flag = 0) {
  uint32_t n = static_cast<uint32_t>(message.size());
  return std::string{flag, static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                     static_cast<char>(n >> 8), static_cast<char>(n)} +
         message;
}

}  // namespace fabric::testing
