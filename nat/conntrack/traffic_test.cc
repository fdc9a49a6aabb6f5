// Kernel test for TrafficAccounting: real TCP traffic through a DNAT rule
// (output hook, loopback) in a namespace of the test's own, with conntrack
// accounting on there. The open connection's bytes come from the dump; once
// `conntrack -D` ends it, its destroy event carries them into the ended
// totals. Traffic that no DNAT rule translated is not counted.
#include "nat/conntrack/traffic.h"

#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

class TrafficAccountingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel tests run as root";
    Netns::SweepStale();
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("traffic"));
    // The NAT table loads conntrack, whose sysctls then exist in here.
    ASSERT_OK(ns_->Exec(
        "nft 'add table ip t; add chain ip t out { type nat hook output priority -100; }; "
        "add rule ip t out ip daddr 127.0.0.1 tcp dport 8080 dnat to 127.0.0.1:9090' && "
        "sysctl -qw net.netfilter.nf_conntrack_acct=1"));
    // Answers each connection with the bytes it got.
    ASSERT_OK(testing::ServeCount(*ns_, 9090, "127.0.0.1"));
    ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*ns_));
    ASSERT_OK_AND_ASSIGN(accounting_, TrafficAccounting::Start());
  }

  void TearDown() override { accounting_.reset(); }

  const FlowKey kKey{Family::kIPv4, 6, 8080, Ip("127.0.0.1"), Ip("127.0.0.1"), 9090};
  std::unique_ptr<Netns> ns_;
  std::unique_ptr<TrafficAccounting> accounting_;
};

TEST_F(TrafficAccountingTest, OpenThenEndedConnectionsCarryTheirBytes) {
  ASSERT_OK_AND_ASSIGN(std::string answer, testing::SendBytes(*ns_, "127.0.0.1", 8080, 200000));
  EXPECT_EQ(answer, "200000\n");  // it went through the DNAT rule to 9090

  // Closed but still tracked (TIME_WAIT): counted from the dump.
  ASSERT_OK_AND_ASSIGN(TrafficTable live, accounting_->Read());
  ASSERT_EQ(live.count(kKey), 1u);
  EXPECT_EQ(live[kKey].open, 1u);
  EXPECT_EQ(live[kKey].ended, 0u);
  EXPECT_GE(live[kKey].bytes, 200000u);
  EXPECT_LT(live[kKey].bytes, 220000u);  // payload plus headers of ~30 packets
  EXPECT_GE(live[kKey].packets, 6u);

  // Ended: the destroy event carries the same counters.
  ASSERT_OK(ns_->Exec("conntrack -D -p tcp --orig-port-dst 8080 2>/dev/null"));
  for (int i = 0; i < 200 && accounting_->events() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(accounting_->events(), 1u);
  ASSERT_OK_AND_ASSIGN(TrafficTable ended, accounting_->Read());
  ASSERT_EQ(ended.count(kKey), 1u);
  EXPECT_EQ(ended[kKey].open, 0u);
  EXPECT_EQ(ended[kKey].ended, 1u);
  EXPECT_EQ(ended[kKey].bytes, live[kKey].bytes);
  EXPECT_EQ(accounting_->lost_events(), 0u);

  // A second connection adds to the first.
  ASSERT_OK_AND_ASSIGN(answer, testing::SendBytes(*ns_, "127.0.0.1", 8080, 1000));
  ASSERT_OK_AND_ASSIGN(TrafficTable both, accounting_->Read());
  EXPECT_EQ(both[kKey].open, 1u);
  EXPECT_EQ(both[kKey].ended, 1u);
  EXPECT_GT(both[kKey].bytes, ended[kKey].bytes + 1000);

  // Retain drops what is no longer wanted.
  accounting_->Retain([](const FlowKey&) { return false; });
  ASSERT_OK_AND_ASSIGN(TrafficTable after, accounting_->Read());
  EXPECT_EQ(after[kKey].ended, 0u);
  EXPECT_EQ(after[kKey].open, 1u);
}

TEST_F(TrafficAccountingTest, TrafficNoDnatRuleTranslatedIsNotCounted) {
  ASSERT_OK_AND_ASSIGN(std::string answer, testing::SendBytes(*ns_, "127.0.0.1", 9090, 5000));
  EXPECT_EQ(answer, "5000\n");
  ASSERT_OK_AND_ASSIGN(TrafficTable t, accounting_->Read());
  EXPECT_TRUE(t.empty());
  ASSERT_OK(ns_->Exec("conntrack -D -p tcp --orig-port-dst 9090 2>/dev/null"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(accounting_->events(), 0u);
}

}  // namespace
}  // namespace fabric::nat
