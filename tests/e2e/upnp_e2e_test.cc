// UPnP IGD end to end: fabric-agent --upnp in a router namespace, LAN
// hosts using Debian's upnpc (miniupnpc 2.2) to discover it by SSDP and map
// ports, curl for hostile requests, real TCP and UDP from an outside
// namespace through the mappings.
//
//   LAN host A 192.168.77.10 --- lan0 192.168.77.1 [router: agent] wan0 11.77.0.1 --- outside 11.77.0.2
//   LAN host B 192.168.78.10 --- lan1 192.168.78.1
//
// The WAN address is outside the ranges miniupnpc calls reserved, so upnpc
// sees a connected, valid IGD (with 203.0.113.0/24 it would say "not
// connected?" and stop).
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

constexpr char kRoot[] = "http://192.168.77.1:5000/rootDesc.xml";
constexpr char kControl[] = "http://192.168.77.1:5000/ctl/IPConn";
constexpr char kWan[] = "11.77.0.1";

class UpnpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    dir_ = tmp_.path();
    ASSERT_FALSE(dir_.empty());
    ASSERT_OK_AND_ASSIGN(testing::RouterLayout l, testing::MakeRouterLayout("11.77.0"));
    router_ = std::move(l.router);
    lan_ = std::move(l.lan);
    outside_ = std::move(l.outside);
    ASSERT_OK_AND_ASSIGN(lan2_, Netns::Create("lan2"));
    ASSERT_OK(testing::Link(*router_, "lan1", "192.168.78.1/24", *lan2_, "eth0",
                            "192.168.78.10/24"));
    ASSERT_OK(lan2_->Exec("ip route add default via 192.168.78.1"));
    // The outside host can route to the LAN side too: what it sends there
    // must still be refused.
    ASSERT_OK(outside_->Exec("ip route add 192.168.0.0/16 via 11.77.0.1"));
    StartAgent();
  }
  void TearDown() override { agent_.reset(); }

  void StartAgent(const std::string& extra = "") {
    ASSERT_OK_AND_ASSIGN(
        agent_, AgentProcess::Start(router_.get(), dir_,
                                    "--lan_interfaces=lan0,lan1 --wan_interface=wan0 --upnp "
                                    "--natpmp_max_per_client=5 " + extra));
  }

  // upnpc from `ns`; with a URL it skips discovery (-u).
  absl::StatusOr<std::string> Upnpc(const Netns& ns, const std::string& args,
                                    const std::string& url = kRoot) {
    absl::StatusOr<testing::CommandResult> r = testing::RunCommand(absl::StrCat(
        "ip netns exec ", ns.name(), " upnpc ", url.empty() ? "" : "-u " + url + " ", args,
        " 2>&1"));
    if (!r.ok()) return r.status();
    return r->out;
  }
  absl::StatusOr<std::string> Ctl(const std::string& args) {
    return testing::Fabricctl(agent_->socket(), args);
  }
  // curl from `ns`: the body and the HTTP code (000: no answer) on one
  // line, newlines made spaces.
  absl::StatusOr<std::string> Curl(const Netns& ns, const std::string& args) {
    return ns.Exec("curl -s --max-time 5 -w '\\n%{http_code}' " + args +
                   " 2>&1 | tr '\\n' ' '; true");
  }
  // A SOAP POST of `body` (a file in the namespace's view) with `action`.
  std::string Post(const std::string& action, const std::string& body_file,
                   const std::string& url = kControl) {
    return absl::StrCat("-H 'Content-Type: text/xml' -H 'SOAPAction: \"", action,
                        "\"' --data-binary @", body_file, " ", url);
  }

  testing::ScopedTempDir tmp_{"upnp"};
  std::string dir_;
  std::unique_ptr<Netns> router_, lan_, lan2_, outside_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(UpnpTest, DiscoveredBySsdpAndReportsTheWan) {
  // No -u: upnpc finds the gateway with an M-SEARCH.
  ASSERT_OK_AND_ASSIGN(std::string out, Upnpc(*lan_, "-s", ""));
  EXPECT_THAT(out, HasSubstr(absl::StrCat(" desc: ", kRoot)));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("Found valid IGD : ", kControl)));
  EXPECT_THAT(out, HasSubstr("Connection Type : IP_Routed"));
  EXPECT_THAT(out, HasSubstr("Status : Connected"));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("ExternalIPAddress = ", kWan)));
  // The second LAN gets the address of its own interface in LOCATION.
  EXPECT_THAT(Upnpc(*lan2_, "-s", ""),
              IsOkAndHolds(HasSubstr("desc: http://192.168.78.1:5000/rootDesc.xml")));
  // The WAN side finds nothing.
  EXPECT_THAT(Upnpc(*outside_, "-m eth0 -s", ""),
              IsOkAndHolds(HasSubstr("No IGD UPnP Device found on the network")));
}

