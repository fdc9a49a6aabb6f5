// fabricctl's offline list, status and diagnose (offline.h) against stores
// made by the real agent::Store in TEST_TMPDIR, with the socket pointing
// nowhere (or at a socket file nobody listens on) and the kernel given by
// the test. Every test also checks that the state dir is byte for byte and
// mtime for mtime what it was, with no file added.
#include "agent/ctl/offline.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/core/convert.h"
#include "agent/ctl/ctl.h"
#include "agent/ctl/store_reader.h"
#include "agent/store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace fabric::agent::ctl {
namespace {

namespace v1 = ::fabric::nat::v1;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;

constexpr int64_t kNow = 1700000000;  // 2023-11-14 22:13:20 UTC
absl::Time FixedNow() { return absl::FromUnixSeconds(kNow); }

struct Result {
  int code;
  std::string out;
  std::string err;
};

// name -> (content, mtime in ns) of every file in a directory.
using DirState = std::map<std::string, std::pair<std::string, int64_t>>;

DirState ReadDir(const std::string& dir) {
  DirState s;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return s;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = dir + "/" + name;
    std::ifstream f(path, std::ios::binary);
    std::stringstream text;
    text << f.rdbuf();
    struct stat st;
    stat(path.c_str(), &st);
    s[name] = {text.str(), st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec};
  }
  closedir(d);
  return s;
}

void SetMtime(const std::string& path, int64_t seconds) {
  timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

std::vector<v1::PortMapping> Mappings() {
  std::vector<v1::PortMapping> ms(3);
  ms[0].set_id("m-1");
  ms[0].mutable_owner()->set_kind(v1::OWNER_KIND_CNI);
  ms[0].mutable_owner()->set_id("3f2a9b1c0d2e/eth0/podnet");
  ms[0].set_protocol(v1::PROTOCOL_TCP);
  ms[0].set_host_port(8080);
  ms[0].set_target_ip("10.22.0.5");
  ms[0].set_target_port(80);
  ms[1].set_id("m-2");
  ms[1].mutable_owner()->set_kind(v1::OWNER_KIND_NATPMP);
  ms[1].mutable_owner()->set_id("192.168.77.10");
  ms[1].set_protocol(v1::PROTOCOL_UDP);
  ms[1].set_host_ip("203.0.113.1");
  ms[1].set_host_port(5353);
  ms[1].set_target_ip("192.168.77.10");
  ms[1].set_target_port(53);
  ms[1].mutable_expires_at()->set_seconds(kNow + 3605);
  ms[2].set_id("m-3");
  ms[2].mutable_owner()->set_kind(v1::OWNER_KIND_API);
  ms[2].mutable_owner()->set_id("web");
  ms[2].set_protocol(v1::PROTOCOL_SCTP);
  ms[2].set_host_port(9000);
  ms[2].set_port_count(10);
  ms[2].set_target_ip("fd00::5");
  ms[2].set_target_port(9000);
  ms[2].set_description("the web server");
  return ms;
}

StoreWrite Contents() {
  StoreWrite w;
  std::vector<v1::PortMapping> ms = Mappings();
  // Out of id order: the listing orders by id, as the agent's does.
  w.put_mappings = {ms[2], ms[0], ms[1]};
  v1::Attachment a;
  a.mutable_key()->set_container_id("3f2a9b1c0d2e");
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name("podnet");
  w.put_attachments.push_back(a);
  w.next_mapping_id = 4;
  return w;
}

// The DNAT entries the store's mappings ask for.
nat::RuleSet Desired() {
  nat::RuleSet r;
  for (const v1::PortMapping& m : Mappings()) {
    for (const nat::DnatElement& e : ToNatMapping(m).value().ToElements()) r.dnat.insert(e);
  }
  return r;
}

class OfflineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    ASSERT_NE(tmp, nullptr);
    state_ = absl::StrCat(tmp, "/", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                          "/state");
    ASSERT_EQ(system(("mkdir -p " + state_).c_str()), 0);
    chmod(state_.c_str(), 0700);
    options_.socket = state_ + "/../none.sock";
    options_.state_dir = state_;
    options_.now = FixedNow;
    kernel_.table_present = true;
    kernel_.layout_intact = true;
    kernel_.rules = Desired();
    options_.read_kernel = [this]() -> absl::StatusOr<nat::KernelState> {
      if (!kernel_status_.ok()) return kernel_status_;
      return kernel_;
    };
  }

  // A store with Contents(), closed as a stopping agent closes it; the lock
  // file an agent leaves; fixed mtimes.
  void MakeStore() {
    {
      auto store = Store::Open(state_);
      ASSERT_TRUE(store.ok()) << store.status();
      ASSERT_TRUE((*store)->Commit(Contents()).ok());
      store_id_ = (*store)->id();
    }
    std::ofstream(state_ + "/agent.lock")
        << "pid 4242, state dir " << state_ << ", socket " << options_.socket << "\n";
    SetMtime(state_ + "/agent.lock", kNow);
    SetMtime(state_ + "/state.db", kNow + 600);
    kernel_.owner = store_id_;
  }

  Result Ctl(const std::vector<std::string>& args) { return Ctl(args, options_); }
  Result Ctl(const std::vector<std::string>& args, const Options& options) {
    std::ostringstream out, err;
    int code = ctl::Run(args, options, out, err);
    return {code, out.str(), err.str()};
  }

  std::string Banner() const {
    return absl::StrCat("fabric-agent is not running: read from ", state_,
                        "/state.db (read-only)\n  no agent socket at ", options_.socket,
                        "; last started 2023-11-14 22:13:20 UTC (pid 4242, ", state_,
                        "/agent.lock); state last written 2023-11-14 22:23:20 UTC (state.db)\n");
  }

  std::string state_;
  std::string store_id_;
  Options options_;
  nat::KernelState kernel_;
  absl::Status kernel_status_;
};

