// Conntrack cleanup benchmark: ForgetHostPorts for one UDP port (10 matching
// entries each time) with 0, 10k and 200k unrelated entries present, in a
// network namespace of its own. Three ways: the kernel-filtered dumps (what
// the agent does), the full-dump fallback, and the libnetfilter_conntrack
// full dump the cleaner used before (nfct_query NFCT_Q_DUMP, filtered in
// user space). Prints figures; not a test.
//
//   bazel run -c opt //tests/bench:conntrack_bench            (as root)
//   bazel run -c opt //tests/bench:conntrack_bench -- --quick (0 and 10k)
#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nat/conntrack/conntrack.h"
#include "testing/netns.h"

namespace fabric::nat {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint16_t kPort = 5353;
constexpr int kMatching = 10;

double Millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Creates UDP entries fast: IPCTNL_MSG_CT_NEW messages, many per send, no
// acks asked (the kernel answers only errors, counted at the end).
class Inserter {
 public:
  Inserter() {
    socket_ = mnl_socket_open(NETLINK_NETFILTER);
    if (socket_ == nullptr || mnl_socket_bind(socket_, 0, MNL_SOCKET_AUTOPID) < 0) {
      std::perror("conntrack_bench: netlink socket");
      std::exit(1);
    }
    buf_.resize(1 << 16);
  }
  ~Inserter() { mnl_socket_close(socket_); }

  // UDP src:sport -> 192.0.2.1:dport (host order values).
  void Add(uint32_t src, uint16_t sport, uint16_t dport) {
    if (used_ + 256 > buf_.size()) Flush();
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf_.data() + used_);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
    nlh->nlmsg_seq = ++seq_;
    auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = AF_INET;
    nfg->version = NFNETLINK_V0;
    const uint32_t dst = 0xc0000201;  // 192.0.2.1
    PutTuple(nlh, CTA_TUPLE_ORIG, src, dst, sport, dport);
    PutTuple(nlh, CTA_TUPLE_REPLY, dst, src, dport, sport);
    mnl_attr_put_u32(nlh, CTA_TIMEOUT, htonl(600));
    used_ += nlh->nlmsg_len;
  }

  // Sends what is queued; returns how many errors the kernel reported so far.
  int Flush() {
    if (used_ > 0 && mnl_socket_sendto(socket_, buf_.data(), used_) < 0) {
      std::perror("conntrack_bench: send");
      std::exit(1);
    }
    used_ = 0;
    // Drain errors without waiting.
    std::vector<char> rx(1 << 16);
    for (;;) {
      ssize_t n = recv(mnl_socket_get_fd(socket_), rx.data(), rx.size(), MSG_DONTWAIT);
      if (n <= 0) break;
      int len = static_cast<int>(n);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(rx.data()); mnl_nlmsg_ok(h, len);
           h = mnl_nlmsg_next(h, &len)) {
        if (h->nlmsg_type == NLMSG_ERROR &&
            static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error != 0) {
          ++errors_;
        }
      }
    }
    return errors_;
  }

 private:
  static void PutTuple(nlmsghdr* nlh, int type, uint32_t src, uint32_t dst, uint16_t sport,
                       uint16_t dport) {
    nlattr* t = mnl_attr_nest_start(nlh, type);
    nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    mnl_attr_put_u32(nlh, CTA_IP_V4_SRC, htonl(src));
    mnl_attr_put_u32(nlh, CTA_IP_V4_DST, htonl(dst));
    mnl_attr_nest_end(nlh, ip);
    nlattr* p = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_UDP);
    mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(sport));
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(dport));
    mnl_attr_nest_end(nlh, p);
    mnl_attr_nest_end(nlh, t);
  }

  mnl_socket* socket_;
  std::vector<char> buf_;
  size_t used_ = 0;
  uint32_t seq_ = 0;
  int errors_ = 0;
};

// The cleaner as it was before kernel-side filtering (libnetfilter_conntrack:
// dump everything, clone the matches, destroy each).
struct LegacyMatch {
  uint16_t port;
  std::vector<nf_conntrack*> found;
};

int LegacyCollect(enum nf_conntrack_msg_type, struct nf_conntrack* ct, void* data) {
  auto* m = static_cast<LegacyMatch*>(data);
  if (nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO) == AF_INET &&
      nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) == IPPROTO_UDP &&
      ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST)) == m->port) {
    m->found.push_back(nfct_clone(ct));
  }
  return NFCT_CB_CONTINUE;
}

int LegacyForget(uint16_t port) {
  nfct_handle* h = nfct_open(CONNTRACK, 0);
  if (h == nullptr) return -1;
  LegacyMatch m{port, {}};
  nfct_callback_register(h, NFCT_T_ALL, LegacyCollect, &m);
  uint32_t family = AF_INET;
  nfct_query(h, NFCT_Q_DUMP, &family);
  nfct_callback_unregister(h);
  int deleted = 0;
  for (nf_conntrack* ct : m.found) {
    if (nfct_query(h, NFCT_Q_DESTROY, ct) == 0) ++deleted;
    nfct_destroy(ct);
  }
  nfct_close(h);
  return deleted;
}

