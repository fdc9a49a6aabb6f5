#include "agent/core.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"

namespace fabric::agent {

using nat::Batch;
using nat::Family;
using nat::IpAddress;
using nat::PortMapping;
using nat::PortScope;
using nat::Prefix;

namespace {

constexpr size_t kMaxIdLength = 256;

bool OwnerMatches(const v1::PortMapping& m, v1::OwnerKind kind,
                  const std::string& owner_id) {
  if (kind != v1::OWNER_KIND_UNSPECIFIED && m.owner().kind() != kind) {
    return false;
  }
  return owner_id.empty() || m.owner().id() == owner_id;
}

std::string ShortId(const std::string& id) { return ShortContainerId(id); }

std::string AttachmentHolder(const v1::AttachmentKey& k) {
  return absl::StrCat("container ", ShortId(k.container_id()), " (",
                      k.ifname(), ", network ", k.network_name(), ")");
}

std::string MappingHolder(const v1::PortMapping& m) {
  switch (m.owner().kind()) {
    case v1::OWNER_KIND_CNI: {
      // The owner id is "<container>/<ifname>/<network>"
      // (AttachmentOwnerId).
      std::vector<std::string> parts =
          absl::StrSplit(m.owner().id(), absl::MaxSplits('/', 2));
      v1::AttachmentKey k;
      k.set_container_id(parts[0]);
      if (parts.size() > 1) k.set_ifname(parts[1]);
      if (parts.size() > 2) k.set_network_name(parts[2]);
      return AttachmentHolder(k);
    }
    case v1::OWNER_KIND_NATPMP:
      return absl::StrCat("NAT-PMP lease of ", m.owner().id());
    case v1::OWNER_KIND_PCP:
      return absl::StrCat("PCP lease of ", m.owner().id());
    case v1::OWNER_KIND_UPNP:
      return absl::StrCat("UPnP mapping of ", m.owner().id());
    default:
      return absl::StrCat("mapping ", m.id(), " of ", m.owner().id());
  }
}

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(t));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(
      google::protobuf::util::TimeUtil::TimestampToNanoseconds(t));
}

bool IsLease(const v1::PortMapping& m) {
  return m.owner().kind() == v1::OWNER_KIND_NATPMP ||
         m.owner().kind() == v1::OWNER_KIND_PCP;
}

}  // namespace

// ---------------------------------------------------------------------------
// EventQueue

std::optional<v1::MappingEvent> EventQueue::Pop(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
               [&] { return closed_ || !events_.empty(); });
  if (events_.empty()) return std::nullopt;
  v1::MappingEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void EventQueue::Push(v1::MappingEvent event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    events_.push_back(std::move(event));
  }
  cv_.notify_one();
}

void EventQueue::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool EventQueue::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

// ---------------------------------------------------------------------------
// Conversions

std::string ShortContainerId(const std::string& id) {
  if (id.size() >= 32 &&
      id.find_first_not_of("0123456789abcdef") == std::string::npos) {
    return id.substr(0, 12);
  }
  return id;
}

v1::Protocol ToProto(nat::Protocol p) {
  switch (p) {
    case nat::Protocol::kTcp:
      return v1::PROTOCOL_TCP;
    case nat::Protocol::kUdp:
      return v1::PROTOCOL_UDP;
    case nat::Protocol::kSctp:
      return v1::PROTOCOL_SCTP;
  }
  return v1::PROTOCOL_UNSPECIFIED;
}

absl::StatusOr<nat::Protocol> FromProto(v1::Protocol p) {
  switch (p) {
    case v1::PROTOCOL_TCP:
      return nat::Protocol::kTcp;
    case v1::PROTOCOL_UDP:
      return nat::Protocol::kUdp;
    case v1::PROTOCOL_SCTP:
      return nat::Protocol::kSctp;
    default:
      return absl::InvalidArgumentError(
          "protocol must be PROTOCOL_TCP, PROTOCOL_UDP or PROTOCOL_SCTP");
  }
}

namespace {
// "" / 0.0.0.0 / :: -> nullopt (any address).
absl::StatusOr<std::optional<IpAddress>> ParseHostIp(const std::string& text) {
  if (text.empty()) return std::optional<IpAddress>();
  absl::StatusOr<IpAddress> ip = IpAddress::Parse(text);
  if (!ip.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("host IP: ", ip.status().message()));
  }
  if (ip->IsUnspecified()) return std::optional<IpAddress>();
  return std::optional<IpAddress>(*ip);
}
}  // namespace

absl::StatusOr<PortMapping> ToNatMapping(const v1::PortMapping& m) {
  PortMapping out;
  absl::StatusOr<nat::Protocol> proto = FromProto(m.protocol());
  if (!proto.ok()) return proto.status();
  out.protocol = *proto;
  absl::StatusOr<std::optional<IpAddress>> host = ParseHostIp(m.host_ip());
  if (!host.ok()) return host.status();
  out.host_ip = *host;
  absl::StatusOr<IpAddress> target = IpAddress::Parse(m.target_ip());
  if (!target.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("target IP: ", target.status().message()));
  }
  out.target_ip = *target;
  if (m.host_port() > 65535 || m.target_port() > 65535 ||
      m.port_count() > 65535) {
    return absl::InvalidArgumentError("ports must be 1-65535");
  }
  out.host_port = static_cast<uint16_t>(m.host_port());
  out.target_port = static_cast<uint16_t>(m.target_port());
  out.port_count = m.port_count() == 0 ? 1 : static_cast<uint16_t>(m.port_count());
  if (out.host_ip.has_value() && out.host_ip->family() != out.target_ip.family()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host IP ", out.host_ip->ToString(), " and target IP ",
        out.target_ip.ToString(), " are of different families"));
  }
  // Host port 0 is allocated later; validate the rest with a placeholder.
  PortMapping check = out;
  if (check.host_port == 0) check.host_port = 1;
  if (absl::Status s = check.Validate(); !s.ok()) return s;
  return out;
}

// ---------------------------------------------------------------------------
// AgentCore

