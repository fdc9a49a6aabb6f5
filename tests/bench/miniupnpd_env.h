// What the benchmarks against Debian's miniupnpd share: the namespace layout
// both servers run in, miniupnpd itself (started there, stopped by its pid
// file), and percentiles.
//
//   LAN 192.168.77.10 --- lan0 192.168.77.1 [router] wan0 W.1 --- outside W.2 (STUN)
//
// miniupnpd needs two things here (see docs/ARCHITECTURE.md): a STUN server
// outside that reports the WAN address as not behind NAT (its reserved-range
// check otherwise refuses to forward), and table inet filter with its three
// chains, which Debian's nft_init.sh fails to create (here hooked from base
// chains at prerouting, postrouting and forward, so its mappings forward
// real packets).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "testing/netns.h"

namespace fabric::bench {

constexpr char kLanHost[] = "192.168.77.10";
constexpr char kLanRouter[] = "192.168.77.1";

struct Layout {
  std::unique_ptr<testing::Netns> router, lan, outside;
  std::string wan;      // the router's WAN address, W.1
  std::string stun;     // the outside host, W.2
};

// The layout with WAN network `wan_net` ("203.0.113": W.1/24 and W.2/24).
absl::StatusOr<Layout> MakeLayout(const std::string& wan_net);

// Debian's miniupnpd in `layout`'s router, configured with `services`
// (config lines: enable_natpmp=..., enable_upnp=..., http_port=...) on
// lan0, secure mode, LAN ports 1024-65535 only. Start waits until `ready`
// holds (up to 10 s).
class Miniupnpd {
 public:
  static absl::StatusOr<std::unique_ptr<Miniupnpd>> Start(Layout& layout, const std::string& dir,
                                                          const std::string& services,
                                                          const std::function<bool()>& ready);
  // It daemonizes: stopped by its pid file.
  ~Miniupnpd();
  // Stops it, flushes its chains, forgets its leases (the lease file),
  // and starts it again: a gateway restart with a new epoch. Waits for
  // `ready` as Start does.
  absl::Status Restart(const std::function<bool()>& ready);
  // The last `lines` lines of what it wrote before it daemonized.
  std::string LogTail(int lines) const;

 private:
  Miniupnpd(std::string dir, Layout* layout) : dir_(std::move(dir)), layout_(layout) {}
  void Stop();
  absl::Status Launch(const std::function<bool()>& ready);
  std::string dir_;
  Layout* layout_;
};

// The `p` quantile (0..1) of `v`; 0 when empty.
double Percentile(std::vector<double> v, double p);

}  // namespace fabric::bench
