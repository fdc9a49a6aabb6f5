// fabric-agent as a process: its socket, metrics, health, restarts and the
// rules it leaves in place, in a namespace of its own.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "agent/store.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

// How nft lists the element of tcp 8080 -> 10.1.0.5:80 (with its counter).
constexpr char kElement8080[] =
    "tcp \\. 8080 counter packets [0-9]+ bytes [0-9]+ : 10\\.1\\.0\\.5 \\. 80";

using ::fabric::testing::AgentProcess;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);

    dir_ = tmp_.path();
    ASSERT_FALSE(dir_.empty());
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("agent"));
  }
  void TearDown() override {
    agent_.reset();
  }

  void StartAgent(const std::string& extra = "") {
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_,
                                                     "--metrics_address=127.0.0.1:19333 " + extra));
  }
  absl::StatusOr<std::string> Ctl(const std::string& args) {
    return testing::Fabricctl(dir_ + "/agent.sock", args);
  }

  testing::ScopedTempDir tmp_{"agent"};
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
  EXPECT_THAT(Ctl("add tcp 8080 10.1.0.6:80 --owner other"),
              fabric::testing::StatusIs(absl::StatusCode::kInternal,
                                        HasSubstr("host port 8080/tcp on 0.0.0.0 is held by "
                                                  "mapping m-1 of web")));
  // The plugin's STATUS (CNI 1.1): its call is one the agent serves itself;
  // fabricctl's three went to gRPC's server.
  std::string status_config = absl::StrCat(
      R"({"cniVersion":"1.1.0","name":"n","type":"fabric-nat","agentSocket":")", agent_->socket(),
      R"("})");
  ASSERT_OK(ns_->Exec(absl::StrCat("echo '", status_config,
                                   "' | CNI_COMMAND=STATUS CNI_PATH=/nowhere ",
                                   testing::Runfile("cni/fabric-nat")))
                .status());
  ASSERT_OK_AND_ASSIGN(std::string metrics,
                       ns_->Exec("curl -s http://127.0.0.1:19333/metrics"));
  for (const char* want :
       {"nat_socket_connections_total{server=\"agent\"} 1",
        "nat_socket_connections_total{server=\"grpc\"} 3", "nat_rules{type=\"dnat\"} 2", "nat_port_mappings{owner=\"api\"} 2",
        "nat_port_mappings{owner=\"cni\"} 0", "nat_connections_total{type=\"dnat\"} 0",
        "nat_operations_total{op=\"create_mapping\"} 3",
        "nat_operation_errors_total{op=\"create_mapping\"} 1",
        "nat_operation_duration_seconds_count 3", "nat_operation_duration_seconds_bucket{le=\"+Inf\"} 3"}) {
    EXPECT_THAT(metrics, HasSubstr(want));
  }
  EXPECT_THAT(agent_->LogText(), HasSubstr("op=create_mapping owner=web outcome=ok"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("outcome=ALREADY_EXISTS"));
  // Prometheus' own linter (Debian's promtool) finds nothing to say.
  EXPECT_THAT(ns_->Exec("curl -s http://127.0.0.1:19333/metrics | promtool check metrics 2>&1; "
                        "echo rc=$?"),
              IsOkAndHolds("rc=0\n"));
}