AgentCore::AgentCore(std::unique_ptr<Store> store, nat::Backend* backend,
                     nat::ConntrackCleaner* conntrack, CoreOptions options)
    : options_(options),
      backend_name_(backend->name()),
      backend_(backend),
      conntrack_(conntrack),
      started_at_(options.now()),
      store_(std::move(store)),
      allocator_(options.dynamic_lo, options.dynamic_hi) {}

absl::Status AgentCore::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<StoreContents> contents = store_->Load();
  if (!contents.ok()) {
    not_ready_reason_ = std::string(contents.status().message());
    return contents.status();
  }
  next_mapping_id_ = contents->next_mapping_id;
  StoreWrite cleanup;
  if (contents->epoch_start.has_value()) {
    epoch_start_ = absl::FromUnixSeconds(*contents->epoch_start);
  } else {
    // A new (or lost) store: the mapping table starts now.
    epoch_start_ = options_.now();
    cleanup.epoch_start = absl::ToUnixSeconds(epoch_start_);
  }
  absl::Time now = options_.now();
  for (const v1::PortMapping& proto : contents->mappings) {
    if (proto.has_expires_at() && FromTimestamp(proto.expires_at()) <= now) {
      cleanup.delete_mappings.push_back(proto.id());  // ran out while down
      continue;
    }
    absl::StatusOr<PortMapping> m = ToNatMapping(proto);
    absl::Status s = m.status();
    if (s.ok()) {
      s = allocator_.Reserve(PortScope::Of(*m), m->host_port, m->port_count,
                             MappingHolder(proto));
    }
    if (!s.ok()) {
      not_ready_reason_ = absl::StrCat("stored mapping ", proto.id(),
                                       " cannot be restored: ", s.message());
      return absl::FailedPreconditionError(not_ready_reason_);
    }
    mappings_[proto.id()] = MappingRecord{proto, *m};
    if (IsLease(proto)) IndexLease(proto, *m);
  }
  for (auto& [id, m] : mappings_) {
    if (IsLease(m.proto)) HoldCompanion(m.proto, m.nat);
  }
  if (absl::Status s = store_->Commit(cleanup); !s.ok()) {
    not_ready_reason_ = std::string(s.message());
    return s;
  }
  for (const v1::Attachment& a : contents->attachments) {
    AttachmentRecord rec;
    rec.proto = a;
    for (const std::string& addr : a.container_addresses()) {
      if (absl::StatusOr<Prefix> p = Prefix::Parse(addr); p.ok()) {
        rec.networks.push_back(p->Network());
      }
    }
    std::string owner = AttachmentOwnerId(a.key());
    for (auto& [id, m] : mappings_) {
      if (m.proto.owner().kind() == v1::OWNER_KIND_CNI &&
          m.proto.owner().id() == owner) {
        rec.mapping_ids.push_back(id);
      }
    }
    network_refs_.Count(rec, 1);
    attachments_[owner] = std::move(rec);
  }
  absl::StatusOr<nat::SyncReport> report = nat::Sync(*backend_, DesiredLocked());
  if (!report.ok()) {
    not_ready_reason_ =
        absl::StrCat("kernel sync failed: ", report.status().message());
    return report.status();
  }
  ready_ = true;
  not_ready_reason_.clear();
  return absl::OkStatus();
}

absl::Status AgentCore::ReadyOrError() const {
  if (ready_) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("agent not ready: ", not_ready_reason_));
}

std::string AgentCore::NewMappingId() {
  return absl::StrCat("m-", next_mapping_id_++);
}

void AgentCore::NetworkRefs::Count(const AttachmentRecord& rec, int delta) {
  auto bump = [delta](auto& map, const auto& key) {
    if ((map[key] += delta) <= 0) map.erase(key);
  };
  const v1::AttachmentOptions& o = rec.proto.options();
  for (const Prefix& p : rec.networks) {
    if (o.masquerade()) bump(masquerade, p);
    if (o.hairpin()) bump(hairpin, p);
  }
  if (o.localhost() && !rec.proto.host_interface().empty()) {
    bump(interfaces, rec.proto.host_interface());
  }
}

void AgentCore::NetworkRefs::Fill(nat::RuleSet* rules) const {
  std::set<Prefix> m, h;
  for (const auto& [p, n] : masquerade) m.insert(p);
  for (const auto& [p, n] : hairpin) h.insert(p);
  rules->masquerade = nat::CoalescePrefixes(m);
  rules->hairpin = nat::CoalescePrefixes(h);
  rules->localhost_interfaces.clear();
  for (const auto& [i, n] : interfaces) rules->localhost_interfaces.insert(i);
}

nat::RuleSet AgentCore::Desired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return DesiredLocked();
}

nat::RuleSet AgentCore::DesiredLocked() const {
  nat::RuleSet r;
  for (const auto& [id, m] : mappings_) {
    for (const nat::DnatElement& e : m.nat.ToElements()) r.dnat.insert(e);
  }
  network_refs_.Fill(&r);
  return r;
}

Batch AgentCore::NetworkBatch(const AttachmentRecord& rec, int delta,
                              NetworkRefs* after) const {
  nat::RuleSet before_rules, after_rules;
  network_refs_.Fill(&before_rules);
  *after = network_refs_;
  after->Count(rec, delta);
  after->Fill(&after_rules);
  return nat::Diff(before_rules, after_rules);
}

absl::Status AgentCore::ReservePorts(PortMapping& m, const std::string& holder) {
  if (m.host_port == 0) {
    absl::StatusOr<uint16_t> port =
        allocator_.Allocate(PortScope::Of(m), m.port_count, holder);
    if (!port.ok()) return port.status();
    m.host_port = *port;
    if (m.target_port == 0) m.target_port = *port;
    return absl::OkStatus();
  }
  return allocator_.Reserve(PortScope::Of(m), m.host_port, m.port_count,
                            holder);
}

