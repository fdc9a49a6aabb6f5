// NAT-PMP and PCP end to end: fabric-agent in a router namespace, LAN hosts
// asking with Debian's natpmpc (and testing/pmp.py for exact packets), real
// TCP from an outside namespace through the mappings they get.
//
//   LAN host 192.168.77.10 --- lan0 192.168.77.1 [router: agent] wan0 203.0.113.1 --- outside 203.0.113.2
#include <unistd.h>

#include <cstring>
#include <regex>
#include <string>

#include "absl/strings/numbers.h"
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
using ::testing::Not;

// The value of "key=" in a pmp.py line.
std::string Field(const std::string& line, const std::string& key) {
  std::smatch m;
  std::regex re("(^| )" + key + "=([^ \\n]*)");
  return std::regex_search(line, m, re) ? m[2].str() : "";
}

class NatPmpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);

    dir_ = tmp_.path();
    ASSERT_FALSE(dir_.empty());
    ASSERT_OK_AND_ASSIGN(testing::RouterLayout l, testing::MakeRouterLayout());
    router_ = std::move(l.router);
    lan_ = std::move(l.lan);
    outside_ = std::move(l.outside);
    StartAgent();
  }
  void TearDown() override {
    agent_.reset();
  }

  void StartAgent(const std::string& extra = "--natpmp_max_per_client=3") {
    ASSERT_OK_AND_ASSIGN(
        agent_, AgentProcess::Start(router_.get(), dir_,
                                    "--lan_interfaces=lan0 --wan_interface=wan0 " + extra));
  }

  absl::StatusOr<std::string> Pmp(const Netns& from, const std::string& args) {
    absl::StatusOr<testing::CommandResult> r = testing::RunCommand(
        absl::StrCat("ip netns exec ", from.name(), " /usr/bin/python3 ",
                     testing::Runfile("testing/pmp.py"), " ", args));
    if (!r.ok()) return r.status();
    return r->out;
  }
  absl::StatusOr<std::string> Natpmpc(const std::string& args) {
    return lan_->Exec("natpmpc -g 192.168.77.1 " + args);
  }
  absl::StatusOr<std::string> Ctl(const std::string& args) {
    return testing::Fabricctl(agent_->socket(), args);
  }

  testing::ScopedTempDir tmp_{"pmp"};
  std::string dir_;
  std::unique_ptr<Netns> router_, lan_, outside_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(NatPmpTest, NatpmpcMapsAndTrafficFromOutsideReachesTheLanHost) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanhost"));
  EXPECT_THAT(Natpmpc("-a 8080 80 tcp 3600"),
              IsOkAndHolds(HasSubstr("Mapped public port 8080 protocol TCP to local port 80")));
  EXPECT_THAT(Natpmpc(""), IsOkAndHolds(HasSubstr("Public IP address : 203.0.113.1")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080),
              IsOkAndHolds("lanhost 203.0.113.2\n"));
  // Listed with owner kind natpmp and an expiry.
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, HasSubstr("natpmp  tcp   203.0.113.1:8080"));
  EXPECT_THAT(list, HasSubstr("192.168.77.10:80"));
  EXPECT_THAT(list, HasSubstr("(59m"));
}

TEST_F(NatPmpTest, RepeatedRequestRefreshesAndDeleteRemoves) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanhost"));
  ASSERT_OK(Natpmpc("-a 8080 80 tcp 3600").status());
  // Again, suggesting another port: the same mapping, refreshed.
  EXPECT_THAT(Natpmpc("-a 9999 80 tcp 3600"),
              IsOkAndHolds(HasSubstr("Mapped public port 8080 protocol TCP to local port 80")));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("1 mapping(s)")));
  // natpmpc's delete: lifetime 0.
  ASSERT_OK(Natpmpc("-a 8080 80 tcp 0").status());
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0 mapping(s)")));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.5).ok());
  // Deleting what does not exist succeeds.
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 80 0 0"),
              IsOkAndHolds(HasSubstr("result=0")));
}

