// PersistentTable: a string-keyed map that is cheap to copy, so the writer
// can hand readers an immutable snapshot after every commit and a
// transaction can work on a copy it throws away if it fails.
//
// The entries are spread over kShards shards by hash; a copy shares every
// shard, and a write copies only the shard it touches (and, once per copy,
// the shard index). A copy costs O(kShards) pointer copies at most, a write
// O(size / kShards); neither grows with the number of snapshots alive.
//
// Values are held as shared_ptr<const V>: a shard copy copies pointers, not
// values; a small trivially copyable value (a count) is held in the entry
// itself, which costs no allocation and copies as cheaply as a pointer. A
// shard is a vector sorted by key: a copy is one allocation, a
// walk reads the keys from contiguous memory, and an entry costs 48 bytes
// rather than a tree node's 80. Iteration order is by shard, not by key;
// callers that need an order sort.
//
// Thread-compatible; distinct copies may be used from different threads
// (shared shards are never written: a writer copies a shard it does not
// own, and it owns only shards it copied itself).
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fabric::agent {

template <typename V>
class PersistentTable {
 public:
  static constexpr size_t kShards = 1024;
  // Whether values live in the entries (no shared_ptr; FindShared and
  // PutShared are then not there).
  static constexpr bool kInline = std::is_trivially_copyable_v<V> && sizeof(V) <= 16;

  PersistentTable() : index_(std::make_shared<Index>(kShards)), owns_index_(true) {}
  // A copy shares everything; from then on neither side owns what they
  // share, so both copy on write (the source's ownership is cleared too,
  // which is why those members are mutable).
  PersistentTable(const PersistentTable& o) : index_(o.index_), size_(o.size_) {
    o.Disown();
  }
  PersistentTable& operator=(const PersistentTable& o) {
    if (this == &o) return *this;
    index_ = o.index_;
    size_ = o.size_;
    Disown();
    o.Disown();
    return *this;
  }
  PersistentTable(PersistentTable&&) = default;
  PersistentTable& operator=(PersistentTable&&) = default;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // The value at `key`, or null.
  const V* Find(const std::string& key) const {
    const Held* held = HeldAt(key);
    return held == nullptr ? nullptr : Ptr(*held);
  }
  bool Contains(const std::string& key) const { return Find(key) != nullptr; }
  // The same value, shared: it outlives this table (and its snapshot).
  std::shared_ptr<const V> FindShared(const std::string& key) const {
    static_assert(!kInline, "values held inline are not shared");
    const Held* held = HeldAt(key);
    return held == nullptr ? nullptr : *held;
  }

  // The value at `key` for writing in place, or null: only when this table
  // made its shard and nothing else (no snapshot, no other shard) holds the
  // value, so no reader can see the change. Otherwise Put a copy.
  V* FindUnshared(const std::string& key) {
    size_t i = ShardOf(key);
    if (!owns_index_ || owned_.empty() || !owned_[i]) return nullptr;
    Held* held = const_cast<Held*>(HeldAt(key));
    if (held == nullptr) return nullptr;
    if constexpr (kInline) {
      return held;
    } else {
      if (held->use_count() != 1) return nullptr;
      return const_cast<V*>(held->get());
    }
  }

  void Put(const std::string& key, V value) {
    if constexpr (kInline) {
      PutHeld(key, value);
    } else {
      PutHeld(key, std::make_shared<const V>(std::move(value)));
    }
  }
  void PutShared(const std::string& key, std::shared_ptr<const V> value) {
    static_assert(!kInline, "values held inline are not shared");
    PutHeld(key, std::move(value));
  }
  // True when `key` was there.
  bool Erase(const std::string& key) {
    size_t i = ShardOf(key);
    const std::shared_ptr<const Shard>& shard = (*index_)[i];
    auto found = Locate(shard, key);
    if (!found.has_value()) return false;
    Shard& w = Writable(i);
    w.erase(w.begin() + static_cast<std::ptrdiff_t>(*found));
    --size_;
    return true;
  }

  // Gives back the spare capacity of the shards this table alone holds
  // (a bulk load grows them by doubling: about a third spare), and calls
  // shrink(value) on each value held only here, so it can do the same.
  // Readers see no change.
  void ShrinkToFit(const std::function<void(V&)>& shrink = nullptr) {
    if (!owns_index_ || owned_.empty()) return;
    Index& index = const_cast<Index&>(*index_);
    for (size_t i = 0; i < kShards; ++i) {
      if (!owned_[i] || !index[i]) continue;
      Shard& shard = const_cast<Shard&>(*index[i]);
      shard.shrink_to_fit();
      if (!shrink) continue;
      for (auto& [k, v] : shard) {
        if constexpr (kInline) {
          shrink(v);
        } else {
          if (v.use_count() == 1) shrink(const_cast<V&>(*v));
        }
      }
    }
  }

  // Calls f(key, value) for every entry, shard by shard.
  void ForEach(const std::function<void(const std::string&, const V&)>& f) const {
    for (const auto& shard : *index_) {
      if (!shard) continue;
      for (const auto& [k, v] : *shard) f(k, *Ptr(v));
    }
  }
  // Entries sorted by key; the values live as long as this table.
  std::vector<std::pair<std::string, const V*>> Sorted() const {
    std::vector<std::pair<std::string, const V*>> out;
    out.reserve(size_);
    for (const auto& shard : *index_) {
      if (!shard) continue;
      for (const auto& [k, v] : *shard) out.emplace_back(k, Ptr(v));
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    return out;
  }

 private:
  using Held = std::conditional_t<kInline, V, std::shared_ptr<const V>>;
  using Shard = std::vector<std::pair<std::string, Held>>;
  using Index = std::vector<std::shared_ptr<const Shard>>;

  static const V* Ptr(const Held& h) {
    if constexpr (kInline) {
      return &h;
    } else {
      return h.get();
    }
  }
  void PutHeld(const std::string& key, Held value) {
    Shard& shard = Writable(ShardOf(key));
    auto it = LowerBound(shard, key);
    if (it != shard.end() && it->first == key) {
      it->second = std::move(value);
    } else {
      shard.emplace(it, key, std::move(value));
      ++size_;
    }
  }

  template <typename S>
  static auto LowerBound(S& shard, const std::string& key) {
    return std::lower_bound(shard.begin(), shard.end(), key,
                            [](const auto& e, const std::string& k) { return e.first < k; });
  }
  // The position of `key` in `shard` (which may be null), if it is there.
  static std::optional<size_t> Locate(const std::shared_ptr<const Shard>& shard,
                                      const std::string& key) {
    if (!shard) return std::nullopt;
    auto it = LowerBound(*shard, key);
    if (it == shard->end() || it->first != key) return std::nullopt;
    return static_cast<size_t>(it - shard->begin());
  }
  // What holds the value at `key`, or null.
  const Held* HeldAt(const std::string& key) const {
    const std::shared_ptr<const Shard>& shard = (*index_)[ShardOf(key)];
    std::optional<size_t> at = Locate(shard, key);
    return at.has_value() ? &(*shard)[*at].second : nullptr;
  }
  static size_t ShardOf(const std::string& key) {
    return std::hash<std::string>()(key) % kShards;
  }
  void Disown() const {
    owns_index_ = false;
    owned_.clear();
  }
  // The shard for writing: copied first unless this table made it.
  Shard& Writable(size_t i) {
    if (!owns_index_) {
      index_ = std::make_shared<Index>(*index_);
      owns_index_ = true;
    }
    if (owned_.empty()) owned_.assign(kShards, false);
    Index& index = const_cast<Index&>(*index_);
    if (!owned_[i]) {
      // Room for the write that asked, so it does not reallocate.
      auto copy = std::make_shared<Shard>();
      if (index[i]) {
        copy->reserve(index[i]->size() + 1);
        copy->insert(copy->end(), index[i]->begin(), index[i]->end());
      }
      index[i] = std::move(copy);
      owned_[i] = true;
    }
    return const_cast<Shard&>(*index[i]);
  }

  // The index is written in place only while owns_index_; a shard only
  // while owned_[i]: this table made both and nobody else holds them.
  std::shared_ptr<const Index> index_;
  size_t size_ = 0;
  mutable bool owns_index_ = false;
  mutable std::vector<bool> owned_;
};

}  // namespace fabric::agent