TEST_F(UpnpTest, AddListDeleteWithTrafficFromOutside) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanweb"));
  ASSERT_OK(testing::Serve(*lan_, "udp", 53, "landns"));
  EXPECT_THAT(Upnpc(*lan_, "-e web -a 192.168.77.10 80 8080 TCP 3600"),
              IsOkAndHolds(HasSubstr("external 11.77.0.1:8080 TCP is redirected to internal "
                                     "192.168.77.10:80 (duration=")));
  EXPECT_THAT(Upnpc(*lan_, "-e dns -a 192.168.77.10 53 5353 UDP 600"),
              IsOkAndHolds(HasSubstr("external 11.77.0.1:5353 UDP is redirected")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", kWan, 8080), IsOkAndHolds("lanweb 11.77.0.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "udp", kWan, 5353), IsOkAndHolds("landns 11.77.0.2\n"));

  ASSERT_OK_AND_ASSIGN(std::string l, Upnpc(*lan_, "-l"));
  EXPECT_THAT(l, HasSubstr("TCP  8080->192.168.77.10:80    'web'"));
  EXPECT_THAT(l, HasSubstr("UDP  5353->192.168.77.10:53    'dns'"));
  ASSERT_OK_AND_ASSIGN(std::string big_l, Upnpc(*lan_, "-L"));
  EXPECT_THAT(big_l, HasSubstr("8080->192.168.77.10:80"));
  EXPECT_THAT(big_l, HasSubstr("5353->192.168.77.10:53"));
  // fabricctl shows them with owner kind upnp.
  ASSERT_OK_AND_ASSIGN(std::string list, Ctl("list"));
  EXPECT_THAT(list, HasSubstr("upnp"));
  EXPECT_THAT(list, HasSubstr("11.77.0.1:8080"));
  EXPECT_THAT(list, HasSubstr("192.168.77.10 \"web\""));

  EXPECT_THAT(Upnpc(*lan_, "-d 8080 TCP"),
              IsOkAndHolds(HasSubstr("UPNP_DeletePortMapping() returned : 0")));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", kWan, 8080, 0.5).ok());
  EXPECT_THAT(router_->Exec("nft list map inet fabric_nat dnat4"),
              IsOkAndHolds(Not(HasSubstr("8080"))));
  // Again: 714.
  EXPECT_THAT(Upnpc(*lan_, "-d 8080 TCP"), IsOkAndHolds(HasSubstr("714")));
  // A range: the UDP one goes; an empty range is 730.
  EXPECT_THAT(Upnpc(*lan_, "-N 5000 6000 UDP"),
              IsOkAndHolds(Not(HasSubstr("failed"))));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("0 mapping(s)")));
  EXPECT_THAT(Upnpc(*lan_, "-N 5000 6000 UDP"), IsOkAndHolds(HasSubstr("730")));
}

