// End to end: a container runtime's CNI chain (Debian's reference bridge +
// host-local plugins, then fabric-nat) against a running fabric-agent, with
// real TCP and UDP traffic between network namespaces.
//
//   outside  eth0 192.0.2.2/24 2001:db8::2/64
//      |
//   host     wan0 192.0.2.1/24 192.0.2.10/24 2001:db8::1/64, bridge fbr0
//      |     (fabric-agent runs here; plugins are exec'd here)
//   containers on fbr0: 10.88.0.0/24, fd00:88::/64
//
// Every behaviour runs over both backends (the test's parameter: the
// agent's --backend); where a test looks at the kernel or changes it
// behind the agent's back, it does so in that backend's terms.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
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
using ::fabric::testing::Serve;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Asserts that a chain run succeeded, showing the failing plugin's output.
#define ASSERT_ADDED(run)                                                 \
  do {                                                                    \
    PluginRun r_ = (run);                                                 \
    ASSERT_EQ(r_.exit_code, 0) << r_.plugin << ": " << r_.raw;            \
  } while (0)

class CniEndToEndTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "end-to-end tests run as root";
    dir_ = tmp_.path();
    ASSERT_FALSE(dir_.empty());
    ASSERT_OK_AND_ASSIGN(host_, Netns::Create("host"));
    ASSERT_OK_AND_ASSIGN(outside_, Netns::Create("out"));
    ASSERT_OK(testing::Link(*host_, "wan0", "192.0.2.1/24 192.0.2.10/24 2001:db8::1/64",
                            *outside_, "eth0", "192.0.2.2/24 2001:db8::2/64"));
    ASSERT_OK(host_->Exec("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"));
    // The plugins a runtime would find in CNI_PATH.
    std::string bin = dir_ + "/bin";
    ASSERT_OK(testing::Shell(absl::StrCat(
        "mkdir -p ", bin, " && ln -sf /usr/lib/cni/bridge /usr/lib/cni/host-local "
        "/usr/lib/cni/loopback ", bin, "/ && ln -sf ", testing::Runfile("cni/fabric-nat"),
        " ", bin, "/fabric-nat")));
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(host_.get(), dir_ + "/agent", Flags()));
    runtime_ = std::make_unique<CniRuntime>(host_.get(), bin, Conflist("1.0.0"));
  }

  bool iptables() const { return GetParam() == "iptables"; }
  std::string Flags(const std::string& more = "") const {
    return absl::StrCat("--backend=", GetParam(), more.empty() ? "" : " ", more);
  }

  void TearDown() override {
    runtime_.reset();
    agent_.reset();
  }

  json Conflist(const std::string& version, json nat_options = json::object()) {
    json nat = {{"type", "fabric-nat"},
                {"capabilities", {{"portMappings", true}}},
                {"agentSocket", agent_->socket()}};
    nat.update(nat_options);
    return {{"cniVersion", version},
            {"name", "fnet"},
            {"plugins",
             {{{"type", "bridge"},
               {"bridge", "fbr0"},
               {"isDefaultGateway", true},
               {"hairpinMode", true},
               {"ipam",
                {{"type", "host-local"},
                 {"ranges", {{{{"subnet", "10.88.0.0/24"}}}, {{{"subnet", "fd00:88::/64"}}}}},
                 {"dataDir", dir_ + "/ipam"}}}},
              nat}}};
  }

  // A container: its namespace, an ADD through the chain, and a server.
  struct Container {
    std::unique_ptr<Netns> ns;
    std::string id;
    std::string path() const { return "/run/netns/" + ns->name(); }
  };

  Container NewContainer(const std::string& tag) {
    Container c;
    c.ns = *Netns::Create(tag);
    c.id = absl::StrCat(tag, "-", getpid(), "-0123456789abcdef");
    return c;
  }

  PluginRun Add(const Container& c, const json& port_mappings) {
    return runtime_->Add(c.id, c.path(), "eth0", port_mappings);
  }

  static json Tcp(int host, int container, const std::string& host_ip = "") {
    json m = {{"hostPort", host}, {"containerPort", container}, {"protocol", "tcp"}};
    if (!host_ip.empty()) m["hostIP"] = host_ip;
    return m;
  }
  static json Udp(int host, int container) {
    return {{"hostPort", host}, {"containerPort", container}, {"protocol", "udp"}};
  }

  std::string Nft(const std::string& args) {
    absl::StatusOr<std::string> out = host_->Exec("nft " + args);
    return out.ok() ? *out : std::string(out.status().message());
  }
  std::string Shell(const std::string& command) {
    absl::StatusOr<std::string> out = host_->Exec(command);
    return out.ok() ? *out : std::string(out.status().message());
  }

  // Whether the kernel holds an IPv4 any-address DNAT for tcp `port`.
  bool KernelPublishes(int port) {
    if (iptables()) {
      return absl::StrContains(Shell("iptables-legacy-save -t nat"),
                               absl::StrCat("-p tcp -m tcp --dport ", port, " -j DNAT"));
    }
    return absl::StrContains(Nft("list map inet fabric_nat dnat4_any"),
                             absl::StrCat("tcp . ", port, " counter"));
  }
  // Our DNAT, masquerade and hairpin rules or elements, both families.
  std::string OurNatEntries() {
    if (iptables()) {
      return Shell(
          "(iptables-legacy-save -t nat; ip6tables-legacy-save -t nat) | "
          "grep -e '^-A FABRIC-HOSTPORTS' -e '^-A FABRIC-POSTROUTING' || true");
    }
    std::string out;
    for (const char* set : {"map inet fabric_nat dnat4_any", "map inet fabric_nat dnat6_any",
                            "set inet fabric_nat masq4", "set inet fabric_nat masq6",
                            "set inet fabric_nat hairpin4", "set inet fabric_nat hairpin6"}) {
      std::string listed = Nft(absl::StrCat("list ", set));
      if (!absl::StrContains(listed, "type")) out += absl::StrCat(set, " unreadable\n");
      if (absl::StrContains(listed, "elements")) out += listed;
    }
    return out;
  }
  // Removes the IPv4 mapping of tcp `port` behind the agent's back.
  std::string DeleteBehindTheAgent(int port) {
    if (iptables()) {
      return absl::StrCat("iptables-legacy-save -t nat | grep -e '^-A FABRIC-HOSTPORTS .*--dport ",
                          port, " ' | sed 's/^-A/-D/' | while read -r r; do "
                          "iptables-legacy -t nat $r || exit 1; done");
    }
    return absl::StrCat("nft delete element inet fabric_nat dnat4_any '{ tcp . ", port, " }'");
  }
  // Flushes every rule of ours behind the agent's back.
  std::string FlushBehindTheAgent() {
    if (iptables()) {
      return "iptables-legacy -t nat -F FABRIC-HOSTPORTS && "
             "ip6tables-legacy -t nat -F FABRIC-HOSTPORTS";
    }
    return "nft flush ruleset";
  }

  testing::ScopedTempDir tmp_{"e2e"};
  std::string dir_;
  std::unique_ptr<Netns> host_, outside_;
  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<CniRuntime> runtime_;
};