TEST_F(AgentTest, TurnsOnIpForwardingUnlessToldNot) {
  ASSERT_OK(ns_->Exec("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0"));
  StartAgent("--ip_forward=false");
  EXPECT_THAT(ns_->Exec("cat /proc/sys/net/ipv4/ip_forward"), IsOkAndHolds("0\n"));
  agent_.reset();
  StartAgent("--ip6_forward");
  EXPECT_THAT(ns_->Exec("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding"),
              IsOkAndHolds("1\n1\n"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("set net.ipv4.ip_forward=1 (it was 0; --ip_forward)"));
  EXPECT_THAT(agent_->LogText(),
              HasSubstr("set net.ipv6.conf.all.forwarding=1 (it was 0; --ip6_forward)"));
  // Already on: nothing to say (the log goes on across restarts: only this
  // start's part).
  agent_.reset();
  StartAgent();
  std::string log = agent_->LogText();
  EXPECT_THAT(log.substr(log.rfind(" started: ")), Not(HasSubstr("ip_forward")));
}

TEST_F(AgentTest, PerMappingSeriesOnlyWhenAskedAndTheyLint) {
  StartAgent("--metrics_per_mapping");
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner 'we\"b'").status());
  ASSERT_OK_AND_ASSIGN(std::string metrics, ns_->Exec("curl -s http://127.0.0.1:19333/metrics"));
  EXPECT_THAT(metrics,
              HasSubstr("nat_mapping_connections_total{id=\"m-1\",owner=\"api\",owner_id=\"we\\\"b\"} 0"));
  EXPECT_THAT(ns_->Exec("curl -s http://127.0.0.1:19333/metrics | promtool check metrics 2>&1; "
                        "echo rc=$?"),
              IsOkAndHolds("rc=0\n"));
  agent_.reset();
  StartAgent();
  EXPECT_THAT(ns_->Exec("curl -s http://127.0.0.1:19333/metrics"),
              IsOkAndHolds(Not(HasSubstr("nat_mapping_connections_total"))));
}

TEST_F(AgentTest, RestApiServesStatusMappingsAndLeases) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  ASSERT_OK(Ctl("add udp 5353 10.1.0.6:53 --owner dns").status());
  auto get = [&](const std::string& path) {
    return ns_->Exec("curl -s -w ' %{http_code}' 'http://127.0.0.1:19333" + path + "'");
  };
  ASSERT_OK_AND_ASSIGN(std::string status, get("/api/v1/status"));
  EXPECT_THAT(status, HasSubstr("\"ready\":true"));
  EXPECT_THAT(status, HasSubstr("\"backend\":\"nftables\""));
  EXPECT_THAT(status, ::testing::EndsWith(" 200"));
  ASSERT_OK_AND_ASSIGN(std::string all, get("/api/v1/mappings"));
  EXPECT_THAT(all, HasSubstr("\"host_port\":8080"));
  EXPECT_THAT(all, HasSubstr("\"host_port\":5353"));
  ASSERT_OK_AND_ASSIGN(std::string web, get("/api/v1/mappings?owner_kind=api&owner_id=web"));
  EXPECT_THAT(web, HasSubstr("\"target_ip\":\"10.1.0.5\""));
  EXPECT_THAT(web, Not(HasSubstr("10.1.0.6")));
  EXPECT_THAT(get("/api/v1/mappings?owner_kind=OWNER_KIND_API&owner_id=dns"),
              IsOkAndHolds(HasSubstr("10.1.0.6")));
  EXPECT_THAT(get("/api/v1/mappings?owner_kind=bogus"),
              IsOkAndHolds(::testing::AllOf(HasSubstr("owner_kind must be one of"),
                                            ::testing::EndsWith(" 400"))));
  EXPECT_THAT(get("/api/v1/mappings?owner_id=web"),
              IsOkAndHolds(HasSubstr("owner_id needs owner_kind")));
  // In pages: the second of two, after the first's token.
  ASSERT_OK_AND_ASSIGN(std::string first, get("/api/v1/mappings?page_size=1"));
  EXPECT_THAT(first, HasSubstr("\"next_page_token\":\"m-"));
  EXPECT_THAT(first, Not(HasSubstr("\"host_port\":5353")));
  std::string token = first.substr(first.find("\"next_page_token\":\"") + 19);
  token = token.substr(0, token.find('"'));
  ASSERT_OK_AND_ASSIGN(std::string rest, get("/api/v1/mappings?page_size=5&page_token=" + token));
  EXPECT_THAT(rest, HasSubstr("\"host_port\":5353"));
  EXPECT_THAT(rest, HasSubstr("\"next_page_token\":\"\""));
  EXPECT_THAT(get("/api/v1/mappings?page_size=-3"),
              IsOkAndHolds(::testing::AllOf(HasSubstr("page_size -3 is negative"),
                                            ::testing::EndsWith(" 400"))));
  EXPECT_THAT(get("/api/v1/mappings?page_size=lots"),
              IsOkAndHolds(HasSubstr("page_size must be a number")));
  // No leases here (no LAN front-end): an empty list.
  EXPECT_THAT(get("/api/v1/leases"),
              IsOkAndHolds(::testing::StartsWith("{\"mappings\":[],\"next_page_token\":\"\"}")));
  // Read-only.
  EXPECT_THAT(ns_->Exec("curl -s -o /dev/null -w '%{http_code}' -X POST "
                        "http://127.0.0.1:19333/api/v1/mappings"),
              IsOkAndHolds("405"));
}

// The issue's case against the real agent: 200 connections that sent part
// of a request line and then nothing (20 of them dripping a byte every
// 100 ms) while /healthz is asked ten times, all inside the agent's
// namespace. The target is 100 ms; 1 s is asserted, the figure printed.
TEST_F(AgentTest, HealthAnswersPromptlyWhileHalfOpenConnectionsHang) {
  StartAgent();
  const char* script = R"PY(
import socket, time
held = []
for i in range(200):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + i % 4), 0))
    s.connect(("127.0.0.1", 19333))
    s.send(b"GET /heal")
    held.append(s)
time.sleep(0.3)
worst = 0.0
for i in range(10):
    for s in held[:20]:
        s.send(b"t")
    start = time.monotonic()
    c = socket.create_connection(("127.0.0.1", 19333), timeout=5)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    reply = b""
    while True:
        part = c.recv(4096)
        if not part:
            break
        reply += part
    worst = max(worst, (time.monotonic() - start) * 1000)
    c.close()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nok\n"), reply
    time.sleep(0.1)
print("%.2f" % worst)
)PY";
  std::string path = dir_ + "/half_open.py";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(script, f);
  std::fclose(f);
  ASSERT_OK_AND_ASSIGN(std::string out, ns_->Exec("python3 " + path));
  double worst_ms = std::atof(out.c_str());
  std::printf("agent: GET /healthz with 200 half-open connections: worst of 10 %.2f ms "
              "(target 100 ms)\n", worst_ms);
  EXPECT_GT(worst_ms, 0.0) << out;
  EXPECT_LT(worst_ms, 1000.0);
  // Only GET and HEAD, and no bodies, on the metrics port.
  EXPECT_THAT(ns_->Exec("curl -s -o /dev/null -w '%{http_code}' -X POST "
                        "http://127.0.0.1:19333/healthz"),
              IsOkAndHolds("405"));
  EXPECT_THAT(ns_->Exec("curl -s -o /dev/null -w '%{http_code}' -X GET --data x "
                        "http://127.0.0.1:19333/healthz"),
              IsOkAndHolds("413"));
}

// What systemd (Type=notify) and Kubernetes exec probes see: READY=1 on
// $NOTIFY_SOCKET once the kernel is reconciled, `fabricctl health --ready`
// succeeding while the agent serves and failing once it is gone.
TEST_F(AgentTest, ReadinessReachesSystemdAndHealthProbes) {
  std::string notify = dir_ + "/notify";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, notify.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto receive = [fd]() -> std::string {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return "";
    char buf[128];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, n) : "";
  };
  setenv("NOTIFY_SOCKET", notify.c_str(), 1);
  StartAgent();
  unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(receive(), "READY=1");
  EXPECT_THAT(Ctl("health --ready"), IsOkAndHolds("ready\n"));
  EXPECT_THAT(Ctl("status --json"), IsOkAndHolds(HasSubstr("\"version\": \"0.3.0\"")));
  agent_->Stop();
  EXPECT_EQ(receive(), "STOPPING=1");
  close(fd);
  ASSERT_OK_AND_ASSIGN(testing::CommandResult down,
                       testing::RunCommand(absl::StrCat(testing::Runfile("agent/fabricctl"),
                                                        " --socket ", dir_, "/agent.sock",
                                                        " health --ready --timeout=2s")));
  EXPECT_EQ(down.exit_code, 1);
  // A stopped agent removes its socket.
  EXPECT_THAT(down.err, HasSubstr("fabricctl: no agent socket at " + dir_ + "/agent.sock"));
}

