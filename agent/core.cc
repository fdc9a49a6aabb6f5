#include "agent/core.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/owners/api.h"
#include "agent/owners/cni.h"
#include "agent/owners/mappings.h"
#include "google/protobuf/util/time_util.h"

namespace fabric::agent {

using nat::IpAddress;
using nat::PortMapping;
using nat::PortScope;

namespace {

Writer::Options WriterOptions(const CoreOptions& o) {
  Writer::Options w;
  w.dynamic_lo = o.dynamic_lo;
  w.dynamic_hi = o.dynamic_hi;
  w.now = o.now;
  w.max_watches = o.max_watches;
  w.reader = o.reader;
  return w;
}

// Rebuilds the state from the store at start-up: O(attachments + mappings).
// Takes the stored mappings out of `contents` (moved, not copied: the
// records then hold the very strings the store's rows were read into, and
// no freed copy is left between them to fragment the heap).
absl::Status BuildState(StoreContents& contents, absl::Time now,
                        const std::string& firewall6_interface, State* state,
                        nat::PortAllocator* allocator, StoreWrite* cleanup) {
  state->next_mapping_id = contents.next_mapping_id;
  state->firewall6_interface = firewall6_interface;
  for (const v1::Pinhole& p : contents.pinholes) {
    absl::StatusOr<IpAddress> internal = IpAddress::Parse(p.internal_client());
    absl::StatusOr<IpAddress> remote = p.remote_host().empty()
                                           ? absl::StatusOr<IpAddress>(IpAddress())
                                           : IpAddress::Parse(p.remote_host());
    absl::StatusOr<nat::Protocol> protocol = FromProto(p.protocol());
    // Gone while the agent was down, the firewall turned off, or unreadable.
    if (firewall6_interface.empty() || FromTimestamp(p.expires_at()) <= now || !internal.ok() ||
        !remote.ok() || !protocol.ok()) {
      cleanup->delete_pinholes.push_back(p.unique_id());
      continue;
    }
    nat::Pinhole n{*internal, *protocol, static_cast<uint16_t>(p.internal_port()), std::nullopt};
    if (!p.remote_host().empty()) n.remote = *remote;
    state->pinholes.Put(absl::StrCat(p.unique_id()), PinholeRecord{p, n});
  }
  if (contents.epoch_start.has_value()) {
    state->epoch_start = absl::FromUnixSeconds(*contents.epoch_start);
  } else {
    // A new (or lost) store: the mapping table starts now.
    state->epoch_start = now;
    cleanup->epoch_start = absl::ToUnixSeconds(now);
  }
  for (v1::PortMapping& proto : contents.mappings) {
    if (proto.has_expires_at() && FromTimestamp(proto.expires_at()) <= now) {
      cleanup->delete_mappings.push_back(proto.id());  // ran out while down
      continue;
    }
    absl::StatusOr<PortMapping> m = ToNatMapping(proto);
    absl::Status s = m.status();
    if (s.ok()) {
      s = allocator->Reserve(PortScope::Of(*m), m->host_port, m->port_count,
                             MappingHolder(proto));
    }
    if (!s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stored mapping ", proto.id(), " cannot be restored: ", s.message()));
    }
    std::string id = proto.id();
    state->mappings.Put(id, MappingRecord(proto, *m));
    const MappingRecord& stored = *state->mappings.Find(id);
    if (IsLease(stored)) owners::IndexLease(*state, stored);
    owners::IndexTarget(*state, stored);
    state->by_owner.Add(stored.owner().id(), id);
    v1::PortMapping().Swap(&proto);  // its memory now, for the records that follow
  }
  // Leases in id order (as before); only they are looked at.
  std::vector<std::pair<std::string, const MappingRecord*>> leases;
  state->mappings.ForEach([&](const std::string& id, const MappingRecord& rec) {
    if (IsLease(rec)) leases.emplace_back(id, &rec);
  });
  std::sort(leases.begin(), leases.end());
  for (const auto& [id, rec] : leases) owners::HoldCompanionAtStart(*state, *allocator, *rec);
  owners::LoadAttachments(contents.attachments, state);
  state->ShrinkToFit();
  return absl::OkStatus();
}

}  // namespace

AgentCore::AgentCore(std::unique_ptr<Store> store, nat::Backend* backend,
                     nat::ConntrackCleaner* conntrack, CoreOptions options)
    : options_(options),
      conntrack_(conntrack),
      started_at_(options.now()),
      writer_(std::move(store), backend, WriterOptions(options)) {}

absl::Status AgentCore::Start() {
  absl::Time now = options_.now();
  const std::string firewall = options_.firewall6_interface;
  const std::vector<nat::SnatRule> snat = options_.static_snat;
  return writer_.Start([now, firewall, snat](StoreContents& contents, State* state,
                                             nat::PortAllocator* allocator, StoreWrite* cleanup) {
    absl::Status s = BuildState(contents, now, firewall, state, allocator, cleanup);
    if (!s.ok()) return s;
    for (const nat::SnatRule& r : snat) {
      if (!r.Validate().ok() || !state->static_snat.insert(r).second) continue;
      state->network.CountSnat(r, 1);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::AttachResponse> AgentCore::Attach(const v1::Attachment& attachment,
                                                     absl::Time deadline) {
  return writer_.Mutate<v1::AttachResponse>(deadline, [&](Txn& txn) {
    return owners::Attach(txn, attachment, conntrack_);
  });
}

absl::StatusOr<bool> AgentCore::Detach(const v1::AttachmentKey& key, absl::Time deadline) {
  if (absl::Status s = ValidateAttachmentKey(key); !s.ok()) return s;
  return writer_.Mutate<bool>(deadline, [&](Txn& txn) -> absl::StatusOr<bool> {
    bool existed = owners::Detach(txn, key, conntrack_);
    if (!existed) txn.Discard();
    return existed;
  });
}

absl::Status AgentCore::Check(const v1::AttachmentKey& key) {
  if (absl::Status s = ValidateAttachmentKey(key); !s.ok()) return s;
  std::shared_ptr<const Snapshot> snap = writer_.snapshot();
  if (!snap->ready) {
    return absl::UnavailableError(absl::StrCat("agent not ready: ", snap->not_ready_reason));
  }
  if (snap->state.attachments.Find(AttachmentOwnerId(key)) == nullptr) {
    return absl::NotFoundError(absl::StrCat(AttachmentHolder(key), " is not attached"));
  }
  ReturnFreedMemory after;
  auto read = writer_.ReadKernelConsistent();
  if (!read.ok()) return read.status();
  return owners::CheckAttachment(read->second->state, read->first, key);
}

absl::StatusOr<std::vector<v1::AttachmentKey>> AgentCore::GarbageCollect(
    const std::string& network, const std::vector<v1::AttachmentKey>& valid,
    absl::Time deadline) {
  using Keys = std::vector<v1::AttachmentKey>;
  return writer_.Mutate<Keys>(deadline, [&](Txn& txn) -> absl::StatusOr<Keys> {
    Keys stale = owners::StaleAttachments(txn.state(), network, valid);
    for (const v1::AttachmentKey& k : stale) owners::Detach(txn, k, conntrack_);
    if (stale.empty()) txn.Discard();
    return stale;
  });
}

absl::StatusOr<v1::PortMapping> AgentCore::CreateMapping(const v1::PortMapping& request,
                                                         absl::Time deadline) {
  return writer_.Mutate<v1::PortMapping>(deadline, [&](Txn& txn) {
    return owners::CreateMapping(txn, request, conntrack_);
  });
}

absl::Status AgentCore::DeleteMapping(const std::string& id, absl::Time deadline) {
  return writer_.MutateStatus(deadline, [&](Txn& txn) {
    return owners::DeleteMapping(txn, id, conntrack_);
  });
}

std::vector<v1::PortMapping> AgentCore::ListMappings(v1::OwnerKind kind,
                                                     const std::string& owner_id) const {
  absl::StatusOr<Page> all = ListMappingsPage(kind, owner_id, 0, "");
  if (!all.ok()) return {};
  return std::vector<v1::PortMapping>(std::make_move_iterator(all->mappings.begin()),
                                      std::make_move_iterator(all->mappings.end()));
}

namespace {

// The file's IPv6-to-IPv4 forwards: not DNAT mappings, but listed with the
// static ones (id "proxy-NAME"; the API cannot remove them either). By id.
std::vector<v1::PortMapping> ProxyEntries(const State& state, v1::OwnerKind kind,
                                          const std::string& owner_id,
                                          const std::string& after) {
  std::vector<v1::PortMapping> out;
  if (kind != v1::OWNER_KIND_UNSPECIFIED && kind != v1::OWNER_KIND_STATIC) return out;
  for (const auto& [name, m] : state.static_proxies) {  // by name: by id too
    if (!owner_id.empty() && owner_id != name) continue;
    std::string id = absl::StrCat("proxy-", name);
    if (!after.empty() && id <= after) continue;
    v1::PortMapping p;
    p.set_id(std::move(id));
    p.mutable_owner()->set_kind(v1::OWNER_KIND_STATIC);
    p.mutable_owner()->set_id(name);
    p.set_protocol(ToProto(m.protocol));
    if (m.host_ip.has_value() && !m.host_ip->IsUnspecified()) {
      p.set_host_ip(m.host_ip->ToString());
    } else {
      p.set_host_ip("::");
    }
    p.set_host_port(m.host_port);
    p.set_port_count(m.port_count);
    p.set_target_ip(m.target_ip.ToString());
    p.set_target_port(m.target_port);
    p.set_description(absl::StrCat("--forwards_file ", name, ", through the IPv6-to-IPv4 proxy"));
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace

absl::StatusOr<AgentCore::Page> AgentCore::ListMappingsPage(
    v1::OwnerKind kind, const std::string& owner_id, int page_size,
    const std::string& page_token) const {
  if (page_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", page_size, " is negative (0: all; at most ",
                     kMaxPageSize, " a page)"));
  }
  if (page_token.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_token of ", page_token.size(), " bytes: not one this agent gave (ids are at most ",
        kMaxIdLength, ")"));
  }
  size_t limit = static_cast<size_t>(std::min(page_size, kMaxPageSize));
  std::shared_ptr<const Snapshot> snap = writer_.snapshot();
  // One more than the page: whether another follows.
  std::vector<const MappingRecord*> recs =
      SelectMappings(snap->state, kind, owner_id, page_token, limit == 0 ? 0 : limit + 1);
  std::vector<v1::PortMapping> proxies = ProxyEntries(snap->state, kind, owner_id, page_token);
  Page page;
  page.mappings.Reserve(static_cast<int>(
      limit == 0 ? recs.size() + proxies.size() : std::min(limit, recs.size() + proxies.size())));
  // Merge the two ordered lists.
  size_t r = 0, p = 0;
  while (r < recs.size() || p < proxies.size()) {
    if (limit != 0 && static_cast<size_t>(page.mappings.size()) == limit) {
      page.next_page_token = page.mappings[page.mappings.size() - 1].id();
      break;
    }
    if (p == proxies.size() || (r < recs.size() && recs[r]->id() < proxies[p].id())) {
      v1::PortMapping* m = page.mappings.Add();
      recs[r]->ToProto(m);
      if (upstream_status_) {
        // Set only when there is one: an empty string set is still an allocation.
        std::string upstream = upstream_status_(*m);
        if (!upstream.empty()) m->set_upstream(std::move(upstream));
      }
      ++r;
    } else {
      *page.mappings.Add() = std::move(proxies[p++]);
    }
  }
  return page;
}

std::shared_ptr<EventQueue> AgentCore::Subscribe(v1::OwnerKind kind,
                                                 const std::string& owner_id) {
  absl::StatusOr<std::shared_ptr<EventQueue>> q = writer_.hub().Subscribe(kind, owner_id);
  if (q.ok()) return *q;
  auto ended = std::make_shared<EventQueue>(kind, owner_id, nullptr);
  ended->End(q.status());
  return ended;
}

void AgentCore::Unsubscribe(const std::shared_ptr<EventQueue>& queue) {
  writer_.hub().Unsubscribe(queue);
}

LeaseResult AgentCore::Lease(const LeaseRequest& request, const LeasePolicy& policy) {
  absl::StatusOr<LeaseResult> r = writer_.Mutate<LeaseResult>(
      absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<LeaseResult> {
        return owners::Lease(txn, request, policy, conntrack_);
      });
  if (r.ok()) return *r;
  // Not ready is a network failure to the client (try later); anything the
  // store or kernel refused is out of resources.
  LeaseOutcome outcome = writer_.snapshot()->ready ? LeaseOutcome::kNoResources
                                                   : LeaseOutcome::kNetworkFailure;
  return {outcome, 0, 0, std::string(r.status().message())};
}

absl::StatusOr<StaticDiff> AgentCore::ApplyStaticForwards(const StaticConfig& config) {
  return writer_.Mutate<StaticDiff>(
      absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<StaticDiff> {
        absl::StatusOr<StaticDiff> d =
            owners::ApplyStaticForwards(txn, config, conntrack_, proxy_);
        // A SNAT rule a CNI network already asks for changes no kernel
        // state, and proxied forwards none at all, but the state must
        // still record them.
        if (d.ok() && !txn.touches_store_or_kernel() && d->snat_added == 0 &&
            d->snat_removed == 0 && !d->proxy_changed) {
          txn.Discard();
        }
        return d;
      });
}

absl::StatusOr<std::map<std::string, uint64_t>> AgentCore::ConnectionCounts() const {
  absl::StatusOr<std::map<std::string, uint64_t>> counts = writer_.ConnectionCounts();
  if (counts.ok() && proxy_ != nullptr) {
    (*counts)["proxy"] = proxy_->counters().connections_accepted;
  }
  return counts;
}

UpnpResult AgentCore::Upnp(const UpnpRequest& request, const LeasePolicy& policy) {
  absl::StatusOr<UpnpResult> r = writer_.Mutate<UpnpResult>(
      absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<UpnpResult> {
        return owners::Upnp(txn, request, policy, conntrack_);
      });
  if (r.ok()) return *r;
  UpnpResult failed;
  failed.outcome = writer_.snapshot()->ready ? UpnpOutcome::kActionFailed
                                             : UpnpOutcome::kNetworkFailure;
  failed.detail = std::string(r.status().message());
  return failed;
}

PinholeResult AgentCore::Pinhole(const PinholeRequest& request, const LeasePolicy& policy) {
  absl::StatusOr<PinholeResult> r = writer_.Mutate<PinholeResult>(
      absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<PinholeResult> {
        return owners::Pinholes(txn, request, policy);
      });
  if (r.ok()) return *r;
  return {PinholeOutcome::kActionFailed, 0, std::string(r.status().message())};
}

absl::StatusOr<std::map<nat::Pinhole, uint64_t>> AgentCore::PinholePackets() const {
  auto read = writer_.ReadKernelConsistent();
  if (!read.ok()) return read.status();
  return read->first.pinhole_packets;
}

absl::StatusOr<std::map<nat::DnatElement, uint64_t>> AgentCore::MappingConnections() const {
  auto read = writer_.ReadKernelConsistent();
  if (!read.ok()) return read.status();
  return read->first.dnat_connections;
}

int AgentCore::ExpireLeases() {
  absl::StatusOr<int> n = writer_.Mutate<int>(absl::InfiniteFuture(), [&](Txn& txn) {
    int expired = owners::ExpireLeases(txn, conntrack_) + owners::ExpirePinholes(txn);
    if (!txn.touches_store_or_kernel()) txn.Discard();
    return absl::StatusOr<int>(expired);
  });
  return n.ok() ? *n : 0;
}

void AgentCore::SetExternalAddress(std::optional<IpAddress> address) {
  absl::Status moved = writer_.MutateStatus(absl::InfiniteFuture(), [&](Txn& txn) {
    if (txn.state().external_address == address) {
      txn.Discard();
      return absl::OkStatus();
    }
    txn.state().external_address = address;
    owners::MoveLeases(txn, conntrack_);
    return absl::OkStatus();
  });
  if (moved.ok() || !writer_.snapshot()->ready) return;
  // The kernel refused the move: take the address anyway; the expiry tick
  // moves the leases.
  writer_.MutateStatus(absl::InfiniteFuture(), [&](Txn& txn) {
           txn.state().external_address = address;
           txn.state().leases_need_move = true;
           return absl::OkStatus();
         })
      .IgnoreError();
}

std::optional<IpAddress> AgentCore::external_address() const {
  return writer_.snapshot()->state.external_address;
}

uint32_t AgentCore::EpochSeconds() const {
  int64_t s = absl::ToInt64Seconds(options_.now() - writer_.snapshot()->state.epoch_start);
  return s < 0 ? 0 : static_cast<uint32_t>(s);
}

absl::StatusOr<nat::SyncReport> AgentCore::Resync() { return writer_.Resync(); }

absl::StatusOr<nat::SyncReport> AgentCore::CheckAndRepair() {
  // Nothing has committed anything in the kernel since it was last found
  // right (the generation would have moved): no read needed.
  absl::StatusOr<uint32_t> generation = writer_.KernelGeneration();
  if (generation.ok() && writer_.KnownGood(*generation)) return nat::SyncReport{};
  ReturnFreedMemory after;
  auto compared = writer_.CompareKernel();
  if (compared.ok() && compared->in_sync()) {
    if (generation.ok() && compared->exact) writer_.MarkKnownGood(*generation);
    return nat::SyncReport{};
  }
  return writer_.Resync();
}

absl::StatusOr<std::vector<v1::AttachmentKey>> AgentCore::SweepDeadNamespaces() {
  std::shared_ptr<const Snapshot> snap = writer_.snapshot();
  if (!snap->ready) {
    return absl::UnavailableError(absl::StrCat("agent not ready: ", snap->not_ready_reason));
  }
  auto gone = [](const std::string& path) {
    struct stat st;
    return !path.empty() && stat(path.c_str(), &st) != 0 && errno == ENOENT;
  };
  // stat() outside the lock; only the dead are looked at again inside.
  std::vector<v1::AttachmentKey> dead;
  snap->state.attachments.ForEach([&](const std::string&, const AttachmentRecord& rec) {
    if (gone(rec.proto.netns_path())) dead.push_back(rec.proto.key());
  });
  if (dead.empty()) return dead;
  using Keys = std::vector<v1::AttachmentKey>;
  return writer_.Mutate<Keys>(absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<Keys> {
    Keys removed;
    for (const v1::AttachmentKey& k : dead) {
      const AttachmentRecord* rec = txn.state().attachments.Find(AttachmentOwnerId(k));
      if (rec == nullptr || !gone(rec->proto.netns_path())) continue;
      owners::Detach(txn, k, conntrack_);
      removed.push_back(k);
    }
    if (removed.empty()) txn.Discard();
    return removed;
  });
}

namespace {

// `path`'s directory with links resolved, or empty.
std::string RealDir(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  char buf[PATH_MAX];
  return realpath(dir.c_str(), buf) != nullptr ? std::string(buf) : std::string();
}

}  // namespace

absl::StatusOr<v1::BackupResponse> AgentCore::Backup(const std::string& path) {
  if (path.empty() || path[0] != '/' || path.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("backup path must be an absolute file name, not \"", path, "\""));
  }
  // Only where the operator said backups go: a root-owned file elsewhere
  // (a crontab, a unit) would be a gift to whoever can call Backup.
  std::string dir = RealDir(path);
  bool allowed = false;
  for (const std::string& d : options_.backup_dirs) {
    std::string real = RealDir(d + "/x");
    if (!dir.empty() && !real.empty() &&
        (dir == real || absl::StartsWith(dir, real + "/"))) {
      allowed = true;
    }
  }
  if (!allowed) {
    return absl::PermissionDeniedError(absl::StrCat(
        "backups go into the state dir or --backup_dir (", absl::StrJoin(options_.backup_dirs, ", "),
        "), not ", path));
  }
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode) || !Store::IsStoreFile(path)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "will not overwrite ", path, ": it is not an earlier fabric-nat backup"));
    }
  }
  if (absl::Status s = writer_.Backup(path); !s.ok()) return s;
  chmod(path.c_str(), 0600);
  std::shared_ptr<const Snapshot> snap = writer_.snapshot();
  v1::BackupResponse r;
  r.set_attachments(static_cast<uint32_t>(snap->state.attachments.size()));
  r.set_mappings(static_cast<uint32_t>(snap->state.mappings.size()));
  return r;
}

