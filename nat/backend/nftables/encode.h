// Pure functions that turn Fabric NAT's desired state into nftables netlink
// messages, and kernel dumps back into state. No I/O: the backend sends what
// these build. Tested against golden files without a kernel.
//
// Layout of table `inet fabric_nat` (one lookup per packet and family
// however many mappings there are; a mapping is one element):
//
//   map dnat4       ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//   map dnat4_any   inet_proto . inet_service : ipv4_addr . inet_service
//   map range4      ipv4_addr . inet_proto . inet_service : ipv4_addr  (interval)
//   map range4_any  inet_proto . inet_service : ipv4_addr              (interval)
//   ... the same four for ipv6 (dnat6, dnat6_any, range6, range6_any)
//   set masq4/masq6, hairpin4/hairpin6   container networks (interval)
//   set localhost_ifaces                 ifname
//   set fw6_ifaces                       ifname (WAN interfaces the IPv6 firewall guards)
//   set pinhole6       ipv6_addr . inet_proto . inet_service              (counter)
//   set pinhole6_from  ipv6_addr . ipv6_addr . inet_proto . inet_service  (counter)
//   chain prerouting (nat, dstnat)   fib daddr type local jump hostports
//   chain output (nat, -100)         fib daddr type local jump hostports
//   chain hostports                  one dnat-through-map rule per map
//   chain postrouting (nat, srcnat)  one rule per fixed-address SNAT (tagged
//                                    with a comment that names it), then
//                                    outbound, hairpin and localhost masquerade
//   chain forward (filter, 0)        only with the IPv6 firewall: pinholes
//                                    accept, then new inbound IPv6 from a
//                                    fw6 interface (not ICMPv6, not DNAT'd) drops
//
// Every DNAT map counts per element (the connections each mapping
// translated), and every NAT rule counts too (connections by kind).
//
// Only the rules that can change a packet's fate are present: a rule that
// looks up a set exists while that set has elements, and the jumps while
// any DNAT map has elements (SetSizes below decides). No filter chain
// unless the IPv6 firewall is on: an accept in our own base chain cannot
// override another table's drop, and with policy accept it changes
// nothing; the firewall's drop is what makes its pinholes matter.
//
// Range maps carry no target port: the destination port is kept, so host
// port N reaches target port N (nftables cannot shift a port range here).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nat/backend/backend.h"
#include "nat/types.h"

struct nlmsghdr;
struct nftnl_set;
struct nftnl_rule;
struct nftnl_chain;

namespace fabric::nat::nftables {

namespace internal {
struct DnatMap;
}

inline constexpr char kTableName[] = "fabric_nat";

// A netlink batch ready to send, and what each message does (by sequence
// number), so that a kernel error can name the change that caused it.
struct EncodedBatch {
  std::vector<uint8_t> bytes;
  std::map<uint32_t, std::string> what;
  // Sequence number after the last one used.
  uint32_t next_seq = 0;
  // Number of messages between batch begin and end.
  size_t messages = 0;
};

// How many elements each map and set of the layout holds, by set name
// (prefix sets count prefixes; a set that is not named holds none), and
// the fixed-address SNAT rules, which are rules of their own rather than
// set elements (a few per router: one rule each costs less than a map
// lookup and keeps `nft list` readable). Together they decide which rules
// the table holds.
struct SetSizes : std::map<std::string, size_t> {
  using std::map<std::string, size_t>::map;
  std::set<SnatRule> snat;

