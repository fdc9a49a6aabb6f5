// Start-up, changes, healing and memory at scale, against a real
// fabric-agent process in a namespace of its own, with the store filled
// directly (agent/store.h) before the agent starts:
//  - cold start to serving with the kernel in sync (the agent logs "serving"
//    after the store is loaded and the kernel made to match; the kernel is
//    flushed before each start, so every start rebuilds the table), with
//    10,000 CNI attachments (each with its mapping) and with 10,000 and
//    100,000 API mappings; Diagnose confirms the kernel is in sync;
//  - one ADD (CreateMapping, then DeleteMapping) with them present;
//  - `nft flush ruleset` until the agent has repaired (GetStatus repairs);
//  - RSS (VmRSS of /proc/PID/status) after start, after the ADDs, and after
//    1, 5 and 20 Diagnose calls and periodic checks (--reconcile_interval=1s).
// Targets (issue): cold start with 10k attachments <= 300 ms; steady RSS
// <= 64 MB at 100k mappings through any number of checks.
//
//   bazel run -c opt //tests/bench:scale_bench   (as root)
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/bench/agent_harness.h"
#include "testing/netns.h"

namespace fabric::bench {
namespace {

constexpr int kStarts = 5;
constexpr int kAdds = 40;
constexpr int kHeals = 5;
constexpr double kColdTargetMs = 300;
constexpr double kRssTargetMiB = 64;

struct Figures {
  std::vector<double> cold_ms;
  bool in_sync = false;
  std::vector<double> add_ms;
  std::vector<double> heal_ms;
  double rss_start = -1, rss_after_adds = -1;
  std::vector<std::pair<int, double>> rss_after_diagnose;  // (calls, MiB)
  std::vector<std::pair<int, double>> rss_after_checks;
  double rss_before_checks = -1;  // that agent, serving, before its first check
  double peak = -1;
};

std::vector<std::string> Flags(const std::string& reconcile = "0") {
  return {"--metrics_address=", "--reconcile_interval=" + reconcile, "--sweep_dead_netns=false",
          "--port_range=61000-64999"};
}

// A full read (every element compared): the sync it confirms and the RSS it
// costs are what is measured.
bool Diagnose(Client& c, std::string* first_finding = nullptr) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 60);
  v1::DiagnoseRequest req;
  req.set_full(true);
  v1::DiagnoseResponse r;
  if (!c.agent->Diagnose(&ctx, req, &r).ok()) return false;
  if (first_finding && r.findings_size() > 0) *first_finding = r.findings(0);
  return r.healthy();
}

absl::Status FlushIn(testing::Netns& ns) {
  auto enter = testing::ScopedNetns::Enter(ns);
  if (!enter.ok()) return enter.status();
  return FlushRuleset();
}

// Cold starts (kernel flushed before each); leaves the last agent running.
absl::StatusOr<std::unique_ptr<Agent>> ColdStarts(testing::Netns& ns, const std::string& dir,
                                                  Figures* f) {
  std::unique_ptr<Agent> agent;
  for (int i = 0; i < kStarts; ++i) {
    if (agent) agent->Stop();
    agent.reset();
    if (auto s = FlushIn(ns); !s.ok()) return s;
    auto a = Agent::Start(&ns, dir, Flags());
    if (!a.ok()) return a.status();
    agent = std::move(*a);
    f->cold_ms.push_back(agent->start_ms());
  }
  Client c(agent->NewChannel());
  std::string finding;
  f->in_sync = Diagnose(c, &finding);
  if (!f->in_sync) std::printf("  after start, Diagnose: %s\n", finding.c_str());
  f->rss_start = agent->RssMiB();
  return agent;
}

