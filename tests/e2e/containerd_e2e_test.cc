// End to end with a real container runtime: Debian's containerd 1.6 (CRI
// plugin, go-cni, runc shims) runs pods whose hostPorts fabric-nat publishes,
// driven through the CRI v1 gRPC API exactly as kubelet drives it. Proves:
//
//  - containerd's portMappings (go-cni's Go-style keys) reach the agent:
//    TCP and UDP hostPorts answer from an outside namespace, from the pod's
//    own workload process;
//  - hairpin: a second pod reaches the first through the host's address;
//  - a third pod asking for a held port fails, and containerd's error names
//    the holder (the first pod's sandbox);
//  - `fabricctl list` shows exactly the pods' mappings, owned by their
//    sandbox ids;
//  - StopPodSandbox + RemovePodSandbox close the port, and the shims exit;
//  - containerd killed with SIGKILL and started again still removes a pod's
//    mapping (CNI DEL from its cached result);
//  - agent down: RunPodSandbox fails fast with an error naming the agent's
//    socket, and once the agent is back a new pod works.
//
//   outside  eth0 192.0.2.2/24
//      |
//   host     wan0 192.0.2.1/24, bridge fcr0 10.88.0.1/24; containerd (via
//            nsenter --net, so it stays in the root mount namespace),
//            fabric-agent, and the CNI plugins containerd execs run here
//      |
//   pods     netns made by containerd under its private state dir
//
// containerd gets everything private under a temp dir: root, state, gRPC
// socket, runc root, CNI bin and conf dirs; pods go under a cgroup parent of
// the test's own (cgroupfs driver; a relative parent, which runc puts under
// the test's own cgroup in every hierarchy). The CRI settings that matter
// here: netns_mounts_under_state_dir (pod netns not in /run/netns),
// restrict_oom_score_adj (the sandbox's -998 needs CAP_SYS_RESOURCE, which
// this machine does not grant), runc options Root and SystemdCgroup=false,
// and the opt plugin disabled (it writes to /var/lib/containerd). The shims'
// sockets still go to /run/containerd/s (fixed in containerd 1.6); they are
// removed at the end. Images come from testing/oci_image.py
// (busybox-static + testing/podserve), imported with ctr: no registry. The
// machine's own namespace, firewall and routes are never touched; everything
// started is killed, everything mounted unmounted, the cgroups removed,
// even when an assertion fails.
#include <dirent.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cri/runtime/v1/cri.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

namespace cri = ::runtime::v1;
using json = nlohmann::json;
using ::fabric::testing::AgentProcess;
using ::fabric::testing::Ask;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::fabric::testing::Runfile;
using ::fabric::testing::Shell;
using ::fabric::testing::ShellQuote;
using ::fabric::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

constexpr char kImage[] = "fabric.test/pod:1";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// Pids of processes whose command line has `needle` as one argument.
std::vector<pid_t> PidsWithArg(const std::string& needle) {
  std::vector<pid_t> pids;
  DIR* d = opendir("/proc");
  if (d == nullptr) return pids;
  while (dirent* e = readdir(d)) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 0) continue;
    std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    for (absl::string_view arg : absl::StrSplit(cmdline, '\0')) {
      if (arg == needle) {
        pids.push_back(pid);
        break;
      }
    }
  }
  closedir(d);
  return pids;
}

// A pod: its sandbox, the config it was made with, and its workload.
struct Pod {
  std::string name;
  std::string sandbox_id;
  std::string container_id;
  cri::PodSandboxConfig config;
};

