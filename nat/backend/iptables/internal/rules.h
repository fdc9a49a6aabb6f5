// Rule encoding between a RuleSet and libiptc entries: the entries of our
// chains that a RuleSet calls for (DNAT, MASQUERADE, conntrack, the jumps
// from the built-in chains), and the decoding of our chains back into a
// RuleSet. Pure byte building and parsing; the backend's transaction
// (iptables_backend.cc) appends what it builds and reads what it decodes.
//
// Internal to nat/backend/iptables. ReadTable works on a libiptc handle,
// which reads the network namespace of the thread that opened it.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "nat/backend/backend.h"
#include "nat/backend/iptables/internal/libiptc.h"
#include "nat/types.h"

namespace fabric::nat::iptables_internal {

// ---------------------------------------------------------------------------
// Building entries: the entry, its matches, its target, contiguous.

template <typename F>
class EntryBuilder {
 public:
  EntryBuilder() : buf_(sizeof(typename F::Entry), 0) {}
  typename F::Entry* entry() { return reinterpret_cast<typename F::Entry*>(buf_.data()); }

  template <typename T>
  T* AddMatch(const char* name, uint8_t revision) {
    size_t size = XT_ALIGN(sizeof(xt_entry_match)) + XT_ALIGN(sizeof(T));
    size_t at = buf_.size();
    buf_.resize(at + size, 0);
    auto* m = reinterpret_cast<xt_entry_match*>(buf_.data() + at);
    m->u.match_size = static_cast<uint16_t>(size);
    std::strncpy(m->u.user.name, name, sizeof(m->u.user.name) - 1);
    m->u.user.revision = revision;
    return reinterpret_cast<T*>(m->data);
  }

  template <typename T>
  T* SetTarget(const char* name, uint8_t revision) {
    size_t size = XT_ALIGN(sizeof(xt_entry_target)) + XT_ALIGN(sizeof(T));
    size_t at = buf_.size();
    buf_.resize(at + size, 0);
    auto* t = reinterpret_cast<xt_entry_target*>(buf_.data() + at);
    t->u.target_size = static_cast<uint16_t>(size);
    std::strncpy(t->u.user.name, name, sizeof(t->u.user.name) - 1);
    t->u.user.revision = revision;
    entry()->target_offset = static_cast<uint16_t>(at);
    entry()->next_offset = static_cast<uint16_t>(buf_.size());
    return reinterpret_cast<T*>(t->data);
  }
  // ACCEPT, or a jump to a chain: libiptc resolves the name.
  void SetVerdict(const char* name) {
    size_t at = buf_.size();
    size_t size = XT_ALIGN(sizeof(xt_standard_target));
    buf_.resize(at + size, 0);
    auto* t = reinterpret_cast<xt_entry_target*>(buf_.data() + at);
    t->u.target_size = static_cast<uint16_t>(size);
    std::strncpy(t->u.user.name, name, sizeof(t->u.user.name) - 1);
    entry()->target_offset = static_cast<uint16_t>(at);
    entry()->next_offset = static_cast<uint16_t>(buf_.size());
  }

 private:
  std::vector<uint8_t> buf_;
};

// All of our rules for one family and table: (chain, entry bytes).
template <typename F>
struct Plan {
  std::vector<std::pair<const char*, EntryBuilder<F>>> nat, filter;
};

// The templates below are defined in rules.cc, for V4 and V6.

// The entries our chains hold for `rules`, in order.
template <typename F>
Plan<F> PlanFor(const RuleSet& rules);

// The rule in `j.builtin` that jumps to `j.chain`.
template <typename F>
EntryBuilder<F> JumpEntry(const Jump& j);

// Reads our rules of one table, open as `h`, into `state`.
template <typename F>
void ReadTable(xtc_handle* h, const char* table, KernelState* state,
               std::vector<std::string>* problems);

}  // namespace fabric::nat::iptables_internal
