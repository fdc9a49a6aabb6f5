// The agent's servers (gRPC on the unix socket and over TLS, the
// operator's HTTP) and its LAN front-ends (NAT-PMP/PCP, UPnP IGD with the
// WAN address watcher they share): the second half of Agent::Start.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/agent.h"
#include "agent/log.h"
#include "agent/operator_http.h"
#include "grpcpp/grpcpp.h"

namespace fabric::agent {

namespace {
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// What the status page lists as front-ends.
std::vector<std::string> FrontendLines(const AgentConfig& config) {
  std::vector<std::string> out;
  std::string lan = absl::StrCat("LAN ", absl::StrJoin(config.lan_interfaces, ","), ", WAN ",
                                 config.wan_interface.empty() ? "none" : config.wan_interface);
  if (!config.lan_interfaces.empty() && config.natpmp) {
    out.push_back(absl::StrCat(config.pcp ? "NAT-PMP and PCP" : "NAT-PMP", " on udp 5351, ", lan));
  }
  if (!config.lan_interfaces.empty() && config.upnp) {
    out.push_back(absl::StrCat("UPnP IGD: SSDP on udp 1900, HTTP on port ", config.upnp_http_port,
                               ", ", lan));
  }
  if (config.ipv6_firewall) {
    out.push_back(absl::StrCat("IPv6 firewall on ", config.wan_interface, " (pinholes by UPnP)"));
  }
  if (!config.tls_address.empty()) out.push_back("gRPC over TLS on " + config.tls_address);
  return out;
}

// The lease policy NAT-PMP/PCP and UPnP share (--natpmp_* flags).
absl::StatusOr<LeasePolicy> LanPolicy(const AgentConfig& config,
                                      const std::pair<uint16_t, uint16_t>& dynamic) {
  LeasePolicy policy;
  absl::StatusOr<std::pair<uint16_t, uint16_t>> ports =
      nat::ParsePortRange(config.natpmp_port_range);
  if (!ports.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--natpmp_port_range: ", ports.status().message()));
  }
  policy.port_lo = ports->first;
  policy.port_hi = ports->second;
  if (config.natpmp_max_per_client < 1) {
    return absl::InvalidArgumentError("--natpmp_max_per_client must be at least 1");
  }
  policy.max_per_client = config.natpmp_max_per_client;
  if (config.natpmp_max_leases < 1) {
    return absl::InvalidArgumentError("--natpmp_max_leases must be at least 1");
  }
  policy.max_leases = config.natpmp_max_leases;
  if (ports->first >= dynamic.first && ports->second <= dynamic.second) {
    return absl::InvalidArgumentError(absl::StrCat("--natpmp_port_range ", config.natpmp_port_range,
                                                   " lies inside --port_range ", config.port_range,
                                                   ", which leases never take"));
  }
  policy.max_lifetime =
      static_cast<uint32_t>(std::max<int64_t>(1, absl::ToInt64Seconds(config.natpmp_max_lifetime)));
  return policy;
}

}  // namespace

absl::Status Agent::StartServing(const AgentConfig& config) {
  attachments_ = std::make_unique<AttachmentServiceImpl>(core_.get(), &metrics_);
  mappings_ = std::make_unique<MappingServiceImpl>(core_.get(), &metrics_);
  status_ = std::make_unique<AgentServiceImpl>(core_.get(), &metrics_);
  // No port of its own: the unix socket is the SocketFront's (below), which
  // hands it every connection that is not one of the plugin's calls.
  grpc::ServerBuilder builder;
  builder.RegisterService(attachments_.get());
  builder.RegisterService(mappings_.get());
  builder.RegisterService(status_.get());
  // Orchestrators over TLS get mappings and read-only status; attachments
  // (the CNI plugin's) and backups only go through the unix socket, whose
  // 0600 mode keeps them to root on the node.
  if (!config.tls_address.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(config.tls_cert);
    absl::StatusOr<std::string> key = ReadFile(config.tls_key);
    absl::StatusOr<std::string> ca = ReadFile(config.tls_client_ca);
    for (const auto* s : {&cert, &key, &ca}) {
      if (!s->ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls_address needs --tls_cert, --tls_key and --tls_client_ca: ",
                         s->status().message()));
      }
    }
    grpc::SslServerCredentialsOptions tls(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    tls.pem_root_certs = *ca;
    tls.pem_key_cert_pairs.push_back({*key, *cert});
    tls_status_ =
        std::make_unique<AgentServiceImpl>(core_.get(), &metrics_, /*allow_backup=*/false);
    grpc::ServerBuilder tls_builder;
    tls_builder.AddListeningPort(config.tls_address, grpc::SslServerCredentials(tls));
    tls_builder.RegisterService(mappings_.get());
    tls_builder.RegisterService(tls_status_.get());
    tls_server_ = tls_builder.BuildAndStart();
    if (tls_server_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on --tls_address ", config.tls_address));
    }
  }
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve on unix:", config.socket,
                     config.tls_address.empty() ? "" : absl::StrCat(" and ", config.tls_address)));
  }
  {
    SocketFrontOptions options;
    Metrics* metrics = &metrics_;
    options.on_route = [metrics](bool here) { metrics->RecordSocketConnection(here); };
    absl::StatusOr<std::unique_ptr<SocketFront>> front = SocketFront::Start(
        config.socket, server_.get(), PluginHandlers(attachments_.get(), status_.get()), options);
    if (!front.ok()) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve on unix:", config.socket, ": ", front.status().message()));
    }
    front_ = std::move(*front);
  }

  if (!config.metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<HttpServer>> http = HttpServer::Start(
        config.metrics_address, OperatorHandlers(
                                    core_.get(), &metrics_,
                                    [a = this, lines = FrontendLines(config)] {
                                      std::vector<std::string> out = lines;
                                      if (a->forwards_) out.push_back(a->forwards_->StatusLine());
                                      if (a->forward_accept_)
                                        out.push_back(a->forward_accept_->StatusLine());
                                      if (a->upstream_) out.push_back(a->upstream_->StatusLine());
                                      return out;
                                    },
                                    config.metrics_per_mapping, traffic_.get()));
    if (!http.ok()) return http.status();
    http_ = std::move(*http);
  }
  return absl::OkStatus();
}

