#include "agent/forwards.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<std::vector<StaticForward>> Parse(const std::string& text) {
  absl::StatusOr<StaticConfig> c = ParseForwards(text, "/etc/fwd.json");
  if (!c.ok()) return c.status();
  return c->forwards;
}

absl::StatusOr<std::vector<nat::SnatRule>> ParseSnat(const std::string& text,
                                                     const std::string& wan = "") {
  absl::StatusOr<StaticConfig> c = ParseForwards(text, "/etc/fwd.json", ForwardsOptions{wan});
  if (!c.ok()) return c.status();
  return c->snat;
}

TEST(ForwardsTest, ParsesTheDocumentedExample) {
  ASSERT_OK_AND_ASSIGN(
      std::vector<StaticForward> f,
      Parse(R"({"forwards":[
        {"name":"web","protocol":"tcp","host_ip":"","host_port":8080,"target":"192.168.1.100:80"},
        {"name":"games","protocol":"udp","host_port":"27015-27020",
         "target":"192.168.1.50:27015-27020"},
        {"name":"v6","protocol":"tcp","host_ip":"2001:db8::1","host_port":443,
         "target":"[fd00::5]:8443"}], "snat": []})"));
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[0].name, "web");
  EXPECT_FALSE(f[0].mapping.host_ip.has_value());
  EXPECT_EQ(f[0].mapping.host_port, 8080);
  EXPECT_EQ(f[0].mapping.target_ip.ToString(), "192.168.1.100");
  EXPECT_EQ(f[0].mapping.target_port, 80);
  EXPECT_EQ(f[1].mapping.protocol, nat::Protocol::kUdp);
  EXPECT_EQ(f[1].mapping.port_count, 6);
  EXPECT_EQ(f[2].mapping.host_ip->ToString(), "2001:db8::1");
  EXPECT_EQ(f[2].mapping.target_port, 8443);
  ASSERT_OK_AND_ASSIGN(f, Parse(R"({})"));
  EXPECT_TRUE(f.empty());
}

