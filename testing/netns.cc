#include "testing/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fabric::testing {

namespace {
std::atomic<int> counter{0};

}  // namespace

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

absl::StatusOr<CommandResult> RunCommand(const std::string& command) {
  char err_path[] = "/tmp/fnt-stderr-XXXXXX";
  int err_fd = mkstemp(err_path);
  if (err_fd < 0) return absl::InternalError("mkstemp failed");
  close(err_fd);
  std::string full = absl::StrCat(
      "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; (",
      command, ") 2>", err_path);
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) {
    unlink(err_path);
    return absl::InternalError(absl::StrCat("popen: ", command));
  }
  CommandResult r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int rc = pclose(p);
  if (FILE* f = fopen(err_path, "r")) {
    while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) r.err.append(buf.data(), n);
    fclose(f);
  }
  unlink(err_path);
  r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  return r;
}

absl::StatusOr<std::string> Shell(const std::string& command) {
  absl::StatusOr<CommandResult> r = RunCommand(command);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(absl::StrCat("`", command, "` exited ",
                                            r->exit_code, ": ", r->err, r->out));
  }
  return r->out;
}

void Netns::SweepStale() {
  DIR* d = opendir("/run/netns");
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("fnt-", 0) != 0) continue;
    std::vector<std::string> parts = absl::StrSplit(name, '-');
    int pid;
    if (parts.size() < 3 || !absl::SimpleAtoi(parts[1], &pid)) continue;
    if (kill(pid, 0) == 0 || errno == EPERM) continue;
    Shell(absl::StrCat("ip netns pids ", name, " | xargs -r kill -9; ip netns del ", name))
        .IgnoreError();
  }
  closedir(d);
}

absl::StatusOr<std::unique_ptr<Netns>> Netns::Create(const std::string& tag) {
  static bool swept = false;
  if (!swept) {
    swept = true;
    SweepStale();
  }
  std::string name = absl::StrCat("fnt-", getpid(), "-", counter++, "-", tag);
  if (name.size() > 40) name.resize(40);
  absl::StatusOr<std::string> out = Shell(
      absl::StrCat("ip netns add ", name, " && ip -n ", name,
                   " link set lo up && ip netns exec ", name,
                   // No duplicate address detection: addresses (link-local
                   // ones too) are usable at once, so the first IPv6 packet
                   // of a test is not lost to neighbour discovery.
                   " sysctl -qw net.ipv6.conf.all.accept_dad=0 "
                   "net.ipv6.conf.default.accept_dad=0"));
  if (!out.ok()) return out.status();
  return std::unique_ptr<Netns>(new Netns(name));
}

Netns::~Netns() {
  for (pid_t pid : children_) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  // Anything else still running in the namespace goes too.
  Shell(absl::StrCat("ip netns pids ", name_, " | xargs -r kill -9; ip netns del ",
                     name_))
      .IgnoreError();
}

absl::StatusOr<std::string> Netns::Exec(const std::string& command) const {
  return Shell(absl::StrCat("ip netns exec ", name_, " sh -c ", ShellQuote(command)));
}