// `fabric-agent install-cni --watch` as the DaemonSet's sidecar runs it, in
// a temporary root: the plugin at once, the chained network only once the
// agent answers ready, and SIGTERM (an upgrade) leaves both in place.
TEST_F(AgentTest, InstallCniWaitsForTheAgentAndStopsLeavingFilesInPlace) {
  std::string root = dir_ + "/root";
  ASSERT_OK(testing::Shell(absl::StrCat("mkdir -p ", root, "/bin ", root, "/net.d")));
  ASSERT_OK(testing::Shell(absl::StrCat(
      "printf '%s' '{\"cniVersion\":\"1.0.0\",\"name\":\"node\",\"plugins\":[",
      "{\"type\":\"bridge\"},{\"type\":\"portmap\"}]}' > ", root, "/net.d/10-node.conflist")));
  ASSERT_OK_AND_ASSIGN(
      pid_t installer,
      ns_->Spawn(absl::StrCat("exec ", testing::Runfile("agent/fabric-agent"),
                              " install-cni --watch --socket ", dir_, "/agent.sock",
                              " --plugin ", testing::Runfile("cni/fabric-nat"),
                              " --cni_bin_dir ", root, "/bin --cni_conf_dir ", root,
                              "/net.d > ", dir_, "/install.log 2>&1")));
  auto exists = [](const std::string& path) { return access(path.c_str(), F_OK) == 0; };
  for (int i = 0; i < 100 && !exists(root + "/bin/fabric-nat"); ++i) usleep(50000);
  ASSERT_TRUE(exists(root + "/bin/fabric-nat"));
  usleep(500000);
  EXPECT_FALSE(exists(root + "/net.d/00-fabric-nat.conflist"));
  StartAgent();
  for (int i = 0; i < 100 && !exists(root + "/net.d/00-fabric-nat.conflist"); ++i) usleep(50000);
  ASSERT_OK_AND_ASSIGN(std::string conflist,
                       testing::Shell("cat " + root + "/net.d/00-fabric-nat.conflist"));
  EXPECT_THAT(conflist, HasSubstr("\"type\": \"fabric-nat\""));
  EXPECT_THAT(conflist, Not(HasSubstr("portmap")));
  EXPECT_THAT(conflist, HasSubstr(absl::StrCat("\"agentSocket\": \"", dir_, "/agent.sock\"")));
  ASSERT_OK_AND_ASSIGN(std::string log, testing::Shell("cat " + dir_ + "/install.log"));
  EXPECT_THAT(log, HasSubstr("install-cni: waiting for the agent"));
  EXPECT_THAT(log, HasSubstr("install-cni: wrote " + root +
                             "/net.d/00-fabric-nat.conflist (10-node.conflist with fabric-nat)"));
  // The shell exec'd the agent binary, so `installer` is fabric-agent.
  ASSERT_EQ(kill(installer, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(installer, &status, 0), installer);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(exists(root + "/net.d/00-fabric-nat.conflist"));
  EXPECT_TRUE(exists(root + "/bin/fabric-nat"));
}

TEST_F(AgentTest, StopLeavesRulesAndRestartRestoresState) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  agent_->Stop();
  EXPECT_THAT(agent_->LogText(), HasSubstr("kernel rules left in place"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
  // A flush while the agent is down is healed at start.
  ASSERT_OK(ns_->Exec("nft flush ruleset"));
  StartAgent();
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0.0.0.0:8080")));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
}

TEST_F(AgentTest, StaleSocketIsReplacedLiveOneIsNot) {
  StartAgent();
  agent_->Kill();  // leaves the socket file behind
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/agent.sock").c_str(), &st), 0);
  StartAgent();
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("ready:        yes")));
  // A second agent on the same socket (and state dir) refuses to start.
  auto second = AgentProcess::Start(ns_.get(), dir_, "--metrics_address=");
  EXPECT_FALSE(second.ok());
  EXPECT_THAT(agent_->LogText(), HasSubstr(absl::StrCat(
                                     "another fabric-agent already runs on state dir ", dir_,
                                     "/state (pid ")));
  // One with a state dir of its own, in another namespace, on the same
  // live socket: refused too.
  ASSERT_OK_AND_ASSIGN(auto elsewhere, Netns::Create("agent-b"));
  testing::ScopedTempDir other("agent2");
  ASSERT_OK(agent::Store::Open(other.path() + "/state").status());
  auto third = AgentProcess::Start(elsewhere.get(), other.path(),
                                   absl::StrCat("--socket=", dir_, "/agent.sock"));
  EXPECT_FALSE(third.ok());
  EXPECT_THAT(std::string(third.status().message()),
              HasSubstr(absl::StrCat("another agent is serving ", dir_, "/agent.sock")));
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("ready:        yes")));
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
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
}

