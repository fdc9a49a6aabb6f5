#include "agent/core.h"

#include <cstdio>
#include <fstream>

#include "agent/core/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    Restart();
  }

  void Restart() {
    core_.reset();
    auto store = Store::Open(dir_);
    ASSERT_OK(store.status());
    CoreOptions options{40000, 40099};
    options.now = [this] { return now_; };
    core_ = std::make_unique<AgentCore>(std::move(*store), &backend_,
                                        &conntrack_, options);
    ASSERT_OK(core_->Start());
  }

  static v1::Attachment Container(const std::string& cid,
                                  const std::string& addr, int host_port,
                                  int container_port) {
    v1::Attachment a;
    a.mutable_key()->set_container_id(cid);
    a.mutable_key()->set_ifname("eth0");
    a.mutable_key()->set_network_name("net1");
    a.set_netns_path("/run/netns/" + cid);
    a.add_container_addresses(addr);
    a.set_host_interface("cni0");
    a.mutable_options()->set_hairpin(true);
    if (host_port >= 0) {
      v1::PortMappingRequest* r = a.add_port_mappings();
      r->set_protocol(v1::PROTOCOL_TCP);
      r->set_host_port(host_port);
      r->set_container_port(container_port);
    }
    return a;
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  nat::FakeBackend backend_;
  nat::RecordingConntrackCleaner conntrack_;
  std::unique_ptr<AgentCore> core_;
};

TEST_F(CoreTest, AttachPublishesAndDetachRemovesEverything) {
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse r,
                       core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)));
  ASSERT_THAT(r.mappings(), SizeIs(1));
  EXPECT_EQ(r.mappings(0).host_port(), 8080u);
  EXPECT_EQ(r.mappings(0).owner().kind(), v1::OWNER_KIND_CNI);
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(backend_.rules().hairpin.size(), 1u);
  EXPECT_EQ(backend_.rules().hairpin.begin()->ToString(), "10.22.0.0/16");
  ASSERT_OK_AND_ASSIGN(bool existed, core_->Detach(Container("c1", "", 0, 0).key()));
  EXPECT_TRUE(existed);
  EXPECT_TRUE(backend_.rules().empty()) << backend_.rules().DebugString();
  EXPECT_TRUE(core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, "").empty());
  // Idempotent.
  ASSERT_OK_AND_ASSIGN(existed, core_->Detach(Container("c1", "", 0, 0).key()));
  EXPECT_FALSE(existed);
}

TEST_F(CoreTest, ConflictNamesTheHolderAndChangesNothing) {
  ASSERT_OK(core_->Attach(Container("3f2a9b", "10.22.0.5/16", 8080, 80)).status());
  nat::RuleSet before = backend_.rules();
  EXPECT_THAT(core_->Attach(Container("beef", "10.22.0.6/16", 8080, 80)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("host port 8080/tcp on 0.0.0.0 is held by "
                                 "container 3f2a9b (eth0, network net1)")));
  EXPECT_EQ(backend_.rules(), before);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, ""), SizeIs(1));
}

TEST_F(CoreTest, LongHexContainerIdsAreShortenedInMessages) {
  std::string id(64, 'a');
  id.replace(0, 6, "3f2a9b");
  ASSERT_OK(core_->Attach(Container(id, "10.22.0.5/16", 8080, 80)).status());
  EXPECT_THAT(core_->Attach(Container("beef", "10.22.0.6/16", 8080, 80)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("held by container 3f2a9baaaaaa (eth0")));
}

TEST_F(CoreTest, DualStackGetsOneMappingPerFamily) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", 8080, 80);
  a.add_container_addresses("fd00::5/64");
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse r, core_->Attach(a));
  ASSERT_THAT(r.mappings(), SizeIs(2));
  EXPECT_EQ(backend_.rules().dnat.size(), 2u);
  // A host IP limits the mapping to its family.
  v1::Attachment b = Container("c2", "10.23.0.5/16", -1, 0);
  b.add_container_addresses("fd01::5/64");
  v1::PortMappingRequest* m = b.add_port_mappings();
  m->set_host_ip("fd00::1");
  m->set_host_port(9000);
  m->set_container_port(90);
  ASSERT_OK_AND_ASSIGN(r, core_->Attach(b));
  ASSERT_THAT(r.mappings(), SizeIs(1));
  EXPECT_EQ(r.mappings(0).target_ip(), "fd01::5");
}

TEST_F(CoreTest, BadInputIsRefusedWithTheField) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", 8080, 0);
  EXPECT_THAT(core_->Attach(a),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("container port must be 1-65535")));
  a = Container("c1", "10.22.0.5/99", 8080, 80);
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("prefix length")));
  a = Container("c1", "10.22.0.5/16", 8080, 80);
  a.mutable_port_mappings(0)->set_host_ip("fd00::1");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("no container address")));
  EXPECT_TRUE(backend_.rules().empty());
}

// Issue 10, item 11: ids as CNI defines them, so that no two keys share an
// owner id ("victim/eth0" + "x" and "victim" + "eth0/x" used to).
TEST_F(CoreTest, AttachmentIdsFollowCniRulesSoOwnerKeysCannotCollide) {
  ASSERT_OK(core_->Attach(Container("victim", "10.22.0.5/16", 8080, 80)).status());
  v1::Attachment a = Container("victim/eth0", "10.22.0.6/16", 8081, 80);
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("container id \"victim/eth0\"")));
  a = Container("victim", "10.22.0.6/16", 8081, 80);
  a.mutable_key()->set_ifname("eth0/net1");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("may not contain '/'")));
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name("net1/x");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("network name \"net1/x\"")));
  a.mutable_key()->set_network_name("net1");
  a.mutable_key()->set_ifname("averyveryverylongifname");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("must be 1-15 bytes")));
  // A DEL with such a key cannot remove the other's mapping.
  v1::AttachmentKey other;
  other.set_container_id("victim");
  other.set_ifname("eth0/net1");
  other.set_network_name("");
  EXPECT_THAT(core_->Detach(other), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_CNI, ""), SizeIs(1));
  a = Container("c9", "10.22.0.9/16", 8090, 80);
  a.mutable_options()->set_localhost(true);
  a.set_host_interface("all");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("needs a real host interface")));
  a.set_host_interface("all\n");
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("host interface")));
}

