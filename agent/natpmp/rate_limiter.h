// RateLimiter: a token bucket per NAT-PMP/PCP client (its source address),
// for PmpServer. A client may send `burst` requests at once and `rate` a
// second after that. The buckets are a bounded LRU: past `capacity`
// clients the one heard from least recently is forgotten (and starts again
// with a full bucket), so a flood of new source addresses costs bounded
// memory and pushes out only clients quieter than the flood, never one
// that keeps asking (its refused requests count as use too).
//
// Thread-compatible: the server's thread alone calls it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>

#include "absl/time/time.h"

namespace fabric::agent::natpmp {

class RateLimiter {
 public:
  // rate <= 0: unlimited (Allow is always true and keeps nothing).
  // REQUIRES: burst >= 1, capacity >= 1.
  RateLimiter(double rate, double burst, size_t capacity);

  // Whether `client` may send one more request at `now`; takes a token if
  // so.
  bool Allow(uint32_t client, absl::Time now);

  size_t clients() const { return lru_.size(); }
  double burst() const { return burst_; }

 private:
  struct Bucket {
    double tokens;
    absl::Time last;
  };
  const double rate_;
  const double burst_;
  const size_t capacity_;
  // Most recently used first.
  std::list<std::pair<uint32_t, Bucket>> lru_;
  std::unordered_map<uint32_t, std::list<std::pair<uint32_t, Bucket>>::iterator> index_;
};

}  // namespace fabric::agent::natpmp