// Issue 10, items 15 and 16: an error quoting a huge client value keeps its
// code (it used to overflow gRPC's metadata and arrive as RESOURCE_EXHAUSTED,
// "no free port" to the plugin), and client text cannot forge log lines.
TEST_F(AgentTest, HugeOrHostileClientTextKeepsErrorCodesAndLogLinesIntact) {
  StartAgent();
  ASSERT_OK_AND_ASSIGN(
      testing::CommandResult r,
      testing::RunCommand(absl::StrCat(testing::Runfile("agent/fabricctl"), " --socket ", dir_,
                                       "/agent.sock add tcp 8080 10.1.0.5:80 --host_ip ",
                                       std::string(20000, '9'))));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("host IP"));
  EXPECT_THAT(r.err, HasSubstr("bytes)"));
  EXPECT_LT(r.err.size(), 4096u);
  ASSERT_OK(Ctl("add tcp 8081 10.1.0.5:80 --owner \"$(printf 'evil\\n2026-01-01T00:00:00.000Z "
                "op=forged')\"")
                .status());
  std::string log = agent_->LogText();
  EXPECT_THAT(log, HasSubstr("owner=evil\\x0a2026-01-01T00:00:00.000Z op=forged"));
  EXPECT_THAT(log, Not(HasSubstr("\n2026-01-01T00:00:00.000Z op=forged")));
}

// A lost store (an emptied file, a new --state_dir, a lost hostPath) must
// not be taken as the truth while the kernel holds our rules: that would
// unpublish every container.
TEST_F(AgentTest, EmptyOrMissingStoreRefusesToStartWhileTheKernelHoldsRules) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  agent_->Stop();
  const std::string kept = kElement8080;
  // The database emptied to 0 bytes.
  ASSERT_OK(testing::Shell(absl::StrCat("rm -f ", dir_, "/state/state.db-wal ", dir_,
                                        "/state/state.db-shm; : > ", dir_, "/state/state.db")));
  auto emptied = AgentProcess::Start(ns_.get(), dir_, "--metrics_address=");
  ASSERT_FALSE(emptied.ok());
  EXPECT_THAT(std::string(emptied.status().message()),
              HasSubstr("/state/state.db is new or empty, but the kernel's nftables table holds 1 "
                        "NAT entries"));
  EXPECT_THAT(std::string(emptied.status().message()), HasSubstr("--reset_state"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"), IsOkAndHolds(::testing::ContainsRegex(kept)));
  // A new, empty state dir (another --state_dir).
  testing::ScopedTempDir other("agent2");
  auto elsewhere = AgentProcess::Start(ns_.get(), other.path(), "--metrics_address=");
  ASSERT_FALSE(elsewhere.ok());
  EXPECT_THAT(std::string(elsewhere.status().message()), HasSubstr("is new or empty"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"), IsOkAndHolds(::testing::ContainsRegex(kept)));
  // Said explicitly: start empty, and the kernel follows.
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_, "--reset_state"));
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("mappings:     0")));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(Not(HasSubstr("8080"))));
}

// Issue 10, item 2, the marker: the table carries the id of the store that
// made it, so an agent with another state (one that does not share the
// first's run dir, or runs after it) does not rewrite it.
TEST_F(AgentTest, AnotherStatesTableIsNotRewrittenWithoutResetState) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  agent_->Stop();
  testing::ScopedTempDir other("agent2");
  ASSERT_OK(agent::Store::Open(other.path() + "/state").status());  // not new
  auto refused = AgentProcess::Start(ns_.get(), other.path(), "--metrics_address=");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("the kernel's table belongs to another agent's state (fabric-nat-store-"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
  // Taken over explicitly: the table is the new state's, empty.
  {
    ASSERT_OK_AND_ASSIGN(auto taken, AgentProcess::Start(ns_.get(), other.path(),
                                                         "--metrics_address= --reset_state"));
    EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
                IsOkAndHolds(Not(HasSubstr("8080"))));
    taken->Stop();
  }
  // Now the first state is the other one.
  auto first_again = AgentProcess::Start(ns_.get(), dir_, "--metrics_address=");
  ASSERT_FALSE(first_again.ok());
  EXPECT_THAT(std::string(first_again.status().message()),
              HasSubstr("belongs to another agent's state"));
}

// A second agent (its own --state_dir and --socket) in the same network
// namespace is refused before it changes the kernel, naming the first.
TEST_F(AgentTest, ASecondAgentInTheSameNamespaceIsRefusedBeforeTouchingTheKernel) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  testing::ScopedTempDir other("agent2");
  // Its store exists (empty, not new): without the guard it would make the
  // kernel match it and delete the first agent's rule.
  ASSERT_OK(agent::Store::Open(other.path() + "/state").status());
  auto second = AgentProcess::Start(ns_.get(), other.path(),
                                    absl::StrCat("--run_dir=", dir_, "/run"));
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("another fabric-agent already runs in this network namespace"));
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat("state dir ", dir_, "/state, socket ", dir_, "/agent.sock")));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("1 mapping(s)")));
}

}  // namespace
}  // namespace fabric

