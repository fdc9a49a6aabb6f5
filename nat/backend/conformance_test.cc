// One conformance suite for every kernel backend: the same RuleSets, the
// same batches, the same real packets through the three-namespace topology
// (testing/backend_topology.h), over NftablesBackend and IptablesBackend.
// A behaviour belongs here when the Backend contract promises it; what is
// particular to one backend (nftables' rule layout and change events,
// iptables' rollback, xtables lock and fingerprint watcher) stays in that
// backend's own test.
//
// Differences by design, not tested here: nftables reports foreign changes
// as netlink events (nftables/monitor.h), iptables by a fingerprint poll
// (iptables/change_watcher.h); the way "someone flushes our rules" is
// spelled differs per backend (Flavour::wipe).
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/backend.h"
#include "nat/backend/iptables/iptables_backend.h"
#include "nat/backend/nftables/nftables_backend.h"
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

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

struct Flavour {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<Backend>>()> make;
  // Shell commands in the host namespace: remove every rule and chain of
  // ours behind the backend's back (`nft flush ruleset` and its iptables
  // equivalent), and remove the mapping tcp 8080 -> 10.99.0.2:80 only.
  std::string wipe;
  std::string delete_8080;
};

template <typename B>
absl::StatusOr<std::unique_ptr<Backend>> Make() {
  absl::StatusOr<std::unique_ptr<B>> b = B::Create();
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
}

class ConformanceTest : public ::testing::TestWithParam<Flavour> {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel tests run as root";
    ASSERT_OK_AND_ASSIGN(testing::BackendTopology t, testing::MakeBackendTopology());
    host_ = std::move(t.host);
    outside_ = std::move(t.outside);
    container_ = std::move(t.container);
    // Both backends work in the namespace of the calling thread (libiptc per
    // call, /proc/sys for route_localnet): stay in the host's.
    ASSERT_OK_AND_ASSIGN(enter_, ScopedNetns::Enter(*host_));
    ASSERT_OK_AND_ASSIGN(backend_, GetParam().make());
  }
  void TearDown() override {
    backend_.reset();
    enter_.reset();
  }

  void Serve(Netns& ns, const std::string& proto, int port, const std::string& token) {
    ASSERT_OK(testing::Serve(ns, proto, port, token));
  }
  absl::StatusOr<std::string> Ask(const Netns& from, const std::string& proto,
                                  const std::string& host, int port, double timeout = 2.0) {
    return testing::Ask(from, proto, host, port, timeout);
  }
  void ExpectReadBack(const RuleSet& rules) {
    ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
    EXPECT_TRUE(state.table_present);
    EXPECT_TRUE(state.layout_intact) << state.problem;
    EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  }

  std::unique_ptr<Netns> host_, outside_, container_;
  std::unique_ptr<ScopedNetns> enter_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(ConformanceTest, AnyAddressMappingsForwardTcpUdpV4AndV6) {
  Serve(*container_, "tcp", 80, "web");
  Serve(*container_, "udp", 53, "dns");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "fd00:99::2", 53)};
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "udp", "192.0.2.1", 5353), IsOkAndHolds("dns 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8080), IsOkAndHolds("web 2001:db8::2\n"));
  EXPECT_THAT(Ask(*outside_, "udp", "2001:db8::1", 5353), IsOkAndHolds("dns 2001:db8::2\n"));
  // Any local address: the host's second address answers too.
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, HostAddressMappingAnswersOnlyThere) {
  Serve(*container_, "tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, Ip("192.0.2.10"), 9090, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, Ip("2001:db8::1"), 9090, "fd00:99::2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 9090), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 9090, 0.5).ok());
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 9090), IsOkAndHolds("web 2001:db8::2\n"));
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, PortRangesKeepThePort) {
  Serve(*container_, "tcp", 7001, "range");
  PortMapping m;
  m.protocol = Protocol::kTcp;
  m.host_port = 7000;
  m.port_count = 3;
  m.target_ip = Ip("10.99.0.2");
  m.target_port = 7000;
  RuleSet rules;
  for (const DnatElement& e : m.ToElements()) rules.dnat.insert(e);
  m.host_ip = Ip("2001:db8::1");
  m.target_ip = Ip("fd00:99::2");
  for (const DnatElement& e : m.ToElements()) rules.dnat.insert(e);
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 7001), IsOkAndHolds("range 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 7001), IsOkAndHolds("range 2001:db8::2\n"));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 7003, 0.5).ok());
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, MasqueradeAndHairpin) {
  Serve(*container_, "tcp", 80, "web");
  Serve(*outside_, "tcp", 9999, "outside");
  // Without masquerade the outside has no route back to the container.
  EXPECT_FALSE(Ask(*container_, "tcp", "192.0.2.2", 9999, 0.5).ok());
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("fd00:99::/64")};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.1\n"));
  EXPECT_THAT(Ask(*container_, "tcp", "2001:db8::2", 9999), IsOkAndHolds("outside 2001:db8::1\n"));
  // Hairpin: the container reaches its own published port through the
  // host's address and sees the host's address as the peer.
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  ExpectReadBack(rules);
}

