// The writer's transaction rules with the fake backend: commit order and
// all-or-nothing, the deadline check, snapshots that do not change under a
// reader, bounded watches, and kernel comparisons that tolerate commits
// interleaving with the read but never miss a real difference.
#include "agent/core/writer.h"

#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

nat::PortMapping Dnat(uint16_t host_port) {
  nat::PortMapping m;
  m.protocol = nat::Protocol::kTcp;
  m.host_port = host_port;
  m.target_ip = *nat::IpAddress::Parse("10.0.0.2");
  m.target_port = 80;
  return m;
}

// A second connection to the fake kernel, as the agent's reader backend:
// Read() takes what the kernel holds, then runs `during` (commits that
// interleave with the read: the read missed them).
class InterleavedReader : public nat::Backend {
 public:
  explicit InterleavedReader(nat::FakeBackend* kernel) : kernel_(kernel) {}
  std::string name() const override { return "reader"; }
  absl::Status Apply(const nat::Batch&) override { return absl::UnimplementedError("reader"); }
  absl::Status Replace(const nat::RuleSet&) override {
    return absl::UnimplementedError("reader");
  }
  absl::Status DeleteTable() override { return absl::UnimplementedError("reader"); }
  absl::StatusOr<nat::KernelState> Read() const override {
    absl::StatusOr<nat::KernelState> state = kernel_->Read();
    ++reads;
    if (during) during();
    return state;
  }
  std::function<void()> during;
  mutable int reads = 0;

 private:
  nat::FakeBackend* kernel_;
};

class WriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(std::getenv("TEST_TMPDIR"), "/writer-", counter_++);
    auto store = Store::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    Writer::Options o;
    o.dynamic_lo = 40000;
    o.dynamic_hi = 40009;
    o.now = [this] { return now_; };
    o.max_watches = 2;
    o.reader = &reader_;
    writer_ = std::make_unique<Writer>(std::move(*store), &backend_, o);
    ASSERT_OK(writer_->Start([](const StoreContents&, State*, nat::PortAllocator*,
                                StoreWrite*) { return absl::OkStatus(); }));
  }

  // A transaction that publishes `port` as mapping "m-<n>".
  absl::StatusOr<std::string> Add(uint16_t port) {
    return writer_->Mutate<std::string>(
        absl::InfiniteFuture(), [&](Txn& txn) -> absl::StatusOr<std::string> {
          nat::PortMapping m = Dnat(port);
          v1::PortMapping proto;
          proto.set_id(txn.NewMappingId());
          if (absl::Status s = txn.Reserve(nat::PortScope::Of(m), port, 1, proto.id()); !s.ok()) {
            return s;
          }
          txn.write().put_mappings.push_back(proto);
          for (const auto& e : m.ToElements()) txn.batch().add.dnat.insert(e);
          txn.state().mappings.Put(proto.id(), MappingRecord{proto, m});
          txn.Publish(v1::MappingEvent::TYPE_ADDED, proto);
          return proto.id();
        });
  }

  static int counter_;
  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  nat::FakeBackend backend_;
  InterleavedReader reader_{&backend_};
  std::unique_ptr<Writer> writer_;
};
int WriterTest::counter_ = 0;

TEST_F(WriterTest, ACommitReachesStoreKernelAndSnapshot) {
  auto before = writer_->snapshot();
  EXPECT_THAT(Add(8080), IsOkAndHolds("m-1"));
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  auto after = writer_->snapshot();
  EXPECT_GT(after->version, before->version);
  EXPECT_EQ(after->state.mappings.size(), 1u);
  // A snapshot taken before never changes.
  EXPECT_EQ(before->state.mappings.size(), 0u);
}

TEST_F(WriterTest, AKernelRefusalRollsBackStoreStatePortsAndIds) {
  ASSERT_THAT(Add(8080), IsOkAndHolds("m-1"));
  backend_.FailNext(absl::UnavailableError("netlink: busy"));
  EXPECT_THAT(Add(8081), StatusIs(absl::StatusCode::kUnavailable, "netlink: busy"));
  EXPECT_EQ(writer_->snapshot()->state.mappings.size(), 1u);
  EXPECT_EQ(writer_->snapshot()->ports_held, 1u);
  // The id and the port come back: the next one gets both.
  EXPECT_THAT(Add(8081), IsOkAndHolds("m-2"));
  // The store holds exactly what committed (rolled back, not compensated).
  writer_.reset();
  auto store = Store::Open(dir_);
  ASSERT_TRUE(store.ok());
  auto contents = (*store)->Load();
  ASSERT_TRUE(contents.ok());
  ASSERT_EQ(contents->mappings.size(), 2u);
  EXPECT_EQ(contents->mappings[0].id(), "m-1");
  EXPECT_EQ(contents->mappings[1].id(), "m-2");
  EXPECT_EQ(contents->next_mapping_id, 3);
}

