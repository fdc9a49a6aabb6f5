#include "nat/backend/nftables/nftables_backend.h"

#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/common.h>
#include <libnftnl/gen.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <net/if.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace fabric::nat {

using nftables::kTableName;

namespace {

// Dumps the rules of `table` in `family` (only `chain`'s, when given) and
// calls `each` with every rule of that table and chain the kernel sends.
absl::Status DumpRules(netlink::NetlinkSocket& sock, const std::string& what, uint32_t family,
                       const std::string& table, const std::string& chain,
                       const std::function<void(nftnl_rule*)>& each) {
  return sock.Request(
      what,
      [&](char* buf, uint32_t seq) {
        nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETRULE, family, NLM_F_DUMP, seq);
        nftnl_rule* r = nftnl_rule_alloc();
        nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table.c_str());
        if (!chain.empty()) nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain.c_str());
        nftnl_rule_nlmsg_build_payload(nlh, r);
        nftnl_rule_free(r);
        return nlh;
      },
      [&](const nlmsghdr* nlh) {
        nftnl_rule* r = nftnl_rule_alloc();
        if (nftnl_rule_nlmsg_parse(nlh, r) == 0 && table == nftnl_rule_get_str(r, NFTNL_RULE_TABLE) &&
            (chain.empty() || chain == nftnl_rule_get_str(r, NFTNL_RULE_CHAIN))) {
          each(r);
        }
        nftnl_rule_free(r);
        return absl::OkStatus();
      });
}

