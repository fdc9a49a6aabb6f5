// Kernel tests for NetfilterConntrackCleaner: entries made with Debian's
// `conntrack -I` in a network namespace of the test's own (conntrack is per
// namespace), forgotten by the cleaner from inside it, checked with
// `conntrack -L`: exactly the asked-for entries go, the others stay. Every
// case runs with kernel-side filtering and with the full-dump fallback.
#include "nat/conntrack/conntrack.h"

#include <unistd.h>

#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;
using ::fabric::testing::StatusIs;
using ::testing::UnorderedElementsAreArray;

using Dump = NetfilterConntrackCleaner::Dump;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

// One entry, as "proto src:sport>dst:dport" (what the checks compare).
struct Flow {
  std::string proto, src, dst;
  int sport = 0, dport = 0;
  std::string zone;  // "" or a zone number
  std::string Key() const {
    return absl::StrCat(proto, " ", src, ":", sport, ">", dst, ":", dport);
  }
};

class ConntrackCleanerTest : public ::testing::TestWithParam<Dump> {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel tests run as root";
    Netns::SweepStale();
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("ct"));
    NetfilterConntrackCleaner::Options options;
    options.dump = GetParam();
    options.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);
      log_.push_back(line);
    };
    cleaner_ = std::make_unique<NetfilterConntrackCleaner>(options);
  }

  void TearDown() override {
    if (GetParam() == Dump::kFiltered && cleaner_ != nullptr) {
      // This kernel (>= 5.8) filters: no fallback was taken.
      EXPECT_TRUE(cleaner_->filters_in_kernel());
      std::lock_guard<std::mutex> lock(log_mu_);
      EXPECT_TRUE(log_.empty()) << log_[0];
    }
    if (GetParam() == Dump::kFlush && cleaner_ != nullptr) {
      // This machine's kernel (6.18) filters deletes; one that does not must
      // have said so, and the checks above hold either way.
      std::lock_guard<std::mutex> lock(log_mu_);
      if (cleaner_->deletes_in_kernel()) {
        EXPECT_TRUE(log_.empty()) << log_[0];
      } else {
        ASSERT_FALSE(log_.empty());
        EXPECT_THAT(log_[0], ::testing::HasSubstr("refused a filtered delete"));
      }
    }
  }

  // What ForgetHostPorts returns for `n` entries: the count, or kUncounted
  // where the kernel deleted them itself (Dump::kFlush, a query its filter
  // selects exactly).
  void ExpectForgot(const absl::StatusOr<int>& r, int n, bool exact = true) {
    bool in_kernel = GetParam() == Dump::kFlush && exact && cleaner_->deletes_in_kernel();
    EXPECT_THAT(r, IsOkAndHolds(in_kernel ? ConntrackCleaner::kUncounted : n));
  }

  void Insert(const std::vector<Flow>& flows) {
    std::string script;
    for (const Flow& f : flows) {
      absl::StrAppend(&script, "conntrack -I -p ", f.proto, " -s ", f.src, " -d ", f.dst,
                      " --sport ", f.sport, " --dport ", f.dport, " -t 600");
      if (f.proto == "tcp") absl::StrAppend(&script, " --state ESTABLISHED");
      if (f.proto == "sctp") {
        absl::StrAppend(&script, " --state ESTABLISHED --orig-vtag 1 --reply-vtag 2");
      }
      if (!f.zone.empty()) absl::StrAppend(&script, " -w ", f.zone);
      absl::StrAppend(&script, " 2>/dev/null\n");
    }
    ASSERT_OK(ns_->Exec("set -e\n" + script));
    ASSERT_THAT(Listed(), ::testing::SizeIs(flows.size()));
  }

  // The namespace's entries, by Key().
  std::vector<std::string> Listed() {
    absl::StatusOr<std::string> out = ns_->Exec("conntrack -L 2>/dev/null");
    EXPECT_OK(out.status());
    std::vector<std::string> keys;
    if (!out.ok()) return keys;
    for (absl::string_view line : absl::StrSplit(*out, '\n', absl::SkipEmpty())) {
      Flow f;
      std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
      f.proto = words[0];
      for (const std::string& w : words) {
        auto take = [&](const char* key, auto set) {
          if (absl::StartsWith(w, key)) set(w.substr(std::strlen(key)));
        };
        // The first src/dst/sport/dport are the original direction's.
        take("src=", [&](std::string v) {
          if (f.src.empty()) f.src = v;
        });
        take("dst=", [&](std::string v) {
          if (f.dst.empty()) f.dst = v;
        });
        take("sport=", [&](std::string v) {
          if (f.sport == 0) f.sport = std::stoi(v);
        });
        take("dport=", [&](std::string v) {
          if (f.dport == 0) f.dport = std::stoi(v);
        });
      }
      keys.push_back(f.Key());
    }
    return keys;
  }

  static std::vector<std::string> Keys(const std::vector<Flow>& flows) {
    std::vector<std::string> keys;
    for (const Flow& f : flows) keys.push_back(f.Key());
    return keys;
  }

  absl::StatusOr<int> Forget(Family family, Protocol protocol, std::optional<IpAddress> host_ip,
                             uint16_t lo, uint16_t hi) {
    absl::StatusOr<std::unique_ptr<ScopedNetns>> enter = ScopedNetns::Enter(*ns_);
    if (!enter.ok()) return enter.status();
    return cleaner_->ForgetHostPorts(family, protocol, host_ip, lo, hi);
  }

  std::unique_ptr<Netns> ns_;
  std::unique_ptr<NetfilterConntrackCleaner> cleaner_;
  std::mutex log_mu_;
  std::vector<std::string> log_;  // guarded by log_mu_
};

