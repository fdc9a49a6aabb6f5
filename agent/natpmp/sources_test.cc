#include "agent/natpmp/sources.h"

#include "gtest/gtest.h"

namespace fabric::agent::natpmp {
namespace {

nat::IpAddress Ip(const char* s) { return *nat::IpAddress::Parse(s); }
nat::Prefix P(const char* s) { return *nat::Prefix::Parse(s); }

InterfaceAddresses Router() {
  InterfaceAddresses a;
  a.subnets["lan0"] = {P("192.168.77.1/24"), P("10.5.0.1/31")};
  a.subnets["wan0"] = {P("203.0.113.1/24")};
  a.subnets["cni0"] = {P("10.88.0.1/16")};
  a.subnets["lo"] = {P("127.0.0.1/8")};
  a.loopback = {"lo"};
  for (const auto& [name, list] : a.subnets) {
    for (const nat::Prefix& p : list) a.own.insert(p.address);
  }
  return a;
}

TEST(SourcesTest, ServesSourcesInsideTheArrivalInterfacesSubnets) {
  InterfaceAddresses a = Router();
  EXPECT_EQ(RefusedSource(a, "lan0", Ip("192.168.77.10")), std::nullopt);
  EXPECT_EQ(RefusedSource(a, "lan0", Ip("192.168.77.254")), std::nullopt);
  EXPECT_EQ(RefusedSource(a, "lan0", Ip("10.5.0.0")), std::nullopt);  // a /31 has no broadcast
  // On a loopback interface the host's own address is the host itself.
  EXPECT_EQ(RefusedSource(a, "lo", Ip("127.0.0.1")), std::nullopt);
}

TEST(SourcesTest, DropsWhatCanOnlyBeSpoofed) {
  InterfaceAddresses a = Router();
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("203.0.113.50")),
            "203.0.113.50 is outside every subnet of lan0");
  // A container's address, arriving on the LAN side.
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("10.88.0.5")),
            "10.88.0.5 is outside every subnet of lan0");
  // The host's own address on a LAN interface.
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("192.168.77.1")),
            "192.168.77.1 is this host's own address");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("203.0.113.1")), "203.0.113.1 is this host's own address");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("192.168.77.255")),
            "192.168.77.255 is the network or broadcast address of 192.168.77.0/24");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("192.168.77.0")),
            "192.168.77.0 is the network or broadcast address of 192.168.77.0/24");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("0.0.0.0")), "0.0.0.0 is not a unicast address");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("224.0.0.1")), "224.0.0.1 is not a unicast address");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("255.255.255.255")),
            "255.255.255.255 is not a unicast address");
  // An interface without addresses serves no one.
  EXPECT_EQ(*RefusedSource(a, "lan1", Ip("192.168.77.10")),
            "192.168.77.10 is outside every subnet of lan1");
}

TEST(SourcesTest, ReadsTheHostsAddresses) {
  absl::StatusOr<InterfaceAddresses> a = InterfaceAddresses::Read();
  ASSERT_TRUE(a.ok()) << a.status();
  // Every Linux host (and network namespace that is up) has lo; a fresh
  // namespace's lo may be down and addressless, so only check consistency.
  for (const auto& [name, list] : a->subnets) {
    for (const nat::Prefix& p : list) EXPECT_EQ(a->own.count(p.address), 1u) << name;
  }
}

TEST(SourcesTest, Ipv6SourcesMustLieInsideAnIpv6PrefixOfTheInterface) {
  InterfaceAddresses a = Router();
  a.subnets6["lan0"] = {P("2001:db8:77::1/64"), P("fe80::1/64")};
  a.subnets6["wan0"] = {P("2001:db8:1::1/64")};
  a.own.insert(Ip("2001:db8:77::1"));
  EXPECT_EQ(RefusedSource(a, "lan0", Ip("2001:db8:77::10")), std::nullopt);
  EXPECT_EQ(RefusedSource(a, "lan0", Ip("fe80::10")), std::nullopt);
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("2001:db8:1::2")),
            "2001:db8:1::2 is outside every IPv6 prefix of lan0");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("2001:db8:77::1")),
            "2001:db8:77::1 is this host's own address");
  EXPECT_EQ(*RefusedSource(a, "lan0", Ip("ff02::1")), "ff02::1 is not a unicast address");
}

}  // namespace
}  // namespace fabric::agent::natpmp
