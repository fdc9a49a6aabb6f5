// AddressWatcher against the kernel: a network namespace of its own (unique
// name, always deleted), a veth interface "wan0" in it, addresses added,
// changed and removed with `ip`, and the listener's calls checked in order.
// Root only.
#include "agent/wan/address_watcher.h"

#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent::wan {
namespace {

using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;

std::string Str(const std::optional<nat::IpAddress>& a) {
  return a.has_value() ? a->ToString() : "none";
}

// Records every call as "previous -> address" and the thread it came on.
class Recorder {
 public:
  AddressSource::Listener Listener() {
    return [this](const AddressChange& c) {
      std::lock_guard<std::mutex> l(mu_);
      EXPECT_EQ(c.interface, "wan0");
      calls_.push_back(Str(c.previous) + " -> " + Str(c.address));
      threads_.push_back(std::this_thread::get_id());
      cv_.notify_all();
    };
  }
  // Waits until `n` calls were made (or 5 s); returns all so far.
  std::vector<std::string> WaitFor(size_t n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_for(l, std::chrono::seconds(5), [&] { return calls_.size() >= n; });
    return calls_;
  }
  std::vector<std::thread::id> threads() {
    std::lock_guard<std::mutex> l(mu_);
    return threads_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> calls_;
  std::vector<std::thread::id> threads_;
};

class AddressWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel test: run as root";
    Netns::SweepStale();
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("wan"));
  }
  // The watcher works in the namespace of the thread that starts it.
  std::unique_ptr<AddressWatcher> StartWatcher() {
    absl::StatusOr<std::unique_ptr<ScopedNetns>> in = ScopedNetns::Enter(*ns_);
    EXPECT_OK(in.status());
    if (!in.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<AddressWatcher>> w = AddressWatcher::Start("wan0");
    EXPECT_OK(w.status());
    return w.ok() ? std::move(*w) : nullptr;
  }
  void Ip(const std::string& args) { ASSERT_OK(ns_->Exec("ip " + args).status()); }
  void AddWan0() { Ip("link add wan0 type veth peer name wan0p"); }

  std::unique_ptr<Netns> ns_;
};

TEST_F(AddressWatcherTest, AddedChangedRemovedInOrder) {
  AddWan0();
  std::unique_ptr<AddressWatcher> w = StartWatcher();
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->address(), std::nullopt);
  Recorder r;
  w->Subscribe(r.Listener());
  EXPECT_TRUE(r.WaitFor(0).empty());  // no address: no call on Subscribe

  Ip("addr add 203.0.113.1/24 dev wan0");
  EXPECT_THAT(r.WaitFor(1), ::testing::ElementsAre("none -> 203.0.113.1"));
  // A second address in another subnet is not the first one: no call.
  Ip("addr add 198.51.100.7/24 dev wan0");
  // The first one goes: the address is now the other.
  Ip("addr del 203.0.113.1/24 dev wan0");
  EXPECT_THAT(r.WaitFor(2), ::testing::ElementsAre("none -> 203.0.113.1",
                                                   "203.0.113.1 -> 198.51.100.7"));
  Ip("addr del 198.51.100.7/24 dev wan0");
  EXPECT_THAT(r.WaitFor(3),
              ::testing::ElementsAre("none -> 203.0.113.1", "203.0.113.1 -> 198.51.100.7",
                                     "198.51.100.7 -> none"));
  EXPECT_EQ(w->address(), std::nullopt);
  // Every change came from the watcher's thread.
  for (std::thread::id t : r.threads()) EXPECT_NE(t, std::this_thread::get_id());
  // Bringing the link up or down is no address change.
  Ip("link set wan0 up");
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(r.WaitFor(3).size(), 3u);
}

