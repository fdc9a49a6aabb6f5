// Static forwards from --forwards_file, end to end: a router namespace's
// agent forwards outside traffic to a LAN host as the file says, follows
// the file when it is rewritten (by rename, as editors do) and on SIGHUP,
// keeps the previous forwards when the file is invalid or conflicts, and
// will not let the API delete them.
//
//   LAN host 192.168.77.10 --- lan0 192.168.77.1 [router: agent] wan0 203.0.113.1 --- outside 203.0.113.2
#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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
using ::testing::Not;

class ForwardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    dir_ = tmp_.path();
    ASSERT_OK_AND_ASSIGN(testing::RouterLayout l, testing::MakeRouterLayout());
    router_ = std::move(l.router);
    lan_ = std::move(l.lan);
    outside_ = std::move(l.outside);
    ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "web"));
    ASSERT_OK(testing::Serve(*lan_, "udp", 27015, "game"));
    file_ = dir_ + "/conf/forwards.json";
    ASSERT_OK(testing::Shell("mkdir -p " + dir_ + "/conf"));
    Write(R"({"forwards":[{"name":"web","protocol":"tcp","host_port":8080,
                          "target":"192.168.77.10:80"}]})");
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                     "--lan_interfaces=lan0 --wan_interface=wan0 "
                                                     "--forwards_file=" + file_));
  }

  // As an editor saves: a new file renamed over the old one.
  void Write(const std::string& text) { ASSERT_OK(testing::WriteByRename(file_, text)); }
  // Waits (up to 3 s) for `text` in the agent's log.
  bool LogShows(const std::string& text) { return agent_->LogShows(text); }
  absl::StatusOr<std::string> Ctl(const std::string& args) {
    return testing::Fabricctl(agent_->socket(), args);
  }

  testing::ScopedTempDir tmp_{"fwd"};
  std::string dir_, file_;
  std::unique_ptr<Netns> router_, lan_, outside_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(ForwardsTest, TheFileIsAppliedFollowedAndGuarded) {
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds("web 203.0.113.2\n"));
  EXPECT_THAT(agent_->LogText(), HasSubstr("(start): 1 forward(s): added 1, removed 0, kept 0"));
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, HasSubstr("static  tcp   0.0.0.0:8080"));
  EXPECT_THAT(list, HasSubstr("192.168.77.10:80"));

  // The forward's target may still ask for its own other ports (NAT-PMP).
  EXPECT_THAT(lan_->Exec("natpmpc -g 192.168.77.1 -a 8088 80 tcp 60"),
              IsOkAndHolds(HasSubstr("Mapped public port 8088 protocol TCP to local port 80")));

  // Rewritten by rename: web moves to 8081, a UDP range appears.
  Write(R"({"forwards":[
    {"name":"web","protocol":"tcp","host_port":8081,"target":"192.168.77.10:80"},
    {"name":"games","protocol":"udp","host_port":"27015-27016","target":"192.168.77.10:27015-27016"}]})");
  ASSERT_TRUE(LogShows("(the file changed): 2 forward(s): added 2, removed 1, kept 0"))
      << agent_->LogText();
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.5).ok());
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8081), IsOkAndHolds("web 203.0.113.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "udp", "203.0.113.1", 27015), IsOkAndHolds("game 203.0.113.2\n"));

  // An invalid file: the exact error, and the forwards stay.
  Write(R"({"forwards":[{"name":"web","protocol":"tcp","host_port":"80808","target":"192.168.77.10:80"}]})");
  ASSERT_TRUE(LogShows("forwards[0] (\"web\"): host_port: \"80808\" is not a port 1-65535"))
      << agent_->LogText();
  EXPECT_TRUE(LogShows("; keeping the previous 2 forward(s)"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8081), IsOkAndHolds("web 203.0.113.2\n"));

  // A port another owner holds: named, nothing changes.
  ASSERT_OK(Ctl("add tcp 9090 192.168.77.10:80 --owner api-web").status());
  Write(R"({"forwards":[{"name":"web","protocol":"tcp","host_port":9090,"target":"192.168.77.10:80"}]})");
  ASSERT_TRUE(LogShows("forward \"web\": host port 9090/tcp on 0.0.0.0 is held by mapping m-"))
      << agent_->LogText();
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8081), IsOkAndHolds("web 203.0.113.2\n"));

  // The API cannot delete a static forward.
  ASSERT_OK_AND_ASSIGN(list, Ctl("list --json"));
  size_t at = list.find("\"OWNER_KIND_STATIC\"");
  ASSERT_NE(at, std::string::npos) << list;
  size_t id = list.rfind("\"id\": \"m-", at);
  ASSERT_NE(id, std::string::npos);
  std::string mid = list.substr(id + 7, list.find('"', id + 7) - id - 7);
  EXPECT_FALSE(Ctl("remove " + mid).ok());
  EXPECT_TRUE(LogShows("from --forwards_file; remove it from the file"));

  // SIGHUP reloads (it used to end the agent) and the agent stays up.
  Write(R"({"forwards":[{"name":"web","protocol":"tcp","host_port":8082,"target":"192.168.77.10:80"}]})");
  ASSERT_TRUE(LogShows("1 forward(s): added 1, removed 2"));
  ASSERT_EQ(kill(agent_->pid(), SIGHUP), 0);
  ASSERT_TRUE(LogShows("(SIGHUP): 1 forward(s): added 0, removed 0, kept 1")) << agent_->LogText();
  EXPECT_THAT(Ctl("status"), IsOkAndHolds(HasSubstr("ready")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8082), IsOkAndHolds("web 203.0.113.2\n"));
}