absl::StatusOr<uint16_t> AgentCore::FreeInFamilies(const PortMapping& m,
                                                    const std::vector<Family>& others) {
  // Allocate in m's family, keep the first port free in the others too.
  std::vector<uint16_t> tried;
  absl::StatusOr<uint16_t> found = absl::ResourceExhaustedError(
      absl::StrCat("no host port free in every address family of ", m.ToString()));
  for (int attempt = 0; attempt < 64; ++attempt) {
    absl::StatusOr<uint16_t> p = allocator_.Allocate(PortScope::Of(m), m.port_count, "probe");
    if (!p.ok()) break;
    tried.push_back(*p);
    bool free = true;
    for (Family f : others) {
      PortScope s{m.protocol, f, std::nullopt};
      for (int i = 0; i < m.port_count && free; ++i) {
        free = !allocator_.ConflictingHolder(s, *p + i).has_value();
      }
    }
    if (free) {
      found = *p;
      break;
    }
  }
  for (uint16_t p : tried) allocator_.Release(PortScope::Of(m), p, m.port_count);
  return found;
}

void AgentCore::ReleasePorts(const PortMapping& m) {
  allocator_.Release(PortScope::Of(m), m.host_port, m.port_count);
}

absl::Status AgentCore::Realize(const StoreWrite& write, const StoreWrite& undo,
                                const Batch& batch) {
  if (absl::Status s = store_->Commit(write); !s.ok()) return s;
  absl::Status applied = backend_->Apply(batch);
  if (applied.ok()) return applied;
  if (absl::Status u = store_->Commit(undo); !u.ok()) {
    // The store now holds what the kernel refused and memory does not:
    // refuse every change until a restart reloads the store (the truth)
    // and syncs the kernel to it.
    ready_ = false;
    not_ready_reason_ = absl::StrCat(
        "the kernel refused a change (", applied.message(),
        ") and undoing its store write failed (", u.message(),
        "); restart the agent to resync from the store");
    return absl::InternalError(not_ready_reason_);
  }
  return applied;
}

void AgentCore::Forget(const PortMapping& m) {
  if (conntrack_ == nullptr || m.protocol == nat::Protocol::kTcp) return;
  // Datagram flows keep their translation (or their lack of one) for as
  // long as the client keeps sending; drop them so the next packet is
  // translated afresh.
  conntrack_
      ->ForgetHostPorts(m.family(), m.protocol, m.host_ip, m.host_port,
                        m.last_host_port())
      .IgnoreError();
}

void AgentCore::Publish(v1::MappingEvent::Type type, const v1::PortMapping& m) {
  for (const Subscriber& s : subscribers_) {
    if (!OwnerMatches(m, s.kind, s.owner_id)) continue;
    v1::MappingEvent e;
    e.set_type(type);
    *e.mutable_mapping() = m;
    s.queue->Push(std::move(e));
  }
}

absl::StatusOr<v1::PortMapping> AgentCore::AddMappingLocked(
    v1::PortMapping proto, PortMapping nat_mapping, StoreWrite* write,
    Batch* batch) {
  // The id first: the allocator names the holder by it.
  int64_t id_mark = next_mapping_id_;
  proto.set_id(NewMappingId());
  if (absl::Status s = ReservePorts(nat_mapping, MappingHolder(proto)); !s.ok()) {
    next_mapping_id_ = id_mark;
    return s;
  }
  proto.set_host_port(nat_mapping.host_port);
  proto.set_target_port(nat_mapping.target_port);
  proto.set_port_count(nat_mapping.port_count);
  *proto.mutable_created_at() = ToTimestamp(options_.now());
  write->put_mappings.push_back(proto);
  for (const nat::DnatElement& e : nat_mapping.ToElements()) {
    batch->add.dnat.insert(e);
  }
  return proto;
}

