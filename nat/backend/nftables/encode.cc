#include "nat/backend/nftables/encode.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>
#include <net/if.h>

#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fabric::nat::nftables {

namespace {

// ---------------------------------------------------------------------------
// The layout's maps and sets.

struct DnatMap {
  const char* name;
  Family family;
  bool specific_host;  // key starts with the host address
  bool range;          // interval map, data is the address only
};

constexpr DnatMap kDnatMaps[] = {
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
constexpr PrefixSet kPrefixSets[] = {
    {"masq4", Family::kIPv4, PrefixKind::kMasquerade},
    {"masq6", Family::kIPv6, PrefixKind::kMasquerade},
    {"hairpin4", Family::kIPv4, PrefixKind::kHairpin},
    {"hairpin6", Family::kIPv6, PrefixKind::kHairpin},
};
constexpr char kLocalhostSet[] = "localhost_ifaces";

// nftables' datatype numbers (for `nft list` to print keys readably).
constexpr uint32_t kTypeIpv4 = 7, kTypeIpv6 = 8, kTypeProto = 12,
                   kTypeService = 13, kTypeIfname = 41;
constexpr int kTypeBits = 6;

const DnatMap& MapFor(const DnatElement& e) {
  for (const DnatMap& m : kDnatMaps) {
    if (m.family == e.family && m.specific_host == e.host_ip.has_value() &&
        m.range == e.is_range()) {
      return m;
    }
  }
  return kDnatMaps[0];  // unreachable: the table covers every combination
}

size_t AddrLen(Family f) { return f == Family::kIPv4 ? 4 : 16; }

// Set ids tie a set created in a batch to the rules and elements that use it
// in the same batch.
uint32_t SetId(const std::string& name) {
  uint32_t id = 1;
  for (const DnatMap& m : kDnatMaps) {
    if (name == m.name) return id;
    ++id;
  }
  for (const PrefixSet& p : kPrefixSets) {
    if (name == p.name) return id;
    ++id;
  }
  return id;
}

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

// ---------------------------------------------------------------------------
// Keys and data.

void PutPadded(std::vector<uint8_t>& out, const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + len);
  out.resize(out.size() + ((4 - len % 4) % 4), 0);
}

std::vector<uint8_t> DnatKey(const DnatElement& e, uint16_t port) {
  std::vector<uint8_t> key;
  if (e.host_ip.has_value()) PutPadded(key, e.host_ip->bytes(), e.host_ip->size());
  uint8_t proto = static_cast<uint8_t>(e.protocol);
  PutPadded(key, &proto, 1);
  uint16_t nport = htons(port);
  PutPadded(key, &nport, 2);
  return key;
}

std::vector<uint8_t> DnatData(const DnatElement& e) {
  std::vector<uint8_t> data;
  PutPadded(data, e.target_ip.bytes(), e.target_ip.size());
  if (!e.is_range()) {
    uint16_t nport = htons(e.target_port);
    PutPadded(data, &nport, 2);
  }
  return data;
}

// The first address past `p` (start of the next prefix), or nullopt when p
// reaches the top of the address space.
std::optional<IpAddress> AfterPrefix(const Prefix& p) {
  IpAddress last = p.Last();
  uint8_t bytes[16];
  std::memcpy(bytes, last.bytes(), last.size());
  for (int i = static_cast<int>(last.size()) - 1; i >= 0; --i) {
    if (++bytes[i] != 0) return IpAddress::FromBytes(last.family(), bytes);
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Message building.

class Builder {
 public:
  explicit Builder(uint32_t first_seq) : seq_(first_seq) {}

  void Begin() {
    nftnl_batch_begin(Reserve(), seq_++);
    Commit();
  }
  void End() {
    nftnl_batch_end(Reserve(), seq_++);
    Commit();
    out_.next_seq = seq_;
  }

  // Starts a message; the caller fills its payload, then calls Done.
  nlmsghdr* Start(uint16_t type, uint16_t flags, std::string what) {
    out_.what[seq_] = std::move(what);
    ++out_.messages;
    // No NLM_F_ACK: the kernel reports every error anyway, and a batch of
    // 100,000 elements would otherwise queue 100,000 acks.
    return nftnl_nlmsg_build_hdr(Reserve(), type, NFPROTO_INET,
                                 flags, seq_++);
  }
  void Done() { Commit(); }

  EncodedBatch Take() { return std::move(out_); }

 private:
  // Room for one message at the end of the buffer.
  char* Reserve() {
    out_.bytes.resize(used_ + kMaxMessage);
    return reinterpret_cast<char*>(out_.bytes.data() + used_);
  }
  void Commit() {
    auto* nlh = reinterpret_cast<nlmsghdr*>(out_.bytes.data() + used_);
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
    out_.bytes.resize(used_);
  }

  static constexpr size_t kMaxMessage = 16384;
  EncodedBatch out_;
  size_t used_ = 0;
  uint32_t seq_;
};

TablePtr NewTable() {
  TablePtr t(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
  nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
  return t;
}

SetPtr SetRef(const char* name) {
  SetPtr s(nftnl_set_alloc());
  nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
  nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name);
  nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
  nftnl_set_set_u32(s.get(), NFTNL_SET_ID, SetId(name));
  return s;
}

// One element message. `key_end` empty for non-interval keys.
void AddElementMessage(Builder& b, bool add, const char* set_name,
                       const std::vector<uint8_t>& key,
                       const std::vector<uint8_t>& key_end,
                       const std::vector<uint8_t>& data, uint32_t elem_flags,
                       std::string what) {
  SetPtr s = SetRef(set_name);
  nftnl_set_elem* e = nftnl_set_elem_alloc();
  nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key.data(), key.size());
  if (!key_end.empty()) {
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY_END, key_end.data(),
                       key_end.size());
  }
  if (!data.empty()) {
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_DATA, data.data(), data.size());
  }
  if (elem_flags != 0) nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_FLAGS, elem_flags);
  nftnl_set_elem_add(s.get(), e);
  nlmsghdr* nlh = b.Start(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM,
                          add ? (NLM_F_CREATE | NLM_F_EXCL) : 0,
                          std::move(what));
  nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
  b.Done();
}