// A router whose own firewall's forward chain has policy drop: DNAT'd
// flows die there whatever our table does. The agent says so (diagnose,
// metric, status page) until the chain accepts them.
TEST_F(ForwardsTest, ForwardChainThatDropsIsReportedUntilItAcceptsDnat) {
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                   "--forwards_file=" + file_ +
                                                       " --metrics_address=127.0.0.1:19335"));
  const std::string rules = dir_ + "/router.nft";
  ASSERT_OK(testing::Shell("printf '%s\\n' 'table inet filter {' "
                           "'  chain forward { type filter hook forward priority 0; policy drop; }' "
                           "'}' > " + rules));
  ASSERT_OK(router_->Exec("nft -f " + rules));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.5).ok());
  auto diagnose = [&] {
    return testing::RunCommand(absl::StrCat("ip netns exec ", router_->name(), " ",
                                            testing::Runfile("agent/fabricctl"), " --socket ",
                                            agent_->socket(), " diagnose"));
  };
  ASSERT_OK_AND_ASSIGN(testing::CommandResult d, diagnose());
  EXPECT_NE(d.exit_code, 0);
  EXPECT_THAT(d.out, HasSubstr("forward chain inet/filter/forward (policy drop) drops DNAT'd "
                               "connections"));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19335/metrics"),
              IsOkAndHolds(HasSubstr("nat_forward_drop_chains 1\n")));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19335/"),
              IsOkAndHolds(HasSubstr("inet/filter/forward (policy drop): published ports do not "
                                     "work through it")));
  // The fix the finding names: the flows pass, and nothing is reported.
  ASSERT_OK(router_->Exec("nft insert rule inet filter forward ct status dnat accept"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds("web 203.0.113.2\n"));
  ASSERT_OK_AND_ASSIGN(d, diagnose());
  EXPECT_EQ(d.exit_code, 0) << d.out;
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19335/metrics"),
              IsOkAndHolds(HasSubstr("nat_forward_drop_chains 0\n")));
  // A chain that ends with a bare drop rule counts too.
  ASSERT_OK(router_->Exec("nft flush chain inet filter forward && "
                          "nft chain inet filter forward '{ policy accept; }' && "
                          "nft add rule inet filter forward drop"));
  ASSERT_OK_AND_ASSIGN(d, diagnose());
  EXPECT_THAT(d.out, HasSubstr("inet/filter/forward (ends with a drop rule)"));
}

