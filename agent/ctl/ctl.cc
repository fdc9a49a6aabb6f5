#include "agent/ctl/ctl.h"

#include <unistd.h>

#include <chrono>
#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "agent/ctl/offline.h"
#include "agent/owner_kind.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"

namespace fabric::agent::ctl {

namespace v1 = ::fabric::nat::v1;
using google::protobuf::util::TimeUtil;

namespace {

constexpr char kUsage[] =
    "fabricctl [--socket PATH] [--state_dir DIR] list|status|add|remove ...\n"
    "  list [--json]                      mappings of every owner\n"
    "  status [--json]                    agent health\n"
    "  add PROTO HOSTPORT TARGETIP:PORT   create an API mapping (HOSTPORT 0 allocates)\n"
    "  remove ID                          delete an API mapping\n"
    "  diagnose [--json] [--full]         compare kernel and store; exit 1 if not healthy\n"
    "                                     (--full: read every kernel element even when\n"
    "                                     the kernel's generation shows it unchanged)\n"
    "  health [--ready]                   exit 0 if the agent answers (--ready: and is\n"
    "                                     ready: kernel reconciled), else 1 (probes)\n"
    "  backup PATH                        snapshot the agent's state (start an\n"
    "                                     agent from it: PATH as <state_dir>/state.db)\n"
    "  upstream map tcp|udp PORT          map PORT on the LAN's gateway (PCP, NAT-PMP or\n"
    "                                     UPnP; --external PORT --lifetime S --gateway IP\n"
    "                                     --protocol auto|pcp|natpmp|upnp --json; --keep:\n"
    "                                     renew until SIGINT/SIGTERM, then delete)\n"
    "  upstream unmap tcp|udp PORT        delete it; upstream status: what the gateway\n"
    "                                     answers (no agent needed for upstream)\n"
    "When the agent does not answer, list, status and diagnose read --state_dir's store\n"
    "read-only (and diagnose this network namespace's kernel) instead.";

constexpr char kHealthy[] = "healthy: the kernel holds exactly what the store asks for";

// The fixed deadline of list, status and diagnose (health has --timeout).
constexpr auto kCallDeadline = std::chrono::seconds(10);
constexpr int kListPageSize = 1000;

int Fail(const std::string& what, const grpc::Status& s, std::ostream& err) {
  err << "fabricctl: " << what << ": " << s.error_message() << "\n";
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? kExitAgentDown : kExitFailed;
}

// Prints `m` as JSON (one object and a newline); false, with the reason on
// err, when it cannot be converted.
bool PrintJson(const google::protobuf::Message& m, std::ostream& out, std::ostream& err) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  google::protobuf::util::Status s = google::protobuf::util::MessageToJsonString(m, &text, o);
  if (!s.ok()) {
    err << "fabricctl: cannot print JSON: " << s.ToString() << "\n";
    return false;
  }
  out << text << "\n";
  return true;
}

std::string Kind(v1::OwnerKind k) { return OwnerKindName(k); }

std::string Proto(v1::Protocol p) {
  switch (p) {
    case v1::PROTOCOL_TCP: return "tcp";
    case v1::PROTOCOL_UDP: return "udp";
    case v1::PROTOCOL_SCTP: return "sctp";
    default: return "?";
  }
}

std::string Addr(const std::string& ip, bool v6_hint) {
  if (ip.empty()) return v6_hint ? "[::]" : "0.0.0.0";
  return ip.find(':') != std::string::npos ? absl::StrCat("[", ip, "]") : ip;
}

std::string Ports(uint32_t first, uint32_t count) {
  return count > 1 ? absl::StrCat(first, "-", first + count - 1) : absl::StrCat(first);
}

}  // namespace

const char* Usage() { return kUsage; }

