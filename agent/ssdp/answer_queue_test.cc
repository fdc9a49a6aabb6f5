#include "agent/ssdp/answer_queue.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace fabric::agent::ssdp {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

PendingAnswer At(absl::Duration after, uint32_t to, std::string what) {
  PendingAnswer p;
  p.due = kT0 + after;
  p.to_addr = to;
  p.datagram = std::move(what);
  return p;
}

std::vector<std::string> Datagrams(const std::vector<PendingAnswer>& v) {
  std::vector<std::string> out;
  for (const auto& p : v) out.push_back(p.datagram);
  return out;
}

TEST(AnswerQueue, PopsInDueOrder) {
  AnswerQueue q(10, 10);
  EXPECT_EQ(q.next_due(), absl::InfiniteFuture());
  q.Push(At(absl::Seconds(2), 1, "c"));
  q.Push(At(absl::Seconds(0), 1, "a"));
  q.Push(At(absl::Seconds(1), 2, "b"));
  EXPECT_EQ(q.next_due(), kT0);
  EXPECT_EQ(Datagrams(q.PopDue(kT0 - absl::Seconds(1))), std::vector<std::string>{});
  EXPECT_EQ(Datagrams(q.PopDue(kT0 + absl::Seconds(1))), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.pending_for(1), 1u);
  EXPECT_EQ(q.pending_for(2), 0u);
  EXPECT_EQ(q.clients(), 1u);
  EXPECT_EQ(q.next_due(), kT0 + absl::Seconds(2));
  EXPECT_EQ(Datagrams(q.PopDue(kT0 + absl::Seconds(5))), std::vector<std::string>{"c"});
  EXPECT_EQ(q.clients(), 0u);  // nothing kept for a client with nothing queued
}

TEST(AnswerQueue, BoundsPerClientAndInAll) {
  AnswerQueue q(5, 2);
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 1, "1a")));
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 1, "1b")));
  EXPECT_FALSE(q.Push(At(absl::ZeroDuration(), 1, "1c")));  // client 1 is full
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 2, "2a")));
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 2, "2b")));
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 3, "3a")));
  EXPECT_FALSE(q.Push(At(absl::ZeroDuration(), 4, "4a")));  // all are full
  EXPECT_EQ(q.size(), 5u);
  EXPECT_EQ(q.clients(), 3u);  // a refused client is not remembered
  q.PopDue(kT0);
  EXPECT_TRUE(q.Push(At(absl::ZeroDuration(), 1, "1c")));  // room again
}

TEST(AnswerQueue, FloodOfClientsStaysBounded) {
  AnswerQueue q(1024, 64);
  size_t accepted = 0;
  for (uint32_t c = 0; c < 100000; ++c) accepted += q.Push(At(absl::Seconds(c % 5), c, "x"));
  EXPECT_EQ(accepted, 1024u);
  EXPECT_EQ(q.size(), 1024u);
  EXPECT_EQ(q.clients(), 1024u);
}

}  // namespace
}  // namespace fabric::agent::ssdp
