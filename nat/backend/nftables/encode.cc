// Turns batches and rule sets into netlink messages of table inet
// fabric_nat, and set dumps back into rule sets (encode.h). The layout they
// encode (maps, sets, chains, rules) is in internal/layout.h and layout.cc.
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
#include <linux/netfilter/nf_tables.h>
#include <net/if.h>

#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nat/backend/nftables/internal/layout.h"

namespace fabric::nat::nftables {

using internal::AddrLen;
using internal::BuildRule;
using internal::ChainPtr;
using internal::ChainSpec;
using internal::DnatMap;
using internal::kChains;
using internal::kDnatMaps;
using internal::kFirewall6Set;
using internal::kLocalhostSet;
using internal::kPinholeFromSet;
using internal::kPinholeSet;
using internal::ChainExists;
using internal::kPrefixSets;
using internal::LayoutRules;
using internal::LayoutSets;
using internal::MapFor;
using internal::NeededIn;
using internal::NewChain;
using internal::NewRule;
using internal::NewSet;
using internal::PrefixKind;
using internal::PrefixSet;
using internal::RuleKind;
using internal::RulePtr;
using internal::RuleSpec;
using internal::SetPtr;
using internal::SetRef;
using internal::SetSpec;
using internal::TablePtr;

namespace {

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

void EncodeInterface(Builder& b, bool add, const std::string& name, const char* set) {
  std::vector<uint8_t> key(IFNAMSIZ, 0);
  std::memcpy(key.data(), name.data(), std::min<size_t>(name.size(), IFNAMSIZ - 1));
  AddElementMessage(b, add, set, key, {}, {}, 0,
                    absl::StrCat(add ? "add " : "remove ", "interface ", name,
                                 add ? " to set " : " from set ", set));
}

// [remote .] internal . l4proto . port, as the pinhole rules load it.
std::vector<uint8_t> PinholeKey(const Pinhole& p) {
  std::vector<uint8_t> key;
  if (p.remote) PutPadded(key, p.remote->bytes(), 16);
  PutPadded(key, p.internal.bytes(), 16);
  uint8_t proto = static_cast<uint8_t>(p.protocol);
  PutPadded(key, &proto, 1);
  uint16_t nport = htons(p.port);
  PutPadded(key, &nport, 2);
  return key;
}

void EncodePinhole(Builder& b, bool add, const Pinhole& p) {
  const char* set = p.remote ? kPinholeFromSet : kPinholeSet;
  AddElementMessage(b, add, set, PinholeKey(p), {}, {}, 0,
                    absl::StrCat(add ? "add pinhole " : "remove pinhole ", p.ToString(),
                                 add ? " to set " : " from set ", set));
}

void EncodeElements(Builder& b, bool add, const RuleSet& r) {
  for (const DnatElement& e : r.dnat) EncodeDnat(b, add, e);
  for (const Prefix& p : r.masquerade) EncodePrefix(b, add, p, PrefixKind::kMasquerade);
  for (const Prefix& p : r.hairpin) EncodePrefix(b, add, p, PrefixKind::kHairpin);
  for (const std::string& i : r.localhost_interfaces) EncodeInterface(b, add, i, kLocalhostSet);
  for (const std::string& i : r.firewall6_interfaces) EncodeInterface(b, add, i, kFirewall6Set);
  for (const Pinhole& p : r.pinholes) EncodePinhole(b, add, p);
}

// ---------------------------------------------------------------------------
// Rules.

// "add rule to chain hostports: dnat through map dnat4_any".
std::string RuleWhat(const RuleSpec& spec) {
  std::string what = absl::StrCat("add rule to chain ", spec.chain, ": ");
  switch (spec.kind) {
    case RuleKind::kJump:
      return absl::StrCat(what, "jump to hostports");
    case RuleKind::kDnat:
      return absl::StrCat(what, "dnat through map ", spec.map->name);
    case RuleKind::kSnat:
      return absl::StrCat(what, "snat ", spec.snat.ToString());
    case RuleKind::kPrefix:
      return absl::StrCat(what,
                          spec.set->kind == PrefixKind::kHairpin ? "hairpin"
                                                                 : "outbound",
                          " masquerade by set ", spec.set->name);
    case RuleKind::kLocalhost:
      return absl::StrCat(what, "localhost masquerade by set ", kLocalhostSet);
    case RuleKind::kPinhole:
      return absl::StrCat(what, "accept by set ", kPinholeSet);
    case RuleKind::kPinholeFrom:
      return absl::StrCat(what, "accept by set ", kPinholeFromSet);
    case RuleKind::kFirewall6:
      return absl::StrCat(what, "drop new inbound IPv6 from set ", kFirewall6Set);
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

}  // namespace

nlmsghdr* EncodeDnatLookup(char* buf, uint32_t seq, const DnatElement& e) {
  const DnatMap& m = MapFor(e);
  if (m.range) return nullptr;
  SetPtr s = SetRef(m.name);
  nftnl_set_elem* el = nftnl_set_elem_alloc();
  std::vector<uint8_t> key = DnatKey(e, e.port_lo);
  nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY, key.data(), key.size());
  nftnl_set_elem_add(s.get(), el);
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSETELEM, NFPROTO_INET, 0, seq);
  nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
  return nlh;
}

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
  if (!rules.firewall6_interfaces.empty()) {
    sizes[kFirewall6Set] = rules.firewall6_interfaces.size();
  }
  for (const Pinhole& p : rules.pinholes) ++sizes[p.remote ? kPinholeFromSet : kPinholeSet];
  sizes.snat = rules.snat;
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
  for (const SnatRule& r : batch.remove.snat) before.snat.erase(r);
  before.snat.insert(batch.add.snat.begin(), batch.add.snat.end());
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
    std::vector<RuleSpec> want = NeededIn(chain.name, after);
    if (want == NeededIn(chain.name, before)) continue;
    const bool existed = ChainExists(chain, before), exists = ChainExists(chain, after);
    ChainPtr c = NewChain(chain);
    if (!existed) {
      nftnl_chain_nlmsg_build_payload(
          b.Start(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL,
                  absl::StrCat("add chain ", chain.name)),
          c.get());
      b.Done();
    } else {
      RulePtr flush = NewRule(chain.name);
      nftnl_rule_nlmsg_build_payload(
          b.Start(NFT_MSG_DELRULE, 0, absl::StrCat("flush chain ", chain.name)),
          flush.get());
      b.Done();
    }
    if (!exists) {
      nftnl_chain_nlmsg_build_payload(
          b.Start(NFT_MSG_DELCHAIN, 0, absl::StrCat("delete chain ", chain.name)), c.get());
      b.Done();
      continue;
    }
    for (const RuleSpec& spec : want) EncodeRule(b, spec);
  }
  b.End();
  return b.Take();
}

