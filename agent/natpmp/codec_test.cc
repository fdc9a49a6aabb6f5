#include "agent/natpmp/codec.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent::natpmp {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

std::vector<uint8_t> Bytes(std::initializer_list<int> v) {
  return std::vector<uint8_t>(v.begin(), v.end());
}

TEST(PmpTest, ParsesExternalAddressRequest) {
  PmpRequest r;
  auto b = Bytes({0, 0});
  EXPECT_EQ(ParsePmp(b.data(), b.size(), &r), PmpParse::kOk);
  EXPECT_EQ(r.opcode, 0);
}

TEST(PmpTest, ParsesMapRequestFields) {
  PmpRequest r;
  auto b = Bytes({0, 2, 0, 0, 0x1f, 0x90, 0x23, 0x28, 0, 0, 0x0e, 0x10});
  ASSERT_EQ(ParsePmp(b.data(), b.size(), &r), PmpParse::kOk);
  EXPECT_EQ(r.opcode, 2);
  EXPECT_EQ(r.internal_port, 8080);
  EXPECT_EQ(r.suggested_external_port, 9000);
  EXPECT_EQ(r.lifetime, 3600u);
  // Oversized requests are fine: the extra bytes are ignored.
  b.resize(40, 0xaa);
  EXPECT_EQ(ParsePmp(b.data(), b.size(), &r), PmpParse::kOk);
}

TEST(PmpTest, ClassifiesBadRequests) {
  PmpRequest r;
  auto one = Bytes({0});
  EXPECT_EQ(ParsePmp(one.data(), one.size(), &r), PmpParse::kIgnore);
  auto response = Bytes({0, 128, 0, 0});
  EXPECT_EQ(ParsePmp(response.data(), response.size(), &r), PmpParse::kIgnore);
  auto v1 = Bytes({1, 0});
  EXPECT_EQ(ParsePmp(v1.data(), v1.size(), &r), PmpParse::kUnsupportedVersion);
  auto op9 = Bytes({0, 9, 0, 0, 1, 2});
  EXPECT_EQ(ParsePmp(op9.data(), op9.size(), &r), PmpParse::kUnsupportedOpcode);
  auto short_map = Bytes({0, 1, 0, 0, 0, 80});
  EXPECT_EQ(ParsePmp(short_map.data(), short_map.size(), &r), PmpParse::kTruncated);
}

TEST(PmpTest, BuildsResponsesExactly) {
  EXPECT_THAT(PmpExternalAddressResponse(PmpResult::kSuccess, 0x01020304, {203, 0, 113, 7}),
              ElementsAre(0, 128, 0, 0, 1, 2, 3, 4, 203, 0, 113, 7));
  EXPECT_THAT(PmpExternalAddressResponse(PmpResult::kNetworkFailure, 5, {0, 0, 0, 0}),
              ElementsAre(0, 128, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0));
  EXPECT_THAT(PmpMapResponse(1, PmpResult::kSuccess, 7, 8080, 9000, 3600),
              ElementsAre(0, 129, 0, 0, 0, 0, 0, 7, 0x1f, 0x90, 0x23, 0x28, 0, 0, 0x0e, 0x10));
  EXPECT_THAT(PmpMapResponse(2, PmpResult::kOutOfResources, 7, 8080, 0, 0),
              ElementsAre(0, 130, 0, 4, 0, 0, 0, 7, 0x1f, 0x90, 0, 0, 0, 0, 0, 0));
  EXPECT_THAT(PmpMapResponse(2, PmpResult::kRefused, 1, 80, 0, 0)[3], 2);
  EXPECT_THAT(PmpUnsupportedVersion(9), ElementsAre(0, 128, 0, 1, 0, 0, 0, 9));
  auto req = Bytes({0, 9, 0, 0, 1, 2, 3});
  EXPECT_THAT(PmpUnsupportedOpcode(req.data(), req.size()),
              ElementsAre(0, 137, 0, 5, 1, 2, 3));
  auto tiny = Bytes({0, 9});
  EXPECT_THAT(PmpUnsupportedOpcode(tiny.data(), tiny.size()), ElementsAre(0, 137, 0, 5));
}