TEST_F(OfflineTest, SchemaVersionIsTheAgents) {
  EXPECT_EQ(kKnownSchemaVersion, Store::kSchemaVersion);
}

TEST_F(OfflineTest, ListPrintsTheOnlineTableUnderTheHeader) {
  MakeStore();
  DirState before = ReadDir(state_);
  ASSERT_EQ(before.size(), 2u);  // state.db and agent.lock: no -wal, no -shm
  Result r = Ctl({"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out,
            Banner() +
                "ID       OWNER   PROTO HOST                     TARGET                   EXPIRES "
                "               OWNER ID\n"
                "m-1      cni     tcp   0.0.0.0:8080             10.22.0.5:80             -       "
                "               3f2a9b1c0d2e/eth0/podnet\n"
                "m-2      natpmp  udp   203.0.113.1:5353         192.168.77.10:53         "
                "2023-11-14 23:13:25 (1h5s) 192.168.77.10\n"
                "m-3      api     sctp  [::]:9000-9009           [fd00::5]:9000-9009      -       "
                "               web \"the web server\"\n"
                "3 mapping(s)\n");
  EXPECT_EQ(ReadDir(state_), before);
}

TEST_F(OfflineTest, ListJsonIsOneObjectWithTheHeaderOnStderr) {
  MakeStore();
  DirState before = ReadDir(state_);
  Options o = options_;
  o.json = true;
  Result r = Ctl({"list"}, o);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, Banner());
  json j = json::parse(r.out);
  ASSERT_EQ(j["mappings"].size(), 3u);
  EXPECT_EQ(j["mappings"][0]["id"], "m-1");
  EXPECT_EQ(j["mappings"][1]["owner"]["kind"], "OWNER_KIND_NATPMP");
  EXPECT_EQ(j["mappings"][1]["expires_at"], "2023-11-14T23:13:25Z");
  EXPECT_EQ(j["mappings"][2]["port_count"], 10);
  EXPECT_EQ(j["mappings"][2]["description"], "the web server");
  EXPECT_EQ(ReadDir(state_), before);
}

