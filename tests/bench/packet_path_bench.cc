// What the agent's table costs a new connection on the packet path, beside
// a table that holds nothing but one DNAT map: TCP connect() + close loops
// from an "outside" namespace to a DNAT'ed port on the "host", reaching a
// listener in a "container" (testing/backend_topology.h; every namespace is
// made here and removed at the end, and no packet leaves them).
//
//   (a) table inet one_map, made with `nft -f`: one map, one rule
//       `dnat ip to meta l4proto . th dport map @dnat4_any` in prerouting;
//   (a') table inet one_map_fib: the same rule behind `fib daddr type local`,
//       the check that keeps an any-address mapping from catching traffic
//       that only passes through the host;
//   (b) table inet fabric_nat, made by the real NftablesBackend.
//
// All hold the same N mappings (1, 1,000, 30,000); one is awake at a time,
// the others dormant, and they take turns round by round in a rotating
// order so that drift on a noisy machine falls on all alike. Every
// connection is timed on its own; the figures are the median and first
// quartile of each table's connections, which leave out those that another
// process got in the way of. Prints figures, asserts nothing.
//
//   bash tools/bench.sh   (or bazel run -c opt //tests/bench:packet_path_bench,
//                          as root; --quick for fewer rounds)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <libnftnl/common.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include "absl/strings/str_cat.h"
#include "nat/backend/nftables/nftables_backend.h"
#include "nat/netlink/socket.h"
#include "testing/backend_topology.h"
#include "testing/netns.h"

namespace fabric::nat {
namespace {

using Clock = std::chrono::steady_clock;
using testing::Netns;
using testing::ScopedNetns;

constexpr uint16_t kPort = 8080;  // the mapping every connection goes through

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * (v.size() - 1))];
}
double Median(std::vector<double> v) { return Quantile(std::move(v), 0.5); }

// Keeps the calling thread on the last CPU: client, listener and the
// softirq work of their packets then share one cache, and a/b differences
// are not drowned by migrations.
void PinToLastCpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1), &set);
  sched_setaffinity(0, sizeof(set), &set);
}

// N mappings: tcp 8080 -> 10.99.0.2:80 (the container) and N - 1 more on
// other ports to addresses nothing answers on.
RuleSet Mappings(int n) {
  RuleSet rules;
  rules.dnat.insert(testing::Dnat(Protocol::kTcp, std::nullopt, kPort, "10.99.0.2", 80));
  for (int i = 0; rules.dnat.size() < static_cast<size_t>(n); ++i) {
    uint16_t port = static_cast<uint16_t>(10000 + i / 2);
    std::string target = absl::StrCat("10.100.", (i / 250) % 250, ".", 1 + i % 250);
    rules.dnat.insert(testing::Dnat(i % 2 ? Protocol::kUdp : Protocol::kTcp,
                                    std::nullopt, port, target.c_str(), 80));
  }
  return rules;
}

constexpr const char* kTables[] = {"one_map", "one_map_fib", "fabric_nat"};
constexpr int kTableCount = 3;

// A one-map table (`name`, with `prefix` before its dnat), as `nft -f`
// input, dormant until woken.
std::string OneMapTable(const char* name, const char* prefix, const RuleSet& rules) {
  std::string out = absl::StrCat(
      "table inet ", name, " {\n  flags dormant\n"
      "  map dnat4_any {\n"
      "    type inet_proto . inet_service : ipv4_addr . inet_service\n"
      "    elements = {\n");
  for (const DnatElement& e : rules.dnat) {
    absl::StrAppend(&out, "      ", ProtocolName(e.protocol), " . ", e.port_lo,
                    " : ", e.target_ip.ToString(), " . ", e.target_port, ",\n");
  }
  absl::StrAppend(&out,
                  "    }\n  }\n"
                  "  chain prerouting {\n"
                  "    type nat hook prerouting priority dstnat; policy accept;\n"
                  "    ", prefix, "dnat ip to meta l4proto . th dport map @dnat4_any\n"
                  "  }\n}\n");
  return out;
}