// Every mapping, a page at a time: one response of 100k mappings would pass
// gRPC's 4 MiB message limit, and each page is a short call.
static grpc::Status FetchList(v1::MappingService::StubInterface& stub,
                              v1::ListMappingsResponse* r) {
  v1::ListMappingsRequest req;
  req.set_page_size(kListPageSize);
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
    v1::ListMappingsResponse page;
    grpc::Status s = stub.ListMappings(&ctx, req, &page);
    if (!s.ok()) return s;
    for (v1::PortMapping& m : *page.mutable_mappings()) *r->add_mappings() = std::move(m);
    if (page.next_page_token().empty()) return grpc::Status::OK;
    if (page.next_page_token() == req.page_token()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "the agent answered the same page token again");
    }
    req.set_page_token(page.next_page_token());
  }
}

int List(v1::MappingService::StubInterface& stub, const Options& options,
         std::ostream& out, std::ostream& err) {
  v1::ListMappingsResponse r;
  grpc::Status s = FetchList(stub, &r);
  if (!s.ok()) return Fail("list", s, err);
  return PrintList(r, options, out, err);
}

int PrintList(const v1::ListMappingsResponse& r, const Options& options, std::ostream& out,
              std::ostream& err) {
  if (options.json) return PrintJson(r, out, err) ? kExitOk : kExitFailed;
  constexpr char kRow[] = "%-8s %-7s %-5s %-24s %-24s %-22s %s\n";
  out << absl::StrFormat(kRow, "ID", "OWNER", "PROTO", "HOST", "TARGET", "EXPIRES", "OWNER ID");
  absl::Time now = options.now();
  for (const v1::PortMapping& m : r.mappings()) {
    bool v6 = m.target_ip().find(':') != std::string::npos;
    std::string expires = "-";
    if (m.has_expires_at()) {
      absl::Time t = absl::FromUnixSeconds(m.expires_at().seconds());
      expires = absl::StrCat(absl::FormatTime("%Y-%m-%d %H:%M:%S", t, absl::UTCTimeZone()), " (",
                             absl::FormatDuration(absl::Trunc(t - now, absl::Seconds(1))), ")");
    }
    out << absl::StrFormat(
        kRow, m.id(), Kind(m.owner().kind()), Proto(m.protocol()),
        absl::StrCat(Addr(m.host_ip(), v6), ":", Ports(m.host_port(), m.port_count())),
        absl::StrCat(Addr(m.target_ip(), v6), ":", Ports(m.target_port(), m.port_count())),
        expires,
        m.description().empty()
            ? m.owner().id()
            : absl::StrCat(m.owner().id(), " \"", absl::Utf8SafeCHexEscape(m.description()), "\""));
    // --upstream: its state on the LAN's gateway, on a line of its own.
    if (!m.upstream().empty()) {
      out << "         upstream: " << absl::Utf8SafeCHexEscape(m.upstream()) << "\n";
    }
  }
  out << r.mappings_size() << " mapping(s)\n";
  return kExitOk;
}

static grpc::Status FetchStatus(v1::AgentService::StubInterface& stub,
                                v1::GetStatusResponse* r) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  return stub.GetStatus(&ctx, v1::GetStatusRequest(), r);
}

int Status(v1::AgentService::StubInterface& stub, const Options& options,
           std::ostream& out, std::ostream& err) {
  v1::GetStatusResponse r;
  grpc::Status s = FetchStatus(stub, &r);
  if (!s.ok()) return Fail("status", s, err);
  return PrintStatus(r, /*live=*/true, r.ready() ? kExitOk : kExitUsage, options, out, err);
}

int PrintStatus(const v1::GetStatusResponse& r, bool live, int code, const Options& options,
                std::ostream& out, std::ostream& err) {
  if (options.json) return PrintJson(r, out, err) ? code : kExitFailed;
  out << "ready:        " << (r.ready() ? "yes" : absl::StrCat("no (", r.reason(), ")")) << "\n";
  out << "backend:      " << (r.backend().empty() ? "-" : r.backend()) << "\n";
  out << "attachments:  " << r.attachments() << "\n";
  out << "mappings:     " << r.mappings() << "\n";
  out << "started:      "
      << (r.has_started_at() ? TimeUtil::ToString(r.started_at()) : std::string("-")) << "\n";
  if (!live) {
    out << "repairs:      - (counted by a running agent only)\n";
    return code;
  }
  out << "repairs:      " << r.repairs()
      << (r.has_last_repair_at()
              ? absl::StrCat(" (last ", TimeUtil::ToString(r.last_repair_at()), ")")
              : "")
      << "\n";
  return code;
}