namespace fabric {
namespace {

// Counts elements in a map as `nft` lists them.
int CountElements(const std::string& listing) {
  size_t at = listing.find("elements = {");
  if (at == std::string::npos) return 0;
  size_t end = listing.find('}', at);
  return static_cast<int>(std::count(listing.begin() + at, listing.begin() + end, ':'));
}

TEST_F(AgentTest, FlushOfTheWholeRulesetHealsWithoutRestart) {
  StartAgent();
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK(Ctl(absl::StrCat("add tcp ", 8000 + i, " 10.1.0.5:80 --owner w")).status());
  }
  absl::Time flushed = absl::Now();
  ASSERT_OK(ns_->Exec("nft flush ruleset"));
  int count = 0;
  while (absl::Now() - flushed < absl::Seconds(5)) {
    absl::StatusOr<std::string> out = ns_->Exec("nft list map inet fabric_nat dnat4_any 2>/dev/null");
    if (out.ok() && (count = CountElements(*out)) == 20) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::Duration took = absl::Now() - flushed;
  EXPECT_EQ(count, 20);
  EXPECT_LT(took, absl::Seconds(1));
  std::printf("healed a flush of 20 mappings in %s\n", absl::FormatDuration(took).c_str());
  EXPECT_THAT(agent_->LogText(), HasSubstr("in table inet fabric_nat by netlink port"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("rebuilt the table (table missing); it lacked 20"));
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("repairs:      1")));
}

TEST_F(AgentTest, ElementDeletedByHandIsRestoredAndOwnChangesCauseNoRepair) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner w").status());
  ASSERT_OK(Ctl("add udp 5353 10.1.0.5:53 --owner w").status());
  ASSERT_OK(Ctl("add tcp 8081 10.1.0.5:81 --owner w").status());
  ASSERT_OK(Ctl("remove m-3").status());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("repairs:      0")));
  // Not the map's last element: that would leave its rule behind with an
  // empty map, which only a rebuild mends (the rules follow the contents).
  ASSERT_OK(ns_->Exec("nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }'"));
  std::string listing;
  for (int i = 0; i < 100; ++i) {
    listing = *ns_->Exec("nft list map inet fabric_nat dnat4_any");
    if (CountElements(listing) == 2) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_THAT(listing, ::testing::ContainsRegex(kElement8080));
  EXPECT_THAT(agent_->LogText(), HasSubstr("restored 1 (dnat tcp 0.0.0.0:8080 -> 10.1.0.5:80)"));
  ASSERT_OK_AND_ASSIGN(std::string metrics, ns_->Exec("curl -s http://127.0.0.1:19333/metrics"));
  EXPECT_THAT(metrics, HasSubstr("nat_repairs_total 1"));
  EXPECT_THAT(metrics, ::testing::Not(HasSubstr("nat_last_repair_seconds 0\n")));
}

TEST_F(AgentTest, RestartWithNothingChangedMakesNoKernelChange) {
  StartAgent();
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK(Ctl(absl::StrCat("add tcp ", 8000 + i, " 10.1.0.5:80 --owner w")).status());
  }
  agent_->Stop();
  std::string events = dir_ + "/events.txt";
  ASSERT_OK(ns_->Spawn("exec stdbuf -oL nft monitor > " + events).status());
  absl::SleepFor(absl::Milliseconds(200));
  StartAgent();
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_THAT(testing::Shell("cat " + events), IsOkAndHolds(""));
  // Positive control: the monitor was listening, and sees the next change.
  ASSERT_OK(Ctl("add tcp 8100 10.1.0.5:80 --owner w").status());
  std::string seen;
  for (int i = 0; i < 100 && seen.find("8100") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    seen = *testing::Shell("cat " + events);
  }
  EXPECT_THAT(seen, ::testing::ContainsRegex(
      "create element inet fabric_nat dnat4_any \\{ tcp \\. 8100 (counter packets 0 bytes 0 )?: "
      "10\\.1\\.0\\.5 \\. 80 \\}"));
  // Elements the store does not know are removed at start.
  agent_->Stop();
  ASSERT_OK(ns_->Exec("nft add element inet fabric_nat dnat4_any '{ udp . 9999 : 10.9.9.9 . 99 }'"));
  StartAgent();
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::Not(HasSubstr("9999"))));
}

TEST_F(AgentTest, DiagnoseComparesKernelAndStore) {
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_,
                                                   "--repair_on_change=false"));
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  ASSERT_OK(Ctl("add udp 5353 10.1.0.5:53 --owner dns").status());
  // The kernel's generation shows nothing but the agent's own commits since
  // it last matched: no element is read; --full reads and counts them.
  EXPECT_THAT(Ctl("diagnose"),
              IsOkAndHolds(AllOf(HasSubstr("healthy"), HasSubstr("changed since only by this "
                                                                 "agent's own commits"))));
  EXPECT_THAT(Ctl("diagnose --full"),
              IsOkAndHolds(AllOf(HasSubstr("healthy"),
                                 HasSubstr("kernel table inet fabric_nat: 2 entries, 2 expected"))));
  // Anyone else's commit moves the generation: the next diagnose reads.
  ASSERT_OK(ns_->Exec("nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }' && "
                      "nft add element inet fabric_nat dnat4_any '{ tcp . 9999 : 10.9.9.9 . 99 }'"));
  absl::StatusOr<testing::CommandResult> r = testing::RunCommand(absl::StrCat(
      testing::Runfile("agent/fabricctl"), " --socket ", dir_, "/agent.sock diagnose"));
  ASSERT_OK(r.status());
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->out, HasSubstr("kernel lacks 1 of 2 entries: tcp 0.0.0.0:8080 -> 10.1.0.5:80"));
  EXPECT_THAT(r->out, HasSubstr("kernel holds 1 entries the store does not know: tcp 0.0.0.0:9999"));
  EXPECT_THAT(r->out, HasSubstr("2 mapping(s)"));
}

