// NAT-PMP map requests, closed loop (one outstanding request), 2,000
// distinct ports from one LAN host: fabric-agent against Debian's
// miniupnpd (NAT-PMP enabled) in the same namespace layout, in the same run.
// Prints requests per second, median and p99 latency, and the ratios.
//
//   LAN 192.168.77.10 --- lan0 192.168.77.1 [router] wan0 203.0.113.1 --- outside 203.0.113.2 (STUN)
//
// miniupnpd needs two things here (see docs/ARCHITECTURE.md): a STUN server
// outside that reports the WAN address as not behind NAT (its reserved-range
// check otherwise refuses to forward), and table inet filter with its three
// chains, which Debian's nft_init.sh fails to create.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"

namespace {

using fabric::testing::Netns;
using Clock = std::chrono::steady_clock;
constexpr int kPorts = 2000;

struct Result {
  int ok = 0, failed = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
};

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

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

struct Layout {
  std::unique_ptr<Netns> router, lan, outside;
};

bool MakeLayout(Layout* l) {
  auto router = Netns::Create("brouter");
  auto lan = Netns::Create("blan");
  auto outside = Netns::Create("bout");
  if (!router.ok() || !lan.ok() || !outside.ok()) return false;
  l->router = std::move(*router);
  l->lan = std::move(*lan);
  l->outside = std::move(*outside);
  return fabric::testing::Link(*l->router, "lan0", "192.168.77.1/24", *l->lan, "eth0",
                               "192.168.77.10/24").ok() &&
         fabric::testing::Link(*l->router, "wan0", "203.0.113.1/24", *l->outside, "eth0",
                               "203.0.113.2/24").ok() &&
         l->lan->Exec("ip route add default via 192.168.77.1").ok() &&
         l->router->Exec("sysctl -qw net.ipv4.ip_forward=1").ok();
}

void Print(const char* name, const Result& r) {
  std::printf("%-12s %8.0f req/s   median %7.3f ms   p99 %7.3f ms   (%d ok, %d failed)\n", name,
              r.ok / r.seconds, Pct(r.latencies_ms, 0.5), Pct(r.latencies_ms, 0.99), r.ok,
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
    Layout l;
    if (!MakeLayout(&l)) return 1;
    auto agent = fabric::testing::AgentProcess::Start(
        l.router.get(), std::string(dir) + "/agent",
        "--lan_interfaces=lan0 --wan_interface=wan0 --natpmp_max_per_client=100000 "
        "--natpmp_max_leases=100000 "
        "--natpmp_rate_limit=0");
    if (!agent.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
      return 1;
    }
    auto in_lan = fabric::testing::ScopedNetns::Enter(*l.lan);
    ours = Run(10000);
  }
  {
    Layout l;
    if (!MakeLayout(&l)) return 1;
    std::string conf = std::string(dir) + "/miniupnpd.conf";
    std::ofstream(conf) << "ext_ifname=wan0\n"
                        << "listening_ip=lan0\nenable_natpmp=yes\nenable_upnp=no\n"
                        << "ext_perform_stun=yes\next_stun_host=203.0.113.2\next_stun_port=3478\n"
                        << "secure_mode=yes\nsystem_uptime=no\n"
                        << "lease_file=" << dir << "/miniupnpd.leases\n"
                        << "allow 1024-65535 192.168.77.0/24 1024-65535\n"
                        << "deny 0-65535 0.0.0.0/0 0-65535\n";
    if (!l.outside->Spawn(absl::StrCat("exec /usr/bin/python3 ",
                                       fabric::testing::Runfile("testing/stun.py"),
                                       " 203.0.113.2 3478")).ok() ||
        !l.router->Exec("nft add table inet filter && "
                        "nft add chain inet filter miniupnpd && "
                        "nft add chain inet filter prerouting_miniupnpd && "
                        "nft add chain inet filter postrouting_miniupnpd").ok() ||
        // No -d: its debug log lists every rule on every request.
        !l.router->Spawn(absl::StrCat("exec miniupnpd -f ", conf, " -P ", dir,
                                      "/miniupnpd.pid > ", dir, "/miniupnpd.log 2>&1")).ok()) {
      std::fprintf(stderr, "miniupnpd setup failed\n");
      return 1;
    }
    // Wait until it answers.
    bool up = false;
    for (int i = 0; i < 100 && !up; ++i) {
      up = l.lan->Exec("/usr/bin/python3 " + fabric::testing::Runfile("testing/pmp.py") +
                       " 192.168.77.1 addr | grep -q result=0").ok();
      if (!up) usleep(100000);
    }
    if (!up) {
      std::fprintf(stderr, "miniupnpd did not answer; its log:\n%s\n",
                   fabric::testing::Shell(absl::StrCat("cat ", dir, "/miniupnpd.log"))->c_str());
      return 1;
    }
    {
      auto in_lan = fabric::testing::ScopedNetns::Enter(*l.lan);
      theirs = Run(20000);
    }
    // It daemonized: stop it by its pid file.
    (void)fabric::testing::Shell(absl::StrCat("kill $(cat ", dir, "/miniupnpd.pid)"));
    if (theirs.failed > 0) {
      std::fprintf(stderr, "miniupnpd refused %d requests; its log ends:\n%s\n", theirs.failed,
                   fabric::testing::Shell(absl::StrCat("tail -5 ", dir, "/miniupnpd.log"))->c_str());
    }
  }
  Print("fabric-agent", ours);
  Print("miniupnpd", theirs);
  if (theirs.ok > 0 && ours.ok > 0) {
    std::printf("ratio        %8.1fx req/s   median %.1fx lower\n",
                (ours.ok / ours.seconds) / (theirs.ok / theirs.seconds),
                Pct(theirs.latencies_ms, 0.5) / Pct(ours.latencies_ms, 0.5));
  }
  fabric::testing::Shell(absl::StrCat("rm -rf ", dir)).IgnoreError();
  return 0;
}
