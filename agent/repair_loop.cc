#include "agent/repair_loop.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/log.h"
#include "nat/backend/nftables/monitor.h"

namespace fabric::agent {

RepairLoop::RepairLoop(AgentCore* core, Metrics* metrics, ChangeSource* changes, Clock* clock,
                       RepairLoopOptions options)
    : core_(core),
      metrics_(metrics),
      changes_(changes),
      clock_(clock),
      options_(options),
      next_expiry_(clock->Now()),
      next_check_(options.reconcile_interval > absl::ZeroDuration()
                      ? clock->Now() + options.reconcile_interval
                      : absl::InfiniteFuture()) {}

RepairLoop::~RepairLoop() { Stop(); }

void RepairLoop::Start() {
  thread_ = std::thread([this] {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      RunOnce();
    }
  });
}

void RepairLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void RepairLoop::Repair(const std::string& why, bool compare_first) {
  absl::Time start = clock_->Now();
  // The periodic check compares outside the writer's lock and takes it only
  // to repair; a change event repairs at once.
  absl::StatusOr<nat::SyncReport> r = compare_first ? core_->CheckAndRepair() : core_->Resync();
  if (!r.ok()) {
    LogLine(absl::StrCat("repair after ", why, " failed: ", r.status().message()));
    return;
  }
  if (r->action == nat::SyncReport::Action::kNone) return;
  if (metrics_ != nullptr) {
    metrics_->RecordRepair(clock_->Now(), absl::StrCat("after ", why, ": ", r->DebugString()));
  }
  LogLine(absl::StrFormat("repair after %s: %s in %.3fms", why, r->DebugString(),
                          absl::ToDoubleMilliseconds(clock_->Now() - start)));
}

void RepairLoop::RunOnce() {
  absl::Time now = clock_->Now();
  // Wake at least every 200 ms to notice a stop.
  absl::Duration wait = std::clamp(std::min(next_check_, next_expiry_) - now,
                                   absl::ZeroDuration(), absl::Milliseconds(200));
  std::string what;
  bool changed = false;
  if (changes_ != nullptr && options_.repair_on_change) {
    absl::StatusOr<bool> c = changes_->Wait(wait, &what);
    changed = c.ok() && *c;
    if (!c.ok()) clock_->SleepFor(wait);
  } else {
    clock_->SleepFor(wait);
  }
  if (changed) {
    // A reload may come as several transactions in quick succession: let
    // them land, then restore everything in one batch.
    clock_->SleepFor(absl::Milliseconds(5));
    std::string more;
    (void)changes_->Drain(&more);
    // Lost events only (our own big batches overflow the monitor's socket):
    // compare first, outside the writer's lock; the kernel's generation
    // tells whether anyone else changed anything. A foreign change is
    // repaired at once.
    Repair(what, /*compare_first=*/what == nat::ChangeMonitor::kEventsLost);
  }
  now = clock_->Now();
  if (now >= next_expiry_) {
    next_expiry_ = now + absl::Seconds(1);
    if (int n = core_->ExpireLeases(); n > 0) {
      LogLine(absl::StrCat("expired ", n, " lease(s)"));
    }
  }
  if (now >= next_check_) {
    Repair("periodic check", /*compare_first=*/true);
    if (options_.sweep_dead_netns) {
      absl::StatusOr<std::vector<v1::AttachmentKey>> gone = core_->SweepDeadNamespaces();
      if (gone.ok()) {
        for (const v1::AttachmentKey& k : *gone) {
          LogLine(absl::StrCat("swept container=", k.container_id(), " ifname=", k.ifname(),
                               " network=", k.network_name(),
                               ": its network namespace is gone"));
        }
      }
    }
    next_check_ = clock_->Now() + options_.reconcile_interval;
  }
}

}  // namespace fabric::agent
