// The v1 gRPC services, thin adapters over AgentCore: each handler times the
// call, logs one line with its outcome, records metrics, and maps
// absl::Status to grpc::Status (the codes are the same numbers).
//
// Thread-safe: gRPC calls handlers on its own threads; all state is in the
// core and in Metrics.
#pragma once

#include <string>

#include "agent/core.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/unary_server.h"
#include "fabric/nat/v1/nat.grpc.pb.h"

namespace fabric::agent {

grpc::Status ToGrpc(const absl::Status& s);
// The status as sent: its message cut to 2 KiB (messages quote client
// input; one too long for gRPC's metadata would turn into a transport
// error with another code).
absl::Status ForTheWire(const absl::Status& s);

// What a call carries besides its message, from gRPC's context or from
// agent/unary_server.h's call.
struct CallInfo {
  // A call still waiting for the writer when it passes is refused without
  // doing anything, so a client that gave up (the plugin reports "try again
  // later") never has it happen behind its back.
  absl::Time deadline = absl::InfiniteFuture();
  std::string traceparent;
};
CallInfo CallInfoOf(const grpc::ServerContext* context);

class AttachmentServiceImpl final : public v1::AttachmentService::Service {
 public:
  AttachmentServiceImpl(AgentCore* core, Metrics* metrics) : core_(core), metrics_(metrics) {}
  grpc::Status Attach(grpc::ServerContext*, const v1::AttachRequest* request,
                      v1::AttachResponse* response) override;
  grpc::Status Detach(grpc::ServerContext*, const v1::DetachRequest* request,
                      v1::DetachResponse* response) override;
  grpc::Status Check(grpc::ServerContext*, const v1::CheckRequest* request,
                     v1::CheckResponse* response) override;
  grpc::Status GarbageCollect(grpc::ServerContext*, const v1::GarbageCollectRequest* request,
                              v1::GarbageCollectResponse* response) override;

  // The same calls, for either server.
  absl::Status Attach(const CallInfo&, const v1::AttachRequest&, v1::AttachResponse*);
  absl::Status Detach(const CallInfo&, const v1::DetachRequest&, v1::DetachResponse*);
  absl::Status Check(const CallInfo&, const v1::CheckRequest&, v1::CheckResponse*);
  absl::Status GarbageCollect(const CallInfo&, const v1::GarbageCollectRequest&,
                              v1::GarbageCollectResponse*);

 private:
  AgentCore* core_;
  Metrics* metrics_;
};

class MappingServiceImpl final : public v1::MappingService::Service {
 public:
  MappingServiceImpl(AgentCore* core, Metrics* metrics) : core_(core), metrics_(metrics) {}
  grpc::Status CreateMapping(grpc::ServerContext*, const v1::CreateMappingRequest* request,
                             v1::CreateMappingResponse* response) override;
  grpc::Status DeleteMapping(grpc::ServerContext*, const v1::DeleteMappingRequest* request,
                             v1::DeleteMappingResponse* response) override;
  grpc::Status ListMappings(grpc::ServerContext*, const v1::ListMappingsRequest* request,
                            v1::ListMappingsResponse* response) override;
  grpc::Status WatchMappings(grpc::ServerContext* context, const v1::WatchMappingsRequest* request,
                             grpc::ServerWriter<v1::MappingEvent>* writer) override;

 private:
  AgentCore* core_;
  Metrics* metrics_;
};

class AgentServiceImpl final : public v1::AgentService::Service {
 public:
  // `allow_backup` false: Backup is refused (the TLS listener's instance).
  AgentServiceImpl(AgentCore* core, Metrics* metrics, bool allow_backup = true)
      : core_(core), metrics_(metrics), allow_backup_(allow_backup) {}
  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* response) override;
  grpc::Status Backup(grpc::ServerContext*, const v1::BackupRequest* request,
                      v1::BackupResponse* response) override;
  grpc::Status Diagnose(grpc::ServerContext*, const v1::DiagnoseRequest*,
                        v1::DiagnoseResponse* response) override;

  absl::Status GetStatus(const CallInfo&, const v1::GetStatusRequest&, v1::GetStatusResponse*);

 private:
  AgentCore* core_;
  Metrics* metrics_;
  const bool allow_backup_;
};

// The CNI plugin's methods (Attach, Detach, Check, GarbageCollect,
// GetStatus) by path, for agent/socket_front.h.
UnaryHandlers PluginHandlers(AttachmentServiceImpl* attachments, AgentServiceImpl* status);

}  // namespace fabric::agent