EncodedBatch EncodeReplace(const RuleSet& desired, uint32_t first_seq,
                           const std::string& owner) {
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
  TablePtr owned = NewTable();
  if (!owner.empty()) {
    nftnl_table_set_data(owned.get(), NFTNL_TABLE_USERDATA, owner.data(),
                         static_cast<uint32_t>(owner.size()));
  }
  nftnl_table_nlmsg_build_payload(
      b.Start(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL,
              "recreate table inet fabric_nat"),
      owned.get());
  b.Done();
  const SetSizes sizes = SizesOf(desired);
  for (const ChainSpec& spec : kChains) {
    if (!ChainExists(spec, sizes)) continue;
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
  for (const RuleSpec& spec : LayoutRules(sizes)) EncodeRule(b, spec);
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

namespace {

// The packets an element's counter (the set's per-element counter) saw.
uint64_t ElementPackets(nftnl_set_elem* e) {
  uint64_t n = 0;
  nftnl_set_elem_expr_foreach(
      e,
      [](nftnl_expr* x, void* data) -> int {
        if (std::strcmp(nftnl_expr_get_str(x, NFTNL_EXPR_NAME), "counter") == 0) {
          *static_cast<uint64_t*>(data) = nftnl_expr_get_u64(x, NFTNL_EXPR_CTR_PACKETS);
        }
        return 0;
      },
      &n);
  return n;
}

}  // namespace

absl::Status DecodeElements(const nftnl_set* set, RuleSet* rules,
                            std::set<std::string>* seen,
                            std::map<Pinhole, uint64_t>* packets,
                            std::map<DnatElement, uint64_t>* connections) {
  std::string name = nftnl_set_get_str(set, NFTNL_SET_NAME);
  const DnatMap* map = DnatMapNamed(name);
  const PrefixSet* prefixes = nullptr;
  for (const PrefixSet& p : kPrefixSets) {
    if (name == p.name) prefixes = &p;
  }
  std::vector<std::string> foreign;
  // Interval sets: start and end elements, collected then paired in order.
  // Adjacent prefixes share an address (the end of one, the start of the
  // next); the end sorts first.
  std::vector<std::pair<IpAddress, bool>> bounds;  // (address, is start)
  // A map's elements, inserted into the set once sorted: the dump comes in
  // hash order, and a B-tree filled in order costs a fraction of one
  // filled at random (30k elements on every full read).
  std::vector<DnatElement> dnat;

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
      DnatElement d;
      if (!DecodeDnatElement(*map, key, klen, key_end, kelen, data, dlen, &d)) {
        foreign.push_back("malformed element");
        continue;
      }
      if (connections != nullptr) (*connections)[d] = ElementPackets(e);
      dnat.push_back(d);
    } else if (prefixes != nullptr) {
      if (key == nullptr || klen != AddrLen(prefixes->family)) {
        foreign.push_back("malformed element");
        continue;
      }
      bounds.emplace_back(IpAddress::FromBytes(prefixes->family, key),
                          (flags & NFT_SET_ELEM_INTERVAL_END) == 0);
    } else if (name == kLocalhostSet || name == kFirewall6Set) {
      if (key == nullptr || klen != IFNAMSIZ) {
        foreign.push_back("malformed element");
        continue;
      }
      (name == kLocalhostSet ? rules->localhost_interfaces : rules->firewall6_interfaces)
          .insert(std::string(reinterpret_cast<const char*>(key),
                              strnlen(reinterpret_cast<const char*>(key), klen)));
    } else if (name == kPinholeSet || name == kPinholeFromSet) {
      const bool from = name == kPinholeFromSet;
      if (key == nullptr || klen != (from ? 40u : 24u)) {
        foreign.push_back("malformed element");
        continue;
      }
      Pinhole p;
      size_t off = 0;
      if (from) {
        p.remote = IpAddress::FromBytes(Family::kIPv6, key);
        off = 16;
      }
      p.internal = IpAddress::FromBytes(Family::kIPv6, key + off);
      p.protocol = static_cast<Protocol>(key[off + 16]);
      uint16_t port;
      std::memcpy(&port, key + off + 20, 2);
      p.port = ntohs(port);
      rules->pinholes.insert(p);
      if (packets != nullptr) {
        // The counter the set puts on every element.
        (*packets)[p] = ElementPackets(e);
      }
    }
  }
  nftnl_set_elems_iter_destroy(it);
  InsertSorted(std::move(dnat), &rules->dnat);

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

}  // namespace fabric::nat::nftables
