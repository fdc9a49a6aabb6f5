#include "cni/trace_context.h"

#include <set>

#include "gtest/gtest.h"

namespace fabric::cni {
namespace {

constexpr char kGood[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContextTest, ParsesTheW3cExample) {
  std::optional<TraceContext> t = ParseTraceparent(kGood, "congo=t61rcWkgMzE");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(t->traceparent, kGood);
  EXPECT_EQ(t->tracestate, "congo=t61rcWkgMzE");
}

TEST(TraceContextTest, RefusesWhatTheStandardRefuses) {
  for (const char* bad : {
           "",                                                          // empty
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    // short
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with more
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version ff
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // uppercase
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // zero parent
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // separator
       }) {
    EXPECT_FALSE(ParseTraceparent(bad).has_value()) << bad;
  }
  // A later version may carry more after a dash; its first 55 characters count.
  std::optional<TraceContext> v1 =
      ParseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
  ASSERT_TRUE(v1.has_value());
  EXPECT_EQ(v1->traceparent.size(), 55u);
  // A tracestate that is too long or holds control characters is dropped.
  EXPECT_EQ(ParseTraceparent(kGood, std::string(513, 'a'))->tracestate, "");
  EXPECT_EQ(ParseTraceparent(kGood, "a=b\nc=d")->tracestate, "");
}

TEST(TraceContextTest, NewIdsAreValidAndDistinct) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    std::string id = NewTraceId();
    ASSERT_EQ(id.size(), 32u);
    ASSERT_TRUE(ParseTraceparent("00-" + id + "-00f067aa0ba902b7-01").has_value());
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 100u);
}

}  // namespace
}  // namespace fabric::cni