void EncodeDnat(Builder& b, bool add, const DnatElement& e) {
  const DnatMap& m = MapFor(e);
  std::vector<uint8_t> key = DnatKey(e, e.port_lo);
  std::vector<uint8_t> key_end;
  if (m.range) key_end = DnatKey(e, e.port_hi);
  AddElementMessage(b, add, m.name, key, key_end, add ? DnatData(e) : std::vector<uint8_t>{},
                    0,
                    absl::StrCat(add ? "add " : "remove ", e.ToString(),
                                 add ? " to map " : " from map ", m.name));
}

void EncodePrefix(Builder& b, bool add, const Prefix& prefix,
                  PrefixKind kind) {
  const PrefixSet* set = nullptr;
  for (const PrefixSet& s : kPrefixSets) {
    if (s.kind == kind && s.family == prefix.family()) set = &s;
  }
  Prefix net = prefix.Network();
  std::string what =
      absl::StrCat(add ? "add " : "remove ", net.ToString(),
                   add ? " to set " : " from set ", set->name);
  std::vector<uint8_t> start(net.address.bytes(),
                             net.address.bytes() + net.address.size());
  AddElementMessage(b, add, set->name, start, {}, {}, 0, what);
  if (std::optional<IpAddress> after = AfterPrefix(net)) {
    std::vector<uint8_t> end(after->bytes(), after->bytes() + after->size());
    AddElementMessage(b, add, set->name, end, {}, {},
                      NFT_SET_ELEM_INTERVAL_END,
                      absl::StrCat(what, " (interval end)"));
  }
}

void EncodeInterface(Builder& b, bool add, const std::string& name) {
  std::vector<uint8_t> key(IFNAMSIZ, 0);
  std::memcpy(key.data(), name.data(), std::min<size_t>(name.size(), IFNAMSIZ - 1));
  AddElementMessage(b, add, kLocalhostSet, key, {}, {}, 0,
                    absl::StrCat(add ? "add " : "remove ", "interface ", name,
                                 add ? " to set " : " from set ",
                                 kLocalhostSet));
}

void EncodeElements(Builder& b, bool add, const RuleSet& r) {
  for (const DnatElement& e : r.dnat) EncodeDnat(b, add, e);
  for (const Prefix& p : r.masquerade) EncodePrefix(b, add, p, PrefixKind::kMasquerade);
  for (const Prefix& p : r.hairpin) EncodePrefix(b, add, p, PrefixKind::kHairpin);
  for (const std::string& i : r.localhost_interfaces) EncodeInterface(b, add, i);
}

// ---------------------------------------------------------------------------
// Rules.

nftnl_expr* Meta(uint32_t key, uint32_t dreg) {
  nftnl_expr* e = nftnl_expr_alloc("meta");
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, dreg);
  return e;
}

nftnl_expr* Cmp(uint32_t sreg, uint32_t op, const void* data, size_t len) {
  nftnl_expr* e = nftnl_expr_alloc("cmp");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, sreg);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
  nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
  return e;
}