INSTANTIATE_TEST_SUITE_P(Dumps, ConntrackCleanerTest,
                         ::testing::Values(Dump::kFlush, Dump::kFiltered, Dump::kFull),
                         [](const ::testing::TestParamInfo<Dump>& info) {
                           return info.param == Dump::kFlush      ? "FilteredDelete"
                                  : info.param == Dump::kFiltered ? "Filtered"
                                                                  : "FullDump";
                         });

// Flows of one port around which the cases are built.
const Flow kUdpA1{"udp", "198.51.100.7", "192.0.2.1", 40001, 5353, ""};
const Flow kUdpA2{"udp", "198.51.100.8", "192.0.2.1", 40002, 5353, ""};
const Flow kUdpOtherHost{"udp", "198.51.100.7", "192.0.2.2", 40003, 5353, ""};
const Flow kUdpZoned{"udp", "198.51.100.9", "192.0.2.1", 40004, 5353, "5"};
const Flow kTcpSamePort{"tcp", "198.51.100.7", "192.0.2.1", 40005, 5353, ""};
const Flow kSctpSamePort{"sctp", "198.51.100.7", "192.0.2.1", 40006, 5353, ""};
const Flow kUdpNextPort{"udp", "198.51.100.7", "192.0.2.1", 40007, 5354, ""};
const Flow kUdpPrevPort{"udp", "198.51.100.7", "192.0.2.1", 40008, 5352, ""};
const Flow kUdpSrcPortIsOurs{"udp", "192.0.2.1", "198.51.100.7", 5353, 40009, ""};
const Flow kUdp6{"udp", "2001:db8::7", "2001:db8::1", 40010, 5353, ""};
const Flow kUdp6OtherHost{"udp", "2001:db8::7", "2001:db8::2", 40011, 5353, ""};

TEST_P(ConntrackCleanerTest, OnePortOnAnyAddress) {
  Insert({kUdpA1, kUdpA2, kUdpOtherHost, kUdpZoned, kTcpSamePort, kSctpSamePort, kUdpNextPort,
          kUdpPrevPort, kUdpSrcPortIsOurs, kUdp6});
  ExpectForgot(Forget(Family::kIPv4, Protocol::kUdp, std::nullopt, 5353, 5353), 4);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys({kTcpSamePort, kSctpSamePort, kUdpNextPort,
                                                        kUdpPrevPort, kUdpSrcPortIsOurs, kUdp6})));
  // Nothing is left to forget.
  ExpectForgot(Forget(Family::kIPv4, Protocol::kUdp, std::nullopt, 5353, 5353), 0);
}

TEST_P(ConntrackCleanerTest, OnePortOnOneIpv4Address) {
  Insert({kUdpA1, kUdpA2, kUdpOtherHost, kUdpZoned, kTcpSamePort, kUdpNextPort});
  ExpectForgot(Forget(Family::kIPv4, Protocol::kUdp, Ip("192.0.2.1"), 5353, 5353), 3);
  EXPECT_THAT(Listed(),
              UnorderedElementsAreArray(Keys({kUdpOtherHost, kTcpSamePort, kUdpNextPort})));
}

TEST_P(ConntrackCleanerTest, Ipv6AnyAndOneAddress) {
  Insert({kUdp6,
          kUdp6OtherHost,
          kUdpA1,
          {"udp", "2001:db8::7", "2001:db8::1", 40012, 5354, ""},
          {"tcp", "2001:db8::7", "2001:db8::1", 40013, 5353, ""}});
  // An IPv6 host address: dumped and matched here in every mode.
  ExpectForgot(Forget(Family::kIPv6, Protocol::kUdp, Ip("2001:db8::1"), 5353, 5353), 1,
               /*exact=*/false);
  EXPECT_THAT(Listed(), ::testing::Not(::testing::Contains(kUdp6.Key())));
  EXPECT_THAT(Listed(), ::testing::Contains(kUdp6OtherHost.Key()));
  ExpectForgot(Forget(Family::kIPv6, Protocol::kUdp, std::nullopt, 5353, 5353), 1);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(
                            Keys({kUdpA1,
                                  {"udp", "2001:db8::7", "2001:db8::1", 40012, 5354, ""},
                                  {"tcp", "2001:db8::7", "2001:db8::1", 40013, 5353, ""}})));
}

