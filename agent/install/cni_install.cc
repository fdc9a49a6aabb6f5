#include "agent/install/cni_install.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cni/versions.h"
#include "nlohmann/json.hpp"

namespace fabric::agent::install {
namespace {

using json = nlohmann::ordered_json;

constexpr char kPluginName[] = "fabric-nat";
absl::Status Errno(const std::string& what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

std::string Join(const std::string& dir, const std::string& name) {
  return absl::StrCat(dir, "/", name);
}

// The file's bytes; kNotFound when it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no file ", path));
    return Errno("open", path, errno);
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return Errno("read", path, err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

// The names runtimes load from a CNI conf dir (libcni's extensions), in the
// order they load them.
absl::StatusOr<std::vector<std::string>> ConfFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return Errno("open directory", dir, errno);
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (!absl::EndsWith(name, ".conf") && !absl::EndsWith(name, ".conflist") &&
        !absl::EndsWith(name, ".json")) {
      continue;
    }
    struct stat st;
    if (stat(Join(dir, name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool IsPlugin(const json& p, const char* type) {
  return p.is_object() && p.contains("type") && p["type"].is_string() &&
         p["type"].get<std::string>() == type;
}

// `file`'s content as a configuration list (a .conf or .json holds one
// plugin, which becomes a list of one, as libcni does).
absl::StatusOr<json> ParseList(const std::string& file, const std::string& data) {
  json j;
  try {
    j = json::parse(data);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, " is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file, " is not a JSON object"));
  }
  if (!absl::EndsWith(file, ".conflist")) {
    if (!j.contains("type") || !j["type"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, " is a single-plugin configuration without a \"type\""));
    }
    json list = json::object();
    if (j.contains("cniVersion")) list["cniVersion"] = j["cniVersion"];
    if (j.contains("name")) list["name"] = j["name"];
    json plugin = j;
    plugin.erase("cniVersion");
    plugin.erase("name");
    list["plugins"] = json::array({plugin});
    j = list;
  }
  if (!j.contains("name") || !j["name"].is_string() || j["name"].get<std::string>().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, " has no network \"name\""));
  }
  if (!j.contains("plugins") || !j["plugins"].is_array() || j["plugins"].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, " has no \"plugins\" list"));
  }
  for (const json& p : j["plugins"]) {
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": every entry of \"plugins\" needs a \"type\""));
    }
  }
  bool version_ok = false;
  std::string version = "(none)";
  if (j.contains("cniVersion") && j["cniVersion"].is_string()) {
    version = j["cniVersion"].get<std::string>();
    const auto& all = cni::SupportedVersions();
    version_ok = std::find(all.begin(), all.end(), version) != all.end();
  }
  if (!version_ok && j.contains("cniVersions") && j["cniVersions"].is_array()) {
    for (const json& v : j["cniVersions"]) {
      const auto& all = cni::SupportedVersions();
      if (v.is_string() && std::find(all.begin(), all.end(), v.get<std::string>()) != all.end()) {
        version_ok = true;
      }
    }
  }
  if (!version_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": cniVersion ", version, " cannot chain fabric-nat, which needs one of ",
        absl::StrJoin(cni::SupportedVersions(), ", ")));
  }
  return j;
}

