// Upstream mapping end to end: this host as a client of the LAN's gateway.
// Debian's miniupnpd (NAT-PMP/PCP and UPnP IGD enabled) is the router; a LAN
// host runs `fabricctl upstream` (and, for the restart test, the
// agent/upstream Mapper in this process, its worker in the LAN namespace)
// and a TCP server; an outside host reaches that server through
// miniupnpd's external address and the port fabricctl printed.
//
//   LAN 192.168.77.10 --- lan0 192.168.77.1 [router: miniupnpd] wan0 203.0.113.1 --- outside 203.0.113.2 (STUN)
//
// The layout and miniupnpd's needs: tests/bench/miniupnpd_env.h.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/upstream/mapper.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"
#include "tests/bench/miniupnpd_env.h"

namespace fabric {
namespace {

namespace up = ::fabric::agent::upstream;
using ::fabric::testing::IsOkAndHolds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kWan[] = "203.0.113.1";
constexpr int kServerPort = 8080;

std::string Fabricctl() { return testing::Runfile("agent/fabricctl"); }

class UpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    ASSERT_FALSE(dir_.path().empty());
    ASSERT_OK_AND_ASSIGN(layout_, bench::MakeLayout("203.0.113"));
    StartMiniupnpd();
    ASSERT_OK(testing::Serve(*layout_.lan, "tcp", kServerPort, "lanhost"));
  }

  void StartMiniupnpd() {
    // PCP's minimum lifetime is 120 s unless told: the --keep tests use 4 s.
    auto m = bench::Miniupnpd::Start(
        layout_, dir_.path(),
        "enable_natpmp=yes\nenable_upnp=yes\nhttp_port=5000\nmin_lifetime=2\n"
        "max_lifetime=86400\nclean_ruleset_interval=600",
        Ready());
    ASSERT_OK(m.status());
    miniupnpd_ = std::move(*m);
  }

  std::function<bool()> Ready() {
    const bench::Layout& l = layout_;
    return [&l] {
      return l.lan
                 ->Exec("/usr/bin/python3 " + testing::Runfile("testing/pmp.py") +
                        " 192.168.77.1 addr | grep -q result=0")
                 .ok() &&
             l.lan->Exec("curl -sf -o /dev/null http://192.168.77.1:5000/rootDesc.xml").ok();
    };
  }

  // fabricctl in the LAN host, whatever its exit code.
  testing::CommandResult Ctl(const std::string& args) {
    absl::StatusOr<testing::CommandResult> r = testing::RunCommand(absl::StrCat(
        "ip netns exec ", layout_.lan->name(), " ", Fabricctl(), " ", args));
    EXPECT_OK(r.status());
    return r.ok() ? *r : testing::CommandResult{-1, "", ""};
  }

  // What the outside host gets from EXTERNAL:PORT.
  absl::StatusOr<std::string> FromOutside(int port, double timeout = 2.0) {
    return testing::Ask(*layout_.outside, "tcp", kWan, port, timeout);
  }

  // miniupnpd's forwarding rules (its nft chains).
  std::string Rules() {
    absl::StatusOr<std::string> r = layout_.router->Exec(
        "nft list chain inet filter prerouting_miniupnpd 2>&1; "
        "nft list table ip nat 2>/dev/null || true; nft list ruleset | grep -c dnat || true");
    return r.ok() ? *r : std::string(r.status().message());
  }

  std::string UpnpList() {
    absl::StatusOr<std::string> r =
        layout_.lan->Exec("upnpc -u http://192.168.77.1:5000/rootDesc.xml -l 2>&1");
    return r.ok() ? *r : std::string(r.status().message());
  }

  testing::ScopedTempDir dir_{"fup"};
  bench::Layout layout_;
  std::unique_ptr<bench::Miniupnpd> miniupnpd_;
};

class ByProtocol : public UpstreamTest, public ::testing::WithParamInterface<std::string> {};

