#include "agent/owners/cni.h"

#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/core/convert.h"
#include "agent/owners/mappings.h"
#include "google/protobuf/util/message_differencer.h"

namespace fabric::agent::owners {

using nat::Family;
using nat::IpAddress;
using nat::PortMapping;
using nat::PortScope;
using nat::Prefix;

namespace {

// The network part of the batch for adding (delta 1) or removing (-1)
// `rec`; updates the state's counts.
void CountNetwork(Txn& txn, const AttachmentRecord& rec, int delta) {
  nat::RuleSet before, after;
  txn.state().network.Fill(&before);
  txn.state().network.Count(rec, delta);
  txn.state().network.Fill(&after);
  nat::Merge(&txn.batch(), nat::Diff(before, after));
}

// The network of a container address becomes a masquerade and hairpin
// prefix: a /0 (or any prefix wider than a container network could be)
// would masquerade everyone's traffic, and a multicast or broadcast address
// is no container.
absl::Status PlausibleContainerAddress(const Prefix& p) {
  bool v4 = p.address.family() == Family::kIPv4;
  int min_length = v4 ? 8 : 32;
  if (p.length < min_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "container address ", p.ToString(), ": a /", p.length,
        " is no container network (at least /", min_length, ")"));
  }
  const IpAddress& a = p.address;
  bool broadcast = a.IsLimitedBroadcast();
  if (v4 && p.length <= 30) {
    // The network's own broadcast address: every host bit set.
    const uint8_t* b = a.bytes();
    uint32_t ip = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
    uint32_t host_mask = p.length == 0 ? 0xffffffffu : (0xffffffffu >> p.length);
    broadcast = broadcast || (ip & host_mask) == host_mask;
  }
  if (a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || broadcast) {
    return absl::InvalidArgumentError(absl::StrCat(
        "container address ", p.ToString(),
        " must be a unicast address (not unspecified, loopback, multicast or broadcast)"));
  }
  return absl::OkStatus();
}

// A port (run) of m's protocol free in m's family and in `others`: for a
// dual-stack mapping with host port 0, which takes the same port in both.
absl::StatusOr<uint16_t> FreeInFamilies(Txn& txn, const PortMapping& m,
                                        const std::vector<Family>& others) {
  std::vector<uint16_t> tried;
  absl::StatusOr<uint16_t> found = absl::ResourceExhaustedError(
      absl::StrCat("no host port free in every address family of ", m.ToString()));
  for (int attempt = 0; attempt < 64; ++attempt) {
    absl::StatusOr<uint16_t> p = txn.Allocate(PortScope::Of(m), m.port_count, "probe");
    if (!p.ok()) break;
    tried.push_back(*p);
    bool free = true;
    for (Family f : others) {
      PortScope s{m.protocol, f, std::nullopt};
      for (int i = 0; i < m.port_count && free; ++i) {
        free = !txn.allocator().ConflictingHolder(s, *p + i).has_value();
      }
    }
    if (free) {
      found = *p;
      break;
    }
  }
  for (uint16_t p : tried) txn.Release(PortScope::Of(m), p, m.port_count, "probe");
  return found;
}

}  // namespace