absl::StatusOr<v1::AttachResponse> AgentCore::Attach(
    const v1::Attachment& attachment) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  const v1::AttachmentKey& key = attachment.key();
  if (key.container_id().empty() || key.ifname().empty()) {
    return absl::InvalidArgumentError(
        "attachment key needs a container id and an interface name");
  }
  if (key.container_id().size() > kMaxIdLength ||
      key.network_name().size() > kMaxIdLength) {
    return absl::InvalidArgumentError("container id or network name too long");
  }
  std::string owner = AttachmentOwnerId(key);
  if (auto it = attachments_.find(owner); it != attachments_.end()) {
    if (google::protobuf::util::MessageDifferencer::Equals(it->second.proto,
                                                           attachment)) {
      v1::AttachResponse response;
      for (const std::string& id : it->second.mapping_ids) {
        *response.add_mappings() = mappings_.at(id).proto;
      }
      return response;
    }
    return absl::AlreadyExistsError(absl::StrCat(
        AttachmentHolder(key),
        " is already attached with a different configuration; detach it "
        "first"));
  }

  AttachmentRecord rec;
  rec.proto = attachment;
  std::vector<IpAddress> addresses;
  for (const std::string& text : attachment.container_addresses()) {
    absl::StatusOr<Prefix> p = Prefix::Parse(text);
    if (!p.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("container address: ", p.status().message()));
    }
    addresses.push_back(p->address);
    rec.networks.push_back(p->Network());
  }
  if (attachment.options().localhost() && attachment.host_interface().empty()) {
    return absl::InvalidArgumentError(
        "localhost access needs the host-side interface (host_interface)");
  }

  // Expand each requested mapping to one per matching container address.
  std::vector<std::pair<v1::PortMapping, PortMapping>> planned;
  for (int i = 0; i < attachment.port_mappings_size(); ++i) {
    const v1::PortMappingRequest& r = attachment.port_mappings(i);
    std::string where = absl::StrCat("port mapping ", i + 1, " (host port ",
                                     r.host_port(), ", container port ",
                                     r.container_port(), ")");
    if (r.container_port() == 0 || r.container_port() > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": container port must be 1-65535"));
    }
    absl::StatusOr<std::optional<IpAddress>> host_ip = ParseHostIp(r.host_ip());
    if (!host_ip.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", host_ip.status().message()));
    }
    bool any_family = false;
    std::set<Family> families;
    for (const IpAddress& addr : addresses) {
      if (host_ip->has_value() && (*host_ip)->family() != addr.family()) continue;
      // One mapping per family: to the first address of that family.
      if (!families.insert(addr.family()).second) continue;
      any_family = true;
      v1::PortMapping proto;
      proto.mutable_owner()->set_kind(v1::OWNER_KIND_CNI);
      proto.mutable_owner()->set_id(owner);
      proto.set_protocol(r.protocol() == v1::PROTOCOL_UNSPECIFIED
                             ? v1::PROTOCOL_TCP
                             : r.protocol());
      proto.set_host_ip(host_ip->has_value() ? (*host_ip)->ToString() : "");
      proto.set_host_port(r.host_port());
      proto.set_port_count(r.port_count());
      proto.set_target_ip(addr.ToString());
      proto.set_target_port(r.container_port());
      proto.set_description(where);
      absl::StatusOr<PortMapping> m = ToNatMapping(proto);
      if (!m.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": ", m.status().message()));
      }
      planned.emplace_back(proto, *m);
    }
    if (!any_family) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": host IP ", r.host_ip(),
          " has no container address of its family"));
    }
  }

  // Reserve, all or nothing.
  StoreWrite write;
  Batch batch;
  std::vector<PortMapping> reserved;
  int64_t id_mark = next_mapping_id_;
  auto unreserve = [&] {
    for (const PortMapping& m : reserved) ReleasePorts(m);
    next_mapping_id_ = id_mark;
  };
  std::vector<std::pair<v1::PortMapping, PortMapping>> made;
  for (auto& [proto, m] : planned) {
    // A dual-stack mapping with host port 0 takes the same port in both
    // families: the first family allocates one that is free in the other
    // too.
    if (m.host_port == 0) {
      bool paired = false;
      for (const auto& [p2, m2] : made) {
        if (p2.description() == proto.description()) {
          m.host_port = m2.host_port;
          paired = true;
        }
      }
      if (!paired) {
        std::vector<Family> others;
        for (const auto& [p3, m3] : planned) {
          if (p3.description() == proto.description() && m3.family() != m.family()) {
            others.push_back(m3.family());
          }
        }
        if (!others.empty()) {
          absl::StatusOr<uint16_t> port = FreeInFamilies(m, others);
          if (!port.ok()) {
            unreserve();
            return port.status();
          }
          m.host_port = *port;
        }
      }
    }
    PortMapping reserving = m;
    absl::StatusOr<v1::PortMapping> added =
        AddMappingLocked(proto, reserving, &write, &batch);
    if (!added.ok()) {
      unreserve();
      return added.status();
    }
    PortMapping final_mapping = *ToNatMapping(*added);
    reserved.push_back(final_mapping);
    rec.mapping_ids.push_back(added->id());
    made.emplace_back(*added, final_mapping);
  }
  write.put_attachments.push_back(attachment);
  write.next_mapping_id = next_mapping_id_;
  NetworkRefs refs_after;
  nat::Merge(&batch, NetworkBatch(rec, 1, &refs_after));

  StoreWrite undo;
  undo.delete_attachments.push_back(key);
  for (const auto& [p, m] : made) undo.delete_mappings.push_back(p.id());
  if (absl::Status s = Realize(write, undo, batch); !s.ok()) {
    unreserve();
    return s;
  }
  v1::AttachResponse response;
  for (auto& [proto, m] : made) {
    Forget(m);
    mappings_[proto.id()] = MappingRecord{proto, m};
    Publish(v1::MappingEvent::TYPE_ADDED, proto);
    *response.add_mappings() = proto;
  }
  network_refs_ = std::move(refs_after);
  attachments_[owner] = std::move(rec);
  return response;
}

absl::StatusOr<bool> AgentCore::Detach(const v1::AttachmentKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  return DetachLocked(key);
}

absl::StatusOr<bool> AgentCore::DetachLocked(const v1::AttachmentKey& key) {
  std::string owner = AttachmentOwnerId(key);
  auto it = attachments_.find(owner);
  if (it == attachments_.end()) return false;
  const AttachmentRecord& rec = it->second;
  StoreWrite write, undo;
  Batch batch;
  write.delete_attachments.push_back(key);
  undo.put_attachments.push_back(rec.proto);
  for (const std::string& id : rec.mapping_ids) {
    const MappingRecord& m = mappings_.at(id);
    write.delete_mappings.push_back(id);
    undo.put_mappings.push_back(m.proto);
    for (const nat::DnatElement& e : m.nat.ToElements()) batch.remove.dnat.insert(e);
  }
  NetworkRefs refs_after;
  nat::Merge(&batch, NetworkBatch(rec, -1, &refs_after));
  if (absl::Status s = Realize(write, undo, batch); !s.ok()) return s;
  for (const std::string& id : rec.mapping_ids) DropMappingLocked(id);
  network_refs_ = std::move(refs_after);
  attachments_.erase(it);
  return true;
}