// IPv6 clients to an IPv4-only LAN host: forwards from the router's IPv6
// address (or every one) to the host's IPv4 address go through the
// in-agent proxy, TCP and UDP, share the allocator with everything else,
// refuse a port another process holds without changing anything, and
// close when the file drops them.
TEST_F(ForwardsTest, Ipv6ClientsReachAnIpv4OnlyHostThroughTheProxy) {
  ASSERT_OK(router_->Exec("ip -6 addr add 2001:db8:1::1/64 dev wan0 nodad"));
  ASSERT_OK(outside_->Exec("ip -6 addr add 2001:db8:1::2/64 dev eth0 nodad"));
  agent_.reset();
  Write(R"({"forwards":[
    {"name":"web","protocol":"tcp","host_port":8080,"target":"192.168.77.10:80"},
    {"name":"web6","protocol":"tcp","host_ip":"2001:db8:1::1","host_port":8086,"target":"192.168.77.10:80"},
    {"name":"game6","protocol":"udp","host_ip":"::","host_port":27016,"target":"192.168.77.10:27015"}]})");
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                   "--lan_interfaces=lan0 --wan_interface=wan0 "
                                                   "--forwards_file=" + file_ +
                                                       " --metrics_address=127.0.0.1:19338"));
  // web was kept from the first start (it is stored); the proxied two are
  // applied at every start.
  ASSERT_TRUE(LogShows("(start): 3 forward(s): added 2, removed 0, kept 1")) << agent_->LogText();
  // The LAN host, IPv4 only, sees the router's LAN address.
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:1::1", 8086),
              IsOkAndHolds("web 192.168.77.1\n"));
  EXPECT_THAT(testing::Ask(*outside_, "udp", "2001:db8:1::1", 27016),
              IsOkAndHolds("game 192.168.77.1\n"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds("web 203.0.113.2\n"));
  ASSERT_OK_AND_ASSIGN(std::string metrics,
                       router_->Exec("curl -s http://127.0.0.1:19338/metrics"));
  EXPECT_THAT(metrics, HasSubstr("nat_connections_total{type=\"proxy\"} 1\n"));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19338/"),
              IsOkAndHolds(HasSubstr("3 applied (2 through the IPv6-to-IPv4 proxy: 0 connection(s) "
                                     "and 1 UDP flow(s) open, 1 accepted")));

  // Listed with the static forwards.
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, ::testing::ContainsRegex("static +tcp +\\[2001:db8:1::1\\]:8086 +192.168.77.10:80"));
  EXPECT_THAT(list, ::testing::ContainsRegex("static +udp +\\[::\\]:27016 +192.168.77.10:27015"));
  EXPECT_THAT(list, HasSubstr("through the IPv6-to-IPv4 proxy"));
  // The allocator knows the proxy's ports: an API mapping on them is refused.
  EXPECT_THAT(Ctl("add tcp 8086 [2001:db8:1::9]:80 --owner v6web"),
              testing::StatusIs(absl::StatusCode::kInternal,
                                HasSubstr("static forward web6 (IPv6-to-IPv4 proxy)")));

  // A port another process listens on: the reload fails, naming it, and
  // every forward stays.
  ASSERT_OK(router_->Spawn("exec python3 -c 'import socket,time\n"
                           "s=socket.socket(socket.AF_INET6); s.bind((\"::\",8090)); s.listen(1)\n"
                           "time.sleep(600)'"));
  ASSERT_OK(router_->Exec("for i in $(seq 100); do ss -ltn | grep -q ':8090 ' && exit 0; "
                          "sleep 0.05; done; exit 1"));
  Write(R"({"forwards":[
    {"name":"web6","protocol":"tcp","host_ip":"::","host_port":8090,"target":"192.168.77.10:80"}]})");
  ASSERT_TRUE(LogShows("forward \"web6\": tcp [::]:8090 is in use by another socket (EADDRINUSE)"))
      << agent_->LogText();
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:1::1", 8086),
              IsOkAndHolds("web 192.168.77.1\n"));

  // Dropped from the file: the proxy's port closes.
  Write(R"({"forwards":[{"name":"web","protocol":"tcp","host_port":8080,"target":"192.168.77.10:80"}]})");
  ASSERT_TRUE(LogShows("1 forward(s): added 0, removed 2, kept 1")) << agent_->LogText();
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "2001:db8:1::1", 8086, 0.5).ok());
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds("web 203.0.113.2\n"));
}