TEST_F(NatPmpTest, UdpMappingAndDeleteAllOfAProtocol) {
  ASSERT_OK(testing::Serve(*lan_, "udp", 53, "dns"));
  EXPECT_THAT(Natpmpc("-a 5353 53 udp 600"),
              IsOkAndHolds(HasSubstr("Mapped public port 5353 protocol UDP to local port 53")));
  EXPECT_THAT(testing::Ask(*outside_, "udp", "203.0.113.1", 5353),
              IsOkAndHolds("dns 203.0.113.2\n"));
  ASSERT_OK(Pmp(*lan_, "192.168.77.1 map udp 54 0 600").status());
  ASSERT_OK(Pmp(*lan_, "192.168.77.1 map tcp 80 0 600").status());
  // Internal port 0, lifetime 0: every UDP mapping of this client goes.
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map udp 0 0 0"),
              IsOkAndHolds(HasSubstr("result=0")));
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, HasSubstr("1 mapping(s)"));
  EXPECT_THAT(list, HasSubstr("tcp"));
}

// Without --wan_interface the default route's interface is the WAN, and
// it follows the route when it moves.
TEST_F(NatPmpTest, TheDefaultRoutesInterfaceIsTheWanWhenNoneIsGiven) {
  agent_.reset();
  ASSERT_OK(router_->Exec("ip route add default via 203.0.113.2 dev wan0"));
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_, "--lan_interfaces=lan0"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("WAN interface wan0: the default route's"));
  EXPECT_THAT(Natpmpc(""), IsOkAndHolds(HasSubstr("Public IP address : 203.0.113.1")));
  // A second uplink, and the default route fails over to it: the WAN, its
  // address and the leases on it follow.
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanhost"));
  ASSERT_OK(Natpmpc("-a 8080 80 tcp 3600").status());
  ASSERT_OK(testing::Link(*router_, "wan1", "198.51.100.1/24", *outside_, "eth1",
                          "198.51.100.2/24"));
  ASSERT_OK(router_->Exec("ip route replace default via 198.51.100.2 dev wan1"));
  bool moved = false;
  for (int i = 0; i < 60 && !moved; ++i) {
    moved = Ctl("list").value_or("").find("198.51.100.1:8080") != std::string::npos;
    if (!moved) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(moved) << agent_->LogText();
  EXPECT_THAT(agent_->LogText(), HasSubstr("WAN interface wan1: the default route moved from wan0"));
  EXPECT_THAT(Natpmpc(""), IsOkAndHolds(HasSubstr("Public IP address : 198.51.100.1")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "198.51.100.1", 8080),
              IsOkAndHolds("lanhost 198.51.100.2\n"));
  // None: the agent says why and will not serve NAT-PMP without a WAN.
  agent_.reset();
  ASSERT_OK(router_->Exec("ip route del default"));
  auto refused = AgentProcess::Start(router_.get(), dir_, "--lan_interfaces=lan0");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::AllOf(HasSubstr("no --wan_interface, and no IPv4 default route"),
                               HasSubstr("NAT-PMP/PCP needs --wan_interface")));
}

TEST_F(NatPmpTest, QuotaPerClient) {
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(Pmp(*lan_, absl::StrCat("192.168.77.1 map tcp ", 80 + i, " 0 600")),
                IsOkAndHolds(HasSubstr("result=0")));
  }
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 90 0 600"),
              IsOkAndHolds(HasSubstr("result=4")));  // out of resources
}

TEST_F(NatPmpTest, WanSideAndWanAddressGetNoAnswer) {
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 addr"), IsOkAndHolds(HasSubstr("result=0")));
  EXPECT_THAT(Pmp(*outside_, "203.0.113.1 addr"), IsOkAndHolds("timeout\n"));
  EXPECT_THAT(Pmp(*outside_, "203.0.113.1 map tcp 22 22 600"), IsOkAndHolds("timeout\n"));
  // From the LAN, but addressed to the WAN address.
  EXPECT_THAT(Pmp(*lan_, "203.0.113.1 addr"), IsOkAndHolds("timeout\n"));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0 mapping(s)")));
}

