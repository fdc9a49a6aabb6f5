#include "nat/port_allocator.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }
PortScope Any4(Protocol p = Protocol::kTcp) {
  return PortScope{p, Family::kIPv4, std::nullopt};
}
PortScope On(const char* ip, Protocol p = Protocol::kTcp) {
  IpAddress a = Ip(ip);
  return PortScope{p, a.family(), a};
}

TEST(PortAllocatorTest, ReserveConflictNamesHolder) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(Any4(), 8080, 1, "cni:3f2a/eth0"));
  EXPECT_THAT(a.Reserve(Any4(), 8080, 1, "cni:beef/eth0"),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("host port 8080/tcp on 0.0.0.0 is held by "
                                 "cni:3f2a/eth0")));
}

// Slots live in pages of 256 ports, dropped when their last port goes: a
// range across a page edge, a port held on a specific address beside one
// held on any, and a page emptied and filled again.
TEST(PortAllocatorTest, HoldersSurviveAcrossPagesAndPagesRefill) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(Any4(), 250, 12, "range 250-261"));
  ASSERT_OK(a.Reserve(On("192.0.2.1"), 300, 1, "specific 300"));
  ASSERT_OK(a.Reserve(Any4(), 301, 1, "any 301"));
  EXPECT_EQ(a.ConflictingHolder(Any4(), 255), "range 250-261");
  EXPECT_EQ(a.ConflictingHolder(Any4(), 261), "range 250-261");
  EXPECT_EQ(a.ConflictingHolder(On("192.0.2.1"), 300), "specific 300");
  EXPECT_EQ(a.ConflictingHolder(On("192.0.2.2"), 300), std::nullopt);
  EXPECT_EQ(a.ConflictingHolder(Any4(), 300), "specific 300");
  a.Release(Any4(), 250, 12);
  EXPECT_EQ(a.ConflictingHolder(Any4(), 255), std::nullopt);
  EXPECT_EQ(a.ConflictingHolder(Any4(), 258), std::nullopt);
  EXPECT_EQ(a.held(), 2u);
  // Port 256's page is empty now and made again.
  ASSERT_OK(a.Reserve(Any4(), 258, 1, "again 258"));
  EXPECT_EQ(a.ConflictingHolder(Any4(), 258), "again 258");
  a.Release(On("192.0.2.1"), 300, 1);
  EXPECT_EQ(a.ConflictingHolder(Any4(), 300), std::nullopt);
  EXPECT_EQ(a.ConflictingHolder(Any4(), 301), "any 301");
  ASSERT_OK(a.Reserve(Any4(), 65535, 1, "last"));
  EXPECT_EQ(a.ConflictingHolder(Any4(), 65535), "last");
  EXPECT_EQ(a.held(), 3u);
}

TEST(PortAllocatorTest, ProtocolsAndFamiliesAreIndependent) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(Any4(Protocol::kTcp), 53, 1, "a"));
  EXPECT_OK(a.Reserve(Any4(Protocol::kUdp), 53, 1, "b"));
  EXPECT_OK(a.Reserve(Any4(Protocol::kSctp), 53, 1, "c"));
  EXPECT_OK(a.Reserve(PortScope{Protocol::kTcp, Family::kIPv6, std::nullopt},
                      53, 1, "d"));
  EXPECT_EQ(a.held(), 4u);
}

TEST(PortAllocatorTest, AnyAddressConflictsWithSpecificBothWays) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(On("192.0.2.1"), 8080, 1, "specific"));
  EXPECT_OK(a.Reserve(On("192.0.2.2"), 8080, 1, "other-address"));
  EXPECT_THAT(a.Reserve(Any4(), 8080, 1, "any"),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("held by specific")));
  ASSERT_OK(a.Reserve(Any4(), 9090, 1, "any"));
  EXPECT_THAT(a.Reserve(On("192.0.2.1"), 9090, 1, "x"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("any")));
  // IPv6 specific addresses follow the same rules.
  ASSERT_OK(a.Reserve(On("fd00::1"), 9090, 1, "v6"));
  EXPECT_THAT(a.Reserve(On("fd00::1"), 9090, 1, "v6b"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("v6")));
}

