// The kernel layout of table `inet fabric_nat` (internal/layout.h): the
// rule expressions and BuildRule, which rules the set sizes call for, and
// the chains and sets to create. encode.cc builds its messages from these;
// signatures.cc checks what Read() finds against them.
#include "nat/backend/nftables/internal/layout.h"

#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>
#include <libnftnl/udata.h>
#include <net/if.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace fabric::nat::nftables {

namespace internal {

namespace {

// nftables' datatype numbers (for `nft list` to print keys readably).
constexpr uint32_t kTypeIpv4 = 7, kTypeIpv6 = 8, kTypeProto = 12,
                   kTypeService = 13, kTypeIfname = 41;
constexpr int kTypeBits = 6;

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
  for (const char* other : {kLocalhostSet, kFirewall6Set, kPinholeSet, kPinholeFromSet}) {
    if (name == other) return id;
    ++id;
  }
  return id;
}

}  // namespace

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

SetPtr SetRef(const char* name) {
  SetPtr s(nftnl_set_alloc());
  nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
  nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name);
  nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
  nftnl_set_set_u32(s.get(), NFTNL_SET_ID, SetId(name));
  return s;
}

// ---------------------------------------------------------------------------
// Rules.

namespace {

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

// NAT chains see only a connection's first packet: a counter before the
// NAT statement counts connections (nat_connections_total).
nftnl_expr* Counter() { return nftnl_expr_alloc("counter"); }

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

// ct <key> & mask != 0 (set) or == 0 (!set).
void CtBits(nftnl_rule* r, uint32_t key, uint32_t mask, bool set) {
  nftnl_expr* ct = nftnl_expr_alloc("ct");
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_KEY, key);
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_DREG, NFT_REG_1);
  nftnl_rule_add_expr(r, ct);
  uint32_t zero = 0;
  nftnl_expr* bw = nftnl_expr_alloc("bitwise");
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_LEN, 4);
  nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_MASK, &mask, 4);
  nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
  nftnl_rule_add_expr(r, bw);
  nftnl_rule_add_expr(r, Cmp(NFT_REG_1, set ? NFT_CMP_NEQ : NFT_CMP_EQ, &zero, 4));
}


// iifname @fw6_ifaces meta nfproto ipv6
void FromFirewalledWan(nftnl_rule* r) {
  nftnl_rule_add_expr(r, Meta(NFT_META_IIFNAME, NFT_REG_1));
  nftnl_rule_add_expr(r, Lookup(kFirewall6Set, NFT_REG_1, -1, false));
  NfprotoIs(r, Family::kIPv6);
}

// The 32-bit register `index` (0 = NFT_REG32_00) as the kernel reports it
// back: a register on a 16-byte boundary is named by its 128-bit alias.
uint32_t Reg32(uint32_t index) {
  if (index % 4 == 0) return NFT_REG_1 + index / 4;
  return NFT_REG32_00 + index;
}

uint32_t SaddrOffset(Family f) { return f == Family::kIPv4 ? 12 : 8; }
uint32_t DaddrOffset(Family f) { return f == Family::kIPv4 ? 16 : 24; }

}  // namespace

void CtStatusDnat(nftnl_rule* r) { CtBits(r, NFT_CT_STATUS, IPS_DST_NAT, true); }

void SetComment(nftnl_rule* r, const std::string& comment) {
  nftnl_udata_buf* udata = nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN);
  nftnl_udata_put_strz(udata, NFTNL_UDATA_RULE_COMMENT, comment.c_str());
  nftnl_rule_set_data(r, NFTNL_RULE_USERDATA, nftnl_udata_buf_data(udata),
                      nftnl_udata_buf_len(udata));
  nftnl_udata_buf_free(udata);
}

void AddCountedAccept(nftnl_rule* r) {
  nftnl_rule_add_expr(r, Counter());
  nftnl_rule_add_expr(r, Verdict(NF_ACCEPT, nullptr));
}

RulePtr NewRule(const char* chain) {
  RulePtr r(nftnl_rule_alloc());
  nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, kTableName);
  nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, chain);
  nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
  return r;
}

namespace {

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
  nftnl_rule_add_expr(r.get(), Counter());
  nftnl_rule_add_expr(r.get(), nat);
  return r;
}

