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

namespace {

// Writable access to what an entry shares: copied unless only this entry
// holds it (then no snapshot can see the write).
template <typename T>
T& Own(std::shared_ptr<const T>& p) {
  if (p.use_count() != 1) p = std::make_shared<const T>(*p);
  return const_cast<T&>(*p);
}

}  // namespace

bool OwnerIndex::AddTo(Entry& e, const std::string& id) {
  if (e.buckets == nullptr) {
    if (Has(e.flat, id)) return false;
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
    if (Has(*(*e.buckets)[b], id)) return false;
    Own(Own(e.buckets)[b]).push_back(id);
  }
  ++e.count;
  return true;
}

bool OwnerIndex::RemoveFrom(Entry& e, const std::string& id) {
  if (e.buckets == nullptr) {
    auto it = std::find(e.flat.begin(), e.flat.end(), id);
    if (it == e.flat.end()) return false;
    *it = std::move(e.flat.back());
    e.flat.pop_back();
  } else {
    size_t b = BucketOf(id);
    const Ids& old = *(*e.buckets)[b];
    auto at = std::find(old.begin(), old.end(), id);
    if (at == old.end()) return false;
    size_t i = static_cast<size_t>(at - old.begin());
    Ids& ids = Own(Own(e.buckets)[b]);
    ids[i] = std::move(ids.back());
    ids.pop_back();
  }
  --e.count;
  if (e.buckets != nullptr && e.count < kFlat / 2) {
    for (const auto& b : *e.buckets) e.flat.insert(e.flat.end(), b->begin(), b->end());
    e.buckets.reset();
  }
  return true;
}

void OwnerIndex::ShrinkToFit() {
  table_.ShrinkToFit([](Entry& e) {
    e.flat.shrink_to_fit();
    if (e.buckets == nullptr || e.buckets.use_count() != 1) return;
    for (const std::shared_ptr<const Ids>& b : *e.buckets) {
      if (b.use_count() == 1) const_cast<Ids&>(*b).shrink_to_fit();
    }
  });
}

void OwnerIndex::Add(const std::string& owner, const std::string& id) {
  if (Entry* mine = table_.FindUnshared(owner)) {
    AddTo(*mine, id);
    return;
  }
  const Entry* found = table_.Find(owner);
  Entry e = found ? *found : Entry();
  if (AddTo(e, id)) table_.Put(owner, std::move(e));
}

void OwnerIndex::Remove(const std::string& owner, const std::string& id) {
  Entry* mine = table_.FindUnshared(owner);
  if (mine != nullptr) {
    if (RemoveFrom(*mine, id) && mine->count == 0) table_.Erase(owner);
    return;
  }
  const Entry* found = table_.Find(owner);
  if (found == nullptr) return;
  Entry e = *found;
  if (!RemoveFrom(e, id)) return;
  if (e.count == 0) {
    table_.Erase(owner);
  } else {
    table_.Put(owner, std::move(e));
  }
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
