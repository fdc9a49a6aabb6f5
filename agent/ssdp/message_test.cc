#include "agent/ssdp/message.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent::ssdp {
namespace {

using ::fabric::testing::IsOk;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kRoot[] = "uuid:12345678-90ab-cdef-1234-567890abcdef";

std::string Search(const std::string& headers) {
  return absl::StrCat("M-SEARCH * HTTP/1.1\r\n", headers, "\r\n");
}

const std::string kGood = Search(
    "HOST: 239.255.255.250:1900\r\n"
    "MAN: \"ssdp:discover\"\r\n"
    "MX: 2\r\n"
    "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    "USER-AGENT: Debian/12 UPnP/1.1 MiniUPnPc/2.2.4\r\n");

absl::Status ParseError(const std::string& datagram) {
  return ParseSearch(datagram).status();
}

TEST(ParseSearch, AcceptsWhatMiniupnpcSends) {
  ASSERT_OK_AND_ASSIGN(SearchRequest r, ParseSearch(kGood));
  EXPECT_EQ(r.st, "urn:schemas-upnp-org:device:InternetGatewayDevice:1");
  EXPECT_EQ(r.mx, 2);
  EXPECT_EQ(r.host, "239.255.255.250:1900");
  EXPECT_EQ(r.user_agent, "Debian/12 UPnP/1.1 MiniUPnPc/2.2.4");
  EXPECT_THAT(CheckMulticastSearch(r), IsOk());
}

TEST(ParseSearch, HeaderNamesAreCaseInsensitiveAndValuesTrimmed) {
  ASSERT_OK_AND_ASSIGN(SearchRequest r,
                       ParseSearch(Search("host:239.255.255.250:1900\r\n"
                                          "Man:   \"ssdp:discover\"  \r\n"
                                          "mX:\t0\r\n"
                                          "sT: ssdp:all\r\n"
                                          "X-Other: ignored\r\n")));
  EXPECT_EQ(r.st, "ssdp:all");
  EXPECT_EQ(r.mx, 0);
  EXPECT_EQ(r.host, "239.255.255.250:1900");
}

TEST(ParseSearch, BareLineFeedsAndNoFinalBlankLine) {
  ASSERT_OK_AND_ASSIGN(
      SearchRequest r,
      ParseSearch("M-SEARCH * HTTP/1.1\nMAN: \"ssdp:discover\"\nST: upnp:rootdevice"));
  EXPECT_EQ(r.st, "upnp:rootdevice");
  EXPECT_EQ(r.mx, std::nullopt);
  EXPECT_EQ(r.host, "");
}

TEST(ParseSearch, UnicastNeedsNoMxMulticastDoes) {
  ASSERT_OK_AND_ASSIGN(SearchRequest r,
                       ParseSearch(Search("MAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n")));
  EXPECT_THAT(CheckMulticastSearch(r),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no MX header")));
}

TEST(ParseSearch, OtherMessagesAreUnimplementedNotInvalid) {
  EXPECT_THAT(ParseError("NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
                         "NTS: ssdp:alive\r\n\r\n"),
              StatusIs(absl::StatusCode::kUnimplemented, "a `NOTIFY` request, not an M-SEARCH"));
  EXPECT_THAT(ParseError("HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n"),
              StatusIs(absl::StatusCode::kUnimplemented,
                       HasSubstr("an HTTP response (`HTTP/1.1 200 OK`)")));
  EXPECT_THAT(ParseError("SUBSCRIBE /x HTTP/1.0\r\n\r\n"),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST(ParseSearch, EachErrorSaysWhat) {
  struct Case {
    std::string datagram;
    std::string message;
  };
  const std::string man = "MAN: \"ssdp:discover\"\r\n";
  const std::vector<Case> cases = {
      {"", "empty datagram"},
      {"\r\n\r\n", "the request line must be `M-SEARCH * HTTP/1.1`, got ``"},
      {"M-SEARCH * HTTP/1.0\r\n\r\n",
       "the request line must be `M-SEARCH * HTTP/1.1`, got `M-SEARCH * HTTP/1.0`"},
      {"M-SEARCH /x HTTP/1.1\r\n\r\n",
       "the request line must be `M-SEARCH * HTTP/1.1`, got `M-SEARCH /x HTTP/1.1`"},
      {"m-search * HTTP/1.1\r\n\r\n",
       "the request line must be `M-SEARCH * HTTP/1.1`, got `m-search * HTTP/1.1`"},
      {"\x01\x02garbage", "the request line must be `M-SEARCH * HTTP/1.1`, got `\\x01\\x02garbage`"},
      {Search("ST: ssdp:all\r\n"), "no MAN header (an M-SEARCH carries MAN: \"ssdp:discover\")"},
      {Search("MAN: ssdp:discover\r\nST: ssdp:all\r\n"),
       "MAN must be \"ssdp:discover\" (with the quotes), got `ssdp:discover`"},
      {Search(man + "MX: 1\r\n"), "no ST header (the search target)"},
      {Search(man + "ST:   \r\n"), "ST is empty"},
      {Search(man + "ST: a\r\nst: b\r\n"), "more than one ST header"},
      {Search(man + man + "ST: a\r\n"), "more than one MAN header"},
      {Search(man + "ST: a\r\nMX: 1\r\nMX: 2\r\n"), "more than one MX header"},
      {Search(man + "ST: a\r\nHOST: x\r\nHost: y\r\n"), "more than one HOST header"},
      {Search(man + "ST: a\r\nMX: 121\r\n"),
       "MX must be a whole number of seconds 0..120, got `121`"},
      {Search(man + "ST: a\r\nMX: -1\r\n"), "MX must be a whole number of seconds 0..120, got `-1`"},
      {Search(man + "ST: a\r\nMX: 1.5\r\n"),
       "MX must be a whole number of seconds 0..120, got `1.5`"},
      {Search(man + "ST: a\r\nMX: +3\r\n"), "MX must be a whole number of seconds 0..120, got `+3`"},
      {Search(man + "ST: a\r\nMX:\r\n"), "MX must be a whole number of seconds 0..120, got ``"},
      {Search(man + "ST: a\r\nMX: 0005\r\n"),
       "MX must be a whole number of seconds 0..120, got `0005`"},
      {Search(man + "ST: a\r\nno colon here\r\n"),
       "header line 3 has no colon: `no colon here`"},
      {Search(man + "ST: a\r\n folded\r\n"),
       "header line 3 is a continuation line (line folding is not accepted)"},
      {Search(man + "BAD NAME: x\r\nST: a\r\n"), "header line 2: `BAD NAME` is not a header name"},
      {Search(man + ": x\r\nST: a\r\n"), "header line 2: `` is not a header name"},
      {Search(man + std::string("ST: a\0b\r\n", 9)),
       "header line 2 holds a control character: `ST: a\\x00b`"},
      {Search(man + "ST: a\rb\r\n"), "header line 2 holds a control character: `ST: a\\x0db`"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ParseError(c.datagram), StatusIs(absl::StatusCode::kInvalidArgument, c.message))
        << "for " << c.datagram;
  }
}

TEST(ParseSearch, Limits) {
  // 32 header lines are fine, 33 are not.
  std::string headers = "MAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n";
  for (int i = 0; i < 30; ++i) absl::StrAppend(&headers, "X-", i, ": y\r\n");
  EXPECT_THAT(ParseSearch(Search(headers)), IsOk());
  EXPECT_THAT(ParseError(Search(headers + "X-Last: y\r\n")),
              StatusIs(absl::StatusCode::kInvalidArgument, "more than 32 header lines"));
  // 2048 bytes are fine, 2049 are not.
  std::string big = Search("MAN: \"ssdp:discover\"\r\nST: ssdp:all\r\nX-Pad: \r\n");
  std::string pad(kMaxDatagram - big.size(), 'p');
  big = Search(absl::StrCat("MAN: \"ssdp:discover\"\r\nST: ssdp:all\r\nX-Pad: ", pad, "\r\n"));
  ASSERT_EQ(big.size(), kMaxDatagram);
  EXPECT_THAT(ParseSearch(big), IsOk());
  EXPECT_THAT(ParseError(big + "x"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "the datagram is 2049 bytes; an M-SEARCH is at most 2048"));
  // A body after the blank line is not read (nor counted as headers).
  EXPECT_THAT(ParseSearch(kGood + "anything\r\nat: all\r\n"), IsOk());
}

TEST(Uuid, NormalizeAndDerive) {
  EXPECT_THAT(NormalizeUuid("12345678-90AB-cdef-1234-567890ABCDEF"),
              IsOkAndHolds(std::string(kRoot)));
  EXPECT_EQ(*NormalizeUuid("UUID:12345678-90ab-cdef-1234-567890abcdef"), kRoot);
  for (const char* bad : {"", "uuid:", "12345678-90ab-cdef-1234-567890abcde",
                          "12345678-90ab-cdef-1234-567890abcdeg",
                          "1234567890ab-cdef-1234-567890abcdef-", "uuid: 12345678-90ab"}) {
    EXPECT_THAT(NormalizeUuid(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a UUID")))
        << bad;
  }
  ASSERT_OK_AND_ASSIGN(IgdUuids ids, DeriveIgdUuids("12345678-90AB-CDEF-1234-567890ABCDEF"));
  EXPECT_EQ(ids.root, kRoot);
  // Pinned: the description writer and other builds must get the same.
  EXPECT_EQ(ids.wan_device, "uuid:12345678-90ab-cdef-1234-e317e9e7ea24");
  EXPECT_EQ(ids.wan_connection_device, "uuid:12345678-90ab-cdef-1234-621825d4acc0");
  EXPECT_EQ(*DeriveUuid(kRoot, 1), ids.wan_device);
  EXPECT_EQ(*DeriveUuid(kRoot, 2), ids.wan_connection_device);
  EXPECT_THAT(NormalizeUuid(ids.wan_device), IsOkAndHolds(ids.wan_device));
  EXPECT_THAT(DeriveUuid(kRoot, 0), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Device, TheIgdTree) {
  ASSERT_OK_AND_ASSIGN(Device d, InternetGatewayDevice(kRoot));
  ASSERT_OK_AND_ASSIGN(IgdUuids ids, DeriveIgdUuids(kRoot));
  EXPECT_EQ(d.uuid_root, kRoot);
  ASSERT_THAT(d.devices, SizeIs(3));
  EXPECT_EQ(d.devices[0].type, kInternetGatewayDevice2);
  EXPECT_THAT(d.devices[0].services, IsEmpty());
  EXPECT_EQ(d.devices[1].uuid, ids.wan_device);
  EXPECT_EQ(d.devices[1].type, kWanDevice2);
  EXPECT_THAT(d.devices[1].services, ElementsAre(kWanCommonInterfaceConfig1));
  EXPECT_EQ(d.devices[2].uuid, ids.wan_connection_device);
  EXPECT_EQ(d.devices[2].type, kWanConnectionDevice2);
  EXPECT_THAT(d.devices[2].services, ElementsAre(kWanIpConnection2, kWanIpv6FirewallControl1));
  EXPECT_THAT(InternetGatewayDevice("nope"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Device, Validation) {
  Device d = *InternetGatewayDevice(kRoot);
  EXPECT_THAT(ValidateDevice(d), IsOk());
  Device bad = d;
  bad.uuid_root = d.devices[1].uuid;
  EXPECT_THAT(ValidateDevice(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("is not the first device's UUID")));
  bad = d;
  bad.devices[2].uuid = bad.devices[1].uuid;
  EXPECT_THAT(ValidateDevice(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is used twice")));
  bad = d;
  bad.devices[1].uuid = "uuid:12345678-90AB-cdef-1234-567890abcdee";
  EXPECT_THAT(ValidateDevice(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not normalized")));
  bad = d;
  bad.devices[1].type = "urn:schemas-upnp-org:service:WANDevice:2";
  EXPECT_THAT(ValidateDevice(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device type")));
  bad = d;
  bad.devices[1].services.push_back("urn:schemas-upnp-org:service:X:0");
  EXPECT_THAT(ValidateDevice(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("service type")));
  bad = d;
  bad.devices.clear();
  EXPECT_THAT(ValidateDevice(bad), StatusIs(absl::StatusCode::kInvalidArgument, "the device tree is empty"));
}

class MatchTest : public ::testing::Test {
 protected:
  Device d_ = *InternetGatewayDevice(kRoot);
  std::string a_ = d_.devices[0].uuid, b_ = d_.devices[1].uuid, c_ = d_.devices[2].uuid;
};

TEST_F(MatchTest, AllIsEveryAdvertisement) {
  std::vector<Answer> all = Match(d_, "ssdp:all");
  // 3 + 2d + k: d = 2 embedded devices, k = 3 service types.
  EXPECT_THAT(all, ElementsAre(
      Answer{"upnp:rootdevice", a_ + "::upnp:rootdevice"}, Answer{a_, a_},
      Answer{kInternetGatewayDevice2, a_ + "::" + kInternetGatewayDevice2}, Answer{b_, b_},
      Answer{kWanDevice2, b_ + "::" + kWanDevice2},
      Answer{kWanCommonInterfaceConfig1, b_ + "::" + kWanCommonInterfaceConfig1},
      Answer{c_, c_}, Answer{kWanConnectionDevice2, c_ + "::" + kWanConnectionDevice2},
      Answer{kWanIpConnection2, c_ + "::" + kWanIpConnection2},
      Answer{kWanIpv6FirewallControl1, c_ + "::" + kWanIpv6FirewallControl1}));
  EXPECT_EQ(all, Advertisements(d_));
}

TEST_F(MatchTest, RootDeviceAndUuids) {
  EXPECT_THAT(Match(d_, "upnp:rootdevice"),
              ElementsAre(Answer{"upnp:rootdevice", a_ + "::upnp:rootdevice"}));
  EXPECT_THAT(Match(d_, a_), ElementsAre(Answer{a_, a_}));
  EXPECT_THAT(Match(d_, b_), ElementsAre(Answer{b_, b_}));
  EXPECT_THAT(Match(d_, c_), ElementsAre(Answer{c_, c_}));
  // UUIDs compare in any case; ST is echoed, USN is ours.
  std::string upper = "UUID:12345678-90AB-CDEF-1234-567890ABCDEF";
  EXPECT_THAT(Match(d_, upper), ElementsAre(Answer{upper, a_}));
  EXPECT_THAT(Match(d_, "uuid:12345678-90ab-cdef-1234-000000000000"), IsEmpty());
}

TEST_F(MatchTest, TypesAnswerTheirVersionAndEarlierOnes) {
  for (const char* st : {"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                         "urn:schemas-upnp-org:device:InternetGatewayDevice:1"}) {
    EXPECT_THAT(Match(d_, st), ElementsAre(Answer{st, a_ + "::" + st})) << st;
  }
  EXPECT_THAT(Match(d_, "urn:schemas-upnp-org:device:WANDevice:1"),
              ElementsAre(Answer{"urn:schemas-upnp-org:device:WANDevice:1",
                                 b_ + "::urn:schemas-upnp-org:device:WANDevice:1"}));
  EXPECT_THAT(Match(d_, "urn:schemas-upnp-org:device:WANConnectionDevice:2"),
              ElementsAre(Answer{kWanConnectionDevice2, c_ + "::" + kWanConnectionDevice2}));
  for (const char* st : {"urn:schemas-upnp-org:service:WANIPConnection:2",
                         "urn:schemas-upnp-org:service:WANIPConnection:1"}) {
    EXPECT_THAT(Match(d_, st), ElementsAre(Answer{st, c_ + "::" + st})) << st;
  }
  EXPECT_THAT(Match(d_, kWanCommonInterfaceConfig1),
              ElementsAre(Answer{kWanCommonInterfaceConfig1,
                                 b_ + "::" + kWanCommonInterfaceConfig1}));
  EXPECT_THAT(Match(d_, kWanIpv6FirewallControl1),
              ElementsAre(Answer{kWanIpv6FirewallControl1, c_ + "::" + kWanIpv6FirewallControl1}));
}

TEST_F(MatchTest, UnknownsGetNothing) {
  for (const char* st : {
           "urn:schemas-upnp-org:device:InternetGatewayDevice:3",  // later than ours
           "urn:schemas-upnp-org:service:WANIPConnection:3",
           "urn:schemas-upnp-org:service:WANPPPConnection:1",  // we have none
           "urn:schemas-upnp-org:device:MediaServer:1",
           "urn:schemas-upnp-org:service:InternetGatewayDevice:1",  // a device, not a service
           "urn:schemas-upnp-org:device:WANIPConnection:1",
           "urn:example-com:device:InternetGatewayDevice:1",  // another domain
           "urn:schemas-upnp-org:device:InternetGatewayDevice:0",
           "urn:schemas-upnp-org:device:InternetGatewayDevice:",
           "urn:schemas-upnp-org:device:InternetGatewayDevice:x",
           "urn:schemas-upnp-org:device:InternetGatewayDevice:-1",
           "urn:schemas-upnp-org:device:InternetGatewayDevice:1:2",
           "urn:schemas-upnp-org:device:InternetGatewayDevice",
           "urn:schemas-upnp-org:device:internetgatewaydevice:1",
           "ssdp:All", "upnp:rootdevices", "ssdp:discover", "", "uuid:", "*"}) {
    EXPECT_THAT(Match(d_, st), IsEmpty()) << st;
  }
}

TEST_F(MatchTest, TheModelIsData) {
  // A vendor device with the same service twice and one also on another
  // device: one answer per device, advertised once per device.
  Device d;
  d.uuid_root = a_;
  d.devices = {{a_, "urn:example-com:device:Box:3",
                {"urn:example-com:service:Light:2", "urn:example-com:service:Light:2"}},
               {b_, "urn:example-com:device:Lamp:1", {"urn:example-com:service:Light:1"}}};
  ASSERT_THAT(ValidateDevice(d), IsOk());
  EXPECT_THAT(Advertisements(d), SizeIs(3 + 2 * 1 + 2));
  EXPECT_THAT(Match(d, "urn:example-com:service:Light:1"),
              ElementsAre(Answer{"urn:example-com:service:Light:1",
                                 a_ + "::urn:example-com:service:Light:1"},
                          Answer{"urn:example-com:service:Light:1",
                                 b_ + "::urn:example-com:service:Light:1"}));
  EXPECT_THAT(Match(d, "urn:example-com:service:Light:2"), SizeIs(1));
  EXPECT_THAT(Match(d, "urn:example-com:device:Box:2"), SizeIs(1));
  EXPECT_THAT(Match(d, kInternetGatewayDevice2), IsEmpty());
}

const Answer kAnswer{"upnp:rootdevice", std::string(kRoot) + "::upnp:rootdevice"};
constexpr char kLocation[] = "http://10.0.0.1:5000/rootDesc.xml";
constexpr char kServer[] = "Linux/6.1.0 UPnP/1.1 fabric-nat/0.3.0";

TEST(Builders, ServerString) {
  EXPECT_EQ(ServerString("6.1.0", "0.3.0"), kServer);
}

TEST(Builders, SearchResponseExactly) {
  EXPECT_THAT(SearchResponse(kAnswer, kLocation, kServer, 7, 3, 1800),
              IsOkAndHolds(std::string(
                  "HTTP/1.1 200 OK\r\n"
                  "CACHE-CONTROL: max-age=1800\r\n"
                  "EXT:\r\n"
                  "LOCATION: http://10.0.0.1:5000/rootDesc.xml\r\n"
                  "SERVER: Linux/6.1.0 UPnP/1.1 fabric-nat/0.3.0\r\n"
                  "ST: upnp:rootdevice\r\n"
                  "USN: uuid:12345678-90ab-cdef-1234-567890abcdef::upnp:rootdevice\r\n"
                  "BOOTID.UPNP.ORG: 7\r\n"
                  "CONFIGID.UPNP.ORG: 3\r\n"
                  "\r\n")));
}

TEST(Builders, NotifyExactly) {
  EXPECT_THAT(Notify(NotifyKind::kAlive, kAnswer, kLocation, kServer, 7, 3, 1800),
              IsOkAndHolds(std::string(
                  "NOTIFY * HTTP/1.1\r\n"
                  "HOST: 239.255.255.250:1900\r\n"
                  "CACHE-CONTROL: max-age=1800\r\n"
                  "LOCATION: http://10.0.0.1:5000/rootDesc.xml\r\n"
                  "NT: upnp:rootdevice\r\n"
                  "NTS: ssdp:alive\r\n"
                  "SERVER: Linux/6.1.0 UPnP/1.1 fabric-nat/0.3.0\r\n"
                  "USN: uuid:12345678-90ab-cdef-1234-567890abcdef::upnp:rootdevice\r\n"
                  "BOOTID.UPNP.ORG: 7\r\n"
                  "CONFIGID.UPNP.ORG: 3\r\n"
                  "\r\n")));
  EXPECT_THAT(Notify(NotifyKind::kByebye, kAnswer, "", "", 7, 3, 0, "239.255.255.250:1901"),
              IsOkAndHolds(std::string(
                  "NOTIFY * HTTP/1.1\r\n"
                  "HOST: 239.255.255.250:1901\r\n"
                  "NT: upnp:rootdevice\r\n"
                  "NTS: ssdp:byebye\r\n"
                  "USN: uuid:12345678-90ab-cdef-1234-567890abcdef::upnp:rootdevice\r\n"
                  "BOOTID.UPNP.ORG: 7\r\n"
                  "CONFIGID.UPNP.ORG: 3\r\n"
                  "\r\n")));
}

TEST(Builders, RejectLineBreaksAndBadNumbers) {
  auto invalid = [](const absl::StatusOr<std::string>& s, const std::string& message) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(message)));
  };
  Answer st_crlf{"upnp:rootdevice\r\nX-Evil: 1", kAnswer.usn};
  Answer usn_lf{kAnswer.st, kAnswer.usn + "\nX: 1"};
  invalid(SearchResponse(st_crlf, kLocation, kServer, 1, 1, 1800),
          "ST/NT holds a line break or another control character: "
          "`upnp:rootdevice\\x0d\\x0aX-Evil: 1`");
  invalid(SearchResponse(usn_lf, kLocation, kServer, 1, 1, 1800), "USN holds a line break");
  invalid(SearchResponse(kAnswer, "http://x/\r\n", kServer, 1, 1, 1800),
          "LOCATION holds a line break");
  invalid(SearchResponse(kAnswer, kLocation, "Linux\n", 1, 1, 1800), "SERVER holds a line break");
  invalid(SearchResponse(kAnswer, kLocation, std::string("a\0b", 3), 1, 1, 1800),
          "SERVER holds a line break or another control character: `a\\x00b`");
  invalid(SearchResponse(kAnswer, "", kServer, 1, 1, 1800), "LOCATION is empty");
  invalid(SearchResponse({"", "x"}, kLocation, kServer, 1, 1, 1800), "ST/NT is empty");
  invalid(SearchResponse(kAnswer, kLocation, kServer, 0x80000000u, 1, 1800),
          "BOOTID.UPNP.ORG 2147483648 is above 2147483647 (31 bits)");
  invalid(SearchResponse(kAnswer, kLocation, kServer, 1, 16777216, 1800),
          "CONFIGID.UPNP.ORG 16777216 is above 16777215");
  invalid(SearchResponse(kAnswer, kLocation, kServer, 1, 1, 0), "max-age must be at least 1");
  EXPECT_THAT(SearchResponse(kAnswer, kLocation, kServer, kMaxBootId, kMaxConfigId, 1), IsOk());
  EXPECT_THAT(SearchResponse(kAnswer, kLocation, "tab\tis fine", 1, 1, 1), IsOk());

  invalid(Notify(NotifyKind::kAlive, st_crlf, kLocation, kServer, 1, 1, 1800), "ST/NT holds");
  invalid(Notify(NotifyKind::kByebye, usn_lf, "", "", 1, 1, 1800), "USN holds");
  invalid(Notify(NotifyKind::kAlive, kAnswer, "http://x\r", kServer, 1, 1, 1800), "LOCATION");
  invalid(Notify(NotifyKind::kAlive, kAnswer, kLocation, kServer, 1, 1, 1800, "h\r\nX: y"),
          "HOST holds a line break");
  invalid(Notify(NotifyKind::kByebye, kAnswer, "", "", 1, 1, 1800, ""), "HOST is empty");
}

TEST(Builders, ParsedSearchTargetsAreAlwaysSafeToEcho) {
  Device d = *InternetGatewayDevice(kRoot);
  ASSERT_OK_AND_ASSIGN(
      SearchRequest r,
      ParseSearch(Search("MAN: \"ssdp:discover\"\r\nMX: 1\r\n"
                         "ST: urn:schemas-upnp-org:service:WANIPConnection:1\t\r\n")));
  std::vector<Answer> answers = Match(d, r.st);
  ASSERT_THAT(answers, SizeIs(1));
  EXPECT_THAT(SearchResponse(answers[0], kLocation, kServer, 1, 1, 1800), IsOk());
}

}  // namespace
}  // namespace fabric::agent::ssdp