nftnl_expr* Payload(uint32_t base, uint32_t offset, uint32_t len,
                    uint32_t dreg) {
  nftnl_expr* e = nftnl_expr_alloc("payload");
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, dreg);
  return e;
}

// A set lookup; dreg < 0 for a plain (set) lookup.
nftnl_expr* Lookup(const char* set, uint32_t sreg, int dreg, bool invert) {
  nftnl_expr* e = nftnl_expr_alloc("lookup");
  nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set);
  nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, SetId(set));
  nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, sreg);
  if (dreg >= 0) nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_DREG, dreg);
  // Explicit, as the kernel reports it back: rules compare equal on read.
  nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_FLAGS, invert ? NFT_LOOKUP_F_INV : 0);
  return e;
}

nftnl_expr* Verdict(int verdict, const char* chain) {
  nftnl_expr* e = nftnl_expr_alloc("immediate");
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, verdict);
  if (chain != nullptr) nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain);
  return e;
}

nftnl_expr* Masquerade() { return nftnl_expr_alloc("masq"); }

void NfprotoIs(nftnl_rule* r, Family f) {
  uint8_t proto = f == Family::kIPv4 ? NFPROTO_IPV4 : NFPROTO_IPV6;
  nftnl_rule_add_expr(r, Meta(NFT_META_NFPROTO, NFT_REG_1));
  nftnl_rule_add_expr(r, Cmp(NFT_REG_1, NFT_CMP_EQ, &proto, 1));
}

// fib daddr type local
void DaddrIsLocal(nftnl_rule* r) {
  nftnl_expr* fib = nftnl_expr_alloc("fib");
  nftnl_expr_set_u32(fib, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
  nftnl_expr_set_u32(fib, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
  nftnl_expr_set_u32(fib, NFTNL_EXPR_FIB_DREG, NFT_REG_1);
  nftnl_rule_add_expr(r, fib);
  uint32_t local = 2;  // RTN_LOCAL
  nftnl_rule_add_expr(r, Cmp(NFT_REG_1, NFT_CMP_EQ, &local, 4));
}

// ct status dnat
void CtStatusDnat(nftnl_rule* r) {
  nftnl_expr* ct = nftnl_expr_alloc("ct");
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_KEY, NFT_CT_STATUS);
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_DREG, NFT_REG_1);
  nftnl_rule_add_expr(r, ct);
  uint32_t mask = IPS_DST_NAT, zero = 0;
  nftnl_expr* bw = nftnl_expr_alloc("bitwise");
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_LEN, 4);
  nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_MASK, &mask, 4);
  nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
  nftnl_rule_add_expr(r, bw);
  nftnl_rule_add_expr(r, Cmp(NFT_REG_1, NFT_CMP_NEQ, &zero, 4));
}

// The 32-bit register `index` (0 = NFT_REG32_00) as the kernel reports it
// back: a register on a 16-byte boundary is named by its 128-bit alias.
uint32_t Reg32(uint32_t index) {
  if (index % 4 == 0) return NFT_REG_1 + index / 4;
  return NFT_REG32_00 + index;
}

uint32_t SaddrOffset(Family f) { return f == Family::kIPv4 ? 12 : 8; }
uint32_t DaddrOffset(Family f) { return f == Family::kIPv4 ? 16 : 24; }

RulePtr NewRule(const char* chain) {
  RulePtr r(nftnl_rule_alloc());
  nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, kTableName);
  nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, chain);
  nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
  return r;
}

// dnat <family> to [daddr .] l4proto . dport map @m
RulePtr DnatRule(const DnatMap& m) {
  RulePtr r = NewRule("hostports");
  NfprotoIs(r.get(), m.family);
  size_t alen = AddrLen(m.family);
  // 32-bit registers, filled in key order: [address] . l4proto . dport.
  uint32_t reg = 0;
  if (m.specific_host) {
    nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER,
                                         DaddrOffset(m.family), alen, Reg32(0)));
    reg += alen / 4;
  }
  nftnl_rule_add_expr(r.get(), Meta(NFT_META_L4PROTO, Reg32(reg)));
  ++reg;
  nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, Reg32(reg)));
  nftnl_rule_add_expr(r.get(), Lookup(m.name, NFT_REG_1, NFT_REG_1, false));
  nftnl_expr* nat = nftnl_expr_alloc("nat");
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_FAMILY,
                     m.family == Family::kIPv4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
  // Min and max registers and flags are explicit, as the kernel reports
  // them back, so that rules compare equal on read.
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_ADDR_MIN, NFT_REG_1);
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_ADDR_MAX, NFT_REG_1);
  uint32_t flags = NF_NAT_RANGE_MAP_IPS;
  if (!m.range) {
    // The port follows the address in the data: reg32 1 after an IPv4
    // address, reg32 4 (= 128-bit reg 2) after an IPv6 one.
    uint32_t port_reg = Reg32(alen / 4);
    nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_PROTO_MIN, port_reg);
    nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_PROTO_MAX, port_reg);
    flags |= NF_NAT_RANGE_PROTO_SPECIFIED;
  }
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_FLAGS, flags);
  nftnl_rule_add_expr(r.get(), nat);
  return r;
}

