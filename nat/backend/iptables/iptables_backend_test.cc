// Kernel tests for the iptables (libiptc, legacy x_tables) backend: the same
// behaviour as the nftables backend, proven with real packets in namespaces
// made here.
//
// (topology: testing/backend_topology.h)
#include "nat/backend/iptables/iptables_backend.h"

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

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

class IptablesBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    ASSERT_OK_AND_ASSIGN(testing::BackendTopology t, testing::MakeBackendTopology());
    host_ = std::move(t.host);
    outside_ = std::move(t.outside);
    container_ = std::move(t.container);
    // libiptc works on the namespace of the calling thread, per call.
    ASSERT_OK_AND_ASSIGN(enter_, ScopedNetns::Enter(*host_));
    ASSERT_OK_AND_ASSIGN(backend_, IptablesBackend::Create());
  }
  void TearDown() override { enter_.reset(); }

  std::unique_ptr<Netns> host_, outside_, container_;
  std::unique_ptr<ScopedNetns> enter_;
  std::unique_ptr<IptablesBackend> backend_;
};

TEST_F(IptablesBackendTest, PublishedPortsForwardAndReadBackExactly) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  ASSERT_OK(testing::Serve(*container_, "udp", 53, "dns"));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80),
                Dnat(Protocol::kTcp, Ip("192.0.2.10"), 9090, "10.99.0.2", 80)};
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "udp", "192.0.2.1", 5353), IsOkAndHolds("dns 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8::1", 8080),
              IsOkAndHolds("web 2001:db8::2\n"));
  // A host-address mapping answers only on that address.
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.10", 9090), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 9090, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  // What iptables itself shows.
  EXPECT_THAT(host_->Exec("iptables-legacy-save -t nat"),
              IsOkAndHolds(HasSubstr("-A FABRIC-HOSTPORTS -p tcp -m tcp --dport 8080 -j DNAT "
                                     "--to-destination 10.99.0.2:80")));
}

TEST_F(IptablesBackendTest, PortRangesMasqueradeHairpinLocalhost) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 7001, "range"));
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  ASSERT_OK(testing::Serve(*outside_, "tcp", 9999, "outside"));
  PortMapping range;
  range.protocol = Protocol::kTcp;
  range.host_port = 7000;
  range.port_count = 3;
  range.target_ip = Ip("10.99.0.2");
  range.target_port = 7000;
  RuleSet rules;
  for (const DnatElement& e : range.ToElements()) rules.dnat.insert(e);
  rules.dnat.insert(Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80));
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  rules.localhost_interfaces = {"ctr0"};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.1", 7001), IsOkAndHolds("range 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*container_, "tcp", "192.0.2.2", 9999),
              IsOkAndHolds("outside 192.0.2.1\n"));
  EXPECT_THAT(testing::Ask(*container_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  EXPECT_THAT(testing::Ask(*host_, "tcp", "127.0.0.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
}

TEST_F(IptablesBackendTest, BatchesAreAllOrNothing) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  DnatElement present = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  DnatElement fresh = Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53);
  RuleSet rules;
  rules.dnat = {present};
  ASSERT_OK(backend_->Replace(rules));
  Batch dup;
  dup.add.dnat = {present, fresh};
  EXPECT_THAT(backend_->Apply(dup), StatusIs(absl::StatusCode::kAlreadyExists,
                                             HasSubstr("tcp 0.0.0.0:8080 -> 10.99.0.2:80")));
  Batch missing;
  missing.remove.dnat = {fresh};
  EXPECT_THAT(backend_->Apply(missing), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules);
  Batch remove;
  remove.remove.dnat = {present};
  ASSERT_OK(backend_->Apply(remove));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
}

TEST_F(IptablesBackendTest, ThousandMappingsReadBackAndForeignChangesShow) {
  RuleSet rules;
  for (int i = 0; i < 1000; ++i) {
    std::string target = absl::StrCat("10.99.", 1 + i / 250, ".", 1 + i % 250);
    rules.dnat.insert(Dnat(i % 2 ? Protocol::kUdp : Protocol::kTcp, std::nullopt, 20000 + i,
                           target.c_str(), 80));
  }
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.rules == rules);
  ASSERT_OK(host_->Exec("iptables-legacy -t nat -D PREROUTING -m addrtype --dst-type LOCAL "
                        "-j FABRIC-HOSTPORTS"));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_FALSE(state.layout_intact);
  EXPECT_THAT(state.problem, HasSubstr("jump PREROUTING -> FABRIC-HOSTPORTS missing"));
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
}

TEST_F(IptablesBackendTest, DeleteTableTouchesNothingElse) {
  ASSERT_OK(host_->Exec("iptables-legacy -t nat -A PREROUTING -p tcp --dport 22 -j ACCEPT && "
                        "iptables-legacy -A FORWARD -s 10.0.0.0/8 -j ACCEPT"));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(backend_->DeleteTable());
  ASSERT_OK_AND_ASSIGN(std::string nat, host_->Exec("iptables-legacy-save -t nat"));
  EXPECT_THAT(nat, Not(HasSubstr("FABRIC")));
  EXPECT_THAT(nat, HasSubstr("-A PREROUTING -p tcp -m tcp --dport 22 -j ACCEPT"));
  EXPECT_THAT(host_->Exec("iptables-legacy-save -t filter"),
              IsOkAndHolds(HasSubstr("-A FORWARD -s 10.0.0.0/8 -j ACCEPT")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_FALSE(state.table_present);
}

}  // namespace
}  // namespace fabric::nat
