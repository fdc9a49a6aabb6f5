#include "agent/core/state.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"

namespace fabric::agent {

void NetworkRefs::Count(const AttachmentRecord& rec, int delta) {
  auto bump = [delta](auto& map, const auto& key) {
    if ((map[key] += delta) <= 0) map.erase(key);
  };
  const v1::AttachmentOptions& o = rec.proto.options();
  // Validated by owners::Attach; a stored one that no longer parses is
  // taken as absent.
  std::optional<nat::IpAddress> snat_to;
  if (!o.snat_address().empty()) {
    if (absl::StatusOr<nat::IpAddress> a = nat::IpAddress::Parse(o.snat_address()); a.ok()) {
      snat_to = *a;
    }
  }
  if (o.has_upstream() && o.upstream()) upstream_asked += delta;
  for (const nat::Prefix& p : rec.networks) {
    bump(containers, p);
    if (snat_to.has_value() && snat_to->family() == p.family()) {
      bump(snat, nat::SnatRule{p.Network(), *snat_to, ""});
    } else if (o.masquerade()) {
      bump(masquerade, p);
    }
    if (o.hairpin()) bump(hairpin, p);
  }
  if (o.localhost() && !rec.proto.host_interface().empty()) {
    bump(interfaces, rec.proto.host_interface());
  }
}

void State::ShrinkToFit() {
  mappings.ShrinkToFit();
  by_owner.ShrinkToFit();
  attachments.ShrinkToFit([](AttachmentRecord& a) { a.mapping_ids.shrink_to_fit(); });
  leases.ShrinkToFit();
  leases_by_port.ShrinkToFit();
  leases_per_client.ShrinkToFit();
  mapping_targets.ShrinkToFit();
  companions.ShrinkToFit();
  pinholes.ShrinkToFit();
}

void NetworkRefs::CountSnat(const nat::SnatRule& rule, int delta) {
  if ((snat[rule] += delta) <= 0) snat.erase(rule);
}

void NetworkRefs::Fill(nat::RuleSet* rules) const {
  std::set<nat::Prefix> m, h;
  for (const auto& [p, n] : masquerade) m.insert(p);
  for (const auto& [p, n] : hairpin) h.insert(p);
  rules->masquerade = nat::CoalescePrefixes(m);
  rules->hairpin = nat::CoalescePrefixes(h);
  rules->snat.clear();
  for (const auto& [r, n] : snat) rules->snat.insert(r);
  rules->localhost_interfaces.clear();
  for (const auto& [i, n] : interfaces) rules->localhost_interfaces.insert(i);
}

nat::RuleSet State::Desired() const {
  nat::RuleSet r;
  // Gathered, sorted, then loaded in order: the B-tree then appends at its
  // end instead of searching for each element's place.
  std::vector<nat::DnatElement> dnat;
  dnat.reserve(mappings.size());
  mappings.ForEach([&dnat](const std::string&, const MappingRecord& m) {
    m.nat.ForEachElement([&dnat](const nat::DnatElement& e) { dnat.push_back(e); });
  });
  std::sort(dnat.begin(), dnat.end());
  r.dnat.insert(dnat.begin(), dnat.end());
  network.Fill(&r);
  if (!firewall6_interface.empty()) {
    r.firewall6_interfaces.insert(firewall6_interface);
    pinholes.ForEach([&r](const std::string&, const PinholeRecord& p) { r.pinholes.insert(p.nat); });
  }
  return r;
}

namespace {

// A record and the first 8 bytes of its id, big-endian: most comparisons
// of ids ("m-1234") end on that one word, without a load of the record.
struct ById {
  uint64_t head;
  const MappingRecord* rec;
};

uint64_t HeadOf(const std::string& id) {
  uint64_t h = 0;
  for (size_t i = 0; i < 8; ++i) {
    h = (h << 8) | (i < id.size() ? static_cast<unsigned char>(id[i]) : 0);
  }
  return h;
}

bool Before(const ById& a, const ById& b) {
  if (a.head != b.head) return a.head < b.head;
  return a.rec->id() < b.rec->id();
}

}  // namespace

std::vector<const MappingRecord*> SelectMappings(const State& state, v1::OwnerKind kind,
                                                 const std::string& owner_id,
                                                 const std::string& after, size_t limit) {
  std::vector<ById> found;
  // Keys only, unless an owner filter needs the record: loading every
  // record of the table is a cache miss each (a page of 1,000 of 30,000
  // cost 2.0 ms in-process with the loads, check_bench).
  const bool by_owner = kind != v1::OWNER_KIND_UNSPECIFIED || !owner_id.empty();
  const uint64_t after_head = HeadOf(after);
  auto consider = [&](const std::string& id, const MappingRecord& rec) {
    uint64_t head = HeadOf(id);
    if (!after.empty() && (head < after_head || (head == after_head && id <= after))) return;
    if (by_owner && !OwnerMatches(rec, kind, owner_id)) return;
    found.push_back({head, &rec});
  };
  if (owner_id.empty()) {
    found.reserve(state.mappings.size());
    state.mappings.ForEach(consider);
  } else {
    found.reserve(state.by_owner.CountOf(owner_id));
    state.by_owner.ForEach(owner_id, [&](const std::string& id) {
      if (const MappingRecord* rec = state.mappings.Find(id)) consider(id, *rec);
    });
  }
  if (limit != 0 && found.size() > limit) {
    std::nth_element(found.begin(), found.begin() + limit, found.end(), Before);
    found.resize(limit);
  }
  std::sort(found.begin(), found.end(), Before);
  std::vector<const MappingRecord*> out;
  out.reserve(found.size());
  for (const ById& f : found) out.push_back(f.rec);
  return out;
}

std::vector<std::shared_ptr<const MappingRecord>> MappingsOf(const State& state,
                                                             v1::OwnerKind kind,
                                                             const std::string& owner_id) {
  std::vector<std::shared_ptr<const MappingRecord>> out;
  for (const MappingRecord* rec : SelectMappings(state, kind, owner_id, "", 0)) {
    out.push_back(state.mappings.FindShared(rec->id()));
  }
  return out;
}

std::string LeaseKey(const std::string& client, nat::Protocol protocol,
                     uint16_t internal_port) {
  return absl::StrCat(client, "/", static_cast<int>(protocol), "/", internal_port);
}

std::string LeaseKeyOf(const MappingRecord& m) {
  return LeaseKey(m.target_ip(), m.nat.protocol, m.nat.target_port);
}

std::string LeasePortKey(nat::Protocol protocol, uint16_t external_port) {
  return absl::StrCat(static_cast<int>(protocol), "/", external_port);
}

std::string LeasePortKeyOf(const MappingRecord& m) {
  return LeasePortKey(m.nat.protocol, m.nat.host_port);
}

}  // namespace fabric::agent