absl::StatusOr<v1::AttachResponse> Attach(Txn& txn, const v1::Attachment& attachment,
                                          nat::ConntrackCleaner* ct) {
  const v1::AttachmentKey& key = attachment.key();
  if (absl::Status s = ValidateAttachmentKey(key); !s.ok()) return s;
  if (!attachment.host_interface().empty()) {
    if (absl::Status s = ValidateInterfaceName(attachment.host_interface(), "host interface");
        !s.ok()) {
      return s;
    }
  }
  if (attachment.netns_path().size() > kMaxNetnsPathLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("netns path is longer than ", kMaxNetnsPathLength, " bytes"));
  }
  std::string owner = AttachmentOwnerId(key);
  if (const AttachmentRecord* existing = txn.state().attachments.Find(owner)) {
    if (google::protobuf::util::MessageDifferencer::Equals(existing->proto, attachment)) {
      v1::AttachResponse response;
      for (const std::string& id : existing->mapping_ids) {
        *response.add_mappings() = txn.state().mappings.Find(id)->ToProto();
      }
      txn.Discard();  // nothing changes
      return response;
    }
    return absl::AlreadyExistsError(absl::StrCat(
        AttachmentHolder(key),
        " is already attached with a different configuration; detach it first"));
  }

  AttachmentRecord rec;
  rec.proto = attachment;
  std::vector<IpAddress> addresses;
  for (const std::string& text : attachment.container_addresses()) {
    absl::StatusOr<Prefix> p = Prefix::Parse(text);
    if (!p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("container address: ", p.status().message()));
    }
    if (absl::Status s = PlausibleContainerAddress(*p); !s.ok()) return s;
    addresses.push_back(p->address);
    rec.networks.push_back(p->Network());
  }
  if (const std::string& text = attachment.options().snat_address(); !text.empty()) {
    absl::StatusOr<IpAddress> to = IpAddress::Parse(text);
    if (!to.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("snat address: ", to.status().message()));
    }
    bool family_found = false;
    for (const Prefix& net : rec.networks) {
      if (net.family() != to->family()) continue;
      family_found = true;
      if (absl::Status s = nat::SnatRule{net, *to, ""}.Validate(); !s.ok()) return s;
    }
    if (!family_found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "snat address ", text, " is ", nat::FamilyName(to->family()),
          " but the container has no address of that family"));
    }
  }
  if (attachment.options().localhost() && attachment.host_interface().empty()) {
    return absl::InvalidArgumentError(
        "localhost access needs the host-side interface (host_interface)");
  }
  if (attachment.options().localhost() &&
      (attachment.host_interface() == "all" || attachment.host_interface() == "default")) {
    // route_localnet on "all" would open every interface to 127.0.0.1.
    return absl::InvalidArgumentError(absl::StrCat(
        "localhost access needs a real host interface, not \"", attachment.host_interface(),
        "\""));
  }

  // Expand each requested mapping to one per matching container address.
  std::vector<std::pair<v1::PortMapping, PortMapping>> planned;
  for (int i = 0; i < attachment.port_mappings_size(); ++i) {
    const v1::PortMappingRequest& r = attachment.port_mappings(i);
    std::string where = absl::StrCat("port mapping ", i + 1, " (host port ", r.host_port(),
                                     ", container port ", r.container_port(), ")");
    if (r.container_port() == 0 || r.container_port() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": container port must be 1-65535"));
    }
    absl::StatusOr<std::optional<IpAddress>> host_ip = ParseHostIp(r.host_ip());
    if (!host_ip.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", host_ip.status().message()));
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
      proto.set_protocol(r.protocol() == v1::PROTOCOL_UNSPECIFIED ? v1::PROTOCOL_TCP
                                                                  : r.protocol());
      proto.set_host_ip(host_ip->has_value() ? (*host_ip)->ToString() : "");
      proto.set_host_port(r.host_port());
      proto.set_port_count(r.port_count());
      proto.set_target_ip(addr.ToString());
      proto.set_target_port(r.container_port());
      proto.set_description(where);
      absl::StatusOr<PortMapping> m = ToNatMapping(proto);
      if (!m.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", m.status().message()));
      }
      planned.emplace_back(proto, *m);
    }
    if (!any_family) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": host IP ", r.host_ip(), " has no container address of its family"));
    }
  }

  // Hold the ports, all or nothing (a failure discards the transaction).
  v1::AttachResponse response;
  std::vector<std::pair<std::string, uint16_t>> made;  // description -> host port
  for (auto& [proto, m] : planned) {
    // A dual-stack mapping with host port 0 takes the same port in both
    // families: the first family allocates one that is free in the other.
    if (m.host_port == 0) {
      bool paired = false;
      for (const auto& [description, port] : made) {
        if (description == proto.description()) {
          m.host_port = port;
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
          absl::StatusOr<uint16_t> port = FreeInFamilies(txn, m, others);
          if (!port.ok()) return port.status();
          m.host_port = *port;
        }
      }
    }
    absl::StatusOr<v1::PortMapping> added = AddMapping(txn, proto, m, ct);
    if (!added.ok()) return added.status();
    rec.mapping_ids.push_back(added->id());
    made.emplace_back(added->description(), static_cast<uint16_t>(added->host_port()));
    *response.add_mappings() = *added;
  }
  txn.write().put_attachments.push_back(attachment);
  CountNetwork(txn, rec, 1);
  txn.state().attachments.Put(owner, std::move(rec));
  return response;
}

bool Detach(Txn& txn, const v1::AttachmentKey& key, nat::ConntrackCleaner* ct) {
  std::string owner = AttachmentOwnerId(key);
  const AttachmentRecord* found = txn.state().attachments.Find(owner);
  if (found == nullptr) return false;
  AttachmentRecord rec = *found;
  txn.write().delete_attachments.push_back(rec.proto.key());
  for (const std::string& id : rec.mapping_ids) RemoveMapping(txn, id, ct);
  CountNetwork(txn, rec, -1);
  txn.state().attachments.Erase(owner);
  return true;
}