// The layout's rules in chain order. Each one but the jumps looks up one
// set and exists only while that set has elements (Needed): a lookup in an
// empty set changes no packet's fate, and every new connection would pay
// for it. The jumps to hostports exist while any DNAT map has elements.
enum class RuleKind { kJump, kDnat, kPrefix, kLocalhost };
struct RuleSpec {
  const char* chain;
  RuleKind kind;
  const DnatMap* map = nullptr;     // kDnat
  const PrefixSet* set = nullptr;   // kPrefix
};

const DnatMap& DnatMapNamed(const char* name) {
  for (const DnatMap& m : kDnatMaps) {
    if (std::strcmp(m.name, name) == 0) return m;
  }
  return kDnatMaps[0];
}

const std::vector<RuleSpec>& AllRules() {
  static const std::vector<RuleSpec>* rules = [] {
    auto* r = new std::vector<RuleSpec>;
    r->push_back({"prerouting", RuleKind::kJump});
    r->push_back({"output", RuleKind::kJump});
    // Any-address maps first: they hold the common case, and a mapping on
    // one host address never shares a port with one on any address (the
    // port allocator refuses it), so the order decides no packet's fate.
    for (const char* name : {"dnat4_any", "range4_any", "dnat4", "range4",
                             "dnat6_any", "range6_any", "dnat6", "range6"}) {
      r->push_back({"hostports", RuleKind::kDnat, &DnatMapNamed(name)});
    }
    for (const PrefixSet& s : kPrefixSets) {
      r->push_back({"postrouting", RuleKind::kPrefix, nullptr, &s});
    }
    r->push_back({"postrouting", RuleKind::kLocalhost});
    return r;
  }();
  return *rules;
}

size_t SizeOf(const SetSizes& sizes, const std::string& name) {
  auto it = sizes.find(name);
  return it == sizes.end() ? 0 : it->second;
}

bool Needed(const RuleSpec& spec, const SetSizes& sizes) {
  switch (spec.kind) {
    case RuleKind::kJump:
      for (const DnatMap& m : kDnatMaps) {
        if (SizeOf(sizes, m.name) > 0) return true;
      }
      return false;
    case RuleKind::kDnat:
      return SizeOf(sizes, spec.map->name) > 0;
    case RuleKind::kPrefix:
      return SizeOf(sizes, spec.set->name) > 0;
    case RuleKind::kLocalhost:
      return SizeOf(sizes, kLocalhostSet) > 0;
  }
  return false;
}

// The rules `sizes` calls for in `chain`, in order.
std::vector<const RuleSpec*> NeededIn(const char* chain, const SetSizes& sizes) {
  std::vector<const RuleSpec*> out;
  for (const RuleSpec& spec : AllRules()) {
    if (std::strcmp(spec.chain, chain) == 0 && Needed(spec, sizes)) {
      out.push_back(&spec);
    }
  }
  return out;
}

RulePtr BuildRule(const RuleSpec& spec) {
  switch (spec.kind) {
    case RuleKind::kJump: {
      // fib daddr type local jump hostports
      RulePtr r = NewRule(spec.chain);
      DaddrIsLocal(r.get());
      nftnl_rule_add_expr(r.get(), Verdict(NFT_JUMP, "hostports"));
      return r;
    }
    case RuleKind::kDnat:
      return DnatRule(*spec.map);
    case RuleKind::kPrefix: {
      const PrefixSet& s = *spec.set;
      RulePtr r = NewRule("postrouting");
      const uint32_t alen = AddrLen(s.family);
      if (s.kind == PrefixKind::kHairpin) CtStatusDnat(r.get());
      NfprotoIs(r.get(), s.family);
      nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER,
                                           SaddrOffset(s.family), alen, NFT_REG_1));
      nftnl_rule_add_expr(r.get(), Lookup(s.name, NFT_REG_1, -1, false));
      nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER,
                                           DaddrOffset(s.family), alen, NFT_REG_1));
      // Hairpin: source and destination both in the networks. Masquerade:
      // destination outside them.
      nftnl_rule_add_expr(r.get(), Lookup(s.name, NFT_REG_1, -1,
                                          s.kind == PrefixKind::kMasquerade));
      nftnl_rule_add_expr(r.get(), Masquerade());
      return r;
    }
    case RuleKind::kLocalhost: {
      // oifname @localhost_ifaces ip saddr 127.0.0.0/8 masquerade
      RulePtr r = NewRule("postrouting");
      nftnl_rule_add_expr(r.get(), Meta(NFT_META_OIFNAME, NFT_REG_1));
      nftnl_rule_add_expr(r.get(), Lookup(kLocalhostSet, NFT_REG_1, -1, false));
      NfprotoIs(r.get(), Family::kIPv4);
      nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 1, NFT_REG_1));
      uint8_t loopback = 127;
      nftnl_rule_add_expr(r.get(), Cmp(NFT_REG_1, NFT_CMP_EQ, &loopback, 1));
      nftnl_rule_add_expr(r.get(), Masquerade());
      return r;
    }
  }
  return nullptr;
}

