// Kernel tests for the nftables backend: real rules in a fresh network
// namespace, proven with real packets.
//
// Topology: testing/backend_topology.h (all namespaces made here, removed
// after each test).
#include "nat/backend/nftables/nftables_backend.h"

#include <atomic>
#include <cstdlib>
#include <set>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/backend_topology.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::Dnat;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;
using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

class NftablesBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel tests run as root";
    ASSERT_OK_AND_ASSIGN(testing::BackendTopology t, testing::MakeBackendTopology());
    host_ = std::move(t.host);
    outside_ = std::move(t.outside);
    container_ = std::move(t.container);
    ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*host_));
    ASSERT_OK_AND_ASSIGN(backend_, NftablesBackend::Create());
  }

  void Serve(const std::string& proto, int port, const std::string& token) {
    ASSERT_OK(testing::Serve(*container_, proto, port, token));
  }

  absl::StatusOr<std::string> Ask(const Netns& from, const std::string& proto,
                                  const std::string& host, int port,
                                  double timeout = 2.0) {
    return testing::Ask(from, proto, host, port, timeout);
  }

  std::unique_ptr<Netns> host_, outside_, container_;
  std::unique_ptr<NftablesBackend> backend_;
};

TEST_F(NftablesBackendTest, PublishedPortsForwardTcpUdpV4AndV6) {
  Serve("tcp", 80, "web");
  Serve("udp", 53, "dns");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "fd00:99::2", 53)};
  // Before: nothing forwards.
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK(backend_->Replace(rules));

  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));
  EXPECT_THAT(Ask(*outside_, "udp", "192.0.2.1", 5353),
              IsOkAndHolds(std::string("dns 192.0.2.2\n")));
  EXPECT_THAT(Ask(*outside_, "udp", "2001:db8::1", 5353),
              IsOkAndHolds(std::string("dns 2001:db8::2\n")));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8080),
              IsOkAndHolds(std::string("web 2001:db8::2\n")));
  // Any local address: the second address of the host answers too.
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 8080),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));

  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.table_present);
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
}

TEST_F(NftablesBackendTest, SctpMapping) {
  if (!host_->Exec("modprobe sctp 2>/dev/null; test -d /proc/sys/net/sctp").ok()) {
    GTEST_SKIP() << "no SCTP in this kernel";
  }
  Serve("sctp", 9000, "sctp");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kSctp, std::nullopt, 9900, "10.99.0.2", 9000)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "sctp", "192.0.2.1", 9900),
              IsOkAndHolds(StartsWith("sctp ")));
}

TEST_F(NftablesBackendTest, HostIpMappingAnswersOnlyOnThatAddress) {
  Serve("tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, Ip("192.0.2.10"), 9090, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 9090),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 9090, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules);
}

TEST_F(NftablesBackendTest, EqualPortRangeIsOneElementAndKeepsPorts) {
  Serve("tcp", 7001, "range");
  PortMapping m;
  m.protocol = Protocol::kTcp;
  m.host_port = 7000;
  m.port_count = 3;
  m.target_ip = Ip("10.99.0.2");
  m.target_port = 7000;
  RuleSet rules;
  for (const DnatElement& e : m.ToElements()) rules.dnat.insert(e);
  ASSERT_EQ(rules.dnat.size(), 1u);
  // The same range on one host address, over IPv6 too.
  m.host_ip = Ip("2001:db8::1");
  m.target_ip = Ip("fd00:99::2");
  for (const DnatElement& e : m.ToElements()) rules.dnat.insert(e);
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 7001),
              IsOkAndHolds(std::string("range 192.0.2.2\n")));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 7001),
              IsOkAndHolds(std::string("range 2001:db8::2\n")));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 7003, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  auto nft = host_->Exec("nft list map inet fabric_nat range4_any");
  ASSERT_OK(nft.status());
  EXPECT_THAT(*nft, HasSubstr("7000-7002"));
}

TEST_F(NftablesBackendTest, RemovedMappingStopsForwarding) {
  Serve("tcp", 80, "web");
  DnatElement e = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  ASSERT_OK(backend_->Replace(RuleSet{}));
  Batch add;
  add.add.dnat = {e};
  ASSERT_OK(backend_->Apply(add));
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8080).ok());
  Batch remove;
  remove.remove.dnat = {e};
  ASSERT_OK(backend_->Apply(remove));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.rules.dnat.empty());
}

