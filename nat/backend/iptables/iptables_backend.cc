#include "nat/backend/iptables/iptables_backend.h"

#include <arpa/inet.h>
#include <libiptc/libiptc.h>
// libip6tc.h, unlike libiptc.h, declares no C linkage itself.
extern "C" {
#include <libiptc/libip6tc.h>
}
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/xt_addrtype.h>
#include <linux/netfilter/xt_conntrack.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nat/backend/nftables/nftables_backend.h"  // SetRouteLocalnet

namespace fabric::nat {

namespace {

// The kernel's struct xt_sctp_info (linux/netfilter/xt_sctp.h), restated:
// that header defines a macro named `bytes` and uses C's _Bool, neither of
// which C++ code can live with.
struct SctpMatch {
  __u16 dpts[2];
  __u16 spts[2];
  __u32 chunkmap[256 / sizeof(__u32)];
  __u32 chunk_match_type;
  struct {
    __u8 chunktype, flag, flag_mask;
  } flag_info[4];
  int flag_count;
  __u32 flags;
  __u32 invflags;
};
constexpr __u32 kSctpDestPorts = 0x02;

constexpr char kHostports[] = "FABRIC-HOSTPORTS";
constexpr char kPostrouting[] = "FABRIC-POSTROUTING";
constexpr char kForward[] = "FABRIC-FORWARD";

// ---------------------------------------------------------------------------
// The two families behind one interface.

struct V4 {
  using Entry = ipt_entry;
  static constexpr Family kFamily = Family::kIPv4;
  static xtc_handle* Init(const char* t) { return iptc_init(t); }
  static int IsChain(const char* c, xtc_handle* h) { return iptc_is_chain(c, h); }
  static int Create(const char* c, xtc_handle* h) { return iptc_create_chain(c, h); }
  static int Flush(const char* c, xtc_handle* h) { return iptc_flush_entries(c, h); }
  static int Delete(const char* c, xtc_handle* h) { return iptc_delete_chain(c, h); }
  static int Append(const char* c, const Entry* e, xtc_handle* h) {
    return iptc_append_entry(c, e, h);
  }
  static int DeleteNum(const char* c, unsigned n, xtc_handle* h) {
    return iptc_delete_num_entry(c, n, h);
  }
  static int Commit(xtc_handle* h) { return iptc_commit(h); }
  static void Free(xtc_handle* h) { iptc_free(h); }
  static const char* Error() { return iptc_strerror(errno); }
  static const Entry* First(const char* c, xtc_handle* h) { return iptc_first_rule(c, h); }
  static const Entry* Next(const Entry* e, xtc_handle* h) { return iptc_next_rule(e, h); }
  static const char* Target(const Entry* e, xtc_handle* h) { return iptc_get_target(e, h); }

  static void Src(Entry* e, const Prefix& p) {
    std::memcpy(&e->ip.src, p.Network().address.bytes(), 4);
    Mask(p.length, reinterpret_cast<uint8_t*>(&e->ip.smsk));
  }
  static void Dst(Entry* e, const Prefix& p, bool invert = false) {
    std::memcpy(&e->ip.dst, p.Network().address.bytes(), 4);
    Mask(p.length, reinterpret_cast<uint8_t*>(&e->ip.dmsk));
    if (invert) e->ip.invflags |= IPT_INV_DSTIP;
  }
  static void Proto(Entry* e, uint8_t proto) { e->ip.proto = proto; }
  static void OutIface(Entry* e, const std::string& name) {
    std::strncpy(e->ip.outiface, name.c_str(), IFNAMSIZ - 1);
    std::memset(e->ip.outiface_mask, 0xff, std::min<size_t>(name.size() + 1, IFNAMSIZ));
  }
  static std::optional<Prefix> GetSrc(const Entry* e) { return Get(&e->ip.src, &e->ip.smsk); }
  static std::optional<Prefix> GetDst(const Entry* e) { return Get(&e->ip.dst, &e->ip.dmsk); }
  static bool DstInverted(const Entry* e) { return e->ip.invflags & IPT_INV_DSTIP; }
  static uint16_t GetProto(const Entry* e) { return e->ip.proto; }
  static std::string GetOutIface(const Entry* e) { return e->ip.outiface; }

