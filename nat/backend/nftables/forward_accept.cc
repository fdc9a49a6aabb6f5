#include "nat/backend/nftables/forward_accept.h"

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nat/backend/nftables/encode.h"
#include "nat/backend/nftables/internal/layout.h"
#include "nat/netlink/socket.h"

namespace fabric::nat::nftables {

namespace {

const char* FamilyText(uint32_t family) {
  switch (family) {
    case NFPROTO_INET: return "inet";
    case NFPROTO_IPV4: return "ip";
    case NFPROTO_IPV6: return "ip6";
    default: return "?";
  }
}

// Whether `r` carries our comment.
bool IsOurs(nftnl_rule* r) {
  if (!nftnl_rule_is_set(r, NFTNL_RULE_USERDATA)) return false;
  uint32_t len = 0;
  const void* data = nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &len);
  const size_t n = std::strlen(ForwardAccept::kComment);
  return data != nullptr && memmem(data, len, ForwardAccept::kComment, n) != nullptr;
}

// ct status dnat counter accept, with our comment.
void AddOurRule(nftnl_rule* r) {
  internal::CtStatusDnat(r);
  internal::AddCountedAccept(r);
  internal::SetComment(r, ForwardAccept::kComment);
}

// What one chain holds of interest: its first rule and our rules.
struct ChainRules {
  bool exists = false;
  uint64_t first = 0;  // handle of the first rule; 0: empty chain
  std::vector<uint64_t> ours;
};

// A batch of rule messages for one chain's table family.
class RuleBatch {
 public:
  RuleBatch(uint32_t first_seq, const ChainRef& c) : seq_(first_seq), chain_(c) {
    nftnl_batch_begin(Reserve(), seq_++);
    Commit();
  }
  void Delete(uint64_t handle) {
    nftnl_rule* r = Rule();
    nftnl_rule_set_u64(r, NFTNL_RULE_HANDLE, handle);
    Put(NFT_MSG_DELRULE, 0, r);
  }
  // Without NLM_F_APPEND or a position, the kernel puts a new rule first.
  void InsertFirst() {
    nftnl_rule* r = Rule();
    AddOurRule(r);
    Put(NFT_MSG_NEWRULE, NLM_F_CREATE, r);
  }
  std::vector<uint8_t> Finish() {
    nftnl_batch_end(Reserve(), seq_++);
    Commit();
    return std::move(bytes_);
  }

 private:
  nftnl_rule* Rule() {
    nftnl_rule* r = nftnl_rule_alloc();
    nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, chain_.family);
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, chain_.table.c_str());
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain_.chain.c_str());
    return r;
  }
  void Put(uint16_t type, uint16_t flags, nftnl_rule* r) {
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(Reserve(), type, chain_.family, flags, seq_++);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    nftnl_rule_free(r);
    Commit();
  }
  char* Reserve() {
    bytes_.resize(used_ + 4096);
    return reinterpret_cast<char*>(bytes_.data() + used_);
  }
  void Commit() {
    auto* nlh = reinterpret_cast<nlmsghdr*>(bytes_.data() + used_);
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
    bytes_.resize(used_);
  }

  std::vector<uint8_t> bytes_;
  size_t used_ = 0;
  uint32_t seq_;
  const ChainRef& chain_;
};

}  // namespace

absl::StatusOr<ChainRef> ChainRef::Parse(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--forward_accept=", text.substr(0, 128), ": ", why,
        " (FAMILY/TABLE/CHAIN, e.g. inet/filter/forward)"));
  };
  if (parts.size() != 3) return bad("not three parts");
  ChainRef c;
  if (parts[0] == "inet") {
    c.family = NFPROTO_INET;
  } else if (parts[0] == "ip") {
    c.family = NFPROTO_IPV4;
  } else if (parts[0] == "ip6") {
    c.family = NFPROTO_IPV6;
  } else {
    return bad("the family must be inet, ip or ip6 (the families with a forward hook)");
  }
  for (const std::string& name : {parts[1], parts[2]}) {
    // The kernel's NFT_NAME_MAXLEN is 256 with the terminating NUL.
    if (name.empty() || name.size() > 255) return bad("a table or chain name is empty or long");
    for (char ch : name) {
      if (static_cast<unsigned char>(ch) < 0x21 || ch == 0x7f) {
        return bad("a name holds a space or control character");
      }
    }
  }
  if (parts[1] == kTableName) return bad("that is the agent's own table");
  c.table = parts[1];
  c.chain = parts[2];
  return c;
}

std::string ChainRef::ToString() const {
  return absl::StrCat(FamilyText(family), "/", table, "/", chain);
}

