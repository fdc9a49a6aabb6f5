// The install step over a temporary root: the runtimes' real default
// network configurations, atomic writes, a plugin replaced while an old copy
// executes, and the watch loop putting back what changes.
#include "agent/install/cni_install.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/status_matchers.h"

namespace fabric::agent::install {
namespace {

using json = nlohmann::json;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void Write(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
}

std::string TestData(const std::string& name) {
  return Read(absl::StrCat(std::getenv("TEST_SRCDIR"), "/", std::getenv("TEST_WORKSPACE"),
                           "/agent/install/testdata/", name));
}

std::vector<std::string> Types(const json& list) {
  std::vector<std::string> out;
  for (const json& p : list["plugins"]) out.push_back(p["type"].get<std::string>());
  return out;
}

ino_t Inode(const std::string& path) {
  struct stat st{};
  stat(path.c_str(), &st);
  return st.st_ino;
}

// Every name in `dir`, hidden ones too (temporary files must not linger).
std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  std::string cmd = absl::StrCat("ls -A ", dir);
  FILE* p = popen(cmd.c_str(), "r");
  char line[512];
  while (p != nullptr && fgets(line, sizeof(line), p) != nullptr) {
    std::string s(line);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    out.push_back(s);
  }
  if (p != nullptr) pclose(p);
  return out;
}

class CniInstallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = absl::StrCat(std::getenv("TEST_TMPDIR"), "/root-", counter_++);
    ASSERT_EQ(system(absl::StrCat("rm -rf ", root_, " && mkdir -p ", root_, "/opt/cni/bin ",
                                  root_, "/etc/cni/net.d ", root_, "/image")
                         .c_str()),
              0);
    config_.cni_bin_dir = root_ + "/opt/cni/bin";
    config_.cni_conf_dir = root_ + "/etc/cni/net.d";
    config_.plugin_source = root_ + "/image/fabric-nat";
    config_.agent_socket = "/run/fabric-nat/agent.sock";
    Write(config_.plugin_source, "plugin v1");
  }
  std::string Conf(const std::string& name) { return config_.cni_conf_dir + "/" + name; }
  std::string Ours() { return Conf(config_.conf_name); }

  static int counter_;
  std::string root_;
  InstallConfig config_;
};
int CniInstallTest::counter_ = 0;

TEST_F(CniInstallTest, ChainsIntoContainerdsDefaultReplacingPortmap) {
  const std::string original = TestData("10-containerd-net.conflist");
  Write(Conf("10-containerd-net.conflist"), original);
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  EXPECT_EQ(r.source, "10-containerd-net.conflist");
  json list = json::parse(r.content);
  EXPECT_EQ(list["name"], "containerd-net");
  EXPECT_EQ(list["cniVersion"], "1.0.0");
  EXPECT_THAT(Types(list), ElementsAre("bridge", "fabric-nat"));
  EXPECT_EQ(list["plugins"][0], json::parse(original)["plugins"][0]);
  EXPECT_EQ(list["plugins"][1],
            json({{"type", "fabric-nat"},
                  {"capabilities", {{"portMappings", true}}},
                  {"agentSocket", "/run/fabric-nat/agent.sock"},
                  {"hairpin", true}}));

  EXPECT_THAT(WriteConfIfChanged(config_, r.content), IsOkAndHolds(true));
  EXPECT_EQ(Read(Ours()), r.content);
  // The same content again is no write at all: same inode.
  ino_t before = Inode(Ours());
  EXPECT_THAT(WriteConfIfChanged(config_, r.content), IsOkAndHolds(false));
  EXPECT_EQ(Inode(Ours()), before);
  // The original is untouched, and no temporary file is left.
  EXPECT_EQ(Read(Conf("10-containerd-net.conflist")), original);
  EXPECT_THAT(Names(config_.cni_conf_dir),
              ElementsAre("00-fabric-nat.conflist", "10-containerd-net.conflist"));
}

TEST_F(CniInstallTest, ChainsIntoCrioDefaultList) {
  Write(Conf("11-crio-ipv4-bridge.conflist"), TestData("11-crio-ipv4-bridge.conflist"));
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  json list = json::parse(r.content);
  EXPECT_EQ(list["name"], "crio");
  EXPECT_THAT(Types(list), ElementsAre("bridge", "fabric-nat"));
}