TEST_F(NftablesBackendTest, MasqueradeAndHairpin) {
  Serve("tcp", 80, "web");
  // A server outside, to see whose address the container's traffic has.
  ASSERT_OK(outside_->Spawn(absl::StrCat("exec /usr/bin/python3 ",
                                         testing::NetTool(),
                                         " serve tcp 9999 outside")).status());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Without masquerade the outside has no route back to the container.
  EXPECT_FALSE(Ask(*container_, "tcp", "192.0.2.2", 9999, 0.5).ok());

  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999),
              IsOkAndHolds(std::string("outside 192.0.2.1\n")));
  // Hairpin: the container reaches its own published port through the
  // host's address, and sees the host's address as the peer.
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.1", 8080),
              IsOkAndHolds(std::string("web 10.99.0.1\n")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
}

TEST_F(NftablesBackendTest, AdjacentAndWholeSpacePrefixesReadBack) {
  RuleSet rules;
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("10.99.1.0/24"),
                   *Prefix::Parse("fd00:99::/64"), *Prefix::Parse("fd00:99:0:1::/64")};
  rules.masquerade = {*Prefix::Parse("0.0.0.0/0"), *Prefix::Parse("::/0")};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  Batch b;
  b.remove.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Apply(b));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  rules.hairpin.erase(*Prefix::Parse("10.99.0.0/24"));
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
}

TEST_F(NftablesBackendTest, LocalhostAccess) {
  Serve("tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_FALSE(Ask(*host_, "tcp", "127.0.0.1", 8080, 0.5).ok());
  rules.localhost_interfaces = {"ctr0"};
  {
    // route_localnet is written through /proc/sys, which shows the network
    // namespace of the thread that opens it.
    ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*host_));
    ASSERT_OK(backend_->Replace(rules));
  }
  EXPECT_THAT(Ask(*host_, "tcp", "127.0.0.1", 8080),
              IsOkAndHolds(std::string("web 10.99.0.1\n")));
  EXPECT_THAT(host_->Exec("cat /proc/sys/net/ipv4/conf/ctr0/route_localnet"),
              IsOkAndHolds(std::string("1\n")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules);
}

// Issue 10, item 10: never "all"/"default" (which would open every
// interface to 127.0.0.1 traffic), only an existing interface, and turning
// it off restores what was there.
TEST_F(NftablesBackendTest, RouteLocalnetOnlyOnRealInterfacesAndRestoredAfter) {
  ASSERT_OK(host_->Exec("ip link add rl1 type veth peer name rl1p && "
                        "ip link add rl2 type veth peer name rl2p && "
                        "echo 1 > /proc/sys/net/ipv4/conf/rl2/route_localnet").status());
  ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*host_));
  std::string memory = absl::StrCat(std::getenv("TEST_TMPDIR"), "/route_localnet.prev");
  SetRouteLocalnetMemory(memory);
  for (const char* bad : {"all", "default"}) {
    EXPECT_THAT(SetRouteLocalnet(bad, true), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(host_->Exec("cat /proc/sys/net/ipv4/conf/all/route_localnet"),
              IsOkAndHolds(std::string("0\n")));
  EXPECT_THAT(SetRouteLocalnet("nosuch0", true),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no interface nosuch0")));
  Batch on;
  on.add.localhost_interfaces = {"rl1", "rl2"};
  ASSERT_OK(backend_->Replace(RuleSet{}));
  ASSERT_OK(backend_->Apply(on));
  EXPECT_THAT(host_->Exec("cat /proc/sys/net/ipv4/conf/rl1/route_localnet "
                          "/proc/sys/net/ipv4/conf/rl2/route_localnet"),
              IsOkAndHolds(std::string("1\n1\n")));
  // A restart of the agent: the values before come back from the file.
  SetRouteLocalnetMemory(memory);
  Batch off;
  off.remove.localhost_interfaces = {"rl1", "rl2"};
  ASSERT_OK(backend_->Apply(off));
  EXPECT_THAT(host_->Exec("cat /proc/sys/net/ipv4/conf/rl1/route_localnet "
                          "/proc/sys/net/ipv4/conf/rl2/route_localnet"),
              IsOkAndHolds(std::string("0\n1\n")));
  SetRouteLocalnetMemory("");
}

TEST_F(NftablesBackendTest, TenThousandMappingsApplyAndReadBackExactly) {
  RuleSet rules;
  for (int i = 0; i < 10000; ++i) {
    Protocol p = i % 2 ? Protocol::kUdp : Protocol::kTcp;
    std::string target = absl::StrCat("10.99.", 1 + i / 250, ".", 1 + i % 250);
    rules.dnat.insert(Dnat(p, std::nullopt, 20000 + i, target.c_str(), 80));
  }
  ASSERT_OK(backend_->Replace(RuleSet{}));
  Batch batch;
  batch.add = rules;
  ASSERT_OK(backend_->Apply(batch));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules.dnat.size(), 10000u);
  EXPECT_TRUE(state.rules == rules);
  // And a full replacement with them is exact too.
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.rules == rules);
}