// Puts fabric-nat into `list`: where portmap stood (portmap goes: both
// would publish the same ports), else last. An entry of fabric-nat that the
// list already has is kept as its author wrote it.
absl::Status AddFabricNat(const InstallConfig& config, json& list) {
  json entry = {{"type", kPluginName},
                {"capabilities", {{"portMappings", true}}},
                {"agentSocket", config.agent_socket}};
  json options;
  try {
    options = json::parse(config.plugin_options.empty() ? "{}" : config.plugin_options);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("plugin options are not valid JSON: ", e.what()));
  }
  if (!options.is_object()) {
    return absl::InvalidArgumentError("plugin options must be a JSON object");
  }
  for (auto it = options.begin(); it != options.end(); ++it) {
    if (it.key() == "type") {
      return absl::InvalidArgumentError("plugin options cannot set \"type\"");
    }
    entry[it.key()] = it.value();
  }
  json plugins = json::array();
  bool have_ours = false;
  int insert_at = -1;
  for (const json& p : list["plugins"]) {
    if (IsPlugin(p, "portmap")) {
      if (insert_at < 0) insert_at = static_cast<int>(plugins.size());
      continue;
    }
    if (IsPlugin(p, kPluginName)) have_ours = true;
    plugins.push_back(p);
  }
  if (!have_ours) {
    if (insert_at < 0) insert_at = static_cast<int>(plugins.size());
    plugins.insert(plugins.begin() + insert_at, entry);
  }
  list["plugins"] = plugins;
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::string& content,
                                 int mode) {
  std::string dir = path.substr(0, path.rfind('/'));
  if (dir.empty()) dir = "/";
  // A name no runtime loads (no .conf/.conflist/.json ending) and that
  // never collides: mkstemp.
  std::string tmp = Join(dir, ".fabric-install-XXXXXX");
  int fd = mkstemp(tmp.data());
  if (fd < 0) return Errno("create a temporary file in", dir, errno);
  auto fail = [&](const char* what) {
    int err = errno;
    close(fd);
    unlink(tmp.c_str());
    return Errno(what, tmp, err);
  };
  if (fchmod(fd, static_cast<mode_t>(mode)) != 0) return fail("chmod");
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("fsync");
  if (close(fd) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Errno("close", tmp, err);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Errno(absl::StrCat("rename ", tmp, " to").c_str(), path, err);
  }
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);  // the rename itself durable
    close(dfd);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> InstallPlugin(const InstallConfig& config) {
  absl::StatusOr<std::string> binary = ReadFile(config.plugin_source);
  if (!binary.ok()) {
    if (absl::IsNotFound(binary.status())) {
      return absl::NotFoundError(
          absl::StrCat("plugin binary ", config.plugin_source, " does not exist"));
    }
    return binary.status();
  }
  std::string target = Join(config.cni_bin_dir, kPluginName);
  absl::StatusOr<std::string> current = ReadFile(target);
  if (current.ok() && *current == *binary) {
    struct stat st;
    if (stat(target.c_str(), &st) == 0 && (st.st_mode & 0777) == 0755) return false;
  } else if (!current.ok() && !absl::IsNotFound(current.status())) {
    return current.status();
  }
  if (absl::Status s = WriteFileAtomically(target, *binary, 0755); !s.ok()) return s;
  return true;
}

absl::StatusOr<Rendered> RenderConflist(const InstallConfig& config) {
  absl::StatusOr<std::vector<std::string>> files = ConfFiles(config.cni_conf_dir);
  if (!files.ok()) return files.status();
  Rendered out;
  json list;
  if (!config.network_config.empty()) {
    absl::StatusOr<std::string> data = ReadFile(config.network_config);
    if (!data.ok()) return data.status();
    // The file is a list whatever its name.
    absl::StatusOr<json> parsed = ParseList(
        absl::EndsWith(config.network_config, ".conflist")
            ? config.network_config
            : absl::StrCat(config.network_config, " (as .conflist)"),
        *data);
    if (!parsed.ok()) return parsed.status();
    list = *std::move(parsed);
  } else {
    std::string source = config.chain_into;
    if (source.empty()) {
      for (const std::string& f : *files) {
        if (f != config.conf_name) {
          source = f;
          break;
        }
      }
    }
    if (source.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no CNI network configuration in ", config.cni_conf_dir,
          " to chain fabric-nat into (has the node's network plugin written one "
          "yet?); name one with --chain_into, or install a network of its own "
          "with --network_config"));
    }
    if (source == config.conf_name) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot chain into ", source, ": it is the file the install step writes"));
    }
    absl::StatusOr<std::string> data = ReadFile(Join(config.cni_conf_dir, source));
    if (!data.ok()) {
      if (absl::IsNotFound(data.status())) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the network to chain into, ", Join(config.cni_conf_dir, source),
            ", does not exist"));
      }
      return data.status();
    }
    absl::StatusOr<json> parsed = ParseList(Join(config.cni_conf_dir, source), *data);
    if (!parsed.ok()) return parsed.status();
    list = *std::move(parsed);
    out.source = source;
  }
  // Runtimes use the first file in sorted order: ours must be it.
  for (const std::string& f : *files) {
    if (f < config.conf_name) {
      return absl::FailedPreconditionError(absl::StrCat(
          Join(config.cni_conf_dir, f), " sorts before ", config.conf_name,
          ", so runtimes would use it instead of the network with fabric-nat; "
          "choose a name that sorts first with --cni_conf_name"));
    }
  }
  if (absl::Status s = AddFabricNat(config, list); !s.ok()) return s;
  out.content = list.dump(2) + "\n";
  return out;
}

absl::StatusOr<bool> WriteConfIfChanged(const InstallConfig& config,
                                        const std::string& content) {
  std::string path = Join(config.cni_conf_dir, config.conf_name);
  absl::StatusOr<std::string> current = ReadFile(path);
  if (current.ok() && *current == content) return false;
  if (!current.ok() && !absl::IsNotFound(current.status())) return current.status();
  if (absl::Status s = WriteFileAtomically(path, content, 0644); !s.ok()) return s;
  return true;
}

