// RepairLoop: the agent's background duties, on one thread:
//  - repair at once when someone else changes the agent's kernel table (a
//    ChangeSource reports it: nftables events; none for iptables);
//  - the periodic check every `reconcile_interval`: compare the kernel with
//    the latest snapshot outside the writer's lock, repair only when they
//    differ, then (optionally) detach containers whose network namespace
//    is gone;
//  - the lease expiry tick every second.
// Time comes from an injected Clock, so tests drive it without sleeping.
//
// Thread-safe: Start() runs it on its own thread until Stop(); RunOnce() is
// for tests and must not be mixed with Start().
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/metrics.h"

namespace fabric::agent {

// Where foreign changes of the kernel table are heard of.
class ChangeSource {
 public:
  virtual ~ChangeSource() = default;
  // Waits up to `timeout`. True when someone else changed the table (or
  // events were lost); `what` describes the first change.
  virtual absl::StatusOr<bool> Wait(absl::Duration timeout, std::string* what) = 0;
  // What is queued, without waiting; same result.
  virtual absl::StatusOr<bool> Drain(std::string* what) = 0;
};

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  virtual void SleepFor(absl::Duration d) = 0;
};

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
};

struct RepairLoopOptions {
  // 0 (or less): no periodic check.
  absl::Duration reconcile_interval = absl::Seconds(30);
  bool repair_on_change = true;
  bool sweep_dead_netns = true;
};

class RepairLoop {
 public:
  // `changes` may be null (no events: only the periodic check repairs).
  RepairLoop(AgentCore* core, Metrics* metrics, ChangeSource* changes, Clock* clock,
             RepairLoopOptions options);
  ~RepairLoop();  // stops

  void Start();
  void Stop();

  // One round: waits for a foreign change at most until the next duty (and
  // at most 200 ms), then does whatever is due.
  void RunOnce();

 private:
  void Repair(const std::string& why, bool compare_first);

  AgentCore* const core_;
  Metrics* const metrics_;
  ChangeSource* const changes_;
  Clock* const clock_;
  const RepairLoopOptions options_;
  absl::Time next_expiry_;
  absl::Time next_check_;

  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace fabric::agent