TEST_P(ConntrackCleanerTest, SmallRange) {
  std::vector<Flow> inside, outside;
  for (int port = 6000; port <= 6003; ++port) {
    inside.push_back({"udp", "198.51.100.7", "192.0.2.1", 41000 + port - 6000, port, ""});
  }
  outside = {{"udp", "198.51.100.7", "192.0.2.1", 42000, 5999, ""},
             {"udp", "198.51.100.7", "192.0.2.1", 42001, 6004, ""},
             {"tcp", "198.51.100.7", "192.0.2.1", 42002, 6001, ""}};
  std::vector<Flow> all = inside;
  all.insert(all.end(), outside.begin(), outside.end());
  Insert(all);
  ExpectForgot(Forget(Family::kIPv4, Protocol::kUdp, std::nullopt, 6000, 6003), 4);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys(outside)));
}

TEST_P(ConntrackCleanerTest, WideRangeTakesOneProtocolDump) {
  // Wider than kMaxPortDumps: one dump filtered by protocol and address.
  const int lo = 7000, hi = 7000 + 3 * NetfilterConntrackCleaner::kMaxPortDumps;
  std::vector<Flow> inside = {{"udp", "198.51.100.7", "192.0.2.1", 43000, lo, ""},
                              {"udp", "198.51.100.7", "192.0.2.1", 43001, (lo + hi) / 2, ""},
                              {"udp", "198.51.100.7", "192.0.2.1", 43002, hi, ""}};
  std::vector<Flow> outside = {{"udp", "198.51.100.7", "192.0.2.1", 43003, lo - 1, ""},
                               {"udp", "198.51.100.7", "192.0.2.1", 43004, hi + 1, ""},
                               {"udp", "198.51.100.7", "192.0.2.2", 43005, lo, ""},
                               {"tcp", "198.51.100.7", "192.0.2.1", 43006, lo, ""}};
  std::vector<Flow> all = inside;
  all.insert(all.end(), outside.begin(), outside.end());
  Insert(all);
  ExpectForgot(Forget(Family::kIPv4, Protocol::kUdp, Ip("192.0.2.1"), lo, hi), 3,
               /*exact=*/false);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys(outside)));
}

TEST_P(ConntrackCleanerTest, TcpAskedLeavesUdp) {
  Insert({kUdpA1, kTcpSamePort, kSctpSamePort});
  ExpectForgot(Forget(Family::kIPv4, Protocol::kTcp, std::nullopt, 5353, 5353), 1);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys({kUdpA1, kSctpSamePort})));
}

TEST_P(ConntrackCleanerTest, SctpPortsAreMatchedHere) {
  // The kernel filters SCTP by protocol only; ports are matched in user space.
  const Flow other{"sctp", "198.51.100.7", "192.0.2.1", 40020, 5354, ""};
  Insert({kSctpSamePort, other, kUdpA1});
  ExpectForgot(Forget(Family::kIPv4, Protocol::kSctp, std::nullopt, 5353, 5353), 1,
               /*exact=*/false);
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys({other, kUdpA1})));
}

TEST_P(ConntrackCleanerTest, ConcurrentCalls) {
  // Four threads, each on its own ports, at once.
  std::vector<Flow> flows;
  for (int t = 0; t < 4; ++t) {
    for (int i = 0; i < 3; ++i) {
      flows.push_back({"udp", "198.51.100.7", "192.0.2.1", 44000 + t * 10 + i, 8000 + t, ""});
    }
  }
  flows.push_back(kUdpA1);
  Insert(flows);
  std::vector<absl::StatusOr<int>> results(4, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      results[t] = Forget(Family::kIPv4, Protocol::kUdp, std::nullopt, 8000 + t, 8000 + t);
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    SCOPED_TRACE(absl::StrCat("thread ", t));
    ExpectForgot(results[t], 3);
  }
  EXPECT_THAT(Listed(), UnorderedElementsAreArray(Keys({kUdpA1})));
}

TEST_P(ConntrackCleanerTest, BadArguments) {
  EXPECT_THAT(Forget(Family::kIPv4, Protocol::kUdp, std::nullopt, 10, 9),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Forget(Family::kIPv4, Protocol::kUdp, Ip("2001:db8::1"), 10, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fabric::nat