// Issue 10, item 12: a container network becomes a masquerade and hairpin
// prefix; a /0 would masquerade everyone.
TEST_F(CoreTest, ImplausibleContainerAddressesAndTargetsAreRefused) {
  for (const char* addr : {"10.22.0.5/0", "10.22.0.5/7", "fd00::5/16"}) {
    EXPECT_THAT(core_->Attach(Container("c1", addr, 8080, 80)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("is no container network")))
        << addr;
  }
  for (const char* addr : {"224.0.0.5/24", "10.22.255.255/16", "255.255.255.255/32", "ff02::1/64"}) {
    EXPECT_THAT(core_->Attach(Container("c1", addr, 8080, 80)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be a unicast address")))
        << addr;
  }
  EXPECT_TRUE(backend_.rules().empty());
  for (const char* target : {"239.1.2.3", "255.255.255.255", "ff02::1"}) {
    v1::PortMapping m;
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id("t");
    m.set_protocol(v1::PROTOCOL_UDP);
    m.set_host_port(9000);
    m.set_target_ip(target);
    m.set_target_port(53);
    EXPECT_THAT(core_->CreateMapping(m), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  HasSubstr("routable unicast")))
        << target;
  }
}

// Issue 10, item 13.
TEST_F(CoreTest, ExpiresAtMustBeARepresentableFutureTime) {
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m.mutable_owner()->set_id("t");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.set_host_port(9000);
  m.set_target_ip("10.22.0.5");
  m.set_target_port(80);
  int64_t now = absl::ToUnixSeconds(now_);
  for (auto [seconds, nanos] : std::vector<std::pair<int64_t, int32_t>>{
           {int64_t{1} << 62, 0}, {-5, 0}, {now - 1, 0}, {now + 60, 2000000000},
           {now + 60, -1}}) {
    m.mutable_expires_at()->set_seconds(seconds);
    m.mutable_expires_at()->set_nanos(nanos);
    EXPECT_THAT(core_->CreateMapping(m),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expires_at must be")))
        << seconds << " " << nanos;
  }
  m.mutable_expires_at()->set_seconds(now + 3600);
  m.mutable_expires_at()->set_nanos(0);
  EXPECT_OK(core_->CreateMapping(m).status());
}

// Issue 10, item 16: the kernel lacking an element a change removes (a DEL
// right after someone deleted it by hand) is drift to repair, not "no such
// container"; other refusals are the kernel's, said so.
TEST_F(CoreTest, KernelDriftIsRepairedAndRefusalsAreNamedForWhatTheyAre) {
  ASSERT_OK(core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)).status());
  backend_.mutable_rules().dnat.clear();  // by hand
  EXPECT_THAT(core_->Detach(Container("c1", "", 0, 0).key()), ::fabric::testing::IsOkAndHolds(true));
  EXPECT_TRUE(backend_.rules().dnat.empty());
  EXPECT_EQ(core_->Status().repairs(), 1u);
  backend_.FailNext(absl::FailedPreconditionError("netlink: table changed"));
  EXPECT_THAT(core_->Attach(Container("c2", "10.22.0.6/16", 8081, 80)),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("the kernel refused the change: netlink: table changed")));
}

TEST_F(CoreTest, KernelFailureUndoesStoreAndPorts) {
  backend_.FailNext(absl::InternalError("netlink: boom"));
  EXPECT_THAT(core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("boom")));
  EXPECT_TRUE(core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, "").empty());
  // The port is free again, and the store holds nothing after a restart.
  ASSERT_OK(core_->Attach(Container("c2", "10.22.0.6/16", 8080, 80)).status());
  Restart();
  auto list = core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, "");
  ASSERT_THAT(list, SizeIs(1));
  EXPECT_THAT(list[0].owner().id(), HasSubstr("c2/"));
}

TEST_F(CoreTest, StateSurvivesRestartAndKernelIsResynced) {
  ASSERT_OK(core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)).status());
  nat::RuleSet want = backend_.rules();
  backend_.DeleteTable().IgnoreError();  // e.g. a flush while the agent was down
  Restart();
  EXPECT_EQ(backend_.rules(), want);
  // Still held after restart.
  EXPECT_THAT(core_->Attach(Container("c9", "10.22.0.9/16", 8080, 80)),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("c1")));
  // Mapping ids never repeat across restarts.
  ASSERT_OK_AND_ASSIGN(auto r, core_->Attach(Container("c2", "10.22.0.6/16", 8081, 80)));
  EXPECT_EQ(r.mappings(0).id(), "m-2");
}

TEST_F(CoreTest, ReattachSameIsIdempotentDifferentIsRefused) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", 8080, 80);
  ASSERT_OK_AND_ASSIGN(auto r1, core_->Attach(a));
  ASSERT_OK_AND_ASSIGN(auto r2, core_->Attach(a));
  EXPECT_EQ(r1.mappings(0).id(), r2.mappings(0).id());
  a.mutable_port_mappings(0)->set_host_port(8081);
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kAlreadyExists,
                                         HasSubstr("different configuration")));
}

TEST_F(CoreTest, SharedNetworkRulesStayUntilLastContainerGoes) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", -1, 0);
  a.mutable_options()->set_masquerade(true);
  v1::Attachment b = Container("c2", "10.22.0.6/16", -1, 0);
  b.mutable_options()->set_masquerade(true);
  ASSERT_OK(core_->Attach(a).status());
  ASSERT_OK(core_->Attach(b).status());
  EXPECT_EQ(backend_.rules().masquerade.size(), 1u);
  ASSERT_OK(core_->Detach(a.key()).status());
  EXPECT_EQ(backend_.rules().masquerade.size(), 1u);
  ASSERT_OK(core_->Detach(b.key()).status());
  EXPECT_TRUE(backend_.rules().masquerade.empty());
}

