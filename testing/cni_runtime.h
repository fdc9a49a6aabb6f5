// A container runtime's side of CNI, for end-to-end tests: runs a plugin
// chain (a conflist) exactly as libcni does — plugin by plugin, with the CNI
// environment, the network config on stdin, prevResult chained, capability
// arguments (portMappings) injected as runtimeConfig for plugins that
// declare them, the final result cached for CHECK and DEL, and DEL in
// reverse order. Plugins run inside the test's "host" namespace.
//
// Also starts fabric-agent in that namespace (AgentProcess).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "testing/netns.h"

namespace fabric::testing {

struct PluginRun {
  int exit_code = 0;
  nlohmann::json output;  // parsed stdout (null when empty or not JSON)
  std::string raw;
  std::string plugin;     // the plugin that produced it (the failing one)
  absl::Duration took;
};

class CniRuntime {
 public:
  // `cni_path`: directory with the plugins; `conflist`: a network
  // configuration list ({"cniVersion", "name", "plugins": [...]}).
  CniRuntime(Netns* host, std::string cni_path, nlohmann::json conflist)
      : host_(host), cni_path_(std::move(cni_path)), conflist_(std::move(conflist)) {}

  // Runs ADD through the chain; on failure the failing plugin's output.
  PluginRun Add(const std::string& container_id, const std::string& netns_path,
                const std::string& ifname, const nlohmann::json& port_mappings);
  PluginRun Check(const std::string& container_id, const std::string& netns_path,
                  const std::string& ifname);
  PluginRun Del(const std::string& container_id, const std::string& netns_path,
                const std::string& ifname);
  // GC over the whole list with these (containerID, ifname) still valid.
  PluginRun Gc(const nlohmann::json& valid_attachments);
  PluginRun Status();

  // An extra variable for every plugin run (libcni 1.2 passes TRACEPARENT
  // and TRACESTATE this way).
  void SetEnv(const std::string& name, const std::string& value) { extra_env_[name] = value; }

  // Runs one plugin binary with `env` and `stdin_json`.
  PluginRun Exec(const std::string& type, const std::map<std::string, std::string>& env,
                 const nlohmann::json& stdin_json);

 private:
  nlohmann::json PluginConfig(const nlohmann::json& plugin,
                              const nlohmann::json& port_mappings,
                              const nlohmann::json& prev_result) const;
  std::map<std::string, std::string> Env(const std::string& command,
                                         const std::string& container_id,
                                         const std::string& netns_path,
                                         const std::string& ifname) const;

  Netns* host_;
  std::string cni_path_;
  nlohmann::json conflist_;
  std::map<std::string, nlohmann::json> cache_;  // "cid/ifname" -> result
  std::map<std::string, nlohmann::json> cached_mappings_;
  std::map<std::string, std::string> extra_env_;
};

// fabric-agent running in a namespace, stopped (SIGTERM) by the destructor
// or Stop().
class AgentProcess {
 public:
  // Starts the agent binary with a socket and state dir under `dir`, plus
  // `extra_flags`, and waits until it serves.
  static absl::StatusOr<std::unique_ptr<AgentProcess>> Start(
      Netns* ns, const std::string& dir, const std::string& extra_flags = "");
  ~AgentProcess();
  void Stop();
  // SIGKILL, no cleanup.
  void Kill();
  const std::string& socket() const { return socket_; }
  // The agent's own pid (the shell execs it), e.g. for /proc/PID/status.
  pid_t pid() const { return pid_; }
  const std::string& log() const { return log_; }
  std::string LogText() const;
  // Whether `text` shows in the log within `within` (looking every 50 ms).
  bool LogShows(const std::string& text, absl::Duration within = absl::Seconds(3)) const;

 private:
  AgentProcess() = default;
  pid_t pid_ = -1;
  std::string socket_;
  std::string log_;
};

// Writes `text` to `path` as an editor saves: a new file renamed over the
// old one (what the agent's file watchers must follow).
absl::Status WriteByRename(const std::string& path, const std::string& text);

// Runfiles path of a binary of this workspace, e.g. "cni/fabric-nat".
std::string Runfile(const std::string& path);

// Runs `fabricctl --socket SOCKET ARGS`; its stdout.
absl::StatusOr<std::string> Fabricctl(const std::string& socket,
                                      const std::string& args);

}  // namespace fabric::testing
