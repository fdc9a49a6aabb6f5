#include "agent/agent.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/instance_lock.h"
#include "agent/operator_http.h"
#include "nat/backend/iptables/change_watcher.h"
#include "nat/backend/iptables/iptables_backend.h"
#include "nat/backend/nftables/monitor.h"
#include "grpcpp/grpcpp.h"
#include "nat/backend/nftables/nftables_backend.h"

namespace fabric::agent {

namespace {

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::string part = path.substr(0, i);
      if (mkdir(part.c_str(), mode) != 0 && errno != EEXIST) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot create ", part, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

// Removes a socket file left by an agent that died; refuses when another
// agent is still serving it.
absl::Status ClearStaleSocket(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket; remove it or choose "
                           "another --socket"));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool live = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  if (live) {
    return absl::FailedPreconditionError(absl::StrCat(
        "another agent is serving ", path, "; stop it first"));
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

}  // namespace

// nftables' change events, minus the agent's own (its backend's port id).
class Agent::NftablesChanges : public ChangeSource {
 public:
  NftablesChanges(nat::ChangeMonitor* monitor, uint32_t own_port_id)
      : monitor_(monitor), own_port_id_(own_port_id) {}
  absl::StatusOr<bool> Wait(absl::Duration timeout, std::string* what) override {
    return monitor_->WaitForForeignChange(own_port_id_, timeout, what);
  }
  absl::StatusOr<bool> Drain(std::string* what) override {
    return monitor_->Drain(own_port_id_, what);
  }

 private:
  nat::ChangeMonitor* const monitor_;
  const uint32_t own_port_id_;
};

namespace {

// The iptables backend's fingerprint watcher as a ChangeSource.
class IptablesChanges : public ChangeSource {
 public:
  explicit IptablesChanges(std::unique_ptr<nat::IptablesChangeWatcher> w) : w_(std::move(w)) {}
  absl::StatusOr<bool> Wait(absl::Duration timeout, std::string* what) override {
    return w_->Wait(timeout, what);
  }
  absl::StatusOr<bool> Drain(std::string* what) override { return w_->Drain(what); }