// Fixed-address SNAT: the outside sees the `to` address for the SNAT
// sources, the host's (masquerade) for the others of the same network.
TEST_P(ConformanceTest, SnatToAFixedAddressWinsOverMasquerade) {
  Serve(*outside_, "tcp", 9999, "outside");
  // A second source in the container; a second IPv6 address on the host
  // for the outside to answer to.
  ASSERT_OK(container_->Exec("ip addr add 10.99.0.3/24 dev eth0 && "
                             "ip addr add fd00:99::3/64 dev eth0 nodad"));
  // Deprecated, so that masquerade keeps choosing 2001:db8::1.
  ASSERT_OK(host_->Exec("ip addr add 2001:db8::10/128 dev wan0 nodad preferred_lft 0"));
  auto ask_from = [&](const char* source, const char* host) {
    return container_->Exec(absl::StrCat("/usr/bin/python3 ", testing::NetTool(), " ask tcp ",
                                         host, " 9999 --timeout 2 --source ", source));
  };
  RuleSet rules;
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("fd00:99::/64")};
  rules.snat = {SnatRule{*Prefix::Parse("10.99.0.2/32"), Ip("192.0.2.10"), "wan0"},
                SnatRule{*Prefix::Parse("fd00:99::2/128"), Ip("2001:db8::10"), ""}};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(ask_from("10.99.0.2", "192.0.2.2"), IsOkAndHolds("outside 192.0.2.10\n"));
  EXPECT_THAT(ask_from("10.99.0.3", "192.0.2.2"), IsOkAndHolds("outside 192.0.2.1\n"));
  EXPECT_THAT(ask_from("fd00:99::2", "2001:db8::2"), IsOkAndHolds("outside 2001:db8::10\n"));
  EXPECT_THAT(ask_from("fd00:99::3", "2001:db8::2"), IsOkAndHolds("outside 2001:db8::1\n"));
  ExpectReadBack(rules);

  // Removed by a batch: that source is masqueraded again.
  Batch off;
  off.remove.snat = {SnatRule{*Prefix::Parse("10.99.0.2/32"), Ip("192.0.2.10"), "wan0"}};
  ASSERT_OK(backend_->Apply(off));
  ASSERT_OK(ApplyBatch(off, &rules));
  EXPECT_THAT(ask_from("10.99.0.2", "192.0.2.2"), IsOkAndHolds("outside 192.0.2.1\n"));
  ExpectReadBack(rules);
  // On another interface than the one the traffic leaves by: no SNAT.
  Batch elsewhere;
  elsewhere.add.snat = {SnatRule{*Prefix::Parse("10.99.0.2/32"), Ip("192.0.2.10"), "ctr0"}};
  ASSERT_OK(backend_->Apply(elsewhere));
  ASSERT_OK(ApplyBatch(elsewhere, &rules));
  EXPECT_THAT(ask_from("10.99.0.2", "192.0.2.2"), IsOkAndHolds("outside 192.0.2.1\n"));
  ExpectReadBack(rules);
  // Adding what is there is refused and changes nothing.
  EXPECT_THAT(backend_->Apply(elsewhere), StatusIs(absl::StatusCode::kAlreadyExists));
  ExpectReadBack(rules);

  // Wiped behind the backend's back: Sync lays the SNAT rules down again.
  ASSERT_OK(host_->Exec(GetParam().wipe));
  ASSERT_OK_AND_ASSIGN(SyncReport report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);
  EXPECT_THAT(ask_from("fd00:99::2", "2001:db8::2"), IsOkAndHolds("outside 2001:db8::10\n"));
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, LocalhostAccess) {
  Serve(*container_, "tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_FALSE(Ask(*host_, "tcp", "127.0.0.1", 8080, 0.5).ok());
  Batch on;
  on.add.localhost_interfaces = {"ctr0"};
  ASSERT_OK(backend_->Apply(on));
  rules.localhost_interfaces = {"ctr0"};
  EXPECT_THAT(Ask(*host_, "tcp", "127.0.0.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  EXPECT_THAT(host_->Exec("cat /proc/sys/net/ipv4/conf/ctr0/route_localnet"), IsOkAndHolds("1\n"));
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, AConflictingBatchChangesNothing) {
  Serve(*container_, "udp", 53, "dns");
  DnatElement present = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  DnatElement fresh = Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53);
  DnatElement fresh6 = Dnat(Protocol::kUdp, std::nullopt, 5353, "fd00:99::2", 53);
  RuleSet rules;
  rules.dnat = {present};
  ASSERT_OK(backend_->Replace(rules));
  // Adding what is there fails, and the rest of the batch (both families)
  // is not made either.
  Batch dup;
  dup.add.dnat = {present, fresh, fresh6};
  dup.add.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  EXPECT_THAT(backend_->Apply(dup), StatusIs(absl::StatusCode::kAlreadyExists,
                                             HasSubstr("tcp 0.0.0.0:8080 -> 10.99.0.2:80")));
  // Removing what is not there fails the same way.
  Batch missing;
  missing.remove.dnat = {fresh};
  missing.add.dnat = {fresh6};
  EXPECT_THAT(backend_->Apply(missing),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("udp 0.0.0.0:5353 -> 10.99.0.2:53")));
  EXPECT_FALSE(Ask(*outside_, "udp", "192.0.2.1", 5353, 0.5).ok());
  EXPECT_FALSE(Ask(*outside_, "udp", "2001:db8::1", 5353, 0.5).ok());
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, ReadBackEqualsWhatWasApplied) {
  ASSERT_OK(backend_->Replace(RuleSet{}));
  ExpectReadBack(RuleSet{});
  RuleSet rules;
  for (int i = 0; i < 500; ++i) {
    std::string target = absl::StrCat("10.99.", 1 + i / 250, ".", 1 + i % 250);
    rules.dnat.insert(
        Dnat(i % 2 ? Protocol::kUdp : Protocol::kTcp, std::nullopt, 20000 + i, target.c_str(), 80));
  }
  rules.dnat.insert(Dnat(Protocol::kTcp, Ip("2001:db8::1"), 443, "fd00:99::2", 8443));
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("10.99.1.0/24"),
                   *Prefix::Parse("fd00:99::/64")};
  rules.masquerade = {*Prefix::Parse("0.0.0.0/0"), *Prefix::Parse("::/0")};
  Batch add;
  add.add = rules;
  ASSERT_OK(backend_->Apply(add));
  ExpectReadBack(rules);
  Batch remove;
  remove.remove.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  remove.remove.dnat = {*rules.dnat.begin()};
  ASSERT_OK(backend_->Apply(remove));
  ASSERT_OK(ApplyBatch(remove, &rules));
  ExpectReadBack(rules);
}