absl::Status Agent::StartLan(const AgentConfig& config,
                             const std::pair<uint16_t, uint16_t>& dynamic_range,
                             bool follow_route) {
  if (!(config.natpmp || config.upnp) || config.lan_interfaces.empty()) return absl::OkStatus();
  absl::StatusOr<LeasePolicy> policy = LanPolicy(config, dynamic_range);
  if (!policy.ok()) return policy.status();
  // The WAN address watcher, shared by the front-ends; the core is told
  // first, then the front-ends.
  if (!config.wan_interface.empty()) {
    absl::StatusOr<std::unique_ptr<wan::AddressWatcher>> w =
        follow_route ? wan::AddressWatcher::FollowDefaultRoute(
                           [](const std::string& line) { LogLine(line); })
                     : wan::AddressWatcher::Start(config.wan_interface);
    if (!w.ok()) return w.status();
    wan_ = std::move(*w);
    AgentCore* core = core_.get();
    wan_->Subscribe([core](const wan::AddressChange& c) { core->SetExternalAddress(c.address); });
  }
  if (config.natpmp) {
    natpmp::ServerConfig pmp;
    pmp.lan_interfaces = config.lan_interfaces;
    pmp.pcp = config.pcp;
    pmp.policy = *policy;
    pmp.rate_per_second = config.natpmp_rate_limit;
    pmp.burst = std::max(20.0, config.natpmp_rate_limit * 2);
    absl::StatusOr<std::unique_ptr<natpmp::PmpServer>> server =
        natpmp::PmpServer::Start(core_.get(), &metrics_, wan_.get(), pmp);
    if (!server.ok()) return server.status();
    pmp_ = std::move(*server);
    LogLine(absl::StrCat("NAT-PMP", config.pcp ? " and PCP" : "", " on udp 5351, LAN ",
                         absl::StrJoin(config.lan_interfaces, ","), ", WAN ",
                         config.wan_interface));
  }
  if (config.upnp) {
    upnp::FrontendConfig u;
    u.state_dir = config.state_dir;
    u.server.lan_interfaces = config.lan_interfaces;
    u.server.http_port = config.upnp_http_port;
    u.server.igd.policy = *policy;
    u.server.igd.policy.max_lifetime = kUpnpMaxLease;
    u.server.igd.wan_interface = config.wan_interface;
    if (wan_) {
      u.server.igd.wan_interface_now = [w = wan_.get()] { return w->interface(); };
    }
    u.server.igd.same_port = config.upnp_same_port;
    u.server.igd.ipv6_firewall = config.ipv6_firewall;
    u.server.rate_per_second = config.upnp_rate_limit;
    u.server.burst = std::max(100.0, config.upnp_rate_limit * 2);
    u.notify_interval = config.upnp_notify_interval;
    absl::StatusOr<std::unique_ptr<upnp::UpnpFrontend>> f =
        upnp::UpnpFrontend::Start(core_.get(), &metrics_, u);
    if (!f.ok()) return f.status();
    upnp_ = std::move(*f);
    LogLine(absl::StrCat("UPnP IGD on http port ", upnp_->http_port(), " and SSDP, LAN ",
                         absl::StrJoin(config.lan_interfaces, ","), ", WAN ", config.wan_interface,
                         ", device ", upnp_->uuid()));
  }
  return absl::OkStatus();
}

}  // namespace fabric::agent
