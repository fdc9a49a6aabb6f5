// UpstreamKeeper: --upstream. Keeps every published host port of the CNI,
// API and static-forward owners also mapped on the LAN's own gateway
// (agent/upstream: PCP, NAT-PMP or UPnP IGD), for the same external port
// where the gateway allows, so that a node behind a home or office router
// is reachable from beyond it. NAT-PMP/PCP/UPnP leases are not: those are
// ours to give to LAN hosts, not to take from the router above.
//
// It follows the core by its snapshots (a thread looks every
// scan_interval, and does nothing while the snapshot is the same): a
// mapping that appears is mapped upstream (each port of a range, up to
// kMaxRangePorts), one that goes is unmapped. IPv4 and TCP/UDP only. A CNI
// network's "upstream" key (AttachmentOptions.upstream) overrides the
// flag either way.
//
// What the gateway granted is recorded in <state_dir>/upstream.json
// (protocol, port, external port, method; written atomically on every
// change), so a restarted agent asks for the same external port again and
// renews rather than duplicates (PCP also repeats its nonce, derived from
// the machine id), and deletes on the gateway what was mapped for ports
// that went while it was down. Stopping leaves the gateway's mappings to
// their lifetime, for the next start to renew.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/upstream/mapper.h"
#include "fabric/nat/v1/nat.pb.h"

namespace fabric::agent {

// The (protocol, port)s `snap`'s mappings want on the LAN's gateway, by
// mapping id: owner kinds cni, api and static, IPv4, TCP and UDP, each port
// of a range up to `max_range_ports`; `by_default` unless the mapping's CNI
// attachment says otherwise (AttachmentOptions.upstream).
std::map<std::pair<upstream::Proto, uint16_t>, std::string> UpstreamPorts(
    const Snapshot& snap, bool by_default, int max_range_ports);

class UpstreamKeeper {
 public:
  static constexpr int kMaxRangePorts = 64;

  struct Options {
    // Whether mappings go upstream unless their CNI network says otherwise
    // (--upstream other than off), and with which protocol (auto: the
    // first of PCP, NAT-PMP, UPnP that answers).
    bool by_default = false;
    upstream::Method method = upstream::Method::kAuto;
    absl::Duration lifetime = absl::Seconds(3600);
    std::optional<upstream::Ipv4> gateway;  // unset: the default route's
    std::string state_dir;
    absl::Duration scan_interval = absl::Milliseconds(250);
    absl::Duration poll_interval = absl::Seconds(5);
  };

  // The options from the agent's flags: `mode` off, auto, pcp, natpmp or
  // upnp; `lifetime` 120 s to 24 h; `gateway` an IPv4 address or empty.
  // kInvalidArgument naming the flag.
  static absl::StatusOr<Options> ParseOptions(const std::string& mode, absl::Duration lifetime,
                                              const std::string& gateway,
                                              const std::string& state_dir);

  // Starts the thread (in the caller's network namespace). The gateway is
  // contacted only once some mapping is to go upstream.
  static absl::StatusOr<std::unique_ptr<UpstreamKeeper>> Start(AgentCore* core, Options options);
  ~UpstreamKeeper();

  // Mapping `m`'s upstream state for people ("203.0.113.7:8080 via pcp,
  // renews in 28m", "error: ... (retry in 8s)"); "" when it is not to go
  // upstream. For a range, its first port's.
  std::string StatusOf(const v1::PortMapping& m) const;
  // For the status page: the gateway and the protocol, or why none.
  std::string StatusLine() const;

 private:
  using Key = std::pair<upstream::Proto, uint16_t>;
  struct Record {
    uint16_t external_port = 0;
    std::string method;
  };

  UpstreamKeeper(AgentCore* core, Options options) : core_(core), options_(std::move(options)) {}
  void Run();
  void EnsureMapper();
  void OnChange(const upstream::MappingStatus& s);
  void Save();  // REQUIRES: mu_ held
  void Load();
  // Deletes on the gateway the recorded mappings no mapping wants now.
  void ForgetStale(const std::map<Key, Record>& stale);

  AgentCore* const core_;
  const Options options_;
  std::unique_ptr<upstream::Mapper> mapper_;  // guarded by mu_; made once, when first needed
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<Key, Record> records_;          // guarded by mu_: what the gateway granted
  std::map<Key, std::string> mapped_;      // guarded by mu_: what we asked for, by mapping id
  std::string gateway_;                    // guarded by mu_
};

}  // namespace fabric::agent
