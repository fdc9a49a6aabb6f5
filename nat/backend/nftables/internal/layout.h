// The kernel layout of table `inet fabric_nat` that encode.h draws: its maps
// and sets, chains and rules, as specs and as libnftnl objects, and which
// rules the set sizes call for.
//
// Internal to nat/backend/nftables: encode.cc builds its netlink messages
// from these, layout.cc defines them, signatures.cc derives the layout
// signatures Read() checks (declared in encode.h), and forward_accept.cc
// borrows the rule builders. Constant tables and pure functions:
// thread-safe.
#pragma once

#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "nat/backend/nftables/encode.h"
#include "nat/types.h"

namespace fabric::nat::nftables::internal {

// ---------------------------------------------------------------------------
// The layout's maps and sets.

struct DnatMap {
  const char* name;
  Family family;
  bool specific_host;  // key starts with the host address
  bool range;          // interval map, data is the address only
};

inline constexpr DnatMap kDnatMaps[] = {
    {"dnat4", Family::kIPv4, true, false},
    {"dnat4_any", Family::kIPv4, false, false},
    {"range4", Family::kIPv4, true, true},
    {"range4_any", Family::kIPv4, false, true},
    {"dnat6", Family::kIPv6, true, false},
    {"dnat6_any", Family::kIPv6, false, false},
    {"range6", Family::kIPv6, true, true},
    {"range6_any", Family::kIPv6, false, true},
};

enum class PrefixKind { kMasquerade, kHairpin };
struct PrefixSet {
  const char* name;
  Family family;
  PrefixKind kind;
};
inline constexpr PrefixSet kPrefixSets[] = {
    {"masq4", Family::kIPv4, PrefixKind::kMasquerade},
    {"masq6", Family::kIPv6, PrefixKind::kMasquerade},
    {"hairpin4", Family::kIPv4, PrefixKind::kHairpin},
    {"hairpin6", Family::kIPv6, PrefixKind::kHairpin},
};
inline constexpr char kLocalhostSet[] = "localhost_ifaces";
// The IPv6 firewall (RuleSet::firewall6_interfaces, pinholes): the WAN
// interfaces it guards, and the pinholes without and with a remote host.
// The pinhole sets count packets per element.
inline constexpr char kFirewall6Set[] = "fw6_ifaces";
inline constexpr char kPinholeSet[] = "pinhole6";          // daddr . l4proto . dport
inline constexpr char kPinholeFromSet[] = "pinhole6_from";  // saddr . daddr . l4proto . dport

// The map that holds `e`.
const DnatMap& MapFor(const DnatElement& e);

// Bytes in an address of family `f`.
size_t AddrLen(Family f);

// ---------------------------------------------------------------------------
// RAII for libnftnl objects.

struct TableFree {
  void operator()(nftnl_table* t) const { nftnl_table_free(t); }
};
struct ChainFree {
  void operator()(nftnl_chain* c) const { nftnl_chain_free(c); }
};
struct SetFree {
  void operator()(nftnl_set* s) const { nftnl_set_free(s); }
};
struct RuleFree {
  void operator()(nftnl_rule* r) const { nftnl_rule_free(r); }
};
using TablePtr = std::unique_ptr<nftnl_table, TableFree>;
using ChainPtr = std::unique_ptr<nftnl_chain, ChainFree>;
using SetPtr = std::unique_ptr<nftnl_set, SetFree>;
using RulePtr = std::unique_ptr<nftnl_rule, RuleFree>;

// A reference to set `name` of our table, by name and by set id: the id
// ties a set created in a batch to the rules and elements that use it in
// the same batch.
SetPtr SetRef(const char* name);

// ---------------------------------------------------------------------------
// Rules.

// The layout's rules in chain order. Each one but the jumps looks up one
// set and exists only while that set has elements (Needed): a lookup in an
// empty set changes no packet's fate, and every new connection would pay
// for it. The jumps to hostports exist while any DNAT map has elements.
// SNAT rules (kSnat) are the exception: one per SnatRule in the sizes,
// first in postrouting, so that they win over masquerade.
enum class RuleKind {
  kJump, kDnat, kSnat, kPrefix, kLocalhost, kPinhole, kPinholeFrom, kFirewall6
};
struct RuleSpec {
  const char* chain;
  RuleKind kind;
  const DnatMap* map = nullptr;     // kDnat
  const PrefixSet* set = nullptr;   // kPrefix
  SnatRule snat;                    // kSnat

  friend bool operator==(const RuleSpec& a, const RuleSpec& b) {
    return std::strcmp(a.chain, b.chain) == 0 && a.kind == b.kind && a.map == b.map &&
           a.set == b.set && a.snat == b.snat;
  }
  friend bool operator!=(const RuleSpec& a, const RuleSpec& b) { return !(a == b); }
};

// The comment a SNAT rule carries, which Read() decodes it from.
std::string SnatComment(const SnatRule& rule);

// Adds `ct status dnat` (the connection was DNAT'd) to `r`; also used by
// forward_accept.cc for its rule in other tables.
void CtStatusDnat(nftnl_rule* r);
// Adds `counter accept` to `r`.
void AddCountedAccept(nftnl_rule* r);
// Sets `r`'s comment (its user data, as `nft` writes comments).
void SetComment(nftnl_rule* r, const std::string& comment);

// An empty rule of our table in `chain`.
RulePtr NewRule(const char* chain);

// The rules `sizes` calls for in `chain`, in order.
std::vector<RuleSpec> NeededIn(const char* chain, const SetSizes& sizes);

// The rule `spec` describes, built as the kernel reports it back.
RulePtr BuildRule(const RuleSpec& spec);

// Every rule `sizes` calls for, in chain order.
std::vector<RuleSpec> LayoutRules(const SetSizes& sizes);

// ---------------------------------------------------------------------------
// Chains and sets.

struct ChainSpec {
  const char* name;
  const char* type;  // nullptr for a regular chain
  uint32_t hook;
  int32_t priority;
  // Exists only while it has rules: a base chain costs every packet of its
  // hook a visit, so the forward chain is there only with the firewall.
  bool conditional = false;
};
inline constexpr ChainSpec kChains[] = {
    {"hostports", nullptr, 0, 0},
    {"prerouting", "nat", NF_INET_PRE_ROUTING, -100},
    {"output", "nat", NF_INET_LOCAL_OUT, -100},
    {"postrouting", "nat", NF_INET_POST_ROUTING, 100},
    {"forward", "filter", NF_INET_FORWARD, 0, true},
};

// Whether chain `spec` exists with sets of `sizes`.
bool ChainExists(const ChainSpec& spec, const SetSizes& sizes);

// A new chain made from `spec`, ready to create.
ChainPtr NewChain(const ChainSpec& spec);

struct SetSpec {
  std::string name;
  uint32_t flags;
  uint32_t key_type, key_len;
  uint32_t data_type, data_len;
  std::vector<uint8_t> concat;  // field lengths, for interval concatenations
  bool counter = false;         // a packet/byte counter on every element
};

// Every map and set of the layout, in the order a replace creates them.
std::vector<SetSpec> LayoutSets();

// A new set made from `spec`, ready to create.
SetPtr NewSet(const SetSpec& spec);

}  // namespace fabric::nat::nftables::internal