  static void Mask(int len, uint8_t* out) {
    for (int i = 0; i < 4; ++i) {
      int bits = std::clamp(len - i * 8, 0, 8);
      out[i] = bits == 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
    }
  }
  static std::optional<Prefix> Get(const void* addr, const void* mask) {
    const uint8_t* m = static_cast<const uint8_t*>(mask);
    int len = 0;
    for (int i = 0; i < 4; ++i) len += __builtin_popcount(m[i]);
    if (len == 0) return std::nullopt;
    return Prefix{IpAddress::FromBytes(Family::kIPv4, static_cast<const uint8_t*>(addr)), len};
  }
};

struct V6 {
  using Entry = ip6t_entry;
  static constexpr Family kFamily = Family::kIPv6;
  static xtc_handle* Init(const char* t) { return ip6tc_init(t); }
  static int IsChain(const char* c, xtc_handle* h) { return ip6tc_is_chain(c, h); }
  static int Create(const char* c, xtc_handle* h) { return ip6tc_create_chain(c, h); }
  static int Flush(const char* c, xtc_handle* h) { return ip6tc_flush_entries(c, h); }
  static int Delete(const char* c, xtc_handle* h) { return ip6tc_delete_chain(c, h); }
  static int Append(const char* c, const Entry* e, xtc_handle* h) {
    return ip6tc_append_entry(c, e, h);
  }
  static int DeleteNum(const char* c, unsigned n, xtc_handle* h) {
    return ip6tc_delete_num_entry(c, n, h);
  }
  static int Commit(xtc_handle* h) { return ip6tc_commit(h); }
  static void Free(xtc_handle* h) { ip6tc_free(h); }
  static const char* Error() { return ip6tc_strerror(errno); }
  static const Entry* First(const char* c, xtc_handle* h) { return ip6tc_first_rule(c, h); }
  static const Entry* Next(const Entry* e, xtc_handle* h) { return ip6tc_next_rule(e, h); }
  static const char* Target(const Entry* e, xtc_handle* h) { return ip6tc_get_target(e, h); }

  static void Src(Entry* e, const Prefix& p) {
    std::memcpy(&e->ipv6.src, p.Network().address.bytes(), 16);
    Mask(p.length, reinterpret_cast<uint8_t*>(&e->ipv6.smsk));
  }
  static void Dst(Entry* e, const Prefix& p, bool invert = false) {
    std::memcpy(&e->ipv6.dst, p.Network().address.bytes(), 16);
    Mask(p.length, reinterpret_cast<uint8_t*>(&e->ipv6.dmsk));
    if (invert) e->ipv6.invflags |= IP6T_INV_DSTIP;
  }
  static void Proto(Entry* e, uint8_t proto) {
    e->ipv6.proto = proto;
    e->ipv6.flags |= IP6T_F_PROTO;
  }
  static void OutIface(Entry* e, const std::string& name) {
    std::strncpy(e->ipv6.outiface, name.c_str(), IFNAMSIZ - 1);
    std::memset(e->ipv6.outiface_mask, 0xff, std::min<size_t>(name.size() + 1, IFNAMSIZ));
  }
  static std::optional<Prefix> GetSrc(const Entry* e) { return Get(&e->ipv6.src, &e->ipv6.smsk); }
  static std::optional<Prefix> GetDst(const Entry* e) { return Get(&e->ipv6.dst, &e->ipv6.dmsk); }
  static bool DstInverted(const Entry* e) { return e->ipv6.invflags & IP6T_INV_DSTIP; }
  static uint16_t GetProto(const Entry* e) { return e->ipv6.proto; }
  static std::string GetOutIface(const Entry* e) { return e->ipv6.outiface; }

