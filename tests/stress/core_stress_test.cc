// Concurrency stress: 32 client threads doing Attach/Detach/Check against
// one AgentCore (with the real nftables backend, in a namespace of its own),
// plus threads that list, watch and resync, for 2,000+ operations. Built and
// run under ThreadSanitizer by the test command (bazel --config=tsan):
// no races, no deadlocks, and at the end kernel == store == core.
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/core.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/nftables/nftables_backend.h"
#include "nat/conntrack/conntrack.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

constexpr int kClients = 32;
constexpr int kOpsPerClient = 70;  // 2,240 in all
constexpr int kContainersPerClient = 6;

v1::Attachment Container(int client, int index, std::mt19937& rng) {
  v1::Attachment a;
  a.mutable_key()->set_container_id(absl::StrCat("stress-", client, "-", index));
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name(client % 2 ? "net-a" : "net-b");
  a.add_container_addresses(
      absl::StrCat("10.", 60 + client % 2, ".", client, ".", 2 + index, "/16"));
  a.set_host_interface("br0");
  a.mutable_options()->set_hairpin(true);
  a.mutable_options()->set_masquerade(client % 3 == 0);
  v1::PortMappingRequest* m = a.add_port_mappings();
  m->set_protocol(rng() % 2 ? v1::PROTOCOL_TCP : v1::PROTOCOL_UDP);
  // A small shared port space, so that clients collide on purpose.
  m->set_host_port(20000 + rng() % 150);
  m->set_container_port(80);
  return a;
}

TEST(CoreStressTest, ConcurrentClientsLeaveKernelEqualToStore) {
  ASSERT_EQ(geteuid(), 0u);
  ASSERT_OK_AND_ASSIGN(auto ns, testing::Netns::Create("stress"));
  std::unique_ptr<nat::NftablesBackend> backend;
  {
    ASSERT_OK_AND_ASSIGN(auto enter, testing::ScopedNetns::Enter(*ns));
    ASSERT_OK_AND_ASSIGN(backend, nat::NftablesBackend::Create());
  }
  std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/stress");
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir));
  // Called only under the core's lock.
  nat::RecordingConntrackCleaner conntrack;
  AgentCore core(std::move(store), backend.get(), &conntrack, CoreOptions{});
  ASSERT_OK(core.Start());

  std::atomic<int> ops{0}, attached{0}, conflicts{0}, detached{0}, checked{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(1000 + c);
      for (int i = 0; i < kOpsPerClient; ++i) {
        int index = rng() % kContainersPerClient;
        v1::Attachment a = Container(c, index, rng);
        switch (rng() % 3) {
          case 0: {
            absl::StatusOr<v1::AttachResponse> r = core.Attach(a);
            if (r.ok()) {
              ++attached;
            } else {
              // Conflicts (port held, key attached differently) are expected.
              EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists)
                  << r.status();
              ++conflicts;
            }
            break;
          }
          case 1: {
            absl::StatusOr<bool> r = core.Detach(a.key());
            EXPECT_OK(r.status());
            ++detached;
            break;
          }
          default: {
            absl::Status s = core.Check(a.key());
            EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kNotFound) << s;
            ++checked;
          }
        }
        ++ops;
      }
    });
  }
  // Readers and the reconciler's work, concurrently.
  threads.emplace_back([&] {
    while (!done) {
      core.ListMappings(v1::OWNER_KIND_UNSPECIFIED, "");
      core.Status();
      core.Desired();
    }
  });
  threads.emplace_back([&] {
    while (!done) {
      auto q = core.Subscribe(v1::OWNER_KIND_CNI, "");
      for (int i = 0; i < 20 && q->Pop(absl::Milliseconds(5)).has_value(); ++i) {
      }
      core.Unsubscribe(q);
    }
  });
  threads.emplace_back([&] {
    while (!done) {
      EXPECT_OK(core.Resync().status());
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  for (int c = 0; c < kClients; ++c) threads[c].join();
  done = true;
  for (size_t t = kClients; t < threads.size(); ++t) threads[t].join();

  EXPECT_EQ(ops.load(), kClients * kOpsPerClient);
  std::printf("ops=%d attached=%d refused=%d detached=%d checked=%d\n", ops.load(),
              attached.load(), conflicts.load(), detached.load(), checked.load());
  EXPECT_GT(attached.load(), 100);
  EXPECT_GT(conflicts.load(), 10);

  // kernel == core
  ASSERT_OK_AND_ASSIGN(nat::KernelState kernel, backend->Read());
  EXPECT_TRUE(kernel.layout_intact) << kernel.problem;
  EXPECT_TRUE(kernel.rules == core.Desired())
      << "kernel:\n" << kernel.rules.DebugString() << "core:\n" << core.Desired().DebugString();
  // store == core: a fresh store read gives the same mappings.
  ASSERT_OK_AND_ASSIGN(auto reopened, Store::Open(dir));
  ASSERT_OK_AND_ASSIGN(StoreContents contents, reopened->Load());
  EXPECT_EQ(contents.mappings.size(),
            core.ListMappings(v1::OWNER_KIND_UNSPECIFIED, "").size());
  EXPECT_EQ(contents.attachments.size(), core.Status().attachments());
}

}  // namespace
}  // namespace fabric::agent