absl::Status Uninstall(const InstallConfig& config, bool remove_plugin) {
  std::vector<std::string> paths = {Join(config.cni_conf_dir, config.conf_name)};
  if (remove_plugin) paths.push_back(Join(config.cni_bin_dir, kPluginName));
  for (const std::string& p : paths) {
    if (unlink(p.c_str()) != 0 && errno != ENOENT) return Errno("remove", p, errno);
  }
  return absl::OkStatus();
}

namespace {

// inotify on the directories the installer depends on; Wait() returns when
// one changed, the timeout passed or `stop` was set.
class DirWatch {
 public:
  explicit DirWatch(const std::vector<std::string>& dirs)
      : fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    for (const std::string& d : dirs) {
      if (fd_ >= 0) {
        (void)inotify_add_watch(fd_, d.c_str(),
                                IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM |
                                    IN_CLOSE_WRITE | IN_ATTRIB);
      }
    }
  }
  ~DirWatch() {
    if (fd_ >= 0) close(fd_);
  }
  void Wait(absl::Duration timeout, const std::atomic<bool>& stop) {
    absl::Time deadline = absl::Now() + timeout;
    while (!stop.load() && absl::Now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      int slice = static_cast<int>(std::min<int64_t>(
          200, absl::ToInt64Milliseconds(deadline - absl::Now()) + 1));
      if (fd_ >= 0 && poll(&p, 1, slice) == 1) {
        // A burst of events (a rename, our own write) is one change: let it
        // settle, then drain.
        usleep(50 * 1000);
        char buf[4096];
        while (read(fd_, buf, sizeof(buf)) > 0) {
        }
        return;
      }
      if (fd_ < 0) usleep(slice * 1000);
    }
  }

 private:
  int fd_;
};

}  // namespace

absl::Status RunInstaller(const InstallConfig& config, const LoopOptions& options,
                          const std::function<absl::Status()>& agent_ready,
                          const std::function<void(const std::string&)>& log,
                          const std::atomic<bool>& stop) {
  std::vector<std::string> dirs = {config.cni_conf_dir, config.cni_bin_dir};
  if (!config.network_config.empty()) {
    size_t slash = config.network_config.rfind('/');
    dirs.push_back(slash == std::string::npos ? "."
                                              : config.network_config.substr(0, slash));
  }
  DirWatch watch(dirs);

  absl::StatusOr<bool> plugin = InstallPlugin(config);
  if (!plugin.ok()) {
    log(absl::StrCat("install-cni: ", plugin.status().message()));
    if (options.once) return plugin.status();
  } else if (*plugin) {
    log(absl::StrCat("install-cni: installed ", config.cni_bin_dir, "/", kPluginName));
  }

  // The network goes live only once the agent can serve it: before that,
  // every pod with ports would fail its ADD.
  std::string last_wait;
  for (;;) {
    if (stop.load()) return absl::OkStatus();
    absl::Status ready = agent_ready();
    if (ready.ok()) break;
    if (std::string(ready.message()) != last_wait) {
      last_wait = std::string(ready.message());
      log(absl::StrCat("install-cni: waiting for the agent: ", last_wait));
    }
    absl::SleepFor(options.poll);
  }

  std::string last_error;
  for (;;) {
    absl::Status status = absl::OkStatus();
    if (absl::StatusOr<bool> p = InstallPlugin(config); !p.ok()) {
      status = p.status();
    } else if (*p) {
      log(absl::StrCat("install-cni: installed ", config.cni_bin_dir, "/", kPluginName));
    }
    if (status.ok()) {
      absl::StatusOr<Rendered> r = RenderConflist(config);
      if (!r.ok()) {
        status = r.status();
      } else if (absl::StatusOr<bool> w = WriteConfIfChanged(config, r->content); !w.ok()) {
        status = w.status();
      } else if (*w) {
        log(absl::StrCat("install-cni: wrote ", config.cni_conf_dir, "/", config.conf_name,
                         r->source.empty() ? absl::StrCat(" from ", config.network_config)
                                           : absl::StrCat(" (", r->source, " with fabric-nat)")));
      }
    }
    if (!status.ok()) {
      // A condition that may pass (the network plugin has not written its
      // configuration yet): say it once, keep watching.
      if (std::string(status.message()) != last_error) {
        last_error = std::string(status.message());
        log(absl::StrCat("install-cni: ", last_error));
      }
      if (options.once) return status;
    } else {
      last_error.clear();
      if (options.once) return absl::OkStatus();
    }
    watch.Wait(options.recheck, stop);
    if (stop.load()) return absl::OkStatus();
  }
}

}  // namespace fabric::agent::install
