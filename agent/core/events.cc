#include "agent/core/events.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"

namespace fabric::agent {

EventQueue::EventQueue(v1::OwnerKind kind, std::string owner_id,
                       std::shared_ptr<const Snapshot> initial)
    : kind_(kind), owner_id_(std::move(owner_id)), initial_(std::move(initial)) {}

std::optional<v1::MappingEvent> EventQueue::Pop(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (closed_) return std::nullopt;
  if (!initial_sorted_) {
    // Only this subscriber pops: build the list without the lock, so the
    // writer's Push never waits for it.
    std::shared_ptr<const Snapshot> snapshot = std::move(initial_);
    lock.unlock();
    std::vector<std::shared_ptr<const MappingRecord>> list;
    if (snapshot != nullptr) list = MappingsOf(snapshot->state, kind_, owner_id_);
    snapshot.reset();
    lock.lock();
    initial_list_ = std::move(list);
    initial_sorted_ = true;
    if (closed_) return std::nullopt;
  }
  v1::MappingEvent e;
  if (initial_pos_ < initial_list_.size()) {
    e.set_type(v1::MappingEvent::TYPE_ADDED);
    *e.mutable_mapping() = initial_list_[initial_pos_]->ToProto();
    initial_list_[initial_pos_++].reset();
    return e;
  }
  if (!synced_sent_) {
    synced_sent_ = true;
    initial_list_.clear();
    e.set_type(v1::MappingEvent::TYPE_SYNCED);
    return e;
  }
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
               [&] { return closed_ || !events_.empty(); });
  if (closed_ || events_.empty()) return std::nullopt;
  e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void EventQueue::Push(const v1::MappingEvent& event) {
  if (!OwnerMatches(event.mapping(), kind_, owner_id_)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    if (events_.size() >= kMaxBacklog) {
      closed_ = true;
      events_.clear();
      end_status_ = absl::ResourceExhaustedError(absl::StrCat(
          "the watch fell more than ", kMaxBacklog,
          " changes behind and was ended; list the mappings and watch again"));
    } else {
      events_.push_back(event);
    }
  }
  cv_.notify_all();
}

void EventQueue::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

void EventQueue::End(absl::Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    end_status_ = std::move(why);
  }
  cv_.notify_all();
}

bool EventQueue::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

absl::Status EventQueue::end_status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_status_;
}

absl::StatusOr<std::shared_ptr<EventQueue>> EventHub::Subscribe(
    v1::OwnerKind kind, const std::string& owner_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (subscribers_.size() >= max_subscribers_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the agent already serves ", subscribers_.size(),
        " watches (its limit); end one or try again later"));
  }
  auto queue = std::make_shared<EventQueue>(kind, owner_id, latest_);
  subscribers_.push_back(queue);
  return queue;
}

void EventHub::Unsubscribe(const std::shared_ptr<EventQueue>& queue) {
  queue->Close();
  std::lock_guard<std::mutex> lock(mu_);
  subscribers_.erase(std::remove(subscribers_.begin(), subscribers_.end(), queue),
                     subscribers_.end());
}

void EventHub::Publish(std::shared_ptr<const Snapshot> snapshot,
                       const std::vector<v1::MappingEvent>& events) {
  // The one before is dropped after unlock: when no reader holds it any
  // more, freeing what it alone held is not done while readers wait.
  std::shared_ptr<const Snapshot> before;
  std::lock_guard<std::mutex> lock(mu_);
  before = std::move(latest_);
  latest_ = std::move(snapshot);
  for (const v1::MappingEvent& e : events) {
    for (const auto& q : subscribers_) q->Push(e);
  }
}

std::shared_ptr<const Snapshot> EventHub::latest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

size_t EventHub::subscribers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return subscribers_.size();
}

}  // namespace fabric::agent