TEST_F(AgentTest, BackupIsAStoreTheAgentStartsFrom) {
  ASSERT_OK(testing::Shell("mkdir -p " + dir_ + "/restore"));
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_,
                                                   "--metrics_address=127.0.0.1:19333 "
                                                   "--backup_dir=" + dir_ + "/restore"));
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner w").status());
  ASSERT_OK(Ctl("add udp 0 10.1.0.6:53 --owner dns").status());
  ASSERT_OK(testing::Shell("mkdir -p " + dir_ + "/restore"));
  EXPECT_THAT(Ctl(absl::StrCat("backup ", dir_, "/restore/state.db")),
              IsOkAndHolds(HasSubstr("2 mapping(s)")));
  struct stat st;
  ASSERT_EQ(stat((dir_ + "/restore/state.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Issue 10, item 9: nowhere else, and never over a file that is not a
  // backup (a description with a crontab line would end up in it).
  ASSERT_OK(testing::Shell("mkdir -p " + dir_ + "/elsewhere"));
  auto refused = testing::RunCommand(absl::StrCat(testing::Runfile("agent/fabricctl"),
                                                  " --socket ", dir_, "/agent.sock backup ", dir_,
                                                  "/elsewhere/x.db"));
  ASSERT_OK(refused.status());
  EXPECT_EQ(refused->exit_code, 1);
  EXPECT_THAT(refused->err, HasSubstr("backups go into the state dir or --backup_dir"));
  EXPECT_NE(access((dir_ + "/elsewhere/x.db").c_str(), F_OK), 0);
  ASSERT_OK(testing::Shell("echo 'keep me' > " + dir_ + "/restore/notes.txt"));
  auto overwrite = testing::RunCommand(absl::StrCat(testing::Runfile("agent/fabricctl"),
                                                    " --socket ", dir_, "/agent.sock backup ",
                                                    dir_, "/restore/notes.txt"));
  ASSERT_OK(overwrite.status());
  EXPECT_EQ(overwrite->exit_code, 1);
  EXPECT_THAT(overwrite->err, HasSubstr("is not an earlier fabric-nat backup"));
  EXPECT_THAT(testing::Shell("cat " + dir_ + "/restore/notes.txt"), IsOkAndHolds("keep me\n"));
  ASSERT_OK(testing::Shell("rm " + dir_ + "/restore/notes.txt"));
  // An earlier backup may be replaced.
  EXPECT_THAT(Ctl(absl::StrCat("backup ", dir_, "/restore/state.db")),
              IsOkAndHolds(HasSubstr("2 mapping(s)")));
  std::string before = *Ctl("list");
  agent_->Stop();
  ASSERT_OK(testing::Shell(absl::StrCat("rm -rf ", dir_, "/state && mv ", dir_,
                                        "/restore ", dir_, "/state")));
  StartAgent();
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(before));
}

}  // namespace
}  // namespace fabric

namespace fabric {
namespace {

// The periodic check and the dead-netns sweep end to end, as they run by
// default (not with --reconcile_interval=0): with change events off, an
// element deleted by hand comes back on the next check, and a container
// whose network namespace is gone is detached.
TEST_F(AgentTest, PeriodicCheckRepairsAndSweepsWithoutEvents) {
  ASSERT_OK_AND_ASSIGN(auto pod, Netns::Create("pod"));
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(ns_.get(), dir_,
                                                   "--repair_on_change=false "
                                                   "--reconcile_interval=1s"));
  auto channel = grpc::CreateChannel("unix:" + agent_->socket(), grpc::InsecureChannelCredentials());
  auto stub = nat::v1::AttachmentService::NewStub(channel);
  nat::v1::AttachRequest req;
  nat::v1::Attachment* a = req.mutable_attachment();
  a->mutable_key()->set_container_id("sweepme");
  a->mutable_key()->set_ifname("eth0");
  a->mutable_key()->set_network_name("net");
  a->set_netns_path("/run/netns/" + pod->name());
  a->add_container_addresses("10.1.0.7/24");
  nat::v1::PortMappingRequest* m = a->add_port_mappings();
  m->set_protocol(nat::v1::PROTOCOL_TCP);
  m->set_host_port(8090);
  m->set_container_port(80);
  {
    grpc::ClientContext c;
    nat::v1::AttachResponse resp;
    ASSERT_TRUE(stub->Attach(&c, req, &resp).ok());
  }
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner w").status());
  ASSERT_OK(ns_->Exec("nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }'"));
  std::string listing;
  for (int i = 0; i < 60 && listing.find("tcp . 8080") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    listing = *ns_->Exec("nft list map inet fabric_nat dnat4_any");
  }
  EXPECT_THAT(listing, ::testing::ContainsRegex(kElement8080));
  EXPECT_THAT(agent_->LogText(), HasSubstr("repair after periodic check"));
  // The pod's namespace goes without a DEL.
  std::string pod_name = pod->name();
  pod.reset();
  std::string status;
  for (int i = 0; i < 60 && status.find("attachments:  0") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    status = *Ctl("status");
  }
  EXPECT_THAT(status, HasSubstr("attachments:  0"));
  EXPECT_THAT(agent_->LogText(),
              HasSubstr("swept container=sweepme ifname=eth0 network=net: its network "
                        "namespace is gone"));
  EXPECT_THAT(ns_->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(Not(HasSubstr("8090"))));
}

TEST_F(AgentTest, ColdStartWithTenThousandMappingsIsOneTransaction) {
  {
    ASSERT_OK_AND_ASSIGN(auto store, agent::Store::Open(dir_ + "/state"));
    agent::StoreWrite w;
    for (int i = 0; i < 10000; ++i) {
      nat::v1::PortMapping m;
      m.set_id(absl::StrCat("m-", i + 1));
      m.mutable_owner()->set_kind(nat::v1::OWNER_KIND_API);
      m.mutable_owner()->set_id("bulk");
      m.set_protocol(i % 2 ? nat::v1::PROTOCOL_UDP : nat::v1::PROTOCOL_TCP);
      m.set_host_port(20000 + i / 2);
      m.set_target_ip(absl::StrCat("10.1.", i / 250, ".", 1 + i % 250));
      m.set_target_port(80);
      w.put_mappings.push_back(m);
    }
    w.next_mapping_id = 10001;
    ASSERT_OK(store->Commit(w));
  }
  std::string events = dir_ + "/events.txt";
  ASSERT_OK(ns_->Spawn("exec stdbuf -oL nft monitor > " + events).status());
  absl::SleepFor(absl::Milliseconds(200));
  StartAgent();
  // nft monitor prints the transaction's end last; under load it may come
  // a while after the agent serves. Then give a second one time to show.
  std::string text;
  for (int i = 0; i < 100 && text.find("new generation") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_OK_AND_ASSIGN(text, testing::Shell("cat " + events));
  }
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_OK_AND_ASSIGN(text, testing::Shell("cat " + events));
  EXPECT_EQ(std::count(text.begin(), text.end() , '#'), 1)
      << "expected one transaction (one '# new generation' line)";
  EXPECT_THAT(text, HasSubstr("new generation"));
  ASSERT_OK_AND_ASSIGN(std::string tcp, ns_->Exec("nft list map inet fabric_nat dnat4_any | grep -o 'tcp \\. [0-9]* counter' | wc -l"));
  EXPECT_EQ(tcp, "5000\n");
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("mappings:     10000")));
}

}  // namespace
}  // namespace fabric