TEST_F(NatPmpTest, LeasesExpireOnTimeAndTheirRulesGo) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 81, "short"));
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 map tcp 81 8181 2"));
  EXPECT_EQ(Field(r, "lifetime"), "2");
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8181), IsOkAndHolds(HasSubstr("short")));
  // Expiry is checked every second: 2 s + up to 1.2 s, with room to spare.
  absl::SleepFor(absl::Milliseconds(4500));
  EXPECT_THAT(router_->Exec("nft list map inet fabric_nat dnat4"),
              IsOkAndHolds(Not(HasSubstr("8181"))));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8181, 0.5).ok());
  EXPECT_THAT(agent_->LogText(), HasSubstr("expired 1 lease(s)"));
}

TEST_F(NatPmpTest, LifetimeIsClampedToTheMaximum) {
  agent_.reset();
  StartAgent("--natpmp_max_lifetime=600s");
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 map tcp 80 0 99999"));
  EXPECT_EQ(Field(r, "lifetime"), "600");
}

TEST_F(NatPmpTest, LeasesAndEpochSurviveARestart) {
  ASSERT_OK_AND_ASSIGN(std::string first, Pmp(*lan_, "192.168.77.1 map tcp 80 8080 600"));
  absl::SleepFor(absl::Seconds(1));
  agent_.reset();
  absl::SleepFor(absl::Seconds(1));
  StartAgent();
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, HasSubstr("203.0.113.1:8080"));
  EXPECT_THAT(list, HasSubstr("(9m5"));  // about 598 s left
  ASSERT_OK_AND_ASSIGN(std::string addr, Pmp(*lan_, "192.168.77.1 addr"));
  int e1 = 0, e2 = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Field(first, "epoch"), &e1));
  ASSERT_TRUE(absl::SimpleAtoi(Field(addr, "epoch"), &e2));
  EXPECT_GE(e2, e1 + 2);  // the epoch went on across the restart, not reset
  ASSERT_OK_AND_ASSIGN(std::string again, Pmp(*lan_, "192.168.77.1 map tcp 80 0 600"));
  EXPECT_EQ(Field(again, "external"), "8080");
  // Losing the state (the store) while the kernel still holds the lease:
  // the agent refuses to start until told to begin empty; then a new epoch
  // starts and the leases go.
  agent_.reset();
  ASSERT_OK(testing::Shell("rm -rf " + dir_ + "/state"));
  auto refused = AgentProcess::Start(router_.get(), dir_,
                                     "--lan_interfaces=lan0 --wan_interface=wan0");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("is new or empty"));
  StartAgent("--reset_state");
  ASSERT_OK_AND_ASSIGN(std::string fresh, Pmp(*lan_, "192.168.77.1 addr"));
  int e3 = -1;
  ASSERT_TRUE(absl::SimpleAtoi(Field(fresh, "epoch"), &e3));
  EXPECT_LT(e3, e2);
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0 mapping(s)")));
}

TEST_F(NatPmpTest, AnnouncesAtStartAndWhenTheWanAddressChanges) {
  std::string out = dir_ + "/announce.txt";
  ASSERT_OK(lan_->Spawn(absl::StrCat("exec /usr/bin/python3 ", testing::Runfile("testing/pmp.py"),
                                     " listen 5350 3 > ", out))
                .status());
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_OK(Pmp(*lan_, "192.168.77.1 map tcp 80 8080 600").status());
  ASSERT_OK(router_->Exec("ip addr del 203.0.113.1/24 dev wan0 && "
                          "ip addr add 203.0.113.50/24 dev wan0"));
  absl::SleepFor(absl::Milliseconds(2900));
  ASSERT_OK_AND_ASSIGN(std::string text, testing::Shell("cat " + out));
  EXPECT_THAT(text, HasSubstr("kind=natpmp version=0 op=128 result=0"));
  EXPECT_THAT(text, HasSubstr("address=203.0.113.50"));
  EXPECT_THAT(text, HasSubstr("kind=pcp version=2 op=128 result=0"));
  // 250 ms doubling: 0, 0.25, 0.75, 1.75 s -> four within the window.
  EXPECT_GE(std::count(text.begin(), text.end(), '\n'), 6) << text;
  // The lease moved to the new address.
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("203.0.113.50:8080")));
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 addr"), IsOkAndHolds(HasSubstr("address=203.0.113.50")));
  // And at start.
  agent_.reset();
  std::string at_start = dir_ + "/announce-start.txt";
  ASSERT_OK(lan_->Spawn(absl::StrCat("exec /usr/bin/python3 ", testing::Runfile("testing/pmp.py"),
                                     " listen 5350 1.5 > ", at_start))
                .status());
  absl::SleepFor(absl::Milliseconds(300));
  StartAgent();
  absl::SleepFor(absl::Milliseconds(1400));
  EXPECT_THAT(testing::Shell("cat " + at_start),
              IsOkAndHolds(HasSubstr("kind=natpmp version=0 op=128 result=0")));
}

