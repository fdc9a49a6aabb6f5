// fabric-agent: flags and wiring only (see agent/agent.h).
//
//   fabric-agent [flags]              the node's agent
//   fabric-agent install-cni [flags]  the install step (agent/install/cni_install.h)
#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "agent/agent.h"
#include "agent/install/cni_install.h"
#include "agent/sd_notify.h"
#include "agent/version.h"

ABSL_FLAG(std::string, socket, "/run/fabric-nat/agent.sock",
          "unix socket for the CNI plugin and fabricctl (created mode 0600)");
ABSL_FLAG(std::string, state_dir, "/var/lib/fabric-nat",
          "directory of the state database (state.db)");
ABSL_FLAG(std::string, run_dir, "/run/fabric-nat",
          "directory of the per-network-namespace lock (one agent per namespace)");
ABSL_FLAG(bool, reset_state, false,
          "start with an empty state even when the state database is new or empty "
          "while the kernel table holds rules, removing those rules (without it the "
          "agent refuses to start then, leaving the kernel alone)");
ABSL_FLAG(std::string, backend, "nftables",
          "nftables (table inet fabric_nat, repaired on change events) or "
          "iptables (legacy x_tables via libiptc, chains FABRIC-*)");
ABSL_FLAG(std::string, port_range, "32768-60999",
          "dynamic host port range, LO-HI, for host port 0");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9333",
          "host:port serving /metrics and /healthz; empty disables");
ABSL_FLAG(absl::Duration, reconcile_interval, absl::Seconds(30),
          "how often the kernel is compared with the store (changes by "
          "others are repaired at once, on nftables events); 0 disables");
ABSL_FLAG(bool, repair_on_change, true,
          "repair at once when nftables events show someone else changed the "
          "agent's table");
ABSL_FLAG(bool, sweep_dead_netns, true,
          "with each periodic check, detach containers whose network "
          "namespace is gone");
ABSL_FLAG(std::vector<std::string>, lan_interfaces, {},
          "interfaces where NAT-PMP/PCP requests are answered (comma list); "
          "empty: no NAT-PMP/PCP");
ABSL_FLAG(std::string, wan_interface, "",
          "interface whose IPv4 address LAN mappings are published on "
          "(watched for changes)");
ABSL_FLAG(bool, natpmp, true, "serve NAT-PMP (and PCP) on --lan_interfaces");
ABSL_FLAG(bool, pcp, true, "serve PCP with NAT-PMP");
ABSL_FLAG(std::string, natpmp_port_range, "1024-65535",
          "external ports NAT-PMP/PCP may hand out, LO-HI (never inside "
          "--port_range)");
ABSL_FLAG(int, natpmp_max_per_client, 50, "leases one LAN host may hold");
ABSL_FLAG(int, natpmp_max_leases, 1024, "NAT-PMP/PCP leases of all LAN hosts together");
ABSL_FLAG(absl::Duration, natpmp_max_lifetime, absl::Seconds(7200),
          "longest lease granted; longer requests are clamped");
ABSL_FLAG(double, natpmp_rate_limit, 10,
          "NAT-PMP/PCP requests per second one client may send (bursts of "
          "twice that, at least 20 and twice --natpmp_max_per_client); excess "
          "is dropped; 0: unlimited");
ABSL_FLAG(bool, upnp, false,
          "serve UPnP IGD (SSDP discovery and SOAP control) on --lan_interfaces; its leases "
          "share the --natpmp_* port range, quota and cap");
ABSL_FLAG(int, upnp_http_port, 5000,
          "TCP port of the UPnP description and control server on the LAN addresses (0: any "
          "free port)");
ABSL_FLAG(absl::Duration, upnp_notify_interval, absl::Seconds(900),
          "how often SSDP ssdp:alive is announced on the LAN interfaces");
ABSL_FLAG(double, upnp_rate_limit, 0,
          "UPnP control requests per second one LAN host may make (0: unlimited)");
ABSL_FLAG(bool, ipv6_firewall, false,
          "drop new inbound IPv6 connections arriving on --wan_interface unless a UPnP pinhole "
          "(WANIPv6FirewallControl, offered with --upnp) or a DNAT mapping lets them in; "
          "ICMPv6 passes");
ABSL_FLAG(bool, metrics_per_mapping, false,
          "also export nat_mapping_connections_total, one series per mapping (costs a kernel "
          "read per scrape; the status page and /api/v1/mappings show the counts anyway)");
ABSL_FLAG(std::vector<std::string>, forward_accept, {},
          "FAMILY/TABLE/CHAIN of another table's forward chain (e.g. inet/filter/forward) that "
          "gets `ct status dnat accept` at its top, kept there when the table is reloaded; "
          "comma-separated or repeated; chains no longer named lose it (nftables only)");