TEST_F(AddressWatcherTest, AddressAtStartIsReadAndGivenToEachNewListener) {
  AddWan0();
  Ip("addr add 203.0.113.1/24 dev wan0");
  std::unique_ptr<AddressWatcher> w = StartWatcher();
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->address().has_value());
  EXPECT_EQ(w->address()->ToString(), "203.0.113.1");
  Recorder first;
  w->Subscribe(first.Listener());
  // Called at once, on the subscribing thread.
  EXPECT_THAT(first.WaitFor(1), ::testing::ElementsAre("none -> 203.0.113.1"));
  EXPECT_EQ(first.threads()[0], std::this_thread::get_id());
  // What e2e tests and operators do: replace it in one command. Whatever
  // the watcher saw in between, the calls chain and end at the new one.
  Ip("addr del 203.0.113.1/24 dev wan0 && ip addr add 203.0.113.50/24 dev wan0");
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  std::vector<std::string> calls;
  while (absl::Now() < deadline) {
    calls = first.WaitFor(2);
    if (calls.back() == "none -> 203.0.113.50" || calls.back() == "203.0.113.1 -> 203.0.113.50") {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(calls.size(), 2u);
  EXPECT_THAT(calls.back(), ::testing::EndsWith("-> 203.0.113.50"));
  if (calls.size() == 3) {
    EXPECT_EQ(calls[1], "203.0.113.1 -> none");
  }
  EXPECT_LE(calls.size(), 3u);
}

TEST_F(AddressWatcherTest, InterfaceCreatedLaterAndUnsubscribe) {
  std::unique_ptr<AddressWatcher> w = StartWatcher();  // no wan0 yet
  ASSERT_NE(w, nullptr);
  Recorder a, b;
  int id_a = w->Subscribe(a.Listener());
  w->Subscribe(b.Listener());
  AddWan0();
  Ip("addr add 192.0.2.9/24 dev wan0");
  EXPECT_THAT(a.WaitFor(1), ::testing::ElementsAre("none -> 192.0.2.9"));
  EXPECT_THAT(b.WaitFor(1), ::testing::ElementsAre("none -> 192.0.2.9"));
  w->Unsubscribe(id_a);
  // The interface goes away with its address.
  Ip("link del wan0");
  EXPECT_THAT(b.WaitFor(2), ::testing::ElementsAre("none -> 192.0.2.9", "192.0.2.9 -> none"));
  EXPECT_EQ(a.WaitFor(1).size(), 1u);
}

// Without a named interface: the default route's, followed when it moves
// (a router failing over from one uplink to another).
TEST_F(AddressWatcherTest, FollowsTheDefaultRouteToAnotherInterface) {
  AddWan0();
  Ip("link add wan1 type veth peer name wan1p");
  Ip("addr add 203.0.113.1/24 dev wan0");
  Ip("addr add 198.51.100.1/24 dev wan1");
  Ip("link set wan0 up");
  Ip("link set wan0p up");
  Ip("link set wan1 up");
  Ip("link set wan1p up");
  Ip("route add default via 203.0.113.254 dev wan0 onlink");
  std::mutex mu;
  std::vector<std::string> logs, calls;
  std::unique_ptr<AddressWatcher> w;
  {
    ASSERT_OK_AND_ASSIGN(auto in, ScopedNetns::Enter(*ns_));
    ASSERT_OK_AND_ASSIGN(w, AddressWatcher::FollowDefaultRoute([&](const std::string& line) {
                           std::lock_guard<std::mutex> l(mu);
                           logs.push_back(line);
                         }));
  }
  EXPECT_EQ(w->interface(), "wan0");
  EXPECT_EQ(Str(w->address()), "203.0.113.1");
  w->Subscribe([&](const AddressChange& c) {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back(absl::StrCat(c.interface, " ", Str(c.previous), " -> ", Str(c.address)));
  });
  Ip("route replace default via 198.51.100.254 dev wan1 onlink");
  for (int i = 0; i < 250 && w->interface() != "wan1"; ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(w->interface(), "wan1");
  EXPECT_EQ(Str(w->address()), "198.51.100.1");
  std::lock_guard<std::mutex> l(mu);
  EXPECT_THAT(calls, ::testing::ElementsAre("wan0 none -> 203.0.113.1",
                                            "wan1 203.0.113.1 -> 198.51.100.1"));
  EXPECT_THAT(logs, ::testing::ElementsAre("WAN interface wan1: the default route moved from wan0"));
}

TEST_F(AddressWatcherTest, FollowingNeedsOneDefaultRoute) {
  ASSERT_OK_AND_ASSIGN(auto in, ScopedNetns::Enter(*ns_));
  EXPECT_THAT(AddressWatcher::FollowDefaultRoute(nullptr),
              testing::StatusIs(absl::StatusCode::kFailedPrecondition,
                                ::testing::HasSubstr("no WAN interface to follow: no IPv4 "
                                                     "default route (name one with "
                                                     "--wan_interface)")));
}

TEST(AddressWatcherStartTest, RejectsBadNames) {
  EXPECT_FALSE(AddressWatcher::Start("").ok());
  EXPECT_FALSE(AddressWatcher::Start("a-name-longer-than-ifnamsiz").ok());
}

}  // namespace
}  // namespace fabric::agent::wan
