// Self-healing and start-up at scale, against a real fabric-agent process:
//  - time from `nft flush ruleset` until published ports forward again, with
//    1,000 and 10,000 mappings (a TCP connect through a mapped port, retried
//    until it is accepted);
//  - cold start to in sync with 10,000 mappings in the store.
//
//   bash tools/bench.sh   (or bazel run -c opt //tests/bench:heal_bench, as root)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>


#include "absl/strings/str_cat.h"
#include "nat/netlink/socket.h"
#include "agent/store.h"
#include "testing/cni_runtime.h"
#include "tests/bench/agent_harness.h"
#include "testing/netns.h"

namespace {

namespace v1 = ::fabric::nat::v1;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// One TCP connect to 192.0.2.1:port from the calling thread's namespace.
bool Connects(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "192.0.2.1", &a.sin_addr);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

absl::Status Prefill(const std::string& dir, int n) {
  auto store = fabric::agent::Store::Open(dir);
  if (!store.ok()) return store.status();
  fabric::agent::StoreWrite w;
  for (int i = 0; i < n; ++i) {
    v1::PortMapping m;
    m.set_id(absl::StrCat("m-", i + 1));
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id("bench");
    m.set_protocol(v1::PROTOCOL_TCP);
    m.set_host_port(20000 + i);
    m.set_target_ip("10.99.0.2");
    m.set_target_port(80);
    w.put_mappings.push_back(m);
  }
  w.next_mapping_id = n + 1;
  return (*store)->Commit(w);
}

}  // namespace

int main() {
  using fabric::testing::Netns;
  auto host = Netns::Create("hhost");
  auto outside = Netns::Create("hout");
  auto ctr = Netns::Create("hctr");
  if (!host.ok() || !outside.ok() || !ctr.ok()) {
    std::fprintf(stderr, "cannot create namespaces (root?)\n");
    return 1;
  }
  if (!fabric::testing::Link(**host, "wan0", "192.0.2.1/24", **outside, "eth0", "192.0.2.2/24").ok() ||
      !fabric::testing::Link(**host, "ctr0", "10.99.0.1/24", **ctr, "eth0", "10.99.0.2/24").ok() ||
      !(*ctr)->Exec("ip route add default via 10.99.0.1").ok() ||
      !(*host)->Exec("sysctl -qw net.ipv4.ip_forward=1").ok() ||
      !fabric::testing::Serve(**ctr, "tcp", 80, "ctr").ok()) {
    std::fprintf(stderr, "topology setup failed\n");
    return 1;
  }
  std::unique_ptr<fabric::nat::netlink::NetlinkSocket> flusher;
  {
    auto in_host = fabric::testing::ScopedNetns::Enter(**host);
    auto sock = fabric::nat::netlink::NetlinkSocket::Open();
    if (!in_host.ok() || !sock.ok()) return 1;
    flusher = std::move(*sock);
  }
  auto enter = fabric::testing::ScopedNetns::Enter(**outside);
  if (!enter.ok()) return 1;
  std::printf("Self-healing and start-up (fabric-agent process, nftables)\n");
  for (int n : {1000, 10000}) {
    char dir[] = "/tmp/fhb-XXXXXX";
    if (mkdtemp(dir) == nullptr) return 1;
    if (!Prefill(std::string(dir) + "/state", n).ok()) return 1;
    auto start = Clock::now();
    auto agent = fabric::testing::AgentProcess::Start(host->get(), dir);
    double cold = Ms(Clock::now() - start);
    if (!agent.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
      return 1;
    }
    int probe = 20000 + n - 1;
    if (!Connects(probe)) {
      std::fprintf(stderr, "mapping %d does not forward after start\n", probe);
      return 1;
    }
    std::printf("%-58s %8.1f ms\n",
                absl::StrCat("cold start to serving, kernel in sync, ", n, " mappings").c_str(),
                cold);
    std::vector<double> heals;
    for (int rep = 0; rep < 5; ++rep) {
      if (!fabric::bench::FlushRuleset(*flusher).ok()) return 1;
      auto flushed = Clock::now();
      int tries = 0;
      while (!Connects(probe)) {
        ++tries;
        if (Ms(Clock::now() - flushed) > 10000) {
          std::fprintf(stderr, "not healed after 10 s\n");
          return 1;
        }
      }
      heals.push_back(Ms(Clock::now() - flushed));
      // Every other mapping is back too (one transaction).
      for (int k = 20000; k < 20000 + n; k += n / 10) {
        if (!Connects(k)) {
          std::fprintf(stderr, "mapping %d not healed\n", k);
          return 1;
        }
      }
      usleep(100000);
    }
    std::sort(heals.begin(), heals.end());
    std::printf("%-58s %8.1f ms (min %.1f, max %.1f, 5 flushes)\n",
                absl::StrCat("nft flush ruleset -> forwarding again, ", n, " mappings").c_str(),
                heals[2], heals.front(), heals.back());
    agent->reset();
    (void)(*host)->Exec("nft flush ruleset");
    fabric::testing::Shell(absl::StrCat("rm -rf ", dir)).IgnoreError();
  }
  return 0;
}