TEST_F(CniInstallTest, ASingleConfBecomesAList) {
  Write(Conf("100-crio-bridge.conf"), TestData("100-crio-bridge.conf"));
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  json list = json::parse(r.content);
  EXPECT_EQ(list["cniVersion"], "0.3.1");
  EXPECT_EQ(list["name"], "crio");
  EXPECT_THAT(Types(list), ElementsAre("bridge", "fabric-nat"));
  // Name and version belong to the list; the plugin keeps the rest.
  EXPECT_FALSE(list["plugins"][0].contains("name"));
  EXPECT_FALSE(list["plugins"][0].contains("cniVersion"));
  EXPECT_EQ(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.85.0.0/16");
}

TEST_F(CniInstallTest, TheFirstInSortedOrderIsChainedUnlessOneIsNamed) {
  Write(Conf("20-b.conflist"), TestData("11-crio-ipv4-bridge.conflist"));
  Write(Conf("10-a.conflist"), TestData("10-containerd-net.conflist"));
  Write(Conf("05-notes.txt"), "not a network");
  ASSERT_OK_AND_ASSIGN(Rendered first, RenderConflist(config_));
  EXPECT_EQ(first.source, "10-a.conflist");
  config_.chain_into = "20-b.conflist";
  ASSERT_OK_AND_ASSIGN(Rendered named, RenderConflist(config_));
  EXPECT_EQ(named.source, "20-b.conflist");
  EXPECT_EQ(json::parse(named.content)["name"], "crio");
  config_.chain_into = "30-missing.conflist";
  EXPECT_THAT(RenderConflist(config_),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("30-missing.conflist, does not exist")));
}

TEST_F(CniInstallTest, PluginOptionsAndAnExistingEntryAreKept) {
  config_.plugin_options = R"({"masquerade": true, "localhost": false})";
  Write(Conf("10-containerd-net.conflist"), TestData("10-containerd-net.conflist"));
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  json ours = json::parse(r.content)["plugins"][1];
  EXPECT_EQ(ours["masquerade"], true);
  EXPECT_EQ(ours["localhost"], false);

  // A list that already has fabric-nat keeps it as its author wrote it,
  // and loses portmap all the same.
  Write(Conf("10-containerd-net.conflist"),
        R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},)"
        R"({"type":"portmap","capabilities":{"portMappings":true}},)"
        R"({"type":"fabric-nat","agentSocket":"/x.sock"}]})");
  ASSERT_OK_AND_ASSIGN(Rendered again, RenderConflist(config_));
  json list = json::parse(again.content);
  EXPECT_THAT(Types(list), ElementsAre("bridge", "fabric-nat"));
  EXPECT_EQ(list["plugins"][1], json({{"type", "fabric-nat"}, {"agentSocket", "/x.sock"}}));

  config_.plugin_options = "[1]";
  EXPECT_THAT(RenderConflist(config_), StatusIs(absl::StatusCode::kInvalidArgument,
                                                "plugin options must be a JSON object"));
}

TEST_F(CniInstallTest, OwnNetworkFromAFile) {
  config_.network_config = root_ + "/image/own.conflist";
  Write(config_.network_config,
        R"({"cniVersion":"1.1.0","name":"podnet","plugins":[{"type":"bridge","bridge":"fn0"}]})");
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  EXPECT_EQ(r.source, "");
  json list = json::parse(r.content);
  EXPECT_EQ(list["name"], "podnet");
  EXPECT_THAT(Types(list), ElementsAre("bridge", "fabric-nat"));
}

TEST_F(CniInstallTest, ErrorsNameTheFileAndTheCause) {
  EXPECT_THAT(RenderConflist(config_),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("no CNI network configuration in " + config_.cni_conf_dir)));
  Write(Conf("10-broken.conflist"), "{\"name\": ");
  EXPECT_THAT(RenderConflist(config_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(Conf("10-broken.conflist") + " is not valid JSON")));
  Write(Conf("10-broken.conflist"), R"({"cniVersion":"0.2.0","name":"old","plugins":[{"type":"bridge"}]})");
  EXPECT_THAT(RenderConflist(config_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("cniVersion 0.2.0 cannot chain fabric-nat")));
  Write(Conf("10-broken.conflist"), R"({"cniVersion":"1.0.0","name":"n","plugins":[]})");
  EXPECT_THAT(RenderConflist(config_), StatusIs(absl::StatusCode::kInvalidArgument,
                                                HasSubstr("has no \"plugins\" list")));
  unlink(Conf("10-broken.conflist").c_str());
  // A file that sorts before ours would shadow it.
  Write(Conf("0-first.conflist"), TestData("10-containerd-net.conflist"));
  EXPECT_THAT(RenderConflist(config_),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("0-first.conflist sorts before 00-fabric-nat.conflist")));
  // Nothing was written by any of these.
  EXPECT_THAT(Names(config_.cni_conf_dir), ElementsAre("0-first.conflist"));
}

