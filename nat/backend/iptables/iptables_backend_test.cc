// Kernel tests for the iptables (libiptc, legacy x_tables) backend: the same
// behaviour as the nftables backend, proven with real packets in namespaces
// made here.
//
// (topology: testing/backend_topology.h)
#include "nat/backend/iptables/iptables_backend.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/iptables/change_watcher.h"
#include "testing/backend_topology.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::nat {
namespace {

using ::fabric::testing::Dnat;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;
using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

class IptablesBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    ASSERT_OK_AND_ASSIGN(testing::BackendTopology t, testing::MakeBackendTopology());
    host_ = std::move(t.host);
    outside_ = std::move(t.outside);
    container_ = std::move(t.container);
    // libiptc works on the namespace of the calling thread, per call.
    ASSERT_OK_AND_ASSIGN(enter_, ScopedNetns::Enter(*host_));
    ASSERT_OK_AND_ASSIGN(backend_, IptablesBackend::Create());
  }
  void TearDown() override { enter_.reset(); }

  // Everything both families' legacy tables hold, as iptables-save
  // prints it, without its dated comments and the built-in chains' packet
  // counters (IPv6 neighbour discovery moves them).
  std::string SaveAll() {
    absl::StatusOr<std::string> out = host_->Exec(
        "(iptables-legacy-save; ip6tables-legacy-save) | grep -v '^#' | "
        "sed 's/ \\[[0-9]*:[0-9]*\\]$//'");
    return out.ok() ? *out : std::string(out.status().message());
  }

  absl::StatusOr<std::unique_ptr<IptablesBackend>> Backend(IptablesOptions options) {
    return IptablesBackend::Create(std::move(options));
  }

  std::unique_ptr<Netns> host_, outside_, container_;
  std::unique_ptr<ScopedNetns> enter_;
  std::unique_ptr<IptablesBackend> backend_;
};

TEST_F(IptablesBackendTest, PublishedPortsForwardAndReadBackExactly) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  ASSERT_OK(testing::Serve(*container_, "udp", 53, "dns"));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80),
                Dnat(Protocol::kTcp, Ip("192.0.2.10"), 9090, "10.99.0.2", 80)};
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "udp", "192.0.2.1", 5353), IsOkAndHolds("dns 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "2001:db8::1", 8080),
              IsOkAndHolds("web 2001:db8::2\n"));
  // A host-address mapping answers only on that address.
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.10", 9090), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 9090, 0.5).ok());
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
  // What iptables itself shows.
  EXPECT_THAT(host_->Exec("iptables-legacy-save -t nat"),
              IsOkAndHolds(HasSubstr("-A FABRIC-HOSTPORTS -p tcp -m tcp --dport 8080 -j DNAT "
                                     "--to-destination 10.99.0.2:80")));
}

TEST_F(IptablesBackendTest, PortRangesMasqueradeHairpinLocalhost) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 7001, "range"));
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  ASSERT_OK(testing::Serve(*outside_, "tcp", 9999, "outside"));
  PortMapping range;
  range.protocol = Protocol::kTcp;
  range.host_port = 7000;
  range.port_count = 3;
  range.target_ip = Ip("10.99.0.2");
  range.target_port = 7000;
  RuleSet rules;
  for (const DnatElement& e : range.ToElements()) rules.dnat.insert(e);
  rules.dnat.insert(Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80));
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24")};
  rules.hairpin = {*Prefix::Parse("10.99.0.0/24")};
  rules.localhost_interfaces = {"ctr0"};
  ASSERT_OK(backend_->Replace(rules));
  EXPECT_THAT(testing::Ask(*outside_, "tcp", "192.0.2.1", 7001), IsOkAndHolds("range 192.0.2.2\n"));
  EXPECT_THAT(testing::Ask(*container_, "tcp", "192.0.2.2", 9999),
              IsOkAndHolds("outside 192.0.2.1\n"));
  EXPECT_THAT(testing::Ask(*container_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  EXPECT_THAT(testing::Ask(*host_, "tcp", "127.0.0.1", 8080), IsOkAndHolds("web 10.99.0.1\n"));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  EXPECT_EQ(state.rules, rules) << state.rules.DebugString();
}

TEST_F(IptablesBackendTest, BatchesAreAllOrNothing) {
  ASSERT_OK(testing::Serve(*container_, "tcp", 80, "web"));
  DnatElement present = Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80);
  DnatElement fresh = Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53);
  RuleSet rules;
  rules.dnat = {present};
  ASSERT_OK(backend_->Replace(rules));
  Batch dup;
  dup.add.dnat = {present, fresh};
  EXPECT_THAT(backend_->Apply(dup), StatusIs(absl::StatusCode::kAlreadyExists,
                                             HasSubstr("tcp 0.0.0.0:8080 -> 10.99.0.2:80")));
  Batch missing;
  missing.remove.dnat = {fresh};
  EXPECT_THAT(backend_->Apply(missing), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_EQ(state.rules, rules);
  Batch remove;
  remove.remove.dnat = {present};
  ASSERT_OK(backend_->Apply(remove));
  EXPECT_FALSE(testing::Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5).ok());
}

