#include "agent/natpmp/rate_limiter.h"

#include <algorithm>

namespace fabric::agent::natpmp {

RateLimiter::RateLimiter(double rate, double burst, size_t capacity)
    : rate_(rate), burst_(std::max(1.0, burst)), capacity_(std::max<size_t>(1, capacity)) {}

bool RateLimiter::Allow(uint32_t client, absl::Time now) {
  if (rate_ <= 0) return true;
  auto it = index_.find(client);
  if (it == index_.end()) {
    if (lru_.size() >= capacity_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    lru_.emplace_front(client, Bucket{burst_, now});
    it = index_.emplace(client, lru_.begin()).first;
  } else if (it->second != lru_.begin()) {
    lru_.splice(lru_.begin(), lru_, it->second);
  }
  Bucket& b = it->second->second;
  if (now > b.last) {
    b.tokens = std::min(burst_, b.tokens + absl::ToDoubleSeconds(now - b.last) * rate_);
    b.last = now;
  }
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

}  // namespace fabric::agent::natpmp
