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

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // Messages quote client input; one too long for gRPC's metadata would
  // turn into a transport error with another code (the plugin then reported
  // "no free port"). Keep the code, cut the text.
  constexpr size_t kMaxMessage = 2048;
  std::string message(s.message());
  if (message.size() > kMaxMessage) {
    message = absl::StrCat(message.substr(0, kMaxMessage), "... (", message.size(), " bytes)");
  }
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), message);
}

namespace {

// The caller's trace id (its "traceparent" metadata), or a new one.
std::string TraceOf(const grpc::ServerContext* context) {
  if (context != nullptr) {
    auto it = context->client_metadata().find("traceparent");
    if (it != context->client_metadata().end()) {
      if (std::optional<cni::TraceContext> t = cni::ParseTraceparent(
              absl::string_view(it->second.data(), it->second.size()))) {
        return t->trace_id;
      }
    }
  }
  return cni::NewTraceId();
}

// Times one operation; logs and records it when done. Its trace id is the
// thread's for the call (ScopedTrace): the watch events it causes carry it.
class OpScope {
 public:
  OpScope(Metrics* metrics, const grpc::ServerContext* context, std::string op,
          std::string subject)
      : metrics_(metrics), op_(std::move(op)), subject_(std::move(subject)),
        start_(absl::Now()), trace_(TraceOf(context)) {}
  grpc::Status Finish(const absl::Status& s, const std::string& detail = "") {
    absl::Duration took = absl::Now() - start_;
    metrics_->RecordOperation(op_, s.ok(), took);
    LogLine(absl::StrCat(
        "op=", op_, " ", subject_, " outcome=",
        s.ok() ? "ok" : absl::StatusCodeToString(s.code()),
        detail.empty() ? "" : " " + detail,
        absl::StrFormat(" duration=%.3fms", absl::ToDoubleMilliseconds(took)), " trace=",
        CurrentTraceId(),
        s.ok() ? "" : absl::StrCat(" error=\"", s.message(), "\"")));
    return ToGrpc(s);
  }

