// UpnpServer: the UPnP IGD front-end's HTTP side. Listens on the IPv4
// addresses of the LAN interfaces only (one listener each, on one port;
// with the IPv6 firewall also on their routable IPv6 addresses, which the
// pinhole service needs: a pinhole is for the address that asks),
// serves the descriptions (description.h) and SOAP control (soap.h,
// igd.h) through agent/http_server (libmicrohttpd: its caps on header and
// body size, connections per client and request time apply), and refuses
// with 403, before any parsing:
//   - a request whose source is not inside a subnet of the LAN interface
//     whose address it came in on (natpmp/sources.h: the same rule as
//     NAT-PMP's), so a WAN host cannot reach it even through a listener;
//   - a Host header that is not one of our own address literals (with or
//     without the port): a browser page can then not reach the server
//     through a DNS name that rebinds to our address.
// Discovery (SSDP) is agent/ssdp, started beside it by the Agent.
//
// Threading: HttpServer's worker threads; the core is thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/http_server.h"
#include "agent/metrics.h"
#include "agent/natpmp/rate_limiter.h"
#include "agent/natpmp/sources.h"
#include "agent/upnp/description.h"
#include "agent/upnp/igd.h"

namespace fabric::agent::upnp {

struct ServerConfig {
  std::vector<std::string> lan_interfaces;
  uint16_t http_port = 5000;  // 0: any free port (the same on every address)
  DescriptionConfig description;
  IgdConfig igd;
  // Control requests one LAN host may make per second, sustained (0:
  // unlimited), and in a burst; beyond them 503 with Retry-After.
  double rate_per_second = 0;
  double burst = 100;
  HttpServer::Options http;  // defaults set in Start when left as is
};

class UpnpServer {
 public:
  // kInvalidArgument without LAN interfaces; kUnavailable when an address
  // cannot be listened on or a LAN interface has no IPv4 address.
  static absl::StatusOr<std::unique_ptr<UpnpServer>> Start(AgentCore* core, Metrics* metrics,
                                                           ServerConfig config);
  ~UpnpServer();

  uint16_t port() const { return port_; }
  // The addresses listened on, "192.168.1.1".
  const std::vector<std::string>& addresses() const { return addresses_; }

 private:
  UpnpServer(AgentCore* core, Metrics* metrics, ServerConfig config);
  HttpServer::Response Serve(const HttpServer::Request& request, const std::string& path);
  // Why the request is refused (403), or empty.
  std::string Refused(const HttpServer::Request& request, nat::IpAddress* client);
  HttpServer::Response Control(const HttpServer::Request& request, const std::string& path,
                               const nat::IpAddress& client);

  AgentCore* const core_;
  Metrics* const metrics_;
  const ServerConfig config_;
  const IgdControl igd_;
  const std::string root_description_;
  uint16_t port_ = 0;
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<HttpServer>> http_;

  std::mutex mu_;
  natpmp::InterfaceAddresses lan_;  // guarded by mu_
  absl::Time lan_read_;             // guarded by mu_
  natpmp::RateLimiter limiter_;     // guarded by mu_
};

}  // namespace fabric::agent::upnp
