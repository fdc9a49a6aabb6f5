// libFuzzer target for the client-side reply parsers (codec.h): PCP MAP and
// ANNOUNCE replies, NAT-PMP address and map replies.
//   bazel test --config=fuzz //agent/upstream:codec_fuzz_test   (clang, libFuzzer)
// Without --config=fuzz the same function runs over a bounded generated
// corpus (testing/fuzz_driver.cc).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "agent/upstream/codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fabric::agent::upstream;
  Nonce nonce{};
  PcpReply pcp;
  ParsePcpMapReply(data, size, nonce, Proto::kTcp, 8080, &pcp);
  // Expect what the input itself says, so the checks past the nonce run too.
  if (size >= kPcpMapSize) {
    std::memcpy(nonce.data(), data + 24, 12);
    Proto proto = data[36] == 17 ? Proto::kUdp : Proto::kTcp;
    uint16_t port = static_cast<uint16_t>(data[40] << 8 | data[41]);
    if (ParsePcpMapReply(data, size, nonce, proto, port, &pcp) == ReplyCheck::kOk &&
        pcp.result == 0 && pcp.lifetime != 0 && pcp.external_port == 0) {
      __builtin_trap();  // a grant without a port must never pass
    }
  }
  ParsePcpAnnounceReply(data, size, &pcp);
  PmpReply pmp;
  ParsePmpAddressReply(data, size, &pmp);
  for (bool deleting : {false, true}) {
    uint16_t port = size >= 10 ? static_cast<uint16_t>(data[8] << 8 | data[9]) : 0;
    Proto proto = size >= 2 && data[1] == 129 ? Proto::kUdp : Proto::kTcp;
    if (ParsePmpMapReply(data, size, proto, port, deleting, &pmp) == ReplyCheck::kOk &&
        pmp.result == 0 && !deleting && pmp.external_port == 0) {
      __builtin_trap();
    }
  }
  return 0;
}
