#include "agent/owners/statics.h"

#include <map>
#include <memory>
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

namespace {

proxy::ProxySpec SpecOf(const std::string& name, const nat::PortMapping& m) {
  proxy::ProxySpec spec;
  spec.protocol = m.protocol;
  spec.listen_ip = m.host_ip.value_or(nat::IpAddress::AnyOf(nat::Family::kIPv6));
  spec.listen_port = m.host_port;
  spec.port_count = m.port_count;
  spec.target_ip = m.target_ip;
  spec.target_port = m.target_port;
  spec.name = name;
  return spec;
}

// The allocator's scope of a proxied forward: its IPv6 ports, on its
// address or (::) every one.
nat::PortScope ProxyScope(const nat::PortMapping& m) {
  std::optional<nat::IpAddress> host;
  if (m.host_ip.has_value() && !m.host_ip->IsUnspecified()) host = m.host_ip;
  return nat::PortScope{m.protocol, nat::Family::kIPv6, host};
}

std::string ProxyHolder(const std::string& name) {
  return absl::StrCat("static forward ", name, " (IPv6-to-IPv4 proxy)");
}

// The proxied forwards become exactly those of `wanted`.
absl::Status ApplyProxies(Txn& txn, const std::vector<StaticForward>& wanted,
                          proxy::Proxy* proxy, StaticDiff* diff) {
  std::map<std::string, nat::PortMapping>& current = txn.state().static_proxies;
  std::map<std::string, const StaticForward*> want;
  for (const StaticForward& f : wanted) {
    if (f.proxy) want[f.name] = &f;
  }
  diff->proxied = static_cast<int>(want.size());
  if (!want.empty() && proxy == nullptr) {
    return absl::FailedPreconditionError(
        "IPv6-to-IPv4 forwards need the in-agent proxy, which is not running");
  }
  // Removed or changed: their ports first, so that a forward moved onto
  // another's old port works; their listeners close after the commit
  // unless a new forward serves the same key.
  std::vector<std::string> gone;
  for (const auto& [name, m] : current) {
    auto it = want.find(name);
    if (it != want.end() && it->second->mapping == m) {
      ++diff->kept;
      continue;
    }
    gone.push_back(name);
  }
  std::set<proxy::ForwardKey> closing;
  for (const std::string& name : gone) {
    const nat::PortMapping& m = current[name];
    txn.Release(ProxyScope(m), m.host_port, m.port_count, ProxyHolder(name));
    closing.insert(proxy::ForwardKey::Of(SpecOf(name, m)));
    current.erase(name);
    ++diff->removed;
    diff->proxy_changed = true;
  }
  for (const auto& [name, f] : want) {
    if (current.count(name) > 0) continue;  // kept
    const nat::PortMapping& m = f->mapping;
    if (absl::Status s = txn.Reserve(ProxyScope(m), m.host_port, m.port_count, ProxyHolder(name));
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("forward \"", name, "\": ", s.message()));
    }
    absl::StatusOr<std::unique_ptr<proxy::Listener>> l = proxy->Bind(SpecOf(name, m));
    if (!l.ok()) {
      return absl::Status(l.status().code(),
                          absl::StrCat("forward \"", name, "\": ", l.status().message()));
    }
    closing.erase((*l)->key());
    // Served once committed; a transaction that fails drops it (closed).
    auto listener = std::make_shared<std::unique_ptr<proxy::Listener>>(*std::move(l));
    txn.AfterUnlock([proxy, listener] { proxy->Serve(std::move(*listener)); });
    current[name] = m;
    ++diff->added;
    diff->proxy_changed = true;
  }
  for (const proxy::ForwardKey& key : closing) {
    txn.AfterUnlock([proxy, key] { proxy->Close(key); });
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StaticDiff> ApplyStaticForwards(Txn& txn, const StaticConfig& config,
                                               nat::ConntrackCleaner* ct, proxy::Proxy* proxy) {
  std::vector<StaticForward> wanted;
  for (const StaticForward& f : config.forwards) {
    if (!f.proxy) wanted.push_back(f);
  }
  std::map<std::string, const StaticForward*> by_name;
  for (const StaticForward& f : wanted) by_name[f.name] = &f;
  StaticDiff diff;
  if (absl::Status s = ApplyProxies(txn, config.forwards, proxy, &diff); !s.ok()) return s;
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
    if (m.owner().kind() != v1::OWNER_KIND_STATIC) return;
    auto it = by_name.find(m.owner().id());
    if (it != by_name.end() && Same(it->second->mapping, m.nat) && !keep[it->first]) {
      keep[it->first] = true;
      ++diff.kept;
    } else {
      remove.push_back(id);
    }
  });
  for (const std::string& id : remove) RemoveMapping(txn, id, ct);
  diff.removed += static_cast<int>(remove.size());
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