TEST_F(CoreTest, SnatAddressReplacesMasqueradeAndSurvivesRestart) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", -1, 0);
  a.add_container_addresses("fd00::5/64");
  a.mutable_options()->set_masquerade(true);
  a.mutable_options()->set_snat_address("203.0.113.5");
  ASSERT_OK(core_->Attach(a).status());
  const nat::SnatRule rule{*nat::Prefix::Parse("10.22.0.0/16"),
                           *nat::IpAddress::Parse("203.0.113.5"), ""};
  EXPECT_EQ(backend_.rules().snat, std::set<nat::SnatRule>{rule});
  // The other family keeps masquerade.
  ASSERT_EQ(backend_.rules().masquerade.size(), 1u);
  EXPECT_EQ(backend_.rules().masquerade.begin()->ToString(), "fd00::/64");
  ASSERT_OK(core_->Check(a.key()));
  Restart();  // the option is stored with the attachment
  EXPECT_EQ(core_->Desired().snat, std::set<nat::SnatRule>{rule});
  EXPECT_EQ(backend_.rules().snat, std::set<nat::SnatRule>{rule});
  backend_.mutable_rules().snat.clear();
  EXPECT_THAT(core_->Check(a.key()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("snat 10.22.0.0/16 -> 203.0.113.5 via any")));
  ASSERT_OK_AND_ASSIGN(bool existed, core_->Detach(a.key()));
  EXPECT_TRUE(existed);
  EXPECT_TRUE(core_->Desired().snat.empty());
}

TEST_F(CoreTest, BadSnatAddressesAreRefused) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", -1, 0);
  for (const char* bad : {"wan0", "127.0.0.1", "224.0.0.1"}) {
    a.mutable_options()->set_snat_address(bad);
    EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("snat")))
        << bad;
  }
  a.mutable_options()->set_snat_address("2001:db8::5");
  EXPECT_THAT(core_->Attach(a),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("snat address 2001:db8::5 is ipv6 but the container has no "
                                 "address of that family")));
  EXPECT_TRUE(backend_.rules().empty());
}