// --forward_accept on the same firewall: our accept goes to the top of
// its forward chain, the DNAT'd flows pass, and a reload of the firewall
// from its file (`flush ruleset`, as /etc/nftables.conf does) is healed
// within moments, our own table with it. Dropped from the flags, the rule
// goes; `fabric-agent remove-rules` removes everything of ours.
TEST_F(ForwardsTest, ForwardAcceptKeepsDnatFlowsPassingAPolicyDropFirewall) {
  agent_.reset();
  const std::string rules = dir_ + "/router.nft";
  ASSERT_OK(testing::Shell("printf '%s\\n' 'flush ruleset' 'table inet filter {' "
                           "'  chain forward { type filter hook forward priority 0; policy drop; "
                           "iifname \"lan0\" accept; }' "
                           "'}' > " + rules));
  ASSERT_OK(router_->Exec("nft -f " + rules));
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                   "--forwards_file=" + file_ +
                                                       " --forward_accept=inet/filter/forward"
                                                       " --metrics_address=127.0.0.1:19336"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080), IsOkAndHolds("web 203.0.113.2\n"));
  auto chain = [&] { return router_->Exec("nft list chain inet filter forward"); };
  // First, counting what it let through, and the rest as it was.
  EXPECT_THAT(chain(), IsOkAndHolds(::testing::ContainsRegex(
                           "policy drop;\n\t\tct status dnat counter packets [1-9][0-9]* bytes "
                           "[0-9]+ accept comment \"fabric-nat: DNAT'd flows pass "
                           "\\(--forward_accept\\)\"\n\t\tiifname \"lan0\" accept\n")));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19336/metrics"),
              IsOkAndHolds(HasSubstr("nat_forward_drop_chains 0\n")));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19336/"),
              IsOkAndHolds(HasSubstr("forward accept (ct status dnat accept) in "
                                     "inet/filter/forward: inserted at the top of "
                                     "inet/filter/forward")));

  // The firewall reloaded from its file: both tables come back by events.
  ASSERT_OK(router_->Exec("nft -f " + rules));
  bool healed = false;
  for (int i = 0; i < 40 && !healed; ++i) {
    healed = testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.25).ok();
  }
  EXPECT_TRUE(healed) << agent_->LogText();
  EXPECT_THAT(agent_->LogText(),
              HasSubstr("forward_accept: inserted at the top of inet/filter/forward (after "));
  EXPECT_THAT(chain(), IsOkAndHolds(HasSubstr("accept comment \"fabric-nat: DNAT'd flows pass")));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19336/"),
              IsOkAndHolds(HasSubstr("forward accept: inserted at the top of inet/filter/forward")));

  // Without the flag the rule goes, and the firewall drops again.
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_, "--forwards_file=" + file_));
  EXPECT_THAT(chain(), IsOkAndHolds(Not(HasSubstr("fabric-nat"))));
  EXPECT_THAT(chain(), IsOkAndHolds(HasSubstr("iifname \"lan0\" accept")));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "203.0.113.1", 8080, 0.5).ok());

  // Uninstall: refused while the agent runs, then everything of ours goes.
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(router_.get(), dir_,
                                                   "--forwards_file=" + file_ +
                                                       " --forward_accept=inet/filter/forward"));
  const std::string remove = absl::StrCat(
      "ip netns exec ", router_->name(), " ", testing::Runfile("agent/fabric-agent"),
      " remove-rules --state_dir=", dir_, "/state --run_dir=", dir_, "/run --socket=",
      agent_->socket());
  ASSERT_OK_AND_ASSIGN(testing::CommandResult busy, testing::RunCommand(remove));
  EXPECT_EQ(busy.exit_code, 1);
  EXPECT_THAT(busy.err, HasSubstr("fabric-agent remove-rules: "));
  EXPECT_THAT(chain(), IsOkAndHolds(HasSubstr("fabric-nat")));
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(testing::CommandResult done, testing::RunCommand(remove));
  EXPECT_EQ(done.exit_code, 0) << done.err;
  EXPECT_THAT(done.out, HasSubstr("forward accept rules removed from inet/filter/forward; table "
                                  "inet fabric_nat deleted"));
  EXPECT_THAT(router_->Exec("nft list ruleset"), IsOkAndHolds(Not(HasSubstr("fabric"))));
  EXPECT_THAT(chain(), IsOkAndHolds(HasSubstr("iifname \"lan0\" accept")));
}

}  // namespace
}  // namespace fabric
