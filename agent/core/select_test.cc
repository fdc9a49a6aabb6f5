// SelectMappings over ids that share their first 8 bytes (the comparison
// starts on them) and page tokens between them.
#include <string>
#include <vector>

#include "agent/core/convert.h"
#include "agent/core/state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent {
namespace {

using ::testing::ElementsAre;

void Add(State& st, const std::string& id, v1::OwnerKind kind) {
  v1::PortMapping p;
  p.set_id(id);
  p.mutable_owner()->set_kind(kind);
  p.mutable_owner()->set_id("o");
  p.set_protocol(v1::PROTOCOL_TCP);
  p.set_host_port(8000);
  p.set_port_count(1);
  p.set_target_ip("10.1.0.2");
  p.set_target_port(80);
  absl::StatusOr<nat::PortMapping> n = ToNatMapping(p);
  ASSERT_TRUE(n.ok()) << n.status();
  st.mappings.Put(id, MappingRecord(p, *n));
}

std::vector<std::string> Ids(const std::vector<const MappingRecord*>& recs) {
  std::vector<std::string> out;
  for (const MappingRecord* r : recs) out.push_back(r->id());
  return out;
}

TEST(SelectMappingsTest, OrdersAndPagesIdsThatShareTheirFirstEightBytes) {
  State st;
  for (const char* id : {"m-123456789", "m-1234567", "m-12345678", "m-1234568", "m-12345",
                         "m-2", "m-12345670"}) {
    ASSERT_NO_FATAL_FAILURE(Add(st, id, v1::OWNER_KIND_API));
  }
  const std::vector<std::string> all = {"m-12345",    "m-1234567",   "m-12345670", "m-12345678",
                                        "m-123456789", "m-1234568", "m-2"};
  EXPECT_EQ(Ids(SelectMappings(st, v1::OWNER_KIND_UNSPECIFIED, "", "", 0)), all);
  // Every token, every page size: the rest in order, at most `limit`.
  for (size_t t = 0; t < all.size(); ++t) {
    for (size_t limit : {1, 2, 3, 0}) {
      std::vector<std::string> want(all.begin() + t + 1, all.end());
      if (limit != 0 && want.size() > limit) want.resize(limit);
      EXPECT_EQ(Ids(SelectMappings(st, v1::OWNER_KIND_UNSPECIFIED, "", all[t], limit)), want)
          << "after " << all[t] << ", limit " << limit;
    }
  }
  // A token that is no id: what sorts after it ("m-12345678" is its prefix:
  // before it).
  EXPECT_THAT(Ids(SelectMappings(st, v1::OWNER_KIND_UNSPECIFIED, "", "m-123456780", 2)),
              ElementsAre("m-123456789", "m-1234568"));
}

TEST(SelectMappingsTest, KindFilterStillReadsTheRecords) {
  State st;
  ASSERT_NO_FATAL_FAILURE(Add(st, "m-1", v1::OWNER_KIND_API));
  ASSERT_NO_FATAL_FAILURE(Add(st, "m-2", v1::OWNER_KIND_CNI));
  ASSERT_NO_FATAL_FAILURE(Add(st, "m-3", v1::OWNER_KIND_API));
  EXPECT_THAT(Ids(SelectMappings(st, v1::OWNER_KIND_API, "", "", 0)), ElementsAre("m-1", "m-3"));
  EXPECT_THAT(Ids(SelectMappings(st, v1::OWNER_KIND_CNI, "", "m-1", 0)), ElementsAre("m-2"));
  EXPECT_THAT(Ids(SelectMappings(st, v1::OWNER_KIND_UNSPECIFIED, "", "m-1", 1)),
              ElementsAre("m-2"));
}

}  // namespace
}  // namespace fabric::agent