// Median time of `forget` over `runs`; before each run kMatching entries are
// made on ports [kPort, kPort + span) and `forget` must delete them all. A
// kernel-side delete does not count them: then `left` (untimed) must find
// none left.
double Time(Inserter& inserter, int runs, int span, const std::function<int()>& forget,
            const std::function<int()>& left = nullptr) {
  std::vector<double> ms;
  static uint16_t sport = 1;
  for (int r = 0; r < runs; ++r) {
    for (int i = 0; i < kMatching; ++i) {
      inserter.Add(0xc6336400 + 1, sport++, static_cast<uint16_t>(kPort + i % span));
    }
    inserter.Flush();
    auto start = Clock::now();
    int deleted = forget();
    ms.push_back(Millis(Clock::now() - start));
    if (deleted == ConntrackCleaner::kUncounted && left) {
      int remaining = left();
      deleted = remaining == 0 ? kMatching : kMatching - remaining;
    }
    if (deleted != kMatching) {
      std::fprintf(stderr, "conntrack_bench: deleted %d, want %d\n", deleted, kMatching);
      std::exit(1);
    }
  }
  return Median(ms);
}

std::string Buckets() {
  std::FILE* f = std::fopen("/proc/sys/net/netfilter/nf_conntrack_buckets", "r");
  if (f == nullptr) return "?";
  char line[32] = {};
  if (std::fgets(line, sizeof(line), f) == nullptr) line[0] = 0;
  std::fclose(f);
  std::string s = line;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

int Main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  testing::Netns::SweepStale();
  auto ns = testing::Netns::Create("ctbench");
  if (!ns.ok()) {
    std::fprintf(stderr, "conntrack_bench: %s\n", ns.status().ToString().c_str());
    return 1;
  }
  auto enter = testing::ScopedNetns::Enter(**ns);
  if (!enter.ok()) {
    std::fprintf(stderr, "conntrack_bench: %s\n", enter.status().ToString().c_str());
    return 1;
  }
  NetfilterConntrackCleaner deletes;  // filtered deletes in the kernel
  NetfilterConntrackCleaner::Options dump_options;
  dump_options.dump = NetfilterConntrackCleaner::Dump::kFiltered;
  NetfilterConntrackCleaner filtered(dump_options);
  NetfilterConntrackCleaner::Options full_options;
  full_options.dump = NetfilterConntrackCleaner::Dump::kFull;
  NetfilterConntrackCleaner full(full_options);
  auto forget = [](NetfilterConntrackCleaner& c, int span) {
    return [&c, span] {
      absl::StatusOr<int> n = c.ForgetHostPorts(Family::kIPv4, Protocol::kUdp, std::nullopt, kPort,
                                                static_cast<uint16_t>(kPort + span - 1));
      return n.ok() ? *n : -2;
    };
  };

  std::printf("conntrack cleanup: ForgetHostPorts(udp) deleting %d entries, median ms\n",
              kMatching);
  std::printf(
      "  delete: kernel-filtered deletes, one per port (1 and %d ports; the default);\n"
      "  filtered: per-port kernel-filtered dumps (1 and %d ports), one protocol-filtered\n"
      "  dump (64 ports, also the default's way); full dump: the fallback; before: the\n"
      "  libnetfilter_conntrack full dump this cleaner used first\n",
      NetfilterConntrackCleaner::kMaxPortDumps, NetfilterConntrackCleaner::kMaxPortDumps);
  const int few_ports = NetfilterConntrackCleaner::kMaxPortDumps;
  std::printf("%-18s %10s %10s %10s %10s %10s %10s %10s\n", "unrelated entries", "delete 1",
              absl::StrCat("delete ", few_ports).c_str(), "dump 1",
              absl::StrCat("dump ", few_ports).c_str(),
              "dump 64", "full dump", "before");
  Inserter inserter;
  int present = 0;
  std::vector<int> sizes = {0, 10000, 200000};
  if (quick) sizes = {0, 10000};
  for (int size : sizes) {
    // Unrelated: UDP to 192.0.2.1 on ports 6000-25999, from many sources.
    auto start = Clock::now();
    for (; present < size; ++present) {
      inserter.Add(0x0a000000 + present, static_cast<uint16_t>(1024 + present % 50000),
                   static_cast<uint16_t>(6000 + present % 20000));
    }
    int errors = inserter.Flush();
    double insert_ms = Millis(Clock::now() - start);
    if (errors > 0) {
      std::fprintf(stderr, "conntrack_bench: %d inserts failed\n", errors);
      return 1;
    }
    int runs = size >= 100000 ? 5 : 15;
    auto left = [&](int span) {
      return [&filtered, span] {
        absl::StatusOr<int> n = filtered.ForgetHostPorts(
            Family::kIPv4, Protocol::kUdp, std::nullopt, kPort, static_cast<uint16_t>(kPort + span - 1));
        return n.ok() ? *n : kMatching;
      };
    };
    double del_one = Time(inserter, runs * 3, 1, forget(deletes, 1), left(1));
    double del_few = Time(inserter, runs, NetfilterConntrackCleaner::kMaxPortDumps,
                          forget(deletes, NetfilterConntrackCleaner::kMaxPortDumps),
                          left(NetfilterConntrackCleaner::kMaxPortDumps));
    double one = Time(inserter, runs * 3, 1, forget(filtered, 1));
    double few = Time(inserter, runs, NetfilterConntrackCleaner::kMaxPortDumps,
                      forget(filtered, NetfilterConntrackCleaner::kMaxPortDumps));
    double wide = Time(inserter, runs, 64, forget(filtered, 64));
    double all = Time(inserter, runs, 1, forget(full, 1));
    double before = Time(inserter, runs, 1, [] { return LegacyForget(kPort); });
    std::printf("%-18s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f   (%d inserted in %.0f ms)\n",
                absl::StrCat(size).c_str(), del_one, del_few, one, few, wide, all, before, size,
                insert_ms);
  }
  std::printf(
      "(every dump walks the kernel's whole conntrack hash, %s buckets here, whatever it "
      "returns)\n",
      Buckets().c_str());
  return 0;
}

}  // namespace
}  // namespace fabric::nat

int main(int argc, char** argv) { return fabric::nat::Main(argc, argv); }