TEST_F(WriterTest, AFailingTransactionChangesNothing) {
  ASSERT_THAT(Add(8080), IsOkAndHolds("m-1"));
  EXPECT_THAT(Add(8080), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(backend_.applies(), 1);  // the first Add only: the refusal never reached it
  EXPECT_THAT(Add(8082), IsOkAndHolds("m-2"));
}

TEST_F(WriterTest, APassedDeadlineIsRefusedBeforeAnyWork) {
  bool ran = false;
  absl::Status s = writer_->MutateStatus(now_ - absl::Seconds(1), [&](Txn&) {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("nothing was changed")));
  EXPECT_FALSE(ran);
}

TEST_F(WriterTest, ReadersDoNotWaitForAWriteInProgress) {
  std::atomic<bool> inside{false}, release{false};
  std::thread slow([&] {
    writer_
        ->MutateStatus(absl::InfiniteFuture(),
                       [&](Txn&) {
                         inside = true;
                         while (!release) std::this_thread::yield();
                         return absl::OkStatus();
                       })
        .IgnoreError();
  });
  while (!inside) std::this_thread::yield();
  // The writer's lock is held right now; a snapshot is still there.
  EXPECT_TRUE(writer_->snapshot()->ready);
  release = true;
  slow.join();
}

TEST_F(WriterTest, WatchesAreBoundedInNumberAndBacklog) {
  auto a = writer_->hub().Subscribe(v1::OWNER_KIND_UNSPECIFIED, "");
  auto b = writer_->hub().Subscribe(v1::OWNER_KIND_UNSPECIFIED, "");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_THAT(writer_->hub().Subscribe(v1::OWNER_KIND_UNSPECIFIED, "").status(),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // `a` never reads: past the backlog it is ended, and nothing else waits.
  for (size_t i = 0; i <= EventQueue::kMaxBacklog; ++i) {
    v1::MappingEvent e;
    e.set_type(v1::MappingEvent::TYPE_ADDED);
    writer_->hub().Publish(writer_->snapshot(), {e});
  }
  EXPECT_TRUE((*a)->closed());
  EXPECT_THAT((*a)->end_status(), StatusIs(absl::StatusCode::kResourceExhausted,
                                           HasSubstr("list the mappings and watch again")));
  writer_->hub().Unsubscribe(*a);
  writer_->hub().Unsubscribe(*b);
  EXPECT_EQ(writer_->hub().subscribers(), 0u);
}

}  // namespace
}  // namespace fabric::agent

namespace fabric::agent {
namespace {

TEST_F(WriterTest, ACompareWithoutWritesIsExact) {
  ASSERT_OK(Add(8080).status());
  auto c = writer_->CompareKernel();
  ASSERT_OK(c.status());
  EXPECT_TRUE(c->exact);
  EXPECT_TRUE(c->in_sync());
  EXPECT_EQ(c->desired.dnat.size(), 1u);
  EXPECT_EQ(reader_.reads, 1);
}

TEST_F(WriterTest, ACommitDuringTheReadIsNotAFinding) {
  ASSERT_OK(Add(8080).status());
  // The read misses one change that adds and one that removes.
  int next = 8081;
  reader_.during = [&] {
    reader_.during = nullptr;
    ASSERT_OK(Add(next++).status());
    ASSERT_OK(writer_->MutateStatus(absl::InfiniteFuture(), [](Txn& txn) {
      for (const auto& e : Dnat(8080).ToElements()) txn.batch().remove.dnat.insert(e);
      txn.state().mappings.Erase("m-1");
      return absl::OkStatus();
    }));
  };
  auto c = writer_->CompareKernel();
  ASSERT_OK(c.status());
  EXPECT_FALSE(c->exact);
  EXPECT_TRUE(c->in_sync()) << c->diff.DebugString();
  EXPECT_EQ(reader_.reads, 1);  // no second read was needed
  // Without leaving those out, the read would not have matched.
  EXPECT_FALSE(nat::Diff(c->kernel.rules, c->desired).empty());
}

TEST_F(WriterTest, RealDriftIsFoundEvenWhileEveryReadInterleaves) {
  ASSERT_OK(Add(8080).status());
  ASSERT_OK(Add(8081).status());
  // Someone deletes 8081's element by hand; commits never stop.
  backend_.mutable_rules().dnat.erase(*Dnat(8081).ToElements().begin());
  int next = 9000;
  reader_.during = [&] { ASSERT_OK(Add(next++).status()); };
  auto c = writer_->CompareKernel();
  ASSERT_OK(c.status());
  EXPECT_FALSE(c->in_sync());
  ASSERT_EQ(c->diff.add.dnat.size(), 1u) << c->diff.DebugString();
  EXPECT_EQ(c->diff.add.dnat.begin()->port_lo, 8081);
  EXPECT_TRUE(c->diff.remove.empty()) << c->diff.DebugString();
  // Only the last word, taken with no commit between read and snapshot,
  // reports it.
  EXPECT_TRUE(c->exact);
}

TEST_F(WriterTest, AFindingWhileWritesInterleavedIsReadAgain) {
  ASSERT_OK(Add(8080).status());
  ASSERT_OK(Add(8081).status());
  // A dump that interleaved with a commit and also missed an unrelated
  // element (a hash set's chunk skipped it): read again, nothing found.
  nat::DnatElement unrelated = *Dnat(8080).ToElements().begin();
  backend_.mutable_rules().dnat.erase(unrelated);
  reader_.during = [&] {
    reader_.during = nullptr;
    backend_.mutable_rules().dnat.insert(unrelated);
    ASSERT_OK(Add(8082).status());
  };
  auto c = writer_->CompareKernel();
  ASSERT_OK(c.status());
  EXPECT_TRUE(c->in_sync()) << c->diff.DebugString();
  EXPECT_EQ(reader_.reads, 2);
}

}  // namespace
}  // namespace fabric::agent