TEST_F(CoreTest, StaticSnatRulesFollowTheFileAndShareRulesWithCni) {
  const nat::SnatRule lan{*nat::Prefix::Parse("192.168.1.0/24"),
                          *nat::IpAddress::Parse("203.0.113.5"), "wan0"};
  const nat::SnatRule cni{*nat::Prefix::Parse("10.22.0.0/16"),
                          *nat::IpAddress::Parse("203.0.113.6"), ""};
  StaticConfig file;
  file.snat = {lan, cni};
  ASSERT_OK_AND_ASSIGN(StaticDiff d, core_->ApplyStaticForwards(file));
  EXPECT_EQ(d.snat_added, 2);
  EXPECT_EQ(backend_.rules().snat, (std::set<nat::SnatRule>{lan, cni}));
  // A container network asking for the same rule: one kernel rule, kept
  // while either wants it.
  v1::Attachment a = Container("c1", "10.22.0.5/16", -1, 0);
  a.mutable_options()->set_snat_address("203.0.113.6");
  ASSERT_OK(core_->Attach(a).status());
  file.snat = {lan};
  ASSERT_OK_AND_ASSIGN(d, core_->ApplyStaticForwards(file));
  EXPECT_EQ(d.snat_removed, 1);
  EXPECT_EQ(backend_.rules().snat, (std::set<nat::SnatRule>{lan, cni}));
  ASSERT_OK(core_->Detach(a.key()).status());
  EXPECT_EQ(backend_.rules().snat, std::set<nat::SnatRule>{lan});
  // The same file again changes nothing; an invalid rule changes nothing.
  ASSERT_OK_AND_ASSIGN(d, core_->ApplyStaticForwards(file));
  EXPECT_EQ(d.snat_added + d.snat_removed, 0);
  StaticConfig bad = file;
  bad.snat.push_back(nat::SnatRule{*nat::Prefix::Parse("10.9.0.0/16"),
                                   *nat::IpAddress::Parse("127.0.0.1"), ""});
  EXPECT_THAT(core_->ApplyStaticForwards(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(backend_.rules().snat, std::set<nat::SnatRule>{lan});
  // Not stored: the file is applied again at start.
  Restart();
  EXPECT_TRUE(core_->Desired().snat.empty());
}

TEST_F(CoreTest, CheckFindsMissingRules) {
  v1::Attachment a = Container("c1", "10.22.0.5/16", 8080, 80);
  ASSERT_OK(core_->Attach(a).status());
  EXPECT_OK(core_->Check(a.key()));
  backend_.mutable_rules().dnat.clear();
  EXPECT_THAT(core_->Check(a.key()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("dnat tcp 0.0.0.0:8080 -> 10.22.0.5:80")));
  EXPECT_THAT(core_->Check(Container("zz", "", 0, 0).key()),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(auto report, core_->Resync());
  EXPECT_EQ(report.action, nat::SyncReport::Action::kApplied);
  EXPECT_OK(core_->Check(a.key()));
  EXPECT_EQ(core_->Status().repairs(), 1u);
}

TEST_F(CoreTest, GarbageCollectKeepsOnlyValidOfThatNetwork) {
  ASSERT_OK(core_->Attach(Container("keep", "10.22.0.5/16", 8080, 80)).status());
  ASSERT_OK(core_->Attach(Container("gone", "10.22.0.6/16", 8081, 80)).status());
  v1::Attachment other = Container("other", "10.22.0.7/16", 8082, 80);
  other.mutable_key()->set_network_name("net2");
  ASSERT_OK(core_->Attach(other).status());
  v1::AttachmentKey keep;
  keep.set_container_id("keep");
  keep.set_ifname("eth0");
  ASSERT_OK_AND_ASSIGN(auto removed, core_->GarbageCollect("net1", {keep}));
  ASSERT_THAT(removed, SizeIs(1));
  EXPECT_EQ(removed[0].container_id(), "gone");
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, ""), SizeIs(2));
}

TEST_F(CoreTest, ApiMappingsShareTheAllocatorWithContainers) {
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m.mutable_owner()->set_id("web-svc");
  m.set_protocol(v1::PROTOCOL_UDP);
  m.set_target_ip("10.22.0.9");
  m.set_target_port(53);
  ASSERT_OK_AND_ASSIGN(v1::PortMapping made, core_->CreateMapping(m));
  EXPECT_GE(made.host_port(), 40000u);
  EXPECT_LE(made.host_port(), 40099u);
  EXPECT_THAT(conntrack_.calls, SizeIs(1));  // UDP: stale flows forgotten
  v1::Attachment a = Container("c1", "10.22.0.5/16", -1, 0);
  v1::PortMappingRequest* r = a.add_port_mappings();
  r->set_protocol(v1::PROTOCOL_UDP);
  r->set_host_port(made.host_port());
  r->set_container_port(53);
  EXPECT_THAT(core_->Attach(a), StatusIs(absl::StatusCode::kAlreadyExists,
                                         HasSubstr("web-svc")));
  EXPECT_THAT(core_->DeleteMapping("m-999"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(core_->DeleteMapping(made.id()));
  EXPECT_OK(core_->Attach(a).status());
  auto cni = core_->ListMappings(v1::OWNER_KIND_CNI, "");
  ASSERT_THAT(cni, SizeIs(1));
  EXPECT_THAT(core_->DeleteMapping(cni[0].id()),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

// A listing of one owner reads the owner index, not every mapping: it must
// hold exactly that owner's mappings through creates, deletes, a failed
// transaction, a restart, an owner past the index's flat size, and an id
// shared by owners of two kinds.
TEST_F(CoreTest, ListingOneOwnerSeesExactlyItsMappingsThroughChangesAndRestart) {
  auto create = [&](const std::string& owner) {
    v1::PortMapping m;
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id(owner);
    m.set_protocol(v1::PROTOCOL_TCP);
    m.set_target_ip("10.22.0.9");
    m.set_target_port(80);
    return core_->CreateMapping(m);
  };
  auto ids = [&](v1::OwnerKind kind, const std::string& owner) {
    std::vector<std::string> out;
    for (const v1::PortMapping& m : core_->ListMappings(kind, owner)) {
      EXPECT_EQ(m.owner().id(), owner);
      out.push_back(m.id());
    }
    return out;
  };
  std::vector<std::string> big, small;
  for (int i = 0; i < 70; ++i) {  // past OwnerIndex::kFlat (64)
    ASSERT_OK_AND_ASSIGN(v1::PortMapping m, create(i % 10 == 0 ? "small" : "big"));
    (i % 10 == 0 ? small : big).push_back(m.id());
  }
  // An attachment whose owner id is the same text as an API owner's.
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse att,
                       core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)));
  std::string cni_owner = att.mappings(0).owner().id();
  ASSERT_OK(create(cni_owner).status());
  backend_.FailNext(absl::InternalError("netlink: boom"));
  EXPECT_THAT(create("small"), StatusIs(absl::StatusCode::kInternal));
  std::sort(big.begin(), big.end());
  std::sort(small.begin(), small.end());
  EXPECT_EQ(ids(v1::OWNER_KIND_API, "big"), big);
  EXPECT_EQ(ids(v1::OWNER_KIND_UNSPECIFIED, "small"), small);
  EXPECT_THAT(ids(v1::OWNER_KIND_CNI, cni_owner), ElementsAre(att.mappings(0).id()));
  EXPECT_THAT(ids(v1::OWNER_KIND_UNSPECIFIED, cni_owner), SizeIs(2));
  EXPECT_THAT(ids(v1::OWNER_KIND_NATPMP, "big"), IsEmpty());
  EXPECT_THAT(ids(v1::OWNER_KIND_UNSPECIFIED, "nobody"), IsEmpty());

  // Delete most of big (back under the flat size) and one of small.
  while (big.size() > 5) {
    ASSERT_OK(core_->DeleteMapping(big.back()));
    big.pop_back();
  }
  ASSERT_OK(core_->DeleteMapping(small.front()));
  small.erase(small.begin());
  ASSERT_OK(core_->Detach(Container("c1", "", 0, 0).key()).status());
  EXPECT_EQ(ids(v1::OWNER_KIND_API, "big"), big);
  EXPECT_EQ(ids(v1::OWNER_KIND_API, "small"), small);
  EXPECT_THAT(ids(v1::OWNER_KIND_CNI, cni_owner), IsEmpty());
  Restart();
  EXPECT_EQ(ids(v1::OWNER_KIND_API, "big"), big);
  EXPECT_EQ(ids(v1::OWNER_KIND_API, "small"), small);
  EXPECT_THAT(ids(v1::OWNER_KIND_UNSPECIFIED, cni_owner), SizeIs(1));
}

TEST_F(CoreTest, PagesCoverEveryMappingOnceInIdOrder) {
  for (int i = 0; i < 23; ++i) {
    v1::PortMapping m;
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id(i % 3 == 0 ? "a" : "b");
    m.set_protocol(v1::PROTOCOL_UDP);
    m.set_target_ip("10.22.0.9");
    m.set_target_port(53);
    ASSERT_OK(core_->CreateMapping(m).status());
  }
  auto ids_of = [](const auto& ms) {
    std::vector<std::string> out;
    for (const v1::PortMapping& m : ms) out.push_back(m.id());
    return out;
  };
  for (const std::string owner : {"", "a", "b"}) {
    std::vector<std::string> all =
        ids_of(core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, owner));
    ASSERT_TRUE(std::is_sorted(all.begin(), all.end()));
    for (int size : {1, 4, 7, 22, 23, 24}) {
      std::vector<std::string> paged;
      std::string token;
      int pages = 0;
      do {
        ASSERT_OK_AND_ASSIGN(AgentCore::Page p,
                             core_->ListMappingsPage(v1::OWNER_KIND_UNSPECIFIED, owner, size, token));
        ASSERT_LE(p.mappings.size(), size);
        for (std::string& id : ids_of(p.mappings)) paged.push_back(id);
        token = p.next_page_token;
        ASSERT_LE(++pages, 30);
      } while (!token.empty());
      EXPECT_EQ(paged, all) << "owner '" << owner << "', pages of " << size;
    }
  }
  // A mapping removed between pages is simply not there; none repeats.
  ASSERT_OK_AND_ASSIGN(AgentCore::Page first,
                       core_->ListMappingsPage(v1::OWNER_KIND_UNSPECIFIED, "", 5, ""));
  ASSERT_OK(core_->DeleteMapping(first.mappings[4].id()));
  ASSERT_OK_AND_ASSIGN(AgentCore::Page second, core_->ListMappingsPage(
                                                   v1::OWNER_KIND_UNSPECIFIED, "", 5,
                                                   first.next_page_token));
  EXPECT_GT(second.mappings[0].id(), first.mappings[4].id());
  EXPECT_THAT(core_->ListMappingsPage(v1::OWNER_KIND_UNSPECIFIED, "", -1, ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("page_size -1")));
  EXPECT_THAT(core_->ListMappingsPage(v1::OWNER_KIND_UNSPECIFIED, "", 5, std::string(300, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("page_token of 300 bytes")));
}

TEST_F(CoreTest, SweepDetachesContainersWhoseNamespaceIsGone) {
  std::string alive = dir_ + "-netns-alive", dead = dir_ + "-netns-dead";
  for (const std::string& p : {alive, dead}) std::ofstream(p) << "";
  v1::Attachment a = Container("alive", "10.22.0.5/16", 8080, 80);
  a.set_netns_path(alive);
  v1::Attachment b = Container("dead", "10.22.0.6/16", 8081, 80);
  b.set_netns_path(dead);
  ASSERT_OK(core_->Attach(a).status());
  ASSERT_OK(core_->Attach(b).status());
  std::remove(dead.c_str());
  ASSERT_OK_AND_ASSIGN(auto swept, core_->SweepDeadNamespaces());
  ASSERT_THAT(swept, SizeIs(1));
  EXPECT_EQ(swept[0].container_id(), "dead");
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
}

TEST_F(CoreTest, CreateMappingTakesOnlyApiOwners) {
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_NATPMP);
  m.mutable_owner()->set_id("192.168.1.10");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.set_host_port(8080);
  m.set_target_ip("192.168.1.10");
  m.set_target_port(80);
  EXPECT_THAT(core_->CreateMapping(m), StatusIs(absl::StatusCode::kInvalidArgument,
                                                HasSubstr("owner kind API")));
}

// Output-only fields a client sets are ignored: the reply, the listing and
// the record after a restart show the mapping as the agent holds it, with
// the client's own spelling of its addresses kept.
TEST_F(CoreTest, CreateMappingIgnoresOutputOnlyFieldsAndKeepsTheClientsText) {
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m.mutable_owner()->set_id("billing");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.set_host_ip("0.0.0.0");
  m.set_host_port(8085);
  m.set_target_ip("FD00:0::9");
  m.set_target_port(80);
  m.set_description("invoices");
  m.set_connections(42);
  m.set_upstream("203.0.113.1:1 via pcp");
  *m.mutable_created_at() = ToTimestamp(absl::FromUnixSeconds(1));
  ASSERT_OK_AND_ASSIGN(v1::PortMapping created, core_->CreateMapping(m));
  EXPECT_FALSE(created.has_connections());
  EXPECT_EQ(created.upstream(), "");
  EXPECT_NE(created.created_at().seconds(), 1);
  EXPECT_EQ(created.target_ip(), "FD00:0::9");
  EXPECT_EQ(created.host_ip(), "0.0.0.0");
  std::vector<v1::PortMapping> listed = core_->ListMappings(v1::OWNER_KIND_API, "billing");
  ASSERT_THAT(listed, SizeIs(1));
  EXPECT_EQ(listed[0].DebugString(), created.DebugString());
  Restart();
  listed = core_->ListMappings(v1::OWNER_KIND_API, "billing");
  ASSERT_THAT(listed, SizeIs(1));
  EXPECT_EQ(listed[0].DebugString(), created.DebugString());
}

TEST_F(CoreTest, DualStackHostPortZeroFindsAPortFreeInBothFamilies) {
  // The first dynamic port is taken in IPv6 only.
  v1::PortMapping v6;
  v6.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  v6.mutable_owner()->set_id("v6-holder");
  v6.set_protocol(v1::PROTOCOL_TCP);
  v6.set_host_port(40000);
  v6.set_target_ip("fd00::9");
  v6.set_target_port(80);
  ASSERT_OK(core_->CreateMapping(v6).status());
  v1::Attachment a = Container("c1", "10.22.0.5/16", 0, 80);
  a.add_container_addresses("fd00::5/64");
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse r, core_->Attach(a));
  ASSERT_THAT(r.mappings(), SizeIs(2));
  EXPECT_NE(r.mappings(0).host_port(), 40000u);
  EXPECT_EQ(r.mappings(0).host_port(), r.mappings(1).host_port());
}