// (a) From an outside namespace, host address:hostPort reaches the
// container, TCP and UDP, IPv4 and IPv6.
TEST_P(CniEndToEndTest, PublishedPortsReachTheContainer) {
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  ASSERT_OK(Serve(*c.ns, "udp", 53, "c1"));
  PluginRun r = Add(c, json::array({Tcp(8080, 80), Udp(5353, 53)}));
  ASSERT_EQ(r.exit_code, 0) << r.plugin << ": " << r.raw;
  // The printed result is prevResult, in the config's version.
  EXPECT_EQ(r.output["cniVersion"], "1.0.0");
  EXPECT_THAT(r.output["ips"][0]["address"].get<std::string>(), StartsWith("10.88.0."));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("c1 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "udp", "192.0.2.1", 5353), IsOkAndHolds("c1 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8080), IsOkAndHolds("c1 2001:db8::2\n"));
  EXPECT_THAT(Ask(*outside_, "udp", "2001:db8::1", 5353), IsOkAndHolds("c1 2001:db8::2\n"));
  EXPECT_EQ(runtime_->Check(c.id, c.path(), "eth0").exit_code, 0);
}

// The runtime's trace (TRACEPARENT, as libcni passes it) reaches the
// agent: its log names the trace of the ADD and the DEL.
TEST_P(CniEndToEndTest, TraceparentFromTheRuntimeReachesTheAgentsLog) {
  runtime_->SetEnv("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  runtime_->SetEnv("TRACESTATE", "rojo=00f067aa0ba902b7");
  Container c = NewContainer("c1");
  PluginRun r = Add(c, json::array({Tcp(8080, 80)}));
  ASSERT_EQ(r.exit_code, 0) << r.plugin << ": " << r.raw;
  ASSERT_EQ(runtime_->Del(c.id, c.path(), "eth0").exit_code, 0);
  std::string log = agent_->LogText();
  EXPECT_THAT(log, ::testing::ContainsRegex(
                       "op=attach container=[^ ]+ ifname=eth0 network=fnet outcome=ok [^\n]* "
                       "trace=0af7651916cd43dd8448eb211c80319c"));
  EXPECT_THAT(log, ::testing::ContainsRegex("op=detach .* trace=0af7651916cd43dd8448eb211c80319c"));
}

// The same chain at CNI 0.4.0: results keep the 0.4.0 layout.
TEST_P(CniEndToEndTest, WorksAtCni040) {
  runtime_ = std::make_unique<CniRuntime>(host_.get(), dir_ + "/bin", Conflist("0.4.0"));
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  PluginRun r = Add(c, json::array({Tcp(8080, 80)}));
  ASSERT_EQ(r.exit_code, 0) << r.raw;
  EXPECT_EQ(r.output["cniVersion"], "0.4.0");
  EXPECT_EQ(r.output["ips"][0]["version"], "4");
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("c1 192.0.2.2\n"));
  EXPECT_EQ(runtime_->Check(c.id, c.path(), "eth0").exit_code, 0);
  EXPECT_EQ(runtime_->Del(c.id, c.path(), "eth0").exit_code, 0);
}

