// Fixed-address SNAT from --forwards_file, end to end: a router's agent
// gives its LAN's traffic to the outside a fixed public address (the
// file's "snat" entries, out_interface from --wan_interface), follows the
// file, heals after `nft flush ruleset`, applies the file again after a
// restart, and lets a SNAT entry win over masquerade.
//
//   LAN host 192.168.77.10 --- lan0 192.168.77.1 [router: agent] wan0 203.0.113.1 --- outside 203.0.113.2
//                                                  (+ 203.0.113.5, .6 on wan0)
#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

using ::fabric::testing::AgentProcess;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::testing::HasSubstr;

class SnatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    dir_ = tmp_.path();
    ASSERT_OK_AND_ASSIGN(testing::RouterLayout l, testing::MakeRouterLayout());
    router_ = std::move(l.router);
    lan_ = std::move(l.lan);
    outside_ = std::move(l.outside);
    // The public addresses the router translates to (the outside reaches
    // them on the link).
    ASSERT_OK(router_->Exec("ip addr add 203.0.113.5/32 dev wan0 && "
                            "ip addr add 203.0.113.6/32 dev wan0"));
    ASSERT_OK(testing::Serve(*outside_, "tcp", 9999, "outside"));
    ASSERT_OK(testing::Serve(*outside_, "udp", 9999, "outside-udp"));
    file_ = dir_ + "/conf/forwards.json";
    ASSERT_OK(testing::Shell("mkdir -p " + dir_ + "/conf"));
  }

  void StartAgent() {
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                     "--lan_interfaces=lan0 --wan_interface=wan0 "
                                                     "--forwards_file=" + file_ +
                                                         " --metrics_address=127.0.0.1:19337"));
  }
  // As an editor saves: a new file renamed over the old one.
  void Write(const std::string& text) { ASSERT_OK(testing::WriteByRename(file_, text)); }
  // Waits (up to 3 s) for `text` in the agent's log.
  bool LogShows(const std::string& text) { return agent_->LogShows(text); }
  // What the outside server saw as the LAN host's address, waiting up to
  // 3 s for `want` (the agent heals and reloads asynchronously).
  std::string OutsideSees(const std::string& want, const std::string& proto = "tcp") {
    std::string seen;
    for (int i = 0; i < 30; ++i) {
      absl::StatusOr<std::string> a = testing::Ask(*lan_, proto, "203.0.113.2", 9999, 0.5);
      seen = a.ok() ? *a : std::string(a.status().message());
      if (seen == want) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return seen;
  }

  testing::ScopedTempDir tmp_{"snat"};
  std::string dir_, file_;
  std::unique_ptr<Netns> router_, lan_, outside_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(SnatTest, TheLanReachesTheOutsideWithTheFixedAddress) {
  // Without NAT the outside has no route back to the LAN.
  EXPECT_FALSE(testing::Ask(*lan_, "tcp", "203.0.113.2", 9999, 0.5).ok());
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.5"}]})");
  StartAgent();
  // In the first batch already, so the file finds nothing to add.
  ASSERT_TRUE(LogShows("(start): 0 forward(s): added 0, removed 0, kept 0; 1 SNAT rule(s): added 0"))
      << agent_->LogText();
  EXPECT_EQ(OutsideSees("outside 203.0.113.5\n"), "outside 203.0.113.5\n");
  EXPECT_EQ(OutsideSees("outside-udp 203.0.113.5\n", "udp"), "outside-udp 203.0.113.5\n");
  // out_interface came from --wan_interface.
  ASSERT_OK_AND_ASSIGN(std::string nft, router_->Exec("nft list chain inet fabric_nat postrouting"));
  EXPECT_THAT(nft, HasSubstr("oifname \"wan0\" ip saddr 192.168.77.0/24 ip daddr != "
                             "192.168.77.0/24"));
  EXPECT_THAT(nft, HasSubstr("snat ip to 203.0.113.5"));
  // Counted: the rule, and the connections it translated.
  ASSERT_OK_AND_ASSIGN(std::string metrics,
                       router_->Exec("curl -s http://127.0.0.1:19337/metrics"));
  EXPECT_THAT(metrics, HasSubstr("nat_rules{type=\"snat\"} 1\n"));
  EXPECT_THAT(metrics, ::testing::ContainsRegex("nat_connections_total\\{type=\"snat\"\\} [1-9]"));

  // `nft flush ruleset`: the agent lays the rule down again by itself.
  ASSERT_OK(router_->Exec("nft flush ruleset"));
  EXPECT_EQ(OutsideSees("outside 203.0.113.5\n"), "outside 203.0.113.5\n");

  // The file changes the address: new connections carry the new one.
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.6","out_interface":"wan0"}]})");
  ASSERT_TRUE(LogShows("1 SNAT rule(s): added 1, removed 1")) << agent_->LogText();
  EXPECT_EQ(OutsideSees("outside 203.0.113.6\n"), "outside 203.0.113.6\n");

  // An invalid entry is named and changes nothing.
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"127.0.0.1"}]})");
  ASSERT_TRUE(LogShows("snat[0] (\"192.168.77.0/24\"): to: 127.0.0.1 must be a unicast address"))
      << agent_->LogText();
  EXPECT_TRUE(LogShows("and 1 SNAT rule(s)"));
  EXPECT_EQ(OutsideSees("outside 203.0.113.6\n"), "outside 203.0.113.6\n");

  // A restart applies the file again.
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.6","out_interface":"wan0"}]})");
  ASSERT_TRUE(LogShows("1 SNAT rule(s): added 0, removed 0")) << agent_->LogText();
  // The kernel's own record of the restart: the rule is never taken out
  // (the first batch of the new agent already holds it).
  const std::string events = dir_ + "/nft-events";
  ASSERT_OK_AND_ASSIGN(pid_t monitor,
                       router_->Spawn("exec nft monitor rules > " + events + " 2>&1"));
  absl::SleepFor(absl::Milliseconds(200));
  agent_->Stop();
  StartAgent();
  ASSERT_TRUE(LogShows("(start): 0 forward(s): added 0, removed 0, kept 0; 1 SNAT rule(s): "
                       "added 0, removed 0"))
      << agent_->LogText();
  EXPECT_EQ(OutsideSees("outside 203.0.113.6\n"), "outside 203.0.113.6\n");
  ASSERT_OK_AND_ASSIGN(std::string seen, testing::Shell("cat " + events));
  EXPECT_THAT(seen, ::testing::Not(HasSubstr("snat ip to"))) << seen;
  // The monitor does see such a rule when one is laid (a control).
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.5","out_interface":"wan0"}]})");
  ASSERT_TRUE(LogShows("1 SNAT rule(s): added 1, removed 1")) << agent_->LogText();
  bool laid = false;
  for (int i = 0; i < 40 && !laid; ++i) {
    laid = testing::Shell("cat " + events).value_or("").find("snat ip to 203.0.113.5") !=
           std::string::npos;
    if (!laid) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(laid);
  kill(monitor, SIGTERM);

  // The entries removed: the LAN is not translated any more.
  Write(R"({"snat":[]})");
  ASSERT_TRUE(LogShows("0 SNAT rule(s): added 0, removed 1")) << agent_->LogText();
  EXPECT_FALSE(testing::Ask(*lan_, "tcp", "203.0.113.2", 9999, 0.5).ok());
}