TEST_F(CoreTest, WatchSeesSnapshotThenChanges) {
  ASSERT_OK(core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)).status());
  auto q = core_->Subscribe(v1::OWNER_KIND_UNSPECIFIED, "");
  auto e = q->Pop(absl::Seconds(1));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::MappingEvent::TYPE_ADDED);
  e = q->Pop(absl::Seconds(1));
  EXPECT_EQ(e->type(), v1::MappingEvent::TYPE_SYNCED);
  ASSERT_OK(core_->Detach(Container("c1", "", 0, 0).key()).status());
  e = q->Pop(absl::Seconds(1));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::MappingEvent::TYPE_REMOVED);
  core_->Unsubscribe(q);
  EXPECT_FALSE(q->Pop(absl::Milliseconds(10)).has_value());
}

// ---------------------------------------------------------------------------
// NAT-PMP / PCP leases

class LeaseTest : public CoreTest {
 protected:
  void SetUp() override {
    CoreTest::SetUp();
    core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.7"));
  }
  // A PCP MAP from 192.168.77.12:81 that wants `suggested` or nothing.
  static LeaseRequest PcpPreferFailure(uint16_t suggested) {
    LeaseRequest r;
    r.kind = v1::OWNER_KIND_PCP;
    r.client = *nat::IpAddress::Parse("192.168.77.12");
    r.internal_port = 81;
    r.suggested_port = suggested;
    r.lifetime = 60;
    r.nonce = "nonce-12byte";
    r.prefer_failure = true;
    return r;
  }

  LeaseResult Map(const char* client, uint16_t internal, uint16_t suggested,
                  uint32_t lifetime, nat::Protocol p = nat::Protocol::kTcp,
                  v1::OwnerKind kind = v1::OWNER_KIND_NATPMP, std::string nonce = "") {
    LeaseRequest r;
    r.kind = kind;
    r.client = *nat::IpAddress::Parse(client);
    r.protocol = p;
    r.internal_port = internal;
    r.suggested_port = suggested;
    r.lifetime = lifetime;
    r.nonce = nonce;
    return core_->Lease(r, policy_);
  }
  LeasePolicy policy_;
};

