// CNI ADD/DEL latency, from exec of the plugin to its exit, with 0, 100 and
// 1,000 attachments already present: fabric-nat (talking to a running
// fabric-agent) against Debian's reference portmap plugin (iptables), in
// the same run and the same kind of namespace. Prints medians and ratios.
//
// Then the same plugin in a real topology (TopologyBench below): Debian's
// bridge + host-local plugins chained before fabric-nat, real veths on four
// bridges, with 10 and with 1,000 containers present, samples interleaved
// between the two hosts; fabric-nat VERSION, its thread count, and 32
// concurrent ADDs.
//
//   bazel run -c opt //tests/bench:cni_bench              (as root)
//   bazel run -c opt //tests/bench:cni_bench -- --quick   (0 and 100 only)
//   bazel run -c opt //tests/bench:cni_bench -- --topology (topology only)
//   ... -- --topology --compare=/path/to/fabric-nat  (another build, alongside)
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "testing/cni_runtime.h"
#include "testing/netns.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Runs `binary` with `env` and `input` on stdin; returns (exit code, ms).
std::pair<int, double> Exec(const std::string& binary,
                            const std::vector<std::string>& env,
                            const std::string& input, std::string* output) {
  // Close-on-exec: with concurrent spawns, a child inheriting another's
  // stdin write end would wait forever for EOF (dup2 clears the flag on the
  // child's own 0 and 1).
  int in_pipe[2], out_pipe[2];
  (void)!pipe2(in_pipe, O_CLOEXEC);
  (void)!pipe2(out_pipe, O_CLOEXEC);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_addclose(&fa, in_pipe[1]);
  posix_spawn_file_actions_addclose(&fa, out_pipe[0]);
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(binary.c_str()), nullptr};
  auto start = Clock::now();
  pid_t pid;
  posix_spawn(&pid, binary.c_str(), &fa, nullptr, argv, envp.data());
  close(in_pipe[0]);
  close(out_pipe[1]);
  (void)!write(in_pipe[1], input.data(), input.size());
  close(in_pipe[1]);
  char buf[4096];
  ssize_t n;
  output->clear();
  while ((n = read(out_pipe[0], buf, sizeof(buf))) > 0) output->append(buf, n);
  close(out_pipe[0]);
  int status;
  waitpid(pid, &status, 0);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  posix_spawn_file_actions_destroy(&fa);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ms};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Plugin {
  std::string name;
  std::string binary;
  json config;  // without prevResult/runtimeConfig
};

json PrevResult(int i) {
  std::string ip = absl::StrCat("10.88.", i / 250, ".", 2 + i % 250);
  return {{"cniVersion", "1.0.0"},
          {"interfaces",
           {{{"name", "cni0"}, {"mac", "02:00:00:00:00:01"}},
            {{"name", absl::StrCat("veth", i)}, {"mac", "02:00:00:00:00:02"}},
            {{"name", "eth0"}, {"mac", "02:00:00:00:00:03"},
             {"sandbox", absl::StrCat("/run/netns/bench", i)}}}},
          {"ips", {{{"interface", 2}, {"address", ip + "/16"}, {"gateway", "10.88.0.1"}}}}};
}

