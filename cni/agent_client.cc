#include "cni/agent_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cni/grpc_unary.h"
#include "cni/trace_context.h"

namespace fabric::cni {

namespace {

// The agent's methods (proto/fabric/nat/v1/nat.proto; agent_client_test
// calls each one on gRPC's own server).
constexpr char kAttach[] = "/fabric.nat.v1.AttachmentService/Attach";
constexpr char kDetach[] = "/fabric.nat.v1.AttachmentService/Detach";
constexpr char kCheck[] = "/fabric.nat.v1.AttachmentService/Check";
constexpr char kGarbageCollect[] = "/fabric.nat.v1.AttachmentService/GarbageCollect";
constexpr char kGetStatus[] = "/fabric.nat.v1.AgentService/GetStatus";

// Closes a socket when the call ends.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
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
    return Call<v1::AttachResponse>(kAttach, req);
  }
  absl::Status Detach(const v1::AttachmentKey& key) override {
    v1::DetachRequest req;
    *req.mutable_key() = key;
    return Call<v1::DetachResponse>(kDetach, req).status();
  }
  absl::Status Check(const v1::AttachmentKey& key) override {
    v1::CheckRequest req;
    *req.mutable_key() = key;
    return Call<v1::CheckResponse>(kCheck, req).status();
  }
  absl::StatusOr<v1::GarbageCollectResponse> GarbageCollect(
      const v1::GarbageCollectRequest& req) override {
    return Call<v1::GarbageCollectResponse>(kGarbageCollect, req);
  }
  absl::StatusOr<v1::GetStatusResponse> GetStatus() override {
    return Call<v1::GetStatusResponse>(kGetStatus, v1::GetStatusRequest());
  }

 private:
  // One connection per call (a process makes one): connect, send, answer.
  template <typename Resp>
  absl::StatusOr<Resp> Call(const char* method, const google::protobuf::MessageLite& req) {
    UnaryCall call;
    call.deadline = absl::Now() + timeout_;
    call.path = method;
    if (!req.SerializeToString(&call.request)) {
      return absl::InvalidArgumentError(absl::StrCat("cannot encode the call to ", method));
    }
    if (trace_) {
      call.metadata.emplace_back("traceparent", trace_->traceparent);
      if (!trace_->tracestate.empty()) call.metadata.emplace_back("tracestate", trace_->tracestate);
    }
    Fd fd;
    if (absl::Status s = Connect(call.deadline, &fd.fd); !s.ok()) return s;
    absl::StatusOr<std::string> answer = CallUnary(fd.fd, call);
    if (!answer.ok()) {
      absl::StatusCode code = answer.status().code();
      if (code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kUnavailable) {
        return absl::UnavailableError(absl::StrCat("cannot reach fabric-agent at ", socket_,
                                                   ": ", answer.status().message()));
      }
      return answer.status();
    }
    Resp resp;
    if (!resp.ParseFromString(*answer)) {
      return absl::InternalError(absl::StrCat("fabric-agent's answer to ", method, " is not a ",
                                              resp.GetTypeName()));
    }
    return resp;
  }

  // Connects the unix socket, bounded by the call's deadline (SO_SNDTIMEO:
  // a listener whose backlog is full makes a unix connect wait).
  absl::Status Connect(absl::Time deadline, int* out) {
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
    timeval tv = absl::ToTimeval(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
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
    *out = fd;
    return absl::OkStatus();
  }

  std::string socket_;
  absl::Duration timeout_;
  std::optional<TraceContext> trace_;
};

}  // namespace

std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& socket_path,
                                                absl::Duration timeout) {
  return std::make_unique<GrpcAgentClient>(socket_path, timeout);
}

}  // namespace fabric::cni
