// AddressSource's contract through FakeAddressSource: listeners start from
// "no address", see every change once and in order, and nothing after
// Unsubscribe.
#include "agent/wan/address_source.h"

#include <string>
#include <vector>

#include "agent/wan/fake_address_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent::wan {
namespace {

using ::testing::ElementsAre;

nat::IpAddress Ip(const char* s) { return *nat::IpAddress::Parse(s); }

std::string Str(const std::optional<nat::IpAddress>& a) {
  return a.has_value() ? a->ToString() : "none";
}

TEST(AddressSourceTest, ChangesInOrderAndOnlyChanges) {
  FakeAddressSource source("wan0");
  std::vector<std::string> calls;
  source.Subscribe([&](const AddressChange& c) {
    calls.push_back(c.interface + ": " + Str(c.previous) + " -> " + Str(c.address));
  });
  EXPECT_TRUE(calls.empty());
  source.Set(Ip("203.0.113.1"));
  source.Set(Ip("203.0.113.1"));  // unchanged: no call
  source.Set(Ip("203.0.113.50"));
  source.Set(std::nullopt);
  source.Set(std::nullopt);
  EXPECT_THAT(calls, ElementsAre("wan0: none -> 203.0.113.1", "wan0: 203.0.113.1 -> 203.0.113.50",
                                 "wan0: 203.0.113.50 -> none"));
  EXPECT_EQ(source.address(), std::nullopt);
}

TEST(AddressSourceTest, LateSubscriberGetsTheCurrentAddressAtOnce) {
  FakeAddressSource source;
  source.Set(Ip("203.0.113.1"));
  std::vector<std::string> calls;
  int id = source.Subscribe(
      [&](const AddressChange& c) { calls.push_back(Str(c.previous) + " -> " + Str(c.address)); });
  EXPECT_THAT(calls, ElementsAre("none -> 203.0.113.1"));
  EXPECT_EQ(Str(source.address()), "203.0.113.1");
  source.Unsubscribe(id);
  source.Set(Ip("203.0.113.2"));
  EXPECT_EQ(calls.size(), 1u);
}

TEST(AddressSourceTest, ListenersMayReadTheAddress) {
  FakeAddressSource source;
  std::string seen;
  source.Subscribe([&](const AddressChange&) { seen = Str(source.address()); });
  source.Set(Ip("192.0.2.1"));
  EXPECT_EQ(seen, "192.0.2.1");
}

}  // namespace
}  // namespace fabric::agent::wan