v1::DiagnoseResponse AgentCore::Diagnose(bool full) const {
  v1::DiagnoseResponse r;
  // As the periodic check: nobody has committed anything in the kernel since
  // it was last found right, or the generation would have moved.
  absl::StatusOr<uint32_t> generation = writer_.KernelGeneration();
  if (!full && generation.ok() && writer_.KnownGood(*generation)) {
    std::shared_ptr<const Snapshot> snap = writer_.snapshot();
    if (!snap->ready) r.add_findings(absl::StrCat("agent not ready: ", snap->not_ready_reason));
    r.add_facts(absl::StrCat(
        "kernel table inet fabric_nat: at generation ", *generation,
        ", where it was last found to match the store, changed since only by this agent's own "
        "commits; not read element by element (diagnose --full reads them)"));
    DiagnoseFacts(*snap, &r);
    return r;
  }
  ReturnFreedMemory after;  // the kernel's elements and the desired ones
  auto compared = writer_.CompareKernel();
  std::shared_ptr<const Snapshot> snap = compared.ok() ? compared->snapshot : writer_.snapshot();
  if (!snap->ready) r.add_findings(absl::StrCat("agent not ready: ", snap->not_ready_reason));
  if (compared.ok() && compared->in_sync() && compared->exact && generation.ok()) {
    writer_.MarkKnownGood(*generation);
  }
  if (!compared.ok()) {
    r.add_findings(absl::StrCat("cannot read the kernel: ", compared.status().message()));
  } else if (!compared->kernel.table_present) {
    r.add_findings(absl::StrCat("the kernel has no table inet fabric_nat (",
                                compared->desired.size(),
                                " entries expected); the agent rebuilds it on its next "
                                "check or event"));
  } else {
    const nat::KernelState& state = compared->kernel;
    const nat::RuleSet& desired = compared->desired;
    if (!state.layout_intact) {
      r.add_findings(absl::StrCat("table layout damaged: ", state.problem));
    }
    const nat::Batch& diff = compared->diff;
    auto sample = [](const nat::RuleSet& rs) {
      std::vector<std::string> items;
      for (const auto& e : rs.dnat) {
        if (items.size() > 3) break;
        items.push_back(e.ToString());
      }
      for (const auto& p : rs.masquerade) items.push_back("masquerade " + p.ToString());
      for (const auto& x : rs.snat) items.push_back("snat " + x.ToString());
      for (const auto& p : rs.hairpin) items.push_back("hairpin " + p.ToString());
      for (const auto& i : rs.localhost_interfaces) items.push_back("localhost " + i);
      if (items.size() > 3) items.resize(3), items.push_back("...");
      return absl::StrJoin(items, ", ");
    };
    if (!diff.add.empty()) {
      r.add_findings(absl::StrCat("kernel lacks ", diff.add.size(), " of ", desired.size(),
                                  " entries: ", sample(diff.add)));
    }
    if (!diff.remove.empty()) {
      r.add_findings(absl::StrCat("kernel holds ", diff.remove.size(),
                                  " entries the store does not know: ", sample(diff.remove)));
    }
    r.add_facts(absl::StrCat("kernel table inet fabric_nat: ", state.rules.size(), " entries, ",
                             desired.size(), " expected"));
  }
  DiagnoseFacts(*snap, &r);
  return r;
}

