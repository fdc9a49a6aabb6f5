#include "agent/core/table.h"

#include <memory>
#include <set>
#include <type_traits>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "agent/core/owner_index.h"

namespace fabric::agent {
namespace {

TEST(PersistentTableTest, PutFindEraseAndSize) {
  PersistentTable<int> t;
  EXPECT_TRUE(t.empty());
  t.Put("a", 1);
  t.Put("b", 2);
  t.Put("a", 3);  // replaces
  EXPECT_EQ(t.size(), 2u);
  ASSERT_NE(t.Find("a"), nullptr);
  EXPECT_EQ(*t.Find("a"), 3);
  EXPECT_EQ(t.Find("c"), nullptr);
  EXPECT_TRUE(t.Erase("a"));
  EXPECT_FALSE(t.Erase("a"));
  EXPECT_EQ(t.size(), 1u);
}

// What snapshots rely on: a copy never sees a later write to either side.
TEST(PersistentTableTest, CopiesAreIndependentBothWays) {
  PersistentTable<int> writer;
  for (int i = 0; i < 5000; ++i) writer.Put("k" + std::to_string(i), i);
  PersistentTable<int> snapshot = writer;
  writer.Put("k1", -1);
  writer.Erase("k2");
  writer.Put("new", 7);
  EXPECT_EQ(*snapshot.Find("k1"), 1);
  ASSERT_NE(snapshot.Find("k2"), nullptr);
  EXPECT_EQ(snapshot.Find("new"), nullptr);
  EXPECT_EQ(snapshot.size(), 5000u);
  EXPECT_EQ(writer.size(), 5000u);

  // Writing the copy leaves the original alone too.
  snapshot.Put("k3", -3);
  EXPECT_EQ(*writer.Find("k3"), 3);
  // A copy of a copy, written after the first write of the original.
  PersistentTable<int> second = writer;
  writer.Put("k4", -4);
  EXPECT_EQ(*second.Find("k4"), 4);
  EXPECT_EQ(*writer.Find("k4"), -4);
}

// Both ways of holding a value: in the entry (int) and shared (string).
template <typename V>
class InPlaceTest : public ::testing::Test {};
using HeldBothWays = ::testing::Types<int, std::string>;
TYPED_TEST_SUITE(InPlaceTest, HeldBothWays);

TYPED_TEST(InPlaceTest, WritesOnlyWhatNoCopyShares) {
  static_assert(PersistentTable<int>::kInline && !PersistentTable<std::string>::kInline);
  auto v = [](int i) {
    if constexpr (std::is_same_v<TypeParam, int>) {
      return i;
    } else {
      return std::to_string(i);
    }
  };
  PersistentTable<TypeParam> t;
  t.Put("a", v(1));
  ASSERT_NE(t.FindUnshared("a"), nullptr);  // made here, never copied
  *t.FindUnshared("a") = v(2);
  PersistentTable<TypeParam> snapshot = t;
  EXPECT_EQ(t.FindUnshared("a"), nullptr);
  EXPECT_EQ(snapshot.FindUnshared("a"), nullptr);
  EXPECT_EQ(t.FindUnshared("missing"), nullptr);
  t.Put("a", v(3));  // a fresh value in a fresh shard copy: unshared again
  ASSERT_NE(t.FindUnshared("a"), nullptr);
  *t.FindUnshared("a") = v(4);
  EXPECT_EQ(*t.Find("a"), v(4));
  EXPECT_EQ(*snapshot.Find("a"), v(2));
  if constexpr (!PersistentTable<TypeParam>::kInline) {
    // A value a reader still holds is not written in place either.
    t.Put("b", v(5));
    std::shared_ptr<const TypeParam> held = t.FindShared("b");
    EXPECT_EQ(t.FindUnshared("b"), nullptr);
    held.reset();
    EXPECT_NE(t.FindUnshared("b"), nullptr);
  }
}

// ShrinkToFit touches only what the table alone holds: a copy taken
// before still reads every entry, and a value a snapshot shares is not
// handed to the shrink callback.
TEST(PersistentTableTest, ShrinkToFitLeavesCopiesAndSharedValuesAlone) {
  PersistentTable<std::vector<int>> t;
  for (int i = 0; i < 3000; ++i) t.Put(std::to_string(i), std::vector<int>(3, i));
  PersistentTable<std::vector<int>> snapshot = t;
  t.Put("new", {7});
  int shrunk = 0;
  t.ShrinkToFit([&](std::vector<int>& v) {
    ++shrunk;
    v.shrink_to_fit();
  });
  EXPECT_EQ(shrunk, 1);  // only "new" is held by t alone
  for (int i = 0; i < 3000; ++i) {
    const std::vector<int>* v = snapshot.Find(std::to_string(i));
    ASSERT_NE(v, nullptr);
    EXPECT_EQ((*v)[2], i);
    ASSERT_NE(t.Find(std::to_string(i)), nullptr);
  }
  EXPECT_EQ(snapshot.Find("new"), nullptr);
  EXPECT_EQ(t.size(), 3001u);

  OwnerIndex index;
  for (int i = 0; i < 500; ++i) index.Add("bulk", "m-" + std::to_string(i));
  OwnerIndex before = index;
  index.ShrinkToFit();
  index.Add("bulk", "m-500");
  EXPECT_EQ(index.CountOf("bulk"), 501u);
  EXPECT_EQ(before.CountOf("bulk"), 500u);
  std::set<std::string> seen;
  index.ForEach("bulk", [&](const std::string& id) { seen.insert(id); });
  EXPECT_EQ(seen.size(), 501u);
}

TEST(PersistentTableTest, SortedIsByKey) {
  PersistentTable<int> t;
  for (const char* k : {"m-10", "m-2", "m-1"}) t.Put(k, 0);
  std::vector<std::string> keys;
  for (const auto& [k, v] : t.Sorted()) keys.push_back(k);
  EXPECT_THAT(keys, ::testing::ElementsAre("m-1", "m-10", "m-2"));
  int n = 0;
  t.ForEach([&n](const std::string&, const int&) { ++n; });
  EXPECT_EQ(n, 3);
}

std::set<std::string> IdsOf(const OwnerIndex& index, const std::string& owner) {
  std::set<std::string> out;
  index.ForEach(owner, [&](const std::string& id) {
    EXPECT_TRUE(out.insert(id).second) << "listed twice: " << id;
  });
  EXPECT_EQ(out.size(), index.CountOf(owner));
  return out;
}

TEST(OwnerIndexTest, ListsEachOwnersOwnIdsOnceThroughSpreadAndBack) {
  OwnerIndex index;
  std::set<std::string> big, small;
  // Past kFlat the big owner's ids are spread over buckets; a repeated
  // add and a remove of an id it lacks change nothing.
  for (size_t i = 0; i < 3 * OwnerIndex::kFlat; ++i) {
    std::string id = "m-" + std::to_string(i);
    index.Add(i % 7 == 0 ? "small" : "big", id);
    (i % 7 == 0 ? small : big).insert(id);
  }
  index.Add("big", "m-1");
  index.Remove("big", "m-0");  // small's
  index.Remove("nobody", "m-1");
  EXPECT_EQ(IdsOf(index, "big"), big);
  EXPECT_EQ(IdsOf(index, "small"), small);
  EXPECT_EQ(index.owners(), 2u);

  // Down below kFlat / 2 (back to one vector) and to nothing.
  OwnerIndex before = index;
  std::set<std::string> before_big = big;
  while (big.size() > 3) {
    index.Remove("big", *big.begin());
    big.erase(big.begin());
    ASSERT_EQ(IdsOf(index, "big"), big);
  }
  for (const std::string& id : std::set<std::string>(small)) index.Remove("small", id);
  EXPECT_EQ(index.CountOf("small"), 0u);
  EXPECT_EQ(index.owners(), 1u);
  // The copy taken before saw none of it.
  EXPECT_EQ(IdsOf(before, "big"), before_big);
  EXPECT_EQ(before.CountOf("small"), small.size());
}

}  // namespace
}  // namespace fabric::agent