TEST_F(NatPmpTest, NoWanAddressIsANetworkFailure) {
  ASSERT_OK(router_->Exec("ip addr del 203.0.113.1/24 dev wan0"));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 addr"),
              IsOkAndHolds(HasSubstr("result=3 epoch=")));
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 80 8080 600"), IsOkAndHolds(HasSubstr("result=3")));
  ASSERT_OK_AND_ASSIGN(std::string r,
                       Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 8080 600 0102030405060708090a0b0c"));
  EXPECT_EQ(Field(r, "result"), "7");  // NETWORK_FAILURE, short lifetime
  EXPECT_EQ(Field(r, "lifetime"), "30");
}

TEST_F(NatPmpTest, NatPmpResultCodesForBadRequests) {
  // With PCP on, a version the server does not speak gets PCP's
  // UNSUPP_VERSION naming version 2 (RFC 6887 section 9), 24 bytes, when
  // the request is at least that long; a shorter one gets no answer (it
  // would be longer than the request).
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 raw 01" + std::string(46, '0')),
              IsOkAndHolds(HasSubstr("version=2 op=128 result=1")));
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 raw 0100"), IsOkAndHolds("timeout\n"));
  // Unknown opcode below 128: the request echoed, top bit set, result 5.
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 raw 0005000012345678"));
  EXPECT_THAT(r, HasSubstr("op=133 result=5"));
  EXPECT_THAT(r, HasSubstr("len=8"));
  // Opcode 128 and up: a response, never answered.
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 raw 00c8"), IsOkAndHolds("timeout\n"));
  // A map request cut short: refused, with the 4-byte header only.
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 raw 00020000"),
              IsOkAndHolds(HasSubstr("op=130 result=2 len=4")));
}

TEST_F(NatPmpTest, NatPmpOnlyServerAnswersOtherVersionsWithItsOwnError) {
  agent_.reset();
  StartAgent("--pcp=false");
  // RFC 6886 section 3.5 (erratum 3618): 8 bytes, opcode 128, result 1;
  // never longer than the request (4 bytes, or none under 4).
  for (const char* request : {"01000000000000", "0201000000000e10"}) {
    ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, absl::StrCat("192.168.77.1 raw ", request)));
    EXPECT_THAT(r, HasSubstr("version=0 op=128 result=1"));
    EXPECT_THAT(r, HasSubstr(strlen(request) == 16 ? "len=8" : "len=4"));
  }
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 raw 0100"), IsOkAndHolds("timeout\n"));
  EXPECT_THAT(Natpmpc("-a 8080 80 tcp 60"), IsOkAndHolds(HasSubstr("Mapped public port 8080")));
}

