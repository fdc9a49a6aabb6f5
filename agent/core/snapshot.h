// Snapshot: what readers (ListMappings, GetStatus, Diagnose, metrics,
// /healthz, the start of a watch, the periodic check) see: the state as of
// one commit, never written again. Readers take the latest with
// Writer::snapshot() without waiting for a write in progress.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "agent/core/state.h"

namespace fabric::agent {

struct Snapshot {
  State state;
  // Commits so far; a reader compares versions to see whether anything
  // changed.
  uint64_t version = 0;
  bool ready = false;
  std::string not_ready_reason = "starting";
  uint64_t repairs = 0;
  absl::Time last_repair = absl::InfinitePast();
  // Host port holds (the allocator's count) and its dynamic range.
  size_t ports_held = 0;
  uint16_t dynamic_lo = 0;
  uint16_t dynamic_hi = 0;
  size_t leases = 0;
};

}  // namespace fabric::agent
