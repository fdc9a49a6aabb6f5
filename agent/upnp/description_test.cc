#include "agent/upnp/description.h"

#include <pugixml.hpp>

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent::upnp {
namespace {

DescriptionConfig Config(bool v6) {
  DescriptionConfig c;
  c.root_uuid = "uuid:11111111-2222-4333-8444-555555555555";
  c.wan_device_uuid = "uuid:11111111-2222-4333-8444-555555555556";
  c.wan_connection_device_uuid = "uuid:11111111-2222-4333-8444-555555555557";
  c.model_number = "0.4.0";
  c.friendly_name = "gw <lab> & co";
  c.ipv6_firewall = v6;
  return c;
}

TEST(DescriptionTest, RootIsAnIgd2TreeWithEveryService) {
  std::string xml = RootDescription(Config(true));
  pugi::xml_document doc;
  ASSERT_TRUE(doc.load_string(xml.c_str())) << xml;
  pugi::xml_node root = doc.child("root");
  EXPECT_STREQ(root.attribute("xmlns").value(), "urn:schemas-upnp-org:device-1-0");
  EXPECT_EQ(root.child("specVersion").child("major").text().as_int(), 1);
  pugi::xml_node igd = root.child("device");
  EXPECT_STREQ(igd.child("deviceType").text().get(),
               "urn:schemas-upnp-org:device:InternetGatewayDevice:2");
  EXPECT_STREQ(igd.child("friendlyName").text().get(), "gw <lab> & co");
  EXPECT_STREQ(igd.child("UDN").text().get(), "uuid:11111111-2222-4333-8444-555555555555");
  pugi::xml_node wan = igd.child("deviceList").child("device");
  EXPECT_STREQ(wan.child("deviceType").text().get(), "urn:schemas-upnp-org:device:WANDevice:2");
  EXPECT_STREQ(wan.child("serviceList").child("service").child("controlURL").text().get(),
               "/ctl/CmnIfCfg");
  pugi::xml_node conn = wan.child("deviceList").child("device");
  EXPECT_STREQ(conn.child("UDN").text().get(), "uuid:11111111-2222-4333-8444-555555555557");
  std::set<std::string> types;
  for (pugi::xml_node s : conn.child("serviceList").children("service")) {
    types.insert(s.child("serviceType").text().get());
    EXPECT_TRUE(s.child("eventSubURL")) << "UDA requires the element";
    EXPECT_STREQ(s.child("eventSubURL").text().get(), "");
  }
  EXPECT_EQ(types, (std::set<std::string>{kIpConnection.type, kIpv6Firewall.type}));
  // Without pinholes the firewall service is not offered.
  std::string v4 = RootDescription(Config(false));
  EXPECT_EQ(v4.find("WANIPv6FirewallControl"), std::string::npos);
}

TEST(DescriptionTest, EveryArgumentNamesADeclaredVariable) {
  for (const ServicePaths* s : {&kIpConnection, &kCommonInterfaceConfig, &kIpv6Firewall}) {
    std::string xml = ServiceDescription(*s);
    pugi::xml_document doc;
    ASSERT_TRUE(doc.load_string(xml.c_str())) << s->type;
    pugi::xml_node scpd = doc.child("scpd");
    EXPECT_STREQ(scpd.attribute("xmlns").value(), "urn:schemas-upnp-org:service-1-0");
    std::set<std::string> variables;
    for (pugi::xml_node v : scpd.child("serviceStateTable").children("stateVariable")) {
      variables.insert(v.child("name").text().get());
      EXPECT_STREQ(v.attribute("sendEvents").value(), "no");
    }
    int actions = 0;
    for (pugi::xml_node a : scpd.child("actionList").children("action")) {
      ++actions;
      for (pugi::xml_node arg : a.child("argumentList").children("argument")) {
        EXPECT_TRUE(variables.count(arg.child("relatedStateVariable").text().get()))
            << s->type << " " << a.child("name").text().get();
        std::string dir = arg.child("direction").text().get();
        EXPECT_TRUE(dir == "in" || dir == "out");
      }
    }
    EXPECT_GE(actions, 5) << s->type;
  }
  EXPECT_THAT(ServiceDescription(kIpConnection),
              ::testing::HasSubstr("<name>GetListOfPortMappings</name>"));
}

}  // namespace
}  // namespace fabric::agent::upnp
