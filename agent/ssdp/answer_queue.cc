#include "agent/ssdp/answer_queue.h"

#include <utility>

namespace fabric::agent::ssdp {

AnswerQueue::AnswerQueue(size_t max_total, size_t max_per_client)
    : max_total_(max_total), max_per_client_(max_per_client) {}

bool AnswerQueue::Push(PendingAnswer answer) {
  if (by_due_.size() >= max_total_) return false;
  size_t& n = per_client_[answer.to_addr];
  if (n >= max_per_client_) return false;  // n >= 1 here: the entry existed
  ++n;
  absl::Time due = answer.due;
  by_due_.emplace(due, std::move(answer));
  return true;
}

std::vector<PendingAnswer> AnswerQueue::PopDue(absl::Time now) {
  std::vector<PendingAnswer> out;
  auto it = by_due_.begin();
  for (; it != by_due_.end() && it->first <= now; ++it) {
    auto c = per_client_.find(it->second.to_addr);
    if (c != per_client_.end() && --c->second == 0) per_client_.erase(c);
    out.push_back(std::move(it->second));
  }
  by_due_.erase(by_due_.begin(), it);
  return out;
}

absl::Time AnswerQueue::next_due() const {
  return by_due_.empty() ? absl::InfiniteFuture() : by_due_.begin()->first;
}

size_t AnswerQueue::pending_for(uint32_t to_addr) const {
  auto it = per_client_.find(to_addr);
  return it == per_client_.end() ? 0 : it->second;
}

}  // namespace fabric::agent::ssdp