TEST_F(IptablesBackendTest, ThousandMappingsReadBackAndForeignChangesShow) {
  RuleSet rules;
  for (int i = 0; i < 1000; ++i) {
    std::string target = absl::StrCat("10.99.", 1 + i / 250, ".", 1 + i % 250);
    rules.dnat.insert(
        Dnat(i % 2 ? Protocol::kUdp : Protocol::kTcp, std::nullopt, 20000 + i, target.c_str(), 80));
  }
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.rules == rules);
  ASSERT_OK(
      host_->Exec("iptables-legacy -t nat -D PREROUTING -m addrtype --dst-type LOCAL "
                  "-j FABRIC-HOSTPORTS"));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_FALSE(state.layout_intact);
  EXPECT_THAT(state.problem, HasSubstr("jump PREROUTING -> FABRIC-HOSTPORTS missing"));
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK_AND_ASSIGN(state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
}

TEST_F(IptablesBackendTest, DeleteTableTouchesNothingElse) {
  ASSERT_OK(
      host_->Exec("iptables-legacy -t nat -A PREROUTING -p tcp --dport 22 -j ACCEPT && "
                  "iptables-legacy -A FORWARD -s 10.0.0.0/8 -j ACCEPT"));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  ASSERT_OK(backend_->Replace(rules));
  ASSERT_OK(backend_->DeleteTable());
  ASSERT_OK_AND_ASSIGN(std::string nat, host_->Exec("iptables-legacy-save -t nat"));
  EXPECT_THAT(nat, Not(HasSubstr("FABRIC")));
  EXPECT_THAT(nat, HasSubstr("-A PREROUTING -p tcp -m tcp --dport 22 -j ACCEPT"));
  EXPECT_THAT(host_->Exec("iptables-legacy-save -t filter"),
              IsOkAndHolds(HasSubstr("-A FORWARD -s 10.0.0.0/8 -j ACCEPT")));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_FALSE(state.table_present);
}

// Fails the commit numbered `fail_at` (1 = the first, rollbacks counted
// too), before libiptc's commit or after it has landed.
class FailingCommitter : public TableCommitter {
 public:
  FailingCommitter(int fail_at, bool after_landing, int fail_also = 0)
      : fail_at_(fail_at), fail_also_(fail_also), after_landing_(after_landing) {}
  absl::Status Commit(Family family, const std::string& table,
                      const std::function<absl::Status()>& commit) override {
    ++count_;
    log_.push_back(absl::StrCat(FamilyName(family), " ", table));
    if (count_ != fail_at_ && count_ != fail_also_) return commit();
    if (after_landing_) {
      if (absl::Status s = commit(); !s.ok()) return s;
    }
    return absl::InternalError(absl::StrCat("injected failure of commit ", count_));
  }
  int count() const { return count_; }
  const std::vector<std::string>& log() const { return log_; }

 private:
  const int fail_at_, fail_also_;
  const bool after_landing_;
  int count_ = 0;
  std::vector<std::string> log_;
};