ABSL_FLAG(std::string, upstream, "off",
          "also map published host ports (CNI, API, static forwards) on the LAN's own gateway: "
          "off, auto (PCP, then NAT-PMP, then UPnP IGD), pcp, natpmp or upnp; a CNI network's "
          "\"upstream\" key overrides it");
ABSL_FLAG(absl::Duration, upstream_lifetime, absl::Seconds(3600),
          "the lifetime asked for upstream mappings (renewed at half of what is granted)");
ABSL_FLAG(std::string, upstream_gateway, "",
          "the gateway for --upstream (IPv4); empty: the default route's");
ABSL_FLAG(bool, conntrack_accounting, true,
          "per-mapping bytes and packets on the status page and /api/v1/mappings (sets "
          "net.netfilter.nf_conntrack_acct=1 at start, logged; needs --metrics_address)");
ABSL_FLAG(bool, ip_forward, true,
          "set net.ipv4.ip_forward=1 at start when it is 0 (logged)");
ABSL_FLAG(bool, ip6_forward, false,
          "set net.ipv6.conf.all.forwarding=1 at start (off by default: it changes how the "
          "kernel treats router advertisements)");
ABSL_FLAG(std::string, forwards_file, "",
          "static port forwards (JSON, see README); applied at start, on SIGHUP and when the "
          "file changes; an invalid file keeps the previous forwards");
ABSL_FLAG(bool, upnp_same_port, false,
          "refuse (UPnP error 724) a mapping whose external and internal ports differ");
ABSL_FLAG(std::string, tls_address, "",
          "host:port for orchestrators over TLS with client certificates");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM)");
