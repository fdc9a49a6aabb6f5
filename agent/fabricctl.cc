// fabricctl: a command-line client of the agent's v1 API.
//
//   fabricctl [--socket PATH] list [--json]
//   fabricctl [--socket PATH] status [--json]
//   fabricctl [--socket PATH] add PROTO HOSTPORT TARGETIP:PORT [--owner ID] [--host_ip IP]
//   fabricctl [--socket PATH] remove ID
//   fabricctl [--socket PATH] backup PATH
//   fabricctl [--socket PATH] diagnose [--json]
//   fabricctl [--socket PATH] health [--ready]
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "agent/version.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(std::string, socket, "/run/fabric-nat/agent.sock", "agent socket");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");
ABSL_FLAG(std::string, owner, "fabricctl", "owner id for add");
ABSL_FLAG(std::string, host_ip, "", "host address for add (default: any)");
ABSL_FLAG(std::string, description, "", "description for add");
ABSL_FLAG(bool, ready, false,
          "health: succeed only when the agent is ready (store open, kernel "
          "reconciled), not merely answering");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10),
          "how long to wait for the agent's answer");

namespace v1 = fabric::nat::v1;
using google::protobuf::util::TimeUtil;

namespace {

int Fail(const std::string& what, const grpc::Status& s) {
  std::fprintf(stderr, "fabricctl: %s: %s\n", what.c_str(),
               s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? 3 : 1;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string Kind(v1::OwnerKind k) {
  switch (k) {
    case v1::OWNER_KIND_CNI: return "cni";
    case v1::OWNER_KIND_NATPMP: return "natpmp";
    case v1::OWNER_KIND_PCP: return "pcp";
    case v1::OWNER_KIND_UPNP: return "upnp";
    case v1::OWNER_KIND_API: return "api";
    default: return "?";
  }
}

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

int List(v1::MappingService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListMappingsResponse r;
  grpc::Status s = stub.ListMappings(&ctx, v1::ListMappingsRequest(), &r);
  if (!s.ok()) return Fail("list", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(r).c_str());
    return 0;
  }
  std::printf("%-8s %-7s %-5s %-24s %-24s %-22s %s\n", "ID", "OWNER", "PROTO",
              "HOST", "TARGET", "EXPIRES", "OWNER ID");
  for (const v1::PortMapping& m : r.mappings()) {
    bool v6 = m.target_ip().find(':') != std::string::npos;
    std::string expires = "-";
    if (m.has_expires_at()) {
      absl::Time t = absl::FromUnixSeconds(m.expires_at().seconds());
      expires = absl::StrCat(absl::FormatTime("%Y-%m-%d %H:%M:%S", t, absl::UTCTimeZone()),
                             " (", absl::FormatDuration(absl::Trunc(t - absl::Now(), absl::Seconds(1))),
                             ")");
    }
    std::printf("%-8s %-7s %-5s %-24s %-24s %-22s %s\n", m.id().c_str(),
                Kind(m.owner().kind()).c_str(), Proto(m.protocol()).c_str(),
                absl::StrCat(Addr(m.host_ip(), v6), ":", Ports(m.host_port(), m.port_count())).c_str(),
                absl::StrCat(Addr(m.target_ip(), v6), ":", Ports(m.target_port(), m.port_count())).c_str(),
                expires.c_str(), m.owner().id().c_str());
  }
  std::printf("%d mapping(s)\n", r.mappings_size());
  return 0;
}

int Status(v1::AgentService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetStatusResponse r;
  grpc::Status s = stub.GetStatus(&ctx, v1::GetStatusRequest(), &r);
  if (!s.ok()) return Fail("status", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(r).c_str());
    return r.ready() ? 0 : 2;
  }
  std::printf("ready:        %s%s\n", r.ready() ? "yes" : "no",
              r.ready() ? "" : absl::StrCat(" (", r.reason(), ")").c_str());
  std::printf("backend:      %s\n", r.backend().c_str());
  std::printf("attachments:  %u\n", r.attachments());
  std::printf("mappings:     %u\n", r.mappings());
  std::printf("started:      %s\n", TimeUtil::ToString(r.started_at()).c_str());
  std::printf("repairs:      %llu%s\n", static_cast<unsigned long long>(r.repairs()),
              r.has_last_repair_at()
                  ? absl::StrCat(" (last ", TimeUtil::ToString(r.last_repair_at()), ")").c_str()
                  : "");
  return r.ready() ? 0 : 2;
}

// For probes (Kubernetes exec probes, scripts): 0 when the agent answers
// (and with --ready, is ready), 1 otherwise, with the reason on stderr.
int Health(v1::AgentService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  v1::GetStatusResponse r;
  grpc::Status s = stub.GetStatus(&ctx, v1::GetStatusRequest(), &r);
  if (!s.ok()) {
    std::fprintf(stderr, "fabricctl: health: agent does not answer: %s\n",
                 s.error_message().c_str());
    return 1;
  }
  if (absl::GetFlag(FLAGS_ready) && !r.ready()) {
    std::fprintf(stderr, "fabricctl: health: agent not ready: %s\n", r.reason().c_str());
    return 1;
  }
  std::printf("%s\n", r.ready() ? "ready" : absl::StrCat("alive, not ready: ", r.reason()).c_str());
  return 0;
}

int Add(v1::MappingService::Stub& stub, const std::vector<char*>& args) {
  if (args.size() != 4) {
    std::fprintf(stderr, "usage: fabricctl add tcp|udp|sctp HOSTPORT TARGETIP:PORT\n");
    return 2;
  }
  v1::CreateMappingRequest req;
  v1::PortMapping* m = req.mutable_mapping();
  std::string proto = args[1];
  m->set_protocol(proto == "tcp" ? v1::PROTOCOL_TCP
                  : proto == "udp" ? v1::PROTOCOL_UDP
                  : proto == "sctp" ? v1::PROTOCOL_SCTP
                                    : v1::PROTOCOL_UNSPECIFIED);
  uint32_t host_port = 0, target_port = 0;
  std::string target = args[3];
  size_t colon = target.rfind(':');
  if (!absl::SimpleAtoi(args[2], &host_port) || colon == std::string::npos ||
      !absl::SimpleAtoi(target.substr(colon + 1), &target_port)) {
    std::fprintf(stderr, "fabricctl add: expected HOSTPORT and TARGETIP:PORT\n");
    return 2;
  }
  std::string ip = target.substr(0, colon);
  if (ip.size() > 2 && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  m->set_host_port(host_port);
  m->set_target_ip(ip);
  m->set_target_port(target_port);
  m->set_host_ip(absl::GetFlag(FLAGS_host_ip));
  m->set_description(absl::GetFlag(FLAGS_description));
  m->mutable_owner()->set_kind(v1::OWNER_KIND_API);
  m->mutable_owner()->set_id(absl::GetFlag(FLAGS_owner));
  grpc::ClientContext ctx;
  v1::CreateMappingResponse r;
  grpc::Status s = stub.CreateMapping(&ctx, req, &r);
  if (!s.ok()) return Fail("add", s);
  std::printf("%s %s host port %u -> %s:%u\n", r.mapping().id().c_str(),
              proto.c_str(), r.mapping().host_port(), ip.c_str(), target_port);
  return 0;
}

int Diagnose(v1::AgentService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::DiagnoseResponse r;
  grpc::Status s = stub.Diagnose(&ctx, v1::DiagnoseRequest(), &r);
  if (!s.ok()) return Fail("diagnose", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(r).c_str());
    return r.healthy() ? 0 : 1;
  }
  std::printf("%s\n", r.healthy() ? "healthy: the kernel holds exactly what the store asks for"
                                   : "NEEDS ATTENTION:");
  for (const std::string& f : r.findings()) std::printf("  ! %s\n", f.c_str());
  for (const std::string& f : r.facts()) std::printf("  - %s\n", f.c_str());
  return r.healthy() ? 0 : 1;
}

int Backup(v1::AgentService::Stub& stub, const std::vector<char*>& args) {
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: fabricctl backup PATH\n");
    return 2;
  }
  std::string path = args[1];
  if (path[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) path = absl::StrCat(cwd, "/", path);
  }
  grpc::ClientContext ctx;
  v1::BackupRequest req;
  req.set_path(path);
  v1::BackupResponse r;
  grpc::Status s = stub.Backup(&ctx, req, &r);
  if (!s.ok()) return Fail("backup", s);
  std::printf("wrote %s: %u attachment(s), %u mapping(s)\n", path.c_str(),
              r.attachments(), r.mappings());
  return 0;
}

