// fabricctl with the agent down (agent/ctl/offline.h), against a real agent's
// state and kernel table: the agent runs in a namespace of its own, gets
// mappings through fabricctl and is stopped; then fabricctl, run inside that
// namespace with `ip netns exec` so that it reads that namespace's kernel,
// lists them from the store under the not-running header, finds the rules
// the agent left in place in sync, and names what is missing or extra once
// the table is changed by hand — and the state dir is left exactly as the
// agent left it.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

using ::fabric::testing::AgentProcess;
using ::fabric::testing::CommandResult;
using ::fabric::testing::Netns;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// name -> (content, mtime ns) of every file in `dir`.
std::map<std::string, std::pair<std::string, int64_t>> ReadDir(const std::string& dir) {
  std::map<std::string, std::pair<std::string, int64_t>> s;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return s;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::ifstream f(dir + "/" + name, std::ios::binary);
    std::stringstream text;
    text << f.rdbuf();
    struct stat st;
    stat((dir + "/" + name).c_str(), &st);
    s[name] = {text.str(), st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec};
  }
  closedir(d);
  return s;
}

class OfflineCtlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    dir_ = tmp_.path();
    // fabricctl's private copies of the store go here (TMPDIR).
    ASSERT_EQ(mkdir((dir_ + "/tmp").c_str(), 0700), 0);
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("offline"));
  }

  // fabricctl inside the agent's namespace, with the agent's socket and
  // state dir.
  CommandResult Offline(const std::string& args) {
    auto r = testing::RunCommand(absl::StrCat(
        "ip netns exec ", ns_->name(), " env TMPDIR=", dir_, "/tmp ",
        testing::Runfile("agent/fabricctl"), " --socket ", dir_, "/agent.sock --state_dir ",
        dir_, "/state ", args));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{-1, "", r.status().ToString()};
  }

  testing::ScopedTempDir tmp_{"offline"};
  std::string dir_;
  std::unique_ptr<Netns> ns_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(OfflineCtlTest, ListsStatusAndDiagnosesWhileTheAgentIsDown) {
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_));
  const pid_t agent_pid = agent_->pid();
  ASSERT_OK(testing::Fabricctl(dir_ + "/agent.sock", "add tcp 8080 10.1.0.5:80 --owner web")
                .status());
  ASSERT_OK(testing::Fabricctl(dir_ + "/agent.sock",
                               "add udp 5353 10.1.0.6:53 --owner dns --description resolver")
                .status());
  ASSERT_OK_AND_ASSIGN(std::string online,
                       testing::Fabricctl(dir_ + "/agent.sock", "list"));
  agent_->Stop();
  const std::string state = dir_ + "/state";
  auto before = ReadDir(state);
  ASSERT_EQ(before.count("state.db"), 1u);

  // list: the online table, under the header.
  CommandResult list = Offline("list");
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(list.err, "");
  const std::string header = absl::StrCat("fabric-agent is not running: read from ", state,
                                          "/state.db (read-only)\n  no agent socket at ", dir_,
                                          "/agent.sock; last started ");
  EXPECT_THAT(list.out, StartsWith(header));
  EXPECT_THAT(list.out, HasSubstr(absl::StrCat(" (pid ", agent_pid, ", ", state,
                                               "/agent.lock); state last written ")));
  ASSERT_NE(list.out.find('\n', header.size()), std::string::npos);
  EXPECT_EQ(list.out.substr(list.out.find('\n', header.size()) + 1), online);
  EXPECT_THAT(online, HasSubstr("0.0.0.0:8080             10.1.0.5:80"));
  EXPECT_THAT(online, HasSubstr("dns \"resolver\"\n2 mapping(s)\n"));

  CommandResult json = Offline("list --json");
  EXPECT_EQ(json.exit_code, 0);
  EXPECT_THAT(json.err, StartsWith("fabric-agent is not running: "));
  nlohmann::json j = nlohmann::json::parse(json.out);
  ASSERT_EQ(j["mappings"].size(), 2u);
  EXPECT_EQ(j["mappings"][0]["host_port"], 8080);

  CommandResult status = Offline("status");
  EXPECT_EQ(status.exit_code, 0);
  EXPECT_THAT(status.out, HasSubstr("\nready:        no (agent not running)\n"));
  EXPECT_THAT(status.out, HasSubstr("\nmappings:     2\n"));

  // The rules the stopped agent left in place are what the store asks for.
  CommandResult diagnose = Offline("diagnose");
  EXPECT_EQ(diagnose.exit_code, 0) << diagnose.out << diagnose.err;
  EXPECT_THAT(diagnose.out,
              HasSubstr("\nhealthy: the kernel holds every DNAT entry the store asks for, and "
                        "no other\n  - kernel table inet fabric_nat: 2 DNAT entries, 2 "
                        "expected\n"));

  // One element deleted, one added by hand.
  ASSERT_OK(ns_->Exec("nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }' && "
                      "nft add element inet fabric_nat dnat4_any "
                      "'{ tcp . 8090 : 10.1.0.7 . 80 }'"));
  diagnose = Offline("diagnose");
  EXPECT_EQ(diagnose.exit_code, 1);
  EXPECT_THAT(diagnose.out,
              HasSubstr("\nNEEDS ATTENTION:\n  ! kernel lacks 1 of 2 DNAT entries the store asks "
                        "for: tcp 0.0.0.0:8080 -> 10.1.0.5:80; the agent restores them when it "
                        "starts\n  ! kernel holds 1 DNAT entry the store does not know: tcp "
                        "0.0.0.0:8090 -> 10.1.0.7:80; "));

  // Everything flushed.
  ASSERT_OK(ns_->Exec("nft flush ruleset"));
  diagnose = Offline("diagnose");
  EXPECT_EQ(diagnose.exit_code, 1);
  EXPECT_THAT(diagnose.out,
              HasSubstr("  ! the kernel has no table inet fabric_nat: it lacks all 2 DNAT entries "
                        "the store asks for (tcp 0.0.0.0:8080 -> 10.1.0.5:80, udp 0.0.0.0:5353 "
                        "-> 10.1.0.6:53); the agent rebuilds it when it starts\n"));
  CommandResult diagnose_json = Offline("diagnose --json");
  EXPECT_EQ(diagnose_json.exit_code, 1);
  EXPECT_EQ(nlohmann::json::parse(diagnose_json.out)["findings"].size(), 1u);

  // Without CAP_NET_ADMIN the kernel cannot be read: a finding, not a crash.
  ASSERT_OK_AND_ASSIGN(
      CommandResult capless,
      testing::RunCommand(absl::StrCat(
          "ip netns exec ", ns_->name(), " env TMPDIR=", dir_, "/tmp capsh "
          "--drop=cap_net_admin -- -c '",
          testing::Runfile("agent/fabricctl"), " --socket ", dir_, "/agent.sock --state_dir ",
          state, " diagnose'")));
  EXPECT_EQ(capless.exit_code, 1);
  EXPECT_THAT(capless.out, HasSubstr("  ! cannot read the kernel's table inet fabric_nat: "));

  // Nothing of the agent's changed, nothing was added beside it, and no copy
  // was left behind.
  EXPECT_EQ(ReadDir(state), before);
  EXPECT_THAT(testing::Shell("ls -A " + dir_ + "/tmp"), fabric::testing::IsOkAndHolds(""));

  // And the agent starts from that store as ever, healing the flush.
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_));
  EXPECT_THAT(testing::Fabricctl(dir_ + "/agent.sock", "diagnose"),
              fabric::testing::IsOkAndHolds(StartsWith("healthy: the kernel holds exactly")));
  EXPECT_THAT(testing::Fabricctl(dir_ + "/agent.sock", "list"),
              fabric::testing::IsOkAndHolds(Not(HasSubstr("not running"))));
}

}  // namespace
}  // namespace fabric
