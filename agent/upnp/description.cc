#include "agent/upnp/description.h"

#include <pugixml.hpp>

#include <sstream>

namespace fabric::agent::upnp {

const ServicePaths kCommonInterfaceConfig = {
    "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
    "urn:upnp-org:serviceId:WANCommonIFC1", "/WANCfg.xml", "/ctl/CmnIfCfg"};
const ServicePaths kIpConnection = {"urn:schemas-upnp-org:service:WANIPConnection:2",
                                    "urn:upnp-org:serviceId:WANIPConn1", "/WANIPCn.xml",
                                    "/ctl/IPConn"};
const ServicePaths kIpv6Firewall = {"urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
                                    "urn:upnp-org:serviceId:WANIPv6Firewall1", "/WANIPv6FC.xml",
                                    "/ctl/IPv6FC"};

namespace {

struct Arg {
  const char* name;
  bool out;
  const char* variable;
};
struct Action {
  const char* name;
  std::vector<Arg> args;
};
struct Variable {
  const char* name;
  const char* type;
  std::vector<const char*> allowed;
};
struct Scpd {
  std::vector<Action> actions;
  std::vector<Variable> variables;
};

constexpr bool kIn = false, kOut = true;

const Scpd& IpConnectionScpd() {
  static const Scpd* scpd = new Scpd{
      {
          {"GetConnectionTypeInfo",
           {{"NewConnectionType", kOut, "ConnectionType"},
            {"NewPossibleConnectionTypes", kOut, "PossibleConnectionTypes"}}},
          {"GetStatusInfo",
           {{"NewConnectionStatus", kOut, "ConnectionStatus"},
            {"NewLastConnectionError", kOut, "LastConnectionError"},
            {"NewUptime", kOut, "Uptime"}}},
          {"GetNATRSIPStatus",
           {{"NewRSIPAvailable", kOut, "RSIPAvailable"}, {"NewNATEnabled", kOut, "NATEnabled"}}},
          {"GetExternalIPAddress", {{"NewExternalIPAddress", kOut, "ExternalIPAddress"}}},
          {"GetGenericPortMappingEntry",
           {{"NewPortMappingIndex", kIn, "PortMappingNumberOfEntries"},
            {"NewRemoteHost", kOut, "RemoteHost"},
            {"NewExternalPort", kOut, "ExternalPort"},
            {"NewProtocol", kOut, "PortMappingProtocol"},
            {"NewInternalPort", kOut, "InternalPort"},
            {"NewInternalClient", kOut, "InternalClient"},
            {"NewEnabled", kOut, "PortMappingEnabled"},
            {"NewPortMappingDescription", kOut, "PortMappingDescription"},
            {"NewLeaseDuration", kOut, "PortMappingLeaseDuration"}}},
          {"GetSpecificPortMappingEntry",
           {{"NewRemoteHost", kIn, "RemoteHost"},
            {"NewExternalPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"},
            {"NewInternalPort", kOut, "InternalPort"},
            {"NewInternalClient", kOut, "InternalClient"},
            {"NewEnabled", kOut, "PortMappingEnabled"},
            {"NewPortMappingDescription", kOut, "PortMappingDescription"},
            {"NewLeaseDuration", kOut, "PortMappingLeaseDuration"}}},
          {"AddPortMapping",
           {{"NewRemoteHost", kIn, "RemoteHost"},
            {"NewExternalPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"},
            {"NewInternalPort", kIn, "InternalPort"},
            {"NewInternalClient", kIn, "InternalClient"},
            {"NewEnabled", kIn, "PortMappingEnabled"},
            {"NewPortMappingDescription", kIn, "PortMappingDescription"},
            {"NewLeaseDuration", kIn, "PortMappingLeaseDuration"}}},
          {"AddAnyPortMapping",
           {{"NewRemoteHost", kIn, "RemoteHost"},
            {"NewExternalPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"},
            {"NewInternalPort", kIn, "InternalPort"},
            {"NewInternalClient", kIn, "InternalClient"},
            {"NewEnabled", kIn, "PortMappingEnabled"},
            {"NewPortMappingDescription", kIn, "PortMappingDescription"},
            {"NewLeaseDuration", kIn, "PortMappingLeaseDuration"},
            {"NewReservedPort", kOut, "ExternalPort"}}},
          {"DeletePortMapping",
           {{"NewRemoteHost", kIn, "RemoteHost"},
            {"NewExternalPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"}}},
          {"DeletePortMappingRange",
           {{"NewStartPort", kIn, "ExternalPort"},
            {"NewEndPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"},
            {"NewManage", kIn, "A_ARG_TYPE_Manage"}}},
          {"GetListOfPortMappings",
           {{"NewStartPort", kIn, "ExternalPort"},
            {"NewEndPort", kIn, "ExternalPort"},
            {"NewProtocol", kIn, "PortMappingProtocol"},
            {"NewManage", kIn, "A_ARG_TYPE_Manage"},
            {"NewNumberOfPorts", kIn, "PortMappingNumberOfEntries"},
            {"NewPortListing", kOut, "A_ARG_TYPE_PortListing"}}},
      },
      {
          {"ConnectionType", "string", {}},
          {"PossibleConnectionTypes", "string", {"Unconfigured", "IP_Routed", "IP_Bridged"}},
          {"ConnectionStatus", "string",
           {"Unconfigured", "Connecting", "Connected", "PendingDisconnect", "Disconnecting",
            "Disconnected"}},
          {"Uptime", "ui4", {}},
          {"LastConnectionError", "string", {"ERROR_NONE"}},
          {"RSIPAvailable", "boolean", {}},
          {"NATEnabled", "boolean", {}},
          {"ExternalIPAddress", "string", {}},
          {"PortMappingNumberOfEntries", "ui2", {}},
          {"PortMappingEnabled", "boolean", {}},
          {"PortMappingLeaseDuration", "ui4", {}},
          {"RemoteHost", "string", {}},
          {"ExternalPort", "ui2", {}},
          {"InternalPort", "ui2", {}},
          {"PortMappingProtocol", "string", {"TCP", "UDP"}},
          {"InternalClient", "string", {}},
          {"PortMappingDescription", "string", {}},
          {"SystemUpdateID", "ui4", {}},
          {"A_ARG_TYPE_Manage", "boolean", {}},
          {"A_ARG_TYPE_PortListing", "string", {}},
      }};
  return *scpd;
}

const Scpd& CommonInterfaceScpd() {
  static const Scpd* scpd = new Scpd{
      {
          {"GetCommonLinkProperties",
           {{"NewWANAccessType", kOut, "WANAccessType"},
            {"NewLayer1UpstreamMaxBitRate", kOut, "Layer1UpstreamMaxBitRate"},
            {"NewLayer1DownstreamMaxBitRate", kOut, "Layer1DownstreamMaxBitRate"},
            {"NewPhysicalLinkStatus", kOut, "PhysicalLinkStatus"}}},
          {"GetTotalBytesSent", {{"NewTotalBytesSent", kOut, "TotalBytesSent"}}},
          {"GetTotalBytesReceived", {{"NewTotalBytesReceived", kOut, "TotalBytesReceived"}}},
          {"GetTotalPacketsSent", {{"NewTotalPacketsSent", kOut, "TotalPacketsSent"}}},
          {"GetTotalPacketsReceived",
           {{"NewTotalPacketsReceived", kOut, "TotalPacketsReceived"}}},
      },
      {
          {"WANAccessType", "string", {"DSL", "POTS", "Cable", "Ethernet"}},
          {"Layer1UpstreamMaxBitRate", "ui4", {}},
          {"Layer1DownstreamMaxBitRate", "ui4", {}},
          {"PhysicalLinkStatus", "string", {"Up", "Down"}},
          {"TotalBytesSent", "ui4", {}},
          {"TotalBytesReceived", "ui4", {}},
          {"TotalPacketsSent", "ui4", {}},
          {"TotalPacketsReceived", "ui4", {}},
      }};
  return *scpd;
}

const Scpd& Ipv6FirewallScpd() {
  static const Scpd* scpd = new Scpd{
      {
          {"GetFirewallStatus",
           {{"FirewallEnabled", kOut, "FirewallEnabled"},
            {"InboundPinholeAllowed", kOut, "InboundPinholeAllowed"}}},
          {"GetOutboundPinholeTimeout",
           {{"RemoteHost", kIn, "A_ARG_TYPE_IPv6Address"},
            {"RemotePort", kIn, "A_ARG_TYPE_Port"},
            {"InternalClient", kIn, "A_ARG_TYPE_IPv6Address"},
            {"InternalPort", kIn, "A_ARG_TYPE_Port"},
            {"Protocol", kIn, "A_ARG_TYPE_Protocol"},
            {"OutboundPinholeTimeout", kOut, "A_ARG_TYPE_OutboundPinholeTimeout"}}},
          {"AddPinhole",
           {{"RemoteHost", kIn, "A_ARG_TYPE_IPv6Address"},
            {"RemotePort", kIn, "A_ARG_TYPE_Port"},
            {"InternalClient", kIn, "A_ARG_TYPE_IPv6Address"},
            {"InternalPort", kIn, "A_ARG_TYPE_Port"},
            {"Protocol", kIn, "A_ARG_TYPE_Protocol"},
            {"LeaseTime", kIn, "A_ARG_TYPE_LeaseTime"},
            {"UniqueID", kOut, "A_ARG_TYPE_UniqueID"}}},
          {"UpdatePinhole",
           {{"UniqueID", kIn, "A_ARG_TYPE_UniqueID"}, {"NewLeaseTime", kIn, "A_ARG_TYPE_LeaseTime"}}},
          {"DeletePinhole", {{"UniqueID", kIn, "A_ARG_TYPE_UniqueID"}}},
          {"GetPinholePackets",
           {{"UniqueID", kIn, "A_ARG_TYPE_UniqueID"},
            {"PinholePackets", kOut, "A_ARG_TYPE_PinholePackets"}}},
          {"CheckPinholeWorking",
           {{"UniqueID", kIn, "A_ARG_TYPE_UniqueID"}, {"IsWorking", kOut, "A_ARG_TYPE_Boolean"}}},
      },
      {
          {"FirewallEnabled", "boolean", {}},
          {"InboundPinholeAllowed", "boolean", {}},
          {"A_ARG_TYPE_OutboundPinholeTimeout", "ui4", {}},
          {"A_ARG_TYPE_IPv6Address", "string", {}},
          {"A_ARG_TYPE_Port", "ui2", {}},
          {"A_ARG_TYPE_Protocol", "ui2", {}},
          {"A_ARG_TYPE_LeaseTime", "ui4", {}},
          {"A_ARG_TYPE_UniqueID", "ui2", {}},
          {"A_ARG_TYPE_PinholePackets", "ui4", {}},
          {"A_ARG_TYPE_Boolean", "boolean", {}},
      }};
  return *scpd;
}

std::string Save(const pugi::xml_document& doc) {
  std::ostringstream out;
  doc.save(out, "", pugi::format_raw, pugi::encoding_utf8);
  return out.str();
}

pugi::xml_node Start(pugi::xml_document& doc, const char* root, const char* ns) {
  pugi::xml_node decl = doc.append_child(pugi::node_declaration);
  decl.append_attribute("version") = "1.0";
  pugi::xml_node r = doc.append_child(root);
  r.append_attribute("xmlns") = ns;
  pugi::xml_node spec = r.append_child("specVersion");
  spec.append_child("major").text() = "1";
  spec.append_child("minor").text() = "1";
  return r;
}

void AddText(pugi::xml_node parent, const char* name, const std::string& value) {
  parent.append_child(name).text() = value.c_str();
}

void AddServices(pugi::xml_node device, const std::vector<const ServicePaths*>& services) {
  pugi::xml_node list = device.append_child("serviceList");
  for (const ServicePaths* s : services) {
    pugi::xml_node n = list.append_child("service");
    AddText(n, "serviceType", s->type);
    AddText(n, "serviceId", s->id);
    AddText(n, "SCPDURL", s->scpd_path);
    AddText(n, "controlURL", s->control_path);
    AddText(n, "eventSubURL", "");  // no eventing (UDA 2.3: present, empty)
  }
}

pugi::xml_node AddDevice(pugi::xml_node parent, const DescriptionConfig& c, const char* type,
                         const std::string& name, const std::string& uuid) {
  pugi::xml_node d = parent.append_child("device");
  AddText(d, "deviceType", type);
  AddText(d, "friendlyName", name);
  AddText(d, "manufacturer", "Fabric NAT");
  AddText(d, "manufacturerURL", "https://github.com/fabric-nat");
  AddText(d, "modelDescription", "Fabric NAT agent");
  AddText(d, "modelName", "fabric-agent");
  AddText(d, "modelNumber", c.model_number);
  AddText(d, "UDN", uuid);
  return d;
}

}  // namespace

std::string RootDescription(const DescriptionConfig& c) {
  pugi::xml_document doc;
  pugi::xml_node root = Start(doc, "root", "urn:schemas-upnp-org:device-1-0");
  root.append_attribute("configId") = "1";
  pugi::xml_node igd = AddDevice(root, c, "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                                 c.friendly_name, c.root_uuid);
  pugi::xml_node wan =
      AddDevice(igd.append_child("deviceList"), c, "urn:schemas-upnp-org:device:WANDevice:2",
                "WAN device", c.wan_device_uuid);
  AddServices(wan, {&kCommonInterfaceConfig});
  pugi::xml_node conn = AddDevice(wan.append_child("deviceList"), c,
                                  "urn:schemas-upnp-org:device:WANConnectionDevice:2",
                                  "WAN connection device", c.wan_connection_device_uuid);
  std::vector<const ServicePaths*> services = {&kIpConnection};
  if (c.ipv6_firewall) services.push_back(&kIpv6Firewall);
  AddServices(conn, services);
  return Save(doc);
}

std::string ServiceDescription(const ServicePaths& service) {
  const Scpd& scpd = &service == &kIpConnection       ? IpConnectionScpd()
                     : &service == &kIpv6Firewall     ? Ipv6FirewallScpd()
                                                      : CommonInterfaceScpd();
  pugi::xml_document doc;
  pugi::xml_node root = Start(doc, "scpd", "urn:schemas-upnp-org:service-1-0");
  pugi::xml_node actions = root.append_child("actionList");
  for (const Action& a : scpd.actions) {
    pugi::xml_node n = actions.append_child("action");
    AddText(n, "name", a.name);
    if (a.args.empty()) continue;
    pugi::xml_node args = n.append_child("argumentList");
    for (const Arg& arg : a.args) {
      pugi::xml_node x = args.append_child("argument");
      AddText(x, "name", arg.name);
      AddText(x, "direction", arg.out ? "out" : "in");
      AddText(x, "relatedStateVariable", arg.variable);
    }
  }
  pugi::xml_node table = root.append_child("serviceStateTable");
  for (const Variable& v : scpd.variables) {
    pugi::xml_node n = table.append_child("stateVariable");
    // No GENA eventing (control points poll): nothing is evented.
    n.append_attribute("sendEvents") = "no";
    AddText(n, "name", v.name);
    AddText(n, "dataType", v.type);
    if (v.allowed.empty()) continue;
    pugi::xml_node list = n.append_child("allowedValueList");
    for (const char* value : v.allowed) AddText(list, "allowedValue", value);
  }
  return Save(doc);
}

}  // namespace fabric::agent::upnp
