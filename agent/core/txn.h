// Txn: one transaction of the writer (agent/core/writer.h). An owner unit
// (CNI attachments, API mappings, NAT-PMP/PCP leases) does all of an
// operation's work on a Txn:
//  - it changes `state()`, a copy of the committed state, which becomes the
//    committed state only if the transaction commits;
//  - it adds the store rows to `write()` and the kernel changes to
//    `batch()`;
//  - it holds and releases host ports through the Txn, which undoes them
//    if the transaction fails;
//  - it draws mapping ids from the Txn, which returns them if it fails;
//  - it queues events (published after commit, in commit order) and slow
//    side work such as conntrack cleanup (run after the writer's lock is
//    released).
// Nothing an owner unit does reaches the store, the kernel or a reader
// before the writer commits.
//
// Thread-compatible: used under the writer's lock only.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core/state.h"
#include "agent/store.h"
#include "nat/backend/backend.h"
#include "nat/port_allocator.h"

namespace fabric::agent {

class Txn {
 public:
  Txn(const State& committed, nat::PortAllocator* allocator, absl::Time now);
  ~Txn();  // aborts unless committed
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  State& state() { return state_; }
  const State& state() const { return state_; }
  StoreWrite& write() { return write_; }
  nat::Batch& batch() { return batch_; }
  absl::Time now() const { return now_; }
  const nat::PortAllocator& allocator() const { return *allocator_; }

  // Port holds, undone if the transaction fails (see nat::PortAllocator).
  absl::Status Reserve(const nat::PortScope& scope, uint16_t port, uint16_t count,
                       const std::string& holder);
  absl::StatusOr<uint16_t> Allocate(const nat::PortScope& scope, uint16_t count,
                                    const std::string& holder);
  absl::StatusOr<uint16_t> AllocateNear(const nat::PortScope& scope, uint16_t suggested,
                                        uint16_t count, uint16_t lo, uint16_t hi,
                                        const std::string& holder);
  // Releases at once (the same transaction may take the port again); held
  // again by `holder` if the transaction fails.
  void Release(const nat::PortScope& scope, uint16_t port, uint16_t count,
               const std::string& holder);

  // "m-<n>" from the state's counter, which the store write records.
  std::string NewMappingId();

  // An event for WatchMappings subscribers, published after commit.
  void Publish(v1::MappingEvent::Type type, const v1::PortMapping& m);
  // Work to run after the writer's lock is released (conntrack, logs).
  void AfterUnlock(std::function<void()> f);

  // Ends the transaction without committing anything, although fn returns
  // a value (an answer that is a refusal, like a NAT-PMP quota error): its
  // ports and ids are given back and its state dropped.
  void Discard() { discarded_ = true; }
  bool discarded() const { return discarded_; }

  // The writer's side.
  bool touches_store_or_kernel() const { return !write_.empty() || !batch_.empty(); }
  // Makes the port operations permanent; the state is the caller's to take.
  void MarkCommitted() { committed_ = true; }
  State TakeState() { return std::move(state_); }
  std::vector<v1::MappingEvent> TakeEvents() { return std::move(events_); }
  std::vector<std::function<void()>> TakeAfterUnlock() { return std::move(after_unlock_); }

 private:
  // Undoes every port operation, newest first.
  void Abort();

  struct PortOp {
    bool held;  // true: Reserve/Allocate (undo: release); false: Release
    nat::PortScope scope;
    uint16_t port;
    uint16_t count;
    std::string holder;
  };

  State state_;
  nat::PortAllocator* const allocator_;
  const absl::Time now_;
  StoreWrite write_;
  nat::Batch batch_;
  std::vector<PortOp> port_log_;
  std::vector<v1::MappingEvent> events_;
  std::vector<std::function<void()>> after_unlock_;
  bool committed_ = false;
  bool discarded_ = false;
};

}  // namespace fabric::agent
