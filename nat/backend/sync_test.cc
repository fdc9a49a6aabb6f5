#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/backend.h"
#include "nat/backend/fake/fake_backend.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::StatusIs;

DnatElement Element(uint16_t port) {
  DnatElement e;
  e.port_lo = e.port_hi = port;
  e.target_ip = *IpAddress::Parse("10.22.0.5");
  e.target_port = 80;
  return e;
}

RuleSet Desired() {
  RuleSet r;
  r.dnat = {Element(8080), Element(8081)};
  r.masquerade = {*Prefix::Parse("10.22.0.0/16")};
  return r;
}

TEST(DiffTest, RemovesExtraAndAddsMissing) {
  RuleSet current;
  current.dnat = {Element(8080), Element(9999)};
  Batch b = Diff(current, Desired());
  EXPECT_EQ(b.remove.dnat, DnatSet{Element(9999)});
  EXPECT_EQ(b.add.dnat, DnatSet{Element(8081)});
  EXPECT_EQ(b.add.masquerade.size(), 1u);
  EXPECT_TRUE(Diff(Desired(), Desired()).empty());
}

TEST(DiffTest, SnatRulesAreDiffedAppliedAndMerged) {
  SnatRule a{*Prefix::Parse("10.20.0.0/24"), *IpAddress::Parse("203.0.113.5"), "wan0"};
  SnatRule b{*Prefix::Parse("10.20.0.0/24"), *IpAddress::Parse("203.0.113.6"), "wan0"};
  RuleSet current, desired;
  current.snat = {a};
  desired.snat = {b};
  Batch d = Diff(current, desired);
  EXPECT_EQ(d.remove.snat, std::set<SnatRule>{a});
  EXPECT_EQ(d.add.snat, std::set<SnatRule>{b});
  RuleSet applied = current;
  ASSERT_OK(ApplyBatch(d, &applied));
  EXPECT_EQ(applied, desired);
  EXPECT_THAT(ApplyBatch(d, &applied),
              StatusIs(absl::StatusCode::kNotFound,
                       ::testing::HasSubstr("remove snat 10.20.0.0/24 -> 203.0.113.5 via wan0")));
  Batch merged;
  Merge(&merged, d);
  EXPECT_EQ(merged.add.snat, d.add.snat);
  EXPECT_EQ(merged.remove.snat, d.remove.snat);
}

TEST(SyncTest, MissingTableIsReplaced) {
  FakeBackend backend;
  ASSERT_OK_AND_ASSIGN(SyncReport r, Sync(backend, Desired()));
  EXPECT_EQ(r.action, SyncReport::Action::kReplaced);
  EXPECT_EQ(backend.rules(), Desired());
}

TEST(SyncTest, InSyncChangesNothing) {
  FakeBackend backend;
  ASSERT_OK(backend.Replace(Desired()));
  ASSERT_OK_AND_ASSIGN(SyncReport r, Sync(backend, Desired()));
  EXPECT_EQ(r.action, SyncReport::Action::kNone);
  EXPECT_EQ(backend.applies(), 0);
  EXPECT_EQ(backend.replaces(), 1);
}

TEST(SyncTest, DriftIsFixedWithOneElementBatch) {
  FakeBackend backend;
  ASSERT_OK(backend.Replace(Desired()));
  backend.mutable_rules().dnat.erase(Element(8081));
  backend.mutable_rules().dnat.insert(Element(1234));
  ASSERT_OK_AND_ASSIGN(SyncReport r, Sync(backend, Desired()));
  EXPECT_EQ(r.action, SyncReport::Action::kApplied);
  EXPECT_EQ(r.changes.add.dnat.size(), 1u);
  EXPECT_EQ(r.changes.remove.dnat.size(), 1u);
  EXPECT_EQ(backend.rules(), Desired());
}

TEST(SyncTest, BrokenLayoutIsReplaced) {
  FakeBackend backend;
  ASSERT_OK(backend.Replace(Desired()));
  backend.break_layout("chain prerouting missing");
  ASSERT_OK_AND_ASSIGN(SyncReport r, Sync(backend, Desired()));
  EXPECT_EQ(r.action, SyncReport::Action::kReplaced);
  EXPECT_EQ(r.reason, "chain prerouting missing");
}

TEST(SyncTest, FailedApplyFallsBackToReplace) {
  FakeBackend backend;
  ASSERT_OK(backend.Replace(RuleSet{}));
  backend.FailNext(absl::NotFoundError("element vanished"));
  ASSERT_OK_AND_ASSIGN(SyncReport r, Sync(backend, Desired()));
  EXPECT_EQ(r.action, SyncReport::Action::kReplaced);
  EXPECT_EQ(backend.rules(), Desired());
}

TEST(SyncTest, ReplaceFailureIsReported) {
  FakeBackend backend;
  backend.FailNext(absl::UnavailableError("netlink down"));
  EXPECT_THAT(Sync(backend, Desired()),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST(FakeBackendTest, BatchIsAllOrNothing) {
  FakeBackend backend;
  ASSERT_OK(backend.Replace(Desired()));
  Batch b;
  b.add.dnat = {Element(7000)};
  b.remove.dnat = {Element(7001)};  // not present
  EXPECT_THAT(backend.Apply(b), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(backend.rules(), Desired());
}

}  // namespace
}  // namespace fabric::nat
