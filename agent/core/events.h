// WatchMappings' plumbing: a bounded queue per subscriber and the hub the
// writer publishes to.
//
// A subscriber first gets the mappings of the snapshot it subscribed at
// (TYPE_ADDED, by id), then TYPE_SYNCED, then every change after that
// snapshot, in commit order: the hub registers the subscriber and hands it
// the latest snapshot under one lock that the writer also takes to publish,
// so no change falls between the two. The initial list is produced from the
// immutable snapshot as the subscriber reads it, so subscribing costs O(1)
// under that lock whatever the number of mappings.
//
// Bounded: a subscriber more than kMaxBacklog changes behind is ended with
// kResourceExhausted (it re-lists); the hub serves at most max_subscribers
// at once.
//
// Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core/snapshot.h"
#include "fabric/nat/v1/nat.pb.h"

namespace fabric::agent {

class EventQueue {
 public:
  static constexpr size_t kMaxBacklog = 4096;

  EventQueue(v1::OwnerKind kind, std::string owner_id,
             std::shared_ptr<const Snapshot> initial);

  // The next event, waiting up to `timeout`. nullopt on timeout or once the
  // queue has ended (then ended() is true and end_status() says why).
  std::optional<v1::MappingEvent> Pop(absl::Duration timeout);
  // A change (ignored unless it matches the subscriber's filter). Ends the
  // queue when the backlog is full.
  void Push(const v1::MappingEvent& event);
  // Ends the queue normally.
  void Close();
  // Ends the queue with `why` (returned by end_status()).
  void End(absl::Status why);
  bool closed() const;
  // OK after Close(); kResourceExhausted after an overflow.
  absl::Status end_status() const;

 private:
  const v1::OwnerKind kind_;
  const std::string owner_id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // The initial list, sorted on the first Pop (outside every other lock).
  std::shared_ptr<const Snapshot> initial_;                       // guarded by mu_
  std::vector<std::shared_ptr<const MappingRecord>> initial_list_;  // guarded by mu_
  bool initial_sorted_ = false;                                   // guarded by mu_
  size_t initial_pos_ = 0;                                        // guarded by mu_
  bool synced_sent_ = false;                                      // guarded by mu_
  std::deque<v1::MappingEvent> events_;                           // guarded by mu_
  bool closed_ = false;                                           // guarded by mu_
  absl::Status end_status_;                                       // guarded by mu_
};

class EventHub {
 public:
  explicit EventHub(size_t max_subscribers) : max_subscribers_(max_subscribers) {}

  // kResourceExhausted when max_subscribers are already watching.
  absl::StatusOr<std::shared_ptr<EventQueue>> Subscribe(v1::OwnerKind kind,
                                                        const std::string& owner_id);
  void Unsubscribe(const std::shared_ptr<EventQueue>& queue);

  // The writer, after each commit: the new snapshot and its changes.
  void Publish(std::shared_ptr<const Snapshot> snapshot,
               const std::vector<v1::MappingEvent>& events);
  std::shared_ptr<const Snapshot> latest() const;
  size_t subscribers() const;

 private:
  const size_t max_subscribers_;
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> latest_;                 // guarded by mu_
  std::vector<std::shared_ptr<EventQueue>> subscribers_;   // guarded by mu_
};

}  // namespace fabric::agent