TEST_F(IptablesBackendTest, AFailedCommitRollsBackEveryTableBeforeIt) {
  // Someone else's rules, around ours.
  ASSERT_OK(
      host_->Exec("iptables-legacy -t nat -A PREROUTING -p tcp --dport 22 -j ACCEPT && "
                  "iptables-legacy -A FORWARD -s 10.0.0.0/8 -j ACCEPT && "
                  "ip6tables-legacy -t nat -A POSTROUTING -s fd00:1::/64 -j ACCEPT"));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80)};
  rules.masquerade = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("fd00:99::/64")};
  RuleSet other = rules;
  other.dnat = {Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53),
                Dnat(Protocol::kUdp, std::nullopt, 5353, "fd00:99::2", 53)};
  other.hairpin = {*Prefix::Parse("10.99.0.0/24"), *Prefix::Parse("fd00:99::/64")};
  Batch both;  // changes the IPv4 and the IPv6 nat table
  both.add.dnat = other.dnat;
  both.remove.masquerade = rules.masquerade;

  // From nothing: a first Replace that fails leaves no chain and no jump.
  // (A read first: the kernel makes a namespace's table when it is first
  // used, which iptables-save would show as a difference.)
  ASSERT_OK(backend_->Read().status());
  std::string empty = SaveAll();
  for (int n = 1; n <= 4; ++n) {
    for (bool landed : {false, true}) {
      FailingCommitter fail(n, landed);
      IptablesOptions options;
      options.committer = &fail;
      ASSERT_OK_AND_ASSIGN(auto backend, Backend(options));
      EXPECT_THAT(backend->Replace(rules),
                  StatusIs(absl::StatusCode::kInternal,
                           HasSubstr(absl::StrCat("injected failure of commit ", n))))
          << n << " " << landed;
      EXPECT_EQ(SaveAll(), empty) << "commit " << n << (landed ? " landed" : "");
    }
  }
  ASSERT_OK(backend_->Replace(rules));
  std::string before = SaveAll();
  ASSERT_THAT(before, HasSubstr("FABRIC-HOSTPORTS"));

  // Replace: four commits; Apply of `both`: two.
  for (int n = 1; n <= 4; ++n) {
    for (bool landed : {false, true}) {
      SCOPED_TRACE(absl::StrCat("commit ", n, landed ? " landed, then failed" : " failed"));
      FailingCommitter fail(n, landed);
      IptablesOptions options;
      options.committer = &fail;
      ASSERT_OK_AND_ASSIGN(auto backend, Backend(options));
      absl::Status s = backend->Replace(other);
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kInternal, HasSubstr("nothing changed")));
      // The failed commit and each before it are written back, newest first.
      EXPECT_EQ(fail.count(), n + n) << absl::StrJoin(fail.log(), ", ");
      EXPECT_EQ(SaveAll(), before);
      if (n <= 2) {
        FailingCommitter fail_apply(n, landed);
        options.committer = &fail_apply;
        ASSERT_OK_AND_ASSIGN(backend, Backend(options));
        EXPECT_THAT(backend->Apply(both), StatusIs(absl::StatusCode::kInternal));
        EXPECT_EQ(fail_apply.count(), n + n) << absl::StrJoin(fail_apply.log(), ", ");
        EXPECT_EQ(SaveAll(), before);
      }
    }
  }
  // The order: IPv4 nat, IPv6 nat, IPv4 filter, IPv6 filter.
  FailingCommitter fail_last(4, /*after_landing=*/false);
  IptablesOptions options;
  options.committer = &fail_last;
  ASSERT_OK_AND_ASSIGN(auto backend, Backend(options));
  EXPECT_THAT(backend->Replace(other),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("rolled back ipv4 filter, ipv6 nat, ipv4 nat; nothing changed")));
  EXPECT_THAT(fail_last.log(),
              ::testing::ElementsAre("ipv4 nat", "ipv6 nat", "ipv4 filter", "ipv6 filter",
                                     "ipv6 filter", "ipv4 filter", "ipv6 nat", "ipv4 nat"));

  // A rollback that fails too says which table is left changed.
  FailingCommitter fail_twice(2, /*after_landing=*/true, /*fail_also=*/4);
  options.committer = &fail_twice;
  ASSERT_OK_AND_ASSIGN(backend, Backend(options));
  EXPECT_THAT(backend->Apply(both), StatusIs(absl::StatusCode::kInternal,
                                             HasSubstr("rollback failed, left changed: ipv4 nat")));
  ASSERT_OK(backend_->Replace(rules));

  // And without failures both go through.
  ASSERT_OK(backend_->Apply(both));
  ASSERT_OK_AND_ASSIGN(KernelState state, backend_->Read());
  EXPECT_TRUE(state.layout_intact) << state.problem;
  RuleSet expected = rules;
  ASSERT_OK(ApplyBatch(both, &expected));
  EXPECT_EQ(state.rules, expected);
}

// A process other than this one holding `path` locked until killed.
pid_t HoldLock(const std::string& path) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(path.c_str(), O_RDONLY | O_CREAT, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(1);
    for (;;) pause();
  }
  // Wait until it holds it.
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<std::unique_ptr<XtablesLock>> probe =
        XtablesLock::Acquire(path, absl::ZeroDuration());
    if (!probe.ok()) break;
    probe->reset();
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pid;
}

