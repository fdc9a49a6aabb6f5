#include "agent/upnp/server.h"

#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/log.h"
#include "agent/upnp/soap.h"

namespace fabric::agent::upnp {

namespace {

using Response = HttpServer::Response;

constexpr absl::Duration kAddressesMaxAge = absl::Seconds(2);

Response Text(int code, std::string text) {
  return Response{code, "text/plain; charset=utf-8", std::move(text) + "\n", {}};
}

Response Xml(std::string body, int code = 200) {
  return Response{code, "text/xml; charset=\"utf-8\"", std::move(body), {}};
}

// The interface among `lan` that holds `local` as one of its addresses.
std::string InterfaceOf(const natpmp::InterfaceAddresses& addresses,
                        const std::vector<std::string>& lan, const nat::IpAddress& local) {
  const auto& subnets = local.is_v4() ? addresses.subnets : addresses.subnets6;
  for (const std::string& name : lan) {
    auto it = subnets.find(name);
    if (it == subnets.end()) continue;
    for (const nat::Prefix& p : it->second) {
      if (p.address == local) return name;
    }
  }
  return "";
}

// The rate limiter's key: the IPv4 address, or for IPv6 the /64 folded.
uint32_t Key(const nat::IpAddress& a) {
  uint32_t k = 0, w;
  for (size_t i = 0; i < (a.is_v4() ? 4u : 8u); i += 4) {
    std::memcpy(&w, a.bytes() + i, sizeof w);
    k ^= w;
  }
  return k;
}

}  // namespace

UpnpServer::UpnpServer(AgentCore* core, Metrics* metrics, ServerConfig config)
    : core_(core),
      metrics_(metrics),
      config_(std::move(config)),
      igd_(core, config_.igd),
      root_description_(RootDescription(config_.description)),
      lan_read_(absl::InfinitePast()),
      limiter_(config_.rate_per_second, std::max(1.0, config_.burst), 4096) {}

UpnpServer::~UpnpServer() { http_.clear(); }

absl::StatusOr<std::unique_ptr<UpnpServer>> UpnpServer::Start(AgentCore* core, Metrics* metrics,
                                                              ServerConfig config) {
  if (config.lan_interfaces.empty()) {
    return absl::InvalidArgumentError("UPnP needs --lan_interfaces");
  }
  absl::StatusOr<natpmp::InterfaceAddresses> addresses = natpmp::InterfaceAddresses::Read();
  if (!addresses.ok()) return addresses.status();
  std::unique_ptr<UpnpServer> server(new UpnpServer(core, metrics, std::move(config)));
  UpnpServer* s = server.get();
  {
    std::lock_guard<std::mutex> lock(s->mu_);
    s->lan_ = *addresses;
    s->lan_read_ = absl::Now();
  }

  std::map<std::string, HttpServer::Handler> handlers;
  std::vector<std::string> paths = {kRootDescPath,
                                    kIpConnection.scpd_path,
                                    kIpConnection.control_path,
                                    kCommonInterfaceConfig.scpd_path,
                                    kCommonInterfaceConfig.control_path};
  const bool v6 = s->config_.igd.ipv6_firewall;
  if (v6) {
    paths.push_back(kIpv6Firewall.scpd_path);
    paths.push_back(kIpv6Firewall.control_path);
  }
  for (const std::string& path : paths) {
    handlers[path] = [s, path](const HttpServer::Request& r) { return s->Serve(r, path); };
  }
  HttpServer::Options options = s->config_.http;
  options.methods = {"GET", "HEAD", "POST"};
  options.max_body_bytes = kMaxSoapBody;

  uint16_t port = s->config_.http_port;
  for (const std::string& name : s->config_.lan_interfaces) {
    auto it = addresses->subnets.find(name);
    if (it == addresses->subnets.end() || it->second.empty()) {
      return absl::UnavailableError(
          absl::StrCat("LAN interface ", name, " has no IPv4 address to serve UPnP on"));
    }
    std::vector<nat::Prefix> listen = it->second;
    // With pinholes, also the interface's IPv6 addresses (not link-local
    // ones: a pinhole is for a routable address, asked for from it).
    auto six = addresses->subnets6.find(name);
    if (v6 && six != addresses->subnets6.end()) {
      for (const nat::Prefix& p : six->second) {
        if (!nat::Prefix{*nat::IpAddress::Parse("fe80::"), 10}.Contains(p.address)) {
          listen.push_back(p);
        }
      }
    }
    for (const nat::Prefix& p : listen) {
      std::string address = p.address.ToString();
      std::string host = p.address.is_v4() ? address : absl::StrCat("[", address, "]");
      absl::StatusOr<std::unique_ptr<HttpServer>> http =
          HttpServer::Start(absl::StrCat(host, ":", port), handlers, options);
      if (!http.ok()) {
        return absl::UnavailableError(absl::StrCat("UPnP HTTP on ", address, ":", port, " (",
                                                   name, "): ", http.status().message()));
      }
      port = static_cast<uint16_t>((*http)->port());
      s->http_.push_back(std::move(*http));
      s->addresses_.push_back(address);
    }
  }
  s->port_ = port;
  return server;
}

std::string UpnpServer::Refused(const HttpServer::Request& request, nat::IpAddress* client) {
  absl::StatusOr<nat::IpAddress> peer = nat::IpAddress::Parse(request.peer_address);
  absl::StatusOr<nat::IpAddress> local = nat::IpAddress::Parse(request.local_address);
  if (!peer.ok() || !local.ok() || peer->family() != local->family()) {
    return "not a LAN client";
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Time now = absl::Now();
    std::string ifname = InterfaceOf(lan_, config_.lan_interfaces, *local);
    if (ifname.empty() || now - lan_read_ > kAddressesMaxAge) {
      // The addresses may have changed: read them again (at most every
      // kAddressesMaxAge when nothing matches).
      if (now - lan_read_ > absl::Milliseconds(200)) {
        if (absl::StatusOr<natpmp::InterfaceAddresses> a = natpmp::InterfaceAddresses::Read();
            a.ok()) {
          lan_ = *std::move(a);
          lan_read_ = now;
        }
      }
      ifname = InterfaceOf(lan_, config_.lan_interfaces, *local);
    }
    if (ifname.empty()) return absl::StrCat(local->ToString(), " is not a LAN address");
    if (std::optional<std::string> why = natpmp::RefusedSource(lan_, ifname, *peer)) return *why;
  }
  // DNS rebinding: the Host must be our own address literal.
  std::optional<absl::string_view> host = request.Header("Host");
  std::string local_text =
      local->is_v4() ? local->ToString() : absl::StrCat("[", local->ToString(), "]");
  if (!host || (*host != local_text &&
                *host != absl::StrCat(local_text, ":", request.local_port))) {
    return absl::StrCat("Host header ", host ? std::string(*host) : "(none)",
                        " is not ", local_text, ":", request.local_port);
  }
  *client = *peer;
  return "";
}

HttpServer::Response UpnpServer::Serve(const HttpServer::Request& request,
                                       const std::string& path) {
  nat::IpAddress client;
  if (std::string why = Refused(request, &client); !why.empty()) {
    metrics_->RecordOperation("upnp_refused", false, absl::ZeroDuration());
    return Text(403, absl::StrCat("refused: ", why));
  }
  const bool control = path == kIpConnection.control_path ||
                       path == kCommonInterfaceConfig.control_path ||
                       path == kIpv6Firewall.control_path;
  if (control != (request.method == "POST")) {
    Response r = Text(405, control ? "control URLs take POST" : "descriptions take GET");
    r.headers.emplace_back("Allow", control ? "POST" : "GET, HEAD");
    return r;
  }
  if (control) return Control(request, path, client);
  if (path == kRootDescPath) return Xml(root_description_);
  for (const ServicePaths* s : {&kIpConnection, &kCommonInterfaceConfig, &kIpv6Firewall}) {
    if (path == s->scpd_path) return Xml(ServiceDescription(*s));
  }
  return Text(404, "no such description");
}

HttpServer::Response UpnpServer::Control(const HttpServer::Request& request,
                                         const std::string& path, const nat::IpAddress& client) {
  absl::Time start = absl::Now();
  std::optional<absl::string_view> type = request.Header("Content-Type");
  if (!type || absl::AsciiStrToLower(*type).find("xml") == std::string::npos) {
    return Text(415, "control requests are text/xml");
  }
  std::optional<absl::string_view> action = request.Header("SOAPAction");
  if (!action) return Text(400, "a control request needs a SOAPAction header");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!limiter_.Allow(Key(client), start)) {
      Response r = Text(503, "too many requests; try again in a second");
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
  }
  absl::StatusOr<SoapCall> call = ParseSoapCall(*action, request.body);
  if (!call.ok()) {
    metrics_->RecordOperation("upnp", false, absl::Now() - start);
    LogLine(absl::StrCat("op=upnp client=", client.ToString(),
                         " outcome=bad_request error=", EscapeForLog(call.status().message())));
    return Text(400, absl::StrCat("bad SOAP request: ", call.status().message()));
  }
  IgdControl::Reply reply = igd_.Handle(path, *call, client);
  absl::Duration took = absl::Now() - start;
  metrics_->RecordOperation("upnp", reply.fault == 0, took);
  // Changes and faults are logged; successful reads are not (clients poll).
  bool change = absl::StartsWith(call->action, "Add") || absl::StartsWith(call->action, "Delete");
  if (change || reply.fault != 0) {
    LogLine(absl::StrFormat(
        "op=upnp action=%s client=%s outcome=%s %s duration=%.3fms", call->action,
        client.ToString(), reply.fault == 0 ? "ok" : absl::StrCat("fault_", reply.fault),
        EscapeForLog(reply.detail), absl::ToDoubleMilliseconds(took)));
  }
  return Xml(std::move(reply.body), reply.http_code);
}

}  // namespace fabric::agent::upnp