// The CLI maps, the outside reaches the LAN host's server through miniupnpd,
// unmap takes it away again.
TEST_P(ByProtocol, MapIsReachableFromOutsideThenUnmap) {
  const std::string p = GetParam();
  testing::CommandResult r = Ctl(absl::StrCat("upstream map tcp ", kServerPort,
                                              " --lifetime 600 --json --protocol ", p));
  ASSERT_EQ(r.exit_code, 0) << r.err << "\n" << miniupnpd_->LogTail(10);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["method"], p);
  EXPECT_EQ(j["external_ip"], kWan);
  EXPECT_EQ(j["internal_ip"], bench::kLanHost);
  EXPECT_EQ(j["gateway"], bench::kLanRouter);
  const int ext = j["external_port"];
  ASSERT_GT(ext, 0);
  EXPECT_THAT(FromOutside(ext), IsOkAndHolds(StartsWith("lanhost 203.0.113.2")))
      << Rules() << miniupnpd_->LogTail(10);

  r = Ctl(absl::StrCat("upstream unmap tcp ", kServerPort, " --protocol ", p));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith(absl::StrCat("unmapped tcp/8080 via ", p)));
  EXPECT_FALSE(FromOutside(ext, 1.0).ok()) << Rules();
  EXPECT_THAT(UpnpList(), Not(HasSubstr(absl::StrCat("192.168.77.10:", kServerPort))));
}

// --keep with a 4 s lifetime: still reachable after 2.5 lifetimes, then
// SIGTERM deletes the mapping.
TEST_P(ByProtocol, KeepRenewsAndDeletesOnSigterm) {
  const std::string p = GetParam();
  const std::string out = dir_.path() + "/keep.out";
  ASSERT_OK_AND_ASSIGN(
      pid_t pid, layout_.lan->Spawn(absl::StrCat("exec ", Fabricctl(), " upstream map tcp ",
                                                 kServerPort, " --lifetime 4 --keep --protocol ",
                                                 p, " > ", out, " 2>&1")));
  std::string text;
  for (int i = 0; i < 100 && text.find('\n') == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    std::ifstream in(out);
    std::stringstream s;
    s << in.rdbuf();
    text = s.str();
  }
  ASSERT_THAT(text, StartsWith("203.0.113.1:")) << text;
  const int ext = std::stoi(text.substr(std::string("203.0.113.1:").size()));
  EXPECT_THAT(text, HasSubstr(absl::StrCat(" via ", p, ", lifetime 4s")));
  ASSERT_THAT(FromOutside(ext), IsOkAndHolds(StartsWith("lanhost"))) << Rules();

  absl::SleepFor(absl::Seconds(10));  // two and a half lifetimes
  EXPECT_THAT(FromOutside(ext), IsOkAndHolds(StartsWith("lanhost")))
      << Rules() << miniupnpd_->LogTail(10);
  if (p == "upnp") EXPECT_THAT(UpnpList(), HasSubstr("192.168.77.10:8080"));

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  std::stringstream s;
  s << std::ifstream(out).rdbuf();
  text = s.str();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  EXPECT_THAT(text, HasSubstr("tcp/8080: 203.0.113.1:"));  // at least one renewal line
  EXPECT_THAT(text, HasSubstr("renews in"));
  EXPECT_THAT(text, HasSubstr("tcp/8080: removed\nunmapped tcp/8080\n"));
  EXPECT_FALSE(FromOutside(ext, 1.0).ok()) << Rules();
  EXPECT_THAT(UpnpList(), Not(HasSubstr("192.168.77.10:8080")));
}

INSTANTIATE_TEST_SUITE_P(Protocols, ByProtocol, ::testing::Values("pcp", "natpmp", "upnp"),
                         [](const auto& info) { return info.param; });

TEST_F(UpstreamTest, AutoPrefersPcpAndStatusListsEveryProtocol) {
  testing::CommandResult r = Ctl("upstream map tcp 8080");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, StartsWith("203.0.113.1:8080 tcp -> 192.168.77.10:8080 via pcp, lifetime 3600s, "
                                "gateway 192.168.77.1"));
  EXPECT_THAT(FromOutside(8080), IsOkAndHolds(StartsWith("lanhost")));
  r = Ctl("upstream status");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("gateway:          192.168.77.1 (the default route)\n"
                               "protocol:         pcp\n"
                               "external address: 203.0.113.1\n"));
  EXPECT_THAT(r.out, HasSubstr("  natpmp:           answers, external address 203.0.113.1, epoch"));
  EXPECT_THAT(r.out, HasSubstr("  upnp:             answers, external address 203.0.113.1"));
  r = Ctl("upstream status --json --protocol upnp");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["protocol"], "upnp");
  EXPECT_EQ(j["external_ip"], kWan);
  std::cout << "upnp status: " << j.dump() << "\n";
  EXPECT_EQ(Ctl("upstream unmap tcp 8080").exit_code, 0);
}

