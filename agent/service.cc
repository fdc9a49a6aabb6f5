#include "agent/service.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agent/core/trace.h"
#include "agent/version.h"
#include "cni/trace_context.h"

namespace fabric::agent {

absl::Status ForTheWire(const absl::Status& s) {
  // Messages quote client input; one too long for gRPC's metadata would
  // turn into a transport error with another code (the plugin then reported
  // "no free port"). Keep the code, cut the text.
  constexpr size_t kMaxMessage = 2048;
  if (s.message().size() <= kMaxMessage) return s;
  return absl::Status(s.code(), absl::StrCat(s.message().substr(0, kMaxMessage), "... (",
                                             s.message().size(), " bytes)"));
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  absl::Status cut = ForTheWire(s);
  return grpc::Status(static_cast<grpc::StatusCode>(cut.code()), std::string(cut.message()));
}

CallInfo CallInfoOf(const grpc::ServerContext* context) {
  CallInfo info;
  if (context == nullptr) return info;
  auto d = context->deadline();
  if (d != std::chrono::system_clock::time_point::max()) info.deadline = absl::FromChrono(d);
  auto it = context->client_metadata().find("traceparent");
  if (it != context->client_metadata().end()) {
    info.traceparent.assign(it->second.data(), it->second.size());
  }
  return info;
}

namespace {

// The caller's trace id (its "traceparent" metadata), or a new one.
std::string TraceOf(const std::string& traceparent) {
  if (!traceparent.empty()) {
    if (std::optional<cni::TraceContext> t = cni::ParseTraceparent(traceparent)) {
      return t->trace_id;
    }
  }
  return cni::NewTraceId();
}

// Times one operation; logs and records it when done. Its trace id is the
// thread's for the call (ScopedTrace): the watch events it causes carry it.
class OpScope {
 public:
  OpScope(Metrics* metrics, const CallInfo& call, std::string op, std::string subject)
      : metrics_(metrics),
        op_(std::move(op)),
        subject_(std::move(subject)),
        start_(absl::Now()),
        trace_(TraceOf(call.traceparent)) {}
  grpc::Status Finish(const absl::Status& s, const std::string& detail = "") {
    return ToGrpc(Done(s, detail));
  }
  absl::Status Done(const absl::Status& s, const std::string& detail = "") {
    absl::Duration took = absl::Now() - start_;
    metrics_->RecordOperation(op_, s.ok(), took);
    LogLine(absl::StrCat(
        "op=", op_, " ", subject_, " outcome=", s.ok() ? "ok" : absl::StatusCodeToString(s.code()),
        detail.empty() ? "" : " " + detail,
        absl::StrFormat(" duration=%.3fms", absl::ToDoubleMilliseconds(took)),
        " trace=", CurrentTraceId(), s.ok() ? "" : absl::StrCat(" error=\"", s.message(), "\"")));
    return ForTheWire(s);
  }