TEST_F(UpnpTest, AnyPortRedirectsAndConflictsBetweenHosts) {
  ASSERT_OK(testing::Serve(*lan2_, "tcp", 81, "hostb"));
  ASSERT_OK(Upnpc(*lan_, "-a 192.168.77.10 80 8080 TCP 600").status());
  // Host B asks for the same external port: 718; with AddAny it gets the
  // next one.
  EXPECT_THAT(Upnpc(*lan2_, "-a 192.168.78.10 81 8080 TCP 600",
                    "http://192.168.78.1:5000/rootDesc.xml"),
              IsOkAndHolds(HasSubstr("failed with code 718 (ConflictInMappingEntry)")));
  EXPECT_THAT(Upnpc(*lan2_, "-n 192.168.78.10 81 8080 TCP 600",
                    "http://192.168.78.1:5000/rootDesc.xml"),
              IsOkAndHolds(HasSubstr("external 11.77.0.1:8081 TCP is redirected to internal "
                                     "192.168.78.10:81")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", kWan, 8081), IsOkAndHolds("hostb 11.77.0.2\n"));
  // Nobody maps to another host, or deletes another's mapping.
  EXPECT_THAT(Upnpc(*lan_, "-a 192.168.78.10 81 9090 TCP 600"),
              IsOkAndHolds(HasSubstr("failed with code 606 (Action not authorized)")));
  EXPECT_THAT(Upnpc(*lan_, "-d 8081 TCP"), IsOkAndHolds(HasSubstr("606")));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("2 mapping(s)")));
  // -r: every given port to the caller's own address.
  EXPECT_THAT(Upnpc(*lan_, "-r 82 8282 TCP 83 8383 UDP"),
              IsOkAndHolds(HasSubstr("external 11.77.0.1:8383 UDP is redirected to internal "
                                     "192.168.77.10:83")));
  EXPECT_THAT(Ctl("list"), IsOkAndHolds(HasSubstr("4 mapping(s)")));
}

TEST_F(UpnpTest, LeasesExpireAndSurviveARestart) {
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "lanweb"));
  ASSERT_OK(Upnpc(*lan_, "-a 192.168.77.10 80 8080 TCP 600").status());
  ASSERT_OK(Upnpc(*lan_, "-a 192.168.77.10 81 8181 TCP 2").status());
  absl::SleepFor(absl::Milliseconds(4500));
  EXPECT_THAT(router_->Exec("nft list map inet fabric_nat dnat4"),
              IsOkAndHolds(Not(HasSubstr("8181"))));
  EXPECT_THAT(agent_->LogText(), HasSubstr("expired 1 lease(s)"));
  agent_.reset();
  StartAgent();
  ASSERT_OK_AND_ASSIGN(std::string l, Upnpc(*lan_, "-l"));
  EXPECT_THAT(l, HasSubstr("TCP  8080->192.168.77.10:80"));
  EXPECT_THAT(l, Not(HasSubstr("8181")));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", kWan, 8080), IsOkAndHolds("lanweb 11.77.0.2\n"));
  // The same device after the restart.
  ASSERT_OK_AND_ASSIGN(std::string uuid, testing::Shell("cat " + dir_ + "/state/upnp-uuid"));
  EXPECT_THAT(agent_->LogText(), HasSubstr(uuid.substr(0, uuid.size() - 1)));
}

