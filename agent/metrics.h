// Metrics: the agent's Prometheus counters and histogram, rendered in the
// text exposition format for /metrics. Thread-safe (own mutex; never calls
// out).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "nat/types.h"

namespace fabric::agent {

class Metrics {
 public:
  Metrics();
  // One finished operation ("attach", "detach", ...).
  void RecordOperation(const std::string& op, bool ok, absl::Duration took);
  // One repair after a foreign change of the kernel rules, and what it did
  // ("restored 3 (dnat ...)"); the last kRecentRepairs are kept for the
  // status page.
  void RecordRepair(absl::Time when, const std::string& what = "");
  static constexpr size_t kRecentRepairs = 20;
  // A connection on the unix socket, by the server that took it: the
  // agent's own (the plugin's calls, agent/socket_front.h) or gRPC's.
  void RecordSocketConnection(bool served_by_agent);
  // Newest first.
  std::vector<std::pair<absl::Time, std::string>> RecentRepairs() const;

  // The exposition text; `desired` gives the rule counts, `mappings` the
  // mappings held by owner kind ("cni", "upnp", ...; every kind, zeros
  // included, so the series stay put).
  // `connections`: Backend::ConnectionCounts, or null where not counted.
  std::string Render(const nat::RuleSet& desired,
                     const std::vector<std::pair<std::string, size_t>>& mappings,
                     const std::map<std::string, uint64_t>* connections = nullptr) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;                       // seconds
  std::map<std::string, uint64_t> ops_;              // guarded by mu_
  std::map<std::string, uint64_t> errors_;           // guarded by mu_
  std::vector<uint64_t> buckets_;                    // guarded by mu_
  uint64_t count_ = 0;                               // guarded by mu_
  double sum_ = 0;                                   // guarded by mu_
  uint64_t repairs_ = 0;                             // guarded by mu_
  absl::Time last_repair_ = absl::UnixEpoch();       // guarded by mu_
  std::deque<std::pair<absl::Time, std::string>> recent_;  // guarded by mu_
  uint64_t socket_agent_ = 0;                        // guarded by mu_
  uint64_t socket_grpc_ = 0;                         // guarded by mu_
};

}  // namespace fabric::agent
