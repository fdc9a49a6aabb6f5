// Agent: wires the store, backend, core, gRPC services, metrics endpoint and
// periodic reconciler of one fabric-agent process. main.cc only parses flags
// and waits for a signal; tests start an Agent in-process the same way.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/http_server.h"
#include "agent/instance_lock.h"
#include "agent/metrics.h"
#include "agent/natpmp/server.h"
#include "agent/proxy/proxy.h"
#include "agent/upnp/frontend.h"
#include "agent/forward_accept_keeper.h"
#include "agent/forwards_watcher.h"
#include "agent/wan/address_watcher.h"
#include "agent/repair_loop.h"
#include "agent/service.h"
#include "agent/socket_front.h"
#include "agent/upstream_keeper.h"
#include "nat/backend/nftables/monitor.h"
#include "nat/conntrack/traffic.h"

namespace fabric::agent {

struct AgentConfig {
  std::string socket = "/run/fabric-nat/agent.sock";
  std::string state_dir = "/var/lib/fabric-nat";
  // Where the per-network-namespace instance lock lives.
  std::string run_dir = "/run/fabric-nat";
  // Start empty even when the store is new and the kernel holds rules
  // (which are then removed).
  bool reset_state = false;
  std::string backend = "nftables";
  std::string port_range = "32768-60999";
  // host:port for /metrics and /healthz; empty disables.
  std::string metrics_address = "127.0.0.1:9333";
  // How often the kernel is compared with the store, besides the repairs
  // that nftables change events trigger at once (0 disables the periodic
  // check).
  absl::Duration reconcile_interval = absl::Seconds(30);
  // Repair at once when nftables events show that someone else changed our
  // table (off: only the periodic check repairs).
  bool repair_on_change = true;
  // With each periodic check, detach attachments whose network namespace
  // path no longer exists.
  bool sweep_dead_netns = true;
  // NAT-PMP/PCP front-end: answers only on these interfaces; mappings go
  // from the WAN interface's address to the requester.
  std::vector<std::string> lan_interfaces;
  std::string wan_interface;
  bool natpmp = true;  // with lan_interfaces set
  bool pcp = true;     // with natpmp
  std::string natpmp_port_range = "1024-65535";
  int natpmp_max_per_client = 50;
  int natpmp_max_leases = 1024;  // every client together
  absl::Duration natpmp_max_lifetime = absl::Seconds(7200);
  double natpmp_rate_limit = 10;  // requests/s per client; 0: unlimited
  // UPnP IGD front-end (SSDP + HTTP/SOAP) on lan_interfaces, sharing the
  // NAT-PMP lease policy above (port range, quota, global cap).
  bool upnp = false;
  uint16_t upnp_http_port = 5000;  // 0: any free port
  absl::Duration upnp_notify_interval = absl::Seconds(900);
  double upnp_rate_limit = 0;  // control requests/s per client; 0: unlimited
  bool upnp_same_port = false;  // refuse (724) external != internal port
  // Drop new inbound IPv6 connections arriving on wan_interface unless a
  // pinhole (UPnP WANIPv6FirewallControl) or DNAT lets them in.
  bool ipv6_firewall = false;
  // One nat_mapping_connections_total (and nat_mapping_bytes_total)
  // series per mapping on /metrics.
  bool metrics_per_mapping = false;
  // Per-mapping bytes and packets on the status page and /api/v1/mappings:
  // sets net.netfilter.nf_conntrack_acct=1 at start (logged) and listens to
  // conntrack destroy events. Only with metrics_address.
  bool conntrack_accounting = true;
  // Chains of other tables ("inet/filter/forward") that get our
  // `ct status dnat accept` rule at their top, kept there
  // (agent/forward_accept_keeper.h). nftables only. Chains no longer named
  // lose it.
  std::vector<std::string> forward_accept;
  // Upstream mapping on the LAN's gateway (agent/upstream_keeper.h): "off",
  // "auto", "pcp", "natpmp" or "upnp"; the lifetime asked for; the gateway
  // (empty: the default route's).
  std::string upstream = "off";
  absl::Duration upstream_lifetime = absl::Seconds(3600);
  std::string upstream_gateway;
  // Static forwards (agent/forwards.h); empty: none.
  std::string forwards_file;
  // Turn on IPv4 forwarding at start when it is off (DNAT to another host
  // needs it); IPv6 forwarding only when asked, since it changes how the
  // kernel treats router advertisements.
  bool ip_forward = true;
  bool ip6_forward = false;
  // Optional TCP listener for orchestrators: TLS with client certificates.
  std::string tls_address;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Besides the state dir, where `fabricctl backup` may write.
  std::string backup_dir;
};

// `fabric-agent remove-rules` (uninstall): with no agent running on
// config's state dir and namespace (the instance lock is taken), removes
// our table (inet fabric_nat, or the iptables FABRIC-* chains) and our
// forward-accept rules from every other table. The store is left as is.
// Returns what it removed. kFailedPrecondition naming a running agent.
absl::StatusOr<std::string> RemoveKernelRules(const AgentConfig& config);

class Agent {
 public:
  // Opens the store (refusing to start, and leaving the kernel alone, when
  // it is unreadable), makes the kernel match it, and starts serving.
  // Without wan_interface but with LAN front-ends, the interface of the one
  // IPv4 default route is taken (at start; logged).
  static absl::StatusOr<std::unique_ptr<Agent>> Start(const AgentConfig& config);
  // Stops serving. Kernel rules stay: running containers keep working.
  ~Agent();