 private:
  Metrics* metrics_;
  std::string op_;
  std::string subject_;
  absl::Time start_;
  ScopedTrace trace_;
};

// The caller's deadline: a call still waiting for the writer when it passes
// is refused without doing anything, so a client that gave up (the plugin
// reports "try again later") never has it happen behind its back.
absl::Time DeadlineOf(const grpc::ServerContext* context) {
  auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

std::string Subject(const v1::AttachmentKey& k) {
  return absl::StrCat("container=", ShortContainerId(k.container_id()),
                      " ifname=", k.ifname(), " network=", k.network_name());
}

}  // namespace

grpc::Status AttachmentServiceImpl::Attach(grpc::ServerContext* context,
                                           const v1::AttachRequest* request,
                                           v1::AttachResponse* response) {
  OpScope op(metrics_, context, "attach", Subject(request->attachment().key()));
  absl::StatusOr<v1::AttachResponse> r = core_->Attach(request->attachment(), DeadlineOf(context));
  if (r.ok()) *response = *r;
  return op.Finish(r.status(),
                   r.ok() ? absl::StrCat("mappings=", r->mappings_size()) : "");
}

grpc::Status AttachmentServiceImpl::Detach(grpc::ServerContext* context,
                                           const v1::DetachRequest* request,
                                           v1::DetachResponse* response) {
  OpScope op(metrics_, context, "detach", Subject(request->key()));
  absl::StatusOr<bool> r = core_->Detach(request->key(), DeadlineOf(context));
  if (r.ok()) response->set_existed(*r);
  return op.Finish(r.status(), r.ok() && !*r ? "existed=false" : "");
}

grpc::Status AttachmentServiceImpl::Check(grpc::ServerContext* context,
                                          const v1::CheckRequest* request,
                                          v1::CheckResponse*) {
  OpScope op(metrics_, context, "check", Subject(request->key()));
  return op.Finish(core_->Check(request->key()));
}

grpc::Status AttachmentServiceImpl::GarbageCollect(
    grpc::ServerContext* context, const v1::GarbageCollectRequest* request,
    v1::GarbageCollectResponse* response) {
  OpScope op(metrics_, context, "gc", absl::StrCat("network=", request->network_name()));
  std::vector<v1::AttachmentKey> valid(request->valid_attachments().begin(),
                                       request->valid_attachments().end());
  absl::StatusOr<std::vector<v1::AttachmentKey>> r =
      core_->GarbageCollect(request->network_name(), valid, DeadlineOf(context));
  if (r.ok()) {
    for (const auto& k : *r) *response->add_removed() = k;
  }
  return op.Finish(r.status(),
                   r.ok() ? absl::StrCat("removed=", r->size()) : "");
}

grpc::Status MappingServiceImpl::CreateMapping(
    grpc::ServerContext* context, const v1::CreateMappingRequest* request,
    v1::CreateMappingResponse* response) {
  OpScope op(metrics_, context, "create_mapping",
             absl::StrCat("owner=", request->mapping().owner().id()));
  absl::StatusOr<v1::PortMapping> r = core_->CreateMapping(request->mapping(), DeadlineOf(context));
  if (r.ok()) *response->mutable_mapping() = *r;
  return op.Finish(r.status(), r.ok() ? absl::StrCat("id=", r->id()) : "");
}

grpc::Status MappingServiceImpl::DeleteMapping(
    grpc::ServerContext* context, const v1::DeleteMappingRequest* request,
    v1::DeleteMappingResponse*) {
  OpScope op(metrics_, context, "delete_mapping", absl::StrCat("id=", request->id()));
  return op.Finish(core_->DeleteMapping(request->id(), DeadlineOf(context)));
}

grpc::Status MappingServiceImpl::ListMappings(
    grpc::ServerContext*, const v1::ListMappingsRequest* request,
    v1::ListMappingsResponse* response) {
  absl::StatusOr<AgentCore::Page> page = core_->ListMappingsPage(
      request->owner_kind(), request->owner_id(), request->page_size(), request->page_token());
  if (!page.ok()) return ToGrpc(page.status());
  response->mutable_mappings()->Swap(&page->mappings);
  response->set_next_page_token(std::move(page->next_page_token));
  return grpc::Status::OK;
}

grpc::Status MappingServiceImpl::WatchMappings(
    grpc::ServerContext* context, const v1::WatchMappingsRequest* request,
    grpc::ServerWriter<v1::MappingEvent>* writer) {
  std::shared_ptr<EventQueue> queue =
      core_->Subscribe(request->owner_kind(), request->owner_id());
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

grpc::Status AgentServiceImpl::GetStatus(grpc::ServerContext*,
                                         const v1::GetStatusRequest*,
                                         v1::GetStatusResponse* response) {
  *response = core_->Status();
  response->set_version(kVersion);
  return grpc::Status::OK;
}

grpc::Status AgentServiceImpl::Backup(grpc::ServerContext* context,
                                      const v1::BackupRequest* request,
                                      v1::BackupResponse* response) {
  OpScope op(metrics_, context, "backup", absl::StrCat("path=", request->path()));
  if (!allow_backup_) {
    return op.Finish(absl::PermissionDeniedError(
        "backups are taken over the agent's unix socket only, not over TLS"));
  }
  absl::StatusOr<v1::BackupResponse> r = core_->Backup(request->path());
  if (r.ok()) *response = *r;
  return op.Finish(r.status());
}

grpc::Status AgentServiceImpl::Diagnose(grpc::ServerContext*,
                                        const v1::DiagnoseRequest* request,
                                        v1::DiagnoseResponse* response) {
  *response = core_->Diagnose(request->full());
  return grpc::Status::OK;
}

}  // namespace fabric::agent
