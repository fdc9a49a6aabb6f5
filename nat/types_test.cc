#include "nat/types.h"

#include <arpa/inet.h>

#include <cstdint>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

// The IPv4 text is formatted by hand: it must agree with inet_ntop for
// every value in every position.
TEST(IpAddressTest, IPv4TextAgreesWithInetNtop) {
  for (int pos = 0; pos < 4; ++pos) {
    for (int v = 0; v < 256; ++v) {
      for (uint8_t other : {0, 7, 10, 99, 100, 255}) {
        uint8_t b[4] = {other, other, other, other};
        b[pos] = static_cast<uint8_t>(v);
        char want[INET_ADDRSTRLEN];
        ASSERT_NE(inet_ntop(AF_INET, b, want, sizeof(want)), nullptr);
        ASSERT_EQ(IpAddress::FromBytes(Family::kIPv4, b).ToString(), std::string(want))
            << "octet " << pos << " = " << v << ", others " << int{other};
      }
    }
  }
}

TEST(IpAddressTest, ParsesBothFamiliesAndRoundTrips) {
  EXPECT_EQ(Ip("10.0.0.1").family(), Family::kIPv4);
  EXPECT_EQ(Ip("10.0.0.1").ToString(), "10.0.0.1");
  EXPECT_EQ(Ip("fd00:0::1").family(), Family::kIPv6);
  EXPECT_EQ(Ip("fd00:0::1").ToString(), "fd00::1");
  EXPECT_TRUE(Ip("0.0.0.0").IsUnspecified());
  EXPECT_TRUE(Ip("::").IsUnspecified());
  EXPECT_TRUE(Ip("127.3.0.1").IsLoopback());
  EXPECT_TRUE(Ip("::1").IsLoopback());
  EXPECT_FALSE(Ip("10.0.0.1").IsLoopback());
  EXPECT_THAT(IpAddress::Parse("10.0.0.256"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("10.0.0.256")));
  EXPECT_NE(Ip("::ffff:10.0.0.1"), Ip("10.0.0.1"));
}

TEST(PrefixTest, NetworkLastAndContains) {
  Prefix p = *Prefix::Parse("10.22.3.5/16");
  EXPECT_EQ(p.Network().ToString(), "10.22.0.0/16");
  EXPECT_EQ(p.Last().ToString(), "10.22.255.255");
  EXPECT_TRUE(p.Contains(Ip("10.22.200.1")));
  EXPECT_FALSE(p.Contains(Ip("10.23.0.1")));
  EXPECT_FALSE(p.Contains(Ip("fd00::1")));
  Prefix odd = *Prefix::Parse("192.168.7.77/27");
  EXPECT_EQ(odd.Network().ToString(), "192.168.7.64/27");
  EXPECT_EQ(odd.Last().ToString(), "192.168.7.95");
  Prefix v6 = *Prefix::Parse("fd00:1:2:3::5/64");
  EXPECT_EQ(v6.Network().ToString(), "fd00:1:2:3::/64");
  EXPECT_EQ(v6.Last().ToString(), "fd00:1:2:3:ffff:ffff:ffff:ffff");
  EXPECT_EQ(Prefix::Parse("10.0.0.1")->length, 32);
  EXPECT_THAT(Prefix::Parse("10.0.0.1/33"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Prefix::Parse("fd00::/129"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(PrefixTest, CoalesceDropsCoveredPrefixes) {
  std::set<Prefix> in = {*Prefix::Parse("10.22.0.5/16"),
                         *Prefix::Parse("10.22.7.0/24"),
                         *Prefix::Parse("10.23.0.0/16"),
                         *Prefix::Parse("fd00::1/64")};
  std::set<Prefix> want = {*Prefix::Parse("10.22.0.0/16"),
                           *Prefix::Parse("10.23.0.0/16"),
                           *Prefix::Parse("fd00::/64")};
  EXPECT_EQ(CoalescePrefixes(in), want);
  EXPECT_EQ(CoalescePrefixes({*Prefix::Parse("0.0.0.0/0"),
                              *Prefix::Parse("10.0.0.0/8")}),
            std::set<Prefix>{*Prefix::Parse("0.0.0.0/0")});
}

TEST(ProtocolTest, ParsesNamesCaseInsensitively) {
  EXPECT_EQ(*ParseProtocol("TCP"), Protocol::kTcp);
  EXPECT_EQ(*ParseProtocol("udp"), Protocol::kUdp);
  EXPECT_EQ(*ParseProtocol("sctp"), Protocol::kSctp);
  EXPECT_THAT(ParseProtocol("icmp"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("icmp")));
}

PortMapping Mapping(uint16_t host, uint16_t count, uint16_t target) {
  PortMapping m;
  m.protocol = Protocol::kTcp;
  m.host_port = host;
  m.port_count = count;
  m.target_ip = Ip("10.22.0.5");
  m.target_port = target;
  return m;
}

TEST(PortMappingTest, SinglePortIsOneElementWithTargetPort) {
  std::vector<DnatElement> e = Mapping(8080, 1, 80).ToElements();
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].port_lo, 8080);
  EXPECT_EQ(e[0].port_hi, 8080);
  EXPECT_EQ(e[0].target_port, 80);
  EXPECT_EQ(e[0].ToString(), "tcp 0.0.0.0:8080 -> 10.22.0.5:80");
}

TEST(PortMappingTest, EqualRangeIsOneIntervalElement) {
  std::vector<DnatElement> e = Mapping(7000, 11, 7000).ToElements();
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].port_lo, 7000);
  EXPECT_EQ(e[0].port_hi, 7010);
  EXPECT_EQ(e[0].target_port, 0);
  EXPECT_EQ(e[0].ToString(), "tcp 0.0.0.0:7000-7010 -> 10.22.0.5");
}