namespace fabric {
namespace {

// Orchestrators reach the agent over TCP only with TLS and a client
// certificate signed by --tls_client_ca.
TEST_F(AgentTest, TlsListenerRequiresAClientCertificate) {
  const std::string d = dir_ + "/pki";
  ASSERT_OK(testing::Shell(absl::StrCat(
      "mkdir -p ", d, " && cd ", d, " && ",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca "
      "-keyout ca.key -out ca.pem 2>/dev/null && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
      "-out server.csr 2>/dev/null && ",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext && ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-days 1 -extfile san.ext -out server.pem 2>/dev/null && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=orchestrator -keyout client.key "
      "-out client.csr 2>/dev/null && ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      "-days 1 -out client.pem 2>/dev/null")));
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(
                                   ns_.get(), dir_,
                                   absl::StrCat("--tls_address=127.0.0.1:19443 --tls_cert=", d,
                                                "/server.pem --tls_key=", d,
                                                "/server.key --tls_client_ca=", d, "/ca.pem")));
  auto read = [](const std::string& path) { return *testing::Shell("cat " + path); };
  ASSERT_OK_AND_ASSIGN(auto enter, testing::ScopedNetns::Enter(*ns_));
  auto status = [&](bool with_client_cert) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read(d + "/ca.pem");
    if (with_client_cert) {
      o.pem_private_key = read(d + "/client.key");
      o.pem_cert_chain = read(d + "/client.pem");
    }
    auto channel = grpc::CreateChannel("127.0.0.1:19443", grpc::SslCredentials(o));
    auto stub = nat::v1::AgentService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    nat::v1::GetStatusResponse r;
    return stub->GetStatus(&ctx, nat::v1::GetStatusRequest(), &r);
  };
  grpc::Status with = status(true);
  EXPECT_TRUE(with.ok()) << with.error_message();
  EXPECT_EQ(status(false).error_code(), grpc::StatusCode::UNAVAILABLE);
  // Issue 10, item 9: over TLS, mappings and read-only status only.
  {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read(d + "/ca.pem");
    o.pem_private_key = read(d + "/client.key");
    o.pem_cert_chain = read(d + "/client.pem");
    auto channel = grpc::CreateChannel("127.0.0.1:19443", grpc::SslCredentials(o));
    auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(3); };
    {
      grpc::ClientContext c;
      c.set_deadline(deadline());
      nat::v1::ListMappingsResponse lr;
      EXPECT_TRUE(nat::v1::MappingService::NewStub(channel)
                      ->ListMappings(&c, nat::v1::ListMappingsRequest(), &lr)
                      .ok());
    }
    {
      grpc::ClientContext c;
      c.set_deadline(deadline());
      nat::v1::DetachRequest req;
      req.mutable_key()->set_container_id("c1");
      req.mutable_key()->set_ifname("eth0");
      nat::v1::DetachResponse resp;
      grpc::Status s = nat::v1::AttachmentService::NewStub(channel)->Detach(&c, req, &resp);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
    }
    {
      grpc::ClientContext c;
      c.set_deadline(deadline());
      nat::v1::BackupRequest req;
      req.set_path(dir_ + "/state/tls-backup.db");
      nat::v1::BackupResponse resp;
      grpc::Status s = nat::v1::AgentService::NewStub(channel)->Backup(&c, req, &resp);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
      EXPECT_NE(access((dir_ + "/state/tls-backup.db").c_str(), F_OK), 0);
    }
  }
  // Plain TCP without TLS gets nothing either.
  auto plain = nat::v1::AgentService::NewStub(
      grpc::CreateChannel("127.0.0.1:19443", grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  nat::v1::GetStatusResponse r;
  EXPECT_EQ(plain->GetStatus(&ctx, nat::v1::GetStatusRequest(), &r).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace fabric

namespace fabric {
namespace {

// Issue 10, item 8: watch clients that never read used to grow the agent
// without bound (50 streams and bulk changes: 64 MB -> 1.16 GB) and cost a
// thread each without limit. Now each queue is bounded and so is their
// number.
TEST_F(AgentTest, WatchersThatNeverReadCannotGrowTheAgent) {
  StartAgent();
  auto watch_channel = grpc::CreateChannel("unix:" + agent_->socket(),
                                           grpc::InsecureChannelCredentials());
  auto watch_stub = nat::v1::MappingService::NewStub(watch_channel);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<nat::v1::MappingEvent>>> readers;
  auto open = [&] {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(watch_stub->WatchMappings(contexts.back().get(),
                                                nat::v1::WatchMappingsRequest()));
  };
  for (int i = 0; i < 50; ++i) open();
  auto status_of = [&](const std::string& key) {
    std::string text = *testing::Shell(absl::StrCat("grep ^", key, ": /proc/", agent_->pid(),
                                                    "/status | tr -s ' \t' ' '"));
    int64_t value = 0;
    std::vector<std::string> parts = absl::StrSplit(text, ' ');
    if (parts.size() > 1) (void)absl::SimpleAtoi(parts[1], &value);
    return value;
  };
  // 15,000 changes that every one of them is subscribed to.
  auto channel = grpc::CreateChannel("unix:" + agent_->socket(), grpc::InsecureChannelCredentials());
  auto stub = nat::v1::MappingService::NewStub(channel);
  for (int i = 0; i < 7500; ++i) {
    nat::v1::CreateMappingRequest req;
    nat::v1::PortMapping* m = req.mutable_mapping();
    m->mutable_owner()->set_kind(nat::v1::OWNER_KIND_API);
    m->mutable_owner()->set_id("bulk");
    m->set_protocol(nat::v1::PROTOCOL_TCP);
    m->set_host_port(20000 + i % 500);
    m->set_target_ip("10.1.0.5");
    m->set_target_port(80);
    grpc::ClientContext c;
    nat::v1::CreateMappingResponse created;
    ASSERT_TRUE(stub->CreateMapping(&c, req, &created).ok()) << i;
    grpc::ClientContext d;
    nat::v1::DeleteMappingRequest del;
    del.set_id(created.mapping().id());
    nat::v1::DeleteMappingResponse deleted;
    ASSERT_TRUE(stub->DeleteMapping(&d, del, &deleted).ok()) << i;
  }
  int64_t rss_kb = status_of("VmRSS");
  std::printf("agent RSS after 15,000 changes with 50 idle watches: %lld kB, %lld threads\n",
              static_cast<long long>(rss_kb), static_cast<long long>(status_of("Threads")));
  EXPECT_LT(rss_kb, 128 * 1024);
  // At most 64 watches at once: the 65th is told so.
  for (int i = 0; i < 14; ++i) open();
  absl::SleepFor(absl::Milliseconds(300));
  grpc::ClientContext extra;
  auto refused = watch_stub->WatchMappings(&extra, nat::v1::WatchMappingsRequest());
  nat::v1::MappingEvent e;
  EXPECT_FALSE(refused->Read(&e));
  grpc::Status s = refused->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_LT(status_of("Threads"), 200);
  for (auto& c : contexts) c->TryCancel();
}

TEST_F(AgentTest, WatchMappingsStreamsSnapshotAndChanges) {
  StartAgent();
  ASSERT_OK(Ctl("add tcp 8080 10.1.0.5:80 --owner web").status());
  auto channel = grpc::CreateChannel("unix:" + agent_->socket(),
                                     grpc::InsecureChannelCredentials());
  auto stub = nat::v1::MappingService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  nat::v1::WatchMappingsRequest req;
  req.set_owner_kind(nat::v1::OWNER_KIND_API);
  auto reader = stub->WatchMappings(&ctx, req);
  nat::v1::MappingEvent e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), nat::v1::MappingEvent::TYPE_ADDED);
  EXPECT_EQ(e.mapping().host_port(), 8080u);
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), nat::v1::MappingEvent::TYPE_SYNCED);
  ASSERT_OK(Ctl("add udp 5353 10.1.0.5:53 --owner dns").status());
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), nat::v1::MappingEvent::TYPE_ADDED);
  EXPECT_EQ(e.mapping().owner().id(), "dns");
  ASSERT_OK(Ctl("remove m-1").status());
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), nat::v1::MappingEvent::TYPE_REMOVED);
  EXPECT_EQ(e.mapping().id(), "m-1");
  ctx.TryCancel();
  // ListMappings filters by owner.
  grpc::ClientContext list_ctx;
  nat::v1::ListMappingsRequest list;
  list.set_owner_kind(nat::v1::OWNER_KIND_API);
  list.set_owner_id("dns");
  nat::v1::ListMappingsResponse resp;
  ASSERT_TRUE(stub->ListMappings(&list_ctx, list, &resp).ok());
  ASSERT_EQ(resp.mappings_size(), 1);
  EXPECT_EQ(resp.mappings(0).protocol(), nat::v1::PROTOCOL_UDP);
}

}  // namespace
}  // namespace fabric

