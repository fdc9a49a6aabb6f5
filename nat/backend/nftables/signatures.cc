// The layout signatures NftablesBackend::Read() checks against what the
// kernel holds (declared in encode.h): set names, chain and set and rule
// signatures as the layout (internal/layout.h) calls for them, the counter
// kind of each of our rules, and the SNAT rules read back by their comment.
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nat/backend/nftables/encode.h"
#include "nat/backend/nftables/internal/layout.h"

namespace fabric::nat::nftables {

namespace {

std::string SetSpecSignature(uint32_t flags, uint32_t key_len,
                             uint32_t data_len) {
  return absl::StrCat("flags 0x", absl::Hex(flags), " key ", key_len,
                      " data ", data_len);
}

}  // namespace

using internal::BuildRule;
using internal::ChainSpec;
using internal::kChains;
using internal::LayoutRules;
using internal::LayoutSets;
using internal::NewChain;
using internal::RuleSpec;
using internal::SetSpec;

std::vector<std::string> SetNames() {
  std::vector<std::string> names;
  for (const SetSpec& s : LayoutSets()) names.push_back(s.name);
  return names;
}

std::string RuleSignature(nftnl_rule* rule) {
  std::string sig;
  nftnl_expr_foreach(
      rule,
      [](nftnl_expr* e, void* data) -> int {
        auto* out = static_cast<std::string*>(data);
        const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
        // A counter's values change with traffic, not with the layout.
        if (std::strcmp(name, "counter") == 0) {
          absl::StrAppend(out, "[ counter ]");
          return 0;
        }
        char buf[512];
        nftnl_expr_snprintf(buf, sizeof(buf), e, NFTNL_OUTPUT_DEFAULT, 0);
        absl::StrAppend(out, "[ ", name, " ", buf, " ]");
        return 0;
      },
      &sig);
  return sig;
}

std::map<std::string, std::vector<std::string>> ExpectedRuleSignatures(
    const SetSizes& sizes) {
  std::map<std::string, std::vector<std::string>> out;
  for (const ChainSpec& spec : kChains) {
    if (internal::ChainExists(spec, sizes)) out[spec.name];
  }
  for (const RuleSpec& spec : LayoutRules(sizes)) {
    out[spec.chain].push_back(RuleSignature(BuildRule(spec).get()));
  }
  return out;
}

std::map<std::string, std::string> ExpectedChains(const SetSizes& sizes) {
  std::map<std::string, std::string> out;
  for (const ChainSpec& spec : kChains) {
    if (internal::ChainExists(spec, sizes)) out[spec.name] = ChainSignature(NewChain(spec).get());
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

std::string RuleCounterKind(nftnl_rule* rule, uint64_t* packets) {
  struct Found {
    std::string set;
    bool counter = false, snat = false;
    uint64_t packets = 0;
  } f;
  nftnl_expr_foreach(
      rule,
      [](nftnl_expr* e, void* data) -> int {
        auto* f = static_cast<Found*>(data);
        const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
        if (std::strcmp(name, "lookup") == 0 && f->set.empty()) {
          f->set = nftnl_expr_get_str(e, NFTNL_EXPR_LOOKUP_SET);
        } else if (std::strcmp(name, "counter") == 0) {
          f->counter = true;
          f->packets = nftnl_expr_get_u64(e, NFTNL_EXPR_CTR_PACKETS);
        } else if (std::strcmp(name, "nat") == 0 &&
                   nftnl_expr_get_u32(e, NFTNL_EXPR_NAT_TYPE) == NFT_NAT_SNAT) {
          f->snat = true;
        }
        return 0;
      },
      &f);
  if (!f.counter) return "";
  *packets = f.packets;
  for (const internal::DnatMap& m : internal::kDnatMaps) {
    if (f.set == m.name) return "dnat";
  }
  for (const internal::PrefixSet& p : internal::kPrefixSets) {
    if (f.set == p.name) {
      return p.kind == internal::PrefixKind::kHairpin ? "hairpin" : "masquerade";
    }
  }
  if (f.set == internal::kLocalhostSet) return "localhost";
  if (f.set.empty() && f.snat) return "snat";
  return "";
}

absl::StatusOr<std::optional<SnatRule>> SnatRuleOf(nftnl_rule* rule) {
  if (!nftnl_rule_is_set(rule, NFTNL_RULE_USERDATA)) return std::nullopt;
  uint32_t len = 0;
  const void* data = nftnl_rule_get_data(rule, NFTNL_RULE_USERDATA, &len);
  std::string comment;
  nftnl_udata_parse(
      data, len,
      [](const nftnl_udata* attr, void* out) -> int {
        if (nftnl_udata_type(attr) == NFTNL_UDATA_RULE_COMMENT) {
          const char* text = static_cast<const char*>(nftnl_udata_get(attr));
          static_cast<std::string*>(out)->assign(text, strnlen(text, nftnl_udata_len(attr)));
        }
        return 0;
      },
      &comment);
  if (!absl::StartsWith(comment, "fabric-nat snat ")) return std::nullopt;
  // "fabric-nat snat SRC to TO [oif IF]"
  std::vector<std::string> words = absl::StrSplit(comment, ' ');
  auto bad = [&comment] {
    return absl::DataLossError(absl::StrCat("postrouting rule with comment \"",
                                            comment.substr(0, 128), "\" is no SNAT rule of ours"));
  };
  if ((words.size() != 5 && words.size() != 7) || words[3] != "to" ||
      (words.size() == 7 && words[5] != "oif")) {
    return bad();
  }
  absl::StatusOr<Prefix> source = Prefix::Parse(words[2]);
  absl::StatusOr<IpAddress> to = IpAddress::Parse(words[4]);
  if (!source.ok() || !to.ok()) return bad();
  SnatRule out{*source, *to, words.size() == 7 ? words[6] : ""};
  if (!out.Validate().ok()) return bad();
  return out;
}

}  // namespace fabric::nat::nftables
