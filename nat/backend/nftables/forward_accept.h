// ForwardAccept: keeps one rule `ct status dnat accept` at the top of other
// tables' forward chains (--forward_accept=inet/filter/forward), so that a
// router whose own firewall drops forwarded traffic by policy still passes
// the flows our DNAT rules translated. In nftables a drop in any base chain
// at the forward hook is final, so an accept in our own table cannot help:
// the accept has to sit in the chain that drops.
//
// The rule is ours by its comment (kComment, in the rule's user data, as
// `nft` writes comments): nothing else in those tables is ever read for
// changing, moved or removed. Ensure() makes the kernel hold exactly one
// such rule, first, in each wanted chain, and none in any other chain: a
// chain dropped from --forward_accept loses it, and Ensure({}) removes
// them all (uninstall). Each chain's change is one netlink batch (delete
// ours, insert at the top), so there is never a moment with two or none
// where one was.
//
// nftables only (iptables has no such chains to share). Thread-compatible:
// one owner (agent/forward_accept_keeper.h) calls it.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::nat::netlink {
class NetlinkSocket;
}

namespace fabric::nat::nftables {

// A base chain of another table: "inet/filter/forward".
struct ChainRef {
  uint32_t family = 0;  // NFPROTO_INET, NFPROTO_IPV4 or NFPROTO_IPV6
  std::string table, chain;

  // "inet/filter/forward", "ip/filter/FORWARD", "ip6/t/fwd".
  // kInvalidArgument naming what is wrong (family, empty or long names,
  // our own table).
  static absl::StatusOr<ChainRef> Parse(absl::string_view text);
  std::string ToString() const;

  auto tie() const { return std::tie(family, table, chain); }
  friend bool operator<(const ChainRef& a, const ChainRef& b) { return a.tie() < b.tie(); }
  friend bool operator==(const ChainRef& a, const ChainRef& b) { return a.tie() == b.tie(); }
};

class ForwardAccept {
 public:
  // The comment that marks our rule.
  static constexpr char kComment[] = "fabric-nat: DNAT'd flows pass (--forward_accept)";

  // Opens its own netlink socket in the calling thread's network namespace.
  // kPermissionDenied without CAP_NET_ADMIN.
  static absl::StatusOr<std::unique_ptr<ForwardAccept>> Open();
  ~ForwardAccept();

  struct Result {
    std::vector<std::string> inserted;  // "inet/filter/forward"
    std::vector<std::string> moved;     // ours was there but not first
    std::vector<std::string> removed;   // chains no longer wanted
    std::vector<std::string> missing;   // wanted chains the kernel lacks
    bool changed() const { return !inserted.empty() || !moved.empty() || !removed.empty(); }
    // "inserted at the top of inet/filter/forward; inet/x/y is missing".
    std::string ToString() const;
  };

  // Makes every chain of `wanted` begin with our rule (exactly one), and
  // every other chain hold none. A wanted chain that does not exist (yet)
  // is reported in `missing`, not an error: a firewall reload recreates it,
  // and the next Ensure inserts the rule. Errors: the kernel's refusal of a
  // batch or a dump, naming the chain.
  absl::StatusOr<Result> Ensure(const std::set<ChainRef>& wanted);

  // The netlink port id of the socket whose changes are ours (the change
  // monitor ignores them).
  uint32_t port_id() const;

 private:
  explicit ForwardAccept(std::unique_ptr<netlink::NetlinkSocket> socket);
  std::unique_ptr<netlink::NetlinkSocket> socket_;
};

}  // namespace fabric::nat::nftables