void AddsAndHeals(testing::Netns& ns, Agent& agent, Figures* f) {
  Client c(agent.NewChannel());
  for (int i = 0; i < kAdds + 3; ++i) {
    v1::CreateMappingRequest req;
    req.mutable_mapping()->mutable_owner()->set_kind(v1::OWNER_KIND_API);
    req.mutable_mapping()->mutable_owner()->set_id("adds");
    req.mutable_mapping()->set_protocol(v1::PROTOCOL_TCP);
    req.mutable_mapping()->set_host_port(60000 + i);
    req.mutable_mapping()->set_target_ip("10.98.0.2");
    req.mutable_mapping()->set_target_port(80);
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CreateMappingResponse resp;
    auto t0 = Clock::now();
    grpc::Status s = c.mappings->CreateMapping(&ctx, req, &resp);
    double ms = Ms(Clock::now() - t0);
    if (!s.ok()) {
      std::printf("  CreateMapping: %s\n", s.error_message().c_str());
      continue;
    }
    if (i >= 3) f->add_ms.push_back(ms);  // the first three warm up
    grpc::ClientContext ctx2;
    SetDeadline(&ctx2);
    v1::DeleteMappingRequest dreq;
    dreq.set_id(resp.mapping().id());
    v1::DeleteMappingResponse dresp;
    c.mappings->DeleteMapping(&ctx2, dreq, &dresp);
  }
  f->rss_after_adds = agent.RssMiB();
  for (int i = 0; i < kHeals; ++i) {
    int64_t before = Repairs(c);
    auto t0 = Clock::now();
    if (!FlushIn(ns).ok()) continue;
    bool healed = false;
    while (Ms(Clock::now() - t0) < 30000) {
      if (Repairs(c) > before) {
        healed = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (healed) f->heal_ms.push_back(Ms(Clock::now() - t0));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::string finding;
  if (!Diagnose(c, &finding)) std::printf("  after the heals, Diagnose: %s\n", finding.c_str());
}

void RssThroughDiagnose(Agent& agent, Figures* f) {
  Client c(agent.NewChannel());
  int done = 0;
  for (int target : {1, 5, 20}) {
    while (done < target) {
      Diagnose(c);
      ++done;
    }
    f->rss_after_diagnose.emplace_back(done, agent.RssMiB());
  }
}

// A fresh agent with the periodic check every second: RSS after 1, 5, 20.
absl::Status RssThroughChecks(testing::Netns& ns, const std::string& dir, Figures* f) {
  auto a = Agent::Start(&ns, dir, Flags("1s"));
  if (!a.ok()) return a.status();
  auto start = Clock::now();
  f->rss_before_checks = (*a)->RssMiB();
  for (int target : {1, 5, 20}) {
    // The check runs at 1 s, 2 s, ...: sample half a second after the n-th.
    double at = (target + 0.5) * 1000;
    double now = Ms(Clock::now() - start);
    if (at > now) std::this_thread::sleep_for(std::chrono::milliseconds(int(at - now)));
    f->rss_after_checks.emplace_back(target, (*a)->RssMiB());
  }
  f->peak = (*a)->PeakRssMiB();
  return absl::OkStatus();
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 50); }

std::string Seq(const std::vector<std::pair<int, double>>& v) {
  std::string s;
  for (auto& [n, mib] : v) absl::StrAppend(&s, s.empty() ? "" : " / ", absl::StrFormat("%.1f", mib));
  return s;
}

int Run() {
  testing::Netns::SweepStale();
  auto ns = testing::Netns::Create("scale");
  if (!ns.ok()) {
    std::fprintf(stderr, "cannot create a namespace (root?)\n");
    return 1;
  }
  std::printf("Scale (fabric-agent process, nftables; store filled directly; kernel flushed "
              "before each start)\n");

  // 10k CNI attachments.
  Figures cni;
  {
    testing::ScopedTempDir dir("scni");
    if (auto s = PrefillAttachments(dir.path() + "/state", 10000); !s.ok()) {
      std::fprintf(stderr, "prefill: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    auto agent = ColdStarts(**ns, dir.path(), &cni);
    if (!agent.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
      return 1;
    }
    AddsAndHeals(**ns, **agent, &cni);
  }
  PrintFigure("cold start to serving, kernel in sync, 10k CNI attachments",
              Median(cni.cold_ms), "ms", kColdTargetMs, cni.cold_ms.size(),
              absl::StrFormat("median; min %.0f, max %.0f; in sync: %s",
                              Percentile(cni.cold_ms, 0), Percentile(cni.cold_ms, 100),
                              cni.in_sync ? "yes (Diagnose healthy)" : "NO"));
  PrintFigure("ADD (CreateMapping) with 10k attachments present", Median(cni.add_ms), "ms", 0,
              cni.add_ms.size(), absl::StrFormat("median; p99 %.1f", Percentile(cni.add_ms, 99)));
  PrintFigure("nft flush ruleset -> repaired, 10k attachments", Median(cni.heal_ms), "ms", 0,
              cni.heal_ms.size(), "median");
  PrintFigure("RSS after start / after the ADDs, 10k attachments", cni.rss_after_adds, "MiB", 0,
              0, absl::StrFormat("(%.1f at start)", cni.rss_start));

  // 10k and 100k API mappings, side by side.
  Figures api[2];
  const int sizes[2] = {10000, 100000};
  for (int k = 0; k < 2; ++k) {
    testing::ScopedTempDir dir(absl::StrCat("s", sizes[k] / 1000, "k"));
    if (auto s = PrefillMappings(dir.path() + "/state", sizes[k]); !s.ok()) {
      std::fprintf(stderr, "prefill: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    {
      auto agent = ColdStarts(**ns, dir.path(), &api[k]);
      if (!agent.ok()) {
        std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
        return 1;
      }
      AddsAndHeals(**ns, **agent, &api[k]);
      RssThroughDiagnose(**agent, &api[k]);
    }
    if (auto s = RssThroughChecks(**ns, dir.path(), &api[k]); !s.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  std::printf("\n%-64s %12s %12s\n", "API mappings", "10,000", "100,000");
  auto row = [](const std::string& what, double a, double b, const std::string& unit,
                const std::string& note) {
    std::printf("%-64s %9.1f %-2s %9.1f %-3s %s\n", what.c_str(), a, unit.c_str(), b,
                unit.c_str(), note.c_str());
  };
  row("cold start to serving, kernel in sync (median)", Median(api[0].cold_ms),
      Median(api[1].cold_ms), "ms",
      absl::StrFormat("(%d starts each; in sync: %s / %s)", kStarts,
                      api[0].in_sync ? "yes" : "NO", api[1].in_sync ? "yes" : "NO"));
  row("ADD: CreateMapping (median)", Median(api[0].add_ms), Median(api[1].add_ms), "ms",
      absl::StrFormat("(%zu / %zu samples; p99 %.1f / %.1f ms)", api[0].add_ms.size(),
                      api[1].add_ms.size(), Percentile(api[0].add_ms, 99),
                      Percentile(api[1].add_ms, 99)));
  row("nft flush ruleset -> repaired (median)", Median(api[0].heal_ms), Median(api[1].heal_ms),
      "ms", absl::StrFormat("(%zu / %zu samples)", api[0].heal_ms.size(), api[1].heal_ms.size()));
  row("RSS after start", api[0].rss_start, api[1].rss_start, "MiB", "");
  row("RSS after the ADDs and heals", api[0].rss_after_adds, api[1].rss_after_adds, "MiB", "");
  std::printf("%-64s %12s %12s\n", "RSS after 1 / 5 / 20 Diagnose calls (MiB)",
              Seq(api[0].rss_after_diagnose).c_str(), Seq(api[1].rss_after_diagnose).c_str());
  std::printf("%-64s %12s %12s\n", "RSS after 1 / 5 / 20 periodic checks, fresh agent (MiB)",
              Seq(api[0].rss_after_checks).c_str(), Seq(api[1].rss_after_checks).c_str());
  row("  the same agent serving, before its first check", api[0].rss_before_checks,
      api[1].rss_before_checks, "MiB", "");
  row("peak RSS (VmHWM) of that agent", api[0].peak, api[1].peak, "MiB", "");
  double steady = 0;
  for (auto& [n, mib] : api[1].rss_after_diagnose) steady = std::max(steady, mib);
  for (auto& [n, mib] : api[1].rss_after_checks) steady = std::max(steady, mib);
  PrintFigure("\nsteady RSS at 100k mappings, through 20 Diagnose calls / checks (max)", steady,
              "MiB", kRssTargetMiB, api[1].rss_after_diagnose.size() + api[1].rss_after_checks.size());
  std::printf("(figures taken while other builds and tests shared the machine's 2 cores)\n");
  return 0;
}

}  // namespace
}  // namespace fabric::bench

int main() { return fabric::bench::Run(); }
