// The two families (iptables, ip6tables) behind one interface for the
// templates of the iptables backend and its change watcher, our chains and
// the jumps to them, and the fingerprint both compare.
//
// Internal to nat/backend/iptables. Everything here works on a libiptc
// handle, which reads and writes the network namespace of the thread that
// opened it.
#pragma once

#include <arpa/inet.h>
#include <libiptc/libiptc.h>
// libip6tc.h, unlike libiptc.h, declares no C linkage itself.
extern "C" {
#include <libiptc/libip6tc.h>
}
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nat/types.h"

namespace fabric::nat::iptables_internal {

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
inline constexpr __u32 kSctpDestPorts = 0x02;

inline constexpr char kHostports[] = "FABRIC-HOSTPORTS";
inline constexpr char kPostrouting[] = "FABRIC-POSTROUTING";
inline constexpr char kForward[] = "FABRIC-FORWARD";

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

// The jumps from built-in chains: (table, built-in chain, our chain,
// local-only).
struct Jump {
  const char* table;
  const char* builtin;
  const char* chain;
  bool local_only;
};
inline constexpr Jump kJumps[] = {
    {"nat", "PREROUTING", kHostports, true},
    {"nat", "OUTPUT", kHostports, true},
    {"nat", "POSTROUTING", kPostrouting, false},
    {"filter", "FORWARD", kForward, false},
};
// Our chains of `table`, each once.
inline std::vector<const char*> OurChains(const char* table) {
  if (std::strcmp(table, "filter") == 0) return {kForward};
  return {kHostports, kPostrouting};
}

template <typename F>
int CountRules(xtc_handle* h, const char* chain) {
  int n = 0;
  for (const auto* e = F::First(chain, h); e != nullptr; e = F::Next(e, h)) ++n;
  return n;
}

template <typename F>
int CountJumps(xtc_handle* h, const Jump& j) {
  int n = 0;
  for (const auto* e = F::First(j.builtin, h); e != nullptr; e = F::Next(e, h)) {
    if (std::strcmp(F::Target(e, h), j.chain) == 0) ++n;
  }
  return n;
}

template <typename F>
bool HasJump(xtc_handle* h, const Jump& j) {
  return CountJumps<F>(h, j) > 0;
}

// A handle, freed on scope exit.
template <typename F>
struct Handle {
  explicit Handle(const char* table) : h(F::Init(table)) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { Reset(nullptr); }
  void Reset(xtc_handle* other) {
    if (h != nullptr) F::Free(h);
    h = other;
  }
  xtc_handle* h;
};

// "ipv4 nat".
template <typename F>
std::string TableKey(const char* table) {
  return absl::StrCat(FamilyName(F::kFamily), " ", table);
}

// A cheap picture of our part of one table: how many rules each of our
// chains holds ("-" when missing) and how many jumps each built-in chain
// makes to it. The backend takes it of what it commits, the change watcher
// of what the kernel holds; a difference is a foreign change.
template <typename F>
std::string Fingerprint(xtc_handle* h, const char* table) {
  std::string out;
  for (const char* chain : OurChains(table)) {
    absl::StrAppend(&out, out.empty() ? "" : " ", chain, "=",
                    F::IsChain(chain, h) ? absl::StrCat(CountRules<F>(h, chain)) : "-");
  }
  for (const Jump& j : kJumps) {
    if (std::strcmp(j.table, table) != 0) continue;
    absl::StrAppend(&out, " ", j.builtin, ">", j.chain, "=", CountJumps<F>(h, j));
  }
  return out;
}

}  // namespace fabric::nat::iptables_internal
