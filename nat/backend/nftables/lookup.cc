// NftablesBackend's reads for a caller that compares the kernel with its
// state while changes are applied (the agent outside its writer's lock):
// a dump that such changes disturb, and single elements looked up by key.
#include <libnftnl/common.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include "absl/strings/str_cat.h"
#include "nat/backend/nftables/encode.h"
#include "nat/backend/nftables/nftables_backend.h"

namespace fabric::nat {

absl::StatusOr<KernelState> NftablesBackend::ReadDuringWrites() const {
  absl::StatusOr<KernelState> state = ReadOnce(/*disturbed_ok=*/true);
  if (state.ok()) NoteSizes(*state);
  return state;
}

void NftablesBackend::NoteSizes(const KernelState& state) const {
  if (state.table_present) {
    sizes_ = nftables::SizesOf(state.rules);
  } else {
    sizes_.reset();
  }
}

absl::StatusOr<DnatSet> NftablesBackend::HoldsDnat(
    const DnatSet& elements) const {
  DnatSet held;
  for (const DnatElement& e : elements) {
    if (e.is_range()) {
      // An interval map: no lookup by key here; one read answers for all.
      return Backend::HoldsDnat(elements);
    }
  }
  for (const DnatElement& e : elements) {
    RuleSet found;
    absl::Status decode;
    nftnl_set* reply = nftnl_set_alloc();
    absl::Status s = socket_->Request(
        absl::StrCat("get element ", e.ToString()),
        [&](char* buf, uint32_t seq) { return nftables::EncodeDnatLookup(buf, seq, e); },
        [&](const nlmsghdr* nlh) {
          nftnl_set_elems_nlmsg_parse(nlh, reply);
          return absl::OkStatus();
        });
    if (s.ok() && nftnl_set_is_set(reply, NFTNL_SET_NAME)) {
      decode = nftables::DecodeElements(reply, &found);
    }
    nftnl_set_free(reply);
    // Not there: ENOENT, for the key (or the whole table).
    if (!s.ok() && s.code() != absl::StatusCode::kNotFound) return s;
    if (s.ok() && decode.ok() && found.dnat.count(e) > 0) held.insert(e);
  }
  return held;
}

}  // namespace fabric::nat