TEST_P(ConformanceTest, ReplaceSwapsTheWholeRuleSet) {
  Serve(*container_, "tcp", 80, "web");
  RuleSet a;
  a.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  a.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  RuleSet b;
  b.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8081, "10.99.0.2", 80),
            Dnat(Protocol::kTcp, std::nullopt, 8081, "fd00:99::2", 80)};
  ASSERT_OK(backend_->Replace(a));
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8080).ok());
  ASSERT_OK(backend_->Replace(b));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8081), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8081), IsOkAndHolds("web 2001:db8::2\n"));
  ExpectReadBack(b);
  ASSERT_OK(backend_->Replace(b));  // the same again: fine
  ExpectReadBack(b);
}

TEST_P(ConformanceTest, DeleteTableRemovesOurs) {
  Serve(*container_, "tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8080).ok());
  ASSERT_OK(backend_->DeleteTable());
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_FALSE(state.table_present);
  EXPECT_TRUE(state.rules.empty());
  EXPECT_OK(backend_->DeleteTable());  // already gone: fine
  // Apply needs the table: kFailedPrecondition until a Replace.
  Batch add;
  add.add = rules;
  EXPECT_THAT(backend_->Apply(add), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_P(ConformanceTest, SyncRestoresWhatSomeoneRemoved) {
  Serve(*container_, "tcp", 80, "web");
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, std::nullopt, 8081, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80)};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(SyncReport report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kNone);

  // Everything of ours flushed.
  ASSERT_OK(host_->Exec(GetParam().wipe));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kReplaced);
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  ExpectReadBack(rules);

  // One mapping deleted: one element batch puts it back.
  ASSERT_OK(host_->Exec(GetParam().delete_8080));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kApplied) << report.DebugString();
  EXPECT_EQ(report.changes.add.dnat.size(), 1u);
  EXPECT_TRUE(Ask(*outside_, "tcp", "192.0.2.1", 8080).ok());
  ASSERT_OK_AND_ASSIGN(report, Sync(*backend_, rules));
  EXPECT_EQ(report.action, SyncReport::Action::kNone);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ConformanceTest,
    ::testing::Values(
        Flavour{"nftables", Make<NftablesBackend>, "nft flush ruleset",
                "nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }'"},
        Flavour{"iptables", Make<IptablesBackend>,
                "for t in iptables-legacy ip6tables-legacy; do for table in nat filter; do "
                "$t -t $table -F && $t -t $table -X || exit 1; done; done",
                "iptables-legacy -t nat -D FABRIC-HOSTPORTS -p tcp -m tcp --dport 8080 "
                "-j DNAT --to-destination 10.99.0.2:80"}),
    [](const ::testing::TestParamInfo<Flavour>& info) { return info.param.name; });

}  // namespace
}  // namespace fabric::nat