std::pair<int, double> Call(const Plugin& p, const std::string& command, int i,
                            const std::string& cni_path) {
  json c = p.config;
  c["prevResult"] = PrevResult(i);
  c["runtimeConfig"]["portMappings"] = {
      {{"hostPort", 10000 + i}, {"containerPort", 80}, {"protocol", "tcp"}}};
  std::vector<std::string> env = {
      "CNI_COMMAND=" + command, absl::StrCat("CNI_CONTAINERID=bench-container-", i),
      absl::StrCat("CNI_NETNS=/run/netns/bench", i), "CNI_IFNAME=eth0",
      "CNI_PATH=" + cni_path, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
  std::string out;
  auto r = Exec(p.binary, env, c.dump(), &out);
  if (r.first != 0) {
    std::fprintf(stderr, "%s %s %d failed: %s\n", p.name.c_str(), command.c_str(), i,
                 out.c_str());
  }
  return r;
}


// ---------------------------------------------------------------------------
// The real topology. Two "hosts" (namespaces), each with its own fabric-agent
// and four bridges made by Debian's bridge plugin (a Linux bridge holds at
// most 1,024 ports, and one broadcast flooded to ~1,000 veths overruns the
// backlog): host A gets 10 containers, host B 1,000, each in a namespace of
// its own with a real veth. Probe containers are then added and deleted on
// A and B in turn, so both see the same machine noise; fabric-nat's own exec
// to exit is timed, and VERSION beside it.

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p * v.size()));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// Container namespaces, created and deleted in batches with `ip -batch`
// (one `ip netns add` per process would take minutes). Names follow
// testing/netns.h ("fnt-<pid>-..."), so a crashed run's are swept.
class NetnsPool {
 public:
  explicit NetnsPool(std::string tag) : tag_(std::move(tag)) {}
  ~NetnsPool() {
    if (names_.empty()) return;
    std::string batch;
    for (const std::string& n : names_) absl::StrAppend(&batch, "netns del ", n, "\n");
    RunBatch(batch);
  }
  bool Grow(int n) {
    std::string batch;
    for (int i = 0; i < n; ++i) {
      std::string name = absl::StrCat("fnt-", getpid(), "-", tag_, "-", names_.size());
      names_.push_back(name);
      absl::StrAppend(&batch, "netns add ", name, "\n");
    }
    return RunBatch(batch);
  }
  std::string path(int i) const { return "/run/netns/" + names_[i]; }
  int size() const { return static_cast<int>(names_.size()); }

 private:
  static bool RunBatch(const std::string& batch) {
    char file[] = "/tmp/fnt-batch-XXXXXX";
    int fd = mkstemp(file);
    if (fd < 0) return false;
    (void)!write(fd, batch.data(), batch.size());
    close(fd);
    bool ok = fabric::testing::Shell(absl::StrCat("ip -force -batch ", file)).ok();
    unlink(file);
    return ok;
  }
  std::string tag_;
  std::vector<std::string> names_;
};

struct Host {
  std::string label;
  std::unique_ptr<fabric::testing::Netns> ns;
  std::unique_ptr<fabric::testing::AgentProcess> agent;
  int fd = -1;  // /run/netns/<ns>, for setns
  std::string dir;
  std::map<std::string, json> results;  // container id -> bridge's result

  // The bridge plugin's network config for bridge `b` (of four).
  json BridgeConfig(int b) const {
    return {{"cniVersion", "1.0.0"},
            {"name", absl::StrCat("fnbench", b)},
            {"type", "bridge"},
            {"bridge", absl::StrCat("fnbr", b)},
            {"isGateway", true},
            {"hairpinMode", true},
            {"ipam",
             {{"type", "host-local"},
              {"ranges", {{{{"subnet", absl::StrCat("10.99.", 4 * b, ".0/22")}}}}},
              {"dataDir", dir + "/ipam"}}}};
  }
  json NatConfig(int b) const {
    return {{"cniVersion", "1.0.0"},
            {"name", absl::StrCat("fnbench", b)},
            {"type", "fabric-nat"},
            {"agentSocket", agent->socket()}};
  }
};