// Every rule `sizes` calls for, in chain order.
std::vector<const RuleSpec*> LayoutRules(const SetSizes& sizes) {
  std::vector<const RuleSpec*> rules;
  for (const RuleSpec& spec : AllRules()) {
    if (Needed(spec, sizes)) rules.push_back(&spec);
  }
  return rules;
}

// "add rule to chain hostports: dnat through map dnat4_any".
std::string RuleWhat(const RuleSpec& spec) {
  std::string what = absl::StrCat("add rule to chain ", spec.chain, ": ");
  switch (spec.kind) {
    case RuleKind::kJump:
      return absl::StrCat(what, "jump to hostports");
    case RuleKind::kDnat:
      return absl::StrCat(what, "dnat through map ", spec.map->name);
    case RuleKind::kPrefix:
      return absl::StrCat(what,
                          spec.set->kind == PrefixKind::kHairpin ? "hairpin"
                                                                 : "outbound",
                          " masquerade by set ", spec.set->name);
    case RuleKind::kLocalhost:
      return absl::StrCat(what, "localhost masquerade by set ", kLocalhostSet);
  }
  return what;
}

void EncodeRule(Builder& b, const RuleSpec& spec) {
  RulePtr rule = BuildRule(spec);
  nftnl_rule_nlmsg_build_payload(
      b.Start(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, RuleWhat(spec)),
      rule.get());
  b.Done();
}

// ---------------------------------------------------------------------------
// Chains and sets.

struct ChainSpec {
  const char* name;
  const char* type;  // nullptr for a regular chain
  uint32_t hook;
  int32_t priority;
};
constexpr ChainSpec kChains[] = {
    {"hostports", nullptr, 0, 0},
    {"prerouting", "nat", NF_INET_PRE_ROUTING, -100},
    {"output", "nat", NF_INET_LOCAL_OUT, -100},
    {"postrouting", "nat", NF_INET_POST_ROUTING, 100},
};

ChainPtr NewChain(const ChainSpec& spec) {
  ChainPtr c(nftnl_chain_alloc());
  nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, kTableName);
  nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, spec.name);
  nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
  if (spec.type != nullptr) {
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, spec.type);
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, spec.hook);
    nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, spec.priority);
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
  }
  return c;
}

struct SetSpec {
  std::string name;
  uint32_t flags;
  uint32_t key_type, key_len;
  uint32_t data_type, data_len;
  std::vector<uint8_t> concat;  // field lengths, for interval concatenations
};

std::vector<SetSpec> LayoutSets() {
  std::vector<SetSpec> sets;
  for (const DnatMap& m : kDnatMaps) {
    SetSpec s;
    s.name = m.name;
    uint32_t addr_type = m.family == Family::kIPv4 ? kTypeIpv4 : kTypeIpv6;
    uint32_t alen = AddrLen(m.family);
    s.key_type = (kTypeProto << kTypeBits) | kTypeService;
    s.key_len = 8;
    if (m.specific_host) {
      s.key_type = (((addr_type << kTypeBits) | kTypeProto) << kTypeBits) |
                   kTypeService;
      s.key_len += alen;
    }
    s.flags = NFT_SET_MAP;
    if (m.range) {
      s.flags |= NFT_SET_INTERVAL | NFT_SET_CONCAT;
      s.data_type = addr_type;
      s.data_len = alen;
      if (m.specific_host) s.concat.push_back(alen);
      s.concat.push_back(1);
      s.concat.push_back(2);
    } else {
      s.data_type = (addr_type << kTypeBits) | kTypeService;
      s.data_len = alen + 4;
    }
    sets.push_back(s);
  }
  for (const PrefixSet& p : kPrefixSets) {
    sets.push_back(SetSpec{p.name, NFT_SET_INTERVAL,
                           p.family == Family::kIPv4 ? kTypeIpv4 : kTypeIpv6,
                           static_cast<uint32_t>(AddrLen(p.family)), 0, 0, {}});
  }
  sets.push_back(SetSpec{kLocalhostSet, 0, kTypeIfname, IFNAMSIZ, 0, 0, {}});
  return sets;
}