// A PCP MAP request for TCP internal port 8080, suggesting 9000.
std::vector<uint8_t> PcpMap(uint8_t version = 2, uint32_t lifetime = 3600) {
  std::vector<uint8_t> b(60, 0);
  b[0] = version;
  b[1] = 1;
  b[4] = lifetime >> 24;
  b[5] = (lifetime >> 16) & 0xff;
  b[6] = (lifetime >> 8) & 0xff;
  b[7] = lifetime & 0xff;
  std::array<uint8_t, 16> client = MapV4({192, 168, 77, 10});
  std::copy(client.begin(), client.end(), b.begin() + 8);
  for (int i = 0; i < 12; ++i) b[24 + i] = 0x10 + i;  // nonce
  b[36] = 6;
  b[40] = 0x1f;
  b[41] = 0x90;
  b[42] = 0x23;
  b[43] = 0x28;
  return b;
}

void AddOption(std::vector<uint8_t>& b, uint8_t code, std::vector<uint8_t> data) {
  b.push_back(code);
  b.push_back(0);
  b.push_back(data.size() >> 8);
  b.push_back(data.size() & 0xff);
  b.insert(b.end(), data.begin(), data.end());
  while (b.size() % 4) b.push_back(0);
}

TEST(PcpTest, ParsesMapRequest) {
  PcpRequest r;
  auto b = PcpMap();
  ASSERT_EQ(ParsePcp(b.data(), b.size(), &r).kind, PcpParseResult::kOk);
  EXPECT_EQ(r.opcode, 1);
  EXPECT_EQ(r.lifetime, 3600u);
  EXPECT_EQ(UnmapV4(r.client_ip), (std::array<uint8_t, 4>{192, 168, 77, 10}));
  EXPECT_EQ(r.nonce[0], 0x10);
  EXPECT_EQ(r.nonce[11], 0x1b);
  EXPECT_EQ(r.protocol, 6);
  EXPECT_EQ(r.internal_port, 8080);
  EXPECT_EQ(r.suggested_external_port, 9000);
  EXPECT_FALSE(r.prefer_failure);
}

TEST(PcpTest, ParsesOptions) {
  PcpRequest r;
  auto b = PcpMap();
  AddOption(b, 2, {});
  AddOption(b, 200, {1, 2, 3});  // optional, unknown: skipped
  ASSERT_EQ(ParsePcp(b.data(), b.size(), &r).kind, PcpParseResult::kOk);
  EXPECT_TRUE(r.prefer_failure);
  auto t = PcpMap();
  AddOption(t, 1, std::vector<uint8_t>(16, 0));
  ASSERT_EQ(ParsePcp(t.data(), t.size(), &r).kind, PcpParseResult::kOk);
  EXPECT_TRUE(r.third_party);
}

PcpResult ErrorOf(const std::vector<uint8_t>& b) {
  PcpRequest r;
  PcpParseResult p = ParsePcp(b.data(), b.size(), &r);
  EXPECT_EQ(p.kind, PcpParseResult::kError);
  return p.error;
}

TEST(PcpTest, EveryParseErrorHasItsResultCode) {
  EXPECT_EQ(ErrorOf(PcpMap(1)), PcpResult::kUnsuppVersion);
  EXPECT_EQ(ErrorOf(PcpMap(3)), PcpResult::kUnsuppVersion);
  auto short_header = PcpMap();
  short_header.resize(20);
  EXPECT_EQ(ErrorOf(short_header), PcpResult::kMalformedRequest);
  auto odd = PcpMap();
  odd.push_back(0);
  EXPECT_EQ(ErrorOf(odd), PcpResult::kMalformedRequest);
  auto huge = PcpMap();
  huge.resize(1104, 0);
  EXPECT_EQ(ErrorOf(huge), PcpResult::kMalformedRequest);
  auto short_map = PcpMap();
  short_map.resize(48);
  EXPECT_EQ(ErrorOf(short_map), PcpResult::kMalformedRequest);
  auto peer = PcpMap();
  peer[1] = 2;
  EXPECT_EQ(ErrorOf(peer), PcpResult::kUnsuppOpcode);
  auto unknown = PcpMap();
  AddOption(unknown, 99, {});
  EXPECT_EQ(ErrorOf(unknown), PcpResult::kUnsuppOption);
  auto truncated_option = PcpMap();
  AddOption(truncated_option, 1, std::vector<uint8_t>(16, 0));
  truncated_option.resize(truncated_option.size() - 8);
  EXPECT_EQ(ErrorOf(truncated_option), PcpResult::kMalformedOption);
  auto twice = PcpMap();
  AddOption(twice, 2, {});
  AddOption(twice, 2, {});
  EXPECT_EQ(ErrorOf(twice), PcpResult::kMalformedOption);
  auto bad_length = PcpMap();
  AddOption(bad_length, 2, {1, 2, 3, 4});
  EXPECT_EQ(ErrorOf(bad_length), PcpResult::kMalformedOption);
}

