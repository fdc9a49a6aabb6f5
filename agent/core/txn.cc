#include "agent/core/txn.h"

#include "agent/core/trace.h"

#include "absl/strings/str_cat.h"

namespace fabric::agent {

Txn::Txn(const State& committed, nat::PortAllocator* allocator, absl::Time now)
    : state_(committed), allocator_(allocator), now_(now) {}

Txn::~Txn() {
  if (!committed_) Abort();
}

void Txn::Abort() {
  for (auto it = port_log_.rbegin(); it != port_log_.rend(); ++it) {
    if (it->held) {
      allocator_->Release(it->scope, it->port, it->count);
    } else {
      // Nobody else ran in between (the writer's lock): the port is free.
      allocator_->Reserve(it->scope, it->port, it->count, it->holder).IgnoreError();
    }
  }
  port_log_.clear();
}

absl::Status Txn::Reserve(const nat::PortScope& scope, uint16_t port, uint16_t count,
                          const std::string& holder) {
  absl::Status s = allocator_->Reserve(scope, port, count, holder);
  if (s.ok()) port_log_.push_back({true, scope, port, count, holder});
  return s;
}

absl::StatusOr<uint16_t> Txn::Allocate(const nat::PortScope& scope, uint16_t count,
                                       const std::string& holder) {
  absl::StatusOr<uint16_t> p = allocator_->Allocate(scope, count, holder);
  if (p.ok()) port_log_.push_back({true, scope, *p, count, holder});
  return p;
}

absl::StatusOr<uint16_t> Txn::AllocateNear(const nat::PortScope& scope, uint16_t suggested,
                                           uint16_t count, uint16_t lo, uint16_t hi,
                                           const std::string& holder) {
  absl::StatusOr<uint16_t> p =
      allocator_->AllocateNear(scope, suggested, count, lo, hi, holder);
  if (p.ok()) port_log_.push_back({true, scope, *p, count, holder});
  return p;
}

void Txn::Release(const nat::PortScope& scope, uint16_t port, uint16_t count,
                  const std::string& holder) {
  allocator_->Release(scope, port, count);
  port_log_.push_back({false, scope, port, count, holder});
}

std::string Txn::NewMappingId() {
  std::string id = absl::StrCat("m-", state_.next_mapping_id++);
  write_.next_mapping_id = state_.next_mapping_id;
  return id;
}

void Txn::Publish(v1::MappingEvent::Type type, const v1::PortMapping& m) {
  v1::MappingEvent e;
  e.set_type(type);
  *e.mutable_mapping() = m;
  e.set_trace_id(CurrentTraceId());
  events_.push_back(std::move(e));
}

void Txn::AfterUnlock(std::function<void()> f) { after_unlock_.push_back(std::move(f)); }

}  // namespace fabric::agent
