#include "tests/bench/miniupnpd_env.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "testing/cni_runtime.h"

namespace fabric::bench {

absl::StatusOr<Layout> MakeLayout(const std::string& wan_net) {
  Layout l;
  absl::StatusOr<std::unique_ptr<testing::Netns>> router = testing::Netns::Create("brouter");
  if (!router.ok()) return router.status();
  l.router = std::move(*router);
  absl::StatusOr<std::unique_ptr<testing::Netns>> lan = testing::Netns::Create("blan");
  if (!lan.ok()) return lan.status();
  l.lan = std::move(*lan);
  absl::StatusOr<std::unique_ptr<testing::Netns>> outside = testing::Netns::Create("bout");
  if (!outside.ok()) return outside.status();
  l.outside = std::move(*outside);
  l.wan = wan_net + ".1";
  l.stun = wan_net + ".2";
  absl::Status s = testing::Link(*l.router, "lan0", absl::StrCat(kLanRouter, "/24"), *l.lan,
                                 "eth0", absl::StrCat(kLanHost, "/24"));
  if (s.ok()) s = testing::Link(*l.router, "wan0", l.wan + "/24", *l.outside, "eth0", l.stun + "/24");
  if (s.ok()) s = l.lan->Exec(absl::StrCat("ip route add default via ", kLanRouter)).status();
  if (s.ok()) s = l.router->Exec("sysctl -qw net.ipv4.ip_forward=1").status();
  if (!s.ok()) return s;
  return l;
}

absl::StatusOr<std::unique_ptr<Miniupnpd>> Miniupnpd::Start(Layout& l, const std::string& dir,
                                                            const std::string& services,
                                                            const std::function<bool()>& ready) {
  std::unique_ptr<Miniupnpd> m(new Miniupnpd(dir, &l));
  std::string conf = dir + "/miniupnpd.conf";
  std::ofstream(conf) << "ext_ifname=wan0\nlistening_ip=lan0\n"
                      << services << "\n"
                      << "ext_perform_stun=yes\next_stun_host=" << l.stun
                      << "\next_stun_port=3478\n"
                      << "secure_mode=yes\nsystem_uptime=no\n"
                      << "lease_file=" << dir << "/miniupnpd.leases\n"
                      << "allow 1024-65535 192.168.77.0/24 1024-65535\n"
                      << "deny 0-65535 0.0.0.0/0 0-65535\n";
  absl::Status s = l.outside
                       ->Spawn(absl::StrCat("exec /usr/bin/python3 ",
                                            testing::Runfile("testing/stun.py"), " ", l.stun,
                                            " 3478"))
                       .status();
  if (s.ok()) {
    s = l.router
            ->Exec("nft add table inet filter && "
                   "nft add chain inet filter miniupnpd && "
                   "nft add chain inet filter prerouting_miniupnpd && "
                   "nft add chain inet filter postrouting_miniupnpd && "
                   // Hooked, as a router's firewall would, so its mappings
                   // forward real packets.
                   "nft add chain inet filter prerouting "
                   "'{ type nat hook prerouting priority dstnat; }' && "
                   "nft add rule inet filter prerouting jump prerouting_miniupnpd && "
                   "nft add chain inet filter postrouting "
                   "'{ type nat hook postrouting priority srcnat; }' && "
                   "nft add rule inet filter postrouting jump postrouting_miniupnpd && "
                   "nft add chain inet filter forward "
                   "'{ type filter hook forward priority filter; }' && "
                   "nft add rule inet filter forward jump miniupnpd")
            .status();
  }
  if (s.ok()) s = m->Launch(ready);
  if (!s.ok()) return s;
  return m;
}

absl::Status Miniupnpd::Launch(const std::function<bool()>& ready) {
  // No -d: its debug log lists every rule on every request.
  absl::Status s = layout_->router
                       ->Spawn(absl::StrCat("exec miniupnpd -f ", dir_, "/miniupnpd.conf -P ",
                                            dir_, "/miniupnpd.pid > ", dir_,
                                            "/miniupnpd.log 2>&1"))
                       .status();
  if (!s.ok()) return s;
  for (int i = 0; i < 100; ++i) {
    if (ready()) return absl::OkStatus();
    usleep(100000);
  }
  return absl::UnavailableError(
      absl::StrCat("miniupnpd did not answer; its log:\n", LogTail(20)));
}

absl::Status Miniupnpd::Restart(const std::function<bool()>& ready) {
  Stop();
  // Its rules go too, as Debian's init script flushes them at stop.
  absl::Status s = layout_->router
                       ->Exec("nft flush chain inet filter miniupnpd && "
                              "nft flush chain inet filter prerouting_miniupnpd && "
                              "nft flush chain inet filter postrouting_miniupnpd")
                       .status();
  if (!s.ok()) return s;
  unlink((dir_ + "/miniupnpd.leases").c_str());
  unlink((dir_ + "/miniupnpd.pid").c_str());
  return Launch(ready);
}

Miniupnpd::~Miniupnpd() { Stop(); }

void Miniupnpd::Stop() {
  pid_t pid = 0;
  std::ifstream(dir_ + "/miniupnpd.pid") >> pid;
  if (pid <= 1) return;
  // Not ours to reap (it daemonized): a zombie counts as gone.
  auto alive = [pid] {
    std::string stat;
    std::getline(std::ifstream(absl::StrCat("/proc/", pid, "/stat")), stat);
    size_t paren = stat.rfind(") ");
    return paren != std::string::npos && stat.compare(paren + 2, 1, "Z") != 0;
  };
  kill(pid, SIGTERM);
  for (int i = 0; i < 50 && alive(); ++i) usleep(20000);
  if (alive()) kill(pid, SIGKILL);
}

std::string Miniupnpd::LogTail(int lines) const {
  absl::StatusOr<std::string> tail =
      testing::Shell(absl::StrCat("tail -", lines, " ", dir_, "/miniupnpd.log"));
  return tail.ok() ? *tail : std::string(tail.status().message());
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

}  // namespace fabric::bench