// The SNAT rules `rules` would leave in the kernel, checked: each valid,
// and no more than kMaxSnatRules (each is a rule on every new outbound
// connection's path).
absl::Status CheckSnat(const std::set<SnatRule>& rules) {
  if (rules.size() > kMaxSnatRules) {
    return absl::ResourceExhaustedError(absl::StrCat(
        rules.size(), " SNAT rules asked for; at most ", kMaxSnatRules,
        " (one kernel rule each): nothing changed"));
  }
  for (const SnatRule& r : rules) {
    if (absl::Status s = r.Validate(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<NftablesBackend>> NftablesBackend::Create() {
  absl::StatusOr<std::unique_ptr<netlink::NetlinkSocket>> socket =
      netlink::NetlinkSocket::Open();
  if (!socket.ok()) return socket.status();
  return std::unique_ptr<NftablesBackend>(
      new NftablesBackend(std::move(*socket)));
}

absl::StatusOr<uint32_t> NftablesBackend::Generation() const {
  uint32_t generation = 0;
  bool got = false;
  absl::Status s = socket_->Request(
      "get ruleset generation",
      [](char* buf, uint32_t seq) {
        return nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETGEN, AF_UNSPEC, 0, seq);
      },
      [&](const nlmsghdr* reply) {
        nftnl_gen* gen = nftnl_gen_alloc();
        if (nftnl_gen_nlmsg_parse(reply, gen) == 0) {
          generation = nftnl_gen_get_u32(gen, NFTNL_GEN_ID);
          got = true;
        }
        nftnl_gen_free(gen);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  if (!got) return absl::InternalError("netlink: no ruleset generation in the answer");
  return generation;
}

absl::Status NftablesBackend::Send(const nftables::EncodedBatch& batch,
                                   absl::string_view operation) {
  absl::StatusOr<netlink::NetlinkSocket::BatchResult> result =
      socket_->SendBatch(batch.bytes);
  if (!result.ok()) {
    sizes_.reset();  // the kernel may or may not have taken the batch
    return result.status();
  }
  if (result->errors.empty()) {
    last_generation_ = result->generation;
    return absl::OkStatus();
  }
  // The kernel rolled the whole batch back. The first error is the cause;
  // later ones may be its consequences.
  const netlink::NetlinkSocket::MessageError& first = result->errors.front();
  auto it = batch.what.find(first.seq);
  std::string change = it != batch.what.end()
                           ? it->second
                           : absl::StrCat("message ", first.seq);
  std::string msg = absl::StrCat("netlink: ", change, ": ",
                                 std::strerror(first.error));
  if (!first.message.empty()) absl::StrAppend(&msg, " (", first.message, ")");
  if (result->errors.size() > 1) {
    absl::StrAppend(&msg, "; ", result->errors.size() - 1,
                    " more error(s) in the same batch");
  }
  absl::StrAppend(&msg, "; ", operation, " rolled back, nothing changed");
  return absl::Status(netlink::CodeForErrno(first.error), msg);
}

absl::Status NftablesBackend::Apply(const Batch& batch) {
  if (batch.empty()) return absl::OkStatus();
  // route_localnet first: harmless if the batch then fails.
  for (const std::string& i : batch.add.localhost_interfaces) {
    if (absl::Status s = SetRouteLocalnet(i, true); !s.ok()) return s;
  }
  if (!sizes_.has_value()) {
    // Which rules the table holds depends on its contents: learn them once.
    absl::StatusOr<KernelState> state = Read();
    if (!state.ok()) return state.status();
    if (!state->table_present) {
      return absl::FailedPreconditionError(
          "batch: the kernel has no table inet fabric_nat");
    }
  }
  // SNAT rules are rules, which a batch rewrites whole (no element for the
  // kernel to refuse): what is removed must be there and what is added
  // must not, as for elements.
  for (const SnatRule& r : batch.remove.snat) {
    if (sizes_->snat.count(r) == 0) {
      return absl::NotFoundError(absl::StrCat("netlink: remove snat ", r.ToString(),
                                              ": not in the table; batch rolled back, nothing "
                                              "changed"));
    }
  }
  for (const SnatRule& r : batch.add.snat) {
    if (sizes_->snat.count(r) > 0 && batch.remove.snat.count(r) == 0) {
      return absl::AlreadyExistsError(absl::StrCat("netlink: add snat ", r.ToString(),
                                                   ": already in the table; batch rolled back, "
                                                   "nothing changed"));
    }
  }
  if (!batch.add.snat.empty()) {
    if (absl::Status s = CheckSnat(nftables::SizesAfter(*sizes_, batch).snat); !s.ok()) return s;
  }
  uint32_t first = socket_->ReserveSeq(0);
  nftables::EncodedBatch encoded = nftables::EncodeApply(batch, *sizes_, first);
  socket_->ReserveSeq(encoded.next_seq - first);
  if (absl::Status s = Send(encoded, "batch"); !s.ok()) return s;
  sizes_ = nftables::SizesAfter(std::move(*sizes_), batch);
  for (const std::string& i : batch.remove.localhost_interfaces) {
    SetRouteLocalnet(i, false).IgnoreError();  // the interface may be gone
  }
  return absl::OkStatus();
}

absl::Status NftablesBackend::Replace(const RuleSet& desired) {
  if (absl::Status s = CheckSnat(desired.snat); !s.ok()) return s;
  for (const std::string& i : desired.localhost_interfaces) {
    if (absl::Status s = SetRouteLocalnet(i, true); !s.ok()) return s;
  }
  uint32_t first = socket_->ReserveSeq(0);
  nftables::EncodedBatch encoded = nftables::EncodeReplace(desired, first, owner_);
  socket_->ReserveSeq(encoded.next_seq - first);
  if (absl::Status s = Send(encoded, "table replacement"); !s.ok()) return s;
  sizes_ = nftables::SizesOf(desired);
  return absl::OkStatus();
}

absl::Status NftablesBackend::DeleteTable() {
  uint32_t first = socket_->ReserveSeq(0);
  nftables::EncodedBatch encoded = nftables::EncodeDeleteTable(first);
  socket_->ReserveSeq(encoded.next_seq - first);
  absl::Status s = Send(encoded, "table deletion");
  sizes_.reset();
  if (s.code() == absl::StatusCode::kNotFound) return absl::OkStatus();
  return s;
}

absl::StatusOr<KernelState> NftablesBackend::Read() const {
  // The kernel dumps a hash set in chunks, skipping what earlier chunks
  // held; a rehash between chunks (the kernel grows a set lazily after a
  // large batch) reorders it, so a chunk repeats some elements and misses
  // as many. Such a dump is detected (a repeated element) and read again.
  absl::StatusOr<KernelState> state;
  for (int attempt = 0; attempt < 20; ++attempt) {
    state = ReadOnce();
    if (state.ok()) {
      NoteSizes(*state);
      return state;
    }
    if (state.status().code() != absl::StatusCode::kAborted) return state;
    absl::SleepFor(absl::Milliseconds(5 * (attempt + 1)));
  }
  return absl::UnavailableError(absl::StrCat(
      "could not read a consistent table: ", state.status().message()));
}

absl::StatusOr<std::map<std::string, uint64_t>> NftablesBackend::ConnectionCounts() const {
  std::map<std::string, uint64_t> out = {
      {"dnat", 0}, {"hairpin", 0}, {"masquerade", 0}, {"localhost", 0}, {"snat", 0}};
  absl::Status s =
      DumpRules(*socket_, "list rules", NFPROTO_INET, kTableName, "", [&](nftnl_rule* r) {
        uint64_t packets = 0;
        std::string kind = nftables::RuleCounterKind(r, &packets);
        if (!kind.empty()) out[kind] += packets;
      });
  // No table (yet): nothing counted.
  if (!s.ok() && s.code() != absl::StatusCode::kNotFound) return s;
  return out;
}

absl::StatusOr<std::vector<std::string>> NftablesBackend::ForwardDropChains() const {
  struct Chain {
    uint32_t family;
    std::string table, name;
    bool policy_drop;
  };
  std::vector<Chain> chains;
  absl::Status s = socket_->Request(
      "list chains of every table",
      [](char* buf, uint32_t seq) {
        return nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETCHAIN, NFPROTO_UNSPEC, NLM_F_DUMP, seq);
      },
      [&](const nlmsghdr* nlh) {
        nftnl_chain* c = nftnl_chain_alloc();
        if (nftnl_chain_nlmsg_parse(nlh, c) == 0 && nftnl_chain_is_set(c, NFTNL_CHAIN_HOOKNUM) &&
            nftnl_chain_get_u32(c, NFTNL_CHAIN_HOOKNUM) == NF_INET_FORWARD &&
            std::string(nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE)) != kTableName) {
          uint32_t family = nftnl_chain_get_u32(c, NFTNL_CHAIN_FAMILY);
          if (family == NFPROTO_INET || family == NFPROTO_IPV4 || family == NFPROTO_IPV6) {
            chains.push_back({family, nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE),
                              nftnl_chain_get_str(c, NFTNL_CHAIN_NAME),
                              nftnl_chain_is_set(c, NFTNL_CHAIN_POLICY) &&
                                  nftnl_chain_get_u32(c, NFTNL_CHAIN_POLICY) == NF_DROP});
          }
        }
        nftnl_chain_free(c);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  std::vector<std::string> out;
  for (const Chain& c : chains) {
    const char* family = c.family == NFPROTO_INET ? "inet" : c.family == NFPROTO_IPV4 ? "ip" : "ip6";
    std::string name = absl::StrCat(family, "/", c.table, "/", c.name);
    // A bare "drop" as the last rule drops what the rules before it did not
    // accept. A rule that accepts by ct status (`ct status dnat accept`)
    // lets our flows through: then the chain is no trouble.
    bool trailing_drop = false, accepts_dnat = false;
    absl::Status r = DumpRules(
        *socket_, absl::StrCat("list rules of ", name), c.family, c.table, c.name,
        [&](nftnl_rule* rule) {
          struct Seen {
            int exprs = 0;
            bool drop = false, ct_status = false, accept = false;
          } seen;
          nftnl_expr_foreach(
              rule,
              [](nftnl_expr* e, void* data) -> int {
                auto* v = static_cast<Seen*>(data);
                const char* n = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
                if (std::strcmp(n, "counter") == 0) return 0;  // counts, decides nothing
                ++v->exprs;
                bool verdict = std::strcmp(n, "immediate") == 0 &&
                               nftnl_expr_is_set(e, NFTNL_EXPR_IMM_VERDICT);
                v->drop = verdict && nftnl_expr_get_u32(e, NFTNL_EXPR_IMM_VERDICT) == NF_DROP;
                v->accept = verdict && nftnl_expr_get_u32(e, NFTNL_EXPR_IMM_VERDICT) == NF_ACCEPT;
                if (std::strcmp(n, "ct") == 0 &&
                    nftnl_expr_get_u32(e, NFTNL_EXPR_CT_KEY) == NFT_CT_STATUS) {
                  v->ct_status = true;
                }
                return 0;
              },
              &seen);
          // The last rule wins: a bare drop there drops the rest.
          trailing_drop = seen.exprs == 1 && seen.drop;
          if (seen.ct_status && seen.accept) accepts_dnat = true;
        });
    if (!r.ok() || accepts_dnat) continue;
    if (c.policy_drop) {
      out.push_back(absl::StrCat(name, " (policy drop)"));
    } else if (trailing_drop) {
      out.push_back(absl::StrCat(name, " (ends with a drop rule)"));
    }
  }
  return out;
}

absl::StatusOr<KernelState> NftablesBackend::ReadOnce(bool disturbed_ok) const {
  KernelState state;
  netlink::NetlinkSocket& sock = *socket_;

  // The table.
  absl::Status table = sock.Request(
      "get table inet fabric_nat",
      [](char* buf, uint32_t seq) {
        nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETTABLE,
                                              NFPROTO_INET, NLM_F_ACK, seq);
        nftnl_table* t = nftnl_table_alloc();
        nftnl_table_set_str(t, NFTNL_TABLE_NAME, kTableName);
        nftnl_table_nlmsg_build_payload(nlh, t);
        nftnl_table_free(t);
        return nlh;
      },
      [&state](const nlmsghdr* reply) {
        nftnl_table* t = nftnl_table_alloc();
        if (nftnl_table_nlmsg_parse(reply, t) == 0 &&
            nftnl_table_is_set(t, NFTNL_TABLE_USERDATA)) {
          uint32_t len = 0;
          const void* data = nftnl_table_get_data(t, NFTNL_TABLE_USERDATA, &len);
          if (data != nullptr) state.owner.assign(static_cast<const char*>(data), len);
        }
        nftnl_table_free(t);
        return absl::OkStatus();
      });
  if (table.code() == absl::StatusCode::kNotFound) return state;
  if (!table.ok()) return table;
  state.table_present = true;
  std::vector<std::string> problems;

  // Chains.
  std::map<std::string, std::string> chains;
  absl::Status s = sock.Request(
      "list chains",
      [](char* buf, uint32_t seq) {
        nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETCHAIN,
                                              NFPROTO_INET, NLM_F_DUMP, seq);
        nftnl_chain* c = nftnl_chain_alloc();
        nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, kTableName);
        nftnl_chain_nlmsg_build_payload(nlh, c);
        nftnl_chain_free(c);
        return nlh;
      },
      [&](const nlmsghdr* nlh) {
        nftnl_chain* c = nftnl_chain_alloc();
        if (nftnl_chain_nlmsg_parse(nlh, c) == 0 &&
            std::string(nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE)) == kTableName) {
          chains[nftnl_chain_get_str(c, NFTNL_CHAIN_NAME)] =
              nftables::ChainSignature(c);
        }
        nftnl_chain_free(c);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  // Sets.
  std::map<std::string, std::string> sets;
  s = sock.Request(
      "list sets",
      [](char* buf, uint32_t seq) {
        nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSET, NFPROTO_INET,
                                              NLM_F_DUMP, seq);
        nftnl_set* st = nftnl_set_alloc();
        nftnl_set_set_str(st, NFTNL_SET_TABLE, kTableName);
        nftnl_set_nlmsg_build_payload(nlh, st);
        nftnl_set_free(st);
        return nlh;
      },
      [&](const nlmsghdr* nlh) {
        nftnl_set* st = nftnl_set_alloc();
        if (nftnl_set_nlmsg_parse(nlh, st) == 0 &&
            std::string(nftnl_set_get_str(st, NFTNL_SET_TABLE)) == kTableName) {
          sets[nftnl_set_get_str(st, NFTNL_SET_NAME)] =
              nftables::SetSignature(st);
        }
        nftnl_set_free(st);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  for (const auto& [name, sig] : nftables::ExpectedSets()) {
    auto it = sets.find(name);
    if (it == sets.end()) {
      problems.push_back(absl::StrCat("set ", name, " missing"));
    } else if (it->second != sig) {
      problems.push_back(absl::StrCat("set ", name, " is \"", it->second,
                                      "\", expected \"", sig, "\""));
    }
  }

  // Rules.
  std::map<std::string, std::vector<std::string>> rules;
  s = DumpRules(sock, "list rules", NFPROTO_INET, kTableName, "", [&](nftnl_rule* r) {
    std::string chain = nftnl_rule_get_str(r, NFTNL_RULE_CHAIN);
    rules[chain].push_back(nftables::RuleSignature(r));
    // SNAT rules are contents, named by their comment; the signature
    // check below finds one whose expressions differ from its comment.
    if (chain != "postrouting") return;
    absl::StatusOr<std::optional<SnatRule>> snat = nftables::SnatRuleOf(r);
    if (!snat.ok()) {
      problems.push_back(std::string(snat.status().message()));
    } else if (snat->has_value() && !state.rules.snat.insert(**snat).second) {
      problems.push_back(absl::StrCat("SNAT rule ", (*snat)->ToString(), " is there twice"));
    }
  });
  if (!s.ok()) return s;

  // Elements of every set we know and found.
  for (const std::string& name : nftables::SetNames()) {
    if (sets.count(name) == 0) continue;
    nftnl_set* st = nftnl_set_alloc();
    nftnl_set_set_str(st, NFTNL_SET_TABLE, kTableName);
    nftnl_set_set_str(st, NFTNL_SET_NAME, name.c_str());
    nftnl_set_set_u32(st, NFTNL_SET_FAMILY, NFPROTO_INET);
    auto build = [&](char* buf, uint32_t seq) {
      nlmsghdr* nlh =
          nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_DUMP, seq);
      nftnl_set_elems_nlmsg_build_payload(nlh, st);
      return nlh;
    };
    // A DNAT map without its counters: decoded from the messages as they
    // come (no libnftnl object per element).
    if (const nftables::internal::DnatMap* map = nftables::DnatMapNamed(name);
        map != nullptr && disturbed_ok) {
      std::vector<DnatElement> found;
      size_t malformed = 0;
      s = sock.Request(absl::StrCat("list elements of set ", name), build,
                       [&](const nlmsghdr* nlh) {
                         nftables::DecodeDnatDump(nlh, *map, &found, &malformed);
                         return absl::OkStatus();
                       });
      nftnl_set_free(st);
      if (!s.ok()) return s;
      nftables::InsertSorted(std::move(found), &state.rules.dnat);
      if (malformed > 0) {
        problems.push_back(absl::StrCat("set ", name, ": ", malformed,
                                        " foreign element(s), first: malformed element"));
      }
      continue;
    }
    // Every chunk of the dump into one set, decoded once: an interval's
    // start and end may arrive in different chunks.
    nftnl_set* all = nftnl_set_alloc();
    s = sock.Request(
        absl::StrCat("list elements of set ", name), build,
        [&](const nlmsghdr* nlh) {
          nftnl_set_elems_nlmsg_parse(nlh, all);
          return absl::OkStatus();
        });
    nftnl_set_free(st);
    std::set<std::string> seen;
    absl::Status decode =
        s.ok() && nftnl_set_is_set(all, NFTNL_SET_NAME)
            ? nftables::DecodeElements(all, &state.rules, disturbed_ok ? nullptr : &seen,
                                       disturbed_ok ? nullptr : &state.pinhole_packets,
                                       disturbed_ok ? nullptr : &state.dnat_connections)
            : absl::OkStatus();
    nftnl_set_free(all);
    if (!s.ok()) return s;
    if (decode.code() == absl::StatusCode::kAborted) return decode;
    if (!decode.ok()) problems.push_back(std::string(decode.message()));
  }

  // Chains (the forward chain exists only with the IPv6 firewall's sets).
  const std::map<std::string, std::string> expected_chains =
      nftables::ExpectedChains(nftables::SizesOf(state.rules));
  for (const auto& [name, sig] : expected_chains) {
    auto it = chains.find(name);
    if (it == chains.end()) {
      problems.push_back(absl::StrCat("chain ", name, " missing"));
    } else if (it->second != sig) {
      problems.push_back(absl::StrCat("chain ", name, " is \"", it->second,
                                      "\", expected \"", sig, "\""));
    }
  }
  if (chains.size() > expected_chains.size()) {
    problems.push_back("foreign chains in the table");
  }

  // The rules the contents call for, exactly: a rule for an empty set is
  // as wrong as a missing one (only a batch of ours keeps them in step).
  auto expected_rules = nftables::ExpectedRuleSignatures(
      nftables::SizesOf(state.rules));
  for (const auto& [chain, expected] : expected_rules) {
    const std::vector<std::string>& have = rules[chain];
    if (have != expected) {
      std::string detail;
      for (size_t i = 0; i < have.size() && i < expected.size(); ++i) {
        if (have[i] != expected[i]) {
          detail = absl::StrCat("; rule ", i, " is ", have[i], ", expected ",
                                expected[i]);
          break;
        }
      }
      problems.push_back(absl::StrCat(
          "chain ", chain, " holds ", have.size(),
          " rule(s) not as laid out (its sets' contents call for ",
          expected.size(), ")", detail));
    }
  }
  for (const auto& [chain, have] : rules) {
    if (expected_rules.count(chain) == 0 && !have.empty()) {
      problems.push_back(absl::StrCat("foreign rules in chain ", chain));
    }
  }

  state.layout_intact = problems.empty();
  state.problem = absl::StrJoin(problems, "; ");
  return state;
}

}  // namespace fabric::nat
