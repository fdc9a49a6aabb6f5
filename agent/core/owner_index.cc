#include "agent/core/owner_index.h"

#include <algorithm>
#include <utility>

namespace fabric::agent {

size_t OwnerIndex::BucketOf(const std::string& id) {
  // Not the table's own hash modulo: PersistentTable shards by
  // std::hash % 1024, and 256 divides 1024, so take other bits.
  return (std::hash<std::string>()(id) >> 16) % kBuckets;
}

bool OwnerIndex::Has(const Ids& ids, const std::string& id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

void OwnerIndex::Add(const std::string& owner, const std::string& id) {
  const Entry* found = table_.Find(owner);
  Entry e = found ? *found : Entry();
  if (e.buckets == nullptr) {
    if (Has(e.flat, id)) return;
    e.flat.push_back(id);
    if (e.flat.size() > kFlat) {
      std::vector<Ids> spread(kBuckets);
      for (std::string& s : e.flat) spread[BucketOf(s)].push_back(std::move(s));
      auto buckets = std::make_shared<Buckets>();
      buckets->reserve(kBuckets);
      for (Ids& b : spread) buckets->push_back(std::make_shared<const Ids>(std::move(b)));
      e.buckets = std::move(buckets);
      e.flat.clear();
      e.flat.shrink_to_fit();
    }
  } else {
    size_t b = BucketOf(id);
    const Ids& old = *(*e.buckets)[b];
    if (Has(old, id)) return;
    auto ids = std::make_shared<Ids>(old);
    ids->push_back(id);
    auto buckets = std::make_shared<Buckets>(*e.buckets);
    (*buckets)[b] = std::move(ids);
    e.buckets = std::move(buckets);
  }
  ++e.count;
  table_.Put(owner, std::move(e));
}

void OwnerIndex::Remove(const std::string& owner, const std::string& id) {
  const Entry* found = table_.Find(owner);
  if (found == nullptr) return;
  Entry e = *found;
  if (e.buckets == nullptr) {
    auto it = std::find(e.flat.begin(), e.flat.end(), id);
    if (it == e.flat.end()) return;
    *it = std::move(e.flat.back());
    e.flat.pop_back();
  } else {
    size_t b = BucketOf(id);
    const Ids& old = *(*e.buckets)[b];
    if (!Has(old, id)) return;
    auto ids = std::make_shared<Ids>();
    ids->reserve(old.size() - 1);
    for (const std::string& s : old) {
      if (s != id) ids->push_back(s);
    }
    auto buckets = std::make_shared<Buckets>(*e.buckets);
    (*buckets)[b] = std::move(ids);
    e.buckets = std::move(buckets);
  }
  --e.count;
  if (e.count == 0) {
    table_.Erase(owner);
    return;
  }
  if (e.buckets != nullptr && e.count < kFlat / 2) {
    for (const auto& b : *e.buckets) e.flat.insert(e.flat.end(), b->begin(), b->end());
    e.buckets.reset();
  }
  table_.Put(owner, std::move(e));
}

size_t OwnerIndex::CountOf(const std::string& owner) const {
  const Entry* e = table_.Find(owner);
  return e == nullptr ? 0 : e->count;
}

void OwnerIndex::ForEach(const std::string& owner,
                         const std::function<void(const std::string&)>& f) const {
  const Entry* e = table_.Find(owner);
  if (e == nullptr) return;
  if (e->buckets == nullptr) {
    for (const std::string& id : e->flat) f(id);
    return;
  }
  for (const auto& b : *e->buckets) {
    for (const std::string& id : *b) f(id);
  }
}

}  // namespace fabric::agent
