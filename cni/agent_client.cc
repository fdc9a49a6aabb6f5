#include "cni/agent_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cni/trace_context.h"
#include "grpc/event_engine/event_engine.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "grpcpp/create_channel_posix.h"
#include "grpcpp/grpcpp.h"

// gRPC's own engine (src/core/lib/event_engine/default_event_engine_factory.h
// in the grpc 1.51 sources; not in the installed headers). The plugin links
// Debian's libgrpc.a statically, so a change of signature fails the link.
namespace grpc_event_engine::experimental {
std::unique_ptr<EventEngine> DefaultEventEngineFactory();
}  // namespace grpc_event_engine::experimental

namespace fabric::cni {

namespace {

namespace ee = ::grpc_event_engine::experimental;

// Forwards to gRPC's default engine, created on the first call that needs
// it. Until then no threads: IsWorkerThread is trivially false.
class LazyEventEngine final : public ee::EventEngine {
 public:
  bool IsWorkerThread() override {
    std::lock_guard<std::mutex> l(mu_);
    return real_ != nullptr && real_->IsWorkerThread();
  }
  absl::StatusOr<std::unique_ptr<Listener>> CreateListener(
      Listener::AcceptCallback on_accept,
      absl::AnyInvocable<void(absl::Status)> on_shutdown, const ee::EndpointConfig& config,
      std::unique_ptr<ee::MemoryAllocatorFactory> factory) override {
    return Real()->CreateListener(std::move(on_accept), std::move(on_shutdown), config,
                                  std::move(factory));
  }
  ConnectionHandle Connect(OnConnectCallback on_connect, const ResolvedAddress& addr,
                           const ee::EndpointConfig& args, ee::MemoryAllocator allocator,
                           Duration timeout) override {
    return Real()->Connect(std::move(on_connect), addr, args, std::move(allocator), timeout);
  }
  bool CancelConnect(ConnectionHandle handle) override {
    return Real()->CancelConnect(handle);
  }
  std::unique_ptr<DNSResolver> GetDNSResolver(
      const DNSResolver::ResolverOptions& options) override {
    return Real()->GetDNSResolver(options);
  }
  void Run(Closure* closure) override { Real()->Run(closure); }
  void Run(absl::AnyInvocable<void()> closure) override { Real()->Run(std::move(closure)); }
  TaskHandle RunAfter(Duration when, Closure* closure) override {
    return Real()->RunAfter(when, closure);
  }
  TaskHandle RunAfter(Duration when, absl::AnyInvocable<void()> closure) override {
    return Real()->RunAfter(when, std::move(closure));
  }
  bool Cancel(TaskHandle handle) override { return Real()->Cancel(handle); }

 private:
  ee::EventEngine* Real() {
    std::lock_guard<std::mutex> l(mu_);
    if (real_ == nullptr) real_ = ee::DefaultEventEngineFactory();
    return real_.get();
  }
  std::mutex mu_;
  std::unique_ptr<ee::EventEngine> real_;
};

class GrpcAgentClient : public AgentClient {
 public:
  GrpcAgentClient(std::string socket, absl::Duration timeout)
      : socket_(std::move(socket)), timeout_(timeout) {
    // The runtime's trace (CNI 1.1: TRACEPARENT, TRACESTATE), when valid.
    const char* tp = getenv("TRACEPARENT");
    const char* ts = getenv("TRACESTATE");
    if (tp != nullptr) trace_ = ParseTraceparent(tp, ts != nullptr ? ts : "");
  }

  absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& a) override {
    v1::AttachRequest req;
    *req.mutable_attachment() = a;
    v1::AttachResponse resp;
    return Call([&](grpc::ClientContext* c) { return attachments_->Attach(c, req, &resp); },
                resp);
  }
  absl::Status Detach(const v1::AttachmentKey& key) override {
    v1::DetachRequest req;
    *req.mutable_key() = key;
    v1::DetachResponse resp;
    return Call([&](grpc::ClientContext* c) { return attachments_->Detach(c, req, &resp); },
                resp)
        .status();
  }
  absl::Status Check(const v1::AttachmentKey& key) override {
    v1::CheckRequest req;
    *req.mutable_key() = key;
    v1::CheckResponse resp;
    return Call([&](grpc::ClientContext* c) { return attachments_->Check(c, req, &resp); },
                resp)
        .status();
  }
  absl::StatusOr<v1::GarbageCollectResponse> GarbageCollect(
      const v1::GarbageCollectRequest& req) override {
    v1::GarbageCollectResponse resp;
    return Call(
        [&](grpc::ClientContext* c) { return attachments_->GarbageCollect(c, req, &resp); },
        resp);
  }
  absl::StatusOr<v1::GetStatusResponse> GetStatus() override {
    v1::GetStatusRequest req;
    v1::GetStatusResponse resp;
    return Call([&](grpc::ClientContext* c) { return agent_->GetStatus(c, req, &resp); },
                resp);
  }

 private:
  template <typename Resp, typename F>
  absl::StatusOr<Resp> Call(F f, const Resp& resp) {
    if (absl::Status s = Connect(); !s.ok()) return s;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
    if (trace_) {
      ctx.AddMetadata("traceparent", trace_->traceparent);
      if (!trace_->tracestate.empty()) ctx.AddMetadata("tracestate", trace_->tracestate);
    }
    grpc::Status s = f(&ctx);
    if (s.ok()) return resp;
    absl::StatusCode code = static_cast<absl::StatusCode>(s.error_code());
    if (code == absl::StatusCode::kDeadlineExceeded ||
        code == absl::StatusCode::kUnavailable) {
      return absl::UnavailableError(absl::StrCat(
          "cannot reach fabric-agent at ", socket_, ": ", s.error_message()));
    }
    return absl::Status(code, s.error_message());
  }

  // Connects the unix socket itself and hands gRPC the connected socket
  // (a direct channel): no resolver, load-balancing policy, subchannel or
  // connector, and the request goes out with the connection preface instead
  // of after the agent's SETTINGS frame. The connect is bounded by the
  // call's timeout (SO_SNDTIMEO: a listener whose backlog is full makes a
  // unix connect wait). See docs/ARCHITECTURE.md, "Where an ADD's time goes".
  absl::Status Connect() {
    if (channel_ != nullptr) return absl::OkStatus();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_.empty() || socket_.size() >= sizeof(addr.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "agentSocket \"", socket_, "\" is empty or longer than ", sizeof(addr.sun_path) - 1,
          " bytes"));
    }
    std::memcpy(addr.sun_path, socket_.data(), socket_.size());
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot reach fabric-agent at ", socket_, ": socket: ", strerror(errno)));
    }
    timeval tv = absl::ToTimeval(timeout_);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      int e = errno;
      close(fd);
      if (e == ENOENT) {
        return absl::UnavailableError(absl::StrCat(
            "cannot reach fabric-agent: no socket at ", socket_,
            " (is the agent running? see agentSocket in the network config)"));
      }
      return absl::UnavailableError(absl::StrCat(
          "cannot reach fabric-agent at ", socket_, ": ",
          e == EAGAIN ? "connect timed out (the agent accepts no connections)" : strerror(e),
          e == ECONNREFUSED ? " (no agent listens on it: is the agent running?)" : ""));
    }
    grpc::ChannelArguments args;
    // One short-lived process, one call: no retries or backoff games.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    // gRPC owns the socket from here (and makes it non-blocking).
    channel_ = grpc::CreateCustomInsecureChannelFromFd("fabric-agent", fd, args);
    attachments_ = v1::AttachmentService::NewStub(channel_);
    agent_ = v1::AgentService::NewStub(channel_);
    return absl::OkStatus();
  }

  std::string socket_;
  absl::Duration timeout_;
  std::optional<TraceContext> trace_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttachmentService::Stub> attachments_;
  std::unique_ptr<v1::AgentService::Stub> agent_;
};

}  // namespace

void PrepareGrpcForOneShotProcess() {
  ee::SetEventEngineFactory([] { return std::make_unique<LazyEventEngine>(); });
}

std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& socket_path,
                                                absl::Duration timeout) {
  return std::make_unique<GrpcAgentClient>(socket_path, timeout);
}

}  // namespace fabric::cni
