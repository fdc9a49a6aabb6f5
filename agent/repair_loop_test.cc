// The repair loop's duties, driven by a fake clock and fake change events
// against a core on the fake backend.
#include "agent/repair_loop.h"

#include <cstdlib>
#include <deque>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "nat/backend/nftables/monitor.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

class FakeClock : public Clock {
 public:
  absl::Time Now() override { return now; }
  void SleepFor(absl::Duration d) override { now += d; }
  absl::Time now = absl::FromUnixSeconds(1800000000);
};

class FakeChanges : public ChangeSource {
 public:
  absl::StatusOr<bool> Wait(absl::Duration timeout, std::string* what) override {
    if (pending.empty()) {
      clock->SleepFor(timeout);
      return false;
    }
    *what = pending.front();
    pending.pop_front();
    return true;
  }
  absl::StatusOr<bool> Drain(std::string*) override { return false; }
  std::deque<std::string> pending;
  FakeClock* clock = nullptr;
};

class RepairLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    auto store = Store::Open(absl::StrCat(std::getenv("TEST_TMPDIR"), "/loop-", n++));
    ASSERT_TRUE(store.ok());
    CoreOptions o;
    o.now = [this] { return clock_.now; };
    core_ = std::make_unique<AgentCore>(std::move(*store), &backend_, nullptr, o);
    ASSERT_OK(core_->Start());
    changes_.clock = &clock_;
    v1::PortMapping m;
    m.mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m.mutable_owner()->set_id("t");
    m.set_protocol(v1::PROTOCOL_TCP);
    m.set_host_port(8080);
    m.set_target_ip("10.0.0.2");
    m.set_target_port(80);
    ASSERT_OK(core_->CreateMapping(m).status());
  }
  FakeClock clock_;
  FakeChanges changes_;
  nat::FakeBackend backend_;
  Metrics metrics_;
  std::unique_ptr<AgentCore> core_;
};

TEST_F(RepairLoopTest, AForeignChangeIsRepairedAtOnce) {
  RepairLoopOptions o;
  o.reconcile_interval = absl::ZeroDuration();  // events only
  RepairLoop loop(core_.get(), &metrics_, &changes_, &clock_, o);
  backend_.mutable_rules().dnat.clear();
  changes_.pending.push_back("delete element by nft");
  loop.RunOnce();
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(core_->Status().repairs(), 1u);
}

TEST_F(RepairLoopTest, LostEventsAreComparedAndRepairedOnlyIfNeeded) {
  RepairLoopOptions o;
  o.reconcile_interval = absl::ZeroDuration();  // events only
  RepairLoop loop(core_.get(), &metrics_, &changes_, &clock_, o);
  int applies = backend_.applies() + backend_.replaces();
  // Our own batch overflowed the socket: nothing to repair.
  changes_.pending.push_back(nat::ChangeMonitor::kEventsLost);
  loop.RunOnce();
  EXPECT_EQ(backend_.applies() + backend_.replaces(), applies);
  EXPECT_EQ(core_->Status().repairs(), 0u);
  // Lost events hid a foreign change: the comparison finds and repairs it.
  backend_.mutable_rules().dnat.clear();
  changes_.pending.push_back(nat::ChangeMonitor::kEventsLost);
  loop.RunOnce();
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(core_->Status().repairs(), 1u);
}

TEST_F(RepairLoopTest, ThePeriodicCheckRepairsOnlyWhatDiffers) {
  RepairLoopOptions o;
  o.reconcile_interval = absl::Seconds(30);
  o.sweep_dead_netns = false;
  RepairLoop loop(core_.get(), &metrics_, nullptr, &clock_, o);
  int applies = backend_.applies() + backend_.replaces();
  // 30 s of rounds with the kernel in sync: no kernel change at all.
  for (absl::Time end = clock_.now + absl::Seconds(31); clock_.now < end;) loop.RunOnce();
  EXPECT_EQ(backend_.applies() + backend_.replaces(), applies);
  EXPECT_EQ(core_->Status().repairs(), 0u);
  // Someone removes the element; no event comes (iptables): the next check
  // finds and restores it.
  backend_.mutable_rules().dnat.clear();
  for (absl::Time end = clock_.now + absl::Seconds(31); clock_.now < end;) loop.RunOnce();
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_EQ(core_->Status().repairs(), 1u);
}

TEST_F(RepairLoopTest, LeasesExpireOnTheTick) {
  RepairLoopOptions o;
  o.reconcile_interval = absl::ZeroDuration();
  RepairLoop loop(core_.get(), &metrics_, &changes_, &clock_, o);
  core_->SetExternalAddress(*nat::IpAddress::Parse("203.0.113.7"));
  LeaseRequest r;
  r.client = *nat::IpAddress::Parse("192.168.77.10");
  r.internal_port = 80;
  r.lifetime = 5;
  ASSERT_EQ(core_->Lease(r, LeasePolicy{}).outcome, LeaseOutcome::kOk);
  EXPECT_EQ(core_->ListMappings(v1::OWNER_KIND_NATPMP, "").size(), 1u);
  for (absl::Time end = clock_.now + absl::Seconds(4); clock_.now < end;) loop.RunOnce();
  EXPECT_EQ(core_->ListMappings(v1::OWNER_KIND_NATPMP, "").size(), 1u);
  for (absl::Time end = clock_.now + absl::Seconds(2); clock_.now < end;) loop.RunOnce();
  EXPECT_EQ(core_->ListMappings(v1::OWNER_KIND_NATPMP, "").size(), 0u);
}

TEST_F(RepairLoopTest, TheSweepRunsWithThePeriodicCheck) {
  v1::Attachment a;
  a.mutable_key()->set_container_id("gone");
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name("n");
  a.set_netns_path(absl::StrCat(std::getenv("TEST_TMPDIR"), "/no-such-netns"));
  a.add_container_addresses("10.22.0.5/16");
  ASSERT_OK(core_->Attach(a).status());
  RepairLoopOptions o;
  o.reconcile_interval = absl::Seconds(10);
  o.sweep_dead_netns = true;
  RepairLoop loop(core_.get(), &metrics_, nullptr, &clock_, o);
  EXPECT_EQ(core_->Status().attachments(), 1u);
  for (absl::Time end = clock_.now + absl::Seconds(11); clock_.now < end;) loop.RunOnce();
  EXPECT_EQ(core_->Status().attachments(), 0u);
}

}  // namespace
}  // namespace fabric::agent