// The Mapper with a 1 s poll: miniupnpd restarted (its leases and rules
// gone, its epoch back to 0) is noticed and the mapping is back, reachable,
// within 10 s.
class Restart : public UpstreamTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(Restart, MapperRemapsWithinTenSeconds) {
  std::mutex mu;
  std::vector<std::string> reports;
  std::atomic<int> maps{0};
  up::Mapper::Options o;
  ASSERT_OK_AND_ASSIGN(o.client.method, up::ParseMethod(GetParam()));
  o.poll_interval = absl::Seconds(1);
  o.on_change = [&](const up::MappingStatus& s) {
    std::lock_guard<std::mutex> l(mu);
    reports.push_back(s.Describe(absl::Now()));
    if (s.state == up::MappingStatus::State::kMapped) maps = s.maps;
  };
  std::unique_ptr<up::Mapper> mapper;
  {
    // The worker starts here, so it lives in the LAN namespace.
    ASSERT_OK_AND_ASSIGN(auto in_lan, testing::ScopedNetns::Enter(*layout_.lan));
    mapper = std::make_unique<up::Mapper>(std::move(o));
  }
  up::MapRequest req;
  req.internal_port = kServerPort;
  req.lifetime = 3600;
  mapper->Map(req);
  for (int i = 0; i < 100 && maps == 0; ++i) absl::SleepFor(absl::Milliseconds(100));
  ASSERT_EQ(maps, 1) << mapper->Gateway().Describe();
  const int ext = mapper->Get(up::Proto::kTcp, kServerPort)->result->external_port;
  ASSERT_THAT(FromOutside(ext), IsOkAndHolds(StartsWith("lanhost")));

  // An epoch tells a restart only once it has visibly gone back (RFC 6887
  // section 8.5 allows 2 s of skew): let the gateway run a while first.
  absl::SleepFor(absl::Seconds(4));
  ASSERT_OK(miniupnpd_->Restart(Ready()));
  const absl::Time restarted = absl::Now();

  // Gone with the old instance.
  EXPECT_FALSE(FromOutside(ext, 0.5).ok());
  while (maps < 2 && absl::Now() - restarted < absl::Seconds(15)) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const absl::Duration took = absl::Now() - restarted;
  EXPECT_EQ(maps, 2) << mapper->Gateway().Describe();
  EXPECT_LT(took, absl::Seconds(10));
  std::cout << GetParam() << ": re-mapped " << took << " after the restart\n";
  const int ext2 = mapper->Get(up::Proto::kTcp, kServerPort)->result->external_port;
  EXPECT_THAT(FromOutside(ext2), IsOkAndHolds(StartsWith("lanhost"))) << Rules();
  if (GetParam() != "upnp") EXPECT_GE(mapper->Gateway().resets, 1);
  mapper->Stop(/*unmap_all=*/true);
  EXPECT_FALSE(FromOutside(ext2, 1.0).ok());
  std::lock_guard<std::mutex> l(mu);
  EXPECT_THAT(reports.back(), "removed");
}

INSTANTIATE_TEST_SUITE_P(Protocols, Restart, ::testing::Values("pcp", "natpmp", "upnp"),
                         [](const auto& info) { return info.param; });