// For probes (Kubernetes exec probes, scripts): 0 when the agent answers
// (and with --ready, is ready), 1 otherwise, with the reason on err.
int Health(v1::AgentService::StubInterface& stub, const Options& options,
           std::ostream& out, std::ostream& err) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  v1::GetStatusResponse r;
  grpc::Status s = stub.GetStatus(&ctx, v1::GetStatusRequest(), &r);
  if (!s.ok()) {
    err << "fabricctl: health: agent does not answer: " << s.error_message() << "\n";
    return kExitFailed;
  }
  if (options.ready && !r.ready()) {
    err << "fabricctl: health: agent not ready: " << r.reason() << "\n";
    return kExitFailed;
  }
  out << (r.ready() ? std::string("ready") : absl::StrCat("alive, not ready: ", r.reason()))
      << "\n";
  return kExitOk;
}

int Add(v1::MappingService::StubInterface& stub, const std::vector<std::string>& args,
        const Options& options, std::ostream& out, std::ostream& err) {
  if (args.size() != 4) {
    err << "usage: fabricctl add tcp|udp|sctp HOSTPORT TARGETIP:PORT\n";
    return kExitUsage;
  }
  v1::CreateMappingRequest req;
  v1::PortMapping* m = req.mutable_mapping();
  const std::string& proto = args[1];
  m->set_protocol(proto == "tcp"    ? v1::PROTOCOL_TCP
                  : proto == "udp"  ? v1::PROTOCOL_UDP
                  : proto == "sctp" ? v1::PROTOCOL_SCTP
                                    : v1::PROTOCOL_UNSPECIFIED);
  uint32_t host_port = 0, target_port = 0;
  const std::string& target = args[3];
  size_t colon = target.rfind(':');
  if (!absl::SimpleAtoi(args[2], &host_port) || colon == std::string::npos ||
      !absl::SimpleAtoi(target.substr(colon + 1), &target_port)) {
    err << "fabricctl add: expected HOSTPORT and TARGETIP:PORT\n";
    return kExitUsage;
  }
  std::string ip = target.substr(0, colon);
  if (ip.size() > 2 && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  m->set_host_port(host_port);
  m->set_target_ip(ip);
  m->set_target_port(target_port);
  m->set_host_ip(options.host_ip);
  m->set_description(options.description);
  m->mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m->mutable_owner()->set_id(options.owner);
  grpc::ClientContext ctx;
  v1::CreateMappingResponse r;
  grpc::Status s = stub.CreateMapping(&ctx, req, &r);
  if (!s.ok()) return Fail("add", s, err);
  out << r.mapping().id() << " " << proto << " host port " << r.mapping().host_port() << " -> "
      << ip << ":" << target_port << "\n";
  return kExitOk;
}

static grpc::Status FetchDiagnose(v1::AgentService::StubInterface& stub, bool full,
                                  v1::DiagnoseResponse* r) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  v1::DiagnoseRequest req;
  req.set_full(full);
  return stub.Diagnose(&ctx, req, r);
}

int Diagnose(v1::AgentService::StubInterface& stub, const Options& options,
             std::ostream& out, std::ostream& err) {
  v1::DiagnoseResponse r;
  grpc::Status s = FetchDiagnose(stub, options.full, &r);
  if (!s.ok()) return Fail("diagnose", s, err);
  return PrintDiagnose(r, kHealthy, options, out, err);
}

int PrintDiagnose(const v1::DiagnoseResponse& r, const std::string& healthy_line,
                  const Options& options, std::ostream& out, std::ostream& err) {
  const int code = r.healthy() ? kExitOk : kExitFailed;
  if (options.json) return PrintJson(r, out, err) ? code : kExitFailed;
  out << (r.healthy() ? healthy_line : "NEEDS ATTENTION:") << "\n";
  for (const std::string& f : r.findings()) out << "  ! " << f << "\n";
  for (const std::string& f : r.facts()) out << "  - " << f << "\n";
  return code;
}