TEST_F(OfflineTest, StatusCountsFromTheStoreAndExitsZero) {
  MakeStore();
  DirState before = ReadDir(state_);
  Result r = Ctl({"status"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, Banner() +
                       "ready:        no (agent not running)\n"
                       "backend:      -\n"
                       "attachments:  1\n"
                       "mappings:     3\n"
                       "started:      2023-11-14T22:13:20Z\n"
                       "repairs:      - (counted by a running agent only)\n");
  Options o = options_;
  o.json = true;
  r = Ctl({"status"}, o);
  EXPECT_EQ(r.code, 0);
  json j = json::parse(r.out);
  EXPECT_FALSE(j.contains("ready"));  // false: proto3 JSON leaves it out, as online
  EXPECT_EQ(j["reason"], "agent not running");
  EXPECT_EQ(j["mappings"], 3);
  EXPECT_EQ(j["attachments"], 1);
  EXPECT_EQ(j["started_at"], "2023-11-14T22:13:20Z");
  EXPECT_FALSE(j.contains("repairs"));
  EXPECT_EQ(ReadDir(state_), before);
}

TEST_F(OfflineTest, DiagnoseInSyncExitsZero) {
  MakeStore();
  DirState before = ReadDir(state_);
  Result r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out,
            Banner() +
                "healthy: the kernel holds every DNAT entry the store asks for, and no other\n"
                "  - kernel table inet fabric_nat: 3 DNAT entries, 3 expected\n"
                "  - not compared offline (they follow the agent's flags): 0 masquerade, 0 "
                "hairpin, 0 localhost, 0 IPv6 firewall and 0 pinhole entries in the kernel\n"
                "  - store: 1 attachment(s), 3 mapping(s), 0 pinhole(s) (read offline; the "
                "kernel is this network namespace's nftables)\n");
  EXPECT_EQ(ReadDir(state_), before);
}

TEST_F(OfflineTest, DiagnoseNamesMissingAndExtraEntries) {
  MakeStore();
  kernel_.rules.dnat.erase(kernel_.rules.dnat.begin());  // m-1's
  v1::PortMapping stray = Mappings()[0];
  stray.set_host_port(8081);
  kernel_.rules.dnat.insert(ToNatMapping(stray).value().ToElements()[0]);
  kernel_.rules.masquerade.insert(nat::Prefix::Parse("10.22.0.0/16").value());
  Result r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, StartsWith(Banner() + "NEEDS ATTENTION:\n"
                                           "  ! kernel lacks 1 of 3 DNAT entries the store asks "
                                           "for: tcp 0.0.0.0:8080 -> 10.22.0.5:80; the agent "
                                           "restores them when it starts\n"
                                           "  ! kernel holds 1 DNAT entry the store does not "
                                           "know: tcp 0.0.0.0:8081 -> 10.22.0.5:80; the agent "
                                           "removes them when it starts\n"));
  EXPECT_THAT(r.out, HasSubstr("1 masquerade, 0 hairpin"));
  Options o = options_;
  o.json = true;
  r = Ctl({"diagnose"}, o);
  EXPECT_EQ(r.code, 1);
  json j = json::parse(r.out);
  EXPECT_FALSE(j.contains("healthy"));  // false
  EXPECT_EQ(j["findings"].size(), 2u);
}

TEST_F(OfflineTest, DiagnoseFindsNoTableAnotherOwnerOrNoKernel) {
  MakeStore();
  DirState before = ReadDir(state_);
  kernel_ = nat::KernelState();
  Result r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("  ! the kernel has no table inet fabric_nat: it lacks all 3 DNAT "
                               "entries the store asks for (tcp 0.0.0.0:8080 -> 10.22.0.5:80, "
                               "udp 203.0.113.1:5353 -> 192.168.77.10:53, sctp "
                               "[::]:9000-9009 -> [fd00::5]); the agent rebuilds it when it "
                               "starts\n"));
  kernel_.table_present = true;
  kernel_.layout_intact = true;
  kernel_.rules = Desired();
  kernel_.owner = "fabric-nat-store-0000";
  r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("  ! the kernel's table belongs to another agent's "
                                            "state (fabric-nat-store-0000; this store's is ",
                                            store_id_, ")")));
  kernel_status_ = absl::PermissionDeniedError("netlink: Operation not permitted");
  r = Ctl({"diagnose"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("  ! cannot read the kernel's table inet fabric_nat: netlink: "
                               "Operation not permitted (run fabricctl as root in the agent's "
                               "network namespace)\n"));
  EXPECT_EQ(ReadDir(state_), before);
}

