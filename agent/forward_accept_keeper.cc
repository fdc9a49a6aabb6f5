#include "agent/forward_accept_keeper.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "agent/log.h"

namespace fabric::agent {

using nat::nftables::ChainRef;
using nat::nftables::ForwardAccept;

absl::StatusOr<std::unique_ptr<ForwardAcceptKeeper>> ForwardAcceptKeeper::Start(
    std::set<ChainRef> wanted, Metrics* metrics, Options options) {
  std::unique_ptr<ForwardAcceptKeeper> k(new ForwardAcceptKeeper());
  k->wanted_ = std::move(wanted);
  k->metrics_ = metrics;
  k->options_ = options;
  absl::StatusOr<std::unique_ptr<ForwardAccept>> rules = ForwardAccept::Open();
  if (!rules.ok()) return rules.status();
  k->rules_ = *std::move(rules);
  if (!k->wanted_.empty()) {
    // Subscribed before the first Ensure: a reload that races it is seen.
    std::set<nat::ChangeMonitor::Table> tables;
    for (const ChainRef& c : k->wanted_) tables.insert({c.family, c.table});
    absl::StatusOr<std::unique_ptr<nat::ChangeMonitor>> m = nat::ChangeMonitor::Open(tables);
    if (!m.ok()) return m.status();
    k->monitor_ = *std::move(m);
  }
  absl::StatusOr<ForwardAccept::Result> r = k->rules_->Ensure(k->wanted_);
  if (!r.ok()) return r.status();
  if (r->changed() || !r->missing.empty()) LogLine(absl::StrCat("forward_accept: ", r->ToString()));
  {
    std::lock_guard<std::mutex> lock(k->mu_);
    k->status_ = r->ToString();
  }
  if (k->monitor_) k->thread_ = std::thread([p = k.get()] { p->Run(); });
  return k;
}

ForwardAcceptKeeper::~ForwardAcceptKeeper() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::string ForwardAcceptKeeper::StatusLine() const {
  std::vector<std::string> names;
  for (const ChainRef& c : wanted_) names.push_back(c.ToString());
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrCat("forward accept (ct status dnat accept) in ", absl::StrJoin(names, ", "),
                      ": ", status_);
}

void ForwardAcceptKeeper::EnsureNow(const std::string& why) {
  absl::StatusOr<ForwardAccept::Result> r = rules_->Ensure(wanted_);
  std::string status;
  if (!r.ok()) {
    status = absl::StrCat("error: ", r.status().message());
    LogLine(absl::StrCat("forward_accept: after ", why, ": ", r.status().message()));
  } else {
    status = r->ToString();
    if (r->changed()) {
      LogLine(absl::StrCat("forward_accept: ", status, " (after ", why, ")"));
      if (metrics_ != nullptr) {
        metrics_->RecordRepair(absl::Now(), absl::StrCat("forward accept: ", status));
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  status_ = std::move(status);
}

void ForwardAcceptKeeper::Run() {
  absl::Time next_check = absl::Now() + options_.period;
  while (!stop_) {
    std::string what;
    // Short waits, so that stopping is prompt.
    absl::StatusOr<bool> changed = monitor_->WaitForForeignChange(
        rules_->port_id(), absl::Milliseconds(200), &what);
    if (stop_) return;
    if (!changed.ok()) {
      LogLine(absl::StrCat("forward_accept: ", changed.status().message()));
      absl::SleepFor(absl::Seconds(1));
      continue;
    }
    if (*changed) {
      // A reload is many events: let it finish, then look once.
      absl::SleepFor(absl::Milliseconds(20));
      std::string more;
      monitor_->Drain(rules_->port_id(), &more).IgnoreError();
      EnsureNow(what);
      next_check = absl::Now() + options_.period;
    } else if (absl::Now() >= next_check) {
      EnsureNow("the periodic check");
      next_check = absl::Now() + options_.period;
    }
  }
}

}  // namespace fabric::agent