TEST_F(IptablesBackendTest, WaitsForTheXtablesLockThenFailsNamingTheHolder) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  ASSERT_NE(tmp, nullptr);
  std::string path = absl::StrCat(tmp, "/xtables.lock");
  IptablesOptions options;
  options.lock_path = path;
  options.lock_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(auto backend, Backend(options));
  ASSERT_OK(backend->Replace(RuleSet{}));
  std::string before = SaveAll();

  pid_t holder = HoldLock(path);
  ASSERT_GT(holder, 0);
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80)};
  Batch add;
  add.add = rules;
  absl::Time start = absl::Now();
  EXPECT_THAT(backend->Apply(add),
              StatusIs(absl::StatusCode::kUnavailable,
                       ::testing::AllOf(HasSubstr(absl::StrCat("xtables lock ", path)),
                                        HasSubstr(absl::StrCat("held by pid ", holder)),
                                        HasSubstr("nothing changed"))));
  absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(1));
  EXPECT_THAT(backend->Replace(rules), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(backend->DeleteTable(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(SaveAll(), before);

  // Released while we wait: the change goes through.
  options.lock_timeout = absl::Seconds(5);
  ASSERT_OK_AND_ASSIGN(backend, Backend(options));
  std::thread release([holder] {
    absl::SleepFor(absl::Milliseconds(200));
    kill(holder, SIGKILL);
    waitpid(holder, nullptr, 0);
  });
  start = absl::Now();
  EXPECT_OK(backend->Apply(add));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));
  release.join();
  ASSERT_OK_AND_ASSIGN(KernelState state, backend->Read());
  EXPECT_EQ(state.rules, rules);
}

TEST_F(IptablesBackendTest, TheWatcherSeesForeignChangesToOurChainsOnly) {
  IptablesOptions options;
  options.expectation = std::make_shared<LayoutExpectation>();
  ASSERT_OK_AND_ASSIGN(auto backend, Backend(options));
  ASSERT_OK_AND_ASSIGN(auto watcher,
                       IptablesChangeWatcher::Open(options.expectation, {absl::Milliseconds(100)}));
  std::string what;
  // Nothing recorded yet: nothing to compare with.
  EXPECT_THAT(watcher->Poll(&what), IsOkAndHolds(false));
  RuleSet rules;
  rules.dnat = {Dnat(Protocol::kTcp, std::nullopt, 8080, "10.99.0.2", 80),
                Dnat(Protocol::kTcp, std::nullopt, 8080, "fd00:99::2", 80)};
  ASSERT_OK(backend->Replace(rules));
  EXPECT_THAT(watcher->Poll(&what), IsOkAndHolds(false));
  // Our own changes are expected.
  Batch add;
  add.add.dnat = {Dnat(Protocol::kUdp, std::nullopt, 5353, "10.99.0.2", 53)};
  ASSERT_OK(backend->Apply(add));
  EXPECT_THAT(watcher->Poll(&what), IsOkAndHolds(false));
  // Someone else's rules elsewhere are none of our business.
  ASSERT_OK(
      host_->Exec("iptables-legacy -t nat -A PREROUTING -p tcp --dport 22 -j ACCEPT && "
                  "iptables-legacy -t nat -N KUBE-TEST && "
                  "iptables-legacy -t nat -A KUBE-TEST -j RETURN"));
  EXPECT_THAT(watcher->Poll(&what), IsOkAndHolds(false));

  struct Case {
    const char* command;
    const char* shows;
  };
  for (const Case& c : std::vector<Case>{
           {"iptables-legacy -t nat -F FABRIC-HOSTPORTS", "ipv4 nat: FABRIC-HOSTPORTS=0"},
           {"ip6tables-legacy -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j FABRIC-HOSTPORTS",
            "OUTPUT>FABRIC-HOSTPORTS=0"},
           {"iptables-legacy -F FABRIC-FORWARD", "ipv4 filter: FABRIC-FORWARD=0"},
           {"iptables-legacy -t nat -A FABRIC-POSTROUTING -j ACCEPT", "FABRIC-POSTROUTING=1"},
       }) {
    SCOPED_TRACE(c.command);
    ASSERT_OK(host_->Exec(c.command));
    // Within one poll interval.
    absl::Time start = absl::Now();
    bool seen = false;
    while (!seen && absl::Now() - start < absl::Seconds(2)) {
      ASSERT_OK_AND_ASSIGN(seen, watcher->Wait(absl::Milliseconds(200), &what));
    }
    EXPECT_TRUE(seen);
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
    EXPECT_THAT(what, HasSubstr(c.shows));
    // The repair is the backend's own write: expected again.
    ASSERT_OK_AND_ASSIGN(SyncReport report, Sync(*backend, rules));
    EXPECT_NE(report.action, SyncReport::Action::kNone);
    EXPECT_THAT(watcher->Poll(&what), IsOkAndHolds(false)) << what;
  }
}

}  // namespace
}  // namespace fabric::nat