// An agent killed with -9 leaves its last commits in state.db-wal, next to
// its -shm: the offline read sees them and changes neither file.
TEST_F(OfflineTest, ReadsTheWalOfAKilledAgentWithoutTouchingIt) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto store = Store::Open(state_);
    if (!store.ok() || !(*store)->Commit(Contents()).ok()) _exit(1);
    _exit(0);  // no close: as after SIGKILL
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  DirState before = ReadDir(state_);
  ASSERT_EQ(before.count("state.db-wal"), 1u);
  ASSERT_EQ(before.count("state.db-shm"), 1u);
  ASSERT_GT(before["state.db-wal"].first.size(), 0u);
  Result r = Ctl({"list"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("state last written "));
  EXPECT_THAT(r.out, HasSubstr("(state.db-wal)\n"));
  EXPECT_THAT(r.out, HasSubstr("no agent start recorded (no " + state_ + "/agent.lock)"));
  EXPECT_THAT(r.out, HasSubstr("\n3 mapping(s)\n"));
  EXPECT_EQ(ReadDir(state_), before);
}

TEST_F(OfflineTest, AHeldLockSaysTheAgentDoesNotAnswer) {
  MakeStore();
  int fd = open((state_ + "/agent.lock").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  EXPECT_EQ(FlockHolder(state_ + "/agent.lock"), getpid());
  Result r = Ctl({"status"});
  close(fd);
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, StartsWith(absl::StrCat("fabric-agent does not answer, but pid ", getpid(),
                                             " holds ", state_, "/agent.lock: read from ")));
  EXPECT_THAT(r.out, HasSubstr("ready:        no (agent does not answer)\n"));
  EXPECT_EQ(FlockHolder(state_ + "/agent.lock"), 0);
}

// A socket file nobody listens on (UNAVAILABLE) is read offline too, and an
// agent that served another socket is named.
TEST_F(OfflineTest, StaleSocketIsReadOffline) {
  MakeStore();
  char dir[] = "/tmp/foff-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  Options o = options_;
  o.socket = std::string(dir) + "/stale.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, o.socket.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  Result r = Ctl({"list"}, o);
  unlink(o.socket.c_str());
  rmdir(dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("\n  the agent socket ", o.socket,
                                            " does not answer (")));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("/agent.lock) serving ", options_.socket,
                                            " (--socket); state last written")));
  EXPECT_THAT(r.out, HasSubstr("\n3 mapping(s)\n"));
}

TEST_F(OfflineTest, NoStoreOrABadOneIsExitThreeWithBothReasons) {
  Options o = options_;
  o.state_dir = state_ + "/missing";
  const std::string socket_line = absl::StrCat("fabricctl: no agent socket at ", o.socket,
                                               " (is fabric-agent running? --socket)\n");
  for (const char* cmd : {"list", "status", "diagnose"}) {
    Result r = Ctl({cmd}, o);
    EXPECT_EQ(r.code, 3) << cmd;
    EXPECT_EQ(r.out, "") << cmd;
    EXPECT_EQ(r.err, absl::StrCat(socket_line, "fabricctl: no store at ", o.state_dir,
                                  "/state.db to read instead (--state_dir: the agent's)\n"))
        << cmd;
  }
  std::ofstream(state_ + "/state.db") << std::string(8192, 'x');
  Result r = Ctl({"list"});
  EXPECT_EQ(r.code, 3);
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("fabricctl: ", state_,
                                            "/state.db: not a readable SQLite database (")));
  // Other commands never read the store.
  r = Ctl({"remove", "m-1"});
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.err, socket_line);
}

TEST_F(OfflineTest, ANewerSchemaIsRefusedByName) {
  MakeStore();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_ + "/state.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=9", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  Result r = Ctl({"status"});
  EXPECT_EQ(r.code, 3);
  EXPECT_THAT(r.err, HasSubstr("has schema version 9, newer than this fabricctl's (2): use the "
                               "fabricctl of the agent that wrote it"));
}

}  // namespace
}  // namespace fabric::agent::ctl