// <addr at offset> & mask(len) (==|!=) network, loaded into reg 1.
void AddressIn(nftnl_rule* r, uint32_t offset, const Prefix& net, bool negate) {
  const uint32_t alen = AddrLen(net.family());
  nftnl_rule_add_expr(r, Payload(NFT_PAYLOAD_NETWORK_HEADER, offset, alen, NFT_REG_1));
  if (net.length < static_cast<int>(alen * 8)) {
    uint8_t mask[16] = {}, zero[16] = {};
    for (int i = 0; i < net.length; ++i) mask[i / 8] |= static_cast<uint8_t>(0x80 >> (i % 8));
    nftnl_expr* bw = nftnl_expr_alloc("bitwise");
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_LEN, alen);
    nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_MASK, mask, alen);
    nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_XOR, zero, alen);
    nftnl_rule_add_expr(r, bw);
  }
  nftnl_rule_add_expr(r, Cmp(NFT_REG_1, negate ? NFT_CMP_NEQ : NFT_CMP_EQ,
                             net.address.bytes(), alen));
}

// [oifname "IF"] meta nfproto F <f> saddr SRC <f> daddr != SRC counter
//   snat <f> to TO, with a comment naming the rule (how Read() finds it).
RulePtr SnatRuleOfSpec(const SnatRule& rule) {
  RulePtr r = NewRule("postrouting");
  const Family f = rule.source.family();
  if (!rule.out_interface.empty()) {
    char name[IFNAMSIZ] = {};
    std::memcpy(name, rule.out_interface.data(),
                std::min<size_t>(rule.out_interface.size(), IFNAMSIZ - 1));
    nftnl_rule_add_expr(r.get(), Meta(NFT_META_OIFNAME, NFT_REG_1));
    nftnl_rule_add_expr(r.get(), Cmp(NFT_REG_1, NFT_CMP_EQ, name, IFNAMSIZ));
  }
  NfprotoIs(r.get(), f);
  AddressIn(r.get(), SaddrOffset(f), rule.source, /*negate=*/false);
  AddressIn(r.get(), DaddrOffset(f), rule.source, /*negate=*/true);
  nftnl_rule_add_expr(r.get(), Counter());
  nftnl_expr* to = nftnl_expr_alloc("immediate");
  nftnl_expr_set_u32(to, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
  nftnl_expr_set(to, NFTNL_EXPR_IMM_DATA, rule.to.bytes(), AddrLen(f));
  nftnl_rule_add_expr(r.get(), to);
  nftnl_expr* nat = nftnl_expr_alloc("nat");
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_TYPE, NFT_NAT_SNAT);
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_FAMILY, f == Family::kIPv4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
  // Explicit, as the kernel reports them back (see DnatRule).
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_ADDR_MIN, NFT_REG_1);
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_REG_ADDR_MAX, NFT_REG_1);
  nftnl_expr_set_u32(nat, NFTNL_EXPR_NAT_FLAGS, NF_NAT_RANGE_MAP_IPS);
  nftnl_rule_add_expr(r.get(), nat);
  SetComment(r.get(), SnatComment(rule));
  return r;
}

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
    r->push_back({"forward", RuleKind::kPinhole});
    r->push_back({"forward", RuleKind::kPinholeFrom});
    r->push_back({"forward", RuleKind::kFirewall6});
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
    case RuleKind::kSnat:
      return false;  // not in AllRules: NeededIn lays them down
    case RuleKind::kPrefix:
      return SizeOf(sizes, spec.set->name) > 0;
    case RuleKind::kLocalhost:
      return SizeOf(sizes, kLocalhostSet) > 0;
    case RuleKind::kPinhole:
      return SizeOf(sizes, kFirewall6Set) > 0 && SizeOf(sizes, kPinholeSet) > 0;
    case RuleKind::kPinholeFrom:
      return SizeOf(sizes, kFirewall6Set) > 0 && SizeOf(sizes, kPinholeFromSet) > 0;
    case RuleKind::kFirewall6:
      return SizeOf(sizes, kFirewall6Set) > 0;
  }
  return false;
}

}  // namespace

std::vector<RuleSpec> NeededIn(const char* chain, const SetSizes& sizes) {
  std::vector<RuleSpec> out;
  if (std::strcmp(chain, "postrouting") == 0) {
    for (const SnatRule& rule : SnatOrder(sizes.snat)) {
      out.push_back({"postrouting", RuleKind::kSnat, nullptr, nullptr, rule});
    }
  }
  for (const RuleSpec& spec : AllRules()) {
    if (std::strcmp(spec.chain, chain) == 0 && Needed(spec, sizes)) {
      out.push_back(spec);
    }
  }
  return out;
}