// The reads the agent uses while its writer applies changes: a dump that
// changes disturb still completes and never shows an element nobody put
// there, and elements looked up one by one are found exactly (key and
// target), whatever else changes meanwhile.
TEST_F(NftablesBackendTest, ReadsDuringWritesAndLookupsByKey) {
  RuleSet stable;
  for (int i = 0; i < 5000; ++i) {
    std::string target = absl::StrCat("10.99.", 1 + i / 250, ".", 1 + i % 250);
    stable.dnat.insert(Dnat(Protocol::kTcp, std::nullopt, 20000 + i, target.c_str(), 80));
  }
  DnatElement specific = Dnat(Protocol::kUdp, Ip("192.0.2.1"), 7000, "10.98.0.2", 53);
  DnatElement range = Dnat(Protocol::kTcp, std::nullopt, 31000, "10.98.0.3", 0);
  range.port_hi = 31009;
  stable.dnat.insert(specific);
  stable.dnat.insert(range);
  ASSERT_OK(backend_->Replace(stable));

  DnatElement absent = Dnat(Protocol::kTcp, std::nullopt, 29999, "10.99.1.1", 80);
  DnatElement other_target = Dnat(Protocol::kTcp, std::nullopt, 20000, "10.97.0.1", 80);
  DnatElement present = *stable.dnat.begin();
  EXPECT_THAT(backend_->HoldsDnat({present, specific, absent, other_target}),
              IsOkAndHolds(DnatSet{present, specific}));
  // A range has no lookup by key: answered from a read, as exactly.
  EXPECT_THAT(backend_->HoldsDnat({range, absent}),
              IsOkAndHolds(DnatSet{range}));

  // Another connection adds and removes elements on other ports all along.
  std::atomic<bool> stop{false};
  DnatSet churn;
  for (int i = 0; i < 200; ++i) {
    churn.insert(Dnat(Protocol::kTcp, std::nullopt, 40000 + i, "10.96.0.2", 80));
  }
  std::thread writer([&] {
    auto enter = ScopedNetns::Enter(*host_);
    auto other = NftablesBackend::Create();
    if (!enter.ok() || !other.ok()) return;
    while (!stop) {
      for (const DnatElement& e : churn) {
        Batch b;
        b.add.dnat.insert(e);
        (void)(*other)->Apply(b);
        std::swap(b.add, b.remove);
        (void)(*other)->Apply(b);
      }
    }
  });
  int full = 0;
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK_AND_ASSIGN(KernelState state, backend_->ReadDuringWrites());
    for (const DnatElement& e : state.rules.dnat) {
      ASSERT_TRUE(stable.dnat.count(e) > 0 || churn.count(e) > 0) << e.ToString();
    }
    DnatSet missing;
    for (const DnatElement& e : stable.dnat) {
      if (state.rules.dnat.count(e) == 0) missing.insert(e);
    }
    if (missing.empty()) ++full;
    // Whatever a disturbed dump skipped, a lookup finds.
    EXPECT_THAT(backend_->HoldsDnat(missing), IsOkAndHolds(missing));
  }
  stop = true;
  writer.join();
  std::printf("%d of 20 dumps during writes showed every stable element\n", full);
}