// Unmounts every mount at or under `dir`, deepest first; lazily, in case a
// dying process still holds one.
void UnmountUnder(const std::string& dir) {
  std::vector<std::string> mounts;
  for (absl::string_view line :
       absl::StrSplit(ReadFile("/proc/self/mountinfo"), '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() > 4 && absl::StartsWith(f[4], dir + "/")) mounts.push_back(f[4]);
  }
  std::sort(mounts.rbegin(), mounts.rend());
  for (const std::string& m : mounts) umount2(m.c_str(), MNT_DETACH);
}

bool Alive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

class ContainerdEndToEndTest : public ::testing::Test {
 protected:
  // What a run killed with SIGKILL left (its destructors never ran): temp
  // dirs whose owner.pid is gone, with the shims and mounts in them, and
  // cgroups "fnt-cd-<pid>-<n>" of dead pids. Like Netns::SweepStale.
  static void SetUpTestSuite() {
    std::vector<std::string> stale_dirs;
    if (DIR* d = opendir("/tmp")) {
      while (dirent* e = readdir(d)) {
        std::string dir = absl::StrCat("/tmp/", e->d_name);
        if (!absl::StartsWith(e->d_name, "fnt-cd-")) continue;
        pid_t owner = atoi(ReadFile(dir + "/owner.pid").c_str());
        if (owner <= 0 || Alive(owner)) continue;
        // containerd, its shims and the agent outlive the test's SIGKILL.
        for (const char* arg : {"/containerd.toml", "/containerd.sock", "/agent/agent.sock"}) {
          for (pid_t pid : PidsWithArg(dir + arg)) kill(pid, SIGKILL);
        }
        stale_dirs.push_back(dir);
      }
      closedir(d);
    }
    for (const std::string& parent : OwnCgroups()) {
      DIR* d = opendir(parent.c_str());
      if (d == nullptr) continue;
      while (dirent* e = readdir(d)) {
        std::vector<std::string> parts = absl::StrSplit(e->d_name, '-');
        if (parts.size() != 4 || parts[0] != "fnt" || parts[1] != "cd") continue;
        if (Alive(atoi(parts[2].c_str()))) continue;
        RemoveCgroup(absl::StrCat(parent, "/", e->d_name));
      }
      closedir(d);
    }
    // Once nothing runs there any more.
    for (const std::string& dir : stale_dirs) {
      UnmountUnder(dir);
      Shell("rm -rf " + ShellQuote(dir)).IgnoreError();
    }
  }

  // The cgroups this process runs in, one per hierarchy. runc takes a
  // relative cgroup parent as relative to its own cgroup in each (which it
  // inherits from the test), so pods stay inside them.
  static std::vector<std::string> OwnCgroups() {
    std::vector<std::string> dirs;
    for (absl::string_view line :
         absl::StrSplit(ReadFile("/proc/self/cgroup"), '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
      if (f.size() != 3) continue;
      std::string hierarchy = f[1].empty() ? "unified" : f[1];
      hierarchy = std::string(absl::StripPrefix(hierarchy, "name="));
      std::string mount = "/sys/fs/cgroup/" + hierarchy;
      struct stat st;
      if (stat(mount.c_str(), &st) != 0) {
        if (!f[1].empty()) continue;
        mount = "/sys/fs/cgroup";  // cgroup v2 only
      }
      dirs.push_back(absl::StrCat(mount, f[2] == "/" ? "" : f[2]));
    }
    return dirs;
  }

  // Kills what runs in cgroup `cg` (and below) and removes it.
  static void RemoveCgroup(const std::string& cg) {
    Shell(absl::StrCat("find ", ShellQuote(cg), " -name cgroup.procs -exec cat {} + "
                       "2>/dev/null | xargs -r kill -9"))
        .IgnoreError();
    for (int i = 0; i < 50; ++i) {
      struct stat st;
      if (stat(cg.c_str(), &st) != 0) break;
      Shell(absl::StrCat("find ", ShellQuote(cg), " -depth -type d -exec rmdir {} + "
                         "2>/dev/null"))
          .IgnoreError();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "end-to-end tests run as root";
    dir_ = tmp_.path();
    ASSERT_FALSE(dir_.empty());
    // Marks the dir as this process's, for SweepStale of a later run.
    std::ofstream(dir_ + "/owner.pid") << getpid();
    // Unique per run: it names the CNI network, the cgroup parent and
    // libcni's cache files, so leftovers of a crashed run are recognisable.
    tag_ = absl::StrCat("fnt-cd-", getpid(), "-", runs_++);
    ASSERT_OK_AND_ASSIGN(host_, Netns::Create("cdhost"));
    ASSERT_OK_AND_ASSIGN(outside_, Netns::Create("cdout"));
    ASSERT_OK(testing::Link(*host_, "wan0", "192.0.2.1/24", *outside_, "eth0",
                            "192.0.2.2/24"));
    ASSERT_OK(host_->Exec("sysctl -qw net.ipv4.ip_forward=1"));
    ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(host_.get(), dir_ + "/agent"));

    // The CNI plugins containerd finds in its bin_dir, and one network.
    ASSERT_OK(Shell(absl::StrCat(
        "mkdir -p ", dir_, "/cni/bin ", dir_, "/cni/conf ", dir_, "/logs && ln -s "
        "/usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback ",
        dir_, "/cni/bin/ && ln -s ", Runfile("cni/fabric-nat"), " ", dir_,
        "/cni/bin/fabric-nat")));
    json conflist = {
        {"cniVersion", "1.0.0"},
        {"name", tag_},
        {"plugins",
         {{{"type", "bridge"},
           {"bridge", "fcr0"},
           {"isGateway", true},
           {"isDefaultGateway", true},
           {"hairpinMode", true},
           {"ipam",
            {{"type", "host-local"},
             {"ranges", {{{{"subnet", "10.88.0.0/24"}}}}},
             {"dataDir", dir_ + "/ipam"}}}},
          {{"type", "fabric-nat"},
           {"capabilities", {{"portMappings", true}}},
           {"agentSocket", agent_->socket()},
           {"hairpin", true}}}}};
    std::ofstream(dir_ + "/cni/conf/10-fabric.conflist") << conflist.dump(2);
    WriteConfig();
    ASSERT_OK(StartContainerd());
    ASSERT_OK(ImportImage());
  }

  void TearDown() override {
    if (HasFailure()) {
      std::string log = ContainerdLog();
      if (log.size() > 12000) log = log.substr(log.size() - 12000);
      std::cerr << "--- containerd log (tail) ---\n" << log << "--- agent log ---\n"
                << (agent_ != nullptr ? agent_->LogText() : "") << "\n";
    }
    // The kubelet's way first, so containerd unmounts and deletes what it
    // made; then by force whatever is left.
    if (containerd_pid_ > 0) {
      for (const std::string& id : ListSandboxes()) RemovePod(id).IgnoreError();
    }
    KillContainerd();
    Cleanup();
    agent_.reset();
  }

  // containerd's config: every path private to this test.
  void WriteConfig() {
    const std::string& d = dir_;
    std::string cri = "[plugins.\"io.containerd.grpc.v1.cri\"";
    std::string text = absl::StrCat(
        "version = 2\n", "root = \"", d, "/root\"\n", "state = \"", d, "/state\"\n",
        // Plugins that would touch paths of the machine (opt installs into
        // /var/lib/containerd/opt) or that cannot work here.
        "disabled_plugins = [\"io.containerd.internal.v1.opt\", "
        "\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", "
        "\"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\", "
        "\"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n",
        "[grpc]\n  address = \"", socket(), "\"\n",
        "[ttrpc]\n  address = \"", socket(), ".ttrpc\"\n",
        "[debug]\n  address = \"\"\n  level = \"info\"\n",
        "[metrics]\n  address = \"\"\n",
        cri, "]\n",
        "  sandbox_image = \"", kImage, "\"\n",
        // The streaming server (exec/attach) listens in the host namespace.
        "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n",
        // Pod netns bind mounts under the private state dir, not /run/netns.
        "  netns_mounts_under_state_dir = true\n",
        "  enable_selinux = false\n",
        // The sandbox asks for oom_score_adj -998, which a process that
        // cannot lower its own score (as here) may not set: clamp pods to
        // containerd's own score.
        "  restrict_oom_score_adj = true\n",
        cri, ".cni]\n",
        "    bin_dir = \"", d, "/cni/bin\"\n",
        "    conf_dir = \"", d, "/cni/conf\"\n",
        "    max_conf_num = 1\n",
        cri, ".containerd]\n",
        "    snapshotter = \"overlayfs\"\n",
        "    default_runtime_name = \"runc\"\n",
        cri, ".containerd.runtimes.runc]\n",
        "      runtime_type = \"io.containerd.runc.v2\"\n",
        cri, ".containerd.runtimes.runc.options]\n",
        "        SystemdCgroup = false\n",
        "        Root = \"", d, "/state/runc\"\n");
    std::ofstream(d + "/containerd.toml") << text;
  }

  std::string socket() const { return dir_ + "/containerd.sock"; }
  std::string cgroup_parent() const { return tag_; }

  // Starts containerd in the host namespace and waits until the CRI plugin
  // answers with its network ready (the conflist loaded).
  absl::Status StartContainerd() {
    size_t log_start = ContainerdLog().size();
    pid_t pid = fork();
    if (pid < 0) return absl::InternalError("fork");
    if (pid == 0) {
      setpgid(0, 0);
      // nsenter --net, not `ip netns exec`: containerd must stay in the root
      // mount namespace, where its netns and rootfs mounts are seen by
      // everyone (the test included).
      std::string cmd = absl::StrCat(
          "exec nsenter --net=/run/netns/", host_->name(), " containerd --config ",
          dir_, "/containerd.toml >>", dir_, "/containerd.log 2>&1");
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    containerd_pid_ = pid;
    // Dial only once this containerd says it serves: a connection attempt
    // made earlier waits out gRPC's reconnect backoff (seconds).
    for (int i = 0; !absl::StrContains(ContainerdLog().substr(log_start),
                                       "containerd successfully booted");
         ++i) {
      int status;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        containerd_pid_ = -1;
        return absl::InternalError(absl::StrCat("containerd exited: ", ContainerdLog()));
      }
      if (i == 500) {
        return absl::DeadlineExceededError(
            absl::StrCat("containerd did not start: ", ContainerdLog()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    channel_ = grpc::CreateChannel("unix:" + socket(), grpc::InsecureChannelCredentials());
    runtime_ = cri::RuntimeService::NewStub(channel_);
    std::string last;
    for (int i = 0; i < 300; ++i) {
      int status;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        containerd_pid_ = -1;
        return absl::InternalError(absl::StrCat("containerd exited: ", ContainerdLog()));
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      cri::StatusRequest req;
      cri::StatusResponse resp;
      grpc::Status s = runtime_->Status(&ctx, req, &resp);
      if (s.ok()) {
        bool ready = true;
        for (const cri::RuntimeCondition& c : resp.status().conditions()) {
          if (!c.status()) ready = false;
          last = absl::StrCat(last, c.type(), "=", c.status(), " ", c.message(), "; ");
        }
        if (ready) return absl::OkStatus();
      } else {
        last = s.error_message();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("containerd not ready: ", last, "\n", ContainerdLog()));
  }

  void KillContainerd() {
    if (containerd_pid_ <= 0) return;
    kill(containerd_pid_, SIGKILL);
    waitpid(containerd_pid_, nullptr, 0);
    containerd_pid_ = -1;
  }

  std::string ContainerdLog() const { return ReadFile(dir_ + "/containerd.log"); }

  absl::Status ImportImage() {
    std::string tar = dir_ + "/image.tar";
    absl::StatusOr<std::string> out = Shell(absl::StrCat(
        "python3 ", Runfile("testing/oci_image.py"), " ", tar, " --name ", kImage,
        " --applet sh --applet sleep --applet cat --applet ls --applet nc",
        " --file ", Runfile("testing/podserve"), ":/bin/podserve",
        // The sandbox ("pause") container: sleeps until killed.
        " --cmd /bin/sleep 2147483647 && ctr -n k8s.io --address ", socket(),
        " images import --snapshotter overlayfs ", tar));
    return out.status();
  }

  // Runs a gRPC call with a deadline; the time it took in *took if given.
  template <typename Req, typename Resp, typename Method>
  absl::Status Call(Method method, const Req& req, Resp* resp, int seconds = 60,
                    absl::Duration* took = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    absl::Time start = absl::Now();
    grpc::Status s = (runtime_.get()->*method)(&ctx, req, resp);
    if (took != nullptr) *took = absl::Now() - start;
    return FromGrpc(s);
  }

  static cri::PortMapping Port(cri::Protocol proto, int host, int container) {
    cri::PortMapping m;
    m.set_protocol(proto);
    m.set_host_port(host);
    m.set_container_port(container);
    return m;
  }

  cri::PodSandboxConfig SandboxConfig(const std::string& name,
                                      const std::vector<cri::PortMapping>& ports) {
    cri::PodSandboxConfig c;
    c.mutable_metadata()->set_name(name);
    c.mutable_metadata()->set_uid(absl::StrCat(tag_, "-", name));
    c.mutable_metadata()->set_namespace_("default");
    c.set_hostname(name);
    c.set_log_directory(absl::StrCat(dir_, "/logs/", name));
    for (const cri::PortMapping& m : ports) *c.add_port_mappings() = m;
    (*c.mutable_labels())["app"] = name;
    c.mutable_linux()->set_cgroup_parent(cgroup_parent());
    return c;
  }

  // RunPodSandbox; TearDown removes whatever sandboxes are left.
  absl::StatusOr<std::string> RunSandbox(const cri::PodSandboxConfig& config,
                                         absl::Duration* took = nullptr) {
    cri::RunPodSandboxRequest req;
    *req.mutable_config() = config;
    cri::RunPodSandboxResponse resp;
    absl::Status s = Call(&cri::RuntimeService::Stub::RunPodSandbox, req, &resp, 60, took);
    if (!s.ok()) return s;
    return resp.pod_sandbox_id();
  }

  // A pod whose workload answers "<name> <peer>" on TCP 80 and UDP 53,
  // published on `ports`; returns once the workload listens.
  absl::StatusOr<Pod> RunPod(const std::string& name,
                             const std::vector<cri::PortMapping>& ports) {
    Pod pod;
    pod.name = name;
    pod.config = SandboxConfig(name, ports);
    absl::StatusOr<std::string> id = RunSandbox(pod.config);
    if (!id.ok()) return id.status();
    pod.sandbox_id = *id;

    cri::CreateContainerRequest create;
    create.set_pod_sandbox_id(pod.sandbox_id);
    cri::ContainerConfig* c = create.mutable_config();
    c->mutable_metadata()->set_name("serve");
    c->mutable_image()->set_image(kImage);
    c->add_command("/bin/podserve");
    for (const char* arg : {"serve", name.c_str(), "tcp:80", "udp:53"}) c->add_args(arg);
    c->set_log_path("serve.log");
    *create.mutable_sandbox_config() = pod.config;
    cri::CreateContainerResponse created;
    absl::Status s = Call(&cri::RuntimeService::Stub::CreateContainer, create, &created);
    if (!s.ok()) return s;
    pod.container_id = created.container_id();
    cri::StartContainerRequest start;
    start.set_container_id(pod.container_id);
    cri::StartContainerResponse started;
    s = Call(&cri::RuntimeService::Stub::StartContainer, start, &started);
    if (!s.ok()) return s;
    // podserve logs one line once its sockets are bound.
    std::string log = absl::StrCat(dir_, "/logs/", name, "/serve.log");
    for (int i = 0; i < 250; ++i) {
      if (absl::StrContains(ReadFile(log), "listening")) return pod;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("pod ", name, " did not listen: ", ReadFile(log)));
  }

  // StopPodSandbox then RemovePodSandbox, as kubelet does.
  absl::Status RemovePod(const std::string& sandbox_id) {
    cri::StopPodSandboxRequest stop;
    stop.set_pod_sandbox_id(sandbox_id);
    cri::StopPodSandboxResponse stopped;
    absl::Status s = Call(&cri::RuntimeService::Stub::StopPodSandbox, stop, &stopped);
    if (!s.ok()) return s;
    cri::RemovePodSandboxRequest remove;
    remove.set_pod_sandbox_id(sandbox_id);
    cri::RemovePodSandboxResponse removed;
    s = Call(&cri::RuntimeService::Stub::RemovePodSandbox, remove, &removed);
    return s;
  }

  // Every sandbox containerd knows, ready or not (kubelet's garbage
  // collector removes the not-ready ones).
  std::vector<std::string> ListSandboxes() {
    cri::ListPodSandboxRequest req;
    cri::ListPodSandboxResponse resp;
    std::vector<std::string> ids;
    if (!Call(&cri::RuntimeService::Stub::ListPodSandbox, req, &resp, 10).ok()) return ids;
    for (const cri::PodSandbox& p : resp.items()) ids.push_back(p.id());
    return ids;
  }

  // Runs `cmd` in a container (CRI ExecSync); its stdout, or an error with
  // its stderr.
  absl::StatusOr<std::string> ExecSync(const std::string& container_id,
                                       const std::vector<std::string>& cmd) {
    cri::ExecSyncRequest req;
    req.set_container_id(container_id);
    for (const std::string& a : cmd) req.add_cmd(a);
    req.set_timeout(10);
    cri::ExecSyncResponse resp;
    absl::Status s = Call(&cri::RuntimeService::Stub::ExecSync, req, &resp, 20);
    if (!s.ok()) return s;
    if (resp.exit_code() != 0) {
      return absl::InternalError(absl::StrCat(absl::StrJoin(cmd, " "), " exited ",
                                              resp.exit_code(), ": ", resp.stderr()));
    }
    return resp.stdout();
  }

  // The agent's mappings as "OWNER-ID PROTO HOST-IP:PORT -> TARGET-IP:PORT".
  absl::StatusOr<std::vector<std::string>> Mappings() {
    absl::StatusOr<std::string> out = testing::Fabricctl(agent_->socket(), "list --json");
    if (!out.ok()) return out.status();
    std::vector<std::string> rows;
    json j = json::parse(*out);
    for (const json& m : j.value("mappings", json::array())) {
      rows.push_back(absl::StrCat(m["owner"].value("id", ""), " ",
                                  m.value("protocol", ""), " ",
                                  m.value("host_ip", ""), ":", m.value("host_port", 0),
                                  " -> ", m.value("target_ip", ""), ":",
                                  m.value("target_port", 0)));
    }
    return rows;
  }

  // The pod's address, from PodSandboxStatus (the CNI result).
  absl::StatusOr<std::string> PodIp(const Pod& pod) {
    cri::PodSandboxStatusRequest req;
    req.set_pod_sandbox_id(pod.sandbox_id);
    cri::PodSandboxStatusResponse resp;
    absl::Status s = Call(&cri::RuntimeService::Stub::PodSandboxStatus, req, &resp);
    if (!s.ok()) return s;
    return resp.status().network().ip();
  }

  // The row Mappings() shows for one of `pod`'s ports.
  std::string Row(const Pod& pod, const std::string& proto, int host_port,
                  int container_port) {
    // fabric-nat owns a mapping as "container/ifname/network"; containerd's
    // CNI container id is the sandbox id. No hostIP: every local address.
    return absl::StrCat(pod.sandbox_id, "/eth0/", tag_, " PROTOCOL_", proto, " :", host_port,
                        " -> ", PodIp(pod).value_or("?"), ":", container_port);
  }

  // The shims (containerd-shim-runc-v2) this test's containerd started.
  std::vector<pid_t> Shims() {
    std::vector<pid_t> shims;
    for (pid_t pid : PidsWithArg(socket())) {
      if (absl::StrContains(ReadFile(absl::StrCat("/proc/", pid, "/cmdline")),
                            "containerd-shim")) {
        shims.push_back(pid);
      }
    }
    return shims;
  }

  // This run's cgroup parent in every hierarchy.
  std::vector<std::string> CgroupDirs() {
    std::vector<std::string> dirs;
    for (const std::string& own : OwnCgroups()) dirs.push_back(own + "/" + cgroup_parent());
    return dirs;
  }

  // Whatever containerd left: shims and pod processes killed, mounts under
  // the temp dir unmounted, cgroups removed, shim sockets and libcni cache
  // files of this run deleted.
  void Cleanup() {
    std::set<std::string> shim_sockets;
    std::string bundles = dir_ + "/state/io.containerd.runtime.v2.task/k8s.io";
    if (DIR* d = opendir(bundles.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string address = ReadFile(absl::StrCat(bundles, "/", e->d_name, "/address"));
        absl::string_view a = absl::StripAsciiWhitespace(address);
        if (absl::ConsumePrefix(&a, "unix://")) shim_sockets.insert(std::string(a));
      }
      closedir(d);
    }
    for (pid_t pid : Shims()) kill(pid, SIGKILL);
    for (const std::string& cg : CgroupDirs()) RemoveCgroup(cg);
    UnmountUnder(dir_);
    for (const std::string& s : shim_sockets) unlink(s.c_str());
    Shell(absl::StrCat("rm -f /var/lib/cni/results/", tag_, "-*")).IgnoreError();
  }

  testing::ScopedTempDir tmp_{"cd"};
  std::string dir_;
  std::string tag_;
  static inline int runs_ = 0;
  std::unique_ptr<Netns> host_, outside_;
  std::unique_ptr<AgentProcess> agent_;
  pid_t containerd_pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<cri::RuntimeService::Stub> runtime_;
};

// A pod without ports: containerd runs the sandbox and workload with this
// test's config and image, and CNI (bridge + fabric-nat) gives it an address.
TEST_F(ContainerdEndToEndTest, RunsAPodWithoutPorts) {
  cri::VersionRequest vreq;
  vreq.set_version("v1");
  cri::VersionResponse version;
  ASSERT_OK(Call(&cri::RuntimeService::Stub::Version, vreq, &version));
  EXPECT_EQ(version.runtime_name(), "containerd");
  EXPECT_EQ(version.runtime_api_version(), "v1");
  ASSERT_OK_AND_ASSIGN(Pod pod, RunPod("p0", {}));
  cri::PodSandboxStatusRequest sreq;
  sreq.set_pod_sandbox_id(pod.sandbox_id);
  cri::PodSandboxStatusResponse status;
  ASSERT_OK(Call(&cri::RuntimeService::Stub::PodSandboxStatus, sreq, &status));
  EXPECT_EQ(status.status().state(), cri::SANDBOX_READY);
  EXPECT_THAT(status.status().network().ip(), StartsWith("10.88.0."));
  // The pod's workload answers on the pod's own address from the host.
  EXPECT_THAT(Ask(*host_, "tcp", status.status().network().ip(), 80),
              IsOkAndHolds("p0 10.88.0.1\n"));
  EXPECT_THAT(Mappings(), IsOkAndHolds(::testing::IsEmpty()));
  ASSERT_OK(RemovePod(pod.sandbox_id));
  EXPECT_THAT(Shims(), ::testing::IsEmpty());
}

// TCP and UDP hostPorts reach the pod's workload from outside; the agent
// holds exactly the pod's two mappings; stopping and removing the pod closes
// both ports and ends its shim.
TEST_F(ContainerdEndToEndTest, HostPortsReachThePodUntilItIsRemoved) {
  ASSERT_OK_AND_ASSIGN(Pod web, RunPod("web", {Port(cri::TCP, 8080, 80),
                                               Port(cri::UDP, 5353, 53)}));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(Ask(*outside_, "udp", "192.0.2.1", 5353), IsOkAndHolds("web 192.0.2.2\n"));
  EXPECT_THAT(Mappings(), IsOkAndHolds(UnorderedElementsAre(Row(web, "TCP", 8080, 80),
                                                            Row(web, "UDP", 5353, 53))));
  EXPECT_THAT(Shims(), ::testing::SizeIs(1));
  ASSERT_OK(RemovePod(web.sandbox_id));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("no answer")));
  EXPECT_THAT(Ask(*outside_, "udp", "192.0.2.1", 5353, 0.5),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("no answer")));
  EXPECT_THAT(Mappings(), IsOkAndHolds(::testing::IsEmpty()));
  EXPECT_THAT(Shims(), ::testing::IsEmpty());
}

// Hairpin: pods reach each other's (and their own) published ports through
// the host's address. A third pod asking for a held port is refused, and
// containerd's error carries fabric-nat's, naming the holder; the holder
// keeps its port and the agent holds exactly the first two pods' mappings.
TEST_F(ContainerdEndToEndTest, HairpinAndAHeldPortNamingItsHolder) {
  ASSERT_OK_AND_ASSIGN(Pod a, RunPod("pa", {Port(cri::TCP, 8080, 80)}));
  ASSERT_OK_AND_ASSIGN(Pod b, RunPod("pb", {Port(cri::TCP, 8081, 80)}));
  EXPECT_THAT(ExecSync(b.container_id, {"/bin/podserve", "ask", "tcp", "192.0.2.1", "8080"}),
              IsOkAndHolds(StartsWith("pa ")));
  EXPECT_THAT(ExecSync(a.container_id, {"/bin/podserve", "ask", "tcp", "192.0.2.1", "8081"}),
              IsOkAndHolds(StartsWith("pb ")));
  EXPECT_THAT(ExecSync(a.container_id, {"/bin/podserve", "ask", "tcp", "192.0.2.1", "8080"}),
              IsOkAndHolds(StartsWith("pa ")));

  absl::StatusOr<std::string> c = RunSandbox(SandboxConfig("pc", {Port(cri::TCP, 8080, 80)}));
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kUnknown,
                          AllOf(HasSubstr("plugin type=\"fabric-nat\""),
                                HasSubstr(absl::StrCat(
                                    "host port 8080/tcp on 0.0.0.0 is held by container ",
                                    a.sandbox_id.substr(0, 12), " (eth0, network ", tag_,
                                    ")")))));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("pa 192.0.2.2\n"));
  EXPECT_THAT(Mappings(), IsOkAndHolds(UnorderedElementsAre(Row(a, "TCP", 8080, 80),
                                                            Row(b, "TCP", 8081, 80))));
}

// containerd killed with SIGKILL: the pod keeps running and answering (its
// shim lives on). Started again, containerd removes the pod, and the CNI DEL
// it runs from its cache removes the mapping.
TEST_F(ContainerdEndToEndTest, RestartedContainerdStillRemovesTheMapping) {
  ASSERT_OK_AND_ASSIGN(Pod pod, RunPod("pk", {Port(cri::TCP, 8080, 80)}));
  KillContainerd();
  EXPECT_THAT(Shims(), ::testing::SizeIs(1));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("pk 192.0.2.2\n"));
  ASSERT_OK(StartContainerd());
  EXPECT_THAT(Mappings(), IsOkAndHolds(UnorderedElementsAre(Row(pod, "TCP", 8080, 80))));
  ASSERT_OK(RemovePod(pod.sandbox_id));
  EXPECT_THAT(Mappings(), IsOkAndHolds(::testing::IsEmpty()));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080, 0.5),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("no answer")));
  EXPECT_THAT(Shims(), ::testing::IsEmpty());
}