TEST_F(UpnpTest, HostileRequestsGetCleanErrorsAndTheServerKeepsServing) {
  auto file = [&](const std::string& name, const std::string& python) {
    std::string path = dir_ + "/" + name;
    EXPECT_OK(testing::Shell("python3 -c " + testing::ShellQuote(python) + " > " + path));
    return path;
  };
  const std::string envelope =
      "'<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>"
      "<u:GetExternalIPAddress xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"/>"
      "</s:Body></s:Envelope>'";
  std::string good = file("good.xml", "print(" + envelope + ")");
  const std::string action = "urn:schemas-upnp-org:service:WANIPConnection:2#GetExternalIPAddress";
  // The request works as is ...
  EXPECT_THAT(Curl(*lan_, Post(action, good)), IsOkAndHolds(HasSubstr("11.77.0.1")));
  // ... SOAPAction naming another action: 400.
  EXPECT_THAT(Curl(*lan_, Post("urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping",
                               good)),
              IsOkAndHolds(::testing::AllOf(
                  HasSubstr("SOAPAction names AddPortMapping but the body holds "
                            "GetExternalIPAddress"),
                  ::testing::EndsWith(" 400"))));
  // Malformed, deeply nested and entity-laden XML.
  std::string bad = file("bad.xml", "print('<s:Envelope><s:Body>')");
  EXPECT_THAT(Curl(*lan_, Post(action, bad)), IsOkAndHolds(HasSubstr("not XML")));
  std::string deep = file("deep.xml", "print('<a>' * 5000 + '</a>' * 5000)");
  EXPECT_THAT(Curl(*lan_, Post(action, deep)), IsOkAndHolds(HasSubstr(" 413")));
  std::string nested = file("nested.xml", "print('<a>' * 100 + '</a>' * 100)");
  EXPECT_THAT(Curl(*lan_, Post(action, nested)), IsOkAndHolds(HasSubstr("nest deeper than 8")));
  std::string laughs = file(
      "laughs.xml",
      "print('<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"' + 'x' * 100 + '\">]>' + " +
          envelope + ")");
  EXPECT_THAT(Curl(*lan_, Post(action, laughs)),
              IsOkAndHolds(HasSubstr("document type declaration")));
  // Oversized headers and an absurd Content-Length.
  EXPECT_THAT(Curl(*lan_, "-H 'X-Big: " + std::string(20000, 'b') + "' " + Post(action, good)),
              IsOkAndHolds(::testing::AnyOf(HasSubstr(" 431"), HasSubstr(" 414"),
                                            HasSubstr(" 000"))));
  EXPECT_THAT(Curl(*lan_, "-H 'Content-Length: 99999999999' " + Post(action, good)),
              IsOkAndHolds(::testing::AnyOf(HasSubstr(" 413"), HasSubstr(" 400"))));
  // No SOAPAction, the wrong content type, the wrong method, eventing.
  EXPECT_THAT(Curl(*lan_, "-H 'Content-Type: text/xml' --data-binary @" + good + " " + kControl),
              IsOkAndHolds(::testing::AllOf(HasSubstr("needs a SOAPAction header"),
                                            ::testing::EndsWith(" 400"))));
  EXPECT_THAT(Curl(*lan_, "-H 'SOAPAction: \"" + action + "\"' --data-binary @" + good + " " +
                              kControl),
              IsOkAndHolds(HasSubstr(" 415")));
  EXPECT_THAT(Curl(*lan_, kControl), IsOkAndHolds(HasSubstr(" 405")));
  EXPECT_THAT(Curl(*lan_, "-X SUBSCRIBE -H 'CALLBACK: <http://11.77.0.2/>' -H 'NT: upnp:event' " +
                              std::string(kControl)),
              IsOkAndHolds(HasSubstr(" 405")));
  // DNS rebinding: a Host that is not our address literal.
  EXPECT_THAT(Curl(*lan_, "-H 'Host: evil.example:5000' " + std::string(kRoot)),
              IsOkAndHolds(::testing::AllOf(HasSubstr("is not 192.168.77.1:5000"),
                                            ::testing::EndsWith(" 403"))));
  // The WAN side: no listener on the WAN address, and the LAN address
  // refuses a source outside the LAN subnets.
  EXPECT_THAT(Curl(*outside_, "http://11.77.0.1:5000/rootDesc.xml"),
              IsOkAndHolds(HasSubstr(" 000")));
  EXPECT_THAT(Curl(*outside_, kRoot), IsOkAndHolds(HasSubstr(" 403")));
  // Still serving.
  EXPECT_THAT(Upnpc(*lan_, "-s"), IsOkAndHolds(HasSubstr("ExternalIPAddress = 11.77.0.1")));
  EXPECT_THAT(Curl(*lan_, kRoot), IsOkAndHolds(HasSubstr("InternetGatewayDevice:2")));
}