 private:
  const std::unique_ptr<nat::IptablesChangeWatcher> w_;
};

}  // namespace

namespace {

// The interface of the one IPv4 default route (/proc/net/route), or "" with
// `why` saying what was found instead.
// Sets sysctl `path` (under /proc/sys) to 1 unless it is; logs what it did.
// `without`: what does not work while it is off.
void TurnOn(const std::string& path, const std::string& name, const std::string& flag,
            const std::string& without = "forwarded traffic will not flow") {
  std::string value;
  {
    std::ifstream in(path);
    std::getline(in, value);
  }
  if (value == "1") return;
  std::ofstream out(path);
  out << "1\n";
  out.close();
  if (out.fail()) {
    LogLine(absl::StrCat("cannot set ", name, "=1 (", flag, "): ", std::strerror(errno), "; ",
                         without));
    return;
  }
  LogLine(absl::StrCat("set ", name, "=1 (it was ", value.empty() ? "unreadable" : value, "; ",
                       flag, ")"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(const AgentConfig& given) {
  AgentConfig config = given;
  // Without --wan_interface the WAN is the default route's interface, and
  // follows the route when it moves (the address watcher below).
  const bool follow_route = config.wan_interface.empty() && !config.lan_interfaces.empty();
  if (follow_route) {
    std::string why;
    config.wan_interface = wan::DefaultRouteInterface(&why);
    LogLine(config.wan_interface.empty()
                ? absl::StrCat("no --wan_interface, and ", why, " to take one from")
                : absl::StrCat("WAN interface ", config.wan_interface,
                               ": the default route's (no --wan_interface; followed when the "
                               "route moves)"));
  }
  std::unique_ptr<Agent> agent(new Agent());
  absl::StatusOr<std::pair<uint16_t, uint16_t>> range =
      nat::ParsePortRange(config.port_range);
  if (!range.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--port_range: ", range.status().message()));
  }
  absl::StatusOr<UpstreamKeeper::Options> upstream_options = UpstreamKeeper::ParseOptions(
      config.upstream, config.upstream_lifetime, config.upstream_gateway, config.state_dir);
  if (!upstream_options.ok()) return upstream_options.status();
  const UpstreamKeeper::Options& upstream = *upstream_options;
  std::set<nat::nftables::ChainRef> forward_accept;
  for (const std::string& text : config.forward_accept) {
    absl::StatusOr<nat::nftables::ChainRef> c = nat::nftables::ChainRef::Parse(text);
    if (!c.ok()) return c.status();
    forward_accept.insert(*c);
  }
  if (!forward_accept.empty() && config.backend != "nftables") {
    return absl::InvalidArgumentError(
        "--forward_accept needs --backend=nftables (it inserts into nftables chains)");
  }
  // Before anything touches the kernel: no other agent on this state dir
  // or in this network namespace.
  if (absl::Status s = MakeDirs(config.state_dir, 0700); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<InstanceLock>> lock =
      InstanceLock::Acquire(config.state_dir, config.run_dir, config.socket);
  if (!lock.ok()) return lock.status();
  agent->lock_ = std::move(*lock);
  // What route_localnet was before the agent turned it on, per interface of
  // this namespace, kept where a restart finds it (and a reboot clears it).
  {
    struct stat ns;
    if (stat("/proc/self/ns/net", &ns) == 0) {
      nat::SetRouteLocalnetMemory(
          absl::StrCat(config.run_dir, "/route_localnet-", ns.st_ino, ".prev"));
    }
  }

  if (config.backend == "nftables") {
    absl::StatusOr<std::unique_ptr<nat::NftablesBackend>> b =
        nat::NftablesBackend::Create();
    if (!b.ok()) return b.status();
    agent->own_port_id_ = (*b)->port_id();
    agent->backend_ = std::move(*b);
    // Reads outside the writer's lock (Check, Diagnose, the periodic
    // check) go through a connection of their own.
    absl::StatusOr<std::unique_ptr<nat::NftablesBackend>> reader =
        nat::NftablesBackend::Create();
    if (!reader.ok()) return reader.status();
    agent->reader_ = std::move(*reader);
    // Subscribe before the first sync, so no foreign change after it is
    // missed.
    absl::StatusOr<std::unique_ptr<nat::ChangeMonitor>> m =
        nat::ChangeMonitor::Open();
    if (!m.ok()) return m.status();
    agent->monitor_ = std::move(*m);
  } else if (config.backend == "iptables") {
    // Legacy x_tables through libiptc. It sends no change events: a watcher
    // compares a fingerprint of our chains with what the backend last wrote,
    // every second; the periodic check catches what a fingerprint cannot.
    nat::IptablesOptions options;
    options.expectation = std::make_shared<nat::LayoutExpectation>();
    absl::StatusOr<std::unique_ptr<nat::IptablesBackend>> b =
        nat::IptablesBackend::Create(options);
    if (!b.ok()) return b.status();
    agent->backend_ = std::move(*b);
    absl::StatusOr<std::unique_ptr<nat::IptablesChangeWatcher>> w =
        nat::IptablesChangeWatcher::Open(options.expectation);
    if (!w.ok()) return w.status();
    agent->changes_ = std::make_unique<IptablesChanges>(std::move(*w));
    if (config.reconcile_interval <= absl::ZeroDuration()) {
      LogLine("warning: --reconcile_interval=0 with --backend=iptables: a rule of ours "
              "rewritten in place (same rule count) is never repaired");
    }
    absl::StatusOr<std::unique_ptr<nat::IptablesBackend>> reader =
        nat::IptablesBackend::Create();
    if (!reader.ok()) return reader.status();
    agent->reader_ = std::move(*reader);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--backend must be nftables or iptables, not \"", config.backend, "\""));
  }
  nat::NetfilterConntrackCleaner::Options conntrack_options;
  conntrack_options.log = [](const std::string& line) { LogLine(line); };
  agent->conntrack_ = std::make_unique<nat::NetfilterConntrackCleaner>(conntrack_options);

  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(config.state_dir);
  if (!store.ok()) return store.status();
  // The table carries the id of the store that made it: another agent's
  // table (one whose run dir this agent does not share, or that ran
  // before with another state) is not this store's to rewrite.
  agent->backend_->SetOwner((*store)->id());
  agent->reader_->SetOwner((*store)->id());
  // What the kernel holds now: only these facts are kept, so that the
  // read's memory (about 20 MB at 100k mappings) is free again before the
  // state is built (else it stayed as holes under the state).
  bool table_present = false;
  size_t kernel_entries = 0;
  std::string kernel_owner;
  {
    absl::StatusOr<nat::KernelState> kernel = agent->backend_->Read();
    if (!kernel.ok()) return kernel.status();
    table_present = kernel->table_present;
    kernel_entries = kernel->rules.size();
    kernel_owner = kernel->owner;
  }
  // A store that is not there (a new or wrong --state_dir, a lost hostPath,
  // an emptied file) is not the truth while the kernel holds our rules:
  // making the kernel match it would unpublish every container.
  if ((*store)->fresh() && !config.reset_state) {
    if (table_present && kernel_entries > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the state database ", (*store)->path(), " is new or empty, but the kernel's ",
          agent->backend_->name(), " table holds ", kernel_entries,
          " NAT entries that a lost store would have described. The agent will not "
          "start and leaves the kernel as it is. Point --state_dir at the agent's real "
          "state (or restore a backup there), or start with --reset_state to begin "
          "empty and remove those entries."));
    }
  }
  if (table_present && !kernel_owner.empty() && kernel_owner != (*store)->id()) {
    if (!config.reset_state) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the kernel's table belongs to another agent's state (", kernel_owner,
          "; this one's is ", (*store)->id(), " in ", (*store)->path(),
          "). The agent will not start and leaves the kernel as it is. Start it with "
          "that agent's --state_dir (or a backup of it), or with --reset_state to take "
          "the table over and remove its entries."));
    }
    // Taken over: rebuilt with this store's marker and contents.
    if (absl::Status s = agent->backend_->DeleteTable(); !s.ok()) return s;
  }
  CoreOptions core_options;
  if (!config.forwards_file.empty()) {
    // The file's SNAT rules go into the first batch (the watcher applies
    // the whole file right after; an unreadable file is reported there).
    absl::StatusOr<StaticConfig> file =
        LoadForwardsFile(config.forwards_file, ForwardsOptions{config.wan_interface});
    if (file.ok()) core_options.static_snat = file->snat;
  }
  core_options.dynamic_lo = range->first;
  core_options.dynamic_hi = range->second;
  core_options.reader = agent->reader_.get();
  core_options.backup_dirs = {config.state_dir};
  if (!config.backup_dir.empty()) core_options.backup_dirs.push_back(config.backup_dir);
  if (config.ipv6_firewall) {
    if (config.wan_interface.empty()) {
      return absl::InvalidArgumentError("--ipv6_firewall needs --wan_interface");
    }
    if (config.backend != "nftables") {
      return absl::InvalidArgumentError("--ipv6_firewall needs --backend=nftables");
    }
    core_options.firewall6_interface = config.wan_interface;
  }
  agent->core_ = std::make_unique<AgentCore>(std::move(*store), agent->backend_.get(),
                                             agent->conntrack_.get(), core_options);
  if (absl::Status s = agent->core_->Start(); !s.ok()) return s;
  LogLine(absl::StrCat("started: backend=", config.backend, " state=",
                       config.state_dir, "/state.db mappings=",
                       agent->core_->Status().mappings(), " kernel in sync"));