absl::Status AgentCore::Check(const v1::AttachmentKey& key) {
  nat::RuleSet needed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = ReadyOrError(); !s.ok()) return s;
    auto it = attachments_.find(AttachmentOwnerId(key));
    if (it == attachments_.end()) {
      return absl::NotFoundError(
          absl::StrCat(AttachmentHolder(key), " is not attached"));
    }
    for (const std::string& id : it->second.mapping_ids) {
      for (const nat::DnatElement& e : mappings_.at(id).nat.ToElements()) {
        needed.dnat.insert(e);
      }
    }
    nat::RuleSet all = DesiredLocked();
    const v1::AttachmentOptions& o = it->second.proto.options();
    for (const Prefix& p : it->second.networks) {
      for (const Prefix& q : all.masquerade) {
        if (o.masquerade() && q.Contains(p.address)) needed.masquerade.insert(q);
      }
      for (const Prefix& q : all.hairpin) {
        if (o.hairpin() && q.Contains(p.address)) needed.hairpin.insert(q);
      }
    }
    if (o.localhost()) {
      needed.localhost_interfaces.insert(it->second.proto.host_interface());
    }
    // Read the kernel under the lock, so that no concurrent change of ours
    // makes the comparison lie.
    absl::StatusOr<nat::KernelState> state = backend_->Read();
    if (!state.ok()) return state.status();
    if (!state->table_present) {
      return absl::FailedPreconditionError(
          "the kernel has no table inet fabric_nat");
    }
    std::vector<std::string> missing;
    if (!state->layout_intact) missing.push_back(state->problem);
    nat::Batch diff = nat::Diff(state->rules, needed);
    for (const auto& e : diff.add.dnat) missing.push_back(absl::StrCat("dnat ", e.ToString()));
    for (const auto& p : diff.add.masquerade) {
      missing.push_back(absl::StrCat("masquerade ", p.ToString()));
    }
    for (const auto& p : diff.add.hairpin) {
      missing.push_back(absl::StrCat("hairpin ", p.ToString()));
    }
    for (const auto& i : diff.add.localhost_interfaces) {
      missing.push_back(absl::StrCat("localhost access on ", i));
    }
    if (!missing.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          AttachmentHolder(key), ": missing from the kernel: ",
          absl::StrJoin(missing, "; ")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::AttachmentKey>> AgentCore::GarbageCollect(
    const std::string& network, const std::vector<v1::AttachmentKey>& valid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  std::set<std::string> keep;
  for (const v1::AttachmentKey& k : valid) {
    v1::AttachmentKey full = k;
    full.set_network_name(network);
    keep.insert(AttachmentOwnerId(full));
  }
  std::vector<v1::AttachmentKey> stale;
  for (const auto& [owner, rec] : attachments_) {
    if (rec.proto.key().network_name() == network && keep.count(owner) == 0) {
      stale.push_back(rec.proto.key());
    }
  }
  std::vector<v1::AttachmentKey> removed;
  std::vector<std::string> errors;
  for (const v1::AttachmentKey& k : stale) {
    absl::StatusOr<bool> r = DetachLocked(k);
    if (r.ok()) {
      removed.push_back(k);
    } else {
      errors.push_back(std::string(r.status().message()));
    }
  }
  if (!errors.empty()) {
    return absl::InternalError(absl::StrCat(
        "garbage collection removed ", removed.size(), " attachment(s) and failed on ",
        errors.size(), ": ", absl::StrJoin(errors, "; ")));
  }
  return removed;
}

absl::StatusOr<v1::PortMapping> AgentCore::CreateMapping(
    const v1::PortMapping& request) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  if (request.owner().kind() != v1::OWNER_KIND_API &&
      request.owner().kind() != v1::OWNER_KIND_UPNP) {
    return absl::InvalidArgumentError(
        "CreateMapping takes owner kind API (or UPNP); CNI mappings come with "
        "attachments and NAT-PMP/PCP leases from their front-end");
  }
  if (request.owner().id().empty() || request.owner().id().size() > kMaxIdLength ||
      request.description().size() > kMaxIdLength) {
    return absl::InvalidArgumentError(
        "owner id must be 1-256 bytes and description at most 256");
  }
  absl::StatusOr<PortMapping> m = ToNatMapping(request);
  if (!m.ok()) return m.status();
  v1::PortMapping proto = request;
  proto.clear_created_at();
  StoreWrite write;
  Batch batch;
  int64_t id_mark = next_mapping_id_;
  absl::StatusOr<v1::PortMapping> added = AddMappingLocked(proto, *m, &write, &batch);
  if (!added.ok()) return added.status();
  PortMapping final_mapping = *ToNatMapping(*added);
  write.next_mapping_id = next_mapping_id_;
  StoreWrite undo;
  undo.delete_mappings.push_back(added->id());
  if (absl::Status s = Realize(write, undo, batch); !s.ok()) {
    ReleasePorts(final_mapping);
    next_mapping_id_ = id_mark;
    return s;
  }
  Forget(final_mapping);
  mappings_[added->id()] = MappingRecord{*added, final_mapping};
  Publish(v1::MappingEvent::TYPE_ADDED, *added);
  return *added;
}

absl::Status AgentCore::DeleteMapping(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  auto it = mappings_.find(id);
  if (it == mappings_.end()) {
    return absl::NotFoundError(absl::StrCat("no mapping ", id));
  }
  if (it->second.proto.owner().kind() == v1::OWNER_KIND_CNI) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mapping ", id, " belongs to container attachment ",
        it->second.proto.owner().id(), "; it goes when the container is deleted"));
  }
  return RemoveMappingsLocked({id});
}

std::vector<v1::PortMapping> AgentCore::ListMappings(
    v1::OwnerKind kind, const std::string& owner_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::PortMapping> out;
  for (const auto& [id, m] : mappings_) {
    if (OwnerMatches(m.proto, kind, owner_id)) out.push_back(m.proto);
  }
  return out;
}

std::shared_ptr<EventQueue> AgentCore::Subscribe(v1::OwnerKind kind,
                                                 const std::string& owner_id) {
  auto queue = std::make_shared<EventQueue>();
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, m] : mappings_) {
    if (!OwnerMatches(m.proto, kind, owner_id)) continue;
    v1::MappingEvent e;
    e.set_type(v1::MappingEvent::TYPE_ADDED);
    *e.mutable_mapping() = m.proto;
    queue->Push(std::move(e));
  }
  v1::MappingEvent synced;
  synced.set_type(v1::MappingEvent::TYPE_SYNCED);
  queue->Push(std::move(synced));
  subscribers_.push_back(Subscriber{kind, owner_id, queue});
  return queue;
}

void AgentCore::Unsubscribe(const std::shared_ptr<EventQueue>& queue) {
  queue->Close();
  std::lock_guard<std::mutex> lock(mu_);
  subscribers_.erase(
      std::remove_if(subscribers_.begin(), subscribers_.end(),
                     [&](const Subscriber& s) { return s.queue == queue; }),
      subscribers_.end());
}

absl::StatusOr<nat::SyncReport> AgentCore::Resync() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<nat::SyncReport> report = nat::Sync(*backend_, DesiredLocked());
  if (report.ok() && report->action != nat::SyncReport::Action::kNone) {
    ++repairs_;
    last_repair_ = absl::Now();
  }
  return report;
}