// Agent down: RunPodSandbox fails within fabric-nat's own bound (5 s for
// ADD, and as much for the DEL containerd runs to clean up), naming the
// agent's socket. With the agent back, a new pod gets its port.
TEST_F(ContainerdEndToEndTest, AgentDownFailsFastAndANewPodWorksOnceItIsBack) {
  agent_->Stop();
  absl::Duration took;
  absl::StatusOr<std::string> down =
      RunSandbox(SandboxConfig("pd", {Port(cri::TCP, 8080, 80)}), &took);
  EXPECT_THAT(down, StatusIs(absl::StatusCode::kUnknown,
                             AllOf(HasSubstr("plugin type=\"fabric-nat\""),
                                   HasSubstr(agent_->socket()))));
  EXPECT_LT(took, absl::Seconds(12));
  agent_.reset();
  ASSERT_OK_AND_ASSIGN(agent_, AgentProcess::Start(host_.get(), dir_ + "/agent"));
  // containerd keeps the failed sandbox, not ready: the DEL of its cleanup
  // could not reach the agent either. Removing it, as kubelet's garbage
  // collector does, works now.
  std::vector<std::string> left = ListSandboxes();
  ASSERT_THAT(left, ::testing::SizeIs(1));
  ASSERT_OK(RemovePod(left[0]));
  ASSERT_OK_AND_ASSIGN(Pod pod, RunPod("pe", {Port(cri::TCP, 8080, 80)}));
  EXPECT_THAT(Ask(*outside_, "tcp", "192.0.2.1", 8080), IsOkAndHolds("pe 192.0.2.2\n"));
  EXPECT_THAT(Mappings(), IsOkAndHolds(UnorderedElementsAre(Row(pod, "TCP", 8080, 80))));
}

}  // namespace
}  // namespace fabric