TEST_F(LeaseTest, MapsOnTheExternalAddressAndRefreshesInPlace) {
  LeaseResult r = Map("192.168.77.10", 80, 8080, 3600);
  ASSERT_EQ(r.outcome, LeaseOutcome::kOk) << r.detail;
  EXPECT_EQ(r.external_port, 8080);
  EXPECT_EQ(r.lifetime, 3600u);
  ASSERT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(backend_.rules().dnat.begin()->ToString(),
            "tcp 203.0.113.7:8080 -> 192.168.77.10:80");
  // The same request again, even suggesting another port: same lease.
  now_ += absl::Seconds(100);
  r = Map("192.168.77.10", 80, 9999, 3600);
  EXPECT_EQ(r.outcome, LeaseOutcome::kOk);
  EXPECT_EQ(r.external_port, 8080);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_NATPMP, ""), SizeIs(1));
}

TEST_F(LeaseTest, TakenSuggestionGetsAnotherPortUnlessPreferFailure) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 3600).outcome, LeaseOutcome::kOk);
  LeaseResult r = Map("192.168.77.11", 80, 8080, 3600);
  ASSERT_EQ(r.outcome, LeaseOutcome::kOk);
  EXPECT_NE(r.external_port, 8080);
  r = core_->Lease(PcpPreferFailure(8080), policy_);
  EXPECT_EQ(r.outcome, LeaseOutcome::kCannotProvide);
  EXPECT_THAT(r.detail, HasSubstr("NAT-PMP lease of 192.168.77.10"));
}

TEST_F(LeaseTest, LifetimeIsClampedAndLeasesExpireOnTime) {
  policy_.max_lifetime = 7200;
  LeaseResult r = Map("192.168.77.10", 80, 8080, 100000);
  EXPECT_EQ(r.lifetime, 7200u);
  ASSERT_EQ(Map("192.168.77.10", 81, 8081, 30).outcome, LeaseOutcome::kOk);
  now_ += absl::Seconds(29);
  EXPECT_EQ(core_->ExpireLeases(), 0);
  now_ += absl::Seconds(2);
  EXPECT_EQ(core_->ExpireLeases(), 1);
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  // The port is free again.
  EXPECT_EQ(Map("192.168.77.11", 81, 8081, 30).external_port, 8081);
}

TEST_F(LeaseTest, DeleteOneOrAllAndDeletingNothingSucceeds) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 3600).outcome, LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 81, 8081, 3600).outcome, LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 53, 5353, 3600, nat::Protocol::kUdp).outcome,
            LeaseOutcome::kOk);
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 0).outcome, LeaseOutcome::kOk);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_NATPMP, ""), SizeIs(2));
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 0).outcome, LeaseOutcome::kOk);  // again
  // Internal port 0: all of the client's TCP leases; UDP stays.
  EXPECT_EQ(Map("192.168.77.10", 0, 0, 0).outcome, LeaseOutcome::kOk);
  auto left = core_->ListMappings(v1::OWNER_KIND_NATPMP, "");
  ASSERT_THAT(left, SizeIs(1));
  EXPECT_EQ(left[0].protocol(), v1::PROTOCOL_UDP);
}

TEST_F(LeaseTest, QuotaPerClient) {
  policy_.max_per_client = 2;
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 60).outcome, LeaseOutcome::kOk);
  EXPECT_EQ(Map("192.168.77.10", 81, 0, 60).outcome, LeaseOutcome::kOk);
  EXPECT_EQ(Map("192.168.77.10", 82, 0, 60).outcome, LeaseOutcome::kQuota);
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 60).outcome, LeaseOutcome::kOk);  // refresh
  EXPECT_EQ(Map("192.168.77.11", 82, 0, 60).outcome, LeaseOutcome::kOk);
}

TEST_F(LeaseTest, RangeIsEnforced) {
  policy_.port_lo = 20000;
  policy_.port_hi = 20001;
  // Port 80 is outside the range: the lease gets the first free one inside.
  EXPECT_EQ(Map("192.168.77.10", 80, 80, 60).external_port, 20000);
  EXPECT_EQ(Map("192.168.77.10", 81, 0, 60).external_port, 20001);
  EXPECT_EQ(Map("192.168.77.10", 82, 0, 60).outcome, LeaseOutcome::kNoResources);
}

TEST_F(LeaseTest, CompanionPortIsKeptForTheSameClient) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 60, nat::Protocol::kUdp).external_port, 8080);
  // Another client cannot take TCP 8080 ...
  EXPECT_NE(Map("192.168.77.11", 80, 8080, 60, nat::Protocol::kTcp).external_port, 8080);
  // ... the same client can.
  EXPECT_EQ(Map("192.168.77.10", 80, 8080, 60, nat::Protocol::kTcp).external_port, 8080);
}

TEST_F(LeaseTest, PcpNonceMustMatchForRefreshAndDelete) {
  EXPECT_EQ(Map("192.168.77.10", 80, 8080, 60, nat::Protocol::kTcp, v1::OWNER_KIND_PCP,
                "aaaaaaaaaaaa").outcome,
            LeaseOutcome::kOk);
  EXPECT_EQ(Map("192.168.77.10", 80, 8080, 60, nat::Protocol::kTcp, v1::OWNER_KIND_PCP,
                "bbbbbbbbbbbb").outcome,
            LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 0, nat::Protocol::kTcp, v1::OWNER_KIND_PCP,
                "bbbbbbbbbbbb").outcome,
            LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 0, nat::Protocol::kTcp, v1::OWNER_KIND_PCP,
                "aaaaaaaaaaaa").outcome,
            LeaseOutcome::kOk);
  EXPECT_TRUE(backend_.rules().dnat.empty());
}

TEST_F(LeaseTest, ContainersAndLeasesShareTheAllocator) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 60).external_port, 8080);
  EXPECT_THAT(core_->Attach(Container("c1", "10.22.0.5/16", 8080, 80)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("NAT-PMP lease of 192.168.77.10")));
  ASSERT_OK(core_->Attach(Container("c2", "10.22.0.6/16", 9090, 80)).status());
  EXPECT_NE(Map("192.168.77.11", 80, 9090, 60).external_port, 9090);
}

