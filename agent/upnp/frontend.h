// UpnpFrontend: the whole UPnP IGD front-end as the Agent starts it: the
// device's UUID (made once, kept in the state dir so control points find
// the same device after a restart), the HTTP/SOAP server on the LAN
// addresses (server.h) and SSDP discovery on the LAN interfaces
// (agent/ssdp/server.h) pointing at it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/metrics.h"
#include "agent/ssdp/server.h"
#include "agent/upnp/server.h"

namespace fabric::agent::upnp {

struct FrontendConfig {
  std::string state_dir;
  // lan_interfaces, http_port, igd (policy, WAN), rate limit. The
  // description's UUIDs and model number are filled in by Start.
  ServerConfig server;
  absl::Duration notify_interval = absl::Seconds(900);
  uint16_t ssdp_port = ssdp::kSsdpPort;
};

// The device UUID in `state_dir`/upnp-uuid ("uuid:<random v4 UUID>"),
// made and written (mode 0600, atomically) when absent.
absl::StatusOr<std::string> LoadOrCreateDeviceUuid(const std::string& state_dir);

class UpnpFrontend {
 public:
  static absl::StatusOr<std::unique_ptr<UpnpFrontend>> Start(AgentCore* core, Metrics* metrics,
                                                             FrontendConfig config);
  // SSDP says byebye first, then HTTP stops.
  ~UpnpFrontend();

  uint16_t http_port() const { return http_->port(); }
  const std::string& uuid() const { return uuid_; }

 private:
  UpnpFrontend() = default;
  std::string uuid_;
  std::unique_ptr<UpnpServer> http_;
  std::unique_ptr<ssdp::SsdpServer> ssdp_;
};

}  // namespace fabric::agent::upnp