// IPv6 pinholes through the agent's IPv6 firewall (--ipv6_firewall), asked
// for over IPv6 with upnpc -6 (WANIPv6FirewallControl:1), proven with real
// IPv6 connections from outside.
//   LAN host 2001:db8:77::10 --- lan0 2001:db8:77::1 [router] wan0 2001:db8:1::1 --- outside 2001:db8:1::2
TEST_F(UpnpTest, Ipv6PinholesOpenTheFirewallForTheRequesterOnly) {
  for (const auto& [ns, cmd] : std::vector<std::pair<Netns*, std::string>>{
           {router_.get(), "ip addr add 2001:db8:77::1/64 dev lan0 nodad"},
           {router_.get(), "ip addr add 2001:db8:1::1/64 dev wan0 nodad"},
           {router_.get(), "sysctl -qw net.ipv6.conf.all.forwarding=1"},
           {lan_.get(), "ip addr add 2001:db8:77::10/64 dev eth0 nodad"},
           {lan_.get(), "ip -6 route add default via 2001:db8:77::1"},
           {outside_.get(), "ip addr add 2001:db8:1::2/64 dev eth0 nodad"},
           {outside_.get(), "ip -6 route add 2001:db8:77::/64 via 2001:db8:1::1"}}) {
    ASSERT_OK(ns->Exec(cmd));
  }
  ASSERT_OK(testing::Serve(*lan_, "tcp", 80, "v6web"));
  ASSERT_OK(testing::Serve(*lan_, "tcp", 81, "v6other"));
  // No firewall yet: routed IPv6 reaches the LAN host.
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 80), IsOkAndHolds(HasSubstr("v6web")));
  agent_.reset();
  StartAgent("--ipv6_firewall");
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 80, 0.5).ok());
  const std::string url = "http://[2001:db8:77::1]:5000/rootDesc.xml";
  EXPECT_THAT(Upnpc(*lan_, "-6 -S", url),
              IsOkAndHolds(::testing::AllOf(HasSubstr("Firewall Enabled: Yes"),
                                            HasSubstr("Inbound Pinhole Allowed: Yes"))));
  ASSERT_OK_AND_ASSIGN(std::string added,
                       Upnpc(*lan_, "-6 -A '' 0 2001:db8:77::10 80 TCP 3600", url));
  EXPECT_THAT(added, HasSubstr("Pinhole ID = 1"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 80), IsOkAndHolds(HasSubstr("v6web")));
  // Only what was opened: port 81 stays closed.
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 81, 0.5).ok());
  EXPECT_THAT(Upnpc(*lan_, "-6 -K 1", url), IsOkAndHolds(::testing::ContainsRegex(
                                                 "PinholePackets = [1-9]")));
  EXPECT_THAT(Upnpc(*lan_, "-6 -C 1", url), IsOkAndHolds(HasSubstr("IsWorking = Yes")));
  EXPECT_THAT(Upnpc(*lan_, "-6 -U 1 7200", url), IsOkAndHolds(Not(HasSubstr("failed"))));
  // Another host's address: refused.
  EXPECT_THAT(Upnpc(*lan_, "-6 -A '' 0 2001:db8:77::99 81 TCP 3600", url),
              IsOkAndHolds(HasSubstr("failed with code 606")));
  // Over IPv4 there is no IPv6 address to check: refused too.
  EXPECT_THAT(Upnpc(*lan_, "-A '' 0 2001:db8:77::10 81 TCP 3600"),
              IsOkAndHolds(HasSubstr("606")));
  // Kept across a restart (store and kernel).
  agent_.reset();
  StartAgent("--ipv6_firewall");
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 80), IsOkAndHolds(HasSubstr("v6web")));
  EXPECT_THAT(Upnpc(*lan_, "-6 -D 1", url), IsOkAndHolds(Not(HasSubstr("failed"))));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 80, 0.5).ok());
  EXPECT_THAT(Upnpc(*lan_, "-6 -D 1", url), IsOkAndHolds(HasSubstr("704")));
  // A short lease runs out on time.
  ASSERT_OK(Upnpc(*lan_, "-6 -A '' 0 2001:db8:77::10 81 TCP 2", url).status());
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 81), IsOkAndHolds(HasSubstr("v6other")));
  absl::SleepFor(absl::Milliseconds(4500));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "2001:db8:77::10", 81, 0.5).ok());
  EXPECT_THAT(router_->Exec("nft list set inet fabric_nat pinhole6"),
              IsOkAndHolds(Not(HasSubstr("2001:db8:77::10"))));
}

}  // namespace
}  // namespace fabric
