#include "agent/natpmp/rate_limiter.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace fabric::agent::natpmp {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1800000000);

int AllowedOf(RateLimiter& limiter, uint32_t client, int tries, absl::Time now) {
  int allowed = 0;
  for (int i = 0; i < tries; ++i) allowed += limiter.Allow(client, now);
  return allowed;
}

TEST(RateLimiterTest, BurstThenRate) {
  RateLimiter limiter(10, 100, 16);
  // The whole burst at once (a client opening its ports at start-up) ...
  EXPECT_EQ(AllowedOf(limiter, 1, 150, kStart), 100);
  // ... then `rate` a second.
  EXPECT_EQ(AllowedOf(limiter, 1, 50, kStart + absl::Seconds(1)), 10);
  // Refills to the burst, not past it.
  EXPECT_EQ(AllowedOf(limiter, 1, 500, kStart + absl::Hours(1)), 100);
  // Clients are independent.
  EXPECT_EQ(AllowedOf(limiter, 2, 150, kStart + absl::Hours(1)), 100);
}

TEST(RateLimiterTest, ZeroRateIsUnlimitedAndKeepsNothing) {
  RateLimiter limiter(0, 1, 16);
  EXPECT_EQ(AllowedOf(limiter, 1, 1000, kStart), 1000);
  EXPECT_EQ(limiter.clients(), 0u);
}

// A flood of new sources used to clear every bucket at 4,096 clients,
// handing an exhausted client a fresh burst. Now memory stays bounded and a
// client that keeps asking stays limited.
TEST(RateLimiterTest, FloodOfNewSourcesDoesNotResetAClientThatKeepsAsking) {
  RateLimiter limiter(0.001, 5, 4096);
  ASSERT_EQ(AllowedOf(limiter, 1, 10, kStart), 5);
  int regained = 0;
  for (uint32_t fake = 1000; fake < 1000 + 20000; ++fake) {
    EXPECT_TRUE(limiter.Allow(fake, kStart));
    if (fake % 1000 == 0) regained += limiter.Allow(1, kStart);
  }
  EXPECT_EQ(regained, 0);
  EXPECT_FALSE(limiter.Allow(1, kStart));
  EXPECT_EQ(limiter.clients(), 4096u);
}

TEST(RateLimiterTest, TheLeastRecentlyHeardFromIsForgottenFirst) {
  RateLimiter limiter(0.001, 1, 3);
  ASSERT_TRUE(limiter.Allow(1, kStart));
  ASSERT_TRUE(limiter.Allow(2, kStart));
  ASSERT_TRUE(limiter.Allow(3, kStart));
  EXPECT_FALSE(limiter.Allow(1, kStart));  // 1 is now the most recent
  ASSERT_TRUE(limiter.Allow(4, kStart));   // pushes out 2
  EXPECT_FALSE(limiter.Allow(1, kStart));
  EXPECT_FALSE(limiter.Allow(3, kStart));
  EXPECT_TRUE(limiter.Allow(2, kStart));  // forgotten: a fresh bucket
  EXPECT_EQ(limiter.clients(), 3u);
}

}  // namespace
}  // namespace fabric::agent::natpmp
