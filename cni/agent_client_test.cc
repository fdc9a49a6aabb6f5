// GrpcAgentClient against an in-process gRPC server on a unix socket in a
// short directory under /tmp (sun_path holds 108 bytes; TEST_TMPDIR is
// longer), and against sockets that accept and never answer (a stopped
// agent): every call fails at its deadline, and the deadline reaches the
// agent. The client is cni/grpc_unary.h (nghttp2, no gRPC runtime); the
// server here is gRPC's own, as in the agent, so every method path, status
// and header it sends is checked against the real thing.
#include "cni/agent_client.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::cni {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Records what it was asked, with the caller's deadline and trace; answers
// with `status`. With `hang`, Attach blocks until Release.
class FakeAttachments : public v1::AttachmentService::Service {
 public:
  grpc::Status Attach(grpc::ServerContext* context, const v1::AttachRequest* req,
                      v1::AttachResponse* resp) override {
    std::unique_lock<std::mutex> l(mu);
    Record(context, "attach:" + req->attachment().key().container_id());
    released.wait(l, [this] { return !hang; });
    if (!status.ok()) return status;
    v1::PortMapping* m = resp->add_mappings();
    m->set_id("m-1");
    m->set_host_ip("192.0.2.1");
    m->set_host_port(8080);
    m->set_target_port(80);
    return grpc::Status::OK;
  }
  grpc::Status Detach(grpc::ServerContext* context, const v1::DetachRequest* req,
                      v1::DetachResponse* resp) override {
    std::lock_guard<std::mutex> l(mu);
    Record(context, "detach:" + req->key().container_id());
    return status;
  }
  grpc::Status Check(grpc::ServerContext* context, const v1::CheckRequest* req,
                     v1::CheckResponse*) override {
    std::lock_guard<std::mutex> l(mu);
    Record(context, "check:" + req->key().container_id());
    return status;
  }
  grpc::Status GarbageCollect(grpc::ServerContext* context, const v1::GarbageCollectRequest* req,
                              v1::GarbageCollectResponse* resp) override {
    std::lock_guard<std::mutex> l(mu);
    Record(context, "gc:" + req->network_name());
    resp->add_removed()->set_container_id("gone");
    // With `echo`, every valid attachment comes back too (a large answer).
    if (echo) {
      for (const v1::AttachmentKey& k : req->valid_attachments()) *resp->add_removed() = k;
    }
    return status;
  }

  void Release() {
    std::lock_guard<std::mutex> l(mu);
    hang = false;
    released.notify_all();
  }

  std::mutex mu;
  std::condition_variable released;
  bool hang = false;
  bool echo = false;
  grpc::Status status;
  std::vector<std::string> calls;
  std::chrono::system_clock::time_point deadline;
  std::string traceparent;

 private:
  void Record(grpc::ServerContext* context, const std::string& call) {
    calls.push_back(call);
    deadline = context->deadline();
    auto tp = context->client_metadata().find("traceparent");
    if (tp != context->client_metadata().end()) {
      traceparent = std::string(tp->second.data(), tp->second.size());
    }
  }
};

class FakeAgent : public v1::AgentService::Service {
 public:
  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* resp) override {
    resp->set_ready(true);
    resp->set_backend("nftables");
    resp->set_attachments(3);
    return grpc::Status::OK;
  }
};

v1::Attachment AttachmentOf(const std::string& container) {
  v1::Attachment a;
  a.mutable_key()->set_container_id(container);
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name("fabric");
  return a;
}

class AgentClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/fnac-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr) << std::strerror(errno);
    dir_ = dir;
    socket_ = dir_ + "/agent.sock";
  }
  void TearDown() override {
    attachments_.Release();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    if (listener_ >= 0) close(listener_);
    for (int fd : fillers_) close(fd);
    unlink(socket_.c_str());
    rmdir(dir_.c_str());
  }

  // The address of socket_.
  sockaddr_un Address() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof(addr.sun_path) - 1);
    return addr;
  }

  // An Attach of container c1, and how long it took.
  static absl::StatusOr<v1::AttachResponse> TimedAttach(AgentClient& client,
                                                        absl::Duration* took) {
    absl::Time start = absl::Now();
    absl::StatusOr<v1::AttachResponse> r = client.Attach(AttachmentOf("c1"));
    *took = absl::Now() - start;
    return r;
  }

  void StartServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_, grpc::InsecureServerCredentials());
    builder.RegisterService(&attachments_);
    builder.RegisterService(&agent_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }

  // A socket that accepts connections (the kernel's backlog) and never
  // reads them: an agent stopped with SIGSTOP.
  void StartSilentListener(int backlog = 8) {
    listener_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener_, 0) << std::strerror(errno);
    sockaddr_un addr = Address();
    ASSERT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << std::strerror(errno);
    ASSERT_EQ(listen(listener_, backlog), 0) << std::strerror(errno);
  }

  // Fills the silent listener's backlog: the next connect waits.
  void FillBacklog() {
    sockaddr_un addr = Address();
    for (int i = 0; i < 64; ++i) {
      int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      ASSERT_GE(fd, 0) << std::strerror(errno);
      fillers_.push_back(fd);
      if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
        return;
      }
    }
    FAIL() << "the backlog never filled";
  }

  std::string dir_;
  std::string socket_;
  int listener_ = -1;
  std::vector<int> fillers_;
  FakeAttachments attachments_;
  FakeAgent agent_;
  std::unique_ptr<grpc::Server> server_;
};

// Generous for a loaded 2-core machine; a channel without the deadline
// filter (gRPC's minimal stack) waits for its 20 s connect timeout instead.
constexpr absl::Duration kLate = absl::Seconds(3);

TEST_F(AgentClientTest, NoSocketIsUnavailable) {
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  EXPECT_THAT(client->Attach(AttachmentOf("c1")),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("no socket at " + socket_), HasSubstr("agentSocket"))));
}

TEST_F(AgentClientTest, SocketNobodyListensOnIsUnavailable) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr = Address();
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  absl::Time start = absl::Now();
  EXPECT_THAT(client->Attach(AttachmentOf("c1")),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr("cannot reach fabric-agent at " + socket_ + ": "),
                             HasSubstr("no agent listens on it"))));
  EXPECT_LT(absl::Now() - start, kLate);
}

TEST_F(AgentClientTest, AgentThatAcceptsButNeverAnswersFailsAtTheDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartSilentListener());
  auto client = NewGrpcAgentClient(socket_, absl::Milliseconds(300));
  absl::Duration took;
  absl::StatusOr<v1::AttachResponse> r = TimedAttach(*client, &took);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable,
                          AllOf(HasSubstr("cannot reach fabric-agent at " + socket_ + ": "),
                                HasSubstr("Deadline Exceeded"))));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, kLate);
}

// An agent that accepts no connections at all (its backlog full): the
// client's own connect is bounded by the call's deadline.
TEST_F(AgentClientTest, ConnectToAFullBacklogFailsAtTheDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartSilentListener(/*backlog=*/0));
  ASSERT_NO_FATAL_FAILURE(FillBacklog());
  auto client = NewGrpcAgentClient(socket_, absl::Milliseconds(300));
  absl::Duration took;
  absl::StatusOr<v1::AttachResponse> r = TimedAttach(*client, &took);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("cannot reach fabric-agent at " + socket_ +
                                    ": connect timed out")));
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, kLate);
}

TEST_F(AgentClientTest, EveryCallHasItsOwnDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartSilentListener());
  auto client = NewGrpcAgentClient(socket_, absl::Milliseconds(300));
  absl::Time start = absl::Now();
  v1::AttachmentKey key = AttachmentOf("c1").key();
  EXPECT_THAT(client->Detach(key), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->Check(key), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->GarbageCollect(v1::GarbageCollectRequest()),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->GetStatus(), StatusIs(absl::StatusCode::kUnavailable));
  absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(4 * 300));
  EXPECT_LT(took, 4 * kLate);
}

TEST_F(AgentClientTest, HandlerThatNeverReturnsFailsAtTheDeadline) {
  attachments_.hang = true;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Milliseconds(300));
  absl::Duration took;
  absl::StatusOr<v1::AttachResponse> r = TimedAttach(*client, &took);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("cannot reach fabric-agent at " + socket_ + ": ")));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, kLate);
}

// The agent refuses work still waiting for its writer when the caller's
// deadline has passed: the deadline must reach it.
TEST_F(AgentClientTest, AgentSeesTheCallersDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  absl::Time before = absl::Now();
  ASSERT_OK(client->Attach(AttachmentOf("c1")).status());
  absl::Time after = absl::Now();
  std::lock_guard<std::mutex> l(attachments_.mu);
  absl::Time deadline = absl::FromChrono(attachments_.deadline);
  EXPECT_GE(deadline, before + absl::Seconds(3));
  EXPECT_LE(deadline, after + absl::Seconds(5));
}

