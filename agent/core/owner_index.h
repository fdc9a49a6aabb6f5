// OwnerIndex: owner id -> the ids of that owner's mappings, so that a
// listing of one owner (a container's CHECK, an orchestrator's own list,
// a LAN host's leases) reads its own few entries instead of every
// mapping. Cheap to copy like the PersistentTable it is built on: a
// snapshot shares it, a write copies one owner's entry.
//
// An owner of up to kFlat mappings keeps its ids in one vector, copied on
// write; a bigger one spreads them over kBuckets buckets by hash, so a
// write copies one bucket (about count / kBuckets ids) and the bucket
// pointers. What no snapshot shares yet (the second write to an owner in
// one transaction, a start's bulk load) is written in place. An owner goes
// back to one vector below kFlat / 2, so one at the edge does not switch on
// every write.
//
// Thread-compatible, as PersistentTable.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/core/table.h"

namespace fabric::agent {

class OwnerIndex {
 public:
  static constexpr size_t kFlat = 64;
  static constexpr size_t kBuckets = 256;

  // Adding an id the owner has, or removing one it has not, changes
  // nothing.
  void Add(const std::string& owner, const std::string& id);
  void Remove(const std::string& owner, const std::string& id);

  // How many mapping ids `owner` has.
  size_t CountOf(const std::string& owner) const;
  // Calls f(id) for each of owner's mapping ids, in no particular order.
  void ForEach(const std::string& owner,
               const std::function<void(const std::string&)>& f) const;
  // Gives back spare capacity no snapshot shares (after a bulk load).
  void ShrinkToFit();
  // Owners with at least one mapping.
  size_t owners() const { return table_.size(); }

 private:
  using Ids = std::vector<std::string>;
  using Buckets = std::vector<std::shared_ptr<const Ids>>;
  struct Entry {
    size_t count = 0;
    Ids flat;                                // count <= kFlat, or not yet spread
    std::shared_ptr<const Buckets> buckets;  // set: the ids are here instead
  };
  static size_t BucketOf(const std::string& id);
  // Change `e` (writing only what it alone holds); false when that
  // changes nothing.
  static bool AddTo(Entry& e, const std::string& id);
  static bool RemoveFrom(Entry& e, const std::string& id);
  static bool Has(const Ids& ids, const std::string& id);

  PersistentTable<Entry> table_;
};

}  // namespace fabric::agent