  static void Mask(int len, uint8_t* out) {
    for (int i = 0; i < 16; ++i) {
      int bits = std::clamp(len - i * 8, 0, 8);
      out[i] = bits == 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
    }
  }
  static std::optional<Prefix> Get(const void* addr, const void* mask) {
    const uint8_t* m = static_cast<const uint8_t*>(mask);
    int len = 0;
    for (int i = 0; i < 16; ++i) len += __builtin_popcount(m[i]);
    if (len == 0) return std::nullopt;
    return Prefix{IpAddress::FromBytes(Family::kIPv6, static_cast<const uint8_t*>(addr)), len};
  }
};

// ---------------------------------------------------------------------------
// Building entries: the entry, its matches, its target, contiguous.

template <typename F>
class EntryBuilder {
 public:
  EntryBuilder() : buf_(sizeof(typename F::Entry), 0) {}
  typename F::Entry* entry() { return reinterpret_cast<typename F::Entry*>(buf_.data()); }

  template <typename T>
  T* AddMatch(const char* name, uint8_t revision) {
    size_t size = XT_ALIGN(sizeof(xt_entry_match)) + XT_ALIGN(sizeof(T));
    size_t at = buf_.size();
    buf_.resize(at + size, 0);
    auto* m = reinterpret_cast<xt_entry_match*>(buf_.data() + at);
    m->u.match_size = static_cast<uint16_t>(size);
    std::strncpy(m->u.user.name, name, sizeof(m->u.user.name) - 1);
    m->u.user.revision = revision;
    return reinterpret_cast<T*>(m->data);
  }

  template <typename T>
  T* SetTarget(const char* name, uint8_t revision) {
    size_t size = XT_ALIGN(sizeof(xt_entry_target)) + XT_ALIGN(sizeof(T));
    size_t at = buf_.size();
    buf_.resize(at + size, 0);
    auto* t = reinterpret_cast<xt_entry_target*>(buf_.data() + at);
    t->u.target_size = static_cast<uint16_t>(size);
    std::strncpy(t->u.user.name, name, sizeof(t->u.user.name) - 1);
    t->u.user.revision = revision;
    entry()->target_offset = static_cast<uint16_t>(at);
    entry()->next_offset = static_cast<uint16_t>(buf_.size());
    return reinterpret_cast<T*>(t->data);
  }
  // ACCEPT, or a jump to a chain: libiptc resolves the name.
  void SetVerdict(const char* name) {
    size_t at = buf_.size();
    size_t size = XT_ALIGN(sizeof(xt_standard_target));
    buf_.resize(at + size, 0);
    auto* t = reinterpret_cast<xt_entry_target*>(buf_.data() + at);
    t->u.target_size = static_cast<uint16_t>(size);
    std::strncpy(t->u.user.name, name, sizeof(t->u.user.name) - 1);
    entry()->target_offset = static_cast<uint16_t>(at);
    entry()->next_offset = static_cast<uint16_t>(buf_.size());
  }