absl::Status CheckAttachment(const State& state, const nat::KernelState& kernel,
                             const v1::AttachmentKey& key) {
  const AttachmentRecord* rec = state.attachments.Find(AttachmentOwnerId(key));
  if (rec == nullptr) {
    return absl::NotFoundError(absl::StrCat(AttachmentHolder(key), " is not attached"));
  }
  nat::RuleSet needed;
  for (const std::string& id : rec->mapping_ids) {
    for (const nat::DnatElement& e : state.mappings.Find(id)->nat.ToElements()) {
      needed.dnat.insert(e);
    }
  }
  nat::RuleSet networks;
  state.network.Fill(&networks);
  const v1::AttachmentOptions& o = rec->proto.options();
  absl::StatusOr<IpAddress> snat_to = IpAddress::Parse(o.snat_address());
  for (const Prefix& p : rec->networks) {
    if (!o.snat_address().empty() && snat_to.ok() && snat_to->family() == p.family()) {
      needed.snat.insert(nat::SnatRule{p.Network(), *snat_to, ""});
    } else {
      for (const Prefix& q : networks.masquerade) {
        if (o.masquerade() && q.Contains(p.address)) needed.masquerade.insert(q);
      }
    }
    for (const Prefix& q : networks.hairpin) {
      if (o.hairpin() && q.Contains(p.address)) needed.hairpin.insert(q);
    }
  }
  if (o.localhost()) needed.localhost_interfaces.insert(rec->proto.host_interface());
  if (!kernel.table_present) {
    return absl::FailedPreconditionError("the kernel has no table inet fabric_nat");
  }
  std::vector<std::string> missing;
  if (!kernel.layout_intact) missing.push_back(kernel.problem);
  nat::Batch diff = nat::Diff(kernel.rules, needed);
  for (const auto& e : diff.add.dnat) missing.push_back(absl::StrCat("dnat ", e.ToString()));
  for (const auto& p : diff.add.masquerade) {
    missing.push_back(absl::StrCat("masquerade ", p.ToString()));
  }
  for (const auto& r : diff.add.snat) missing.push_back(absl::StrCat("snat ", r.ToString()));
  for (const auto& p : diff.add.hairpin) missing.push_back(absl::StrCat("hairpin ", p.ToString()));
  for (const auto& i : diff.add.localhost_interfaces) {
    missing.push_back(absl::StrCat("localhost access on ", i));
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        AttachmentHolder(key), ": missing from the kernel: ", absl::StrJoin(missing, "; ")));
  }
  return absl::OkStatus();
}

std::vector<v1::AttachmentKey> StaleAttachments(const State& state, const std::string& network,
                                                const std::vector<v1::AttachmentKey>& valid) {
  std::set<std::string> keep;
  for (const v1::AttachmentKey& k : valid) {
    v1::AttachmentKey full = k;
    full.set_network_name(network);
    keep.insert(AttachmentOwnerId(full));
  }
  std::vector<std::pair<std::string, v1::AttachmentKey>> stale;
  state.attachments.ForEach([&](const std::string& owner, const AttachmentRecord& rec) {
    if (rec.proto.key().network_name() == network && keep.count(owner) == 0) {
      stale.emplace_back(owner, rec.proto.key());
    }
  });
  std::sort(stale.begin(), stale.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<v1::AttachmentKey> out;
  for (auto& [owner, key] : stale) out.push_back(std::move(key));
  return out;
}

void LoadAttachments(std::vector<v1::Attachment>& attachments, State* state) {
  // Mapping ids by owner, in one pass, so that start-up is linear.
  std::map<std::string, std::vector<std::string>> by_owner;
  for (const auto& [id, rec] : state->mappings.Sorted()) {
    if (rec->owner().kind() == v1::OWNER_KIND_CNI) {
      by_owner[rec->owner().id()].push_back(id);
    }
  }
  for (v1::Attachment& a : attachments) {
    AttachmentRecord rec;
    rec.proto = std::move(a);
    for (const std::string& addr : rec.proto.container_addresses()) {
      if (absl::StatusOr<Prefix> p = Prefix::Parse(addr); p.ok()) {
        rec.networks.push_back(p->Network());
      }
    }
    std::string owner = AttachmentOwnerId(rec.proto.key());
    if (auto it = by_owner.find(owner); it != by_owner.end()) {
      rec.mapping_ids = std::move(it->second);
    }
    state->network.Count(rec, 1);
    state->attachments.Put(owner, std::move(rec));
  }
}

}  // namespace fabric::agent::owners
