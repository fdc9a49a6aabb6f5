// fabric-agent: flags and wiring only (see agent/agent.h).
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "agent/agent.h"
#include "agent/sd_notify.h"
#include "agent/version.h"

ABSL_FLAG(std::string, socket, "/run/fabric-nat/agent.sock",
          "unix socket for the CNI plugin and fabricctl (created mode 0600)");
ABSL_FLAG(std::string, state_dir, "/var/lib/fabric-nat",
          "directory of the state database (state.db)");
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
          "external ports NAT-PMP/PCP may hand out, LO-HI");
ABSL_FLAG(int, natpmp_max_per_client, 50, "leases one LAN host may hold");
ABSL_FLAG(absl::Duration, natpmp_max_lifetime, absl::Seconds(7200),
          "longest lease granted; longer requests are clamped");
ABSL_FLAG(double, natpmp_rate_limit, 10,
          "NAT-PMP/PCP requests per second one client may send (bursts of "
          "twice that, at least 20); excess is dropped; 0: unlimited");
ABSL_FLAG(std::string, tls_address, "",
          "host:port for orchestrators over TLS with client certificates");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM)");
ABSL_FLAG(std::string, tls_key, "", "server key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "", "CA that signs client certificates");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Fabric NAT agent: owns the node's NAT rules. Flags may come from a file "
      "with --flagfile.");
  absl::FlagsUsageConfig usage;
  usage.version_string = [] { return absl::StrCat("fabric-agent ", fabric::kVersion, "\n"); };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  // Signals are taken synchronously by this thread; block them before any
  // other thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  fabric::agent::AgentConfig config;
  config.socket = absl::GetFlag(FLAGS_socket);
  config.state_dir = absl::GetFlag(FLAGS_state_dir);
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
  config.natpmp_max_lifetime = absl::GetFlag(FLAGS_natpmp_max_lifetime);
  config.natpmp_rate_limit = absl::GetFlag(FLAGS_natpmp_rate_limit);
  config.tls_address = absl::GetFlag(FLAGS_tls_address);
  config.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  config.tls_key = absl::GetFlag(FLAGS_tls_key);
  config.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);

  auto agent = fabric::agent::Agent::Start(config);
  if (!agent.ok()) {
    std::fprintf(stderr, "fabric-agent: %s\n",
                 std::string(agent.status().message()).c_str());
    return 1;
  }
  // systemd (Type=notify): the kernel matches the store and the API serves.
  if (absl::Status s = fabric::agent::NotifySystemd("READY=1"); !s.ok()) {
    fabric::agent::LogLine(absl::StrCat("sd_notify: ", s.message()));
  }
  int sig = 0;
  sigwait(&signals, &sig);
  (void)fabric::agent::NotifySystemd("STOPPING=1");
  fabric::agent::LogLine(absl::StrCat("signal ", sig, ": stopping"));
  agent->reset();
  return 0;
}
