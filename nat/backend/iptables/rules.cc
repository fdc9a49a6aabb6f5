// Rule encoding for the iptables backend: builds the libiptc entries of our
// chains from a RuleSet (DNAT, MASQUERADE, the conntrack match, the jumps)
// and decodes our chains back into a RuleSet. Declared in internal/rules.h;
// used by iptables_backend.cc's table transactions and Read().
#include "nat/backend/iptables/internal/rules.h"

// libiptc's headers (glibc's netinet/in.h, net/if.h) before the kernel's.
// clang-format off
#include "nat/backend/iptables/internal/libiptc.h"
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/xt_addrtype.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_tcpudp.h>
// clang-format on

#include <algorithm>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"

namespace fabric::nat::iptables_internal {
namespace {

template <typename F>
void AddPortMatch(EntryBuilder<F>& b, Protocol p, uint16_t lo, uint16_t hi) {
  F::Proto(b.entry(), static_cast<uint8_t>(p));
  switch (p) {
    case Protocol::kTcp: {
      auto* m = b.template AddMatch<xt_tcp>("tcp", 0);
      m->spts[1] = 0xffff;
      m->dpts[0] = lo;
      m->dpts[1] = hi;
      break;
    }
    case Protocol::kUdp: {
      auto* m = b.template AddMatch<xt_udp>("udp", 0);
      m->spts[1] = 0xffff;
      m->dpts[0] = lo;
      m->dpts[1] = hi;
      break;
    }
    case Protocol::kSctp: {
      auto* m = b.template AddMatch<SctpMatch>("sctp", 0);
      m->spts[1] = 0xffff;
      m->dpts[0] = lo;
      m->dpts[1] = hi;
      m->flags = kSctpDestPorts;
      break;
    }
  }
}

template <typename F>
void AddDnatState(EntryBuilder<F>& b) {
  auto* ct = b.template AddMatch<xt_conntrack_mtinfo3>("conntrack", 3);
  ct->match_flags = XT_CONNTRACK_STATE;
  ct->state_mask = XT_CONNTRACK_STATE_DNAT;
}

template <typename F>
void SetMasquerade(EntryBuilder<F>& b) {
  // MASQUERADE has only revision 0: the IPv4 one takes the old
  // multi-range struct, the IPv6 one nf_nat_range.
  if (F::kFamily == Family::kIPv4) {
    auto* r = b.template SetTarget<nf_nat_ipv4_multi_range_compat>("MASQUERADE", 0);
    r->rangesize = 1;
  } else {
    b.template SetTarget<nf_nat_range>("MASQUERADE", 0);
  }
}

// DNAT revision 2 (nf_nat_range2), which iptables-save shows for both
// families (it cannot show IPv4 revision 1).
template <typename F>
void SetNatTarget(EntryBuilder<F>& b, const char* name, const DnatElement* e) {
  auto* r = b.template SetTarget<nf_nat_range2>(name, 2);
  r->flags = NF_NAT_RANGE_MAP_IPS;
  std::memcpy(&r->min_addr, e->target_ip.bytes(), e->target_ip.size());
  std::memcpy(&r->max_addr, e->target_ip.bytes(), e->target_ip.size());
  if (!e->is_range()) {
    r->flags |= NF_NAT_RANGE_PROTO_SPECIFIED;
    r->min_proto.all = r->max_proto.all = htons(e->target_port);
  }
}

// SNAT revision 2 (nf_nat_range2), as DNAT: the one revision both
// families have and iptables-save shows for both.
template <typename F>
void SetSnatTarget(EntryBuilder<F>& b, const IpAddress& to) {
  auto* r = b.template SetTarget<nf_nat_range2>("SNAT", 2);
  r->flags = NF_NAT_RANGE_MAP_IPS;
  std::memcpy(&r->min_addr, to.bytes(), to.size());
  std::memcpy(&r->max_addr, to.bytes(), to.size());
}

}  // namespace

template <typename F>
Plan<F> PlanFor(const RuleSet& rules) {
  Plan<F> plan;
  for (const DnatElement& e : rules.dnat) {
    if (e.family != F::kFamily) continue;
    EntryBuilder<F> b;
    if (e.host_ip.has_value()) {
      F::Dst(b.entry(), Prefix{*e.host_ip, e.host_ip->is_v4() ? 32 : 128});
    }
    AddPortMatch(b, e.protocol, e.port_lo, e.port_hi);
    SetNatTarget(b, "DNAT", &e);
    plan.nat.emplace_back(kHostports, std::move(b));
  }
  // -A FABRIC-POSTROUTING [-o IF] -s SRC ! -d SRC -j SNAT --to-source TO,
  // before masquerade so that it wins for the same source.
  for (const SnatRule& r : SnatOrder(rules.snat)) {
    if (r.source.family() != F::kFamily) continue;
    EntryBuilder<F> b;
    F::Src(b.entry(), r.source);
    F::Dst(b.entry(), r.source, /*invert=*/true);
    if (!r.out_interface.empty()) F::OutIface(b.entry(), r.out_interface);
    SetSnatTarget(b, r.to);
    plan.nat.emplace_back(kPostrouting, std::move(b));
  }
  for (const Prefix& p : rules.masquerade) {
    if (p.family() != F::kFamily) continue;
    EntryBuilder<F> b;
    F::Src(b.entry(), p);
    F::Dst(b.entry(), p, /*invert=*/true);
    SetMasquerade(b);
    plan.nat.emplace_back(kPostrouting, std::move(b));
  }
  for (const Prefix& p : rules.hairpin) {
    if (p.family() != F::kFamily) continue;
    EntryBuilder<F> b;
    F::Src(b.entry(), p);
    F::Dst(b.entry(), p);
    AddDnatState(b);
    SetMasquerade(b);
    plan.nat.emplace_back(kPostrouting, std::move(b));
  }
  if (F::kFamily == Family::kIPv4) {
    for (const std::string& i : rules.localhost_interfaces) {
      EntryBuilder<F> b;
      F::Src(b.entry(), *Prefix::Parse("127.0.0.0/8"));
      F::OutIface(b.entry(), i);
      SetMasquerade(b);
      plan.nat.emplace_back(kPostrouting, std::move(b));
    }
  }
  EntryBuilder<F> fwd;
  AddDnatState(fwd);
  fwd.SetVerdict("ACCEPT");
  plan.filter.emplace_back(kForward, std::move(fwd));
  return plan;
}

template <typename F>
EntryBuilder<F> JumpEntry(const Jump& j) {
  EntryBuilder<F> b;
  if (j.local_only) {
    auto* a = b.template AddMatch<xt_addrtype_info_v1>("addrtype", 1);
    a->dest = XT_ADDRTYPE_LOCAL;
  }
  b.SetVerdict(j.chain);
  return b;
}

namespace {

template <typename T>
void Insert(std::set<T>* into, const T& value, std::vector<std::string>* problems) {
  if (!into->insert(value).second) problems->push_back("duplicate rule in FABRIC-POSTROUTING");
}

}  // namespace

// Reads our rules of one table, open as `h`, into `state`.
template <typename F>
void ReadTable(xtc_handle* h, const char* table, KernelState* state,
               std::vector<std::string>* problems) {
  for (const Jump& j : kJumps) {
    if (std::strcmp(j.table, table) != 0) continue;
    if (!F::IsChain(j.chain, h)) {
      problems->push_back(absl::StrCat(FamilyName(F::kFamily), " chain ", j.chain, " missing"));
      continue;
    }
    state->table_present = true;
    if (!HasJump<F>(h, j)) {
      problems->push_back(
          absl::StrCat(FamilyName(F::kFamily), " jump ", j.builtin, " -> ", j.chain, " missing"));
    }
  }
  if (std::strcmp(table, "filter") == 0) {
    if (F::IsChain(kForward, h)) {
      int n = 0;
      for (const auto* e = F::First(kForward, h); e; e = F::Next(e, h)) ++n;
      if (n != 1) problems->push_back(absl::StrCat("chain ", kForward, " holds ", n, " rules"));
    }
    return;
  }
  if (F::IsChain(kHostports, h)) {
    for (const auto* e = F::First(kHostports, h); e; e = F::Next(e, h)) {
      const auto* t = reinterpret_cast<const xt_entry_target*>(reinterpret_cast<const uint8_t*>(e) +
                                                               e->target_offset);
      if (std::strcmp(t->u.user.name, "DNAT") != 0 ||
          t->u.target_size < XT_ALIGN(sizeof(xt_entry_target)) + sizeof(nf_nat_range)) {
        problems->push_back("foreign rule in FABRIC-HOSTPORTS");
        continue;
      }
      const auto* r = reinterpret_cast<const nf_nat_range*>(t->data);
      DnatElement d;
      d.family = F::kFamily;
      d.protocol = static_cast<Protocol>(F::GetProto(e));
      if (std::optional<Prefix> dst = F::GetDst(e)) d.host_ip = dst->address;
      // The port match follows the entry.
      const auto* m = reinterpret_cast<const xt_entry_match*>(e->elems);
      const uint16_t* dpts = nullptr;
      if (std::strcmp(m->u.user.name, "tcp") == 0) {
        dpts = reinterpret_cast<const xt_tcp*>(m->data)->dpts;
      } else if (std::strcmp(m->u.user.name, "udp") == 0) {
        dpts = reinterpret_cast<const xt_udp*>(m->data)->dpts;
      } else if (std::strcmp(m->u.user.name, "sctp") == 0) {
        dpts = reinterpret_cast<const SctpMatch*>(m->data)->dpts;
      }
      if (dpts == nullptr) {
        problems->push_back("foreign rule in FABRIC-HOSTPORTS");
        continue;
      }
      d.port_lo = dpts[0];
      d.port_hi = dpts[1];
      d.target_ip =
          IpAddress::FromBytes(F::kFamily, reinterpret_cast<const uint8_t*>(&r->min_addr));
      if (r->flags & NF_NAT_RANGE_PROTO_SPECIFIED) d.target_port = ntohs(r->min_proto.all);
      if (!state->rules.dnat.insert(d).second) {
        problems->push_back(absl::StrCat("duplicate rule in FABRIC-HOSTPORTS: ", d.ToString()));
      }
    }
  }
  if (F::IsChain(kPostrouting, h)) {
    for (const auto* e = F::First(kPostrouting, h); e; e = F::Next(e, h)) {
      // No source mask is the whole space (0.0.0.0/0, ::/0).
      std::optional<Prefix> src = F::GetSrc(e).value_or(Prefix{IpAddress::AnyOf(F::kFamily), 0});
      std::string oif = F::GetOutIface(e);
      bool has_match = e->target_offset > sizeof(typename F::Entry);
      if (std::strcmp(F::Target(e, h), "SNAT") == 0) {
        const auto* t = reinterpret_cast<const xt_entry_target*>(
            reinterpret_cast<const uint8_t*>(e) + e->target_offset);
        std::optional<Prefix> dst = F::GetDst(e);
        // Only what PlanFor writes: revision 2, one address, -s SRC ! -d SRC.
        if (has_match || t->u.user.revision != 2 ||
            t->u.target_size < XT_ALIGN(sizeof(xt_entry_target)) + sizeof(nf_nat_range2) ||
            !F::DstInverted(e) || !dst.has_value() || !(*dst == *src)) {
          problems->push_back("foreign SNAT rule in FABRIC-POSTROUTING");
          continue;
        }
        const auto* r = reinterpret_cast<const nf_nat_range2*>(t->data);
        IpAddress to =
            IpAddress::FromBytes(F::kFamily, reinterpret_cast<const uint8_t*>(&r->min_addr));
        IpAddress max =
            IpAddress::FromBytes(F::kFamily, reinterpret_cast<const uint8_t*>(&r->max_addr));
        if (r->flags != NF_NAT_RANGE_MAP_IPS || !(to == max)) {
          problems->push_back("foreign SNAT rule in FABRIC-POSTROUTING");
          continue;
        }
        SnatRule snat{*src, to, oif};
        if (!state->rules.snat.insert(snat).second) {
          problems->push_back(
              absl::StrCat("duplicate rule in FABRIC-POSTROUTING: snat ", snat.ToString()));
        }
        continue;
      }
      if (std::strcmp(F::Target(e, h), "MASQUERADE") != 0) {
        problems->push_back("foreign rule in FABRIC-POSTROUTING");
      } else if (!oif.empty()) {
        Insert(&state->rules.localhost_interfaces, oif, problems);
      } else if (has_match) {
        Insert(&state->rules.hairpin, *src, problems);
      } else if (F::DstInverted(e)) {
        Insert(&state->rules.masquerade, *src, problems);
      } else {
        problems->push_back("foreign rule in FABRIC-POSTROUTING");
      }
    }
  }
}

template Plan<V4> PlanFor<V4>(const RuleSet& rules);
template Plan<V6> PlanFor<V6>(const RuleSet& rules);
template EntryBuilder<V4> JumpEntry<V4>(const Jump& j);
template EntryBuilder<V6> JumpEntry<V6>(const Jump& j);
template void ReadTable<V4>(xtc_handle* h, const char* table, KernelState* state,
                            std::vector<std::string>* problems);
template void ReadTable<V6>(xtc_handle* h, const char* table, KernelState* state,
                            std::vector<std::string>* problems);

}  // namespace fabric::nat::iptables_internal