// ---------------------------------------------------------------------------
// NAT-PMP / PCP leases

AgentCore::LeaseKey AgentCore::KeyOf(const v1::PortMapping& m) {
  return LeaseKey(m.target_ip(), FromProto(m.protocol()).value_or(nat::Protocol::kTcp),
                  static_cast<uint16_t>(m.target_port()));
}

void AgentCore::IndexLease(const v1::PortMapping& m, const PortMapping&) {
  leases_[KeyOf(m)] = m.id();
  ++leases_per_client_[m.target_ip()];
}

void AgentCore::UnindexLease(const v1::PortMapping& m) {
  auto it = leases_.find(KeyOf(m));
  if (it == leases_.end() || it->second != m.id()) return;
  leases_.erase(it);
  if (--leases_per_client_[m.target_ip()] <= 0) leases_per_client_.erase(m.target_ip());
}

void AgentCore::HoldCompanion(const v1::PortMapping& m, const PortMapping& n) {
  if (n.protocol == nat::Protocol::kSctp) return;
  PortScope other = PortScope::Of(n);
  other.protocol = n.protocol == nat::Protocol::kTcp ? nat::Protocol::kUdp
                                                     : nat::Protocol::kTcp;
  if (allocator_.ConflictingHolder(other, n.host_port).has_value()) return;
  if (allocator_.Reserve(other, n.host_port, 1,
                         absl::StrCat(MappingHolder(m), " (companion port)"))
          .ok()) {
    companions_[m.id()] = other;
  }
}

void AgentCore::ReleaseCompanion(const std::string& id) {
  auto it = companions_.find(id);
  if (it == companions_.end()) return;
  allocator_.Release(it->second, mappings_.at(id).nat.host_port, 1);
  companions_.erase(it);
}

absl::Status AgentCore::RemoveMappingsLocked(const std::vector<std::string>& ids) {
  StoreWrite write, undo;
  Batch batch;
  for (const std::string& id : ids) {
    const MappingRecord& m = mappings_.at(id);
    write.delete_mappings.push_back(id);
    undo.put_mappings.push_back(m.proto);
    for (const nat::DnatElement& e : m.nat.ToElements()) batch.remove.dnat.insert(e);
  }
  if (absl::Status s = Realize(write, undo, batch); !s.ok()) return s;
  for (const std::string& id : ids) DropMappingLocked(id);
  return absl::OkStatus();
}

void AgentCore::DropMappingLocked(const std::string& id) {
  MappingRecord& m = mappings_.at(id);
  ReleaseCompanion(id);
  ReleasePorts(m.nat);
  Forget(m.nat);
  if (IsLease(m.proto)) UnindexLease(m.proto);
  Publish(v1::MappingEvent::TYPE_REMOVED, m.proto);
  mappings_.erase(id);
}

LeaseResult AgentCore::DeleteLeasesLocked(const LeaseRequest& r) {
  std::vector<std::string> ids;
  std::string client = r.client.ToString();
  auto matches = [&](const v1::PortMapping& m) {
    if (m.target_ip() != client) return false;
    if (r.all_protocols) return true;
    return FromProto(m.protocol()).value_or(nat::Protocol::kTcp) == r.protocol &&
           (r.internal_port == 0 || m.target_port() == r.internal_port);
  };
  if (r.internal_port != 0 && !r.all_protocols) {
    auto it = leases_.find(LeaseKey(client, r.protocol, r.internal_port));
    if (it != leases_.end()) ids.push_back(it->second);
  } else {
    for (const auto& [key, id] : leases_) {
      if (matches(mappings_.at(id).proto)) ids.push_back(id);
    }
  }
  for (const std::string& id : ids) {
    const v1::PortMapping& m = mappings_.at(id).proto;
    if (r.kind == v1::OWNER_KIND_PCP && m.owner().kind() == v1::OWNER_KIND_PCP &&
        m.pcp_nonce() != r.nonce) {
      return {LeaseOutcome::kNotAuthorized, 0, 0,
              absl::StrCat("nonce does not match lease ", id)};
    }
  }
  if (ids.empty()) return {LeaseOutcome::kOk, 0, 0, "nothing to delete"};
  if (absl::Status s = RemoveMappingsLocked(ids); !s.ok()) {
    return {LeaseOutcome::kNoResources, 0, 0, std::string(s.message())};
  }
  return {LeaseOutcome::kOk, 0, 0, absl::StrCat("deleted ", ids.size())};
}