absl::StatusOr<pid_t> Netns::Spawn(const std::string& command) {
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    std::string full = absl::StrCat(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; ",
        command);
    execl("/usr/bin/env", "env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "ip",
          "netns", "exec", name_.c_str(), "sh", "-c", full.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  children_.push_back(pid);
  return pid;
}

absl::Status Link(Netns& a, const std::string& a_if, const std::string& a_addrs,
                  Netns& b, const std::string& b_if,
                  const std::string& b_addrs) {
  std::string tmp = absl::StrCat("fv", getpid() % 100000, counter++);
  std::string cmd = absl::StrCat(
      "ip link add ", tmp, "a netns ", a.name(), " type veth peer name ", tmp,
      "b netns ", b.name(), " && ip -n ", a.name(), " link set ", tmp, "a name ",
      a_if, " && ip -n ", b.name(), " link set ", tmp, "b name ", b_if);
  for (const auto& [ns, ifname, addrs] :
       {std::make_tuple(&a, a_if, a_addrs), std::make_tuple(&b, b_if, b_addrs)}) {
    for (absl::string_view addr : absl::StrSplit(addrs, ' ', absl::SkipEmpty())) {
      absl::StrAppend(&cmd, " && ip -n ", ns->name(), " addr add ", addr,
                      " dev ", ifname, " nodad");
    }
    absl::StrAppend(&cmd, " && ip -n ", ns->name(), " link set ", ifname, " up");
  }
  return Shell(cmd).status();
}

absl::StatusOr<std::unique_ptr<ScopedNetns>> ScopedNetns::Enter(const Netns& ns) {
  int original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (original < 0) return absl::InternalError("open own netns failed");
  int target = open(absl::StrCat("/run/netns/", ns.name()).c_str(),
                    O_RDONLY | O_CLOEXEC);
  if (target < 0 || setns(target, CLONE_NEWNET) != 0) {
    int e = errno;
    if (target >= 0) close(target);
    close(original);
    return absl::InternalError(
        absl::StrCat("enter netns ", ns.name(), ": ", std::strerror(e)));
  }
  close(target);
  return std::unique_ptr<ScopedNetns>(new ScopedNetns(original));
}

ScopedNetns::~ScopedNetns() {
  setns(original_, CLONE_NEWNET);
  close(original_);
}

ScopedTempDir::ScopedTempDir(const std::string& tag) {
  std::string pattern = absl::StrCat("/tmp/fnt-", tag, "-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) != nullptr) path_ = buf.data();
}

ScopedTempDir::~ScopedTempDir() {
  if (!path_.empty()) Shell("rm -rf " + ShellQuote(path_)).IgnoreError();
}

std::string NetTool() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && ws != nullptr) {
    return absl::StrCat(srcdir, "/", ws, "/testing/nettool.py");
  }
  return "testing/nettool.py";
}

namespace {

// Waits until something in `ns` listens on `port`/`proto`.
absl::Status WaitListening(Netns& ns, const std::string& proto, int port) {
  std::string flag = proto == "udp" ? "-uln" : (proto == "sctp" ? "-Sln" : "-tln");
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<std::string> out =
        ns.Exec(absl::StrCat("ss -H ", flag, " 'sport = :", port, "'"));
    if (out.ok() && !out->empty()) return absl::OkStatus();
    usleep(20000);
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "server on ", port, "/", proto, " in ", ns.name(), " did not start"));
}

}  // namespace

absl::Status Serve(Netns& ns, const std::string& proto, int port,
                   const std::string& token) {
  absl::StatusOr<pid_t> pid = ns.Spawn(absl::StrCat(
      "exec /usr/bin/python3 ", NetTool(), " serve ", proto, " ", port, " ", token));
  if (!pid.ok()) return pid.status();
  return WaitListening(ns, proto, port);
}

absl::Status ServeCount(Netns& ns, int port, const std::string& addr) {
  absl::StatusOr<pid_t> pid =
      ns.Spawn(absl::StrCat("exec /usr/bin/python3 ", NetTool(), " count ", port, " ", addr));
  if (!pid.ok()) return pid.status();
  return WaitListening(ns, "tcp", port);
}

absl::StatusOr<std::string> SendBytes(const Netns& ns, const std::string& host, int port,
                                      int bytes) {
  return ns.Exec(
      absl::StrCat("/usr/bin/python3 ", NetTool(), " send ", host, " ", port, " ", bytes));
}

absl::StatusOr<std::string> Ask(const Netns& ns, const std::string& proto,
                                const std::string& host, int port,
                                double timeout) {
  return ns.Exec(absl::StrCat("/usr/bin/python3 ", NetTool(), " ask ", proto,
                              " ", host, " ", port, " --timeout ", timeout));
}

absl::StatusOr<RouterLayout> MakeRouterLayout(const std::string& wan) {
  RouterLayout l;
  for (auto [slot, tag] : {std::pair<std::unique_ptr<Netns>*, const char*>{&l.router, "router"},
                           {&l.lan, "lan"},
                           {&l.outside, "out"}}) {
    absl::StatusOr<std::unique_ptr<Netns>> ns = Netns::Create(tag);
    if (!ns.ok()) return ns.status();
    *slot = *std::move(ns);
  }
  absl::Status s = Link(*l.router, "lan0", "192.168.77.1/24", *l.lan, "eth0", "192.168.77.10/24");
  if (s.ok()) {
    s = Link(*l.router, "wan0", absl::StrCat(wan, ".1/24"), *l.outside, "eth0",
             absl::StrCat(wan, ".2/24"));
  }
  if (s.ok()) s = l.lan->Exec("ip route add default via 192.168.77.1").status();
  if (s.ok()) s = l.router->Exec("sysctl -qw net.ipv4.ip_forward=1").status();
  if (!s.ok()) return s;
  return l;
}

}  // namespace fabric::testing