TEST_F(CniInstallTest, PluginCopyIsAtomicAndSkippedWhenUnchanged) {
  EXPECT_THAT(InstallPlugin(config_), IsOkAndHolds(true));
  std::string target = config_.cni_bin_dir + "/fabric-nat";
  EXPECT_EQ(Read(target), "plugin v1");
  struct stat st{};
  ASSERT_EQ(stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  EXPECT_THAT(InstallPlugin(config_), IsOkAndHolds(false));
  Write(config_.plugin_source, "plugin v2");
  EXPECT_THAT(InstallPlugin(config_), IsOkAndHolds(true));
  EXPECT_EQ(Read(target), "plugin v2");
  EXPECT_THAT(Names(config_.cni_bin_dir), ElementsAre("fabric-nat"));
  config_.plugin_source = root_ + "/image/none";
  EXPECT_THAT(InstallPlugin(config_), StatusIs(absl::StatusCode::kNotFound,
                                               HasSubstr(root_ + "/image/none does not exist")));
}

// A runtime may be executing the old plugin (a DEL in flight) while the new
// one is installed: writing into the running file fails with ETXTBSY, and
// deleting it first would leave a moment with no plugin. A rename does
// neither.
TEST_F(CniInstallTest, ReplacesABinaryWhileAnOldCopyExecutes) {
  std::string target = config_.cni_bin_dir + "/fabric-nat";
  ASSERT_OK(WriteFileAtomically(target, Read("/bin/sleep"), 0755));
  pid_t old = fork();
  if (old == 0) {
    execl(target.c_str(), "fabric-nat", "30", nullptr);
    _exit(127);
  }
  ASSERT_GT(old, 0);
  // Wait until the old copy is executing, then show that it is busy.
  int fd = -1;
  for (int i = 0; i < 100; ++i) {
    fd = open(target.c_str(), O_WRONLY);
    if (fd < 0 && errno == ETXTBSY) break;
    if (fd >= 0) close(fd);
    usleep(10000);
  }
  ASSERT_LT(fd, 0);
  ASSERT_EQ(errno, ETXTBSY);

  const std::string fresh = Read("/bin/true");
  Write(config_.plugin_source, fresh);
  EXPECT_THAT(InstallPlugin(config_), IsOkAndHolds(true));
  EXPECT_EQ(Read(target), fresh);
  // The old copy still runs; the new one runs too.
  EXPECT_EQ(kill(old, 0), 0);
  EXPECT_EQ(system(target.c_str()), 0);
  kill(old, SIGKILL);
  int status = 0;
  waitpid(old, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
}

TEST_F(CniInstallTest, UninstallRemovesOnlyWhatItWrote) {
  Write(Conf("10-containerd-net.conflist"), TestData("10-containerd-net.conflist"));
  ASSERT_OK_AND_ASSIGN(Rendered r, RenderConflist(config_));
  ASSERT_OK(WriteConfIfChanged(config_, r.content).status());
  ASSERT_OK(InstallPlugin(config_).status());
  ASSERT_OK(Uninstall(config_, /*remove_plugin=*/false));
  EXPECT_THAT(Names(config_.cni_conf_dir), ElementsAre("10-containerd-net.conflist"));
  EXPECT_EQ(Read(Conf("10-containerd-net.conflist")), TestData("10-containerd-net.conflist"));
  EXPECT_THAT(Names(config_.cni_bin_dir), ElementsAre("fabric-nat"));
  ASSERT_OK(Uninstall(config_, /*remove_plugin=*/true));
  EXPECT_THAT(Names(config_.cni_bin_dir), ElementsAre());
  // Again: nothing to remove is fine.
  EXPECT_OK(Uninstall(config_, true));
}

// The loop as the DaemonSet's sidecar runs it.
class InstallerLoop {
 public:
  InstallerLoop(const InstallConfig& config, std::function<absl::Status()> ready) {
    LoopOptions options;
    options.poll = absl::Milliseconds(20);
    options.recheck = absl::Seconds(30);  // changes must come from inotify
    thread_ = std::thread([this, config, options, ready] {
      result_ = RunInstaller(config, options, ready,
                             [this](const std::string& line) {
                               std::lock_guard<std::mutex> l(mu_);
                               log_.push_back(line);
                             },
                             stop_);
    });
  }
  ~InstallerLoop() { Stop(); }
  absl::Status Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  std::string Log() {
    std::lock_guard<std::mutex> l(mu_);
    std::string out;
    for (const std::string& s : log_) absl::StrAppend(&out, s, "\n");
    return out;
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Status result_;
  std::mutex mu_;
  std::vector<std::string> log_;
};

// Polls `done` for up to 5 s.
bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 250; ++i) {
    if (done()) return true;
    usleep(20000);
  }
  return done();
}

TEST_F(CniInstallTest, LoopWaitsForTheAgentThenKeepsTheConfigurationCurrent) {
  Write(Conf("10-containerd-net.conflist"), TestData("10-containerd-net.conflist"));
  std::atomic<bool> agent_up{false};
  InstallerLoop loop(config_, [&] {
    return agent_up ? absl::OkStatus() : absl::UnavailableError("no agent socket");
  });
  // The plugin goes in at once; the network waits for the agent.
  ASSERT_TRUE(Eventually([&] { return access((config_.cni_bin_dir + "/fabric-nat").c_str(), F_OK) == 0; }));
  usleep(200000);
  EXPECT_NE(access(Ours().c_str(), F_OK), 0);
  EXPECT_THAT(loop.Log(), HasSubstr("waiting for the agent: no agent socket"));
  agent_up = true;
  ASSERT_TRUE(Eventually([&] { return access(Ours().c_str(), F_OK) == 0; })) << loop.Log();

  // The node's network changes (written by rename, as editors and
  // installers do): the chained copy follows.
  std::string edited = TestData("10-containerd-net.conflist");
  edited.replace(edited.find("10.88.0.0/16"), 12, "10.99.0.0/16");
  Write(Conf(".tmp-edit"), edited);
  ASSERT_EQ(rename(Conf(".tmp-edit").c_str(), Conf("10-containerd-net.conflist").c_str()), 0);
  EXPECT_TRUE(Eventually([&] { return Read(Ours()).find("10.99.0.0/16") != std::string::npos; }))
      << loop.Log();

  // Someone deletes the conflist or the plugin: both come back.
  unlink(Ours().c_str());
  EXPECT_TRUE(Eventually([&] { return access(Ours().c_str(), F_OK) == 0; })) << loop.Log();
  unlink((config_.cni_bin_dir + "/fabric-nat").c_str());
  EXPECT_TRUE(Eventually([&] { return Read(config_.cni_bin_dir + "/fabric-nat") == "plugin v1"; }))
      << loop.Log();

  // A broken source is reported and the last good configuration stays.
  std::string good = Read(Ours());
  Write(Conf("10-containerd-net.conflist"), "{");
  EXPECT_TRUE(Eventually([&] { return loop.Log().find("is not valid JSON") != std::string::npos; }));
  EXPECT_EQ(Read(Ours()), good);

  // Stopping (an upgrade, a pod restart) leaves everything in place.
  EXPECT_OK(loop.Stop());
  EXPECT_EQ(Read(Ours()), good);
  EXPECT_EQ(Read(config_.cni_bin_dir + "/fabric-nat"), "plugin v1");
}

TEST_F(CniInstallTest, LoopWaitsForTheNetworkPluginToWriteItsConfiguration) {
  InstallerLoop loop(config_, [] { return absl::OkStatus(); });
  EXPECT_TRUE(Eventually([&] {
    return loop.Log().find("no CNI network configuration in") != std::string::npos;
  }));
  Write(Conf("10-containerd-net.conflist"), TestData("10-containerd-net.conflist"));
  EXPECT_TRUE(Eventually([&] { return access(Ours().c_str(), F_OK) == 0; })) << loop.Log();
  EXPECT_OK(loop.Stop());
}

TEST_F(CniInstallTest, OnceReturnsTheFirstError) {
  std::atomic<bool> stop{false};
  LoopOptions once;
  once.once = true;
  EXPECT_THAT(RunInstaller(config_, once, [] { return absl::OkStatus(); },
                           [](const std::string&) {}, stop),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  Write(Conf("10-containerd-net.conflist"), TestData("10-containerd-net.conflist"));
  EXPECT_OK(RunInstaller(config_, once, [] { return absl::OkStatus(); },
                         [](const std::string&) {}, stop));
  EXPECT_EQ(json::parse(Read(Ours()))["name"], "containerd-net");
}

}  // namespace
}  // namespace fabric::agent::install
