// IgdControl: the actions of WANIPConnection:1 and :2 and
// WANCommonInterfaceConfig:1 on the agent's core. Each request is a parsed
// SOAP call (soap.h) from a LAN host whose address the HTTP layer has
// checked; its mappings go to that host only (606 otherwise), through the
// one allocator, store and kernel batch (AgentCore::Upnp). Faults follow
// the specifications (IGD:1 and IGD:2 WANIPConnection, section 2.4):
//   402 bad arguments; 401 an action the service (or its version) lacks;
//   501 no external address or the store/kernel refused; 606 another
//   host's address or mapping; 713 index past the end; 714 no such
//   mapping; 716 external port 0 in AddPortMapping; 718 another host's
//   mapping holds the port (IGD:1: any conflict); 724 internal and external
//   ports differ with same_port set; 726 a remote host other than the
//   wildcard; 728 quota or no free port (IGD:2); 729 a container, API or
//   file mapping holds the port or it lies outside the lease range
//   (IGD:2); 730 nothing of the host's in DeletePortMappingRange's or
//   GetListOfPortMappings' range; 733 a range whose start is past its end.
// (725 OnlyPermanentLeasesSupported is for gateways that take only
// permanent leases; this one takes every lease, so it never sends it.)
// Lease 0 is permanent on IGD:1 and 604800 s on IGD:2; longer leases are
// cut to 604800 s.
//
// Thread-safe (the core is).
#pragma once

#include <functional>
#include <string>

#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/upnp/soap.h"
#include "nat/types.h"

namespace fabric::agent::upnp {

struct IgdConfig {
  LeasePolicy policy;
  // Where GetCommonLinkProperties and the byte/packet counters come from
  // (/sys/class/net/<wan>/); empty: zeros and "Down".
  std::string wan_interface;
  // When set, the WAN interface now (it follows the default route), used
  // instead of wan_interface.
  std::function<std::string()> wan_interface_now;
  // Refuse (724) a mapping whose internal and external ports differ.
  bool same_port = false;
  // Serve WANIPv6FirewallControl:1 (igd_pinholes.cc): the agent's IPv6
  // firewall is on.
  bool ipv6_firewall = false;
  std::string sys_class_net = "/sys/class/net";
};

class IgdControl {
 public:
  IgdControl(AgentCore* core, IgdConfig config,
             std::function<absl::Time()> now = [] { return absl::Now(); });

  struct Reply {
    int http_code = 200;  // 500 with a fault
    std::string body;
    int fault = 0;        // the UPnP error code, 0 for success
    std::string detail;   // why, for the log
  };
  // One control request on the service at `control_path` (one of
  // description.h's control paths) from LAN host `client` (IPv4, or IPv6
  // for the firewall service).
  Reply Handle(const std::string& control_path, const SoapCall& call,
               const nat::IpAddress& client) const;

 private:
  Reply IpConnection(const SoapCall& call, const nat::IpAddress& client) const;
  Reply CommonInterface(const SoapCall& call) const;
  Reply Ipv6Firewall(const SoapCall& call, const nat::IpAddress& client) const;
  Reply AddMapping(const SoapCall& call, const nat::IpAddress& client, bool any) const;
  Reply DeleteMapping(const SoapCall& call, const nat::IpAddress& client) const;
  Reply DeleteRange(const SoapCall& call, const nat::IpAddress& client) const;
  Reply SpecificEntry(const SoapCall& call) const;
  Reply GenericEntry(const SoapCall& call) const;
  Reply ListMappings(const SoapCall& call, const nat::IpAddress& client) const;
  // A /sys/class/net/<wan>/<name> value, or 0.
  // The WAN interface now.
  std::string Wan() const;
  uint64_t WanValue(const std::string& name) const;

  AgentCore* const core_;
  const IgdConfig config_;
  const std::function<absl::Time()> now_;
  const absl::Time started_;
};

}  // namespace fabric::agent::upnp