TEST(PortAllocatorTest, RangesAreAllOrNothing) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(Any4(), 7005, 1, "middle"));
  EXPECT_THAT(a.Reserve(Any4(), 7000, 10, "range"),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("host port 7005/tcp")));
  EXPECT_EQ(a.held(), 1u);
  EXPECT_FALSE(a.ConflictingHolder(Any4(), 7000).has_value());
  ASSERT_OK(a.Reserve(Any4(), 7006, 10, "range"));
  EXPECT_EQ(*a.ConflictingHolder(Any4(), 7015), "range");
  EXPECT_THAT(a.Reserve(Any4(), 65530, 10, "x"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(PortAllocatorTest, ReleaseFreesExactlyThatScope) {
  PortAllocator a(32768, 60999);
  ASSERT_OK(a.Reserve(On("192.0.2.1"), 8080, 1, "one"));
  ASSERT_OK(a.Reserve(On("192.0.2.2"), 8080, 1, "two"));
  a.Release(On("192.0.2.1"), 8080, 1);
  EXPECT_OK(a.Reserve(On("192.0.2.1"), 8080, 1, "again"));
  EXPECT_THAT(a.Reserve(Any4(), 8080, 1, "any"),
              StatusIs(absl::StatusCode::kAlreadyExists));
  a.Release(On("192.0.2.1"), 8080, 1);
  a.Release(On("192.0.2.2"), 8080, 1);
  EXPECT_OK(a.Reserve(Any4(), 8080, 1, "any"));
  // Releasing what is not held is harmless.
  a.Release(Any4(), 1234, 5);
  EXPECT_EQ(a.held(), 1u);
}

TEST(PortAllocatorTest, AllocatesFromDynamicRangeUntilExhausted) {
  PortAllocator a(40000, 40009);
  ASSERT_OK(a.Reserve(Any4(), 40003, 1, "explicit"));
  std::set<uint16_t> got;
  for (int i = 0; i < 9; ++i) {
    ASSERT_OK_AND_ASSIGN(uint16_t p, a.Allocate(Any4(), 1, "dyn"));
    EXPECT_GE(p, 40000);
    EXPECT_LE(p, 40009);
    EXPECT_NE(p, 40003);
    got.insert(p);
  }
  EXPECT_EQ(got.size(), 9u);
  EXPECT_THAT(a.Allocate(Any4(), 1, "dyn"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("40000-40009")));
  // UDP has its own pool.
  EXPECT_OK(a.Allocate(Any4(Protocol::kUdp), 1, "udp"));
  // A released port is handed out again.
  a.Release(Any4(), 40005, 1);
  ASSERT_OK_AND_ASSIGN(uint16_t p, a.Allocate(Any4(), 1, "dyn"));
  EXPECT_EQ(p, 40005);
}

TEST(PortAllocatorTest, DynamicAllocationSkipsPortsHeldOnAnyAddress) {
  PortAllocator a(40000, 40001);
  ASSERT_OK(a.Reserve(On("192.0.2.9"), 40000, 1, "specific"));
  ASSERT_OK_AND_ASSIGN(uint16_t p, a.Allocate(On("192.0.2.1"), 1, "dyn"));
  EXPECT_EQ(p, 40001);
}

TEST(PortAllocatorTest, LeastRecentlyReleasedFirst) {
  PortAllocator a(40000, 40002);
  ASSERT_OK_AND_ASSIGN(uint16_t first, a.Allocate(Any4(), 1, "x"));
  a.Release(Any4(), first, 1);
  ASSERT_OK_AND_ASSIGN(uint16_t second, a.Allocate(Any4(), 1, "x"));
  EXPECT_NE(second, first);
}

TEST(PortAllocatorTest, AllocatesConsecutiveRuns) {
  PortAllocator a(40000, 40019);
  ASSERT_OK(a.Reserve(Any4(), 40004, 1, "blocker"));
  ASSERT_OK_AND_ASSIGN(uint16_t p, a.Allocate(Any4(), 5, "run"));
  EXPECT_EQ(p, 40005);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(*a.ConflictingHolder(Any4(), p + i), "run");
  }
  ASSERT_OK_AND_ASSIGN(uint16_t q, a.Allocate(Any4(), 10, "run2"));
  EXPECT_EQ(q, 40010);
  EXPECT_THAT(a.Allocate(Any4(), 5, "run3"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_OK_AND_ASSIGN(uint16_t r, a.Allocate(Any4(), 4, "run3"));
  EXPECT_EQ(r, 40000);
}

TEST(PortAllocatorTest, AllocateNearPrefersSuggestionThenWraps) {
  PortAllocator a(32768, 60999);
  ASSERT_OK_AND_ASSIGN(uint16_t p,
                       a.AllocateNear(Any4(), 5000, 1, 1024, 65535, "c1"));
  EXPECT_EQ(p, 5000);
  ASSERT_OK_AND_ASSIGN(uint16_t q,
                       a.AllocateNear(Any4(), 5000, 1, 1024, 65535, "c2"));
  EXPECT_EQ(q, 5001);
  ASSERT_OK(a.Reserve(Any4(), 65535, 1, "top"));
  ASSERT_OK_AND_ASSIGN(uint16_t w,
                       a.AllocateNear(Any4(), 65535, 1, 1024, 65535, "c3"));
  EXPECT_EQ(w, 1024);
  // Outside the allowed range the suggestion is ignored.
  ASSERT_OK_AND_ASSIGN(uint16_t r,
                       a.AllocateNear(Any4(), 80, 1, 1024, 65535, "c4"));
  EXPECT_EQ(r, 1025);
  PortAllocator tiny(32768, 60999);
  ASSERT_OK(tiny.Reserve(Any4(), 2000, 1, "only"));
  EXPECT_THAT(tiny.AllocateNear(Any4(), 2000, 1, 2000, 2000, "x"),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(PortAllocatorTest, WholeRangeCycleKeepsCountsRight) {
  PortAllocator a(1024, 65535);
  std::vector<uint16_t> ports;
  for (int i = 1024; i <= 65535; ++i) {
    ASSERT_OK_AND_ASSIGN(uint16_t p, a.Allocate(Any4(), 1, "x"));
    ports.push_back(p);
  }
  EXPECT_EQ(a.held(), 64512u);
  EXPECT_THAT(a.Allocate(Any4(), 1, "x"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (uint16_t p : ports) a.Release(Any4(), p, 1);
  EXPECT_EQ(a.held(), 0u);
  EXPECT_OK(a.Allocate(Any4(), 1, "x"));
}

}  // namespace
}  // namespace fabric::nat
