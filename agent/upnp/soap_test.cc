#include "agent/upnp/soap.h"

#include <pugixml.hpp>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent::upnp {
namespace {

using ::testing::HasSubstr;

constexpr char kType[] = "urn:schemas-upnp-org:service:WANIPConnection:2";

// The body miniupnpc 2.2 sends (simpleUPnPcommand).
std::string Body(const std::string& action, const std::string& args,
                 const std::string& type = kType) {
  return absl::StrCat(
      "<?xml version=\"1.0\"?>\r\n"
      "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" "
      "s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>"
      "<u:", action, " xmlns:u=\"", type, "\">", args, "</u:", action,
      "></s:Body></s:Envelope>\r\n");
}

std::string Header(const std::string& action) { return absl::StrCat("\"", kType, "#", action, "\""); }

std::string ParseError(const std::string& header, const std::string& body) {
  absl::StatusOr<SoapCall> c = ParseSoapCall(header, body);
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(c.status().message());
}

TEST(SoapTest, ParsesMiniupnpcRequest) {
  absl::StatusOr<SoapCall> c = ParseSoapCall(
      Header("AddPortMapping"),
      Body("AddPortMapping",
           "<NewRemoteHost></NewRemoteHost><NewExternalPort>8080</NewExternalPort>"
           "<NewProtocol>TCP</NewProtocol><NewPortMappingDescription>a &amp; b"
           "</NewPortMappingDescription>"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->service_type, kType);
  EXPECT_EQ(c->version, 2);
  EXPECT_EQ(c->action, "AddPortMapping");
  ASSERT_EQ(c->arguments.size(), 4u);
  EXPECT_EQ(*c->Argument("NewRemoteHost"), "");
  EXPECT_EQ(*c->Argument("NewExternalPort"), "8080");
  EXPECT_EQ(*c->Argument("NewPortMappingDescription"), "a & b");
  EXPECT_EQ(c->Argument("NewLeaseDuration"), nullptr);
}

TEST(SoapTest, AcceptsOtherPrefixesDefaultNamespacesAndUnquotedHeader) {
  std::string body =
      "<E:Envelope xmlns:E=\"http://schemas.xmlsoap.org/soap/envelope/\"><E:Header/><E:Body>"
      "<GetExternalIPAddress xmlns=\"urn:schemas-upnp-org:service:WANIPConnection:1\"/>"
      "</E:Body></E:Envelope>";
  absl::StatusOr<SoapCall> c = ParseSoapCall(
      "urn:schemas-upnp-org:service:WANIPConnection:1#GetExternalIPAddress", body);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->version, 1);
  EXPECT_TRUE(c->arguments.empty());
}

TEST(SoapTest, RefusesHeaderAndBodyThatDisagree) {
  EXPECT_THAT(ParseError(Header("DeletePortMapping"), Body("AddPortMapping", "")),
              HasSubstr("SOAPAction names DeletePortMapping but the body holds AddPortMapping"));
  EXPECT_THAT(ParseError(Header("AddPortMapping"),
                         Body("AddPortMapping", "",
                              "urn:schemas-upnp-org:service:WANIPConnection:1")),
              HasSubstr("but the body's action is in "
                        "urn:schemas-upnp-org:service:WANIPConnection:1"));
  EXPECT_THAT(ParseError("\"AddPortMapping\"", Body("AddPortMapping", "")),
              HasSubstr("SOAPAction must be"));
  EXPECT_THAT(ParseError("\"urn:example:x#A\"", Body("A", "")),
              HasSubstr("names no UPnP service type"));
  EXPECT_THAT(ParseError("\"urn:schemas-upnp-org:service:WANIPConnection#A\"", Body("A", "")),
              HasSubstr("has no version"));
  EXPECT_THAT(ParseError(absl::StrCat(kType, "#"), Body("A", "")), HasSubstr("names no action"));
}

TEST(SoapTest, RefusesWhatIsNotASoapEnvelope) {
  EXPECT_THAT(ParseError(Header("A"), "not xml <"), HasSubstr("the body is not XML"));
  EXPECT_THAT(ParseError(Header("A"), "<Envelope/>"), HasSubstr("not a SOAP 1.1 Envelope"));
  EXPECT_THAT(ParseError(Header("A"),
                         "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"/>"),
              HasSubstr("has no Body"));
  EXPECT_THAT(ParseError(Header("A"),
                         "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">"
                         "<s:Body/></s:Envelope>"),
              HasSubstr("the Body is empty"));
  EXPECT_THAT(ParseError(Header("A"), Body("A", "") + "<x/>"), HasSubstr("more than one element"));
  EXPECT_THAT(ParseError(Header("A"),
                         "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">"
                         "<s:Body><u:A xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\""
                         "/></s:Body><s:Body/></s:Envelope>"),
              HasSubstr("two Bodies"));
}

TEST(SoapTest, RefusesEntityTricksAndDeepNesting) {
  std::string laughs =
      "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">"
      "<!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]>" +
      Body("A", "<NewX>&lol2;</NewX>").substr(23);
  EXPECT_THAT(ParseError(Header("A"), laughs), HasSubstr("document type declaration"));
  std::string deep;
  for (int i = 0; i < 20; ++i) deep += "<d>";
  for (int i = 0; i < 20; ++i) deep += "</d>";
  EXPECT_THAT(ParseError(Header("A"), Body("A", deep)), HasSubstr("nest deeper than 8"));
  // Only just within the limit: an argument holding elements.
  EXPECT_THAT(ParseError(Header("A"), Body("A", "<NewX><y/></NewX>")),
              HasSubstr("argument NewX holds elements"));
}

TEST(SoapTest, BoundsArguments) {
  EXPECT_THAT(ParseError(Header("A"), Body("A", "<NewX>1</NewX><NewX>2</NewX>")),
              HasSubstr("argument NewX is repeated"));
  EXPECT_THAT(ParseError(Header("A"), Body("A", "<NewX>" + std::string(1025, 'a') + "</NewX>")),
              HasSubstr("longer than 1024 bytes"));
  std::string many;
  for (int i = 0; i < 17; ++i) many += absl::StrCat("<A", i, ">x</A", i, ">");
  EXPECT_THAT(ParseError(Header("A"), Body("A", many)), HasSubstr("more than 16 arguments"));
  EXPECT_THAT(ParseError(Header("A"), Body("A", "text<NewX/>")),
              HasSubstr("the action element holds text"));
  EXPECT_THAT(ParseError(Header("A"), std::string(kMaxSoapBody + 1, ' ')),
              HasSubstr("at most 16384"));
}

TEST(SoapTest, ResponsesAndFaultsAreWellFormedAndEscaped) {
  SoapCall call;
  call.service_type = kType;
  call.action = "GetSpecificPortMappingEntry";
  std::string r = SoapResponse(call, {{"NewPortMappingDescription", "<script>&\"'\x01"}},
                               {{"NewPortListing", "<a>]]></a>"}});
  pugi::xml_document doc;
  ASSERT_TRUE(doc.load_string(r.c_str())) << r;
  pugi::xml_node resp = doc.child("s:Envelope").child("s:Body").child(
      "u:GetSpecificPortMappingEntryResponse");
  ASSERT_TRUE(resp) << r;
  EXPECT_STREQ(resp.attribute("xmlns:u").value(), kType);
  EXPECT_STREQ(resp.child("NewPortMappingDescription").text().get(), "<script>&\"'");
  std::string listing;
  for (pugi::xml_node t : resp.child("NewPortListing").children()) listing += t.value();
  EXPECT_EQ(listing, "<a>]]></a>");
  EXPECT_THAT(r, HasSubstr("<NewPortListing><![CDATA[<a>]]]]><![CDATA[></a>]]></NewPortListing>"));

  std::string f = SoapFault(718, UpnpErrorName(718));
  ASSERT_TRUE(doc.load_string(f.c_str())) << f;
  pugi::xml_node fault = doc.child("s:Envelope").child("s:Body").child("s:Fault");
  EXPECT_STREQ(fault.child("faultcode").text().get(), "s:Client");
  EXPECT_STREQ(fault.child("faultstring").text().get(), "UPnPError");
  pugi::xml_node err = fault.child("detail").child("UPnPError");
  EXPECT_STREQ(err.attribute("xmlns").value(), "urn:schemas-upnp-org:control-1-0");
  EXPECT_EQ(err.child("errorCode").text().as_int(), 718);
  EXPECT_STREQ(err.child("errorDescription").text().get(), "ConflictInMappingEntry");
}

TEST(SoapTest, ErrorNamesFollowTheSpecifications) {
  EXPECT_EQ(UpnpErrorName(402), "Invalid Args");
  EXPECT_EQ(UpnpErrorName(606), "Action not authorized");
  EXPECT_EQ(UpnpErrorName(713), "SpecifiedArrayIndexInvalid");
  EXPECT_EQ(UpnpErrorName(714), "NoSuchEntryInArray");
  EXPECT_EQ(UpnpErrorName(716), "WildCardNotPermittedInExtPort");
  EXPECT_EQ(UpnpErrorName(724), "SamePortValuesRequired");
  EXPECT_EQ(UpnpErrorName(725), "OnlyPermanentLeasesSupported");
  EXPECT_EQ(UpnpErrorName(726), "RemoteHostOnlySupportsWildcard");
  EXPECT_EQ(UpnpErrorName(728), "NoPortMapsAvailable");
  EXPECT_EQ(UpnpErrorName(729), "ConflictWithOtherMechanisms");
  EXPECT_EQ(UpnpErrorName(730), "PortMappingNotFound");
  EXPECT_EQ(UpnpErrorName(733), "InconsistentParameters");
  EXPECT_EQ(UpnpErrorName(999), "Action Failed");
}

}  // namespace
}  // namespace fabric::agent::upnp