// Accepts and closes connections on port 80 in `ns` until stopped.
class Listener {
 public:
  explicit Listener(const Netns& ns) {
    thread_ = std::thread([this, &ns] {
      auto enter = ScopedNetns::Enter(ns);
      if (!enter.ok()) {
        ready_ = -1;
        return;
      }
      PinToLastCpu();
      fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(80);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
          listen(fd_, 4096) != 0) {
        ready_ = -1;
        return;
      }
      ready_ = 1;
      while (!stop_) {
        int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) close(c);
      }
    });
    while (ready_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~Listener() {
    stop_ = true;
    if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);  // wakes accept
    thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ready_ == 1; }

 private:
  std::thread thread_;
  std::atomic<int> ready_{0};
  std::atomic<bool> stop_{false};
  int fd_ = -1;
};

// `count` connect() + close() to 192.0.2.1:8080 from the calling thread's
// namespace, each timed on its own (microseconds, appended to `us`); false
// if one failed. The close resets the connection (SO_LINGER 0): no
// TIME_WAIT, so ports never run out. Timing each one lets the quantiles
// leave out those that another process or an interrupt got in the way of.
bool Connect(int count, std::vector<double>* us) {
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(kPort);
  inet_pton(AF_INET, "192.0.2.1", &to.sin_addr);
  for (int i = 0; i < count; ++i) {
    auto t0 = Clock::now();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0;
    close(fd);
    if (!ok) return false;
    if (us != nullptr) {
      us->push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  }
  return true;
}

// Wakes kTables[awake] and puts the others to sleep, in one transaction (in
// process: an `nft` run per round would cost more than the round).
absl::Status Activate(netlink::NetlinkSocket& sock, int awake) {
  std::vector<uint8_t> batch(4096);
  char* buf = reinterpret_cast<char*>(batch.data());
  uint32_t seq = sock.ReserveSeq(kTableCount + 2);
  size_t off = 0;
  nlmsghdr* nlh = nftnl_batch_begin(buf, seq++);
  off += NLMSG_ALIGN(nlh->nlmsg_len);
  // Sleepers first: two tables are never awake together.
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < kTableCount; ++i) {
      if ((i == awake) != (pass == 1)) continue;
      nlh = nftnl_nlmsg_build_hdr(buf + off, NFT_MSG_NEWTABLE, NFPROTO_INET, 0, seq++);
      nftnl_table* t = nftnl_table_alloc();
      nftnl_table_set_str(t, NFTNL_TABLE_NAME, kTables[i]);
      nftnl_table_set_u32(t, NFTNL_TABLE_FLAGS, i == awake ? 0 : NFT_TABLE_F_DORMANT);
      nftnl_table_nlmsg_build_payload(nlh, t);
      nftnl_table_free(t);
      off += NLMSG_ALIGN(nlh->nlmsg_len);
    }
  }
  nlh = nftnl_batch_end(buf + off, seq++);
  off += NLMSG_ALIGN(nlh->nlmsg_len);
  batch.resize(off);
  auto r = sock.SendBatch(batch);
  if (!r.ok()) return r.status();
  if (!r->errors.empty()) {
    return absl::InternalError(absl::StrCat("switching tables: ",
                                            std::strerror(r->errors.front().error)));
  }
  return absl::OkStatus();
}