int Backup(v1::AgentService::StubInterface& stub, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err) {
  if (args.size() != 2) {
    err << "usage: fabricctl backup PATH\n";
    return kExitUsage;
  }
  std::string path = args[1];
  if (path.empty() || path[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) path = absl::StrCat(cwd, "/", path);
  }
  grpc::ClientContext ctx;
  v1::BackupRequest req;
  req.set_path(path);
  v1::BackupResponse r;
  grpc::Status s = stub.Backup(&ctx, req, &r);
  if (!s.ok()) return Fail("backup", s, err);
  out << "wrote " << path << ": " << r.attachments() << " attachment(s), " << r.mappings()
      << " mapping(s)\n";
  return kExitOk;
}

int Remove(v1::MappingService::StubInterface& stub, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err) {
  if (args.size() != 2) {
    err << "usage: fabricctl remove ID\n";
    return kExitUsage;
  }
  grpc::ClientContext ctx;
  v1::DeleteMappingRequest req;
  req.set_id(args[1]);
  v1::DeleteMappingResponse r;
  grpc::Status s = stub.DeleteMapping(&ctx, req, &r);
  if (!s.ok()) return Fail("remove", s, err);
  out << "removed " << args[1] << "\n";
  return kExitOk;
}

int Run(const std::vector<std::string>& args, const Options& options, std::ostream& out,
        std::ostream& err) {
  if (args.empty()) {
    err << kUsage << "\n";
    return kExitUsage;
  }
  const std::string& cmd = args[0];
  if (cmd == "upstream") return Upstream(args, options.upstream, options.json, out, err);
  const bool offline_capable = cmd == "list" || cmd == "status" || cmd == "diagnose";
  if (access(options.socket.c_str(), F_OK) != 0) {
    Unreachable why{absl::StrCat("no agent socket at ", options.socket,
                                 " (is fabric-agent running? --socket)"),
                    absl::StrCat("no agent socket at ", options.socket)};
    if (offline_capable) return RunOffline(cmd, why, options, out, err);
    err << "fabricctl: " << why.error << "\n";
    return cmd == "health" ? kExitFailed : kExitAgentDown;
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(
      absl::StrCat("unix:", options.socket), grpc::InsecureChannelCredentials());
  // list, status and diagnose: an agent that does not answer (UNAVAILABLE:
  // a stale socket file, connection refused) is read offline.
  auto offline = [&](const grpc::Status& s) {
    return RunOffline(cmd,
                      Unreachable{absl::StrCat(cmd, ": ", s.error_message()),
                                  absl::StrCat("the agent socket ", options.socket,
                                               " does not answer (", s.error_message(), ")")},
                      options, out, err);
  };
  if (cmd == "list") {
    v1::ListMappingsResponse r;
    grpc::Status s = FetchList(*v1::MappingService::NewStub(channel), &r);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) return offline(s);
    return s.ok() ? PrintList(r, options, out, err) : Fail("list", s, err);
  }
  if (cmd == "status") {
    v1::GetStatusResponse r;
    grpc::Status s = FetchStatus(*v1::AgentService::NewStub(channel), &r);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) return offline(s);
    if (!s.ok()) return Fail("status", s, err);
    return PrintStatus(r, /*live=*/true, r.ready() ? kExitOk : kExitUsage, options, out, err);
  }
  if (cmd == "diagnose") {
    v1::DiagnoseResponse r;
    grpc::Status s = FetchDiagnose(*v1::AgentService::NewStub(channel), options.full, &r);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) return offline(s);
    return s.ok() ? PrintDiagnose(r, kHealthy, options, out, err) : Fail("diagnose", s, err);
  }
  if (cmd == "add") return Add(*v1::MappingService::NewStub(channel), args, options, out, err);
  if (cmd == "health") return Health(*v1::AgentService::NewStub(channel), options, out, err);
  if (cmd == "backup") return Backup(*v1::AgentService::NewStub(channel), args, out, err);
  if (cmd == "remove") return Remove(*v1::MappingService::NewStub(channel), args, out, err);
  err << "fabricctl: unknown command \"" << cmd << "\"\n" << kUsage << "\n";
  return kExitUsage;
}

}  // namespace fabric::agent::ctl