TEST_F(NftablesBackendTest, FailingBatchNamesTheCauseAndChangesNothing) {
  RuleSet rules;
  DnatElement present = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  rules.dnat = {present};
  ASSERT_OK(backend_->Replace(rules));

  // Adding what is there fails, and the other addition in the batch is not
  // made either.
  DnatElement fresh = Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53);
  Batch dup;
  dup.add.dnat = {present, fresh};
  EXPECT_THAT(backend_->Apply(dup),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("add tcp 0.0.0.0:8080 -> 10.99.0.2:80 to map "
                                 "dnat4_any")));
  // Removing what is not there fails the same way.
  Batch missing;
  missing.remove.dnat = {fresh};
  missing.add.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  EXPECT_THAT(backend_->Apply(missing),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("remove udp 0.0.0.0:5353 -> 10.99.0.2:53")));
  // An element for a map that does not exist.
  ASSERT_OK(host_->Exec("nft flush chain inet fabric_nat hostports && "
                        "nft delete map inet fabric_nat range6"));
  Batch no_map;
  no_map.add.dnat = {fresh};
  PortMapping range;
  range.protocol = Protocol::kTcp;
  range.host_port = 6000;
  range.port_count = 5;
  range.target_ip = Ip("fd00:99::2");
  range.target_port = 6000;
  range.host_ip = Ip("2001:db8::1");
  no_map.add.dnat.insert(range.ToElements().front());
  EXPECT_THAT(backend_->Apply(no_map),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("to map range6: No such file or directory")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  EXPECT_FALSE(state.layout_intact);
  EXPECT_THAT(state.problem, HasSubstr("set range6 missing"));
  // Replace heals the layout.
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
}

TEST_F(NftablesBackendTest, TouchesNoOtherTable) {
  ASSERT_OK(host_->Exec(
      "nft add table ip other && "
      "nft add chain ip other c '{ type filter hook input priority 0; }' && "
      "nft add rule ip other c tcp dport 22 accept"));
  std::string before = *host_->Exec("nft list table ip other");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(backend_->DeleteTable());
  EXPECT_EQ(*host_->Exec("nft list table ip other"), before);
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_FALSE(state.table_present);
  EXPECT_OK(backend_->DeleteTable());  // already gone: fine
}

TEST_F(NftablesBackendTest, ForeignChangesAreDetected) {
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, std::nullopt, 8081, "10.99.0.2", 80)};
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(host_->Exec("nft delete element inet fabric_nat dnat4_any "
                        "'{ tcp . 8080 }'"));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules.dnat.size(), 1u);
  // The last element gone by hand leaves a rule that its empty map does not
  // call for: only a rebuild puts rules and contents in step again.
  ASSERT_OK(host_->Exec("nft delete element inet fabric_nat dnat4_any "
                        "'{ tcp . 8081 }'"));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_FALSE(state.layout_intact);
  EXPECT_THAT(state.problem, HasSubstr("chain hostports holds 1 rule(s)"));
  ASSERT_OK(host_->Exec("nft flush chain inet fabric_nat postrouting"));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_FALSE(state.layout_intact);
  EXPECT_THAT(state.problem, HasSubstr("chain postrouting"));
  ASSERT_OK(host_->Exec("nft flush ruleset"));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_FALSE(state.table_present);
}

// The rules of `chain` as `nft` lists them, one per line.
std::string ChainRules(const Netns& ns, const std::string& chain) {
  absl::StatusOr<std::string> out = ns.Exec(absl::StrCat(
      "nft list chain inet fabric_nat ", chain,
      " | grep -v -e '^table' -e '^\\s*chain' -e ' hook ' -e '^\\s*}' | sed 's/^\\s*//'"));
  return out.ok() ? *out : std::string(out.status().message());
}