// What every Diagnose reports besides the comparison; sets `healthy`.
void AgentCore::DiagnoseFacts(const Snapshot& snap, v1::DiagnoseResponse* out) const {
  v1::DiagnoseResponse& r = *out;
  if (absl::StatusOr<std::vector<std::string>> drops = writer_.ForwardDropChains(); drops.ok()) {
    for (const std::string& chain : *drops) {
      r.add_findings(absl::StrCat(
          "forward chain ", chain, " drops DNAT'd connections (published ports, leases, "
          "forwards) that it does not accept: add `ct status dnat accept` at its top"));
    }
  }
  r.add_facts(absl::StrCat(snap.state.attachments.size(), " attachment(s), ",
                           snap.state.mappings.size(), " mapping(s), ", snap.leases,
                           " NAT-PMP/PCP lease(s)"));
  r.add_facts(absl::StrCat("host ports held: ", snap.ports_held, "; dynamic range ",
                           snap.dynamic_lo, "-", snap.dynamic_hi));
  r.add_facts(absl::StrCat("external address for leases: ",
                           snap.state.external_address ? snap.state.external_address->ToString()
                                                       : "none"));
  r.add_facts(absl::StrCat("repairs so far: ", snap.repairs));
  r.set_healthy(r.findings_size() == 0);
}

v1::GetStatusResponse AgentCore::Status() const {
  std::shared_ptr<const Snapshot> snap = writer_.snapshot();
  v1::GetStatusResponse r;
  r.set_ready(snap->ready);
  r.set_reason(snap->not_ready_reason);
  r.set_backend(writer_.backend_name());
  r.set_attachments(static_cast<uint32_t>(snap->state.attachments.size()));
  r.set_mappings(static_cast<uint32_t>(snap->state.mappings.size()));
  *r.mutable_started_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(started_at_));
  r.set_repairs(snap->repairs);
  if (snap->last_repair != absl::InfinitePast()) {
    *r.mutable_last_repair_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
        absl::ToUnixNanos(snap->last_repair));
  }
  return r;
}

nat::RuleSet AgentCore::Desired() const { return writer_.snapshot()->state.Desired(); }

}  // namespace fabric::agent
