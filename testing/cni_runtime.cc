#include "testing/cni_runtime.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace fabric::testing {

using json = nlohmann::json;

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && ws != nullptr) {
    return absl::StrCat(srcdir, "/", ws, "/", path);
  }
  return path;
}

absl::StatusOr<std::string> Fabricctl(const std::string& socket,
                                      const std::string& args) {
  return Shell(absl::StrCat(Runfile("agent/fabricctl"), " --socket ", socket, " ", args));
}

namespace {
std::string TempFile(const std::string& content) {
  char path[] = "/tmp/fnt-stdin-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) {
    (void)!write(fd, content.data(), content.size());
    close(fd);
  }
  return path;
}
}  // namespace

PluginRun CniRuntime::Exec(const std::string& type,
                           const std::map<std::string, std::string>& env,
                           const json& stdin_json) {
  std::string input = TempFile(stdin_json.is_null() ? "" : stdin_json.dump());
  std::string cmd = absl::StrCat("ip netns exec ", host_->name(), " env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin");
  for (const auto& [k, v] : env) absl::StrAppend(&cmd, " ", k, "=", ShellQuote(v));
  absl::StrAppend(&cmd, " ", cni_path_, "/", type, " < ", input);
  auto start = absl::Now();
  absl::StatusOr<CommandResult> r = RunCommand(cmd);
  PluginRun run;
  run.took = absl::Now() - start;
  run.plugin = type;
  unlink(input.c_str());
  if (!r.ok()) {
    run.exit_code = -1;
    run.raw = std::string(r.status().message());
    return run;
  }
  run.exit_code = r->exit_code;
  run.raw = r->out + r->err;
  if (!r->out.empty()) {
    try {
      run.output = json::parse(r->out);
    } catch (const json::exception&) {
    }
  }
  return run;
}

json CniRuntime::PluginConfig(const json& plugin, const json& port_mappings,
                              const json& prev_result) const {
  json c = plugin;
  c["name"] = conflist_["name"];
  c["cniVersion"] = conflist_["cniVersion"];
  c.erase("capabilities");
  if (plugin.contains("capabilities") && plugin["capabilities"].value("portMappings", false) &&
      !port_mappings.is_null()) {
    c["runtimeConfig"]["portMappings"] = port_mappings;
  }
  if (!prev_result.is_null()) c["prevResult"] = prev_result;
  return c;
}

std::map<std::string, std::string> CniRuntime::Env(const std::string& command,
                                                   const std::string& container_id,
                                                   const std::string& netns_path,
                                                   const std::string& ifname) const {
  std::map<std::string, std::string> env = {{"CNI_COMMAND", command},
                                            {"CNI_PATH", cni_path_}};
  if (!container_id.empty()) env["CNI_CONTAINERID"] = container_id;
  if (!netns_path.empty()) env["CNI_NETNS"] = netns_path;
  if (!ifname.empty()) env["CNI_IFNAME"] = ifname;
  for (const auto& [name, value] : extra_env_) env[name] = value;
  return env;
}

PluginRun CniRuntime::Add(const std::string& container_id,
                          const std::string& netns_path, const std::string& ifname,
                          const json& port_mappings) {
  json prev;
  PluginRun last;
  for (const json& plugin : conflist_["plugins"]) {
    last = Exec(plugin["type"], Env("ADD", container_id, netns_path, ifname),
                PluginConfig(plugin, port_mappings, prev));
    if (last.exit_code != 0) return last;
    prev = last.output;
  }
  cache_[container_id + "/" + ifname] = prev;
  cached_mappings_[container_id + "/" + ifname] = port_mappings;
  return last;
}

PluginRun CniRuntime::Check(const std::string& container_id,
                            const std::string& netns_path, const std::string& ifname) {
  std::string key = container_id + "/" + ifname;
  PluginRun last;
  for (const json& plugin : conflist_["plugins"]) {
    last = Exec(plugin["type"], Env("CHECK", container_id, netns_path, ifname),
                PluginConfig(plugin, cached_mappings_[key], cache_[key]));
    if (last.exit_code != 0) return last;
  }
  return last;
}