 private:
  std::vector<uint8_t> buf_;
};

const char* MatchName(Protocol p) {
  switch (p) {
    case Protocol::kTcp: return "tcp";
    case Protocol::kUdp: return "udp";
    case Protocol::kSctp: return "sctp";
  }
  return "tcp";
}

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

// All of our rules for one family and table: (chain, entry bytes).
template <typename F>
struct Plan {
  std::vector<std::pair<const char*, EntryBuilder<F>>> nat, filter;
};

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

// The jumps from built-in chains: (table, built-in chain, our chain, local-only).
struct Jump {
  const char* table;
  const char* builtin;
  const char* chain;
  bool local_only;
};
constexpr Jump kJumps[] = {
    {"nat", "PREROUTING", kHostports, true},
    {"nat", "OUTPUT", kHostports, true},
    {"nat", "POSTROUTING", kPostrouting, false},
    {"filter", "FORWARD", kForward, false},
};

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

template <typename F>
bool HasJump(xtc_handle* h, const Jump& j) {
  for (const auto* e = F::First(j.builtin, h); e != nullptr; e = F::Next(e, h)) {
    if (std::strcmp(F::Target(e, h), j.chain) == 0) return true;
  }
  return false;
}

// A handle, freed on scope exit.
template <typename F>
struct Handle {
  explicit Handle(const char* table) : h(F::Init(table)) {}
  ~Handle() {
    if (h != nullptr) F::Free(h);
  }
  xtc_handle* h;
};

template <typename F>
absl::Status Fail(const char* what, const char* table) {
  return absl::Status(errno == EPERM ? absl::StatusCode::kPermissionDenied
                                     : absl::StatusCode::kInternal,
                      absl::StrCat("libiptc (", FamilyName(F::kFamily), " ", table,
                                   "): ", what, ": ", F::Error()));
}

// Rewrites our chains of one table to hold exactly `entries`, adding the
// jumps and chains when missing. One commit: all or nothing.
template <typename F>
absl::Status WriteTable(const char* table,
                        const std::vector<std::pair<const char*, EntryBuilder<F>>>& entries) {
  Handle<F> handle(table);
  if (handle.h == nullptr) return Fail<F>("open table", table);
  for (const Jump& j : kJumps) {
    if (std::strcmp(j.table, table) != 0) continue;
    if (!F::IsChain(j.chain, handle.h) && !F::Create(j.chain, handle.h)) {
      return Fail<F>(j.chain, table);
    }
    if (!F::Flush(j.chain, handle.h)) return Fail<F>(j.chain, table);
    if (!HasJump<F>(handle.h, j)) {
      EntryBuilder<F> jump = JumpEntry<F>(j);
      if (!F::Append(j.builtin, jump.entry(), handle.h)) return Fail<F>(j.builtin, table);
    }
  }
  for (const auto& [chain, b] : entries) {
    auto& builder = const_cast<EntryBuilder<F>&>(b);
    if (!F::Append(chain, builder.entry(), handle.h)) {
      return Fail<F>(absl::StrCat("append to ", chain).c_str(), table);
    }
  }
  if (!F::Commit(handle.h)) return Fail<F>("commit", table);
  return absl::OkStatus();
}

template <typename F>
absl::Status WriteFamily(const RuleSet& rules) {
  Plan<F> plan = PlanFor<F>(rules);
  if (absl::Status s = WriteTable<F>("nat", plan.nat); !s.ok()) return s;
  return WriteTable<F>("filter", plan.filter);
}

// Reads one family's rules back into `state`.
template <typename F>
void ReadFamily(KernelState* state, std::vector<std::string>* problems) {
  for (const char* table : {"nat", "filter"}) {
    Handle<F> handle(table);
    if (handle.h == nullptr) {
      problems->push_back(absl::StrCat(FamilyName(F::kFamily), " ", table, " unreadable"));
      continue;
    }
    for (const Jump& j : kJumps) {
      if (std::strcmp(j.table, table) != 0) continue;
      if (!F::IsChain(j.chain, handle.h)) {
        problems->push_back(absl::StrCat(FamilyName(F::kFamily), " chain ", j.chain, " missing"));
        continue;
      }
      state->table_present = true;
      if (!HasJump<F>(handle.h, j)) {
        problems->push_back(absl::StrCat(FamilyName(F::kFamily), " jump ", j.builtin, " -> ",
                                         j.chain, " missing"));
      }
    }
    if (std::strcmp(table, "filter") == 0) {
      if (F::IsChain(kForward, handle.h)) {
        int n = 0;
        for (const auto* e = F::First(kForward, handle.h); e; e = F::Next(e, handle.h)) ++n;
        if (n != 1) problems->push_back(absl::StrCat("chain ", kForward, " holds ", n, " rules"));
      }
      continue;
    }
    if (F::IsChain(kHostports, handle.h)) {
      for (const auto* e = F::First(kHostports, handle.h); e; e = F::Next(e, handle.h)) {
        const auto* t = reinterpret_cast<const xt_entry_target*>(
            reinterpret_cast<const uint8_t*>(e) + e->target_offset);
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
        d.target_ip = IpAddress::FromBytes(F::kFamily, reinterpret_cast<const uint8_t*>(&r->min_addr));
        if (r->flags & NF_NAT_RANGE_PROTO_SPECIFIED) d.target_port = ntohs(r->min_proto.all);
        state->rules.dnat.insert(d);
      }
    }
    if (F::IsChain(kPostrouting, handle.h)) {
      for (const auto* e = F::First(kPostrouting, handle.h); e; e = F::Next(e, handle.h)) {
        std::optional<Prefix> src = F::GetSrc(e);
        std::string oif = F::GetOutIface(e);
        bool has_match = e->target_offset > sizeof(typename F::Entry);
        if (!src.has_value()) {
          problems->push_back("foreign rule in FABRIC-POSTROUTING");
        } else if (!oif.empty()) {
          state->rules.localhost_interfaces.insert(oif);
        } else if (has_match) {
          state->rules.hairpin.insert(*src);
        } else if (F::DstInverted(e)) {
          state->rules.masquerade.insert(*src);
        } else {
          problems->push_back("foreign rule in FABRIC-POSTROUTING");
        }
      }
    }
  }
}

template <typename F>
void RemoveFamily() {
  for (const char* table : {"nat", "filter"}) {
    Handle<F> handle(table);
    if (handle.h == nullptr) continue;
    bool changed = false;
    for (const Jump& j : kJumps) {
      if (std::strcmp(j.table, table) != 0) continue;
      unsigned n = 0;
      for (const auto* e = F::First(j.builtin, handle.h); e != nullptr;) {
        const auto* next = F::Next(e, handle.h);
        if (std::strcmp(F::Target(e, handle.h), j.chain) == 0) {
          F::DeleteNum(j.builtin, n, handle.h);
          changed = true;
          break;  // one jump per chain
        }
        ++n;
        e = next;
      }
    }
    for (const Jump& j : kJumps) {
      if (std::strcmp(j.table, table) != 0 || !F::IsChain(j.chain, handle.h)) continue;
      F::Flush(j.chain, handle.h);
      if (std::strcmp(j.builtin, "OUTPUT") != 0) F::Delete(j.chain, handle.h);
      changed = true;
    }
    if (changed) F::Commit(handle.h);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<IptablesBackend>> IptablesBackend::Create() {
  Handle<V4> probe("nat");
  if (probe.h == nullptr) {
    return absl::Status(errno == EPERM ? absl::StatusCode::kPermissionDenied
                                       : absl::StatusCode::kUnavailable,
                        absl::StrCat("iptables (legacy) nat table unavailable: ", V4::Error(),
                                     " (is the iptable_nat module loaded?)"));
  }
  return std::unique_ptr<IptablesBackend>(new IptablesBackend());
}

absl::Status IptablesBackend::Replace(const RuleSet& desired) {
  for (const std::string& i : desired.localhost_interfaces) {
    if (absl::Status s = SetRouteLocalnet(i, true); !s.ok()) return s;
  }
  if (absl::Status s = WriteFamily<V4>(desired); !s.ok()) return s;
  return WriteFamily<V6>(desired);
}

absl::Status IptablesBackend::Apply(const Batch& batch) {
  if (batch.empty()) return absl::OkStatus();
  absl::StatusOr<KernelState> state = Read();
  if (!state.ok()) return state.status();
  if (!state->table_present) {
    return absl::FailedPreconditionError("iptables chains FABRIC-* are missing");
  }
  RuleSet next = state->rules;
  if (absl::Status s = ApplyBatch(batch, &next); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("iptables: ", s.message(), "; nothing changed"));
  }
  if (absl::Status s = Replace(next); !s.ok()) return s;
  for (const std::string& i : batch.remove.localhost_interfaces) {
    SetRouteLocalnet(i, false).IgnoreError();
  }
  return absl::OkStatus();
}

absl::StatusOr<KernelState> IptablesBackend::Read() const {
  KernelState state;
  std::vector<std::string> problems;
  ReadFamily<V4>(&state, &problems);
  ReadFamily<V6>(&state, &problems);
  state.layout_intact = state.table_present && problems.empty();
  state.problem = absl::StrJoin(problems, "; ");
  return state;
}

absl::Status IptablesBackend::DeleteTable() {
  RemoveFamily<V4>();
  RemoveFamily<V6>();
  return absl::OkStatus();
}

}  // namespace fabric::nat