  AgentCore& core() { return *core_; }
  // SIGHUP: reads --forwards_file again (the only thing to reload).
  void Reload();
  int metrics_port() const { return http_ ? http_->port() : 0; }

 private:
  Agent() = default;
  class NftablesChanges;
  // Start's second half (agent_frontends.cc): the gRPC servers, the socket
  // front and the operator's HTTP; then the LAN front-ends, when configured.
  absl::Status StartServing(const AgentConfig& config);
  absl::Status StartLan(const AgentConfig& config,
                        const std::pair<uint16_t, uint16_t>& dynamic_range, bool follow_route);

  // Held for the agent's lifetime; released last.
  std::unique_ptr<InstanceLock> lock_;
  std::unique_ptr<nat::Backend> backend_;
  // The same kind of backend on its own connection, for reads outside the
  // writer's lock.
  std::unique_ptr<nat::Backend> reader_;
  uint32_t own_port_id_ = 0;
  std::unique_ptr<nat::ChangeMonitor> monitor_;
  std::unique_ptr<nat::ConntrackCleaner> conntrack_;
  std::unique_ptr<AgentCore> core_;
  Metrics metrics_;
  std::unique_ptr<AttachmentServiceImpl> attachments_;
  std::unique_ptr<MappingServiceImpl> mappings_;
  std::unique_ptr<AgentServiceImpl> status_;
  std::unique_ptr<grpc::Server> server_;
  // The unix socket: the plugin's calls here, the rest to server_.
  std::unique_ptr<SocketFront> front_;
  // Mappings and read-only status for orchestrators (--tls_address).
  std::unique_ptr<AgentServiceImpl> tls_status_;
  std::unique_ptr<grpc::Server> tls_server_;
  std::unique_ptr<nat::TrafficAccounting> traffic_;  // outlives http_
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<wan::AddressWatcher> wan_;  // before pmp_: outlives it
  std::unique_ptr<natpmp::PmpServer> pmp_;
  std::unique_ptr<upnp::UpnpFrontend> upnp_;
  std::unique_ptr<proxy::Proxy> proxy_;  // before forwards_: outlives it
  std::unique_ptr<ForwardsWatcher> forwards_;
  int forwards_wan_listener_ = 0;  // wan_'s listener that tells forwards_
  std::unique_ptr<ForwardAcceptKeeper> forward_accept_;
  std::unique_ptr<UpstreamKeeper> upstream_;
  RealClock clock_;
  std::unique_ptr<ChangeSource> changes_;
  // Repairs after foreign changes and on a period, expires leases.
  std::unique_ptr<RepairLoop> repair_;
};

}  // namespace fabric::agent