TEST(ForwardsTest, ErrorsNameTheFileTheEntryAndTheField) {
  auto err = [](const std::string& text) {
    absl::StatusOr<StaticConfig> r = ParseForwards(text, "/etc/fwd.json");
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument));
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  EXPECT_EQ(err("{"), "/etc/fwd.json: not JSON");
  EXPECT_EQ(err(R"({"forward":[]})"),
            "/etc/fwd.json: unknown key \"forward\" (forwards, snat)");
  EXPECT_EQ(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_port":80,"target":"10.0.0.1:80"},
                                 {"name":"b","protocol":"tcp","host_port":"99999","target":"10.0.0.1:80"}]})"),
            "/etc/fwd.json: forwards[1] (\"b\"): host_port: \"99999\" is not a port 1-65535 or a "
            "range lo-hi");
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"icmp","host_port":80,"target":"10.0.0.1:80"}]})"),
              HasSubstr("forwards[0] (\"a\"): protocol: "));
  EXPECT_EQ(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_port":80,"target":"10.0.0.1"}]})"),
            "/etc/fwd.json: forwards[0] (\"a\"): target: \"10.0.0.1\" is not address:port (IPv6 "
            "as [address]:port)");
  EXPECT_EQ(err(R"({"forwards":[{"name":"g","protocol":"udp","host_port":"1-6","target":"10.0.0.1:1-5"}]})"),
            "/etc/fwd.json: forwards[0] (\"g\"): target: 5 ports for 6 host ports");
  EXPECT_EQ(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_port":80,"target":"10.0.0.1:80"},
                                 {"name":"a","protocol":"tcp","host_port":81,"target":"10.0.0.1:81"}]})"),
            "/etc/fwd.json: forwards[1] (\"a\"): name: \"a\" is used twice");
  EXPECT_THAT(err(R"({"forwards":[{"name":"x y","protocol":"tcp","host_port":80,"target":"10.0.0.1:80"}]})"),
              HasSubstr("forwards[0] (\"x y\"): name: 1-64 of"));
  EXPECT_EQ(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_ip":"192.0.2.1","host_port":80,"target":"[2001:db8::5]:80"}]})"),
            "/etc/fwd.json: forwards[0] (\"a\"): host_ip: \"192.0.2.1\" is IPv4 and the target "
            "IPv6; IPv4 clients to IPv6 hosts are not served (the proxy serves IPv6 clients to "
            "IPv4 hosts)");
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"sctp","host_ip":"::","host_port":80,"target":"10.0.0.1:80"}]})"),
              HasSubstr("protocol: sctp cannot go through the IPv6-to-IPv4 proxy"));
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_ip":"::1","host_port":80,"target":"10.0.0.1:80"}]})"),
              HasSubstr("host_ip: \"::1\" must be a unicast address of this host"));
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_ip":"::","host_port":80,"target":"127.0.0.1:80"}]})"),
              HasSubstr("forwards[0] (\"a\"): target: 127.0.0.1 must be a routable unicast address"));
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_port":80,"target":"10.0.0.1:80","extra":1}]})"),
              HasSubstr("unknown field \"extra\""));
  // SNAT entries.
  EXPECT_EQ(err(R"({"snat":{}})"), "/etc/fwd.json: snat: must be an array");
  EXPECT_EQ(err(R"({"snat":[1]})"), "/etc/fwd.json: snat[0]: must be an object");
  EXPECT_EQ(err(R"({"snat":[{"to":"203.0.113.5"}]})"),
            "/etc/fwd.json: snat[0]: source: a network \"address/length\", required");
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/33","to":"203.0.113.5"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.0/33\"): source: \"10.20.0.0/33\" is not a "
            "network address/length");
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.5/24","to":"203.0.113.5"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.5/24\"): source: \"10.20.0.5/24\" has host bits "
            "set; the network is 10.20.0.0/24");
  EXPECT_EQ(err(R"({"snat":[{"source":"0.0.0.0/0","to":"203.0.113.5"}]})"),
            "/etc/fwd.json: snat[0] (\"0.0.0.0/0\"): source: \"0.0.0.0/0\" would translate "
            "every host's traffic; name the network");
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/24"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.0/24\"): to: an address, required");
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/24","to":"wan"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.0/24\"): to: \"wan\" is not an address");
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/24","to":"2001:db8::5"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.0/24\"): to: 2001:db8::5 is ipv6 but source "
            "10.20.0.0/24 is ipv4");
  for (const char* bad : {"0.0.0.0", "127.0.0.1", "224.0.0.5", "255.255.255.255"}) {
    EXPECT_THAT(err(absl::StrCat(R"({"snat":[{"source":"10.20.0.0/24","to":")", bad, "\"}]}")),
                HasSubstr("to: " + std::string(bad) + " must be a unicast address"));
  }
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/24","to":"203.0.113.5","out_interface":"wan 0"}]})"),
            "/etc/fwd.json: snat[0] (\"10.20.0.0/24\"): out_interface: \"wan 0\" must be 1-15 "
            "printable bytes without '/', ':' or spaces (\"\": any)");
  EXPECT_THAT(err(R"({"snat":[{"source":"10.20.0.0/24","to":"203.0.113.5","out_interface":7}]})"),
              HasSubstr("snat[0] (\"10.20.0.0/24\"): out_interface: must be an interface name"));
  EXPECT_THAT(err(R"({"snat":[{"source":"10.20.0.0/24","to":"203.0.113.5","via":"wan0"}]})"),
              HasSubstr("snat[0] (\"10.20.0.0/24\"): unknown field \"via\" (source, to, "
                        "out_interface)"));
  EXPECT_EQ(err(R"({"snat":[{"source":"10.20.0.0/24","to":"203.0.113.5","out_interface":"wan0"},
                             {"source":"10.20.0.0/24","to":"203.0.113.6","out_interface":"wan0"}]})"),
            "/etc/fwd.json: snat[1] (\"10.20.0.0/24\"): source 10.20.0.0/24 via wan0 is already "
            "translated by snat[0]");
  std::string many = R"({"snat":[)";
  for (int i = 0; i < 257; ++i) {
    absl::StrAppend(&many, i ? "," : "", R"({"source":"10.)", i / 256, ".", i % 256,
                    R"(.0/24","to":"203.0.113.5"})");
  }
  EXPECT_EQ(err(many + "]}"), "/etc/fwd.json: snat: 257 entries; at most 256");
  EXPECT_THAT(err(std::string(kMaxForwardsFile + 1, ' ')), HasSubstr("larger than 1048576 bytes"));
  EXPECT_THAT(LoadForwardsFile("/nonexistent/fwd.json"), StatusIs(absl::StatusCode::kNotFound));
}

