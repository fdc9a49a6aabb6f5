// The CNI path of fixed-address SNAT, end to end: a network whose
// fabric-nat configuration has "snatAddress" gives its containers' IPv4
// traffic to the outside that address instead of the host's (masquerade),
// across an agent restart, over both backends; IPv6 keeps masquerade; a
// bad value is CNI error 7 naming the key.
//
//   outside  eth0 192.0.2.2/24 2001:db8::2/64
//      |
//   host     wan0 192.0.2.1/24 192.0.2.10/24 2001:db8::1/64, bridge fsn0
//      |     (fabric-agent runs here; plugins are exec'd here)
//   containers on fsn0: 10.89.0.0/24, fd00:89::/64
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

using json = nlohmann::json;
using ::fabric::testing::AgentProcess;
using ::fabric::testing::Ask;
using ::fabric::testing::CniRuntime;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::fabric::testing::PluginRun;
using ::testing::HasSubstr;
using ::testing::Not;

class CniSnatTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "end-to-end tests run as root";
    dir_ = tmp_.path();
    ASSERT_OK_AND_ASSIGN(host_, Netns::Create("host"));
    ASSERT_OK_AND_ASSIGN(outside_, Netns::Create("out"));
    ASSERT_OK(testing::Link(*host_, "wan0", "192.0.2.1/24 192.0.2.10/24 2001:db8::1/64",
                            *outside_, "eth0", "192.0.2.2/24 2001:db8::2/64"));
    ASSERT_OK(host_->Exec("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"));
    bin_ = dir_ + "/bin";
    ASSERT_OK(testing::Shell(absl::StrCat(
        "mkdir -p ", bin_, " && ln -sf /usr/lib/cni/bridge /usr/lib/cni/host-local ", bin_,
        "/ && ln -sf ", testing::Runfile("cni/fabric-nat"), " ", bin_, "/fabric-nat")));
    StartAgent();
    ASSERT_OK(testing::Serve(*outside_, "tcp", 9999, "outside"));
    ASSERT_OK_AND_ASSIGN(container_, Netns::Create("c1"));
    id_ = absl::StrCat("c1-", getpid(), "-0123456789abcdef");
  }
  void TearDown() override {
    runtime_.reset();
    agent_.reset();
  }

  void StartAgent() {
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(host_.get(), dir_ + "/agent",
                                                     "--backend=" + GetParam()));
  }
  // The network, with fabric-nat's `options`.
  void UseNetwork(const json& options) {
    json nat = {{"type", "fabric-nat"}, {"agentSocket", agent_->socket()}};
    nat.update(options);
    json conflist = {
        {"cniVersion", "1.0.0"},
        {"name", "snatnet"},
        {"plugins",
         {{{"type", "bridge"},
           {"bridge", "fsn0"},
           {"isDefaultGateway", true},
           {"ipam",
            {{"type", "host-local"},
             {"ranges", {{{{"subnet", "10.89.0.0/24"}}}, {{{"subnet", "fd00:89::/64"}}}}},
             {"dataDir", dir_ + "/ipam"}}}},
          nat}}};
    runtime_ = std::make_unique<CniRuntime>(host_.get(), bin_, conflist);
  }
  std::string path() const { return "/run/netns/" + container_->name(); }

  testing::ScopedTempDir tmp_{"cnisnat"};
  std::string dir_, bin_, id_;
  std::unique_ptr<Netns> host_, outside_, container_;
  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<CniRuntime> runtime_;
};

TEST_P(CniSnatTest, ContainerTrafficCarriesTheSnatAddress) {
  UseNetwork({{"masquerade", true}, {"snatAddress", "192.0.2.10"}});
  PluginRun add = runtime_->Add(id_, path(), "eth0", json::array());
  ASSERT_EQ(add.exit_code, 0) << add.plugin << ": " << add.raw;
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.10\n"));
  // IPv6 has no address of that family to take: masquerade.
  EXPECT_THAT(Ask(*container_, "tcp", "2001:db8::2", 9999), IsOkAndHolds("outside 2001:db8::1\n"));
  EXPECT_EQ(runtime_->Check(id_, path(), "eth0").exit_code, 0);

  // The option is stored with the attachment: a restarted agent keeps it.
  agent_->Stop();
  StartAgent();
  EXPECT_THAT(Ask(*container_, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.10\n"));
  EXPECT_EQ(runtime_->Check(id_, path(), "eth0").exit_code, 0);
  ASSERT_OK_AND_ASSIGN(std::string diagnose, testing::Fabricctl(agent_->socket(), "diagnose"));
  EXPECT_THAT(diagnose, Not(HasSubstr("kernel lacks")));

  // DEL takes the rule away: no translation, no way back.
  EXPECT_EQ(runtime_->Del(id_, path(), "eth0").exit_code, 0);
  EXPECT_FALSE(Ask(*container_, "tcp", "192.0.2.2", 9999, 0.5).ok());
}

TEST_P(CniSnatTest, ABadSnatAddressIsAConfigError) {
  for (json bad : {json("not-an-ip"), json(10), json("127.0.0.1")}) {
    UseNetwork({{"snatAddress", bad}});
    PluginRun add = runtime_->Add(id_, path(), "eth0", json::array());
    EXPECT_EQ(add.plugin, "fabric-nat") << add.raw;
    EXPECT_EQ(add.output["code"], 7) << add.raw;
    EXPECT_THAT(add.output["msg"].get<std::string>(), HasSubstr("\"snatAddress\"")) << add.raw;
    // The runtime cleans up (with a configuration DEL can read: fabric-nat
    // refuses a bad key on every command).
    UseNetwork(json::object());
    EXPECT_EQ(runtime_->Del(id_, path(), "eth0").exit_code, 0);
  }
  EXPECT_FALSE(Ask(*container_, "tcp", "192.0.2.2", 9999, 0.5).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, CniSnatTest, ::testing::Values("nftables", "iptables"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace fabric