int Run(bool quick) {
  auto topology = testing::MakeBackendTopology();
  if (!topology.ok()) {
    std::fprintf(stderr, "cannot make the namespaces (root?): %s\n",
                 std::string(topology.status().message()).c_str());
    return 1;
  }
  Netns& host = *topology->host;
  std::unique_ptr<NftablesBackend> backend;
  std::unique_ptr<netlink::NetlinkSocket> toggle;
  {
    auto enter = ScopedNetns::Enter(host);
    if (!enter.ok()) return 1;
    auto created = NftablesBackend::Create();
    auto sock = netlink::NetlinkSocket::Open();
    if (!created.ok() || !sock.ok()) return 1;
    backend = std::move(*created);
    toggle = std::move(*sock);
  }
  Listener listener(*topology->container);
  if (!listener.ok()) {
    std::fprintf(stderr, "cannot listen in the container namespace\n");
    return 1;
  }
  auto in_outside = ScopedNetns::Enter(*topology->outside);
  if (!in_outside.ok()) return 1;
  PinToLastCpu();
  testing::ScopedTempDir dir("ppbench");

  const int rounds = quick ? 100 : 1000;
  const int block = quick ? 50 : 100;
  std::printf("New-connection cost through a DNAT'ed port: TCP socket + connect + "
              "close, us per connection.\n%d rounds of %d connections through "
              "each table, in turns; each connection timed: median (first quartile)\n",
              rounds, block);
  std::printf("%-9s %17s %17s %17s %15s %15s\n", "mappings", "(a) one map",
              "(a') one map+fib", "(b) fabric_nat", "b - a", "b - a'");
  for (int n : {1, 1000, 30000}) {
    RuleSet rules = Mappings(n);
    std::string file = dir.path() + "/one_map.nft";
    std::ofstream(file) << OneMapTable("one_map", "", rules)
                        << OneMapTable("one_map_fib", "fib daddr type local ", rules);
    (void)host.Exec("nft delete table inet one_map 2>/dev/null; "
                    "nft delete table inet one_map_fib 2>/dev/null");
    if (auto s = host.Exec("nft -f " + file); !s.ok()) {
      std::fprintf(stderr, "nft -f: %s\n", std::string(s.status().message()).c_str());
      return 1;
    }
    if (absl::Status s = backend->Replace(rules); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::vector<double> us[kTableCount];
    for (int r = -1; r < rounds; ++r) {  // round -1 checks and warms up
      for (int k = 0; k < kTableCount; ++k) {
        int table = (k + (r < 0 ? 0 : r)) % kTableCount;
        if (absl::Status s = Activate(*toggle, table); !s.ok()) {
          std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
          return 1;
        }
        if (r < 0) {
          // Only this table is awake.
          auto dormant = host.Exec("nft list tables | wc -l; nft list ruleset | grep -c 'flags dormant'");
          if (!dormant.ok() || *dormant != absl::StrCat(kTableCount, "\n", kTableCount - 1, "\n")) {
            std::fprintf(stderr, "the tables did not switch: %s\n",
                         dormant.ok() ? dormant->c_str() : "nft failed");
            return 1;
          }
        }
        // The first few after a switch are not timed.
        if (!Connect(5, nullptr) ||
            !Connect(r < 0 ? 200 : block, r < 0 ? nullptr : &us[table])) {
          std::fprintf(stderr, "a connection through %s failed (%d mappings)\n",
                       kTables[table], n);
          return 1;
        }
      }
    }
    double med[kTableCount], q1[kTableCount];
    for (int i = 0; i < kTableCount; ++i) {
      med[i] = Median(us[i]);
      q1[i] = Quantile(us[i], 0.25);
    }
    std::printf("%-9d %8.2f (%6.2f) %8.2f (%6.2f) %8.2f (%6.2f) %+6.2f (%+5.2f) %+6.2f (%+5.2f)\n",
                n, med[0], q1[0], med[1], q1[1], med[2], q1[2], med[2] - med[0],
                q1[2] - q1[0], med[2] - med[1], q1[2] - q1[1]);
    std::fflush(stdout);
  }
  (void)host.Exec("nft delete table inet one_map; nft delete table inet one_map_fib");
  (void)backend->DeleteTable();
  return 0;
}

}  // namespace
}  // namespace fabric::nat

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  return fabric::nat::Run(quick);
}