SetPtr NewSet(const SetSpec& spec) {
  SetPtr s = SetRef(spec.name.c_str());
  nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, spec.flags);
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, spec.key_type);
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, spec.key_len);
  if (spec.flags & NFT_SET_MAP) {
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, spec.data_type);
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, spec.data_len);
  }
  if (!spec.concat.empty()) {
    nftnl_set_set_data(s.get(), NFTNL_SET_DESC_CONCAT, spec.concat.data(),
                       spec.concat.size());
  }
  return s;
}

std::string SetSpecSignature(uint32_t flags, uint32_t key_len,
                             uint32_t data_len) {
  return absl::StrCat("flags 0x", absl::Hex(flags), " key ", key_len,
                      " data ", data_len);
}

}  // namespace

// ---------------------------------------------------------------------------

SetSizes SizesOf(const RuleSet& rules) {
  SetSizes sizes;
  for (const DnatElement& e : rules.dnat) ++sizes[MapFor(e).name];
  for (const Prefix& p : rules.masquerade) {
    ++sizes[p.family() == Family::kIPv4 ? "masq4" : "masq6"];
  }
  for (const Prefix& p : rules.hairpin) {
    ++sizes[p.family() == Family::kIPv4 ? "hairpin4" : "hairpin6"];
  }
  if (!rules.localhost_interfaces.empty()) {
    sizes[kLocalhostSet] = rules.localhost_interfaces.size();
  }
  return sizes;
}

SetSizes SizesAfter(SetSizes before, const Batch& batch) {
  SetSizes removed = SizesOf(batch.remove);
  for (const auto& [name, n] : removed) {
    size_t& have = before[name];
    have = have > n ? have - n : 0;
  }
  for (const auto& [name, n] : SizesOf(batch.add)) before[name] += n;
  for (auto it = before.begin(); it != before.end();) {
    it = it->second == 0 ? before.erase(it) : std::next(it);
  }
  return before;
}

EncodedBatch EncodeApply(const Batch& batch, const SetSizes& before,
                         uint32_t first_seq) {
  Builder b(first_seq);
  b.Begin();
  EncodeElements(b, /*add=*/false, batch.remove);
  EncodeElements(b, /*add=*/true, batch.add);
  // A set that gains its first element or loses its last changes the rules
  // of its chain: the same batch flushes the chain and lays down what the
  // new contents call for, so the kernel commits both or neither. A flush
  // needs no rule handles, and leaves the chain right even if it held
  // something else.
  SetSizes after = SizesAfter(before, batch);
  for (const ChainSpec& chain : kChains) {
    std::vector<const RuleSpec*> want = NeededIn(chain.name, after);
    if (want == NeededIn(chain.name, before)) continue;
    RulePtr flush = NewRule(chain.name);
    nftnl_rule_nlmsg_build_payload(
        b.Start(NFT_MSG_DELRULE, 0, absl::StrCat("flush chain ", chain.name)),
        flush.get());
    b.Done();
    for (const RuleSpec* spec : want) EncodeRule(b, *spec);
  }
  b.End();
  return b.Take();
}

EncodedBatch EncodeReplace(const RuleSet& desired, uint32_t first_seq) {
  Builder b(first_seq);
  b.Begin();
  TablePtr table = NewTable();
  // Create-if-missing, then delete, so that the delete cannot fail.
  nftnl_table_nlmsg_build_payload(
      b.Start(NFT_MSG_NEWTABLE, NLM_F_CREATE, "create table inet fabric_nat"),
      table.get());
  b.Done();
  nftnl_table_nlmsg_build_payload(
      b.Start(NFT_MSG_DELTABLE, 0, "delete table inet fabric_nat"),
      table.get());
  b.Done();
  nftnl_table_nlmsg_build_payload(
      b.Start(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL,
              "recreate table inet fabric_nat"),
      table.get());
  b.Done();
  for (const ChainSpec& spec : kChains) {
    ChainPtr c = NewChain(spec);
    nftnl_chain_nlmsg_build_payload(
        b.Start(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL,
                absl::StrCat("add chain ", spec.name)),
        c.get());
    b.Done();
  }
  for (const SetSpec& spec : LayoutSets()) {
    SetPtr s = NewSet(spec);
    nftnl_set_nlmsg_build_payload(
        b.Start(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL,
                absl::StrCat("add set ", spec.name)),
        s.get());
    b.Done();
  }
  for (const RuleSpec* spec : LayoutRules(SizesOf(desired))) EncodeRule(b, *spec);
  EncodeElements(b, /*add=*/true, desired);
  b.End();
  return b.Take();
}