TEST_F(SnatTest, OneHostsFixedAddressWinsOverTheNetworksTranslation) {
  // A second LAN host on the same network, translated by the /24 entry,
  // while the /32 entry gives 192.168.77.10 its own address.
  ASSERT_OK(lan_->Exec("ip addr add 192.168.77.11/24 dev eth0"));
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.5"},
                    {"source":"192.168.77.10/32","to":"203.0.113.6"}]})");
  StartAgent();
  EXPECT_EQ(OutsideSees("outside 203.0.113.6\n"), "outside 203.0.113.6\n");
  EXPECT_THAT(lan_->Exec(absl::StrCat("/usr/bin/python3 ", testing::NetTool(),
                                      " ask tcp 203.0.113.2 9999 --timeout 2 --source "
                                      "192.168.77.11")),
              IsOkAndHolds("outside 203.0.113.5\n"));
}

// Without --wan_interface the WAN follows the default route, and so do the
// SNAT entries that name no out_interface: the router's uplink fails over
// and the LAN leaves through the new one, still with its fixed address.
TEST_F(SnatTest, EntriesWithoutAnInterfaceFollowTheDefaultRoute) {
  ASSERT_OK(router_->Exec("ip route add default via 203.0.113.2 dev wan0"));
  Write(R"({"snat":[{"source":"192.168.77.0/24","to":"203.0.113.5"}]})");
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                   "--lan_interfaces=lan0 --forwards_file=" + file_));
  EXPECT_EQ(OutsideSees("outside 203.0.113.5\n"), "outside 203.0.113.5\n");
  EXPECT_THAT(router_->Exec("nft list chain inet fabric_nat postrouting"),
              IsOkAndHolds(HasSubstr("oifname \"wan0\" ip saddr 192.168.77.0/24")));
  // A second uplink to the same outside host; the default route moves.
  ASSERT_OK(testing::Link(*router_, "wan1", "198.51.100.1/24", *outside_, "eth1",
                          "198.51.100.2/24"));
  ASSERT_OK(router_->Exec("ip route del 203.0.113.0/24 dev wan0 && "
                          "ip route replace default via 198.51.100.2 dev wan1 && "
                          "ip route add 203.0.113.0/24 via 198.51.100.2 dev wan1"));
  ASSERT_OK(outside_->Exec("ip route add 203.0.113.5/32 dev eth1"));
  ASSERT_TRUE(LogShows("(the WAN interface is now wan1): 0 forward(s)")) << agent_->LogText();
  EXPECT_THAT(router_->Exec("nft list chain inet fabric_nat postrouting"),
              IsOkAndHolds(HasSubstr("oifname \"wan1\" ip saddr 192.168.77.0/24")));
  EXPECT_EQ(OutsideSees("outside 203.0.113.5\n"), "outside 203.0.113.5\n");
}

}  // namespace
}  // namespace fabric
