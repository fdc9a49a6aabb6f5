// AgentClient: the agent as the CNI plugin sees it. One call per command.
// Implementations: GrpcAgentClient (the unix socket), and fakes in tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.pb.h"

namespace fabric::cni {

namespace v1 = ::fabric::nat::v1;

class AgentClient {
 public:
  virtual ~AgentClient() = default;
  virtual absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& a) = 0;
  virtual absl::Status Detach(const v1::AttachmentKey& key) = 0;
  virtual absl::Status Check(const v1::AttachmentKey& key) = 0;
  virtual absl::StatusOr<v1::GarbageCollectResponse> GarbageCollect(
      const v1::GarbageCollectRequest& request) = 0;
  virtual absl::StatusOr<v1::GetStatusResponse> GetStatus() = 0;
};

// Talks to the agent on `socket_path`, in gRPC on the calling thread
// (cni/grpc_unary.h): a connection per call, no threads. Every call fails
// within `timeout` with kUnavailable naming the socket when the agent
// cannot be reached.
std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& socket_path,
                                                absl::Duration timeout);

}  // namespace fabric::cni