TEST(ForwardsTest, AnIpv6HostForAnIpv4TargetGoesThroughTheProxy) {
  ASSERT_OK_AND_ASSIGN(
      std::vector<StaticForward> f,
      Parse(R"({"forwards":[
        {"name":"web6","protocol":"tcp","host_ip":"2001:db8::1","host_port":8080,"target":"192.168.1.100:80"},
        {"name":"dns6","protocol":"udp","host_ip":"::","host_port":"5300-5301","target":"192.168.1.53:5300-5301"},
        {"name":"web","protocol":"tcp","host_ip":"::","host_port":8081,"target":"[2001:db8::5]:80"}]})"));
  ASSERT_EQ(f.size(), 3u);
  EXPECT_TRUE(f[0].proxy);
  EXPECT_EQ(f[0].mapping.host_ip->ToString(), "2001:db8::1");
  EXPECT_EQ(f[0].mapping.target_ip.ToString(), "192.168.1.100");
  EXPECT_EQ(f[0].mapping.target_port, 80);
  EXPECT_TRUE(f[1].proxy);
  EXPECT_TRUE(f[1].mapping.host_ip->IsUnspecified());
  EXPECT_EQ(f[1].mapping.port_count, 2);
  // "::" for an IPv6 target is plain DNAT on every IPv6 address.
  EXPECT_FALSE(f[2].proxy);
  EXPECT_FALSE(f[2].mapping.host_ip.has_value());
}

TEST(ForwardsTest, ParsesSnatEntriesWithTheWanInterfaceAsDefault) {
  const std::string text = R"({"snat":[
      {"source":"10.20.0.0/24","to":"203.0.113.5","out_interface":"ppp0"},
      {"source":"10.30.0.0/16","to":"203.0.113.6"},
      {"source":"fd00:20::/64","to":"2001:db8::5","out_interface":""}]})";
  ASSERT_OK_AND_ASSIGN(std::vector<nat::SnatRule> snat, ParseSnat(text, "wan0"));
  ASSERT_EQ(snat.size(), 3u);
  EXPECT_EQ(snat[0].ToString(), "10.20.0.0/24 -> 203.0.113.5 via ppp0");
  EXPECT_EQ(snat[1].ToString(), "10.30.0.0/16 -> 203.0.113.6 via wan0");
  EXPECT_EQ(snat[2].ToString(), "fd00:20::/64 -> 2001:db8::5 via any");
  // Without --wan_interface: any interface.
  ASSERT_OK_AND_ASSIGN(snat, ParseSnat(text));
  EXPECT_EQ(snat[1].ToString(), "10.30.0.0/16 -> 203.0.113.6 via any");
  // A default that is no interface name is named as such.
  EXPECT_THAT(ParseSnat(text, "bad name"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("snat[1] (\"10.30.0.0/16\"): out_interface (from "
                                 "--wan_interface): \"bad name\"")));
}

}  // namespace
}  // namespace fabric::agent
