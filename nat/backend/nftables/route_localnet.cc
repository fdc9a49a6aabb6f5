// route_localnet, which localhost DNAT needs on an interface: turned on
// per interface, and what each held before remembered in a file so that
// turning it off (or a restart that finds the file) puts it back.
#include <net/if.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "nat/backend/nftables/nftables_backend.h"

namespace fabric::nat {

namespace {

// What route_localnet was on each interface before the agent turned it on,
// so that turning it off restores it rather than forcing 0. Kept in memory
// and, when the agent names one, in a file (a restart forgets nothing).
struct LocalnetMemory {
  std::mutex mu;
  bool loaded = false;                 // guarded by mu
  std::string path;                    // guarded by mu
  std::map<std::string, char> before;  // guarded by mu: interface -> '0'/'1'

  void LoadLocked() {
    if (loaded) return;
    loaded = true;
    if (path.empty()) return;
    std::ifstream f(path);
    std::string iface;
    char value;
    while (f >> iface >> value) {
      if (value == '0' || value == '1') before.emplace(iface, value);
    }
  }
  void SaveLocked() const {
    if (path.empty()) return;
    std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::trunc);
      for (const auto& [iface, value] : before) f << iface << " " << value << "\n";
    }
    std::rename(tmp.c_str(), path.c_str());
  }
};

LocalnetMemory& Memory() {
  static auto* m = new LocalnetMemory;
  return *m;
}

absl::StatusOr<char> ReadSysctl(const std::string& path) {
  std::ifstream f(path);
  char c = 0;
  if (!(f >> c) || (c != '0' && c != '1')) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  }
  return c;
}

}  // namespace

void SetRouteLocalnetMemory(const std::string& path) {
  LocalnetMemory& m = Memory();
  std::lock_guard<std::mutex> lock(m.mu);
  m.path = path;
  m.loaded = false;
  m.before.clear();
}

absl::Status SetRouteLocalnet(const std::string& interface, bool on) {
  // "all" and "default" are no interfaces: writing them would turn
  // route_localnet on for every interface (the CVE-2020-8558 class).
  if (interface.empty() || interface.size() >= IF_NAMESIZE ||
      interface.find('/') != std::string::npos || interface == "." || interface == ".." ||
      interface == "all" || interface == "default") {
    return absl::InvalidArgumentError(absl::StrCat("\"", interface, "\" is not an interface name"));
  }
  std::string path = absl::StrCat("/proc/sys/net/ipv4/conf/", interface, "/route_localnet");
  LocalnetMemory& m = Memory();
  std::lock_guard<std::mutex> lock(m.mu);
  m.LoadLocked();
  char value = '0';
  if (on) {
    if (if_nametoindex(interface.c_str()) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("no interface ", interface, " in this network namespace"));
    }
    absl::StatusOr<char> now = ReadSysctl(path);
    if (!now.ok()) return now.status();
    // The first time only: later calls (a resync) find our own 1.
    if (m.before.emplace(interface, *now).second) m.SaveLocked();
    value = '1';
  } else {
    auto it = m.before.find(interface);
    if (it != m.before.end()) {
      value = it->second;
      m.before.erase(it);
      m.SaveLocked();
    }
  }
  std::ofstream f(path);
  if (!f) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, " (does interface ", interface, " exist?)"));
  }
  f << value << "\n";
  f.close();
  if (!f) {
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace fabric::nat