PluginRun CniRuntime::Del(const std::string& container_id,
                          const std::string& netns_path, const std::string& ifname) {
  std::string key = container_id + "/" + ifname;
  json prev = cache_.count(key) ? cache_[key] : json();
  PluginRun last;
  const json& plugins = conflist_["plugins"];
  for (auto it = plugins.rbegin(); it != plugins.rend(); ++it) {
    last = Exec((*it)["type"], Env("DEL", container_id, netns_path, ifname),
                PluginConfig(*it, cached_mappings_[key], prev));
    if (last.exit_code != 0) return last;
  }
  cache_.erase(key);
  return last;
}

PluginRun CniRuntime::Gc(const json& valid) {
  PluginRun last;
  for (const json& plugin : conflist_["plugins"]) {
    json c = PluginConfig(plugin, json(), json());
    c["cniVersion"] = "1.1.0";
    c["cni.dev/valid-attachments"] = valid;
    last = Exec(plugin["type"], {{"CNI_COMMAND", "GC"}, {"CNI_PATH", cni_path_}}, c);
    if (last.exit_code != 0) return last;
  }
  return last;
}

PluginRun CniRuntime::Status() {
  PluginRun last;
  for (const json& plugin : conflist_["plugins"]) {
    json c = PluginConfig(plugin, json(), json());
    c["cniVersion"] = "1.1.0";
    last = Exec(plugin["type"], {{"CNI_COMMAND", "STATUS"}, {"CNI_PATH", cni_path_}}, c);
    if (last.exit_code != 0) return last;
  }
  return last;
}

absl::StatusOr<std::unique_ptr<AgentProcess>> AgentProcess::Start(
    Netns* ns, const std::string& dir, const std::string& extra_flags) {
  std::unique_ptr<AgentProcess> a(new AgentProcess());
  a->socket_ = dir + "/agent.sock";
  a->log_ = dir + "/agent.log";
  mkdir(dir.c_str(), 0700);
  // Ready when this process logs that it serves (a stale socket file from an
  // earlier agent proves nothing).
  size_t log_start = 0;
  {
    struct stat st;
    if (stat(a->log_.c_str(), &st) == 0) log_start = st.st_size;
  }
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork");
  if (pid == 0) {
    std::string cmd = absl::StrCat(
        "exec ", Runfile("agent/fabric-agent"), " --socket ", a->socket_,
        " --state_dir ", dir, "/state --run_dir ", dir, "/run --metrics_address= --reconcile_interval=0 ",
        extra_flags, " >>", a->log_, " 2>&1");
    execl("/usr/bin/env", "env", "ip", "netns", "exec", ns->name().c_str(), "sh",
          "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  a->pid_ = pid;
  for (int i = 0; i < 500; ++i) {
    std::string text = a->LogText();
    if (text.size() > log_start &&
        text.find("serving unix:", log_start) != std::string::npos) {
      return a;
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      a->pid_ = -1;
      return absl::InternalError(
          absl::StrCat("agent exited: ", a->LogText().substr(log_start)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError(absl::StrCat("agent did not start: ", a->LogText()));
}

std::string AgentProcess::LogText() const {
  std::ifstream f(log_);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

bool AgentProcess::LogShows(const std::string& text, absl::Duration within) const {
  const absl::Time deadline = absl::Now() + within;
  for (;;) {
    if (LogText().find(text) != std::string::npos) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

absl::Status WriteByRename(const std::string& path, const std::string& text) {
  return Shell(absl::StrCat("printf '%s' ", ShellQuote(text), " > ", path, ".tmp && mv ", path,
                            ".tmp ", path))
      .status();
}

void AgentProcess::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

void AgentProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

AgentProcess::~AgentProcess() { Stop(); }

}  // namespace fabric::testing
