// NAT-PMP map requests, closed loop (one outstanding request), 2,000
// distinct ports from one LAN host: fabric-agent against Debian's
// miniupnpd (NAT-PMP enabled) in the same namespace layout, in the same run.
// Prints requests per second, median and p99 latency, and the ratios.
//
//   LAN 192.168.77.10 --- lan0 192.168.77.1 [router] wan0 203.0.113.1 --- outside 203.0.113.2 (STUN)
//
// The layout and miniupnpd's needs: tests/bench/miniupnpd_env.h.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "tests/bench/miniupnpd_env.h"

namespace {

using fabric::bench::Layout;
using fabric::bench::Percentile;
using Clock = std::chrono::steady_clock;
constexpr int kPorts = 2000;

struct Result {
  int ok = 0, failed = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
};

// Runs in the LAN namespace (the calling thread's).
Result Run(int first_port) {
  Result r;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in gw{};
  gw.sin_family = AF_INET;
  gw.sin_port = htons(5351);
  inet_pton(AF_INET, "192.168.77.1", &gw.sin_addr);
  connect(fd, reinterpret_cast<sockaddr*>(&gw), sizeof(gw));
  auto start = Clock::now();
  for (int i = 0; i < kPorts; ++i) {
    uint16_t port = static_cast<uint16_t>(first_port + i);
    uint8_t req[12] = {0, 2, 0, 0, static_cast<uint8_t>(port >> 8), static_cast<uint8_t>(port),
                       static_cast<uint8_t>(port >> 8), static_cast<uint8_t>(port), 0, 0, 0x0e, 0x10};
    auto t0 = Clock::now();
    send(fd, req, sizeof(req), 0);
    uint8_t resp[64];
    bool got = false;
    for (;;) {
      ssize_t n = recv(fd, resp, sizeof(resp), 0);
      if (n < 0) break;
      if (n >= 16 && resp[1] == 130 && (resp[8] << 8 | resp[9]) == port) {
        got = (resp[2] << 8 | resp[3]) == 0;
        break;
      }
    }
    r.latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    (got ? r.ok : r.failed)++;
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  close(fd);
  return r;
}

void Print(const char* name, const Result& r) {
  std::printf("%-12s %8.0f req/s   median %7.3f ms   p99 %7.3f ms   (%d ok, %d failed)\n", name,
              r.ok / r.seconds, Percentile(r.latencies_ms, 0.5), Percentile(r.latencies_ms, 0.99), r.ok,
              r.failed);
}

}  // namespace

int main() {
  std::printf("NAT-PMP map requests, closed loop, %d distinct ports\n", kPorts);
  std::fflush(stdout);
  char dir[] = "/tmp/fpb-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  Result ours, theirs;
  {
    absl::StatusOr<Layout> l = fabric::bench::MakeLayout("203.0.113");
    if (!l.ok()) return 1;
    auto agent = fabric::testing::AgentProcess::Start(
        l->router.get(), std::string(dir) + "/agent",
        "--lan_interfaces=lan0 --wan_interface=wan0 --natpmp_max_per_client=100000 "
        "--natpmp_max_leases=100000 "
        "--natpmp_rate_limit=0");
    if (!agent.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
      return 1;
    }
    auto in_lan = fabric::testing::ScopedNetns::Enter(*l->lan);
    ours = Run(10000);
  }
  {
    absl::StatusOr<Layout> l = fabric::bench::MakeLayout("203.0.113");
    if (!l.ok()) return 1;
    const Layout& layout = *l;
    auto miniupnpd = fabric::bench::Miniupnpd::Start(
        *l, dir, "enable_natpmp=yes\nenable_upnp=no", [&layout] {
          return layout.lan
              ->Exec("/usr/bin/python3 " + fabric::testing::Runfile("testing/pmp.py") +
                     " 192.168.77.1 addr | grep -q result=0")
              .ok();
        });
    if (!miniupnpd.ok()) {
      std::fprintf(stderr, "miniupnpd: %s\n", std::string(miniupnpd.status().message()).c_str());
      return 1;
    }
    {
      auto in_lan = fabric::testing::ScopedNetns::Enter(*l->lan);
      theirs = Run(20000);
    }
    if (theirs.failed > 0) {
      std::fprintf(stderr, "miniupnpd refused %d requests; its log ends:\n%s\n", theirs.failed,
                   (*miniupnpd)->LogTail(5).c_str());
    }
  }
  Print("fabric-agent", ours);
  Print("miniupnpd", theirs);
  if (theirs.ok > 0 && ours.ok > 0) {
    std::printf("ratio        %8.1fx req/s   median %.1fx lower\n",
                (ours.ok / ours.seconds) / (theirs.ok / theirs.seconds),
                Percentile(theirs.latencies_ms, 0.5) / Percentile(ours.latencies_ms, 0.5));
  }
  fabric::testing::Shell(absl::StrCat("rm -rf ", dir)).IgnoreError();
  return 0;
}