std::vector<std::string> CniEnv(const std::string& command, const std::string& id,
                                const std::string& netns) {
  return {"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
          "CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
}

// Runs `binary` in `host`'s namespace (setns on the calling thread).
std::pair<int, double> ExecIn(const Host& host, const std::string& binary,
                              const std::vector<std::string>& env,
                              const std::string& input, std::string* output) {
  if (setns(host.fd, CLONE_NEWNET) != 0) return {-1, 0};
  return Exec(binary, env, input, output);
}

struct ChainTimes {
  bool ok = false;
  double bridge_ms = 0;
  double nat_ms = 0;
};

// ADD through the chain as a runtime does it: bridge (which runs
// host-local), then fabric-nat with the bridge's result as prevResult.
ChainTimes ChainAdd(Host& host, const std::string& nat_binary, const std::string& id,
                    const std::string& netns, int bridge, int host_port,
                    std::mutex* mu = nullptr) {
  ChainTimes t;
  std::string out;
  auto env = CniEnv("ADD", id, netns);
  auto b = ExecIn(host, "/usr/lib/cni/bridge", env, host.BridgeConfig(bridge).dump(), &out);
  t.bridge_ms = b.second;
  if (b.first != 0) {
    std::fprintf(stderr, "bridge ADD %s: %s\n", id.c_str(), out.c_str());
    return t;
  }
  json prev = json::parse(out, nullptr, false);
  json c = host.NatConfig(bridge);
  c["prevResult"] = prev;
  c["runtimeConfig"]["portMappings"] = {
      {{"hostPort", host_port}, {"containerPort", 80}, {"protocol", "tcp"}}};
  auto n = ExecIn(host, nat_binary, env, c.dump(), &out);
  t.nat_ms = n.second;
  if (n.first != 0) {
    std::fprintf(stderr, "fabric-nat ADD %s: %s\n", id.c_str(), out.c_str());
    return t;
  }
  if (mu != nullptr) mu->lock();
  host.results[id] = prev;
  if (mu != nullptr) mu->unlock();
  t.ok = true;
  return t;
}

// DEL in reverse order; returns fabric-nat's time.
double ChainDel(Host& host, const std::string& nat_binary, const std::string& id,
                const std::string& netns, int bridge, int host_port) {
  std::string out;
  auto env = CniEnv("DEL", id, netns);
  json c = host.NatConfig(bridge);
  if (host.results.count(id)) c["prevResult"] = host.results[id];
  c["runtimeConfig"]["portMappings"] = {
      {{"hostPort", host_port}, {"containerPort", 80}, {"protocol", "tcp"}}};
  auto n = ExecIn(host, nat_binary, env, c.dump(), &out);
  if (n.first != 0) std::fprintf(stderr, "fabric-nat DEL %s: %s\n", id.c_str(), out.c_str());
  auto b = ExecIn(host, "/usr/lib/cni/bridge", env, host.BridgeConfig(bridge).dump(), &out);
  if (b.first != 0) std::fprintf(stderr, "bridge DEL %s: %s\n", id.c_str(), out.c_str());
  host.results.erase(id);
  return n.second;
}

double VersionTime(const Host& host, const std::string& nat_binary) {
  std::string out;
  return ExecIn(host, nat_binary, {"CNI_COMMAND=VERSION", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
                "{\"cniVersion\":\"1.0.0\"}", &out)
      .second;
}

// Threads fabric-nat runs during a call: it is pointed at a socket that
// listens but never answers, so it sits inside its one RPC; its tasks are
// counted after 300 ms, then it is killed.
int PluginThreads(const std::string& nat_binary, const std::string& dir) {
  std::string path = dir + "/silent.sock";
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(s, 8) != 0) {
    close(s);
    return -1;
  }
  json c = {{"cniVersion", "1.0.0"}, {"name", "threads"}, {"type", "fabric-nat"},
            {"agentSocket", path}, {"prevResult", PrevResult(0)},
            {"runtimeConfig",
             {{"portMappings", {{{"hostPort", 9999}, {"containerPort", 80},
                                 {"protocol", "tcp"}}}}}}};
  std::string input = c.dump();
  int in_pipe[2];
  (void)!pipe2(in_pipe, O_CLOEXEC);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_addclose(&fa, in_pipe[1]);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  std::vector<std::string> env = CniEnv("ADD", "threads", "/run/netns/none");
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(nat_binary.c_str()), nullptr};
  pid_t pid;
  int rc = posix_spawn(&pid, nat_binary.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(in_pipe[0]);
  (void)!write(in_pipe[1], input.data(), input.size());
  close(in_pipe[1]);
  int threads = -1;
  if (rc == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (DIR* d = opendir(absl::StrCat("/proc/", pid, "/task").c_str())) {
      threads = 0;
      while (dirent* e = readdir(d)) threads += e->d_name[0] != '.';
      closedir(d);
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  close(s);
  unlink(path.c_str());
  return threads;
}

std::unique_ptr<Host> StartHost(const std::string& label, const std::string& root) {
  auto h = std::make_unique<Host>();
  h->label = label;
  auto ns = fabric::testing::Netns::Create(absl::StrCat("cnitopo", label));
  if (!ns.ok()) return nullptr;
  h->ns = std::move(*ns);
  h->dir = absl::StrCat(root, "/", label);
  mkdir(h->dir.c_str(), 0700);
  auto agent = fabric::testing::AgentProcess::Start(h->ns.get(), h->dir + "/agent");
  if (!agent.ok()) {
    std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
    return nullptr;
  }
  h->agent = std::move(*agent);
  h->fd = open(("/run/netns/" + h->ns->name()).c_str(), O_RDONLY | O_CLOEXEC);
  return h->fd >= 0 ? std::move(h) : nullptr;
}

struct Samples {
  std::vector<double> add, del, version, version_after_bridge;
};

// One probe: ADD and DEL of a fresh container on `host`, VERSION between;
// then VERSION in the ADD's place (right after a bridge plugin's ADD, whose
// kernel work and two Go processes leave the caches cold), for a ratio
// under the ADD's own conditions.
void Probe(Host& host, const std::string& nat, NetnsPool& probes, int slot, int seq,
           Samples* s) {
  std::string id = absl::StrCat("probe-", host.label, "-", seq);
  int port = 30000 + seq % 20000;
  ChainTimes t = ChainAdd(host, nat, id, probes.path(slot), seq % 4, port);
  if (t.ok) s->add.push_back(t.nat_ms);
  s->version.push_back(VersionTime(host, nat));
  double d = ChainDel(host, nat, id, probes.path(slot), seq % 4, port);
  if (t.ok) s->del.push_back(d);
  std::string out;
  auto env = CniEnv("ADD", id, probes.path(slot));
  if (ExecIn(host, "/usr/lib/cni/bridge", env, host.BridgeConfig(seq % 4).dump(), &out).first ==
      0) {
    s->version_after_bridge.push_back(VersionTime(host, nat));
  }
  env[0] = "CNI_COMMAND=DEL";
  ExecIn(host, "/usr/lib/cni/bridge", env, host.BridgeConfig(seq % 4).dump(), &out);
}

void PrintRow(const char* what, const std::vector<double>& v) {
  std::printf("  %-44s p50 %6.2f  p90 %6.2f  p99 %6.2f  (n=%zu)\n", what, Percentile(v, 0.5),
              Percentile(v, 0.9), Percentile(v, 0.99), v.size());
}

// 32 ADDs started at once on `host` (kubelet starting many pods): each a
// whole chain on its own thread; fabric-nat's times (they include waiting
// for two cores shared with 32 bridge plugins). Then DEL of all.
std::vector<double> Concurrent(Host& host, const std::string& nat, NetnsPool& pool,
                               int rounds, int width) {
  std::vector<double> times;
  std::mutex mu;
  for (int r = 0; r < rounds; ++r) {
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int i = 0; i < width; ++i) {
      threads.emplace_back([&, i] {
        ready++;
        while (ready.load() < width) std::this_thread::yield();
        std::string id = absl::StrCat("conc-", host.label, "-", r, "-", i);
        ChainTimes t = ChainAdd(host, nat, id, pool.path(i), i % 4, 40000 + i, &mu);
        std::lock_guard<std::mutex> l(mu);
        if (t.ok) times.push_back(t.nat_ms);
      });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < width; ++i) {
      ChainDel(host, nat, absl::StrCat("conc-", host.label, "-", r, "-", i), pool.path(i),
               i % 4, 40000 + i);
    }
  }
  return times;
}

// The same, with the bridge plugin's ADDs done first: only fabric-nat's
// ADDs run at once, so their times show the plugin and the agent under 32
// simultaneous calls rather than 32 Go plugins competing for two cores.
std::vector<double> ConcurrentNatOnly(Host& host, const std::string& nat, NetnsPool& pool,
                                      int width) {
  std::vector<std::string> inputs(width);
  std::vector<std::string> ids(width);
  for (int i = 0; i < width; ++i) {
    ids[i] = absl::StrCat("concnat-", host.label, "-", i);
    std::string out;
    auto b = ExecIn(host, "/usr/lib/cni/bridge", CniEnv("ADD", ids[i], pool.path(i)),
                    host.BridgeConfig(i % 4).dump(), &out);
    if (b.first != 0) std::fprintf(stderr, "bridge ADD %s: %s\n", ids[i].c_str(), out.c_str());
    json prev = json::parse(out, nullptr, false);
    host.results[ids[i]] = prev;
    json c = host.NatConfig(i % 4);
    c["prevResult"] = prev;
    c["runtimeConfig"]["portMappings"] = {
        {{"hostPort", 45000 + i}, {"containerPort", 80}, {"protocol", "tcp"}}};
    inputs[i] = c.dump();
  }
  std::vector<double> times;
  std::mutex mu;
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < width; ++i) {
    threads.emplace_back([&, i] {
      ready++;
      while (ready.load() < width) std::this_thread::yield();
      std::string out;
      auto n = ExecIn(host, nat, CniEnv("ADD", ids[i], pool.path(i)), inputs[i], &out);
      std::lock_guard<std::mutex> l(mu);
      if (n.first == 0) {
        times.push_back(n.second);
      } else {
        std::fprintf(stderr, "fabric-nat ADD %s: %s\n", ids[i].c_str(), out.c_str());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < width; ++i) {
    ChainDel(host, nat, ids[i], pool.path(i), i % 4, 45000 + i);
  }
  return times;
}

int TopologyBench(bool quick, const std::string& compare) {
  std::vector<std::string> plugins = {fabric::testing::Runfile("cni/fabric-nat")};
  if (!compare.empty()) plugins.push_back(compare);
  const int kSmall = 10, kLarge = quick ? 200 : 1000;
  const int rounds = quick ? 20 : 60;
  const int conc_rounds = quick ? 1 : 4, width = 32;
  char root[] = "/tmp/fct-XXXXXX";
  if (mkdtemp(root) == nullptr) return 1;
  int status = 1;
  int original = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  {
    auto a = StartHost("a", root);
    auto b = StartHost("b", root);
    NetnsPool containers_a("ca"), containers_b("cb"), probes("pr"), conc("cc");
    if (a == nullptr || b == nullptr || !containers_a.Grow(kSmall) || !probes.Grow(4) ||
        !conc.Grow(width)) {
      std::fprintf(stderr, "topology setup failed (root? Debian's containernetworking-plugins?)\n");
    } else {
      std::printf("\nCNI ADD in a real topology: bridge + host-local, then fabric-nat; real "
                  "veths on 4 bridges; fabric-nat exec to exit (ms)\n");
      // Everything below is measured for each plugin build in the same
      // rounds (--compare=PATH adds one), so both see the same noise.
      const size_t np = plugins.size();
      for (int i = 0; i < kSmall; ++i) {
        ChainAdd(*a, plugins[0], absl::StrCat("c", i), containers_a.path(i), i % 4, 10000 + i);
      }
      // Host A alone, before 1,000 more namespaces and veths exist.
      std::vector<Samples> before(np), small(np), large(np);
      for (int r = 0; r < rounds / 2; ++r) {
        for (size_t k = 0; k < np; ++k) Probe(*a, plugins[k], probes, r % 4, r, &before[k]);
      }
      // Fill host B, timing its ADDs as a runtime would see them (the first
      // build only).
      containers_b.Grow(kLarge);
      std::vector<double> fill;
      auto fill_start = Clock::now();
      for (int i = 0; i < kLarge; ++i) {
        ChainTimes t = ChainAdd(*b, plugins[0], absl::StrCat("c", i), containers_b.path(i),
                                i % 4, 10000 + i);
        fill.push_back(t.ok ? t.nat_ms : NAN);
      }
      double fill_s = std::chrono::duration<double>(Clock::now() - fill_start).count();
      for (int r = 0; r < rounds; ++r) {
        for (size_t k = 0; k < np; ++k) {
          // Alternate which host goes first.
          Host* order[2] = {(r + k) % 2 ? b.get() : a.get(), (r + k) % 2 ? a.get() : b.get()};
          for (Host* h : order) {
            Probe(*h, plugins[k], probes, (2 * r + (h == b.get())) % 4, 1000 + r,
                  h == a.get() ? &small[k] : &large[k]);
          }
        }
      }
      std::vector<std::vector<double>> conc_small(np), conc_large(np), nat_small(np),
          nat_large(np);
      auto append = [](std::vector<double>& to, const std::vector<double>& from) {
        to.insert(to.end(), from.begin(), from.end());
      };
      for (int r = 0; r < conc_rounds; ++r) {
        for (size_t k = 0; k < np; ++k) {
          append(conc_small[k], Concurrent(*a, plugins[k], conc, 1, width));
          append(conc_large[k], Concurrent(*b, plugins[k], conc, 1, width));
          append(nat_small[k], ConcurrentNatOnly(*a, plugins[k], conc, width));
          append(nat_large[k], ConcurrentNatOnly(*b, plugins[k], conc, width));
        }
      }
      auto slice = [&](int from, int to) {
        return std::vector<double>(fill.begin() + from, fill.begin() + to);
      };
      for (size_t k = 0; k < np; ++k) {
        std::printf("  %s\n", plugins[k].c_str());
        std::printf("  threads during its one RPC: %d (main thread included)\n",
                    PluginThreads(plugins[k], root));
        PrintRow(absl::StrCat("ADD, ", kSmall, " present, before the rest").c_str(),
                 before[k].add);
        PrintRow(absl::StrCat("ADD, ", kSmall, " present (interleaved)").c_str(), small[k].add);
        PrintRow(absl::StrCat("ADD, ", kLarge, " present (interleaved)").c_str(), large[k].add);
        PrintRow(absl::StrCat("DEL, ", kSmall, " present (interleaved)").c_str(), small[k].del);
        PrintRow(absl::StrCat("DEL, ", kLarge, " present (interleaved)").c_str(), large[k].del);
        std::vector<double> version = small[k].version;
        version.insert(version.end(), large[k].version.begin(), large[k].version.end());
        PrintRow("VERSION (same rounds)", version);
        std::vector<double> version_cold = small[k].version_after_bridge;
        version_cold.insert(version_cold.end(), large[k].version_after_bridge.begin(),
                            large[k].version_after_bridge.end());
        PrintRow("VERSION right after a bridge ADD (as ADD)", version_cold);
        if (k == 0) {
          PrintRow("filling host B: ADDs 1-10", slice(0, 10));
          PrintRow(absl::StrCat("filling host B: ADDs ", kLarge - 9, "-", kLarge).c_str(),
                   slice(kLarge - 10, kLarge));
        }
        PrintRow(absl::StrCat(width, " concurrent chain ADDs, ", kSmall, " present").c_str(),
                 conc_small[k]);
        PrintRow(absl::StrCat(width, " concurrent chain ADDs, ", kLarge, " present").c_str(),
                 conc_large[k]);
        PrintRow(absl::StrCat(width, " concurrent fabric-nat ADDs, ", kSmall, " present").c_str(),
                 nat_small[k]);
        PrintRow(absl::StrCat(width, " concurrent fabric-nat ADDs, ", kLarge, " present").c_str(),
                 nat_large[k]);
        double p10 = Percentile(small[k].add, 0.5), p1000 = Percentile(large[k].add, 0.5);
        double pv = Percentile(version, 0.5);
        double pvc = Percentile(version_cold, 0.5);
        std::printf(
            "  ADD at %d / ADD at %d (p50): %.2fx; ADD at %d / VERSION (p50): %.2fx, / VERSION "
            "right after a bridge ADD: %.2fx (target 3x)\n",
            kLarge, kSmall, p1000 / p10, kLarge, p1000 / pv, p1000 / pvc);
      }
      std::printf("  (filling host B with %d containers took %.0f s)\n", kLarge, fill_s);
      std::fflush(stdout);
      status = 0;
    }
    if (original >= 0) setns(original, CLONE_NEWNET);
    if (a != nullptr) close(a->fd);
    if (b != nullptr) close(b->fd);
    // Hosts go (their bridges, veths and agents with them), then the
    // container namespaces.
  }
  if (original >= 0) close(original);
  fabric::testing::Shell(absl::StrCat("rm -rf ", root)).IgnoreError();
  return status;
}

}  // namespace

int PortmapBench(bool quick) {
  auto ns = fabric::testing::Netns::Create("cnibench");
  if (!ns.ok()) {
    std::fprintf(stderr, "cannot create a namespace (root?)\n");
    return 1;
  }
  // Everything below runs inside the namespace: this process, the agent,
  // the plugins and the iptables rules portmap makes.
  auto enter = fabric::testing::ScopedNetns::Enter(**ns);
  if (!enter.ok()) return 1;
  (void)(*ns)->Exec("ip link add cni0 type bridge && ip addr add 10.88.0.1/16 dev cni0 && "
                    "ip link set cni0 up");
  char dir[] = "/tmp/fcb-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  auto agent = fabric::testing::AgentProcess::Start(ns->get(), std::string(dir) + "/agent");
  if (!agent.ok()) {
    std::fprintf(stderr, "agent: %s\n", std::string(agent.status().message()).c_str());
    return 1;
  }
  std::vector<Plugin> plugins = {
      {"fabric-nat", fabric::testing::Runfile("cni/fabric-nat"),
       {{"cniVersion", "1.0.0"}, {"name", "bench"}, {"type", "fabric-nat"},
        {"agentSocket", (*agent)->socket()}}},
      {"portmap", "/usr/lib/cni/portmap",
       {{"cniVersion", "1.0.0"}, {"name", "bench"}, {"type", "portmap"}}},
  };
  std::vector<int> sizes = quick ? std::vector<int>{0, 100} : std::vector<int>{0, 100, 1000};
  int reps = quick ? 10 : 30;
  std::printf("CNI plugin latency, exec to exit, median of %d (ms)\n", reps);
  std::printf("%-12s %-8s %10s %10s %10s %10s\n", "present", "", "fabric-nat", "portmap",
              "ratio", "");
  for (int present : sizes) {
    std::vector<double> add[2], del[2];
    for (int p = 0; p < 2; ++p) {
      const Plugin& plugin = plugins[p];
      for (int i = 0; i < present; ++i) Call(plugin, "ADD", i, "/usr/lib/cni");
      for (int r = 0; r < reps; ++r) {
        int id = 5000 + r;
        add[p].push_back(Call(plugin, "ADD", id, "/usr/lib/cni").second);
        del[p].push_back(Call(plugin, "DEL", id, "/usr/lib/cni").second);
      }
      for (int i = 0; i < present; ++i) Call(plugin, "DEL", i, "/usr/lib/cni");
    }
    double a0 = Median(add[0]), a1 = Median(add[1]);
    double d0 = Median(del[0]), d1 = Median(del[1]);
    std::printf("%-12d %-8s %10.2f %10.2f %9.1fx\n", present, "ADD", a0, a1, a1 / a0);
    std::printf("%-12d %-8s %10.2f %10.2f %9.1fx\n", present, "DEL", d0, d1, d1 / d0);
    std::fflush(stdout);
  }
  agent->reset();
  fabric::testing::Shell(absl::StrCat("rm -rf ", dir)).IgnoreError();
  return 0;
}

int main(int argc, char** argv) {
  bool quick = false, topology_only = false;
  std::string compare;  // --compare=PATH: another fabric-nat build, measured alongside
  for (int i = 1; i < argc; ++i) {
    quick |= std::strcmp(argv[i], "--quick") == 0;
    topology_only |= std::strcmp(argv[i], "--topology") == 0;
    if (std::strncmp(argv[i], "--compare=", 10) == 0) compare = argv[i] + 10;
  }
  if (!topology_only && PortmapBench(quick) != 0) return 1;
  return TopologyBench(quick, compare);
}
