// The core on the real nftables backend, in a namespace of its own: the
// periodic check reads the table back only when the kernel's ruleset
// generation says someone changed something since it was last found right.
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"
#include "agent/core.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/nftables/nftables_backend.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

// How nft lists the element of tcp 8080 -> 10.1.0.5:80 (with its counter).
constexpr char kElement8080[] =
    "tcp \\. 8080 counter packets [0-9]+ bytes [0-9]+ : 10\\.1\\.0\\.5 \\. 80";

using ::fabric::testing::IsOkAndHolds;
using ::testing::HasSubstr;

// Forwards to a backend and counts the reads.
class CountingBackend : public nat::Backend {
 public:
  explicit CountingBackend(nat::Backend* b) : b_(b) {}
  std::string name() const override { return b_->name(); }
  absl::Status Apply(const nat::Batch& batch) override { return b_->Apply(batch); }
  absl::Status Replace(const nat::RuleSet& r) override { return b_->Replace(r); }
  absl::StatusOr<nat::KernelState> Read() const override {
    ++reads;
    return b_->Read();
  }
  absl::Status DeleteTable() override { return b_->DeleteTable(); }
  absl::StatusOr<uint32_t> Generation() const override { return b_->Generation(); }
  mutable int reads = 0;

 private:
  nat::Backend* b_;
};

TEST(CoreKernelTest, ThePeriodicCheckReadsOnlyWhenTheGenerationMoved) {
  ASSERT_OK_AND_ASSIGN(auto ns, testing::Netns::Create("gen"));
  std::unique_ptr<nat::NftablesBackend> writer, reader_backend;
  {
    ASSERT_OK_AND_ASSIGN(auto enter, testing::ScopedNetns::Enter(*ns));
    ASSERT_OK_AND_ASSIGN(writer, nat::NftablesBackend::Create());
    ASSERT_OK_AND_ASSIGN(reader_backend, nat::NftablesBackend::Create());
  }
  CountingBackend reader(reader_backend.get());
  ASSERT_OK_AND_ASSIGN(auto store,
                       Store::Open(absl::StrCat(std::getenv("TEST_TMPDIR"), "/gen")));
  CoreOptions options;
  options.reader = &reader;
  AgentCore core(std::move(store), writer.get(), nullptr, options);
  ASSERT_OK(core.Start());
  v1::PortMapping m;
  m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m.mutable_owner()->set_id("t");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.set_host_port(8080);
  m.set_target_ip("10.1.0.5");
  m.set_target_port(80);
  ASSERT_OK(core.CreateMapping(m).status());

  // Only our own batches since start: known good, nothing read.
  ASSERT_OK(core.CheckAndRepair().status());
  EXPECT_EQ(reader.reads, 0);
  // Someone commits something elsewhere: one read, which matches, and then
  // the new generation is known good.
  ASSERT_OK(ns->Exec("nft add table ip somebody_else"));
  ASSERT_OK_AND_ASSIGN(nat::SyncReport r, core.CheckAndRepair());
  EXPECT_EQ(r.action, nat::SyncReport::Action::kNone);
  EXPECT_EQ(reader.reads, 1);
  ASSERT_OK(core.CheckAndRepair().status());
  EXPECT_EQ(reader.reads, 1);
  // Someone deletes our element: read, found, repaired.
  ASSERT_OK(ns->Exec("nft delete element inet fabric_nat dnat4_any '{ tcp . 8080 }'"));
  ASSERT_OK_AND_ASSIGN(r, core.CheckAndRepair());
  EXPECT_NE(r.action, nat::SyncReport::Action::kNone);
  EXPECT_EQ(reader.reads, 2);
  EXPECT_THAT(ns->Exec("nft list map inet fabric_nat dnat4_any"),
              IsOkAndHolds(::testing::ContainsRegex(kElement8080)));
  // And the repair left it known good again.
  ASSERT_OK(core.CheckAndRepair().status());
  EXPECT_EQ(reader.reads, 2);
}

}  // namespace
}  // namespace fabric::agent
