#include "agent/owners/statics.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"
#include "agent/owners/mappings.h"

namespace fabric::agent::owners {

namespace {

bool Same(const nat::PortMapping& a, const nat::PortMapping& b) {
  return a.protocol == b.protocol && a.host_ip == b.host_ip && a.host_port == b.host_port &&
         a.port_count == b.port_count && a.target_ip == b.target_ip &&
         a.target_port == b.target_port;
}

}  // namespace

absl::StatusOr<StaticDiff> ApplyStaticForwards(Txn& txn, const StaticConfig& config,
                                               nat::ConntrackCleaner* ct) {
  const std::vector<StaticForward>& wanted = config.forwards;
  std::map<std::string, const StaticForward*> by_name;
  for (const StaticForward& f : wanted) by_name[f.name] = &f;
  StaticDiff diff;
  // SNAT rules: counted with the CNI networks' (NetworkRefs::snat), so a
  // rule both want stays while either does; the kernel change is the
  // difference of the network rules before and after.
  std::set<nat::SnatRule> snat_wanted(config.snat.begin(), config.snat.end());
  if (snat_wanted != txn.state().static_snat) {
    for (const nat::SnatRule& r : snat_wanted) {
      if (absl::Status s = r.Validate(); !s.ok()) return s;
    }
    nat::RuleSet before, after;
    NetworkRefs& refs = txn.state().network;
    refs.Fill(&before);
    for (const nat::SnatRule& r : txn.state().static_snat) {
      if (snat_wanted.count(r) == 0) {
        refs.CountSnat(r, -1);
        ++diff.snat_removed;
      }
    }
    for (const nat::SnatRule& r : snat_wanted) {
      if (txn.state().static_snat.count(r) == 0) {
        refs.CountSnat(r, 1);
        ++diff.snat_added;
      }
    }
    refs.Fill(&after);
    nat::Merge(&txn.batch(), nat::Diff(before, after));
    txn.state().static_snat = std::move(snat_wanted);
  }
  // Existing static mappings: keep the unchanged, remove the rest first (so
  // a forward moved to another port, or two swapping ports, works).
  std::vector<std::string> remove;
  std::map<std::string, bool> keep;
  txn.state().mappings.ForEach([&](const std::string& id, const MappingRecord& m) {
    if (m.proto.owner().kind() != v1::OWNER_KIND_STATIC) return;
    auto it = by_name.find(m.proto.owner().id());
    if (it != by_name.end() && Same(it->second->mapping, m.nat) && !keep[it->first]) {
      keep[it->first] = true;
      ++diff.kept;
    } else {
      remove.push_back(id);
    }
  });
  for (const std::string& id : remove) RemoveMapping(txn, id, ct);
  diff.removed = static_cast<int>(remove.size());
  for (const StaticForward& f : wanted) {
    if (keep[f.name]) continue;
    v1::PortMapping proto;
    proto.mutable_owner()->set_kind(v1::OWNER_KIND_STATIC);
    proto.mutable_owner()->set_id(f.name);
    proto.set_protocol(ToProto(f.mapping.protocol));
    if (f.mapping.host_ip) proto.set_host_ip(f.mapping.host_ip->ToString());
    proto.set_target_ip(f.mapping.target_ip.ToString());
    proto.set_description(absl::StrCat("--forwards_file ", f.name));
    absl::StatusOr<v1::PortMapping> added = AddMapping(txn, proto, f.mapping, ct);
    if (!added.ok()) {
      return absl::Status(added.status().code(),
                          absl::StrCat("forward \"", f.name, "\": ", added.status().message()));
    }
    ++diff.added;
  }
  return diff;
}

}  // namespace fabric::agent::owners