TEST_F(LeaseTest, CompanionHoldSurvivesAFailedRequest) {
  policy_.port_lo = 5000;
  policy_.port_hi = 5001;
  ASSERT_EQ(Map("192.168.77.10", 80, 5000, 60, nat::Protocol::kTcp).external_port, 5000);
  backend_.FailNext(absl::InternalError("netlink: boom"));
  EXPECT_EQ(Map("192.168.77.10", 80, 5000, 60, nat::Protocol::kUdp).outcome,
            LeaseOutcome::kNoResources);
  // UDP 5000 is still kept for 192.168.77.10.
  EXPECT_EQ(Map("192.168.77.11", 80, 5000, 60, nat::Protocol::kUdp).external_port, 5001);
}

TEST_F(LeaseTest, PcpDeleteOfAllProtocols) {
  std::string n = "nnnnnnnnnnnn";
  ASSERT_EQ(Map("192.168.77.10", 80, 0, 60, nat::Protocol::kTcp, v1::OWNER_KIND_PCP, n).outcome,
            LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 53, 0, 60, nat::Protocol::kUdp, v1::OWNER_KIND_PCP, n).outcome,
            LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.11", 53, 0, 60, nat::Protocol::kUdp, v1::OWNER_KIND_PCP, n).outcome,
            LeaseOutcome::kOk);
  LeaseRequest del;
  del.kind = v1::OWNER_KIND_PCP;
  del.client = *nat::IpAddress::Parse("192.168.77.10");
  del.all_protocols = true;
  del.internal_port = 0;
  del.lifetime = 0;
  del.nonce = "wrong-nonce!";
  EXPECT_EQ(core_->Lease(del, policy_).outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_PCP, ""), SizeIs(3));  // all or nothing
  del.nonce = n;
  EXPECT_EQ(core_->Lease(del, policy_).outcome, LeaseOutcome::kOk);
  auto left = core_->ListMappings(v1::OWNER_KIND_PCP, "");
  ASSERT_THAT(left, SizeIs(1));
  EXPECT_EQ(left[0].target_ip(), "192.168.77.11");
}

TEST_F(LeaseTest, FailedMoveIsRetriedAndRefreshIsPublished) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 60).outcome, LeaseOutcome::kOk);
  auto q = core_->Subscribe(v1::OWNER_KIND_NATPMP, "");
  while (q->Pop(absl::Milliseconds(1)).has_value()) {
  }
  backend_.FailNext(absl::UnavailableError("netlink: busy"));
  core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.99"));
  EXPECT_EQ(backend_.rules().dnat.begin()->ToString(), "tcp 203.0.113.7:8080 -> 192.168.77.10:80");
  core_->ExpireLeases();  // the periodic tick retries
  EXPECT_EQ(backend_.rules().dnat.begin()->ToString(), "tcp 203.0.113.99:8080 -> 192.168.77.10:80");
  auto e = q->Pop(absl::Seconds(1));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::MappingEvent::TYPE_UPDATED);
  EXPECT_EQ(e->mapping().host_ip(), "203.0.113.99");
  ASSERT_EQ(Map("192.168.77.10", 80, 0, 60).outcome, LeaseOutcome::kOk);  // refresh
  e = q->Pop(absl::Seconds(1));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::MappingEvent::TYPE_UPDATED);
  core_->Unsubscribe(q);
}

TEST_F(LeaseTest, NoExternalAddressIsANetworkFailure) {
  core_->SetExternalAddress(std::nullopt);
  EXPECT_EQ(Map("192.168.77.10", 80, 8080, 60).outcome, LeaseOutcome::kNetworkFailure);
}

TEST_F(LeaseTest, WanAddressChangeMovesLeases) {
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 60).outcome, LeaseOutcome::kOk);
  core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.99"));
  ASSERT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(backend_.rules().dnat.begin()->ToString(),
            "tcp 203.0.113.99:8080 -> 192.168.77.10:80");
}

TEST_F(LeaseTest, LeasesAndEpochSurviveRestartWithRemainingLifetime) {
  now_ += absl::Seconds(500);
  uint32_t epoch = core_->EpochSeconds();
  EXPECT_EQ(epoch, 500u);
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 600).outcome, LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 81, 8081, 60).outcome, LeaseOutcome::kOk);
  now_ += absl::Seconds(100);  // the agent is down meanwhile
  Restart();
  core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.7"));
  EXPECT_EQ(core_->EpochSeconds(), 600u);
  auto leases = core_->ListMappings(v1::OWNER_KIND_NATPMP, "");
  ASSERT_THAT(leases, SizeIs(1));  // the 60 s one ran out while down
  EXPECT_EQ(leases[0].expires_at().seconds(), 1800000000 + 500 + 600);
  // Refreshing after the restart keeps the port.
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 600).external_port, 8080);
}

// Issue "Nothing hijacked", item 4: besides the per-client quota, one cap
// over every client (one host with many alias addresses, or many spoofed
// ones, cannot take the whole port space).
TEST_F(LeaseTest, GlobalCapOverEveryClient) {
  policy_.max_per_client = 3;
  policy_.max_leases = 4;
  for (int port : {80, 81, 82}) {
    ASSERT_EQ(Map("192.168.77.10", port, 0, 60).outcome, LeaseOutcome::kOk);
  }
  ASSERT_EQ(Map("192.168.77.11", 80, 0, 60).outcome, LeaseOutcome::kOk);
  LeaseResult r = Map("192.168.77.12", 80, 0, 60);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNoResources);
  EXPECT_THAT(r.detail, HasSubstr("already holds 4 leases (--natpmp_max_leases)"));
  EXPECT_EQ(Map("192.168.77.11", 81, 0, 60).outcome, LeaseOutcome::kNoResources);
  // A refresh is no new lease.
  EXPECT_EQ(Map("192.168.77.11", 80, 0, 60).outcome, LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 82, 0, 0).outcome, LeaseOutcome::kOk);
  EXPECT_EQ(Map("192.168.77.12", 80, 0, 60).outcome, LeaseOutcome::kOk);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_NATPMP, ""), SizeIs(4));
}