TEST_F(AgentClientTest, AttachReturnsTheAgentsAnswer) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  absl::StatusOr<v1::AttachResponse> r = client->Attach(AttachmentOf("c1"));
  ASSERT_OK(r.status());
  ASSERT_EQ(r->mappings_size(), 1);
  EXPECT_EQ(r->mappings(0).id(), "m-1");
  EXPECT_EQ(r->mappings(0).host_ip(), "192.0.2.1");
  EXPECT_EQ(r->mappings(0).host_port(), 8080u);
  EXPECT_EQ(r->mappings(0).target_port(), 80u);
  std::lock_guard<std::mutex> l(attachments_.mu);
  EXPECT_THAT(attachments_.calls, ElementsAre("attach:c1"));
}

TEST_F(AgentClientTest, AgentErrorKeepsItsCodeAndMessage) {
  attachments_.status = grpc::Status(grpc::StatusCode::NOT_FOUND, "no attachment c1/eth0");
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  absl::Status s = client->Check(AttachmentOf("c1").key());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no attachment c1/eth0");
}

TEST_F(AgentClientTest, AgentsUnavailableNamesTheSocket) {
  attachments_.status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "store closed");
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  EXPECT_THAT(client->Attach(AttachmentOf("c1")),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("cannot reach fabric-agent at " + socket_ + ": store closed")));
}

TEST_F(AgentClientTest, EveryCallReachesItsMethod) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  EXPECT_OK(client->Detach(AttachmentOf("c2").key()));
  EXPECT_OK(client->Check(AttachmentOf("c3").key()));
  v1::GarbageCollectRequest gc;
  gc.set_network_name("fabric");
  absl::StatusOr<v1::GarbageCollectResponse> collected = client->GarbageCollect(gc);
  ASSERT_OK(collected.status());
  ASSERT_EQ(collected->removed_size(), 1);
  EXPECT_EQ(collected->removed(0).container_id(), "gone");
  absl::StatusOr<v1::GetStatusResponse> status = client->GetStatus();
  ASSERT_OK(status.status());
  EXPECT_TRUE(status->ready());
  EXPECT_EQ(status->backend(), "nftables");
  EXPECT_EQ(status->attachments(), 3u);
  std::lock_guard<std::mutex> l(attachments_.mu);
  EXPECT_THAT(attachments_.calls, ElementsAre("detach:c2", "check:c3", "gc:fabric"));
}

// A GC with 20,000 valid attachments (~1 MB) is far larger than the
// agent's HTTP/2 windows (64 KiB to start): the request goes out as the
// agent's WINDOW_UPDATEs allow, and the answer as large comes back whole.
TEST_F(AgentClientTest, LargeCallsCrossTheFlowControlWindows) {
  attachments_.echo = true;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(10));
  v1::GarbageCollectRequest gc;
  gc.set_network_name("fabric");
  for (int i = 0; i < 20000; ++i) {
    v1::AttachmentKey* k = gc.add_valid_attachments();
    k->set_container_id(absl::StrCat("container-", i, "-", std::string(20, 'x')));
    k->set_ifname("eth0");
    k->set_network_name("fabric");
  }
  ASSERT_GT(gc.ByteSizeLong(), 1000000u);
  absl::StatusOr<v1::GarbageCollectResponse> r = client->GarbageCollect(gc);
  ASSERT_OK(r.status());
  ASSERT_EQ(r->removed_size(), 20001);
  EXPECT_EQ(r->removed(0).container_id(), "gone");
  EXPECT_EQ(r->removed(20000).container_id(), gc.valid_attachments(19999).container_id());
}

TEST_F(AgentClientTest, ForwardsTheRuntimesTrace) {
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  setenv("TRACEPARENT", tp.c_str(), 1);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = NewGrpcAgentClient(socket_, absl::Seconds(4));
  unsetenv("TRACEPARENT");
  ASSERT_OK(client->Attach(AttachmentOf("c1")).status());
  std::lock_guard<std::mutex> l(attachments_.mu);
  EXPECT_EQ(attachments_.traceparent, tp);
}

}  // namespace
}  // namespace fabric::cni