LeaseResult AgentCore::Lease(const LeaseRequest& r, const LeasePolicy& policy) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ready_) return {LeaseOutcome::kNetworkFailure, 0, 0, not_ready_reason_};
  if (r.lifetime == 0) return DeleteLeasesLocked(r);
  if (!external_address_.has_value()) {
    return {LeaseOutcome::kNetworkFailure, 0, 0, "no external address"};
  }
  absl::Time now = options_.now();
  uint32_t lifetime = std::min(r.lifetime, policy.max_lifetime);
  std::string client = r.client.ToString();

  // A repeated request refreshes the lease and keeps its port.
  if (auto it = leases_.find(LeaseKey(client, r.protocol, r.internal_port));
      it != leases_.end()) {
    MappingRecord& rec = mappings_.at(it->second);
    if (r.kind == v1::OWNER_KIND_PCP && rec.proto.owner().kind() == v1::OWNER_KIND_PCP &&
        rec.proto.pcp_nonce() != r.nonce) {
      return {LeaseOutcome::kNotAuthorized, 0, 0,
              absl::StrCat("nonce does not match lease ", rec.proto.id())};
    }
    if (r.prefer_failure && r.suggested_port != 0 &&
        r.suggested_port != rec.nat.host_port) {
      return {LeaseOutcome::kCannotProvide, 0, 0, "lease exists on another port"};
    }
    v1::PortMapping updated = rec.proto;
    *updated.mutable_expires_at() = ToTimestamp(now + absl::Seconds(lifetime));
    StoreWrite write;
    write.put_mappings.push_back(updated);
    if (absl::Status s = store_->Commit(write); !s.ok()) {
      return {LeaseOutcome::kNoResources, 0, 0, std::string(s.message())};
    }
    rec.proto = updated;
    Publish(v1::MappingEvent::TYPE_UPDATED, updated);
    return {LeaseOutcome::kOk, rec.nat.host_port, lifetime, "refreshed"};
  }

  auto count = leases_per_client_.find(client);
  if (count != leases_per_client_.end() && count->second >= policy.max_per_client) {
    return {LeaseOutcome::kQuota, 0, 0,
            absl::StrCat(client, " already holds ", count->second, " leases")};
  }

  v1::PortMapping proto;
  proto.mutable_owner()->set_kind(r.kind);
  proto.mutable_owner()->set_id(client);
  proto.set_protocol(ToProto(r.protocol));
  proto.set_host_ip(external_address_->ToString());
  proto.set_target_ip(client);
  proto.set_target_port(r.internal_port);
  proto.set_port_count(1);
  proto.set_description(r.kind == v1::OWNER_KIND_PCP ? "PCP MAP" : "NAT-PMP");
  if (r.kind == v1::OWNER_KIND_PCP) proto.set_pcp_nonce(r.nonce);
  *proto.mutable_expires_at() = ToTimestamp(now + absl::Seconds(lifetime));
  std::string holder = MappingHolder(proto);

  PortMapping nat_mapping;
  nat_mapping.protocol = r.protocol;
  nat_mapping.host_ip = external_address_;
  nat_mapping.target_ip = r.client;
  nat_mapping.target_port = r.internal_port;
  PortScope scope = PortScope::Of(nat_mapping);

  // The client's own companion hold on the suggested port is no obstacle:
  // it becomes a real lease.
  uint16_t suggested = r.suggested_port;
  bool in_range = suggested >= policy.port_lo && suggested <= policy.port_hi;
  std::string freed_companion;  // re-held if this request fails
  if (suggested != 0) {
    for (auto& [id, comp] : companions_) {
      const MappingRecord& other = mappings_.at(id);
      if (other.proto.target_ip() == client && other.nat.host_port == suggested &&
          comp.protocol == r.protocol) {
        freed_companion = id;
        break;
      }
    }
    if (!freed_companion.empty()) ReleaseCompanion(freed_companion);
  }
  auto fail = [&](LeaseResult result) {
    if (!freed_companion.empty()) {
      const MappingRecord& other = mappings_.at(freed_companion);
      HoldCompanion(other.proto, other.nat);
    }
    return result;
  };
  if (r.prefer_failure && suggested != 0 &&
      (!in_range || allocator_.ConflictingHolder(scope, suggested).has_value())) {
    std::optional<std::string> holder_of = allocator_.ConflictingHolder(scope, suggested);
    return fail({LeaseOutcome::kCannotProvide, 0, 0,
                 holder_of ? absl::StrCat("port ", suggested, " is held by ", *holder_of)
                           : absl::StrCat("port ", suggested, " is outside ",
                                          policy.port_lo, "-", policy.port_hi)});
  }
  uint16_t start = in_range ? suggested
                            : (r.internal_port >= policy.port_lo &&
                                       r.internal_port <= policy.port_hi
                                   ? r.internal_port
                                   : policy.port_lo);
  absl::StatusOr<uint16_t> port =
      allocator_.AllocateNear(scope, start, 1, policy.port_lo, policy.port_hi, holder);
  if (!port.ok()) {
    return fail({LeaseOutcome::kNoResources, 0, 0, std::string(port.status().message())});
  }
  nat_mapping.host_port = *port;
  proto.set_host_port(*port);
  int64_t id_mark = next_mapping_id_;
  proto.set_id(NewMappingId());
  *proto.mutable_created_at() = ToTimestamp(now);
  StoreWrite write, undo;
  write.put_mappings.push_back(proto);
  write.next_mapping_id = next_mapping_id_;
  undo.delete_mappings.push_back(proto.id());
  Batch batch;
  for (const nat::DnatElement& e : nat_mapping.ToElements()) batch.add.dnat.insert(e);
  if (absl::Status s = Realize(write, undo, batch); !s.ok()) {
    ReleasePorts(nat_mapping);
    next_mapping_id_ = id_mark;
    return fail({LeaseOutcome::kNoResources, 0, 0, std::string(s.message())});
  }
  mappings_[proto.id()] = MappingRecord{proto, nat_mapping};
  IndexLease(proto, nat_mapping);
  HoldCompanion(proto, nat_mapping);
  Forget(nat_mapping);
  Publish(v1::MappingEvent::TYPE_ADDED, proto);
  return {LeaseOutcome::kOk, *port, lifetime, absl::StrCat("new lease ", proto.id())};
}

int AgentCore::ExpireLeases() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ready_) return 0;
  if (leases_need_move_) MoveLeasesLocked();
  absl::Time now = options_.now();
  std::vector<std::string> expired;
  for (const auto& [id, m] : mappings_) {
    if (m.proto.has_expires_at() && FromTimestamp(m.proto.expires_at()) <= now) {
      expired.push_back(id);
    }
  }
  if (expired.empty() || !RemoveMappingsLocked(expired).ok()) return 0;
  return static_cast<int>(expired.size());
}

void AgentCore::SetExternalAddress(std::optional<IpAddress> address) {
  std::lock_guard<std::mutex> lock(mu_);
  if (address == external_address_) return;
  external_address_ = address;
  MoveLeasesLocked();
}

