// CNI ADD/DEL latency, from exec of the plugin to its exit, with 0, 100 and
// 1,000 attachments already present: fabric-nat (talking to a running
// fabric-agent) against Debian's reference portmap plugin (iptables), in
// the same run and the same kind of namespace. Prints medians and ratios.
//
//   bazel run -c opt //tests/bench:cni_bench              (as root)
//   bazel run -c opt //tests/bench:cni_bench -- --quick   (0 and 100 only)
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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
  int in_pipe[2], out_pipe[2];
  (void)!pipe(in_pipe);
  (void)!pipe(out_pipe);
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

}  // namespace

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
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
