// AnswerQueue: the search responses SsdpServer holds until their send time
// (UDA 1.1: an answer to a multicast M-SEARCH goes out after a random delay
// within MX seconds). Bounded twice: at most `max_total` answers in all and
// `max_per_client` for one destination address, so a flood of queries
// costs bounded memory and cannot turn into an unbounded stream of answers
// at one host. Push refuses what does not fit; the caller counts it.
//
// No clock of its own (times are arguments) and no I/O. Thread-compatible:
// the server's thread alone uses it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/time/time.h"

namespace fabric::agent::ssdp {

struct PendingAnswer {
  absl::Time due;
  uint32_t to_addr = 0;    // the querier, IPv4 in network byte order
  uint16_t to_port = 0;    // host byte order
  int ifindex = 0;         // the interface the query arrived on
  uint32_t from_addr = 0;  // our address to answer from, network byte order
  std::string datagram;
};

class AnswerQueue {
 public:
  // REQUIRES: max_total >= 1, max_per_client >= 1.
  AnswerQueue(size_t max_total, size_t max_per_client);

  // Queues `answer`; false (and nothing queued) when either bound is full.
  bool Push(PendingAnswer answer);
  // The answers due at `now` (due <= now), earliest first, taken out.
  std::vector<PendingAnswer> PopDue(absl::Time now);
  // When the earliest answer is due; InfiniteFuture when none waits.
  absl::Time next_due() const;

  size_t size() const { return by_due_.size(); }
  size_t pending_for(uint32_t to_addr) const;
  // Destinations with something queued (kept no longer than that).
  size_t clients() const { return per_client_.size(); }

 private:
  const size_t max_total_;
  const size_t max_per_client_;
  std::multimap<absl::Time, PendingAnswer> by_due_;
  std::unordered_map<uint32_t, size_t> per_client_;
};

}  // namespace fabric::agent::ssdp