void AgentCore::MoveLeasesLocked() {
  if (!external_address_.has_value() || !ready_) return;
  const IpAddress& address = *external_address_;
  // Take every lease that sits on another address off its old port, then
  // onto the new address; a lease whose port is taken there is dropped.
  std::vector<std::string> ids;
  for (const auto& [id, m] : mappings_) {
    if (IsLease(m.proto) && m.nat.host_ip != address) ids.push_back(id);
  }
  if (ids.empty()) return;
  StoreWrite write, undo;
  Batch batch;
  std::vector<std::pair<std::string, PortMapping>> moved;
  std::vector<std::string> dropped;
  for (const std::string& id : ids) {
    MappingRecord& m = mappings_.at(id);
    ReleaseCompanion(id);
    ReleasePorts(m.nat);
    PortMapping n = m.nat;
    n.host_ip = address;
    if (!allocator_.Reserve(PortScope::Of(n), n.host_port, 1, MappingHolder(m.proto)).ok()) {
      allocator_.Reserve(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m.proto))
          .IgnoreError();  // it held this a moment ago
      dropped.push_back(id);
      continue;
    }
    v1::PortMapping p = m.proto;
    p.set_host_ip(address.ToString());
    write.put_mappings.push_back(p);
    undo.put_mappings.push_back(m.proto);
    for (const auto& e : m.nat.ToElements()) batch.remove.dnat.insert(e);
    for (const auto& e : n.ToElements()) batch.add.dnat.insert(e);
    moved.emplace_back(id, n);
  }
  if (!moved.empty() && !Realize(write, undo, batch).ok()) {
    // Put the ports back; the next expiry tick tries again.
    for (auto& [id, n] : moved) {
      MappingRecord& m = mappings_.at(id);
      allocator_.Release(PortScope::Of(n), n.host_port, 1);
      allocator_.Reserve(PortScope::Of(m.nat), m.nat.host_port, 1, MappingHolder(m.proto))
          .IgnoreError();
      HoldCompanion(m.proto, m.nat);
    }
    leases_need_move_ = true;
    return;
  }
  leases_need_move_ = false;
  for (auto& [id, n] : moved) {
    MappingRecord& m = mappings_.at(id);
    m.nat = n;
    m.proto.set_host_ip(address.ToString());
    HoldCompanion(m.proto, m.nat);
    Forget(n);
    Publish(v1::MappingEvent::TYPE_UPDATED, m.proto);
  }
  if (!dropped.empty() && !RemoveMappingsLocked(dropped).ok()) leases_need_move_ = true;
}

std::optional<IpAddress> AgentCore::external_address() const {
  std::lock_guard<std::mutex> lock(mu_);
  return external_address_;
}

uint32_t AgentCore::EpochSeconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t s = absl::ToInt64Seconds(options_.now() - epoch_start_);
  return s < 0 ? 0 : static_cast<uint32_t>(s);
}

absl::StatusOr<std::vector<v1::AttachmentKey>> AgentCore::SweepDeadNamespaces() {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = ReadyOrError(); !s.ok()) return s;
  std::vector<v1::AttachmentKey> dead;
  for (const auto& [owner, rec] : attachments_) {
    const std::string& path = rec.proto.netns_path();
    struct stat st;
    if (!path.empty() && stat(path.c_str(), &st) != 0 && errno == ENOENT) {
      dead.push_back(rec.proto.key());
    }
  }
  std::vector<v1::AttachmentKey> removed;
  for (const v1::AttachmentKey& k : dead) {
    if (DetachLocked(k).ok()) removed.push_back(k);
  }
  return removed;
}

absl::StatusOr<v1::BackupResponse> AgentCore::Backup(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("backup path must be absolute, not \"", path, "\""));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = store_->Backup(path); !s.ok()) return s;
  v1::BackupResponse r;
  r.set_attachments(static_cast<uint32_t>(attachments_.size()));
  r.set_mappings(static_cast<uint32_t>(mappings_.size()));
  return r;
}

v1::DiagnoseResponse AgentCore::Diagnose() const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::DiagnoseResponse r;
  if (!ready_) r.add_findings(absl::StrCat("agent not ready: ", not_ready_reason_));
  nat::RuleSet desired = DesiredLocked();
  absl::StatusOr<nat::KernelState> state = backend_->Read();
  if (!state.ok()) {
    r.add_findings(absl::StrCat("cannot read the kernel: ", state.status().message()));
  } else if (!state->table_present) {
    r.add_findings(absl::StrCat("the kernel has no table inet fabric_nat (",
                                desired.size(), " entries expected); the agent "
                                "rebuilds it on its next check or event"));
  } else {
    if (!state->layout_intact) {
      r.add_findings(absl::StrCat("table layout damaged: ", state->problem));
    }
    Batch diff = nat::Diff(state->rules, desired);
    auto sample = [](const nat::RuleSet& rs) {
      std::vector<std::string> items;
      for (const auto& e : rs.dnat) items.push_back(e.ToString());
      for (const auto& p : rs.masquerade) items.push_back("masquerade " + p.ToString());
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
    r.add_facts(absl::StrCat("kernel table inet fabric_nat: ", state->rules.size(),
                             " entries, ", desired.size(), " expected"));
  }
  size_t leases = 0;
  for (const auto& [id, m] : mappings_) leases += IsLease(m.proto) ? 1 : 0;
  r.add_facts(absl::StrCat(attachments_.size(), " attachment(s), ", mappings_.size(),
                           " mapping(s), ", leases, " NAT-PMP/PCP lease(s)"));
  r.add_facts(absl::StrCat("host ports held: ", allocator_.held(), "; dynamic range ",
                           allocator_.dynamic_lo(), "-", allocator_.dynamic_hi()));
  r.add_facts(absl::StrCat("external address for leases: ",
                           external_address_ ? external_address_->ToString() : "none"));
  r.add_facts(absl::StrCat("repairs so far: ", repairs_));
  r.set_healthy(r.findings_size() == 0);
  return r;
}

v1::GetStatusResponse AgentCore::Status() const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::GetStatusResponse r;
  r.set_ready(ready_);
  r.set_reason(not_ready_reason_);
  r.set_backend(backend_name_);
  r.set_attachments(static_cast<uint32_t>(attachments_.size()));
  r.set_mappings(static_cast<uint32_t>(mappings_.size()));
  *r.mutable_started_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(started_at_));
  r.set_repairs(repairs_);
  if (last_repair_ != absl::InfinitePast()) {
    *r.mutable_last_repair_at() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
            absl::ToUnixNanos(last_repair_));
  }
  return r;
}

}  // namespace fabric::agent