// Two containers on both families, masquerade on; DEL takes one's rules
// out of the kernel.
TEST_P(CniEndToEndTest, TwoContainersThenDel) {
  runtime_ = std::make_unique<CniRuntime>(host_.get(), dir_ + "/bin",
                                          Conflist("1.0.0", {{"masquerade", true}}));
  Container a = NewContainer("ca");
  Container b = NewContainer("cb");
  ASSERT_OK(Serve(*a.ns, "tcp", 80, "ca"));
  ASSERT_OK(Serve(*b.ns, "tcp", 80, "cb"));
  ASSERT_ADDED(Add(a, json::array({Tcp(8080, 80)})));
  ASSERT_ADDED(Add(b, json::array({Tcp(8081, 80)})));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("ca 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8080), IsOkAndHolds("ca 2001:db8::2\n"));
  EXPECT_THAT(Ask(*a.ns, "tcp", "192.0.2.1", 8081), IsOkAndHolds(StartsWith("cb ")));
  EXPECT_TRUE(KernelPublishes(8081));
  if (iptables()) {
    EXPECT_THAT(host_->Exec("iptables-legacy-save -t nat"),
                IsOkAndHolds(HasSubstr("--dport 8081 -j DNAT --to-destination 10.88.0.")));
  }
  EXPECT_EQ(runtime_->Check(a.id, a.path(), "eth0").exit_code, 0);
  ASSERT_EQ(runtime_->Del(a.id, a.path(), "eth0").exit_code, 0);
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  EXPECT_FALSE(KernelPublishes(8080));
  EXPECT_TRUE(KernelPublishes(8081));
}

// Someone flushes our rules: the agent puts them back by itself (nftables:
// on the change event, in milliseconds; iptables: on its next fingerprint
// poll, within about a second).
TEST_P(CniEndToEndTest, FlushedRulesComeBack) {
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  ASSERT_ADDED(Add(c, json::array({Tcp(8080, 80)})));
  ASSERT_TRUE(KernelPublishes(8080));
  ASSERT_OK(host_->Exec(FlushBehindTheAgent()));
  absl::Time flushed = absl::Now();
  while (!KernelPublishes(8080) && absl::Now() - flushed < absl::Seconds(5)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::Duration took = absl::Now() - flushed;
  EXPECT_TRUE(KernelPublishes(8080));
  EXPECT_LT(took, iptables() ? absl::Milliseconds(2500) : absl::Milliseconds(500));
  std::cout << GetParam() << ": rules back " << absl::FormatDuration(took)
            << " after the flush\n";
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("c1 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "tcp", "2001:db8::1", 8080), IsOkAndHolds("c1 2001:db8::2\n"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("repair after "));
}

// (b) A mapping with hostIP answers only on that address.
TEST_P(CniEndToEndTest, HostIpMappingAnswersOnlyThere) {
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  ASSERT_ADDED(Add(c, json::array({Tcp(9090, 80, "192.0.2.10")})));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.10", 9090), IsOkAndHolds("c1 192.0.2.2\n"));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 9090, 0.5).ok());
}

// (c) Hairpin: a container reaches its own published port and another
// container's through the host's address.
TEST_P(CniEndToEndTest, Hairpin) {
  Container a = NewContainer("ca");
  Container b = NewContainer("cb");
  ASSERT_OK(Serve(*a.ns, "tcp", 80, "ca"));
  ASSERT_OK(Serve(*b.ns, "tcp", 80, "cb"));
  ASSERT_ADDED(Add(a, json::array({Tcp(8080, 80)})));
  ASSERT_ADDED(Add(b, json::array({Tcp(8081, 80)})));
  EXPECT_THAT(Ask(*a.ns, "tcp", "192.0.2.1", 8080), IsOkAndHolds(StartsWith("ca ")));
  EXPECT_THAT(Ask(*a.ns, "tcp", "192.0.2.1", 8081), IsOkAndHolds(StartsWith("cb ")));
  EXPECT_THAT(Ask(*b.ns, "tcp", "192.0.2.1", 8080), IsOkAndHolds(StartsWith("ca ")));
}

// (d) With localhost on, the host reaches 127.0.0.1:hostPort.
TEST_P(CniEndToEndTest, LocalhostAccess) {
  runtime_ = std::make_unique<CniRuntime>(host_.get(), dir_ + "/bin",
                                          Conflist("1.0.0", {{"localhost", true}}));
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  ASSERT_ADDED(Add(c, json::array({Tcp(8080, 80)})));
  EXPECT_THAT(Ask(*host_, "tcp", "127.0.0.1", 8080), IsOkAndHolds(StartsWith("c1 ")));
}

// (e) With masquerade on, a container reaches the outside with the host's
// address.
TEST_P(CniEndToEndTest, Masquerade) {
  runtime_ = std::make_unique<CniRuntime>(host_.get(), dir_ + "/bin",
                                          Conflist("1.0.0", {{"masquerade", true}}));
  ASSERT_OK(Serve(*outside_, "tcp", 9999, "outside"));
  Container c = NewContainer("c1");
  ASSERT_ADDED(Add(c, json::array()));
  EXPECT_THAT(Ask(*c.ns, "tcp", "192.0.2.2", 9999), IsOkAndHolds("outside 192.0.2.1\n"));
}

// (f) A second container asking for the same host port fails, naming the
// holder; the first keeps working.
TEST_P(CniEndToEndTest, ConflictNamesTheHolder) {
  Container a = NewContainer("ca");
  Container b = NewContainer("cb");
  ASSERT_OK(Serve(*a.ns, "tcp", 80, "ca"));
  ASSERT_ADDED(Add(a, json::array({Tcp(8080, 80)})));
  PluginRun r = Add(b, json::array({Tcp(8080, 80)}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.plugin, "fabric-nat");
  EXPECT_EQ(r.output["code"], 100);
  EXPECT_THAT(r.output["msg"].get<std::string>(),
              HasSubstr(absl::StrCat("host port 8080/tcp on 0.0.0.0 is held by container ",
                                     a.id, " (eth0, network fnet)")));
  // The runtime cleans up after a failed ADD.
  EXPECT_EQ(runtime_->Del(b.id, b.path(), "eth0").exit_code, 0);
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds(StartsWith("ca ")));
}

// (g) DEL removes every rule and row its ADD made.
TEST_P(CniEndToEndTest, DelRemovesEverything) {
  runtime_ = std::make_unique<CniRuntime>(host_.get(), dir_ + "/bin",
                                          Conflist("1.0.0", {{"masquerade", true}}));
  Container c = NewContainer("c1");
  ASSERT_OK(Serve(*c.ns, "tcp", 80, "c1"));
  ASSERT_ADDED(Add(c, json::array({Tcp(8080, 80), Udp(5353, 53)})));
  EXPECT_TRUE(KernelPublishes(8080));
  EXPECT_THAT(OurNatEntries(), HasSubstr("8080"));
  EXPECT_THAT(testing::Fabricctl(agent_->socket(), "list"),
              IsOkAndHolds(HasSubstr("4 mapping(s)")));
  ASSERT_EQ(runtime_->Del(c.id, c.path(), "eth0").exit_code, 0);
  EXPECT_EQ(OurNatEntries(), "");
  EXPECT_THAT(testing::Fabricctl(agent_->socket(), "list"),
              IsOkAndHolds(HasSubstr("0 mapping(s)")));
  EXPECT_FALSE(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  // DEL again, and DEL of a container never added: both fine.
  EXPECT_EQ(runtime_->Del(c.id, c.path(), "eth0").exit_code, 0);
  EXPECT_EQ(runtime_->Del("never-added", "", "eth0").exit_code, 0);
}

// (h) UDP re-map: a client keeps sending; A goes and B takes the host port;
// the client's next datagrams reach B.
TEST_P(CniEndToEndTest, UdpRemapReachesTheNewContainer) {
  Container a = NewContainer("ca");
  Container b = NewContainer("cb");
  ASSERT_OK(Serve(*a.ns, "udp", 53, "A"));
  ASSERT_OK(Serve(*b.ns, "udp", 53, "B"));
  ASSERT_ADDED(Add(a, json::array({Udp(5353, 53)})));
  std::string out = dir_ + "/stream.txt";
  ASSERT_OK(outside_->Spawn(absl::StrCat("exec /usr/bin/python3 ", testing::NetTool(),
                                         " udpstream 192.0.2.1 5353 40 0.1 40000 > ", out))
                .status());
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  ASSERT_EQ(runtime_->Del(a.id, a.path(), "eth0").exit_code, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_ADDED(Add(b, json::array({Udp(5353, 53)})));
  std::string text;
  for (int i = 0; i < 150; ++i) {
    std::ifstream f(out);
    std::stringstream s;
    s << f.rdbuf();
    text = s.str();
    if (std::count(text.begin(), text.end(), '\n') >= 40) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 40u) << text;
  EXPECT_THAT(text, HasSubstr(" A 192.0.2.2"));
  // The last answers come from B.
  EXPECT_THAT(lines.back(), HasSubstr(" B 192.0.2.2")) << text;
  EXPECT_THAT(lines[lines.size() - 5], HasSubstr(" B 192.0.2.2")) << text;
}

// (i) CHECK fails once the attachment's rules were deleted behind the
// agent's back.
TEST_P(CniEndToEndTest, CheckReportsRulesDeletedBehindTheAgent) {
  // The agent repairs foreign changes within milliseconds; to catch the
  // broken state CHECK must see, run it with event-driven repair off.
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(host_.get(), dir_ + "/agent",
                                                   Flags("--repair_on_change=false")));
  Container c = NewContainer("c1");
  ASSERT_ADDED(Add(c, json::array({Tcp(8080, 80)})));
  ASSERT_EQ(runtime_->Check(c.id, c.path(), "eth0").exit_code, 0);
  ASSERT_OK(host_->Exec(DeleteBehindTheAgent(8080)));
  ASSERT_FALSE(KernelPublishes(8080));
  PluginRun r = runtime_->Check(c.id, c.path(), "eth0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.plugin, "fabric-nat");
  EXPECT_EQ(r.output["code"], 102);
  EXPECT_THAT(r.output["msg"].get<std::string>(), HasSubstr("tcp 0.0.0.0:8080"));
}

// (j) Agent down: ADD fails with code 11 within 5 seconds, naming the socket.
TEST_P(CniEndToEndTest, AgentDownIsTryAgainLater) {
  agent_->Stop();
  Container c = NewContainer("c1");
  PluginRun r = Add(c, json::array({Tcp(8080, 80)}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.plugin, "fabric-nat");
  EXPECT_EQ(r.output["code"], 11);
  EXPECT_THAT(r.raw, HasSubstr(agent_->socket()));
  EXPECT_LT(r.took, absl::Seconds(5));
  runtime_->Del(c.id, c.path(), "eth0");
}

// GC and STATUS (CNI 1.1.0), sent to fabric-nat: Debian's bridge plugin
// predates 1.1.0.
TEST_P(CniEndToEndTest, GcAndStatus) {
  Container a = NewContainer("ca");
  Container b = NewContainer("cb");
  ASSERT_ADDED(Add(a, json::array({Tcp(8080, 80)})));
  ASSERT_ADDED(Add(b, json::array({Tcp(8081, 80)})));
  CniRuntime nat_only(host_.get(), dir_ + "/bin",
                      {{"cniVersion", "1.1.0"},
                       {"name", "fnet"},
                       {"plugins", {{{"type", "fabric-nat"}, {"agentSocket", agent_->socket()}}}}});
  EXPECT_EQ(nat_only.Status().exit_code, 0);
  PluginRun gc = nat_only.Gc({{{"containerID", a.id}, {"ifname", "eth0"}}});
  EXPECT_EQ(gc.exit_code, 0) << gc.raw;
  EXPECT_TRUE(KernelPublishes(8080));
  EXPECT_FALSE(KernelPublishes(8081));
  agent_->Stop();
  PluginRun st = nat_only.Status();
  EXPECT_NE(st.exit_code, 0);
  EXPECT_EQ(st.output["code"], 50);
}

INSTANTIATE_TEST_SUITE_P(Backends, CniEndToEndTest, ::testing::Values("nftables", "iptables"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace fabric