TEST_F(NftablesBackendTest, OnlyRulesThatCanChangeAFateArePresent) {
  Serve("tcp", 80, "web");
  ASSERT_OK(backend_->Replace(RuleSet{}));
  // Empty sets: every chain is empty, and there is no filter chain at all.
  ASSERT_OK_AND_ASSIGN(std::string table,
                       host_->Exec("nft list table inet fabric_nat"));
  EXPECT_THAT(table, Not(HasSubstr("jump")));
  EXPECT_THAT(table, Not(HasSubstr("masquerade")));
  EXPECT_THAT(table, Not(HasSubstr("forward")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;

  // The first mapping brings the jumps and its map's rule, in its batch.
  DnatElement web = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  Batch add;
  add.add.dnat = {web};
  ASSERT_OK(backend_->Apply(add));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));
  EXPECT_THAT(ChainRules(*host_, "prerouting"), HasSubstr("jump hostports"));
  EXPECT_THAT(ChainRules(*host_, "output"), HasSubstr("jump hostports"));
  ASSERT_OK_AND_ASSIGN(std::string hostports, host_->Exec(
      "nft list chain inet fabric_nat hostports | grep -c dnat"));
  EXPECT_EQ(hostports, "1\n");
  EXPECT_THAT(ChainRules(*host_, "hostports"), HasSubstr("@dnat4_any"));
  EXPECT_EQ(ChainRules(*host_, "postrouting"), "");
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;

  // A host-specific map joins after the any-address one.
  Batch specific;
  specific.add.dnat = {Dnat(Protocol::kTcp, Ip("192.0.2.10"), 9090, "10.99.0.2", 80)};
  specific.add.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Apply(specific));
  std::string chain = ChainRules(*host_, "hostports");
  EXPECT_LT(chain.find("@dnat4_any"), chain.find("@dnat4 ")) << chain;
  EXPECT_THAT(ChainRules(*host_, "postrouting"), HasSubstr("@masq4"));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 9090),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;

  // The last elements take their rules with them.
  Batch remove;
  remove.remove = specific.add;
  remove.remove.dnat.insert(web);
  ASSERT_OK(backend_->Apply(remove));
  for (const char* c : {"prerouting", "output", "hostports", "postrouting"}) {
    EXPECT_EQ(ChainRules(*host_, c), "") << c;
  }
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_TRUE(state.rules.empty());
}

TEST_F(NftablesBackendTest, RefusedBatchChangesNoRuleEither) {
  ASSERT_OK(backend_->Replace(RuleSet{}));
  // The first element of two sets, and a removal of what is not there.
  Batch bad;
  bad.add.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  bad.add.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  bad.remove.dnat = {Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53)};
  EXPECT_THAT(backend_->Apply(bad), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_TRUE(state.rules.empty());
  EXPECT_THAT(*host_->Exec("nft list table inet fabric_nat"), Not(HasSubstr("jump")));
  // And the backend still knows what the kernel holds.
  bad.remove = {};
  ASSERT_OK(backend_->Apply(bad));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, bad.add);
}

TEST_F(NftablesBackendTest, NewBackendLearnsTheContentsBeforeItsFirstBatch) {
  Serve("tcp", 80, "web");
  DnatElement web = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  RuleSet rules;
  rules.dnat = {web};
  ASSERT_OK(backend_->Replace(rules));
  // A restarted agent: a fresh backend whose first call is a batch.
  std::unique_ptr<NftablesBackend> fresh;
  {
    ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*host_));
    ASSERT_OK_AND_ASSIGN(fresh, NftablesBackend::Create());
  }
  Batch more;
  more.add.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8081, "10.99.0.2", 80)};
  ASSERT_OK(fresh->Apply(more));
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8081).ok());
  Batch all;
  all.remove.dnat = {web, *more.add.dnat.begin()};
  ASSERT_OK(fresh->Apply(all));
  ASSERT_OK_AND_ASSIGN(KernelState state, fresh->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(ChainRules(*host_, "hostports"), "");
}

TEST_F(NftablesBackendTest, SyncAfterFlushRulesetRestoresTheRules) {
  Serve("tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(host_->Exec("nft flush ruleset"));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(SyncReport report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080),
              IsOkAndHolds(std::string("web 192.0.2.2\n")));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.1", 8080),
              IsOkAndHolds(std::string("web 10.99.0.1\n")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  // Emptied by hand: the stale rule makes Sync rebuild, and then the
  // element batch that follows lays the rules down again.
  ASSERT_OK(host_->Exec("nft flush map inet fabric_nat dnat4_any"));
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);
  EXPECT_THAT(report.reason, HasSubstr("chain hostports"));
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kNone);
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8080).ok());
}

}  // namespace
}  // namespace fabric::nat