ABSL_FLAG(std::string, tls_key, "", "server key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "", "CA that signs client certificates");
ABSL_FLAG(std::string, backup_dir, "",
          "a directory besides --state_dir where backups (fabricctl backup) may be "
          "written; backups go nowhere else");

// install-cni
ABSL_FLAG(std::string, plugin, "/usr/local/bin/fabric-nat",
          "install-cni: the fabric-nat binary to install");
ABSL_FLAG(std::string, cni_bin_dir, "/opt/cni/bin",
          "install-cni: the node's CNI plugin directory");
ABSL_FLAG(std::string, cni_conf_dir, "/etc/cni/net.d",
          "install-cni: the node's CNI configuration directory");
ABSL_FLAG(std::string, cni_conf_name, "00-fabric-nat.conflist",
          "install-cni: the configuration list it writes (must sort first)");
ABSL_FLAG(std::string, chain_into, "",
          "install-cni: the configuration in --cni_conf_dir to chain fabric-nat "
          "into; empty: the first in sorted order");
ABSL_FLAG(std::string, network_config, "",
          "install-cni: install this configuration list (a network of its own) "
          "instead of chaining into the node's");
ABSL_FLAG(std::string, plugin_options, R"({"hairpin": true})",
          "install-cni: JSON object of keys for the fabric-nat entry "
          "(masquerade, hairpin, localhost)");
ABSL_FLAG(bool, watch, false,
          "install-cni: keep running and put back what changes (the node's "
          "network, a deleted conflist or plugin)");
ABSL_FLAG(bool, uninstall, false,
          "install-cni: remove the configuration list it wrote (the runtimes "
          "fall back to the original network) and exit");
ABSL_FLAG(bool, uninstall_plugin, false,
          "install-cni --uninstall: remove the plugin binary too (pods that "
          "still exist then cannot be deleted through fabric-nat)");

namespace {

// `fabric-agent install-cni`: blocks SIGTERM/SIGINT in `signals`.
int InstallCni(const sigset_t& signals) {
  namespace install = fabric::agent::install;
  install::InstallConfig config;
  config.plugin_source = absl::GetFlag(FLAGS_plugin);
  config.cni_bin_dir = absl::GetFlag(FLAGS_cni_bin_dir);
  config.cni_conf_dir = absl::GetFlag(FLAGS_cni_conf_dir);
  config.conf_name = absl::GetFlag(FLAGS_cni_conf_name);
  config.chain_into = absl::GetFlag(FLAGS_chain_into);
  config.network_config = absl::GetFlag(FLAGS_network_config);
  config.agent_socket = absl::GetFlag(FLAGS_socket);
  config.plugin_options = absl::GetFlag(FLAGS_plugin_options);
  auto log = [](const std::string& line) { fabric::agent::LogLine(line); };
  if (absl::GetFlag(FLAGS_uninstall)) {
    absl::Status s = install::Uninstall(config, absl::GetFlag(FLAGS_uninstall_plugin));
    if (!s.ok()) {
      std::fprintf(stderr, "fabric-agent install-cni: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    log(absl::StrCat("install-cni: removed ", config.cni_conf_dir, "/", config.conf_name));
    return 0;
  }
  auto channel = grpc::CreateChannel(absl::StrCat("unix:", config.agent_socket),
                                     grpc::InsecureChannelCredentials());
  auto stub = fabric::nat::v1::AgentService::NewStub(channel);
  auto ready = [&]() -> absl::Status {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    fabric::nat::v1::GetStatusResponse r;
    grpc::Status s = stub->GetStatus(&ctx, fabric::nat::v1::GetStatusRequest(), &r);
    if (!s.ok()) {
      return absl::UnavailableError(absl::StrCat("agent at ", config.agent_socket,
                                                 " does not answer: ", s.error_message()));
    }
    if (!r.ready()) return absl::UnavailableError(absl::StrCat("agent not ready: ", r.reason()));
    return absl::OkStatus();
  };
  static std::atomic<bool> stop{false};
  std::thread([signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    stop = true;
  }).detach();
  install::LoopOptions options;
  options.once = !absl::GetFlag(FLAGS_watch);
  absl::Status s = install::RunInstaller(config, options, ready, log, stop);
  if (!s.ok()) {
    std::fprintf(stderr, "fabric-agent install-cni: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A fixed trim threshold. glibc otherwise raises it after the first big
  // free (up to 64 MiB), and malloc_trim never shrinks a thread arena's
  // free top: at 100k mappings one Diagnose run on a gRPC thread then left
  // ~40 MiB resident. Fixed, a free that leaves more than 8 MiB at an
  // arena's top gives it back (1 MiB once serving, below), and
  // allocations of 128 KiB and more stay mmapped (returned when freed).
  mallopt(M_TRIM_THRESHOLD, 8 << 20);
  // No fastbins. A kernel read-back frees ~10^5 small tree nodes (~96
  // bytes each); in fastbins they are never coalesced, so the free space
  // under them could not reach the arena's top and be trimmed: about half
  // of the runs with 100k mappings then ended a Diagnose 30 MiB higher
  // (122-128 MiB instead of 93). Without fastbins 10 of 10 stayed at 93.
  mallopt(M_MXFAST, 0);
  // Debian builds abseil with its mutex deadlock detector on, so every
  // absl::Mutex gRPC takes (several per call) would record lock order in a
  // global graph: 22 ns a lock and unlock instead of 9 (measured on this
  // build). The agent's own locks are std::mutex, checked by TSAN in tests.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "Fabric NAT agent: owns the node's NAT rules. Flags may come from a file "
      "with --flagfile.");
  absl::FlagsUsageConfig usage;
  usage.version_string = [] { return absl::StrCat("fabric-agent ", fabric::kVersion, "\n"); };
  absl::SetFlagsUsageConfig(usage);
  // --forward_accept may be given more than once on the command line; absl
  // keeps only the last, so every occurrence is gathered here first.
  std::vector<std::string> repeated_forward_accept;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    std::string value;
    if (absl::ConsumePrefix(&a, "--forward_accept=")) {
      value = std::string(a);
    } else if (a == "--forward_accept" && i + 1 < argc) {
      value = argv[i + 1];
    } else {
      continue;
    }
    for (absl::string_view v : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      repeated_forward_accept.emplace_back(v);
    }
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  // Signals are taken synchronously by this thread; block them before any
  // other thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Everything the agent writes (state, backups, locks) is its own.
  umask(077);
  // Two malloc arenas, not one per gRPC thread: the big transient buffers of
  // a kernel read-back are then given back instead of lingering per thread
  // (at 100k mappings RSS settles ~20 MiB lower).
  mallopt(M_ARENA_MAX, 2);

  if (args.size() > 1) {
    if (std::string(args[1]) == "install-cni" && args.size() == 2) return InstallCni(signals);
    if (std::string(args[1]) == "remove-rules" && args.size() == 2) {
      fabric::agent::AgentConfig c;
      c.socket = absl::GetFlag(FLAGS_socket);
      c.state_dir = absl::GetFlag(FLAGS_state_dir);
      c.run_dir = absl::GetFlag(FLAGS_run_dir);
      c.backend = absl::GetFlag(FLAGS_backend);
      absl::StatusOr<std::string> done = fabric::agent::RemoveKernelRules(c);
      if (!done.ok()) {
        std::fprintf(stderr, "fabric-agent remove-rules: %s\n",
                     std::string(done.status().message()).c_str());
        return 1;
      }
      std::printf("fabric-agent remove-rules: %s\n", done->c_str());
      return 0;
    }
    std::fprintf(stderr,
                 "fabric-agent: unknown command \"%s\" (commands: install-cni, remove-rules)\n",
                 args[1]);
    return 2;
  }

  fabric::agent::AgentConfig config;
  config.socket = absl::GetFlag(FLAGS_socket);
  config.state_dir = absl::GetFlag(FLAGS_state_dir);
  config.run_dir = absl::GetFlag(FLAGS_run_dir);
  config.reset_state = absl::GetFlag(FLAGS_reset_state);
  config.backend = absl::GetFlag(FLAGS_backend);
  config.port_range = absl::GetFlag(FLAGS_port_range);
  config.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  config.reconcile_interval = absl::GetFlag(FLAGS_reconcile_interval);
  config.sweep_dead_netns = absl::GetFlag(FLAGS_sweep_dead_netns);
  config.repair_on_change = absl::GetFlag(FLAGS_repair_on_change);
  config.lan_interfaces = absl::GetFlag(FLAGS_lan_interfaces);
  config.wan_interface = absl::GetFlag(FLAGS_wan_interface);
  config.natpmp = absl::GetFlag(FLAGS_natpmp);
  config.pcp = absl::GetFlag(FLAGS_pcp);
  config.natpmp_port_range = absl::GetFlag(FLAGS_natpmp_port_range);
  config.natpmp_max_per_client = absl::GetFlag(FLAGS_natpmp_max_per_client);
  config.natpmp_max_leases = absl::GetFlag(FLAGS_natpmp_max_leases);
  config.natpmp_max_lifetime = absl::GetFlag(FLAGS_natpmp_max_lifetime);
  config.natpmp_rate_limit = absl::GetFlag(FLAGS_natpmp_rate_limit);
  config.upnp = absl::GetFlag(FLAGS_upnp);
  int upnp_port = absl::GetFlag(FLAGS_upnp_http_port);
  if (upnp_port < 0 || upnp_port > 65535) {
    std::fprintf(stderr, "fabric-agent: --upnp_http_port must be 0-65535\n");
    return 2;
  }
  config.upnp_http_port = static_cast<uint16_t>(upnp_port);
  config.upnp_notify_interval = absl::GetFlag(FLAGS_upnp_notify_interval);
  if (config.upnp_notify_interval < absl::Seconds(1) ||
      config.upnp_notify_interval >= absl::Seconds(1800)) {
    std::fprintf(stderr, "fabric-agent: --upnp_notify_interval must be 1s to under 30m (the "
                    "announcements' max-age is 1800 s)\n");
    return 2;
  }
  config.upnp_rate_limit = absl::GetFlag(FLAGS_upnp_rate_limit);
  config.upnp_same_port = absl::GetFlag(FLAGS_upnp_same_port);
  config.ipv6_firewall = absl::GetFlag(FLAGS_ipv6_firewall);
  config.metrics_per_mapping = absl::GetFlag(FLAGS_metrics_per_mapping);
  config.forwards_file = absl::GetFlag(FLAGS_forwards_file);
  config.conntrack_accounting = absl::GetFlag(FLAGS_conntrack_accounting);
  config.upstream = absl::GetFlag(FLAGS_upstream);
  config.upstream_lifetime = absl::GetFlag(FLAGS_upstream_lifetime);
  config.upstream_gateway = absl::GetFlag(FLAGS_upstream_gateway);
  config.forward_accept = repeated_forward_accept.empty() ? absl::GetFlag(FLAGS_forward_accept)
                                                          : repeated_forward_accept;
  config.ip_forward = absl::GetFlag(FLAGS_ip_forward);
  config.ip6_forward = absl::GetFlag(FLAGS_ip6_forward);
  config.tls_address = absl::GetFlag(FLAGS_tls_address);
  config.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  config.tls_key = absl::GetFlag(FLAGS_tls_key);
  config.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  config.backup_dir = absl::GetFlag(FLAGS_backup_dir);

  auto agent = fabric::agent::Agent::Start(config);
  if (!agent.ok()) {
    std::fprintf(stderr, "fabric-agent: %s\n",
                 std::string(agent.status().message()).c_str());
    return 1;
  }
  // Serving: a thread arena keeps at most 1 MiB free at its top. With 8,
  // Diagnose calls at 100k mappings left RSS 8 MiB higher (61.5 -> 69.3
  // MiB, scale_bench); start-up, which grows and frees the heap many
  // times, keeps 8 (with 1 a 10k start took about 40 ms longer).
  mallopt(M_TRIM_THRESHOLD, 1 << 20);
  // systemd (Type=notify): the kernel matches the store and the API serves.
  if (absl::Status s = fabric::agent::NotifySystemd("READY=1"); !s.ok()) {
    fabric::agent::LogLine(absl::StrCat("sd_notify: ", s.message()));
  }
  int sig = 0;
  // SIGHUP reloads (it used to end the agent, exit 129, with nothing
  // logged); SIGTERM and SIGINT stop.
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    fabric::agent::LogLine("SIGHUP: reloading");
    (*agent)->Reload();
  }
  (void)fabric::agent::NotifySystemd("STOPPING=1");
  fabric::agent::LogLine(absl::StrCat("signal ", sig, ": stopping"));
  agent->reset();
  return 0;
}