namespace fabric {
namespace {

// W3C trace context: the caller's traceparent names the operation in the
// log and in the watch events it causes; without one the agent makes one up.
TEST_F(AgentTest, TraceparentReachesTheLogAndWatchEvents) {
  StartAgent();
  auto channel = grpc::CreateChannel("unix:" + agent_->socket(),
                                     grpc::InsecureChannelCredentials());
  auto stub = nat::v1::MappingService::NewStub(channel);
  grpc::ClientContext watch;
  auto events = stub->WatchMappings(&watch, nat::v1::WatchMappingsRequest());
  nat::v1::MappingEvent e;
  ASSERT_TRUE(events->Read(&e));
  ASSERT_EQ(e.type(), nat::v1::MappingEvent::TYPE_SYNCED);

  auto create = [&](int port, const char* traceparent) {
    nat::v1::CreateMappingRequest req;
    nat::v1::PortMapping* m = req.mutable_mapping();
    m->mutable_owner()->set_kind(nat::v1::OWNER_KIND_API);
    m->mutable_owner()->set_id("traced");
    m->set_protocol(nat::v1::PROTOCOL_TCP);
    m->set_host_port(port);
    m->set_target_ip("10.1.0.5");
    m->set_target_port(80);
    grpc::ClientContext c;
    if (traceparent != nullptr) c.AddMetadata("traceparent", traceparent);
    nat::v1::CreateMappingResponse out;
    return stub->CreateMapping(&c, req, &out);
  };
  ASSERT_TRUE(create(8080, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").ok());
  ASSERT_TRUE(events->Read(&e));
  EXPECT_EQ(e.type(), nat::v1::MappingEvent::TYPE_ADDED);
  EXPECT_EQ(e.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_THAT(agent_->LogText(),
              ::testing::ContainsRegex("op=create_mapping owner=traced outcome=ok [^\n]* "
                                       "trace=4bf92f3577b34da6a3ce929d0e0e4736"));
  // None, or a malformed one: a fresh id, the same in the log and the event.
  ASSERT_TRUE(create(8081, "not-a-traceparent").ok());
  ASSERT_TRUE(events->Read(&e));
  ASSERT_EQ(e.trace_id().size(), 32u);
  EXPECT_NE(e.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_THAT(agent_->LogText(), HasSubstr("trace=" + e.trace_id()));
  watch.TryCancel();
}

}  // namespace
}  // namespace fabric
