#include "agent/ctl/offline.h"

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "agent/core/convert.h"
#include "agent/ctl/store_reader.h"
#include "nat/backend/nftables/nftables_backend.h"
#include "nat/types.h"

namespace fabric::agent::ctl {

namespace v1 = ::fabric::nat::v1;

namespace {

std::string When(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

std::string Entries(size_t n) { return absl::StrCat(n, n == 1 ? " DNAT entry" : " DNAT entries"); }

// The two header lines (see offline.h).
std::string Banner(const StoreReading& r, const Unreachable& why, const Options& options) {
  std::string first =
      r.lock_holder == 0
          ? absl::StrCat("fabric-agent is not running: read from ", r.db_path, " (read-only)")
          : absl::StrCat("fabric-agent does not answer, but pid ", r.lock_holder, " holds ",
                         r.lock_path, ": read from ", r.db_path, " (read-only)");
  std::string start;
  if (r.last_start.has_value()) {
    start = absl::StrCat("last started ", When(*r.last_start), " (",
                         r.last_start_pid.empty() ? "" : absl::StrCat(r.last_start_pid, ", "),
                         r.lock_path, ")");
    if (!r.last_socket.empty() && r.last_socket != options.socket) {
      absl::StrAppend(&start, " serving ", r.last_socket, " (--socket)");
    }
  } else {
    start = absl::StrCat("no agent start recorded (no ", r.lock_path, ")");
  }
  return absl::StrCat(first, "\n  ", why.reason, "; ", start, "; state last written ",
                      When(r.last_written), " (", r.last_written_file, ")\n");
}

// Up to three elements, then "...".
std::string Sample(const std::vector<nat::DnatElement>& es) {
  std::vector<std::string> items;
  for (const nat::DnatElement& e : es) {
    if (items.size() == 3) {
      items.push_back("...");
      break;
    }
    items.push_back(e.ToString());
  }
  return absl::StrJoin(items, ", ");
}

absl::StatusOr<nat::KernelState> ReadNftables() {
  absl::StatusOr<std::unique_ptr<nat::NftablesBackend>> backend = nat::NftablesBackend::Create();
  if (!backend.ok()) return backend.status();
  return (*backend)->Read();
}

v1::DiagnoseResponse Compare(const StoreReading& store, const Options& options) {
  v1::DiagnoseResponse r;
  nat::DnatSet desired;
  for (const v1::PortMapping& m : store.mappings) {
    absl::StatusOr<nat::PortMapping> nm = ToNatMapping(m);
    if (!nm.ok()) {
      r.add_findings(absl::StrCat("mapping ", m.id(), " in the store cannot be compared: ",
                                  nm.status().message()));
      continue;
    }
    for (const nat::DnatElement& e : nm->ToElements()) desired.insert(e);
  }
  absl::StatusOr<nat::KernelState> kernel =
      options.read_kernel ? options.read_kernel() : ReadNftables();
  if (!kernel.ok()) {
    r.add_findings(absl::StrCat("cannot read the kernel's table inet fabric_nat: ",
                                kernel.status().message(),
                                " (run fabricctl as root in the agent's network namespace)"));
  } else if (!kernel->table_present) {
    r.add_findings(absl::StrCat(
        "the kernel has no table inet fabric_nat: it lacks all ", Entries(desired.size()),
        " the store asks for",
        desired.empty() ? ""
                        : absl::StrCat(" (", Sample({desired.begin(), desired.end()}), ")"),
        "; the agent rebuilds it when it starts"));
  } else {
    const nat::KernelState& k = *kernel;
    if (!k.owner.empty() && !store.store_id.empty() && k.owner != store.store_id) {
      r.add_findings(absl::StrCat(
          "the kernel's table belongs to another agent's state (", k.owner, "; this store's is ",
          store.store_id, "): an agent on this state dir refuses to start until given that "
          "agent's --state_dir, or --reset_state to take the table over"));
    }
    if (!k.layout_intact) {
      r.add_findings(absl::StrCat("table layout damaged: ", k.problem,
                                  "; the agent rebuilds it when it starts"));
    }
    std::vector<nat::DnatElement> missing, extra;
    for (const nat::DnatElement& e : desired) {
      if (k.rules.dnat.count(e) == 0) missing.push_back(e);
    }
    for (const nat::DnatElement& e : k.rules.dnat) {
      if (desired.count(e) == 0) extra.push_back(e);
    }
    if (!missing.empty()) {
      r.add_findings(absl::StrCat("kernel lacks ", missing.size(), " of ",
                                  Entries(desired.size()), " the store asks for: ",
                                  Sample(missing), "; the agent restores them when it starts"));
    }
    if (!extra.empty()) {
      r.add_findings(absl::StrCat("kernel holds ", Entries(extra.size()),
                                  " the store does not know: ", Sample(extra),
                                  "; the agent removes them when it starts"));
    }
    r.add_facts(absl::StrCat("kernel table inet fabric_nat: ", Entries(k.rules.dnat.size()),
                             ", ", desired.size(), " expected"));
    r.add_facts(absl::StrCat(
        "not compared offline (they follow the agent's flags): ", k.rules.masquerade.size(),
        " masquerade, ", k.rules.hairpin.size(), " hairpin, ",
        k.rules.localhost_interfaces.size(), " localhost, ", k.rules.firewall6_interfaces.size(),
        " IPv6 firewall and ", k.rules.pinholes.size(), " pinhole entries in the kernel"));
  }
  r.add_facts(absl::StrCat("store: ", store.attachments.size(), " attachment(s), ",
                           store.mappings.size(), " mapping(s), ", store.pinholes,
                           " pinhole(s) (read offline; the kernel is this network namespace's "
                           "nftables)"));
  r.set_healthy(r.findings_size() == 0);
  return r;
}

}  // namespace

int RunOffline(const std::string& cmd, const Unreachable& why, const Options& options,
               std::ostream& out, std::ostream& err) {
  absl::StatusOr<StoreReading> store = ReadStateDir(options.state_dir);
  if (!store.ok()) {
    err << "fabricctl: " << why.error << "\n"
        << "fabricctl: " << store.status().message() << "\n";
    return kExitAgentDown;
  }
  (options.json ? err : out) << Banner(*store, why, options);
  if (cmd == "list") {
    v1::ListMappingsResponse r;
    for (const v1::PortMapping& m : store->mappings) *r.add_mappings() = m;
    return PrintList(r, options, out, err);
  }
  if (cmd == "status") {
    v1::GetStatusResponse r;
    r.set_ready(false);
    r.set_reason(store->lock_holder == 0 ? "agent not running" : "agent does not answer");
    r.set_attachments(static_cast<uint32_t>(store->attachments.size()));
    r.set_mappings(static_cast<uint32_t>(store->mappings.size()));
    if (store->last_start.has_value()) {
      // Whole seconds, as the header shows it (an mtime, not a clock reading).
      absl::Time start = absl::FromUnixSeconds(absl::ToUnixSeconds(*store->last_start));
      *r.mutable_started_at() = ToTimestamp(start);
    }
    return PrintStatus(r, /*live=*/false, kExitOk, options, out, err);
  }
  v1::DiagnoseResponse r = Compare(*store, options);
  return PrintDiagnose(
      r, "healthy: the kernel holds every DNAT entry the store asks for, and no other", options,
      out, err);
}

}  // namespace fabric::agent::ctl
