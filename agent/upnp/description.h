// The UPnP descriptions the agent serves (UPnP Device Architecture 1.1,
// section 2): the root device description, an InternetGatewayDevice:2 tree
//   InternetGatewayDevice:2 (uuid root)
//     WANDevice:2 (uuid wan_device): WANCommonInterfaceConfig:1
//       WANConnectionDevice:2 (uuid wan_connection_device):
//         WANIPConnection:2, WANIPv6FirewallControl:1 (when pinholes are on)
// which IGD:1 control points use too (a v2 service answers v1 actions),
// and one service description (SCPD) per service, listing exactly the
// actions agent/upnp/igd.cc implements. Nothing is evented (no GENA:
// SUBSCRIBE gets an error), so every eventSubURL is empty. Built once with pugixml; the paths
// below are the only ones the HTTP server answers.
#pragma once

#include <string>
#include <vector>

namespace fabric::agent::upnp {

inline constexpr char kRootDescPath[] = "/rootDesc.xml";

// One service of the tree.
struct ServicePaths {
  const char* type;        // "urn:schemas-upnp-org:service:WANIPConnection:2"
  const char* id;          // "urn:upnp-org:serviceId:WANIPConn1"
  const char* scpd_path;   // "/WANIPCn.xml"
  const char* control_path;
};
extern const ServicePaths kCommonInterfaceConfig;
extern const ServicePaths kIpConnection;
extern const ServicePaths kIpv6Firewall;

struct DescriptionConfig {
  std::string root_uuid;  // "uuid:..." of each device
  std::string wan_device_uuid;
  std::string wan_connection_device_uuid;
  std::string friendly_name = "Fabric NAT gateway";
  std::string model_number;  // the agent's version
  bool ipv6_firewall = false;
};

// The root device description (text/xml).
std::string RootDescription(const DescriptionConfig& config);
// The SCPD of `service` (one of the three above).
std::string ServiceDescription(const ServicePaths& service);

}  // namespace fabric::agent::upnp