int Remove(v1::MappingService::Stub& stub, const std::vector<char*>& args) {
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: fabricctl remove ID\n");
    return 2;
  }
  grpc::ClientContext ctx;
  v1::DeleteMappingRequest req;
  req.set_id(args[1]);
  v1::DeleteMappingResponse r;
  grpc::Status s = stub.DeleteMapping(&ctx, req, &r);
  if (!s.ok()) return Fail("remove", s);
  std::printf("removed %s\n", args[1]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "fabricctl [--socket PATH] list|status|add|remove ...\n"
      "  list [--json]                      mappings of every owner\n"
      "  status [--json]                    agent health\n"
      "  add PROTO HOSTPORT TARGETIP:PORT   create an API mapping (HOSTPORT 0 allocates)\n"
      "  remove ID                          delete an API mapping\n"
      "  diagnose [--json]                  compare kernel and store; exit 1 if not healthy\n"
      "  health [--ready]                   exit 0 if the agent answers (--ready: and is\n"
      "                                     ready: kernel reconciled), else 1 (probes)\n"
      "  backup PATH                        snapshot the agent's state (start an\n"
      "                                     agent from it: PATH as <state_dir>/state.db)");
  absl::FlagsUsageConfig usage;
  usage.version_string = [] { return absl::StrCat("fabricctl ", fabric::kVersion, "\n"); };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  args.erase(args.begin());
  if (args.empty()) {
    std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  std::string socket = absl::GetFlag(FLAGS_socket);
  if (access(socket.c_str(), F_OK) != 0) {
    std::fprintf(stderr, "fabricctl: no agent socket at %s (is fabric-agent running? --socket)\n",
                 socket.c_str());
    return args[0] == std::string("health") ? 1 : 3;
  }
  auto channel = grpc::CreateChannel(absl::StrCat("unix:", socket),
                                     grpc::InsecureChannelCredentials());
  std::string cmd = args[0];
  if (cmd == "list") {
    auto stub = v1::MappingService::NewStub(channel);
    return List(*stub);
  }
  if (cmd == "status") {
    auto stub = v1::AgentService::NewStub(channel);
    return Status(*stub);
  }
  if (cmd == "add") {
    auto stub = v1::MappingService::NewStub(channel);
    return Add(*stub, args);
  }
  if (cmd == "health") {
    auto stub = v1::AgentService::NewStub(channel);
    return Health(*stub);
  }
  if (cmd == "diagnose") {
    auto stub = v1::AgentService::NewStub(channel);
    return Diagnose(*stub);
  }
  if (cmd == "backup") {
    auto stub = v1::AgentService::NewStub(channel);
    return Backup(*stub, args);
  }
  if (cmd == "remove") {
    auto stub = v1::MappingService::NewStub(channel);
    return Remove(*stub, args);
  }
  std::fprintf(stderr, "fabricctl: unknown command \"%s\"\n%s\n", cmd.c_str(),
               absl::ProgramUsageMessage().data());
  return 2;
}