  friend bool operator==(const SetSizes& a, const SetSizes& b) {
    return static_cast<const std::map<std::string, size_t>&>(a) ==
               static_cast<const std::map<std::string, size_t>&>(b) &&
           a.snat == b.snat;
  }
};

// The sizes of the sets that hold `rules`.
SetSizes SizesOf(const RuleSet& rules);
// `before` with `batch` applied: every removal was there and every
// addition was not (else the kernel refuses the batch). Never below zero.
SetSizes SizesAfter(SetSizes before, const Batch& batch);

// Element additions and removals for an intact table whose sets held
// `before`. When a set gains its first element or loses its last, the same
// batch also flushes each chain whose rules change and lays down the rules
// the new contents call for.
EncodedBatch EncodeApply(const Batch& batch, const SetSizes& before,
                         uint32_t first_seq);

// Deletes our table (if present) and recreates it holding exactly `desired`
// and the rules it calls for, in one transaction.
// `owner`, when not empty, is stored as the table's user data: the marker
// of the agent (its store's id) that owns the table.
EncodedBatch EncodeReplace(const RuleSet& desired, uint32_t first_seq,
                           const std::string& owner = "");

// Deletes our table. Fails with ENOENT in the kernel when it is absent.
EncodedBatch EncodeDeleteTable(uint32_t first_seq);

// A request for the kernel's element under `e`'s key (NFT_MSG_GETSETELEM,
// not a dump) in `buf`; null for a port range, whose map is an interval
// set. The reply decodes with DecodeElements.
nlmsghdr* EncodeDnatLookup(char* buf, uint32_t seq, const DnatElement& e);

// Names of every map and set of the layout.
std::vector<std::string> SetNames();

// Adds the elements of one set dump (`set` parsed from the kernel) to
// `rules`. kDataLoss for elements that do not fit the layout (a foreign
// element): their description goes into the message. With `seen` (keys of
// the elements already decoded from the same dump), kAborted when an
// element comes twice: the kernel rehashed the set during the dump, which
// then also missed as many elements, so the dump must be repeated.
// With `packets`, each pinhole's packet counter goes there too, and with
// `connections` each DNAT element's (the connections it translated).
absl::Status DecodeElements(const nftnl_set* set, RuleSet* rules,
                            std::set<std::string>* seen = nullptr,
                            std::map<Pinhole, uint64_t>* packets = nullptr,
                            std::map<DnatElement, uint64_t>* connections = nullptr);

// The DNAT map named `name` of the layout, or null.
const internal::DnatMap* DnatMapNamed(const std::string& name);
// One element of DNAT map `map` from its key (and key end, for a port
// range) and data bytes; false when they do not fit the map (a foreign
// element).
bool DecodeDnatElement(const internal::DnatMap& map, const uint8_t* key, uint32_t klen,
                       const uint8_t* key_end, uint32_t kelen, const uint8_t* data,
                       uint32_t dlen, DnatElement* out);
// The elements of one message of a dump of DNAT map `map`, decoded from
// the netlink attributes without libnftnl (dnat_dump.cc: no object per
// element); elements that do not fit are counted in `malformed`.
void DecodeDnatDump(const nlmsghdr* nlh, const internal::DnatMap& map,
                    std::vector<DnatElement>* out, size_t* malformed);
// Adds `elements` to `set` in order (a B-tree filled at random costs
// several times one filled in order; a dump comes in hash order).
void InsertSorted(std::vector<DnatElement> elements, DnatSet* set);

// Which kind of connection a NAT rule of ours counts ("dnat", "hairpin",
// "masquerade", "localhost", "snat"), from the set it looks up or its snat
// statement; "" for other rules.
std::string RuleCounterKind(nftnl_rule* rule, uint64_t* packets);

// A printable signature of a rule's expressions, comparable between rules
// built here and rules read back from the kernel.
std::string RuleSignature(nftnl_rule* rule);

// The SNAT rule a rule of ours stands for, from the comment it carries
// ("fabric-nat snat 10.20.0.0/24 to 203.0.113.5 [oif wan0]"): nullopt for
// a rule without one (every other rule of the layout), kDataLoss for a
// comment of ours that does not parse. The caller still compares the
// rule's signature with the one this SNAT rule calls for.
absl::StatusOr<std::optional<SnatRule>> SnatRuleOf(nftnl_rule* rule);

// The rules that sets of `sizes` call for, by chain (every chain of the
// layout, an empty list where none), as signatures in order.
std::map<std::string, std::vector<std::string>> ExpectedRuleSignatures(
    const SetSizes& sizes);

// The layout's chains with sets of `sizes` (the forward chain exists only
// with the IPv6 firewall): name -> "type hook priority" ("" for regular
// chains).
std::map<std::string, std::string> ExpectedChains(const SetSizes& sizes);
std::string ChainSignature(const nftnl_chain* chain);

// The layout's sets: name -> "flags keylen datalen".
std::map<std::string, std::string> ExpectedSets();
std::string SetSignature(const nftnl_set* set);

}  // namespace fabric::nat::nftables
