// Which ports go upstream (UpstreamPorts), from a real core's snapshot:
// owner kinds, families, protocols, ranges and the CNI network's override.
#include "agent/upstream_keeper.h"

#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using Proto = upstream::Proto;
using ::testing::ElementsAre;
using ::testing::Pair;

class UpstreamPortsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(std::string(std::getenv("TEST_TMPDIR")) + "/" +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_OK(store.status());
    core_ = std::make_unique<AgentCore>(std::move(*store), &backend_, nullptr,
                                        CoreOptions{40000, 40099});
    ASSERT_OK(core_->Start());
  }

  // A container on network `net` publishing TCP host port `port`, its
  // network's "upstream" key as given.
  void Attach(const std::string& cid, int port, std::optional<bool> upstream) {
    v1::Attachment a;
    a.mutable_key()->set_container_id(cid);
    a.mutable_key()->set_ifname("eth0");
    a.mutable_key()->set_network_name("net1");
    a.set_netns_path("/run/netns/" + cid);
    a.add_container_addresses(absl::StrCat("10.22.0.", port % 200 + 2, "/16"));
    a.set_host_interface("cni0");
    if (upstream.has_value()) a.mutable_options()->set_upstream(*upstream);
    v1::PortMappingRequest* r = a.add_port_mappings();
    r->set_protocol(v1::PROTOCOL_TCP);
    r->set_host_port(port);
    r->set_container_port(80);
    ASSERT_OK(core_->Attach(a).status());
  }
  void Api(v1::Protocol proto, int port, int count, const std::string& target) {
    v1::PortMapping m;
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id(absl::StrCat("api", port));
    m.set_protocol(proto);
    m.set_host_port(port);
    m.set_port_count(count);
    m.set_target_ip(target);
    m.set_target_port(port);
    ASSERT_OK(core_->CreateMapping(m).status());
  }
  std::vector<std::pair<Proto, uint16_t>> Ports(bool by_default, int max_range = 64) {
    std::vector<std::pair<Proto, uint16_t>> out;
    for (const auto& [key, id] : UpstreamPorts(*core_->snapshot(), by_default, max_range)) {
      out.push_back(key);
    }
    return out;
  }

  nat::FakeBackend backend_;
  std::unique_ptr<AgentCore> core_;
};

TEST_F(UpstreamPortsTest, TheFlagAndEachNetworksKey) {
  Attach("c1", 8081, std::nullopt);  // as the flag says
  Attach("c2", 8082, false);         // never
  Attach("c3", 8083, true);          // always
  Api(v1::PROTOCOL_UDP, 5300, 3, "10.1.0.5");
  EXPECT_THAT(Ports(true), ElementsAre(Pair(Proto::kTcp, 8081), Pair(Proto::kTcp, 8083),
                                       Pair(Proto::kUdp, 5300), Pair(Proto::kUdp, 5301),
                                       Pair(Proto::kUdp, 5302)));
  EXPECT_THAT(Ports(false), ElementsAre(Pair(Proto::kTcp, 8083)));
}

// With the flag off the keeper looks at no mapping unless a network asks:
// the count of attachments asking follows attach and detach.
TEST_F(UpstreamPortsTest, OffAndNobodyAskingLooksAtNothing) {
  Attach("c1", 8081, std::nullopt);
  Attach("c2", 8082, false);
  EXPECT_EQ(core_->snapshot()->state.network.upstream_asked, 0);
  EXPECT_THAT(Ports(false), ElementsAre());
  Attach("c3", 8083, true);
  EXPECT_EQ(core_->snapshot()->state.network.upstream_asked, 1);
  EXPECT_THAT(Ports(false), ElementsAre(Pair(Proto::kTcp, 8083)));
  v1::AttachmentKey key;
  key.set_container_id("c3");
  key.set_ifname("eth0");
  key.set_network_name("net1");
  ASSERT_OK(core_->Detach(key).status());
  EXPECT_EQ(core_->snapshot()->state.network.upstream_asked, 0);
  EXPECT_THAT(Ports(false), ElementsAre());
  EXPECT_THAT(Ports(true), ElementsAre(Pair(Proto::kTcp, 8081)));
}

TEST_F(UpstreamPortsTest, OnlyIpv4TcpAndUdpAndRangesCapped) {
  Api(v1::PROTOCOL_SCTP, 9000, 1, "10.1.0.5");
  Api(v1::PROTOCOL_TCP, 9001, 1, "fd00::5");
  Api(v1::PROTOCOL_TCP, 7000, 10, "10.1.0.6");
  EXPECT_THAT(Ports(true, 2), ElementsAre(Pair(Proto::kTcp, 7000), Pair(Proto::kTcp, 7001)));
}

}  // namespace
}  // namespace fabric::agent

namespace fabric::agent {
namespace {

TEST(UpstreamOptionsTest, FlagsAreCheckedAndNamed) {
  ASSERT_OK_AND_ASSIGN(UpstreamKeeper::Options o,
                       UpstreamKeeper::ParseOptions("off", absl::Seconds(3600), "", "/s"));
  EXPECT_FALSE(o.by_default);
  ASSERT_OK_AND_ASSIGN(o, UpstreamKeeper::ParseOptions("natpmp", absl::Seconds(600),
                                                       "192.168.1.1", "/s"));
  EXPECT_TRUE(o.by_default);
  EXPECT_EQ(o.method, upstream::Method::kNatPmp);
  EXPECT_EQ(o.lifetime, absl::Seconds(600));
  ASSERT_TRUE(o.gateway.has_value());
  EXPECT_THAT(UpstreamKeeper::ParseOptions("yes", absl::Seconds(600), "", "/s"),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("--upstream must be off, auto, pcp, natpmp "
                                                     "or upnp, not \"yes\"")));
  EXPECT_THAT(UpstreamKeeper::ParseOptions("auto", absl::Seconds(60), "", "/s"),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("--upstream_lifetime must be 120s to 24h")));
  EXPECT_THAT(UpstreamKeeper::ParseOptions("auto", absl::Seconds(600), "fd00::1", "/s"),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("is not an IPv4 address")));
}

}  // namespace
}  // namespace fabric::agent