TEST_F(NatPmpTest, PcpMapAndItsErrors) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanhost"));
  const std::string nonce = "0102030405060708090a0b0c";
  ASSERT_OK_AND_ASSIGN(std::string r,
                       Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 8080 600 " + nonce));
  EXPECT_EQ(Field(r, "result"), "0") << r;
  EXPECT_EQ(Field(r, "op"), "129");
  EXPECT_EQ(Field(r, "external"), "8080");
  EXPECT_EQ(Field(r, "external_ip"), "203.0.113.1");
  EXPECT_EQ(Field(r, "nonce"), nonce);
  EXPECT_EQ(Field(r, "lifetime"), "600");
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds(HasSubstr("lanhost")));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("pcp     tcp   203.0.113.1:8080")));

  // Refresh or delete with another nonce: NOT_AUTHORIZED, a long-lifetime error.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 8080 600 ffffffffffffffffffffffff"));
  EXPECT_EQ(Field(r, "result"), "2");
  EXPECT_EQ(Field(r, "lifetime"), "1800");
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 0 0 ffffffffffffffffffffffff"));
  EXPECT_EQ(Field(r, "result"), "2");
  // The client-IP field is not the source: ADDRESS_MISMATCH.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 0 600 " + nonce +
                                         " --client 192.168.77.99"));
  EXPECT_EQ(Field(r, "result"), "12");
  // Version 1: UNSUPP_VERSION, naming version 2, header only.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 0 600 " + nonce + " --version 1"));
  EXPECT_EQ(Field(r, "result"), "1");
  EXPECT_EQ(Field(r, "version"), "2");
  EXPECT_EQ(Field(r, "len"), "24");
  // THIRD_PARTY is refused; an unknown mandatory option is unsupported.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 0 600 " + nonce + " --third-party"));
  EXPECT_EQ(Field(r, "result"), "2");
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 0 600 " + nonce + " --option 99"));
  EXPECT_EQ(Field(r, "result"), "5");
  // An unknown optional option is ignored.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 0 600 " + nonce + " --option 200"));
  EXPECT_EQ(Field(r, "result"), "0");
  // PREFER_FAILURE on a taken port: CANNOT_PROVIDE_EXTERNAL, short lifetime.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 82 8080 600 aaaaaaaaaaaaaaaaaaaaaaaa --prefer-failure"));
  EXPECT_EQ(Field(r, "result"), "11");
  EXPECT_EQ(Field(r, "lifetime"), "30");
  // Without it, another port.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 82 8080 600 aaaaaaaaaaaaaaaaaaaaaaaa"));
  EXPECT_EQ(Field(r, "result"), "0");
  EXPECT_NE(Field(r, "external"), "8080");
  // Quota (3 here): USER_EX_QUOTA, short lifetime.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 83 0 600 " + nonce));
  EXPECT_EQ(Field(r, "result"), "10");
  EXPECT_EQ(Field(r, "lifetime"), "30");
  // Unsupported protocol.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 84 0 600 " + nonce + " --protocol 47"));
  EXPECT_EQ(Field(r, "result"), "9");
  // Delete with the right nonce.
  ASSERT_OK_AND_ASSIGN(r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 0 0 " + nonce));
  EXPECT_EQ(Field(r, "result"), "0");
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.5).ok());
}

TEST_F(NatPmpTest, PerClientRateLimit) {
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 flood 200"));
  int replies = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Field(r, "replies"), &replies)) << r;
  EXPECT_GE(replies, 15);
  EXPECT_LT(replies, 60);
}

// Issue "Nothing hijacked", item 3. The router's reverse-path filter is
// off, so it is the agent that refuses.
TEST_F(NatPmpTest, SourcesOutsideTheLanSubnetAreDropped) {
  ASSERT_OK(router_->Exec("sysctl -qw net.ipv4.conf.all.rp_filter=0 "
                          "net.ipv4.conf.lan0.rp_filter=0"));
  ASSERT_OK(lan_->Exec("ip addr add 203.0.113.50/32 dev eth0 && "
                       "ip addr add 10.99.0.7/32 dev eth0"));
  for (const char* source : {"203.0.113.50", "10.99.0.7"}) {
    EXPECT_THAT(Pmp(*lan_, absl::StrCat("--source ", source, " 192.168.77.1 map tcp 22 2222 600")),
                IsOkAndHolds("timeout\n"));
    EXPECT_THAT(Pmp(*lan_, absl::StrCat("--source ", source,
                                        " 192.168.77.1 pcp-map tcp 22 2223 600 "
                                        "0102030405060708090a0b0c")),
                IsOkAndHolds("timeout\n"));
  }
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0 mapping(s)")));
  EXPECT_THAT(agent_->LogText(), HasSubstr("is outside every subnet of lan0 (on lan0)"));
  // The LAN host itself is served.
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 22 2222 600"), IsOkAndHolds(HasSubstr("result=0")));
}