std::string ForwardAccept::Result::ToString() const {
  std::vector<std::string> parts;
  if (!inserted.empty()) {
    parts.push_back(absl::StrCat("inserted at the top of ", absl::StrJoin(inserted, ", ")));
  }
  if (!moved.empty()) parts.push_back(absl::StrCat("moved to the top of ", absl::StrJoin(moved, ", ")));
  if (!removed.empty()) parts.push_back(absl::StrCat("removed from ", absl::StrJoin(removed, ", ")));
  if (!missing.empty()) {
    parts.push_back(absl::StrCat("no chain ", absl::StrJoin(missing, ", "), " (yet)"));
  }
  return parts.empty() ? "in place" : absl::StrJoin(parts, "; ");
}

absl::StatusOr<std::unique_ptr<ForwardAccept>> ForwardAccept::Open() {
  absl::StatusOr<std::unique_ptr<netlink::NetlinkSocket>> s = netlink::NetlinkSocket::Open();
  if (!s.ok()) return s.status();
  return std::unique_ptr<ForwardAccept>(new ForwardAccept(*std::move(s)));
}

ForwardAccept::ForwardAccept(std::unique_ptr<netlink::NetlinkSocket> socket)
    : socket_(std::move(socket)) {}
ForwardAccept::~ForwardAccept() = default;

uint32_t ForwardAccept::port_id() const { return socket_->port_id(); }

absl::StatusOr<ForwardAccept::Result> ForwardAccept::Ensure(const std::set<ChainRef>& wanted) {
  // Every chain of every table (but ours), then every rule: one dump each.
  std::map<ChainRef, ChainRules> chains;
  absl::Status s = socket_->Request(
      "forward_accept: list chains",
      [](char* buf, uint32_t seq) {
        return nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETCHAIN, NFPROTO_UNSPEC, NLM_F_DUMP, seq);
      },
      [&](const nlmsghdr* nlh) {
        nftnl_chain* c = nftnl_chain_alloc();
        if (nftnl_chain_nlmsg_parse(nlh, c) == 0) {
          ChainRef ref{nftnl_chain_get_u32(c, NFTNL_CHAIN_FAMILY),
                       nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE),
                       nftnl_chain_get_str(c, NFTNL_CHAIN_NAME)};
          if (ref.table != kTableName) chains[ref].exists = true;
        }
        nftnl_chain_free(c);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  s = socket_->Request(
      "forward_accept: list rules",
      [](char* buf, uint32_t seq) {
        return nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETRULE, NFPROTO_UNSPEC, NLM_F_DUMP, seq);
      },
      [&](const nlmsghdr* nlh) {
        nftnl_rule* r = nftnl_rule_alloc();
        if (nftnl_rule_nlmsg_parse(nlh, r) == 0) {
          ChainRef ref{nftnl_rule_get_u32(r, NFTNL_RULE_FAMILY),
                       nftnl_rule_get_str(r, NFTNL_RULE_TABLE),
                       nftnl_rule_get_str(r, NFTNL_RULE_CHAIN)};
          auto it = chains.find(ref);
          if (it != chains.end()) {
            uint64_t handle = nftnl_rule_get_u64(r, NFTNL_RULE_HANDLE);
            if (it->second.first == 0) it->second.first = handle;
            if (IsOurs(r)) it->second.ours.push_back(handle);
          }
        }
        nftnl_rule_free(r);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;

  Result result;
  for (const ChainRef& w : wanted) {
    if (chains.count(w) == 0) result.missing.push_back(w.ToString());
  }
  for (const auto& [ref, rules] : chains) {
    const bool want = wanted.count(ref) > 0;
    const bool in_place = rules.ours.size() == 1 && rules.first == rules.ours[0];
    if (want ? in_place : rules.ours.empty()) continue;
    RuleBatch batch(socket_->ReserveSeq(rules.ours.size() + 3), ref);
    for (uint64_t handle : rules.ours) batch.Delete(handle);
    if (want) batch.InsertFirst();
    absl::StatusOr<netlink::NetlinkSocket::BatchResult> r = socket_->SendBatch(batch.Finish());
    if (!r.ok()) return r.status();
    if (!r->errors.empty()) {
      const auto& e = r->errors.front();
      return absl::Status(netlink::CodeForErrno(e.error),
                          absl::StrCat("forward_accept: the kernel refused to change ",
                                       ref.ToString(), ": ", std::strerror(e.error),
                                       e.message.empty() ? "" : " (" + e.message + ")"));
    }
    (want ? (rules.ours.empty() ? result.inserted : result.moved) : result.removed)
        .push_back(ref.ToString());
  }
  return result;
}

}  // namespace fabric::nat::nftables