EncodedBatch EncodeDeleteTable(uint32_t first_seq) {
  Builder b(first_seq);
  b.Begin();
  TablePtr table = NewTable();
  nftnl_table_nlmsg_build_payload(
      b.Start(NFT_MSG_DELTABLE, 0, "delete table inet fabric_nat"),
      table.get());
  b.Done();
  b.End();
  return b.Take();
}

std::vector<std::string> SetNames() {
  std::vector<std::string> names;
  for (const SetSpec& s : LayoutSets()) names.push_back(s.name);
  return names;
}

absl::Status DecodeElements(const nftnl_set* set, RuleSet* rules,
                            std::set<std::string>* seen) {
  std::string name = nftnl_set_get_str(set, NFTNL_SET_NAME);
  const DnatMap* map = nullptr;
  for (const DnatMap& m : kDnatMaps) {
    if (name == m.name) map = &m;
  }
  const PrefixSet* prefixes = nullptr;
  for (const PrefixSet& p : kPrefixSets) {
    if (name == p.name) prefixes = &p;
  }
  std::vector<std::string> foreign;
  // Interval sets: start and end elements, collected then paired in order.
  // Adjacent prefixes share an address (the end of one, the start of the
  // next); the end sorts first.
  std::vector<std::pair<IpAddress, bool>> bounds;  // (address, is start)

  nftnl_set_elems_iter* it =
      nftnl_set_elems_iter_create(const_cast<nftnl_set*>(set));
  for (nftnl_set_elem* e = nftnl_set_elems_iter_next(it); e != nullptr;
       e = nftnl_set_elems_iter_next(it)) {
    uint32_t klen = 0, kelen = 0, dlen = 0;
    const uint8_t* key = static_cast<const uint8_t*>(
        nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &klen));
    const uint8_t* key_end = static_cast<const uint8_t*>(
        nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY_END, &kelen));
    const uint8_t* data = static_cast<const uint8_t*>(
        nftnl_set_elem_get(e, NFTNL_SET_ELEM_DATA, &dlen));
    uint32_t flags = nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_FLAGS)
                         ? nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_FLAGS)
                         : 0;
    if (seen != nullptr && key != nullptr) {
      std::string id(reinterpret_cast<const char*>(key), klen);
      if (key_end != nullptr) id.append(reinterpret_cast<const char*>(key_end), kelen);
      id.push_back(static_cast<char>(flags & NFT_SET_ELEM_INTERVAL_END));
      if (!seen->insert(id).second) {
        nftnl_set_elems_iter_destroy(it);
        return absl::AbortedError(absl::StrCat(
            "set ", name, " changed shape during the dump (an element came twice)"));
      }
    }
    if (map != nullptr) {
      size_t alen = AddrLen(map->family);
      size_t want_key = (map->specific_host ? alen : 0) + 8;
      size_t want_data = alen + (map->range ? 0 : 4);
      if (key == nullptr || klen != want_key || data == nullptr ||
          dlen != want_data || (map->range && (key_end == nullptr || kelen != klen))) {
        foreign.push_back("malformed element");
        continue;
      }
      DnatElement d;
      d.family = map->family;
      size_t off = 0;
      if (map->specific_host) {
        d.host_ip = IpAddress::FromBytes(map->family, key);
        off = alen;
      }
      d.protocol = static_cast<Protocol>(key[off]);
      uint16_t port;
      std::memcpy(&port, key + off + 4, 2);
      d.port_lo = d.port_hi = ntohs(port);
      if (map->range) {
        std::memcpy(&port, key_end + off + 4, 2);
        d.port_hi = ntohs(port);
      }
      d.target_ip = IpAddress::FromBytes(map->family, data);
      if (!map->range) {
        std::memcpy(&port, data + alen, 2);
        d.target_port = ntohs(port);
      }
      rules->dnat.insert(d);
    } else if (prefixes != nullptr) {
      if (key == nullptr || klen != AddrLen(prefixes->family)) {
        foreign.push_back("malformed element");
        continue;
      }
      bounds.emplace_back(IpAddress::FromBytes(prefixes->family, key),
                          (flags & NFT_SET_ELEM_INTERVAL_END) == 0);
    } else if (name == kLocalhostSet) {
      if (key == nullptr || klen != IFNAMSIZ) {
        foreign.push_back("malformed element");
        continue;
      }
      rules->localhost_interfaces.insert(
          std::string(reinterpret_cast<const char*>(key),
                      strnlen(reinterpret_cast<const char*>(key), klen)));
    }
  }
  nftnl_set_elems_iter_destroy(it);

  if (prefixes != nullptr) {
    // Pair each start with the next end; a start with no end runs to the top.
    std::sort(bounds.begin(), bounds.end());
    for (auto b = bounds.begin(); b != bounds.end(); ++b) {
      if (!b->second) continue;  // a stray end element (e.g. nft's 0 end)
      IpAddress start = b->first;
      auto next = std::next(b);
      std::optional<IpAddress> end;
      if (next != bounds.end()) {
        if (next->second) {
          foreign.push_back(absl::StrCat("open interval at ", start.ToString()));
          continue;
        }
        end = next->first;
      }
      // Find the prefix length whose range is exactly [start, end).
      std::optional<Prefix> found;
      int max = start.is_v4() ? 32 : 128;
      for (int len = 0; len <= max && !found; ++len) {
        Prefix p{start, len};
        if (p.Network().address == start && AfterPrefix(p) == end) found = p;
      }
      if (!found) {
        foreign.push_back(absl::StrCat("interval from ", start.ToString(),
                                       " is not a prefix"));
        continue;
      }
      if (prefixes->kind == PrefixKind::kMasquerade) {
        rules->masquerade.insert(*found);
      } else {
        rules->hairpin.insert(*found);
      }
    }
  }
  if (!foreign.empty()) {
    return absl::DataLossError(absl::StrCat("set ", name, ": ", foreign.size(),
                                            " foreign element(s), first: ",
                                            foreign.front()));
  }
  return absl::OkStatus();
}