std::string SnatComment(const SnatRule& rule) {
  std::string out = absl::StrCat("fabric-nat snat ", rule.source.ToString(), " to ",
                                 rule.to.ToString());
  if (!rule.out_interface.empty()) absl::StrAppend(&out, " oif ", rule.out_interface);
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
    case RuleKind::kSnat:
      return SnatRuleOfSpec(spec.snat);
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
      nftnl_rule_add_expr(r.get(), Counter());
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
      nftnl_rule_add_expr(r.get(), Counter());
      nftnl_rule_add_expr(r.get(), Masquerade());
      return r;
    }
    case RuleKind::kPinhole:
    case RuleKind::kPinholeFrom: {
      // iifname @fw6_ifaces meta nfproto ipv6
      //   [ip6 saddr .] ip6 daddr . meta l4proto . th dport @pinhole6[_from] accept
      const bool from = spec.kind == RuleKind::kPinholeFrom;
      RulePtr r = NewRule("forward");
      FromFirewalledWan(r.get());
      uint32_t reg = 0;
      if (from) {
        nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER,
                                             SaddrOffset(Family::kIPv6), 16, Reg32(0)));
        reg = 4;
      }
      nftnl_rule_add_expr(r.get(), Payload(NFT_PAYLOAD_NETWORK_HEADER,
                                           DaddrOffset(Family::kIPv6), 16, Reg32(reg)));
      reg += 4;
      nftnl_rule_add_expr(r.get(), Meta(NFT_META_L4PROTO, Reg32(reg)));
      nftnl_rule_add_expr(r.get(),
                          Payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, Reg32(reg + 1)));
      nftnl_rule_add_expr(r.get(), Lookup(from ? kPinholeFromSet : kPinholeSet, NFT_REG_1, -1,
                                          false));
      nftnl_rule_add_expr(r.get(), Verdict(NF_ACCEPT, nullptr));
      return r;
    }
    case RuleKind::kFirewall6: {
      // iifname @fw6_ifaces meta nfproto ipv6 ct state new
      //   meta l4proto != ipv6-icmp ct status & dnat == 0 drop
      RulePtr r = NewRule("forward");
      FromFirewalledWan(r.get());
      CtBits(r.get(), NFT_CT_STATE, NF_CT_STATE_BIT(IP_CT_NEW), true);
      uint8_t icmpv6 = 58;
      nftnl_rule_add_expr(r.get(), Meta(NFT_META_L4PROTO, NFT_REG_1));
      nftnl_rule_add_expr(r.get(), Cmp(NFT_REG_1, NFT_CMP_NEQ, &icmpv6, 1));
      CtBits(r.get(), NFT_CT_STATUS, IPS_DST_NAT, false);
      nftnl_rule_add_expr(r.get(), Verdict(NF_DROP, nullptr));
      return r;
    }
  }
  return nullptr;
}

std::vector<RuleSpec> LayoutRules(const SetSizes& sizes) {
  std::vector<RuleSpec> rules;
  bool snat_done = false;
  for (const RuleSpec& spec : AllRules()) {
    if (!snat_done && std::strcmp(spec.chain, "postrouting") == 0) {
      // The SNAT rules come first in postrouting (NeededIn).
      for (const SnatRule& rule : SnatOrder(sizes.snat)) {
        rules.push_back({"postrouting", RuleKind::kSnat, nullptr, nullptr, rule});
      }
      snat_done = true;
    }
    if (Needed(spec, sizes)) rules.push_back(spec);
  }
  return rules;
}

// ---------------------------------------------------------------------------
// Chains and sets.

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
    s.flags = NFT_SET_MAP | NFT_SET_EXPR;
    s.counter = true;  // connections per mapping (the element)
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
  sets.push_back(SetSpec{kFirewall6Set, 0, kTypeIfname, IFNAMSIZ, 0, 0, {}});
  const uint32_t pinhole_key = (((kTypeIpv6 << kTypeBits) | kTypeProto) << kTypeBits) |
                               kTypeService;
  sets.push_back(SetSpec{kPinholeSet, NFT_SET_EXPR, pinhole_key, 24, 0, 0, {}, true});
  sets.push_back(SetSpec{kPinholeFromSet, NFT_SET_EXPR,
                         (kTypeIpv6 << (3 * kTypeBits)) | pinhole_key, 40, 0, 0, {}, true});
  return sets;
}

bool ChainExists(const ChainSpec& spec, const SetSizes& sizes) {
  return !spec.conditional || !NeededIn(spec.name, sizes).empty();
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
  if (spec.counter) nftnl_set_add_expr(s.get(), nftnl_expr_alloc("counter"));
  return s;
}

}  // namespace internal
}  // namespace fabric::nat::nftables