TEST(PcpTest, ResponsesAndAnnouncementsAreIgnored) {
  PcpRequest r;
  auto resp = PcpMap();
  resp[1] |= 0x80;
  EXPECT_EQ(ParsePcp(resp.data(), resp.size(), &r).kind, PcpParseResult::kIgnore);
  uint8_t one = 2;
  EXPECT_EQ(ParsePcp(&one, 1, &r).kind, PcpParseResult::kIgnore);
}

TEST(PcpTest, BuildsMapResponse) {
  auto req = PcpMap();
  AddOption(req, 2, {});
  std::array<uint8_t, 16> ext = MapV4({203, 0, 113, 7});
  std::vector<uint8_t> out = PcpResponse(req.data(), req.size(), PcpResult::kSuccess,
                                         3600, 42, 9001, ext);
  ASSERT_EQ(out.size(), req.size());
  EXPECT_EQ(out[0], 2);
  EXPECT_EQ(out[1], 0x81);
  EXPECT_EQ(out[3], 0);
  EXPECT_THAT(std::vector<uint8_t>(out.begin() + 4, out.begin() + 12),
              ElementsAre(0, 0, 0x0e, 0x10, 0, 0, 0, 42));
  for (int i = 12; i < 24; ++i) EXPECT_EQ(out[i], 0) << i;  // reserved
  EXPECT_THAT(std::vector<uint8_t>(out.begin() + 24, out.begin() + 36),
              ElementsAreArray(req.begin() + 24, req.begin() + 36));  // nonce echoed
  EXPECT_EQ(out[24 + 18] << 8 | out[24 + 19], 9001);
  EXPECT_EQ(out[24 + 32], 203);
  EXPECT_EQ(out[60], 2);  // PREFER_FAILURE echoed
}

TEST(PcpTest, VersionAndMalformedErrorsAreHeaderOnly) {
  auto req = PcpMap(1);
  std::vector<uint8_t> out = PcpResponse(req.data(), req.size(), PcpResult::kUnsuppVersion,
                                         1800, 5, 0, {});
  ASSERT_EQ(out.size(), 24u);
  EXPECT_EQ(out[0], 2);  // the version we speak
  EXPECT_EQ(out[3], 1);
  EXPECT_EQ(out[7], 0x08);  // 1800 = 0x0708
}

TEST(PcpTest, AnnounceAndLifetimeClasses) {
  std::vector<uint8_t> a = PcpAnnounce(77);
  ASSERT_EQ(a.size(), 24u);
  EXPECT_EQ(a[1], 0x80);
  EXPECT_EQ(a[11], 77);
  EXPECT_TRUE(IsShortLifetimeError(PcpResult::kNoResources));
  EXPECT_TRUE(IsShortLifetimeError(PcpResult::kUserExQuota));
  EXPECT_TRUE(IsShortLifetimeError(PcpResult::kNetworkFailure));
  EXPECT_FALSE(IsShortLifetimeError(PcpResult::kNotAuthorized));
  EXPECT_FALSE(IsShortLifetimeError(PcpResult::kUnsuppVersion));
  EXPECT_FALSE(IsShortLifetimeError(PcpResult::kAddressMismatch));
}

}  // namespace
}  // namespace fabric::agent::natpmp