TEST(PortMappingTest, ShiftedRangeIsOneElementPerPort) {
  std::vector<DnatElement> e = Mapping(7000, 3, 9000).ToElements();
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[2].port_lo, 7002);
  EXPECT_EQ(e[2].target_port, 9002);
}

TEST(PortMappingTest, ValidateNamesTheProblem) {
  EXPECT_TRUE(Mapping(8080, 1, 80).Validate().ok());
  EXPECT_THAT(Mapping(0, 1, 80).Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("host port must be 1-65535")));
  EXPECT_THAT(Mapping(65530, 10, 65530).Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("past 65535")));
  EXPECT_THAT(Mapping(1000, 2000, 5000).Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("at most 1024")));
  PortMapping mixed = Mapping(8080, 1, 80);
  mixed.host_ip = Ip("fd00::1");
  EXPECT_THAT(mixed.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("is ipv6 but target")));
  PortMapping loop = Mapping(8080, 1, 80);
  loop.target_ip = Ip("127.0.0.1");
  EXPECT_THAT(loop.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
}

SnatRule Snat(const char* source, const char* to, const char* iface = "") {
  return SnatRule{*Prefix::Parse(source), Ip(to), iface};
}

TEST(SnatRuleTest, ValidRulesPass) {
  EXPECT_OK(Snat("10.20.0.0/24", "203.0.113.5", "wan0").Validate());
  EXPECT_OK(Snat("10.20.0.7/32", "203.0.113.5").Validate());
  EXPECT_OK(Snat("fd00:20::/64", "2001:db8::5", "ppp0").Validate());
  EXPECT_EQ(Snat("10.20.0.0/24", "203.0.113.5", "wan0").ToString(),
            "10.20.0.0/24 -> 203.0.113.5 via wan0");
  EXPECT_EQ(Snat("10.20.0.0/24", "203.0.113.5").ToString(), "10.20.0.0/24 -> 203.0.113.5 via any");
}

TEST(SnatRuleTest, ValidateNamesTheProblem) {
  auto invalid = [](const SnatRule& r, const char* why) {
    EXPECT_THAT(r.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                       AllOf(HasSubstr(r.ToString()), HasSubstr(why))))
        << r.ToString();
  };
  invalid(Snat("0.0.0.0/0", "203.0.113.5"), "a /0 source");
  invalid(Snat("::/0", "2001:db8::5"), "a /0 source");
  invalid(Snat("10.20.0.5/24", "203.0.113.5"), "host bits set (the network is 10.20.0.0/24)");
  invalid(Snat("10.20.0.0/24", "2001:db8::5"), "to-address is ipv6 but the source is ipv4");
  invalid(Snat("10.20.0.0/24", "0.0.0.0"), "unicast");
  invalid(Snat("10.20.0.0/24", "127.0.0.1"), "unicast");
  invalid(Snat("10.20.0.0/24", "224.0.0.1"), "unicast");
  invalid(Snat("10.20.0.0/24", "255.255.255.255"), "unicast");
  invalid(Snat("fd00::/64", "::1"), "unicast");
  invalid(Snat("fd00::/64", "ff02::1"), "unicast");
  invalid(Snat("10.20.0.0/24", "203.0.113.5", "a-name-of-16-chr"), "1-15 bytes");
  invalid(Snat("10.20.0.0/24", "203.0.113.5", ".."), "1-15 bytes");
  invalid(Snat("10.20.0.0/24", "203.0.113.5", "wan 0"), "printable");
  invalid(Snat("10.20.0.0/24", "203.0.113.5", "wan/0"), "printable");
  invalid(Snat("10.20.0.0/24", "203.0.113.5", "wan:0"), "printable");
}

TEST(SnatRuleTest, RuleSetCountsAndComparesSnat) {
  RuleSet a, b;
  a.snat = {Snat("10.20.0.0/24", "203.0.113.5", "wan0")};
  EXPECT_FALSE(a.empty());
  EXPECT_EQ(a.size(), 1u);
  EXPECT_NE(a, b);
  b.snat = {Snat("10.20.0.0/24", "203.0.113.6", "wan0")};
  EXPECT_NE(a, b);
  EXPECT_THAT(a.DebugString(), HasSubstr("snat 10.20.0.0/24 -> 203.0.113.5 via wan0"));
}

TEST(PortRangeTest, Parses) {
  EXPECT_EQ(*ParsePortRange("32768-60999"), std::make_pair(uint16_t{32768},
                                                           uint16_t{60999}));
  EXPECT_EQ(*ParsePortRange("80"), std::make_pair(uint16_t{80}, uint16_t{80}));
  EXPECT_THAT(ParsePortRange("0-10"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParsePortRange("10-5"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParsePortRange("1-70000"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fabric::nat