// Item 5: leases never take the containers' dynamic pool (here
// 40000-40099); a port wanted inside it gets the nearest free one outside.
TEST_F(LeaseTest, LeasesAvoidTheContainersDynamicRange) {
  LeaseResult r = Map("192.168.77.10", 80, 40050, 60);
  ASSERT_EQ(r.outcome, LeaseOutcome::kOk) << r.detail;
  EXPECT_EQ(r.external_port, 40100);  // 50 away; 39999 is 51 away
  EXPECT_EQ(Map("192.168.77.10", 81, 40010, 60).external_port, 39999);
  // No suggestion: the internal port is wanted, and the same rule applies.
  EXPECT_EQ(Map("192.168.77.10", 40020, 0, 60).external_port, 39998);
  EXPECT_EQ(Map("192.168.77.11", 40090, 0, 60).external_port, 40101);
  // Ports the containers use stay theirs.
  for (const v1::PortMapping& m : core_->ListMappings(v1::OWNER_KIND_NATPMP, "")) {
    EXPECT_TRUE(m.host_port() < 40000 || m.host_port() > 40099) << m.host_port();
  }
  ASSERT_OK(core_->Attach(Container("c1", "10.22.0.5/16", 0, 80)).status());
  // PREFER_FAILURE there: cannot provide, saying why.
  r = core_->Lease(PcpPreferFailure(40060), policy_);
  EXPECT_EQ(r.outcome, LeaseOutcome::kCannotProvide);
  EXPECT_THAT(r.detail, HasSubstr("outside 1024-65535 outside the containers' 40000-40099"));
  // Turned off, the whole range is available again.
  policy_.avoid_dynamic_range = false;
  EXPECT_EQ(Map("192.168.77.12", 82, 40070, 60).external_port, 40070);
}

TEST_F(LeaseTest, DynamicRangeExclusionEdges) {
  // A range wholly inside the dynamic one leaves nothing.
  policy_.port_lo = 40010;
  policy_.port_hi = 40020;
  LeaseResult r = Map("192.168.77.10", 80, 40015, 60);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNoResources);
  // One side only: [39990, 40099] less the dynamic range is 39990-39999.
  policy_.port_lo = 39990;
  policy_.port_hi = 40050;
  EXPECT_EQ(Map("192.168.77.10", 80, 40030, 60).external_port, 39999);
  EXPECT_EQ(Map("192.168.77.10", 81, 39995, 60).external_port, 39995);
  // Both sides full: the nearest walk gives up.
  policy_.port_lo = 39999;
  policy_.port_hi = 40100;
  ASSERT_EQ(Map("192.168.77.11", 80, 40100, 60).external_port, 40100);
  r = Map("192.168.77.11", 81, 40050, 60);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNoResources) << r.external_port << " " << r.detail;
}

// Item 6: NAT-PMP has no nonce, so it cannot delete or refresh a PCP lease
// of the same address; its "delete all" leaves PCP leases alone.
TEST_F(LeaseTest, NatPmpCannotTouchAPcpLease) {
  const std::string nonce = "aaaaaaaaaaaa";
  ASSERT_EQ(Map("192.168.77.10", 80, 8080, 600, nat::Protocol::kTcp, v1::OWNER_KIND_PCP, nonce)
                .outcome,
            LeaseOutcome::kOk);
  ASSERT_EQ(Map("192.168.77.10", 81, 8081, 600).outcome, LeaseOutcome::kOk);
  LeaseResult r = Map("192.168.77.10", 80, 0, 0);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_THAT(r.detail, HasSubstr("is a PCP lease"));
  EXPECT_EQ(Map("192.168.77.10", 80, 8080, 600).outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(Map("192.168.77.10", 0, 0, 0).outcome, LeaseOutcome::kOk);
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_PCP, ""), SizeIs(1));
  EXPECT_THAT(core_->ListMappings(v1::OWNER_KIND_NATPMP, ""), SizeIs(0));
  // PCP with its nonce still can.
  EXPECT_EQ(Map("192.168.77.10", 80, 0, 0, nat::Protocol::kTcp, v1::OWNER_KIND_PCP, nonce)
                .outcome,
            LeaseOutcome::kOk);
  EXPECT_TRUE(backend_.rules().dnat.empty());
}

// Item 3: an address inside a container network or that another owner's
// mapping sends traffic to is not a LAN host asking for itself.
TEST_F(LeaseTest, RefusesContainerNetworksAndOtherOwnersTargets) {
  // A container without published ports: its network is still refused.
  ASSERT_OK(core_->Attach(Container("c1", "10.22.0.5/16", -1, 0)).status());
  LeaseResult r = Map("10.22.0.5", 8080, 8080, 60);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(r.detail, "10.22.0.5 is inside container network 10.22.0.0/16");
  EXPECT_EQ(Map("10.22.200.1", 80, 0, 60).outcome, LeaseOutcome::kNotAuthorized);
  // An API mapping's target on the LAN.
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m.mutable_owner()->set_id("nas");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.set_host_port(4443);
  m.set_target_ip("192.168.77.20");
  m.set_target_port(443);
  ASSERT_OK_AND_ASSIGN(v1::PortMapping made, core_->CreateMapping(m));
  r = Map("192.168.77.20", 22, 2222, 60);
  EXPECT_EQ(r.outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(r.detail, "192.168.77.20 is the target of another owner's mapping");
  EXPECT_EQ(Map("192.168.77.21", 22, 2222, 60).outcome, LeaseOutcome::kOk);
  EXPECT_TRUE(backend_.rules().dnat.size() == 2u);
  // The index survives a restart ...
  Restart();
  core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.7"));
  EXPECT_EQ(Map("192.168.77.20", 22, 2222, 60).outcome, LeaseOutcome::kNotAuthorized);
  EXPECT_EQ(Map("10.22.0.9", 22, 2222, 60).outcome, LeaseOutcome::kNotAuthorized);
  // ... and follows the owners.
  ASSERT_OK(core_->DeleteMapping(made.id()));
  ASSERT_OK(core_->Detach(Container("c1", "10.22.0.5/16", -1, 0).key()).status());
  EXPECT_EQ(Map("192.168.77.20", 22, 2223, 60).outcome, LeaseOutcome::kOk);
  EXPECT_EQ(Map("10.22.0.5", 8080, 8080, 60).outcome, LeaseOutcome::kOk);
}

}  // namespace
}  // namespace fabric::agent