std::string RuleSignature(nftnl_rule* rule) {
  std::string sig;
  nftnl_expr_foreach(
      rule,
      [](nftnl_expr* e, void* data) -> int {
        auto* out = static_cast<std::string*>(data);
        char buf[512];
        nftnl_expr_snprintf(buf, sizeof(buf), e, NFTNL_OUTPUT_DEFAULT, 0);
        absl::StrAppend(out, "[ ", nftnl_expr_get_str(e, NFTNL_EXPR_NAME), " ",
                        buf, " ]");
        return 0;
      },
      &sig);
  return sig;
}

std::map<std::string, std::vector<std::string>> ExpectedRuleSignatures(
    const SetSizes& sizes) {
  std::map<std::string, std::vector<std::string>> out;
  for (const ChainSpec& spec : kChains) out[spec.name];
  for (const RuleSpec* spec : LayoutRules(sizes)) {
    out[spec->chain].push_back(RuleSignature(BuildRule(*spec).get()));
  }
  return out;
}

std::map<std::string, std::string> ExpectedChains() {
  std::map<std::string, std::string> out;
  for (const ChainSpec& spec : kChains) {
    out[spec.name] = ChainSignature(NewChain(spec).get());
  }
  return out;
}

std::string ChainSignature(const nftnl_chain* c) {
  if (!nftnl_chain_is_set(c, NFTNL_CHAIN_TYPE)) return "regular";
  return absl::StrCat(nftnl_chain_get_str(c, NFTNL_CHAIN_TYPE), " hook ",
                      nftnl_chain_get_u32(c, NFTNL_CHAIN_HOOKNUM), " priority ",
                      nftnl_chain_get_s32(c, NFTNL_CHAIN_PRIO), " policy ",
                      nftnl_chain_is_set(c, NFTNL_CHAIN_POLICY)
                          ? nftnl_chain_get_u32(c, NFTNL_CHAIN_POLICY)
                          : NF_ACCEPT);
}

std::map<std::string, std::string> ExpectedSets() {
  std::map<std::string, std::string> out;
  for (const SetSpec& s : LayoutSets()) {
    out[s.name] = SetSpecSignature(s.flags, s.key_len,
                                   (s.flags & NFT_SET_MAP) ? s.data_len : 0);
  }
  return out;
}

std::string SetSignature(const nftnl_set* s) {
  uint32_t flags = nftnl_set_get_u32(s, NFTNL_SET_FLAGS);
  return SetSpecSignature(flags, nftnl_set_get_u32(s, NFTNL_SET_KEY_LEN),
                          (flags & NFT_SET_MAP)
                              ? nftnl_set_get_u32(s, NFTNL_SET_DATA_LEN)
                              : 0);
}

}  // namespace fabric::nat::nftables
