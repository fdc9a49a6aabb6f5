// libFuzzer target for the NAT-PMP and PCP parsers and response builders.
//   bazel test --config=fuzz //agent/natpmp:codec_fuzz_test   (clang, libFuzzer)
// Without --config=fuzz the same function runs over a bounded generated
// corpus (testing/fuzz_driver.cc).
#include <cstddef>
#include <cstdint>

#include "agent/natpmp/codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fabric::agent::natpmp;
  PmpRequest pmp;
  PmpParse p = ParsePmp(data, size, &pmp);
  if (p == PmpParse::kUnsupportedOpcode) (void)PmpUnsupportedOpcode(data, size);
  PcpRequest pcp;
  PcpParseResult r = ParsePcp(data, size, &pcp);
  if (r.kind != PcpParseResult::kIgnore) {
    std::vector<uint8_t> out = PcpResponse(data, size, r.error, 30, 1, 1234, {});
    if (out.size() < kPcpHeaderSize || out.size() > kPcpMaxSize) __builtin_trap();
  }
  return 0;
}