  // gRPC: the unix socket (0600) for the plugin and fabricctl.
  if (config.socket.size() > sizeof(sockaddr_un::sun_path) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--socket path is ", config.socket.size(), " bytes; unix sockets allow ",
        sizeof(sockaddr_un::sun_path) - 1, ": ", config.socket));
  }
  size_t slash = config.socket.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status s = MakeDirs(config.socket.substr(0, slash), 0755); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = ClearStaleSocket(config.socket); !s.ok()) return s;
  if (!config.metrics_address.empty() && config.conntrack_accounting) {
    // Per-mapping bytes: conntrack's accounting extension, for connections
    // created from now on, and its destroy events for those that end.
    TurnOn("/proc/sys/net/netfilter/nf_conntrack_acct", "net.netfilter.nf_conntrack_acct",
           "--conntrack_accounting", "mappings will show no bytes");
    absl::StatusOr<std::unique_ptr<nat::TrafficAccounting>> t = nat::TrafficAccounting::Start();
    if (t.ok()) {
      agent->traffic_ = *std::move(t);
    } else {
      LogLine(absl::StrCat("no per-mapping byte counts: ", t.status().message()));
    }
  }
  if (absl::Status s = agent->StartServing(config); !s.ok()) return s;
  if (absl::Status s = agent->StartLan(config, *range, follow_route); !s.ok()) return s;
  if (config.ip_forward) {
    TurnOn("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward", "--ip_forward");
  }
  if (config.ip6_forward) {
    TurnOn("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding",
           "--ip6_forward");
  }
  if (!config.forwards_file.empty()) {
    // The IPv6-to-IPv4 proxy, for the file's forwards from an IPv6 host
    // address to an IPv4 target: one thread, idle without such forwards.
    absl::StatusOr<std::unique_ptr<proxy::Proxy>> p = proxy::Proxy::Start();
    if (!p.ok()) return p.status();
    agent->proxy_ = *std::move(p);
    // Six descriptors per proxied TCP connection, at the proxy's limits.
    if (absl::Status s = proxy::RaiseOpenFileLimit(6 * proxy::ProxyOptions().max_connections + 4096);
        !s.ok()) {
      LogLine(absl::StrCat("IPv6-to-IPv4 proxy: ", s.message(),
                           "; proxied connections may run out of descriptors before its limits"));
    }
    agent->core_->SetProxy(agent->proxy_.get());
    absl::StatusOr<std::unique_ptr<ForwardsWatcher>> f =
        ForwardsWatcher::Start(agent->core_.get(), &agent->metrics_, config.forwards_file,
                               ForwardsOptions{config.wan_interface});
    if (!f.ok()) return f.status();
    agent->forwards_ = std::move(*f);
    if (follow_route && agent->wan_) {
      // SNAT entries without an out_interface follow the WAN.
      ForwardsWatcher* w = agent->forwards_.get();
      agent->forwards_wan_listener_ = agent->wan_->Subscribe(
          [w](const wan::AddressChange& c) { w->SetWanInterface(c.interface); });
    }
  }
  if (config.backend == "nftables") {
    // Also without the flag: a chain it no longer names loses our rule.
    ForwardAcceptKeeper::Options o;
    o.period = config.reconcile_interval > absl::ZeroDuration() ? config.reconcile_interval
                                                                 : absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<ForwardAcceptKeeper>> k =
        ForwardAcceptKeeper::Start(forward_accept, &agent->metrics_, o);
    if (!k.ok()) return k.status();
    if (!forward_accept.empty()) agent->forward_accept_ = std::move(*k);
  }
  {
    // Also with --upstream=off: a CNI network may ask for it ("upstream").
    absl::StatusOr<std::unique_ptr<UpstreamKeeper>> u =
        UpstreamKeeper::Start(agent->core_.get(), upstream);
    if (!u.ok()) return u.status();
    agent->upstream_ = std::move(*u);
    UpstreamKeeper* k = agent->upstream_.get();
    agent->core_->SetUpstreamStatus([k](const v1::PortMapping& m) { return k->StatusOf(m); });
    if (upstream.by_default) {
      LogLine(absl::StrCat("upstream mapping on the LAN's gateway: ", config.upstream,
                           ", lifetime ", absl::FormatDuration(config.upstream_lifetime)));
    }
  }
  if (agent->monitor_) {
    agent->changes_ = std::make_unique<NftablesChanges>(agent->monitor_.get(),
                                                        agent->own_port_id_);
  }
  RepairLoopOptions repair;
  repair.reconcile_interval = config.reconcile_interval;
  repair.repair_on_change = config.repair_on_change;
  repair.sweep_dead_netns = config.sweep_dead_netns;
  agent->repair_ = std::make_unique<RepairLoop>(agent->core_.get(), &agent->metrics_,
                                                agent->changes_.get(), &agent->clock_, repair);
  agent->repair_->Start();
  // Start-up's transient memory (the store's rows, the first sync) goes
  // back to the system before serving.
  GiveBackFreedMemory();
  LogLine(absl::StrCat("serving unix:", config.socket,
                       config.tls_address.empty() ? "" : " and tls:" + config.tls_address,
                       agent->http_ ? absl::StrCat(" metrics:", agent->http_->port())
                                    : ""));
  return agent;
}

void Agent::Reload() {
  if (forwards_) {
    forwards_->Reload("SIGHUP");
  } else {
    LogLine("SIGHUP: nothing to reload (no --forwards_file)");
  }
}

Agent::~Agent() {
  if (repair_) repair_->Stop();
  if (upstream_) {
    core_->SetUpstreamStatus(nullptr);
    upstream_.reset();
  }
  forward_accept_.reset();
  if (forwards_wan_listener_ != 0) wan_->Unsubscribe(forwards_wan_listener_);
  forwards_.reset();
  upnp_.reset();
  pmp_.reset();
  if (tls_server_) tls_server_->Shutdown(std::chrono::system_clock::now() +
                                         std::chrono::seconds(2));
  front_.reset();  // no new connection reaches server_ after this
  if (server_) server_->Shutdown(std::chrono::system_clock::now() +
                                 std::chrono::seconds(2));
  http_.reset();
  if (proxy_) {
    core_->SetProxy(nullptr);
    proxy_.reset();  // its listeners and connections close with it
  }
  LogLine("stopped; kernel rules left in place");
}

}  // namespace fabric::agent
