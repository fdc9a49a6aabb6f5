// fabric-agent as a process: its socket, metrics, health, restarts and the
// rules it leaves in place, in a namespace of its own.
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
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

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    char dir[] = "/tmp/fnt-agent-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("agent"));
  }
  void TearDown() override {
    agent_.reset();
    testing::Shell("rm -rf " + dir_).IgnoreError();
  }

  void StartAgent() {
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_,
                                                     "--metrics_address=127.0.0.1:19333"));
  }
  absl::StatusOr<std::string> Ctl(const std::string& args) {
    return testing::Shell(absl::StrCat(testing::Runfile("agent/fabricctl"), " --socket ",
                                       dir_, "/agent.sock ", args));
  }

  std::string dir_;
  std::unique_ptr<Netns> ns_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(AgentTest, SocketIsPrivateAndMetricsAndHealthServe) {
  StartAgent();
  struct stat st;
  ASSERT_EQ(stat(agent_->socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THAT(ns_->Exec("curl -s http://127.0.0.1:19333/healthz"), IsOkAndHolds("ok\n"));
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  ASSERT_OK(Ctl("add udp 0 10.1.0.5:53 --owner dns").status());
  EXPECT_THAT(Ctl("add tcp 8080 10.1.0.6:80 --owner other"), ::testing::Not(fabric::testing::IsOk()));
  ASSERT_OK_AND_ASSIGN(std::string metrics,
                       ns_->Exec("curl -s http://127.0.0.1:19333/metrics"));
  for (const char* want :
       {"nat_rules_total{type=\"dnat\"} 2", "nat_port_mappings_total 2",
        "nat_operations_total{op=\"create_mapping\"} 3",
        "nat_operation_errors_total{op=\"create_mapping\"} 1",
        "nat_operation_duration_seconds_count 3", "nat_operation_duration_seconds_bucket{le=\"+Inf\"} 3"}) {
    EXPECT_THAT(metrics, HasSubstr(want));
  }
  EXPECT_THAT(agent_->LogText(), HasSubstr("op=create_mapping owner=web outcome=ok"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("outcome=ALREADY_EXISTS"));
}

TEST_F(AgentTest, StopLeavesRulesAndRestartRestoresState) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  agent_->Stop();
  EXPECT_THAT(agent_->LogText(), HasSubstr("kernel rules left in place"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(HasSubstr("tcp . 8080 : 10.1.0.5 . 80")));
  // A flush while the agent is down is healed at start.
  ASSERT_OK(ns_->Exec("nft flush ruleset"));
  StartAgent();
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0.0.0.0:8080")));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(HasSubstr("tcp . 8080 : 10.1.0.5 . 80")));
}

TEST_F(AgentTest, StaleSocketIsReplacedLiveOneIsNot) {
  StartAgent();
  agent_->Kill();  // leaves the socket file behind
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/agent.sock").c_str(), &st), 0);
  StartAgent();
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("ready:        yes")));
  // A second agent on the same socket refuses to start.
  auto second = AgentProcess::Start(ns_.get(), dir_, "--metrics_address=");
  EXPECT_FALSE(second.ok());
  EXPECT_THAT(agent_->LogText(), HasSubstr("another agent is serving"));
}

TEST_F(AgentTest, CorruptStoreRefusesToStartAndLeavesKernelAlone) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  agent_->Stop();
  ASSERT_OK(testing::Shell(absl::StrCat("rm -f ", dir_, "/state/state.db-wal ", dir_,
                                        "/state/state.db-shm; head -c 8192 /dev/urandom > ",
                                        dir_, "/state/state.db")));
  auto broken = AgentProcess::Start(ns_.get(), dir_, "--metrics_address=");
  EXPECT_FALSE(broken.ok());
  EXPECT_THAT(std::string(broken.status().message()),
              HasSubstr("leaves the kernel rules as they are"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(HasSubstr("tcp . 8080 : 10.1.0.5 . 80")));
}

}  // namespace
}  // namespace fabric
