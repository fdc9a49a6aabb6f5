#include "agent/forwards.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<std::vector<StaticForward>> Parse(const std::string& text) {
  return ParseForwards(text, "/etc/fwd.json");
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
    absl::StatusOr<std::vector<StaticForward>> r = Parse(text);
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument));
    return r.ok() ? std::string() : std::string(r.status().message());
  };
  EXPECT_EQ(err("{"), "/etc/fwd.json: not JSON");
  EXPECT_EQ(err(R"({"forward":[]})"), "/etc/fwd.json: unknown key \"forward\" (forwards)");
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
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_ip":"2001:db8::1","host_port":80,"target":"10.0.0.1:80"}]})"),
              HasSubstr("needs the in-agent proxy, which is not served yet"));
  EXPECT_THAT(err(R"({"forwards":[{"name":"a","protocol":"tcp","host_port":80,"target":"10.0.0.1:80","extra":1}]})"),
              HasSubstr("unknown field \"extra\""));
  EXPECT_THAT(err(R"({"snat":[{"source":"10.20.0.0/24","to":"203.0.113.5"}]})"),
              HasSubstr("snat: fixed-address SNAT is not served yet"));
  EXPECT_THAT(err(std::string(kMaxForwardsFile + 1, ' ')), HasSubstr("larger than 1048576 bytes"));
  EXPECT_THAT(LoadForwardsFile("/nonexistent/fwd.json"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace fabric::agent