// A gateway that drops everything: a clear error within the bounded time.
// The agent with --upstream: the LAN host is a node running fabric-agent
// with a "container" behind it (a namespace on its own link, as a bridge
// would be); a published port is mapped on miniupnpd too, and the outside
// reaches the container through both NATs. Deleting the mapping removes it
// upstream; a restart of the agent renews rather than duplicates; a port
// deleted while the agent was down is removed upstream at its next start.
class AgentUpstream : public UpstreamTest, public ::testing::WithParamInterface<std::string> {
 protected:
  void StartNode() {
    ASSERT_OK_AND_ASSIGN(ctr_, testing::Netns::Create("upctr"));
    ASSERT_OK(testing::Link(*layout_.lan, "ctr0", "10.9.0.1/24", *ctr_, "eth0", "10.9.0.2/24"));
    ASSERT_OK(ctr_->Exec("ip route add default via 10.9.0.1"));
    ASSERT_OK(testing::Serve(*ctr_, "tcp", 80, "ctr"));
    StartAgent();
  }
  void StartAgent() {
    ASSERT_OK_AND_ASSIGN(agent_, testing::AgentProcess::Start(
                                     layout_.lan.get(), dir_.path() + "/node",
                                     absl::StrCat("--upstream=", GetParam(),
                                                  " --upstream_lifetime=600s "
                                                  "--metrics_address=127.0.0.1:19339")));
  }
  absl::StatusOr<std::string> NodeCtl(const std::string& args) {
    return testing::Fabricctl(agent_->socket(), args);
  }
  // Waits (up to 10 s) until `fabricctl list` says `want`.
  std::string ListShows(const std::string& want) {
    std::string list;
    for (int i = 0; i < 100; ++i) {
      list = NodeCtl("list").value_or("");
      if (list.find(want) != std::string::npos) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return list;
  }
  int UpnpEntries(int port) {
    std::string l = UpnpList();
    const std::string needle = absl::StrCat("TCP  ", port, "->");
    int n = 0;
    for (size_t at = l.find(needle); at != std::string::npos; at = l.find(needle, at + 1)) ++n;
    return n;
  }

  std::unique_ptr<testing::Netns> ctr_;
  std::unique_ptr<testing::AgentProcess> agent_;
};

TEST_P(AgentUpstream, PublishedPortIsReachableThroughTheLansGateway) {
  const std::string p = GetParam();
  ASSERT_NO_FATAL_FAILURE(StartNode());
  ASSERT_OK(NodeCtl("add tcp 8080 10.9.0.2:80 --owner web").status());
  const std::string want = absl::StrCat("upstream: ", kWan, ":8080 via ", p, ", renews in");
  EXPECT_THAT(ListShows(want), HasSubstr(want)) << agent_->LogText() << miniupnpd_->LogTail(10);
  // Outside -> miniupnpd (203.0.113.1:8080) -> the node (192.168.77.10:8080)
  // -> the container (10.9.0.2:80): two NATs, real packets.
  EXPECT_THAT(FromOutside(8080), IsOkAndHolds("ctr 203.0.113.2\n")) << Rules();
  EXPECT_THAT(layout_.lan->Exec("curl -s 'http://127.0.0.1:19339/api/v1/mappings'"),
              IsOkAndHolds(HasSubstr(absl::StrCat("\"upstream\":\"", kWan, ":8080 via ", p))));
  EXPECT_THAT(layout_.lan->Exec("curl -s http://127.0.0.1:19339/"),
              IsOkAndHolds(HasSubstr(absl::StrCat("<td>", kWan, ":8080 via ", p))));

  // A restart renews the same mapping: still one, still reachable.
  agent_.reset();
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  EXPECT_THAT(ListShows(want), HasSubstr(want)) << agent_->LogText();
  EXPECT_THAT(FromOutside(8080), IsOkAndHolds("ctr 203.0.113.2\n"));
  if (p == "upnp") EXPECT_EQ(UpnpEntries(8080), 1) << UpnpList();

  // Deleted: gone upstream too.
  ASSERT_OK_AND_ASSIGN(std::string json, NodeCtl("list --json"));
  size_t id = json.find("\"id\": \"m-");
  ASSERT_NE(id, std::string::npos) << json;
  std::string mid = json.substr(id + 7, json.find('"', id + 7) - id - 7);
  ASSERT_OK(NodeCtl("remove " + mid).status());
  EXPECT_TRUE(agent_->LogShows("upstream: tcp 8080 removed from the gateway", absl::Seconds(5)))
      << agent_->LogText();
  EXPECT_FALSE(FromOutside(8080, 0.5).ok());
  if (p == "upnp") EXPECT_EQ(UpnpEntries(8080), 0) << UpnpList();

  // A port mapped upstream for a mapping that went while the agent was
  // down: its record says so, and the next start removes it upstream. (Made
  // here with the CLI, which uses the same nonce, and a record written as
  // the agent would have.)
  agent_.reset();
  testing::CommandResult m = Ctl(absl::StrCat("upstream map tcp 8082 --lifetime 600 --protocol ", p));
  ASSERT_EQ(m.exit_code, 0) << m.err;
  auto held = [&] {
    return layout_.router->Exec("nft list ruleset").value_or("").find("dport 8082") !=
               std::string::npos ||
           UpnpList().find("TCP  8082->") != std::string::npos;
  };
  ASSERT_TRUE(held()) << Rules();
  const std::string records = dir_.path() + "/node/state/upstream.json";
  ASSERT_OK(testing::Shell(absl::StrCat(
      "printf '%s' '{\"mappings\":[{\"protocol\":\"tcp\",\"port\":8082,\"external_port\":8082,"
      "\"method\":\"", p, "\"}]}' > ", records)));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  EXPECT_TRUE(agent_->LogShows(
      "upstream: tcp 8082 went while the agent was down: removed from the gateway",
      absl::Seconds(8)))
      << agent_->LogText();
  EXPECT_FALSE(held()) << Rules();
  EXPECT_THAT(testing::Shell("cat " + records), IsOkAndHolds("{\"mappings\":[]}\n"));
}

// The upstream router restarts (a new epoch, its mappings gone): the agent
// maps again by itself.
TEST_P(AgentUpstream, GatewayRestartGetsTheMappingBack) {
  ASSERT_NO_FATAL_FAILURE(StartNode());
  ASSERT_OK(NodeCtl("add tcp 8080 10.9.0.2:80 --owner web").status());
  const std::string want = absl::StrCat("upstream: ", kWan, ":8080 via ", GetParam());
  ASSERT_THAT(ListShows(want), HasSubstr(want)) << agent_->LogText();
  ASSERT_OK(FromOutside(8080).status());
  absl::SleepFor(absl::Seconds(4));  // past the epoch's 2 s of allowed skew
  ASSERT_OK(miniupnpd_->Restart(Ready()));
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {  // the RFCs' 10 s
    back = FromOutside(8080, 0.1).ok();
    if (!back) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(back) << agent_->LogText() << miniupnpd_->LogTail(10);
}

// The upstream router's external address changes (it comes back with
// another one): the agent's mapping follows, and its state says where.
TEST_P(AgentUpstream, ANewExternalAddressIsFollowed) {
  ASSERT_NO_FATAL_FAILURE(StartNode());
  ASSERT_OK(NodeCtl("add tcp 8080 10.9.0.2:80 --owner web").status());
  const std::string want = absl::StrCat("upstream: ", kWan, ":8080 via ", GetParam());
  ASSERT_THAT(ListShows(want), HasSubstr(want)) << agent_->LogText();
  absl::SleepFor(absl::Seconds(4));  // past the epoch's 2 s of allowed skew
  ASSERT_OK(layout_.router->Exec("ip addr del 203.0.113.1/24 dev wan0 && "
                                 "ip addr add 203.0.113.9/24 dev wan0"));
  ASSERT_OK(miniupnpd_->Restart(Ready()));
  const std::string moved = absl::StrCat("upstream: 203.0.113.9:8080 via ", GetParam());
  EXPECT_THAT(ListShows(moved), HasSubstr(moved)) << agent_->LogText() << miniupnpd_->LogTail(10);
  EXPECT_THAT(testing::Ask(*layout_.outside, "tcp", "203.0.113.9", 8080),
              IsOkAndHolds("ctr 203.0.113.2\n"));
}

INSTANTIATE_TEST_SUITE_P(Protocols, AgentUpstream, ::testing::Values("pcp", "natpmp", "upnp"),
                         [](const auto& info) { return info.param; });

TEST_F(UpstreamTest, SilentGatewayFailsClearlyInBoundedTime) {
  ASSERT_OK(layout_.router
                ->Exec("nft add table inet silence && "
                       "nft add chain inet silence input '{ type filter hook input priority -10; }' && "
                       "nft add rule inet silence input udp dport '{ 1900, 5351 }' drop && "
                       "nft add rule inet silence input tcp dport 5000 drop")
                .status());
  absl::Time start = absl::Now();
  testing::CommandResult r = Ctl("upstream map tcp 8080 --protocol pcp");
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("fabricctl upstream map: gateway 192.168.77.1: pcp: no answer from "
                               "gateway 192.168.77.1 to PCP ANNOUNCE after 4 tries in 3s"));
  EXPECT_LT(took, absl::Seconds(5));

  start = absl::Now();
  r = Ctl("upstream map tcp 8080");
  took = absl::Now() - start;
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("pcp: no answer"));
  EXPECT_THAT(r.err, HasSubstr("natpmp: no answer"));
  EXPECT_THAT(r.err, HasSubstr("upnp: no UPnP IGD answered SSDP discovery"));
  EXPECT_LT(took, absl::Seconds(7));
  std::cout << "auto against a silent gateway failed after " << took << ":\n" << r.err;
}

}  // namespace
}  // namespace fabric
