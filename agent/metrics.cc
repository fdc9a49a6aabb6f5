#include "agent/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fabric::agent {

Metrics::Metrics()
    : bounds_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1, 2.5}),
      buckets_(bounds_.size(), 0) {}

void Metrics::RecordOperation(const std::string& op, bool ok,
                              absl::Duration took) {
  double s = absl::ToDoubleSeconds(took);
  std::lock_guard<std::mutex> lock(mu_);
  ++ops_[op];
  if (!ok) ++errors_[op];
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (s <= bounds_[i]) ++buckets_[i];
  }
  ++count_;
  sum_ += s;
}

void Metrics::RecordRepair(absl::Time when, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++repairs_;
  last_repair_ = when;
  recent_.emplace_front(when, what);
  if (recent_.size() > kRecentRepairs) recent_.pop_back();
}

std::vector<std::pair<absl::Time, std::string>> Metrics::RecentRepairs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {recent_.begin(), recent_.end()};
}

std::string Metrics::Render(const nat::RuleSet& desired,
                            const std::vector<std::pair<std::string, size_t>>& mappings,
                            const std::map<std::string, uint64_t>* connections) const {
  std::string out;
  size_t dnat = 0, ranges = 0;
  for (const auto& e : desired.dnat) (e.is_range() ? ranges : dnat)++;
  absl::StrAppend(
      &out,
      "# HELP nat_rules Kernel NAT entries the agent keeps, by type.\n"
      "# TYPE nat_rules gauge\n",
      "nat_rules{type=\"dnat\"} ", dnat, "\n",
      "nat_rules{type=\"dnat_range\"} ", ranges, "\n",
      "nat_rules{type=\"masquerade\"} ", desired.masquerade.size(), "\n",
      "nat_rules{type=\"snat\"} ", desired.snat.size(), "\n",
      "nat_rules{type=\"hairpin\"} ", desired.hairpin.size(), "\n",
      "nat_rules{type=\"localhost\"} ", desired.localhost_interfaces.size(), "\n",
      "# HELP nat_port_mappings Port mappings held, by owner kind.\n"
      "# TYPE nat_port_mappings gauge\n");
  for (const auto& [owner, n] : mappings) {
    absl::StrAppend(&out, "nat_port_mappings{owner=\"", owner, "\"} ", n, "\n");
  }
  if (connections != nullptr) {
    absl::StrAppend(&out,
                    "# HELP nat_connections_total Connections our NAT rules translated, by "
                    "type (since each rule was laid).\n"
                    "# TYPE nat_connections_total counter\n");
    for (const auto& [type, n] : *connections) {
      absl::StrAppend(&out, "nat_connections_total{type=\"", type, "\"} ", n, "\n");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::StrAppend(&out,
                  "# HELP nat_operations_total Operations served, by kind.\n"
                  "# TYPE nat_operations_total counter\n");
  for (const auto& [op, n] : ops_) {
    absl::StrAppend(&out, "nat_operations_total{op=\"", op, "\"} ", n, "\n");
  }
  absl::StrAppend(&out,
                  "# HELP nat_operation_errors_total Operations that failed, by kind.\n"
                  "# TYPE nat_operation_errors_total counter\n");
  for (const auto& [op, n] : ops_) {
    auto it = errors_.find(op);
    absl::StrAppend(&out, "nat_operation_errors_total{op=\"", op, "\"} ",
                    it == errors_.end() ? 0 : it->second, "\n");
  }
  absl::StrAppend(&out,
                  "# HELP nat_operation_duration_seconds Time to serve an operation.\n"
                  "# TYPE nat_operation_duration_seconds histogram\n");
  for (size_t i = 0; i < bounds_.size(); ++i) {
    absl::StrAppend(&out, "nat_operation_duration_seconds_bucket{le=\"",
                    absl::StrFormat("%g", bounds_[i]), "\"} ", buckets_[i], "\n");
  }
  absl::StrAppend(&out, "nat_operation_duration_seconds_bucket{le=\"+Inf\"} ",
                  count_, "\n", "nat_operation_duration_seconds_sum ",
                  absl::StrFormat("%.6f", sum_), "\n",
                  "nat_operation_duration_seconds_count ", count_, "\n");
  absl::StrAppend(
      &out,
      "# HELP nat_repairs_total Repairs after someone else changed our rules.\n"
      "# TYPE nat_repairs_total counter\n",
      "nat_repairs_total ", repairs_, "\n",
      "# HELP nat_last_repair_seconds Unix time of the last repair (0: none).\n"
      "# TYPE nat_last_repair_seconds gauge\n",
      "nat_last_repair_seconds ",
      repairs_ == 0 ? 0 : absl::ToUnixSeconds(last_repair_), "\n");
  absl::StrAppend(&out,
                  "# HELP nat_socket_connections_total Connections on the unix socket by the "
                  "server that took them: the agent's own (the CNI plugin's calls) or gRPC's.\n"
                  "# TYPE nat_socket_connections_total counter\n",
                  "nat_socket_connections_total{server=\"agent\"} ", socket_agent_, "\n",
                  "nat_socket_connections_total{server=\"grpc\"} ", socket_grpc_, "\n");
  return out;
}

void Metrics::RecordSocketConnection(bool served_by_agent) {
  std::lock_guard<std::mutex> l(mu_);
  ++(served_by_agent ? socket_agent_ : socket_grpc_);
}

}  // namespace fabric::agent
