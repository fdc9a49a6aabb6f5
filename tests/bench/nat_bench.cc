// NAT core benchmarks: the port allocator, and the nftables backend in a
// network namespace of its own. Prints a table of figures.
//
//   bazel run //tests/bench:nat_bench            (as root)
//   bazel run //tests/bench:nat_bench -- --quick (smaller sizes)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nat/backend/iptables/iptables_backend.h"
#include "nat/backend/nftables/nftables_backend.h"
#include "nat/port_allocator.h"
#include "testing/netns.h"

namespace fabric::nat {
namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

DnatElement Element(int i) {
  DnatElement e;
  e.protocol = i % 2 ? Protocol::kUdp : Protocol::kTcp;
  e.port_lo = e.port_hi = static_cast<uint16_t>(1024 + i / 2);
  uint8_t target[4] = {10, static_cast<uint8_t>(100 + i / 65536),
                       static_cast<uint8_t>((i / 256) % 256),
                       static_cast<uint8_t>(1 + i % 250)};
  e.target_ip = IpAddress::FromBytes(Family::kIPv4, target);
  e.target_port = 80;
  return e;
}

void AllocatorBench(int ops) {
  PortAllocator alloc(32768, 60999);
  PortScope scope{Protocol::kTcp, Family::kIPv4, std::nullopt};
  // Keep the pool 90% full, then cycle allocate/release.
  std::vector<uint16_t> held;
  for (int i = 0; i < 25000; ++i) held.push_back(*alloc.Allocate(scope, 1, "x"));
  std::mt19937 rng(1);
  auto start = Clock::now();
  for (int i = 0; i < ops; ++i) {
    size_t k = rng() % held.size();
    alloc.Release(scope, held[k], 1);
    held[k] = *alloc.Allocate(scope, 1, "x");
  }
  double us = Micros(Clock::now() - start);
  std::printf("%-52s %12.0f ops/s  (%.3f us per allocate+release, pool 90%% full)\n",
              "allocator: allocate + release", ops / (us / 1e6), us / ops);
  start = Clock::now();
  for (int i = 0; i < ops; ++i) {
    uint16_t p = static_cast<uint16_t>(1024 + rng() % 30000);
    if (alloc.Reserve(scope, p, 1, "r").ok()) alloc.Release(scope, p, 1);
  }
  us = Micros(Clock::now() - start);
  std::printf("%-52s %12.0f ops/s\n", "allocator: explicit reserve + release",
              ops / (us / 1e6));
}

// Add/remove one mapping with N present, full resync, bulk add, read back.
int BackendBench(const char* label, Backend& backend, bool quick, bool big) {
  int reps = quick ? 20 : 200;
  for (int present : {0, 1000, 10000}) {
    if ((quick || !big) && present > 1000) continue;
    RuleSet base;
    for (int i = 0; i < present; ++i) base.dnat.insert(Element(i));
    if (!backend.Replace(base).ok()) return 1;
    std::vector<double> add, remove;
    int r_reps = present >= 1000 && !big ? std::min(reps, 20) : reps;
    for (int r = 0; r < r_reps; ++r) {
      Batch b;
      b.add.dnat = {Element(present + 1 + r)};
      auto t0 = Clock::now();
      if (!backend.Apply(b).ok()) return 1;
      add.push_back(Micros(Clock::now() - t0));
      std::swap(b.add, b.remove);
      t0 = Clock::now();
      if (!backend.Apply(b).ok()) return 1;
      remove.push_back(Micros(Clock::now() - t0));
    }
    std::printf("%-52s median %8.1f us  p99 %8.1f us\n",
                absl::StrCat(label, ": add one mapping, ", present, " present").c_str(),
                Median(add), Percentile(add, 0.99));
    std::printf("%-52s median %8.1f us  p99 %8.1f us\n",
                absl::StrCat(label, ": remove one mapping, ", present, " present").c_str(),
                Median(remove), Percentile(remove, 0.99));
  }
  int n = quick || !big ? 1000 : 10000;
  RuleSet full;
  for (int i = 0; i < n; ++i) full.dnat.insert(Element(i));
  std::vector<double> replace, read, apply_all;
  for (int r = 0; r < (quick ? 2 : 5); ++r) {
    if (!backend.DeleteTable().ok()) return 1;
    auto t0 = Clock::now();
    if (!backend.Replace(full).ok()) return 1;
    replace.push_back(Micros(Clock::now() - t0) / 1000);
    t0 = Clock::now();
    auto state = backend.Read();
    read.push_back(Micros(Clock::now() - t0) / 1000);
    if (!state.ok() || state->rules != full) {
      std::fprintf(stderr, "%s: read-back mismatch\n", label);
      return 1;
    }
    if (!backend.Replace(RuleSet{}).ok()) return 1;
    Batch b;
    b.add = full;
    t0 = Clock::now();
    if (!backend.Apply(b).ok()) return 1;
    apply_all.push_back(Micros(Clock::now() - t0) / 1000);
  }
  std::printf("%-52s median %8.1f ms\n",
              absl::StrCat(label, ": full resync (replace), ", n).c_str(), Median(replace));
  std::printf("%-52s median %8.1f ms\n",
              absl::StrCat(label, ": add ", n, " mappings in one batch").c_str(),
              Median(apply_all));
  std::printf("%-52s median %8.1f ms\n",
              absl::StrCat(label, ": read back and verify, ", n).c_str(), Median(read));
  return 0;
}

int KernelBench(bool quick) {
  auto ns = testing::Netns::Create("bench");
  if (!ns.ok()) {
    std::fprintf(stderr, "cannot create a network namespace (root?): %s\n",
                 std::string(ns.status().message()).c_str());
    return 1;
  }
  // libiptc works in the calling thread's namespace on every call: stay in.
  auto enter = testing::ScopedNetns::Enter(**ns);
  if (!enter.ok()) return 1;
  auto nft = NftablesBackend::Create();
  auto ipt = IptablesBackend::Create();
  if (!nft.ok() || !ipt.ok()) {
    std::fprintf(stderr, "cannot open the backends in the namespace\n");
    return 1;
  }
  if (int rc = BackendBench("nftables", **nft, quick, /*big=*/true); rc != 0) return rc;
  (void)(*nft)->DeleteTable();
  // libiptc rewrites the whole table per change: its cost grows with the
  // rules present (shown up to 1,000 here).
  return BackendBench("iptables", **ipt, quick, /*big=*/false);
}

}  // namespace
}  // namespace fabric::nat

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::printf("Fabric NAT core benchmarks%s\n", quick ? " (quick)" : "");
  fabric::nat::AllocatorBench(quick ? 100000 : 2000000);
  return fabric::nat::KernelBench(quick);
}
