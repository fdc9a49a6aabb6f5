// fabricctl's commands against an in-process gRPC server: fake
// implementations of the three v1 services on a unix socket in a short
// directory under /tmp (sun_path holds 108 bytes; TEST_TMPDIR is longer).
#include "agent/ctl/ctl.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace fabric::agent::ctl {
namespace {

namespace v1 = ::fabric::nat::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;

constexpr int64_t kNow = 1700000000;  // 2023-11-14 22:13:20 UTC
absl::Time FixedNow() { return absl::FromUnixSeconds(kNow); }

google::protobuf::Timestamp At(int64_t seconds) {
  google::protobuf::Timestamp t;
  t.set_seconds(seconds);
  return t;
}

class FakeMappings : public v1::MappingService::Service {
 public:
  // In pages of at most two whatever the client asks (a server may send
  // fewer than page_size), so that every list below goes through the
  // client's paging; the token is the next position.
  grpc::Status ListMappings(grpc::ServerContext*, const v1::ListMappingsRequest* req,
                            v1::ListMappingsResponse* r) override {
    std::lock_guard<std::mutex> l(mu);
    ++list_calls;
    if (!status.ok()) return status;
    int from = req->page_token().empty() ? 0 : std::stoi(req->page_token());
    int n = req->page_size() == 0 ? list.mappings_size() : std::min(req->page_size(), 2);
    for (int i = from; i < list.mappings_size() && i < from + n; ++i) {
      *r->add_mappings() = list.mappings(i);
    }
    if (from + n < list.mappings_size()) r->set_next_page_token(std::to_string(from + n));
    return grpc::Status::OK;
  }
  grpc::Status CreateMapping(grpc::ServerContext*, const v1::CreateMappingRequest* req,
                             v1::CreateMappingResponse* r) override {
    std::lock_guard<std::mutex> l(mu);
    created.push_back(*req);
    if (!status.ok()) return status;
    *r->mutable_mapping() = req->mapping();
    r->mutable_mapping()->set_id("m-7");
    if (req->mapping().host_port() == 0) r->mutable_mapping()->set_host_port(40000);
    return grpc::Status::OK;
  }
  grpc::Status DeleteMapping(grpc::ServerContext*, const v1::DeleteMappingRequest* req,
                             v1::DeleteMappingResponse*) override {
    std::lock_guard<std::mutex> l(mu);
    deleted.push_back(req->id());
    return status;
  }

  std::mutex mu;
  grpc::Status status;  // what every call answers
  v1::ListMappingsResponse list;
  int list_calls = 0;
  std::vector<v1::CreateMappingRequest> created;
  std::vector<std::string> deleted;
};

class FakeAgent : public v1::AgentService::Service {
 public:
  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* r) override {
    std::lock_guard<std::mutex> l(mu);
    *r = get_status;
    return status;
  }
  grpc::Status Diagnose(grpc::ServerContext*, const v1::DiagnoseRequest* req,
                        v1::DiagnoseResponse* r) override {
    std::lock_guard<std::mutex> l(mu);
    diagnose_full.push_back(req->full());
    *r = diagnose;
    return status;
  }
  grpc::Status Backup(grpc::ServerContext*, const v1::BackupRequest* req,
                      v1::BackupResponse* r) override {
    std::lock_guard<std::mutex> l(mu);
    backups.push_back(req->path());
    r->set_attachments(2);
    r->set_mappings(3);
    return status;
  }

  std::mutex mu;
  grpc::Status status;
  v1::GetStatusResponse get_status;
  std::vector<bool> diagnose_full;
  v1::DiagnoseResponse diagnose;
  std::vector<std::string> backups;
};

// fabricctl calls none of its methods; registered so the server is the
// agent's whole v1 surface.
class FakeAttachments : public v1::AttachmentService::Service {};

struct Result {
  int code;
  std::string out;
  std::string err;
};

class CtlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/fctl-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr) << std::strerror(errno);
    dir_ = dir;
    options_.socket = dir_ + "/a.sock";
    // No store there: when the agent does not answer, list, status and
    // diagnose find nothing to read offline either (offline_test.cc reads).
    options_.state_dir = dir_ + "/state";
    options_.now = FixedNow;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + options_.socket, grpc::InsecureServerCredentials());
    builder.RegisterService(&attachments_);
    builder.RegisterService(&mappings_);
    builder.RegisterService(&agent_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
    std::string rm = "rm -rf '" + dir_ + "'";
    if (!dir_.empty()) (void)system(rm.c_str());
  }

  Result Ctl(const std::vector<std::string>& args) { return Ctl(args, options_); }
  Result Ctl(const std::vector<std::string>& args, const Options& options) {
    std::ostringstream out, err;
    int code = ctl::Run(args, options, out, err);
    return {code, out.str(), err.str()};
  }

  void SetMappings() {
    std::lock_guard<std::mutex> l(mappings_.mu);
    v1::PortMapping* m = mappings_.list.add_mappings();
    m->set_id("m-1");
    m->mutable_owner()->set_kind(v1::OWNER_KIND_CNI);
    m->mutable_owner()->set_id("3f2a9b1c0d2e");
    m->set_protocol(v1::PROTOCOL_TCP);
    m->set_host_port(8080);
    m->set_target_ip("10.22.0.5");
    m->set_target_port(80);
    m->set_upstream("203.0.113.7:8080 via pcp, renews in 28m");
    m = mappings_.list.add_mappings();
    m->set_id("m-2");
    m->mutable_owner()->set_kind(v1::OWNER_KIND_NATPMP);
    m->mutable_owner()->set_id("192.168.77.10");
    m->set_protocol(v1::PROTOCOL_UDP);
    m->set_host_ip("203.0.113.1");
    m->set_host_port(5353);
    m->set_target_ip("192.168.77.10");
    m->set_target_port(53);
    *m->mutable_expires_at() = At(kNow + 3605);
    m = mappings_.list.add_mappings();
    m->set_id("m-3");
    m->mutable_owner()->set_kind(v1::OWNER_KIND_API);
    m->mutable_owner()->set_id("web");
    m->set_protocol(v1::PROTOCOL_SCTP);
    m->set_host_port(9000);
    m->set_port_count(10);
    m->set_target_ip("fd00::5");
    m->set_target_port(9000);
    // Characters a hand-made JSON string would get wrong.
    m->set_description("say \"hi\" \\ \n\t\x01 caf\xc3\xa9");
  }

  void SetStatus(bool ready) {
    std::lock_guard<std::mutex> l(agent_.mu);
    v1::GetStatusResponse& s = agent_.get_status;
    s.set_ready(ready);
    if (!ready) s.set_reason("kernel not reconciled yet");
    s.set_version("0.3.0");
    s.set_backend("nftables");
    s.set_attachments(2);
    s.set_mappings(3);
    *s.mutable_started_at() = At(kNow);
    if (ready) {
      s.set_repairs(4);
      *s.mutable_last_repair_at() = At(kNow + 100);
    }
  }

  std::string dir_;
  Options options_;
  FakeAttachments attachments_;
  FakeMappings mappings_;
  FakeAgent agent_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(CtlTest, ListPrintsTheTable) {
  SetMappings();
  Result r = Ctl({"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out,
            "ID       OWNER   PROTO HOST                     TARGET                   EXPIRES    "
            "            OWNER ID\n"
            "m-1      cni     tcp   0.0.0.0:8080             10.22.0.5:80             -          "
            "            3f2a9b1c0d2e\n"
            "         upstream: 203.0.113.7:8080 via pcp, renews in 28m\n"
            "m-2      natpmp  udp   203.0.113.1:5353         192.168.77.10:53         2023-11-14 "
            "23:13:25 (1h5s) 192.168.77.10\n"
            "m-3      api     sctp  [::]:9000-9009           [fd00::5]:9000-9009      -          "
            "            web \"say \\\"hi\\\" \\\\ \\n\\t\\x01 caf\xc3\xa9\"\n"
            "3 mapping(s)\n");
  // Three mappings in pages of two: two calls.
  std::lock_guard<std::mutex> l(mappings_.mu);
  EXPECT_EQ(mappings_.list_calls, 2);
}

TEST_F(CtlTest, ListOfNothing) {
  Result r = Ctl({"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("\n0 mapping(s)\n"));
}

TEST_F(CtlTest, ListJsonParses) {
  SetMappings();
  Options o = options_;
  o.json = true;
  Result r = Ctl({"list"}, o);
  ASSERT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out);  // throws (fails the test) if not JSON
  ASSERT_EQ(j["mappings"].size(), 3u);
  const json& pmp = j["mappings"][1];
  EXPECT_EQ(pmp["id"], "m-2");
  EXPECT_EQ(pmp["owner"]["kind"], "OWNER_KIND_NATPMP");
  EXPECT_EQ(pmp["owner"]["id"], "192.168.77.10");
  EXPECT_EQ(pmp["protocol"], "PROTOCOL_UDP");
  EXPECT_EQ(pmp["host_ip"], "203.0.113.1");
  EXPECT_EQ(pmp["host_port"], 5353);
  EXPECT_EQ(pmp["target_port"], 53);
  EXPECT_EQ(pmp["expires_at"], "2023-11-14T23:13:25Z");
  EXPECT_EQ(j["mappings"][2]["description"], "say \"hi\" \\ \n\t\x01 caf\xc3\xa9");
  EXPECT_EQ(j["mappings"][2]["port_count"], 10);
}

TEST_F(CtlTest, ListJsonOfNothingIsAnObject) {
  Options o = options_;
  o.json = true;
  Result r = Ctl({"list"}, o);
  ASSERT_EQ(r.code, 0);
  json j = json::parse(r.out);
  EXPECT_TRUE(j.is_object());
  EXPECT_EQ(j.value("mappings", json::array()).size(), 0u);
}

TEST_F(CtlTest, StatusReady) {
  SetStatus(true);
  Result r = Ctl({"status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out,
            "ready:        yes\n"
            "backend:      nftables\n"
            "attachments:  2\n"
            "mappings:     3\n"
            "started:      2023-11-14T22:13:20Z\n"
            "repairs:      4 (last 2023-11-14T22:15:00Z)\n");
}

TEST_F(CtlTest, StatusNotReadyExitsTwo) {
  SetStatus(false);
  Result r = Ctl({"status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out,
            "ready:        no (kernel not reconciled yet)\n"
            "backend:      nftables\n"
            "attachments:  2\n"
            "mappings:     3\n"
            "started:      2023-11-14T22:13:20Z\n"
            "repairs:      0\n");
  Options o = options_;
  o.json = true;
  r = Ctl({"status"}, o);
  EXPECT_EQ(r.code, 2);
  json j = json::parse(r.out);
  EXPECT_EQ(j.value("ready", false), false);
  EXPECT_EQ(j["reason"], "kernel not reconciled yet");
  EXPECT_EQ(j["version"], "0.3.0");
}

TEST_F(CtlTest, StatusJsonReady) {
  SetStatus(true);
  Options o = options_;
  o.json = true;
  Result r = Ctl({"status"}, o);
  EXPECT_EQ(r.code, 0);
  json j = json::parse(r.out);
  EXPECT_EQ(j["ready"], true);
  EXPECT_EQ(j["repairs"], "4");  // uint64: a string in protobuf's JSON
  EXPECT_THAT(r.out, HasSubstr("\"version\": \"0.3.0\""));  // agent_test greps this
}

TEST_F(CtlTest, AddSendsAnApiMapping) {
  Options o = options_;
  o.owner = "web";
  o.host_ip = "192.0.2.1";
  o.description = "the web server";
  Result r = Ctl({"add", "tcp", "8080", "10.1.0.5:80"}, o);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "m-7 tcp host port 8080 -> 10.1.0.5:80\n");
  std::lock_guard<std::mutex> l(mappings_.mu);
  ASSERT_EQ(mappings_.created.size(), 1u);
  const v1::PortMapping& m = mappings_.created[0].mapping();
  EXPECT_EQ(m.protocol(), v1::PROTOCOL_TCP);
  EXPECT_EQ(m.host_port(), 8080u);
  EXPECT_EQ(m.host_ip(), "192.0.2.1");
  EXPECT_EQ(m.target_ip(), "10.1.0.5");
  EXPECT_EQ(m.target_port(), 80u);
  EXPECT_EQ(m.description(), "the web server");
  EXPECT_EQ(m.owner().kind(), v1::OWNER_KIND_API);
  EXPECT_EQ(m.owner().id(), "web");
}

TEST_F(CtlTest, AddAllocatedPortAndBracketedV6Target) {
  Result r = Ctl({"add", "udp", "0", "[fd00::5]:53"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "m-7 udp host port 40000 -> fd00::5:53\n");
  std::lock_guard<std::mutex> l(mappings_.mu);
  ASSERT_EQ(mappings_.created.size(), 1u);
  EXPECT_EQ(mappings_.created[0].mapping().target_ip(), "fd00::5");
  EXPECT_EQ(mappings_.created[0].mapping().owner().id(), "fabricctl");
}

TEST_F(CtlTest, AddUsageErrors) {
  Result r = Ctl({"add", "tcp", "8080"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "usage: fabricctl add tcp|udp|sctp HOSTPORT TARGETIP:PORT\n");
  r = Ctl({"add", "tcp", "http", "10.1.0.5:80"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "fabricctl add: expected HOSTPORT and TARGETIP:PORT\n");
  r = Ctl({"add", "tcp", "8080", "10.1.0.5"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "fabricctl add: expected HOSTPORT and TARGETIP:PORT\n");
  std::lock_guard<std::mutex> l(mappings_.mu);
  EXPECT_TRUE(mappings_.created.empty());
}

TEST_F(CtlTest, AddRefusedExitsOneWithTheAgentsMessage) {
  {
    std::lock_guard<std::mutex> l(mappings_.mu);
    mappings_.status = grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                                    "host port 8080/tcp on 0.0.0.0 is held by api web");
  }
  Result r = Ctl({"add", "tcp", "8080", "10.1.0.6:80"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "fabricctl: add: host port 8080/tcp on 0.0.0.0 is held by api web\n");
}

TEST_F(CtlTest, UnavailableIsExitThree) {
  {
    std::lock_guard<std::mutex> l(mappings_.mu);
    mappings_.status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down");
  }
  Result r = Ctl({"add", "tcp", "8080", "10.1.0.6:80"});
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.err, "fabricctl: add: shutting down\n");
  r = Ctl({"list"});
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.err, absl::StrCat("fabricctl: list: shutting down\nfabricctl: no store at ", dir_,
                                "/state/state.db to read instead (--state_dir: the agent's)\n"));
}

TEST_F(CtlTest, Remove) {
  Result r = Ctl({"remove", "m-2"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "removed m-2\n");
  {
    std::lock_guard<std::mutex> l(mappings_.mu);
    EXPECT_EQ(mappings_.deleted, std::vector<std::string>{"m-2"});
    mappings_.status = grpc::Status(grpc::StatusCode::NOT_FOUND, "no mapping m-9");
  }
  r = Ctl({"remove", "m-9"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "fabricctl: remove: no mapping m-9\n");
  r = Ctl({"remove"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "usage: fabricctl remove ID\n");
}

TEST_F(CtlTest, BackupMakesRelativePathsAbsolute) {
  Result r = Ctl({"backup", "/var/backups/state.db"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "wrote /var/backups/state.db: 2 attachment(s), 3 mapping(s)\n");
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  r = Ctl({"backup", "b.db"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, absl::StrCat("wrote ", cwd, "/b.db: 2 attachment(s), 3 mapping(s)\n"));
  {
    std::lock_guard<std::mutex> l(agent_.mu);
    EXPECT_EQ(agent_.backups,
              (std::vector<std::string>{"/var/backups/state.db", absl::StrCat(cwd, "/b.db")}));
  }
  r = Ctl({"backup"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "usage: fabricctl backup PATH\n");
}

TEST_F(CtlTest, DiagnoseHealthyAndNot) {
  {
    std::lock_guard<std::mutex> l(agent_.mu);
    agent_.diagnose.set_healthy(true);
    agent_.diagnose.add_facts("2 mapping(s)");
  }
  Result r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "healthy: the kernel holds exactly what the store asks for\n  - 2 mapping(s)\n");
  {
    std::lock_guard<std::mutex> l(agent_.mu);
    agent_.diagnose.set_healthy(false);
    agent_.diagnose.add_findings("kernel lacks 1 of 2 entries: tcp 0.0.0.0:8080 -> 10.1.0.5:80");
  }
  r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out,
            "NEEDS ATTENTION:\n"
            "  ! kernel lacks 1 of 2 entries: tcp 0.0.0.0:8080 -> 10.1.0.5:80\n"
            "  - 2 mapping(s)\n");
  Options o = options_;
  o.json = true;
  r = Ctl({"diagnose"}, o);
  EXPECT_EQ(r.code, 1);
  json j = json::parse(r.out);
  EXPECT_EQ(j["findings"].size(), 1u);
  EXPECT_EQ(j["facts"][0], "2 mapping(s)");
  o.json = false;
  o.full = true;
  r = Ctl({"diagnose"}, o);
  EXPECT_EQ(r.code, 1);
  std::lock_guard<std::mutex> l(agent_.mu);
  EXPECT_THAT(agent_.diagnose_full, ElementsAre(false, false, false, true));
}

TEST_F(CtlTest, Health) {
  SetStatus(true);
  Result r = Ctl({"health"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "ready\n");
  SetStatus(false);
  r = Ctl({"health"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "alive, not ready: kernel not reconciled yet\n");
  Options o = options_;
  o.ready = true;
  r = Ctl({"health"}, o);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "fabricctl: health: agent not ready: kernel not reconciled yet\n");
}

TEST_F(CtlTest, UsageAndUnknownCommand) {
  Result r = Ctl({});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, absl::StrCat(Usage(), "\n"));
  r = Ctl({"frob"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, StartsWith("fabricctl: unknown command \"frob\"\nfabricctl [--socket PATH]"));
}

TEST_F(CtlTest, AgentDownNamesTheSocket) {
  Options o = options_;
  o.socket = dir_ + "/none.sock";
  const std::string said = absl::StrCat("fabricctl: no agent socket at ", o.socket,
                                        " (is fabric-agent running? --socket)\n");
  for (const char* cmd : {"add", "remove", "backup"}) {
    Result r = Ctl({cmd}, o);
    EXPECT_EQ(r.code, 3) << cmd;
    EXPECT_EQ(r.err, said) << cmd;
    EXPECT_EQ(r.out, "") << cmd;
  }
  // These would read the store offline; there is none.
  for (const char* cmd : {"list", "status", "diagnose"}) {
    Result r = Ctl({cmd}, o);
    EXPECT_EQ(r.code, 3) << cmd;
    EXPECT_EQ(r.err, absl::StrCat(said, "fabricctl: no store at ", dir_,
                                  "/state/state.db to read instead (--state_dir: the agent's)\n"))
        << cmd;
    EXPECT_EQ(r.out, "") << cmd;
  }
  // Probes: not answering is 1.
  Result r = Ctl({"health"}, o);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, said);
  o.ready = true;
  EXPECT_EQ(Ctl({"health"}, o).code, 1);
}

TEST_F(CtlTest, StaleSocketFileIsAgentDown) {
  // A socket file nobody listens on (an agent killed with -9).
  Options o = options_;
  o.socket = dir_ + "/stale.sock";
  o.timeout = absl::Seconds(2);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, o.socket.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  Result r = Ctl({"list"}, o);
  EXPECT_EQ(r.code, 3);
  EXPECT_THAT(r.err, StartsWith("fabricctl: list: "));
  r = Ctl({"health"}, o);
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, StartsWith("fabricctl: health: agent does not answer: "));
}

}  // namespace
}  // namespace fabric::agent::ctl