TEST_F(NatPmpTest, AnotherOwnersTargetIsNotAuthorized) {
  // An orchestrator publishes a NAS on the LAN; another LAN host claims its
  // address to publish the NAS's other ports.
  ASSERT_OK(Ctl("add tcp 4443 192.168.77.20:443").status());
  ASSERT_OK(lan_->Exec("ip addr add 192.168.77.20/24 dev eth0"));
  EXPECT_THAT(Pmp(*lan_, "--source 192.168.77.20 192.168.77.1 map tcp 22 2222 600"),
              IsOkAndHolds(HasSubstr("result=2")));
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "--source 192.168.77.20 192.168.77.1 pcp-map "
                                                 "tcp 22 2222 600 0102030405060708090a0b0c"));
  EXPECT_EQ(Field(r, "result"), "2");  // NOT_AUTHORIZED
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("1 mapping(s)")));
}

// Item 4: a host with alias addresses meets the global cap.
TEST_F(NatPmpTest, GlobalCapOverAliases) {
  agent_.reset();
  StartAgent("--natpmp_max_per_client=3 --natpmp_max_leases=4");
  if (HasFatalFailure()) return;
  ASSERT_OK(lan_->Exec("ip addr add 192.168.77.11/24 dev eth0 && "
                       "ip addr add 192.168.77.12/24 dev eth0"));
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(Pmp(*lan_, absl::StrCat("192.168.77.1 map tcp ", 80 + i, " 0 600")),
                IsOkAndHolds(HasSubstr("result=0")));
  }
  EXPECT_THAT(Pmp(*lan_, "--source 192.168.77.11 192.168.77.1 map tcp 80 0 600"),
              IsOkAndHolds(HasSubstr("result=0")));
  EXPECT_THAT(Pmp(*lan_, "--source 192.168.77.12 192.168.77.1 map tcp 80 0 600"),
              IsOkAndHolds(HasSubstr("result=4")));  // out of resources
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("4 mapping(s)")));
}

// Item 5: by default a lease never lands in --port_range (32768-60999).
TEST_F(NatPmpTest, LeasesStayOutOfTheContainersDynamicRange) {
  EXPECT_THAT(Natpmpc("-a 40000 80 tcp 600"),
              IsOkAndHolds(HasSubstr("Mapped public port 32767 protocol TCP to local port 80")));
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 81 60000 600 "
                                                 "0102030405060708090a0b0c"));
  EXPECT_EQ(Field(r, "external"), "61000");
  // A range that lies inside --port_range is a configuration error.
  agent_.reset();
  auto refused = AgentProcess::Start(router_.get(), dir_,
                                     "--lan_interfaces=lan0 --wan_interface=wan0 "
                                     "--natpmp_port_range=40000-41000");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("lies inside --port_range"));
}

// Item 6: NAT-PMP has no nonce: it cannot delete the PCP lease of its own
// address.
TEST_F(NatPmpTest, NatPmpCannotDeleteAPcpLease) {
  ASSERT_OK_AND_ASSIGN(std::string r, Pmp(*lan_, "192.168.77.1 pcp-map tcp 80 8080 600 "
                                                 "0102030405060708090a0b0c"));
  ASSERT_EQ(Field(r, "result"), "0");
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 80 0 0"), IsOkAndHolds(HasSubstr("result=2")));
  EXPECT_THAT(Pmp(*lan_, "192.168.77.1 map tcp 0 0 0"), IsOkAndHolds(HasSubstr("result=0")));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("pcp     tcp   203.0.113.1:8080")));
}

}  // namespace
}  // namespace fabric