 private:
  Metrics* metrics_;
  std::string op_;
  std::string subject_;
  absl::Time start_;
  ScopedTrace trace_;
};

std::string Subject(const v1::AttachmentKey& k) {
  return absl::StrCat("container=", ShortContainerId(k.container_id()), " ifname=", k.ifname(),
                      " network=", k.network_name());
}

}  // namespace

absl::Status AttachmentServiceImpl::Attach(const CallInfo& call, const v1::AttachRequest& request,
                                           v1::AttachResponse* response) {
  OpScope op(metrics_, call, "attach", Subject(request.attachment().key()));
  absl::StatusOr<v1::AttachResponse> r = core_->Attach(request.attachment(), call.deadline);
  if (r.ok()) *response = *std::move(r);
  return op.Done(r.status(), r.ok() ? absl::StrCat("mappings=", response->mappings_size()) : "");
}

absl::Status AttachmentServiceImpl::Detach(const CallInfo& call, const v1::DetachRequest& request,
                                           v1::DetachResponse* response) {
  OpScope op(metrics_, call, "detach", Subject(request.key()));
  absl::StatusOr<bool> r = core_->Detach(request.key(), call.deadline);
  if (r.ok()) response->set_existed(*r);
  return op.Done(r.status(), r.ok() && !*r ? "existed=false" : "");
}

absl::Status AttachmentServiceImpl::Check(const CallInfo& call, const v1::CheckRequest& request,
                                          v1::CheckResponse*) {
  OpScope op(metrics_, call, "check", Subject(request.key()));
  return op.Done(core_->Check(request.key()));
}

absl::Status AttachmentServiceImpl::GarbageCollect(const CallInfo& call,
                                                   const v1::GarbageCollectRequest& request,
                                                   v1::GarbageCollectResponse* response) {
  OpScope op(metrics_, call, "gc", absl::StrCat("network=", request.network_name()));
  std::vector<v1::AttachmentKey> valid(request.valid_attachments().begin(),
                                       request.valid_attachments().end());
  absl::StatusOr<std::vector<v1::AttachmentKey>> r =
      core_->GarbageCollect(request.network_name(), valid, call.deadline);
  if (r.ok()) {
    for (const auto& k : *r) *response->add_removed() = k;
  }
  return op.Done(r.status(), r.ok() ? absl::StrCat("removed=", r->size()) : "");
}

grpc::Status AttachmentServiceImpl::Attach(grpc::ServerContext* context,
                                           const v1::AttachRequest* request,
                                           v1::AttachResponse* response) {
  return ToGrpc(Attach(CallInfoOf(context), *request, response));
}

grpc::Status AttachmentServiceImpl::Detach(grpc::ServerContext* context,
                                           const v1::DetachRequest* request,
                                           v1::DetachResponse* response) {
  return ToGrpc(Detach(CallInfoOf(context), *request, response));
}

grpc::Status AttachmentServiceImpl::Check(grpc::ServerContext* context,
                                          const v1::CheckRequest* request,
                                          v1::CheckResponse* response) {
  return ToGrpc(Check(CallInfoOf(context), *request, response));
}

grpc::Status AttachmentServiceImpl::GarbageCollect(grpc::ServerContext* context,
                                                   const v1::GarbageCollectRequest* request,
                                                   v1::GarbageCollectResponse* response) {
  return ToGrpc(GarbageCollect(CallInfoOf(context), *request, response));
}

grpc::Status MappingServiceImpl::CreateMapping(grpc::ServerContext* context,
                                               const v1::CreateMappingRequest* request,
                                               v1::CreateMappingResponse* response) {
  CallInfo call = CallInfoOf(context);
  OpScope op(metrics_, call, "create_mapping",
             absl::StrCat("owner=", request->mapping().owner().id()));
  absl::StatusOr<v1::PortMapping> r = core_->CreateMapping(request->mapping(), call.deadline);
  if (r.ok()) *response->mutable_mapping() = *r;
  return op.Finish(r.status(), r.ok() ? absl::StrCat("id=", r->id()) : "");
}

grpc::Status MappingServiceImpl::DeleteMapping(grpc::ServerContext* context,
                                               const v1::DeleteMappingRequest* request,
                                               v1::DeleteMappingResponse*) {
  CallInfo call = CallInfoOf(context);
  OpScope op(metrics_, call, "delete_mapping", absl::StrCat("id=", request->id()));
  return op.Finish(core_->DeleteMapping(request->id(), call.deadline));
}

grpc::Status MappingServiceImpl::ListMappings(grpc::ServerContext*,
                                              const v1::ListMappingsRequest* request,
                                              v1::ListMappingsResponse* response) {
  absl::StatusOr<AgentCore::Page> page = core_->ListMappingsPage(
      request->owner_kind(), request->owner_id(), request->page_size(), request->page_token());
  if (!page.ok()) return ToGrpc(page.status());
  response->mutable_mappings()->Swap(&page->mappings);
  response->set_next_page_token(std::move(page->next_page_token));
  return grpc::Status::OK;
}

grpc::Status MappingServiceImpl::WatchMappings(grpc::ServerContext* context,
                                               const v1::WatchMappingsRequest* request,
                                               grpc::ServerWriter<v1::MappingEvent>* writer) {
  std::shared_ptr<EventQueue> queue = core_->Subscribe(request->owner_kind(), request->owner_id());
  while (!context->IsCancelled()) {
    std::optional<v1::MappingEvent> e = queue->Pop(absl::Milliseconds(200));
    if (!e.has_value()) {
      if (queue->closed()) break;
      continue;
    }
    if (!writer->Write(*e)) break;
  }
  core_->Unsubscribe(queue);
  // kResourceExhausted when the watch fell too far behind or too many are
  // served: the client lists again.
  return ToGrpc(queue->end_status());
}

absl::Status AgentServiceImpl::GetStatus(const CallInfo&, const v1::GetStatusRequest&,
                                         v1::GetStatusResponse* response) {
  *response = core_->Status();
  response->set_version(kVersion);
  return absl::OkStatus();
}

grpc::Status AgentServiceImpl::GetStatus(grpc::ServerContext* context,
                                         const v1::GetStatusRequest* request,
                                         v1::GetStatusResponse* response) {
  return ToGrpc(GetStatus(CallInfoOf(context), *request, response));
}

grpc::Status AgentServiceImpl::Backup(grpc::ServerContext* context,
                                      const v1::BackupRequest* request,
                                      v1::BackupResponse* response) {
  OpScope op(metrics_, CallInfoOf(context), "backup", absl::StrCat("path=", request->path()));
  if (!allow_backup_) {
    return op.Finish(absl::PermissionDeniedError(
        "backups are taken over the agent's unix socket only, not over TLS"));
  }
  absl::StatusOr<v1::BackupResponse> r = core_->Backup(request->path());
  if (r.ok()) *response = *r;
  return op.Finish(r.status());
}

grpc::Status AgentServiceImpl::Diagnose(grpc::ServerContext*, const v1::DiagnoseRequest* request,
                                        v1::DiagnoseResponse* response) {
  *response = core_->Diagnose(request->full());
  return grpc::Status::OK;
}

namespace {

// One method for agent/unary_server.h: parses the request, runs `fn`,
// serializes the response.
template <typename Request, typename Response, typename Service>
UnaryHandler Handler(Service* service,
                     absl::Status (Service::*fn)(const CallInfo&, const Request&, Response*)) {
  return [service, fn](const UnaryCall& call, absl::string_view bytes,
                       std::string* out) -> absl::Status {
    Request request;
    if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return absl::InternalError("the request does not parse as " + request.GetTypeName());
    }
    Response response;
    absl::Status s = (service->*fn)(CallInfo{call.deadline, call.traceparent}, request, &response);
    if (!s.ok()) return s;
    if (!response.SerializeToString(out)) return absl::InternalError("cannot serialize the answer");
    return absl::OkStatus();
  };
}

}  // namespace

UnaryHandlers PluginHandlers(AttachmentServiceImpl* attachments, AgentServiceImpl* status) {
  using A = AttachmentServiceImpl;
  auto path = [](const char* service, const char* method) {
    return absl::StrCat("/", service, "/", method);
  };
  const char* att = v1::AttachmentService::service_full_name();
  UnaryHandlers h;
  h[path(att, "Attach")] =
      Handler<v1::AttachRequest, v1::AttachResponse, A>(attachments, &A::Attach);
  h[path(att, "Detach")] =
      Handler<v1::DetachRequest, v1::DetachResponse, A>(attachments, &A::Detach);
  h[path(att, "Check")] = Handler<v1::CheckRequest, v1::CheckResponse, A>(attachments, &A::Check);
  h[path(att, "GarbageCollect")] =
      Handler<v1::GarbageCollectRequest, v1::GarbageCollectResponse, A>(attachments,
                                                                        &A::GarbageCollect);
  h[path(v1::AgentService::service_full_name(), "GetStatus")] =
      Handler<v1::GetStatusRequest, v1::GetStatusResponse, AgentServiceImpl>(
          status, &AgentServiceImpl::GetStatus);
  return h;
}

}  // namespace fabric::agent
