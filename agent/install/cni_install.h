// The install step of a node: puts the fabric-nat plugin into the node's CNI
// bin dir and a network configuration list that uses it into the CNI conf
// dir, so that runtimes (containerd, CRI-O, Podman) call fabric-nat for
// every pod with ports. Run by `fabric-agent install-cni` (the DaemonSet's
// sidecar, or by hand on a Podman host or router).
//
// Every write is atomic and happens only when the content changes: a temp
// file in the same directory, fsync, rename, fsync of the directory. A file
// is never deleted first, so a runtime reading the directory, or a copy of
// the plugin that is executing, sees either the old or the new file whole.
//
// Two modes:
//  - chain (default): the node's existing network, the first configuration
//    in the directory in the order runtimes load them (sorted names; .conf,
//    .conflist, .json), or one named by `chain_into`, is written again as
//    `conf_name` with fabric-nat appended (a .conf becomes a list; a portmap
//    entry is replaced, so nothing is published twice). `conf_name` sorts
//    first, so runtimes pick it; the original is never modified and takes
//    over again when uninstall removes `conf_name`.
//  - own network: the list in `network_config` is written as `conf_name`
//    (fabric-nat appended if it lacks it).
//
// Thread-compatible; the watch loop runs on its caller's thread.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fabric::agent::install {

struct InstallConfig {
  // The plugin binary to install, and where.
  std::string plugin_source = "/usr/local/bin/fabric-nat";
  std::string cni_bin_dir = "/opt/cni/bin";
  std::string cni_conf_dir = "/etc/cni/net.d";
  // The file written in cni_conf_dir.
  std::string conf_name = "00-fabric-nat.conflist";
  // Chain mode: the file in cni_conf_dir to chain into; empty: the first.
  std::string chain_into;
  // Own-network mode: a conflist file to install instead of chaining.
  std::string network_config;
  // What the fabric-nat entry says: the agent's socket and options, a JSON
  // object of extra keys (e.g. {"masquerade": true}).
  std::string agent_socket = "/run/fabric-nat/agent.sock";
  std::string plugin_options = R"({"hairpin": true})";
};

// Copies plugin_source to cni_bin_dir/fabric-nat (mode 0755) unless that
// already holds the same bytes. Returns whether it wrote. kNotFound: no
// source; kInternal (with the path and errno text) on I/O errors.
absl::StatusOr<bool> InstallPlugin(const InstallConfig& config);

// The conflist `conf_name` should hold, and the file it was derived from
// (chain mode; empty in own-network mode). kFailedPrecondition: nothing to
// chain into yet, or a file that sorts before conf_name would shadow it;
// kInvalidArgument: a source that is not a usable CNI configuration (the
// message names the file and the problem).
struct Rendered {
  std::string content;
  std::string source;
};
absl::StatusOr<Rendered> RenderConflist(const InstallConfig& config);

// Writes `content` to cni_conf_dir/conf_name unless it already holds it.
// Returns whether it wrote.
absl::StatusOr<bool> WriteConfIfChanged(const InstallConfig& config,
                                        const std::string& content);

// Removes conf_name (the runtimes fall back to the original network) and,
// with `remove_plugin`, the plugin binary. Missing files are not an error.
absl::Status Uninstall(const InstallConfig& config, bool remove_plugin);

// Writes `content` to `path` atomically (see the file comment), mode `mode`.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content,
                                 int mode);

// The install loop: installs the plugin, waits until `agent_ready` returns
// OK (polling every `poll`), writes the conflist, and then, while `stop` is
// false, watches both directories (inotify) and the period `recheck`, and
// puts back whatever changed: a new or edited source network, a deleted
// conflist or plugin. Each change it makes or error it meets is passed to
// `log`. With `once`, it returns after the first conflist write (or the
// first error). Returns OK when stopped.
struct LoopOptions {
  bool once = false;
  absl::Duration poll = absl::Seconds(1);
  absl::Duration recheck = absl::Seconds(30);
};
absl::Status RunInstaller(const InstallConfig& config, const LoopOptions& options,
                          const std::function<absl::Status()>& agent_ready,
                          const std::function<void(const std::string&)>& log,
                          const std::atomic<bool>& stop);

}  // namespace fabric::agent::install
