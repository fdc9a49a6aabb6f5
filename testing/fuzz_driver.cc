// A stand-in for libFuzzer in ordinary builds: feeds LLVMFuzzerTestOneInput
// a bounded, seeded corpus (random buffers of every small length, and
// random byte flips of structured seeds), so fuzz targets also run as plain
// tests. `bazel test --config=fuzz` uses real libFuzzer instead.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main() {
  std::mt19937 rng(6886);
  std::vector<std::vector<uint8_t>> seeds;
  for (uint8_t version : {0, 1, 2, 3}) {
    for (uint8_t op : {0, 1, 2, 3, 127, 128, 129}) {
      for (size_t len : {2u, 4u, 12u, 16u, 24u, 60u, 64u, 80u, 1100u}) {
        std::vector<uint8_t> s(len, 0);
        s[0] = version;
        s[1] = op;
        seeds.push_back(s);
      }
    }
  }
  size_t runs = 0;
  for (size_t len = 0; len <= 128; ++len) {
    for (int i = 0; i < 200; ++i, ++runs) {
      std::vector<uint8_t> buf(len);
      for (auto& b : buf) b = rng();
      if (len > 0 && i % 2) buf[0] = i % 4;
      LLVMFuzzerTestOneInput(buf.data(), buf.size());
    }
  }
  for (const auto& seed : seeds) {
    for (int i = 0; i < 300; ++i, ++runs) {
      std::vector<uint8_t> buf = seed;
      for (int flips = 1 + rng() % 8; flips > 0 && !buf.empty(); --flips) {
        buf[rng() % buf.size()] = rng();
      }
      // Options-shaped tails.
      if (i % 3 == 0) {
        for (int k = 0; k < 4; ++k) buf.push_back(rng() % 4 ? rng() % 4 : rng());
      }
      LLVMFuzzerTestOneInput(buf.data(), buf.size());
    }
  }
  std::printf("ran %zu inputs\n", runs);
  return 0;
}