namespace fabric::nat {
namespace {

class NftablesFirewallTest : public NftablesBackendTest {};

TEST_F(NftablesFirewallTest, Ipv6FirewallDropsNewInboundExceptPinholes) {
  ASSERT_OK(outside_->Exec("ip -6 route add fd00:99::/64 via 2001:db8::1"));
  ASSERT_OK(host_->Exec("sysctl -qw net.ipv6.conf.all.forwarding=1"));
  Serve("tcp", 80, "web");
  Serve("tcp", 81, "other");
  ASSERT_OK(testing::Serve(*outside_, "tcp", 9000, "outside"));
  // Routed, no firewall: open.
  EXPECT_THAT(Ask(*outside_, "tcp", "fd00:99::2", 80), IsOkAndHolds(HasSubstr("web")));
  RuleSet rules;
  rules.firewall6_interfaces = {"wan0"};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_FALSE(Ask(*outside_, "tcp", "fd00:99::2", 80, 0.5).ok());
  // ICMPv6 passes; connections from inside out, and their answers, too.
  EXPECT_OK(outside_->Exec("ping -6 -c1 -W2 fd00:99::2"));
  EXPECT_THAT(Ask(*container_, "tcp", "2001:db8::2", 9000), IsOkAndHolds(HasSubstr("outside")));

  Pinhole web{Ip("fd00:99::2"), Protocol::kTcp, 80, std::nullopt};
  Pinhole from_outside{Ip("fd00:99::2"), Protocol::kTcp, 81, Ip("2001:db8::2")};
  Pinhole from_elsewhere{Ip("fd00:99::2"), Protocol::kTcp, 81, Ip("2001:db8::99")};
  Batch open;
  open.add.pinholes = {web, from_elsewhere};
  ASSERT_OK(backend_->Apply(open));
  EXPECT_THAT(Ask(*outside_, "tcp", "fd00:99::2", 80), IsOkAndHolds(HasSubstr("web")));
  // A pinhole for another remote host does not open the port to this one.
  EXPECT_FALSE(Ask(*outside_, "tcp", "fd00:99::2", 81, 0.5).ok());
  Batch from;
  from.add.pinholes = {from_outside};
  ASSERT_OK(backend_->Apply(from));
  EXPECT_THAT(Ask(*outside_, "tcp", "fd00:99::2", 81), IsOkAndHolds(HasSubstr("other")));

  ASSERT_OK_AND_ASSIGN(KernelState k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_EQ(k.rules.pinholes, (std::set<Pinhole>{web, from_outside, from_elsewhere}));
  EXPECT_EQ(k.rules.firewall6_interfaces, (std::set<std::string>{"wan0"}));
  // Each pinhole counts the packets it let in.
  EXPECT_GE(k.pinhole_packets[web], 3u);
  EXPECT_GE(k.pinhole_packets[from_outside], 3u);
  EXPECT_EQ(k.pinhole_packets[from_elsewhere], 0u);

  // Closing the pinhole closes the port; turning the firewall off removes
  // the forward chain altogether.
  Batch close;
  close.remove.pinholes = {web};
  ASSERT_OK(backend_->Apply(close));
  EXPECT_FALSE(Ask(*outside_, "tcp", "fd00:99::2", 80, 0.5).ok());
  EXPECT_THAT(host_->Exec("nft list chain inet fabric_nat forward"),
              IsOkAndHolds(HasSubstr("drop")));
  Batch off;
  off.remove.pinholes = {from_outside, from_elsewhere};
  off.remove.firewall6_interfaces = {"wan0"};
  ASSERT_OK(backend_->Apply(off));
  EXPECT_FALSE(host_->Exec("nft list chain inet fabric_nat forward 2>&1").ok());
  EXPECT_THAT(Ask(*outside_, "tcp", "fd00:99::2", 80), IsOkAndHolds(HasSubstr("web")));
  ASSERT_OK_AND_ASSIGN(k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_TRUE(k.rules.empty()) << k.rules.DebugString();
}

}  // namespace
}  // namespace fabric::nat

namespace fabric::nat {
namespace {

TEST_F(NftablesBackendTest, CountsConnectionsPerRuleKindAndPerMapping) {
  Serve("tcp", 80, "web");
  DnatElement web = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  DnatElement idle = Dnat(Protocol::kTcp, std::nullopt, 8081, "10.99.0.2", 80);
  RuleSet rules;
  rules.dnat = {web, idle};
  ASSERT_OK(backend_->Replace(rules));
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds(HasSubstr("web")));
  }
  ASSERT_OK_AND_ASSIGN(auto counts, backend_->ConnectionCounts());
  // One count per connection (NAT sees first packets only), however many
  // packets each carried.
  EXPECT_EQ(counts["dnat"], 3u);
  EXPECT_EQ(counts["masquerade"], 0u);
  ASSERT_OK_AND_ASSIGN(KernelState k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_EQ(k.dnat_connections[web], 3u);
  EXPECT_EQ(k.dnat_connections[idle], 0u);
}

// Fixed-address SNAT: one tagged rule per entry before the masquerade
// rules, read back from its comment, healed like the rest.
TEST_F(NftablesBackendTest, SnatRulesTranslateReadBackAndHeal) {
  ASSERT_OK(testing::Serve(*outside_, "tcp", 9999, "outside"));
  SnatRule snat{*Prefix::Parse("10.99.0.0/24"), Ip("192.0.2.10"), "wan0"};
  RuleSet rules;
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("fd00:99::/64")};
  rules.snat = {snat};
  ASSERT_OK(backend_->Replace(rules));
  // SNAT wins over masquerade for the same source; IPv6 is masqueraded.
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.10\n"));
  EXPECT_THAT(Ask(*container_, "tcp", "2001:db8::2", 9999),
              IsOkAndHolds("outside 2001:db8::1\n"));
  ASSERT_OK_AND_ASSIGN(std::string listing, host_->Exec("nft list chain inet fabric_nat postrouting"));
  EXPECT_THAT(listing, HasSubstr("oifname \"wan0\" ip saddr 10.99.0.0/24 ip daddr != 10.99.0.0/24 "
                                 "counter packets 1"));
  EXPECT_THAT(listing, HasSubstr("snat ip to 192.0.2.10 comment "
                                 "\"fabric-nat snat 10.99.0.0/24 to 192.0.2.10 oif wan0\""));
  ASSERT_OK_AND_ASSIGN(KernelState k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_EQ(k.rules, rules) << k.rules.DebugString();
  ASSERT_OK_AND_ASSIGN(auto counts, backend_->ConnectionCounts());
  EXPECT_EQ(counts["snat"], 1u);
  EXPECT_EQ(counts["masquerade"], 1u);  // the IPv6 connection

  // Removed in a batch: masquerade takes over.
  Batch off;
  off.remove.snat = {snat};
  ASSERT_OK(backend_->Apply(off));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.1\n"));
  Batch on;
  on.add.snat = {snat};
  ASSERT_OK(backend_->Apply(on));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.10\n"));
  ASSERT_OK_AND_ASSIGN(k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_EQ(k.rules, rules);

  // The rule rewritten to another address under its own comment: damaged.
  ASSERT_OK(host_->Exec(
      "h=$(nft -a list chain inet fabric_nat postrouting | grep 'fabric-nat snat' | "
      "sed 's/.*# handle //') && nft replace rule inet fabric_nat postrouting handle $h "
      "oifname wan0 meta nfproto ipv4 ip saddr 10.99.0.0/24 ip daddr != 10.99.0.0/24 counter "
      "snat ip to 192.0.2.1 comment '\"fabric-nat snat 10.99.0.0/24 to 192.0.2.10 oif wan0\"'"));
  ASSERT_OK_AND_ASSIGN(k, backend_->Read());
  EXPECT_FALSE(k.layout_intact);
  EXPECT_THAT(k.problem, HasSubstr("chain postrouting"));
  ASSERT_OK_AND_ASSIGN(SyncReport report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);

  // `nft flush ruleset`: Sync lays it down again.
  ASSERT_OK(host_->Exec("nft flush ruleset"));
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);
  EXPECT_EQ(report.changes.add.snat, rules.snat);
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.10\n"));
  ASSERT_OK_AND_ASSIGN(k, backend_->Read());
  EXPECT_TRUE(k.layout_intact) << k.problem;
  EXPECT_EQ(k.rules, rules);
}

TEST_F(NftablesBackendTest, SnatRulesAreCappedAndValidated) {
  RuleSet many;
  for (int i = 0; i <= static_cast<int>(kMaxSnatRules); ++i) {
    many.snat.insert(SnatRule{*Prefix::Parse(absl::StrCat("10.", i / 256, ".", i % 256, ".0/24")),
                              Ip("192.0.2.10"), ""});
  }
  EXPECT_THAT(backend_->Replace(many),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("at most 256")));
  ASSERT_OK(backend_->Replace(RuleSet{}));
  Batch bad;
  bad.add.snat = {SnatRule{*Prefix::Parse("10.99.0.0/24"), Ip("127.0.0.1"), ""}};
  EXPECT_THAT(backend_->Apply(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                             HasSubstr("unicast")));
  ASSERT_OK_AND_ASSIGN(KernelState k, backend_->Read());
  EXPECT_TRUE(k.rules.empty());
}

}  // namespace
}  // namespace fabric::nat
