#include "agent/upstream/codec.h"

#include <cstring>

#include "agent/natpmp/codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fabric::agent::upstream {
namespace {

const Ipv4 kClient{192, 168, 77, 10};
const Ipv4 kExternal{203, 0, 113, 1};
const Nonce kNonce{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

// A PCP MAP reply as a server builds it: the agent's own server codec
// answering our request byte for byte.
std::vector<uint8_t> ServerPcpReply(const std::vector<uint8_t>& req, natpmp::PcpResult result,
                                    uint32_t lifetime, uint32_t epoch, uint16_t port) {
  std::array<uint8_t, 16> ext = natpmp::MapV4(kExternal);
  return natpmp::PcpResponse(req.data(), req.size(), result, lifetime, epoch, port, ext);
}

TEST(PcpRequest, MapEveryField) {
  std::vector<uint8_t> b = PcpMapRequest(kClient, kNonce, Proto::kUdp, 8080, 9090, Ipv4{}, 3600);
  ASSERT_EQ(b.size(), 60u);
  EXPECT_EQ(b[0], 2);
  EXPECT_EQ(b[1], 1);  // R = 0, MAP
  EXPECT_EQ(b[2], 0);
  EXPECT_EQ(b[3], 0);
  EXPECT_EQ(b[4] << 24 | b[5] << 16 | b[6] << 8 | b[7], 3600);
  const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 77, 10};
  EXPECT_EQ(std::memcmp(&b[8], mapped, 16), 0);
  EXPECT_EQ(std::memcmp(&b[24], kNonce.data(), 12), 0);
  EXPECT_EQ(b[36], 17);
  EXPECT_EQ(b[37] | b[38] | b[39], 0);
  EXPECT_EQ(b[40] << 8 | b[41], 8080);
  EXPECT_EQ(b[42] << 8 | b[43], 9090);
  const uint8_t any[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(&b[44], any, 16), 0);

  // The agent's server reads it as we meant it.
  natpmp::PcpRequest parsed;
  ASSERT_EQ(natpmp::ParsePcp(b.data(), b.size(), &parsed).kind, natpmp::PcpParseResult::kOk);
  EXPECT_EQ(parsed.opcode, 1);
  EXPECT_EQ(parsed.lifetime, 3600u);
  EXPECT_EQ(parsed.protocol, 17);
  EXPECT_EQ(parsed.internal_port, 8080);
  EXPECT_EQ(parsed.suggested_external_port, 9090);
  EXPECT_EQ(natpmp::UnmapV4(parsed.client_ip), (std::array<uint8_t, 4>{192, 168, 77, 10}));
}

TEST(PcpRequest, Announce) {
  std::vector<uint8_t> b = PcpAnnounceRequest(kClient);
  ASSERT_EQ(b.size(), 24u);
  EXPECT_EQ(b[0], 2);
  EXPECT_EQ(b[1], 0);
  EXPECT_EQ(b[4] | b[5] | b[6] | b[7], 0);
  EXPECT_EQ(b[20], 192);
  natpmp::PcpRequest parsed;
  EXPECT_EQ(natpmp::ParsePcp(b.data(), b.size(), &parsed).kind, natpmp::PcpParseResult::kOk);
}

TEST(PcpReply, MapSuccessEveryField) {
  std::vector<uint8_t> req = PcpMapRequest(kClient, kNonce, Proto::kTcp, 8080, 8080, {}, 600);
  std::vector<uint8_t> rep = ServerPcpReply(req, natpmp::PcpResult::kSuccess, 300, 77, 40000);
  PcpReply r;
  ASSERT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kOk);
  EXPECT_EQ(r.opcode, 1);
  EXPECT_EQ(r.result, 0);
  EXPECT_EQ(r.lifetime, 300u);
  EXPECT_EQ(r.epoch, 77u);
  EXPECT_EQ(r.nonce, kNonce);
  EXPECT_EQ(r.protocol, 6);
  EXPECT_EQ(r.internal_port, 8080);
  EXPECT_EQ(r.external_port, 40000);
  EXPECT_EQ(r.external_ip, kExternal);
}

TEST(PcpReply, ResultCodesComeThrough) {
  std::vector<uint8_t> req = PcpMapRequest(kClient, kNonce, Proto::kTcp, 8080, 8080, {}, 600);
  for (int code : {2, 7, 8, 9, 10, 11, 12}) {
    std::vector<uint8_t> rep =
        ServerPcpReply(req, static_cast<natpmp::PcpResult>(code), 30, 5, 0);
    PcpReply r;
    ASSERT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8080, &r),
              ReplyCheck::kOk)
        << code;
    EXPECT_EQ(r.result, code);
    EXPECT_EQ(r.lifetime, 30u);
  }
  EXPECT_EQ(PcpResultName(2), "NOT_AUTHORIZED");
  EXPECT_EQ(PcpResultName(8), "NO_RESOURCES");
  EXPECT_EQ(PcpResultName(99), "result 99");
}

TEST(PcpReply, HeaderOnlyErrors) {
  std::vector<uint8_t> req = PcpMapRequest(kClient, kNonce, Proto::kTcp, 8080, 8080, {}, 600);
  // UNSUPP_VERSION and MALFORMED_REQUEST come as a bare header.
  std::vector<uint8_t> rep = ServerPcpReply(req, natpmp::PcpResult::kMalformedRequest, 0, 5, 0);
  ASSERT_EQ(rep.size(), 24u);
  PcpReply r;
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kOk);
  EXPECT_EQ(r.result, 3);
  rep[3] = 1;
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kUnsupportedVersion);
  // Any other error must carry the opcode data that proves it is ours.
  rep[3] = 8;
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kMalformed);
}

TEST(PcpReply, NotOursRefused) {
  std::vector<uint8_t> req = PcpMapRequest(kClient, kNonce, Proto::kTcp, 8080, 8080, {}, 600);
  std::vector<uint8_t> rep = ServerPcpReply(req, natpmp::PcpResult::kSuccess, 300, 77, 40000);
  PcpReply r;
  Nonce other = kNonce;
  other[11] ^= 1;
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), other, Proto::kTcp, 8080, &r),
            ReplyCheck::kNotOurs);
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kUdp, 8080, &r),
            ReplyCheck::kNotOurs);
  EXPECT_EQ(ParsePcpMapReply(rep.data(), rep.size(), kNonce, Proto::kTcp, 8081, &r),
            ReplyCheck::kNotOurs);
  // Another opcode (an ANNOUNCE reply) is not the answer either.
  std::vector<uint8_t> wrong = rep;
  wrong[1] = 0x80;
  EXPECT_EQ(ParsePcpMapReply(wrong.data(), wrong.size(), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kNotOurs);
}

TEST(PcpReply, MalformedRefused) {
  std::vector<uint8_t> req = PcpMapRequest(kClient, kNonce, Proto::kTcp, 8080, 8080, {}, 600);
  std::vector<uint8_t> rep = ServerPcpReply(req, natpmp::PcpResult::kSuccess, 300, 77, 40000);
  PcpReply r;
  auto check = [&](std::vector<uint8_t> b) {
    return ParsePcpMapReply(b.data(), b.size(), kNonce, Proto::kTcp, 8080, &r);
  };
  std::vector<uint8_t> b = rep;
  b[1] = 0x01;  // R bit clear: our own request reflected
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b[0] = 3;  // another version, not an UNSUPP_VERSION
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b.resize(58);  // not a multiple of 4, short of the MAP data
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b.resize(56);
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b.resize(1104, 0);  // longer than PCP allows
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b[52] = 1;  // external address not IPv4-mapped
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;
  b[42] = b[43] = 0;  // a grant without a port
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;  // an option running past the end
  b.insert(b.end(), {1, 0, 0, 8});
  EXPECT_EQ(check(b), ReplyCheck::kMalformed);
  b = rep;  // a well-formed option is fine
  b.insert(b.end(), {3, 0, 0, 4, 0, 0, 0, 0});
  EXPECT_EQ(check(b), ReplyCheck::kOk);
  EXPECT_EQ(ParsePcpMapReply(nullptr, 0, kNonce, Proto::kTcp, 8080, &r), ReplyCheck::kMalformed);
}

TEST(PcpReply, NatPmpServerSaysUnsupportedVersion) {
  // A NAT-PMP-only server answers our version 2 with version 0, result 1.
  const uint8_t v0[] = {0, 0x81, 0, 1, 0, 0, 0, 9};
  PcpReply r;
  EXPECT_EQ(ParsePcpMapReply(v0, sizeof(v0), kNonce, Proto::kTcp, 8080, &r),
            ReplyCheck::kUnsupportedVersion);
  EXPECT_EQ(ParsePcpAnnounceReply(v0, sizeof(v0), &r), ReplyCheck::kUnsupportedVersion);
  std::vector<uint8_t> server = natpmp::PmpUnsupportedVersion(9);
  EXPECT_EQ(ParsePcpAnnounceReply(server.data(), server.size(), &r),
            ReplyCheck::kUnsupportedVersion);
}

TEST(PcpReply, Announce) {
  std::vector<uint8_t> req = PcpAnnounceRequest(kClient);
  std::vector<uint8_t> rep = ServerPcpReply(req, natpmp::PcpResult::kSuccess, 0, 1234, 0);
  PcpReply r;
  ASSERT_EQ(ParsePcpAnnounceReply(rep.data(), rep.size(), &r), ReplyCheck::kOk);
  EXPECT_EQ(r.epoch, 1234u);
  EXPECT_EQ(r.opcode, 0);
  std::vector<uint8_t> unsolicited = natpmp::PcpAnnounce(5);
  ASSERT_EQ(ParsePcpAnnounceReply(unsolicited.data(), unsolicited.size(), &r), ReplyCheck::kOk);
  EXPECT_EQ(r.epoch, 5u);
  rep[1] = 0x81;
  EXPECT_EQ(ParsePcpAnnounceReply(rep.data(), rep.size(), &r), ReplyCheck::kNotOurs);
}

TEST(PmpRequest, Bytes) {
  EXPECT_EQ(PmpAddressRequest(), (std::vector<uint8_t>{0, 0}));
  EXPECT_EQ(PmpMapRequest(Proto::kTcp, 8080, 9090, 3600),
            (std::vector<uint8_t>{0, 2, 0, 0, 0x1f, 0x90, 0x23, 0x82, 0, 0, 0x0e, 0x10}));
  EXPECT_EQ(PmpMapRequest(Proto::kUdp, 53, 0, 0)[1], 1);
  natpmp::PmpRequest parsed;
  std::vector<uint8_t> b = PmpMapRequest(Proto::kUdp, 5353, 6000, 7200);
  ASSERT_EQ(natpmp::ParsePmp(b.data(), b.size(), &parsed), natpmp::PmpParse::kOk);
  EXPECT_EQ(parsed.opcode, 1);
  EXPECT_EQ(parsed.internal_port, 5353);
  EXPECT_EQ(parsed.suggested_external_port, 6000);
  EXPECT_EQ(parsed.lifetime, 7200u);
}

TEST(PmpReply, AddressEveryField) {
  std::vector<uint8_t> rep =
      natpmp::PmpExternalAddressResponse(natpmp::PmpResult::kSuccess, 4242, {203, 0, 113, 1});
  PmpReply r;
  ASSERT_EQ(ParsePmpAddressReply(rep.data(), rep.size(), &r), ReplyCheck::kOk);
  EXPECT_EQ(r.opcode, 128);
  EXPECT_EQ(r.result, 0);
  EXPECT_EQ(r.epoch, 4242u);
  EXPECT_EQ(r.external_ip, kExternal);
  // Short, wrong opcode, wrong version.
  EXPECT_EQ(ParsePmpAddressReply(rep.data(), 11, &r), ReplyCheck::kMalformed);
  std::vector<uint8_t> b = rep;
  b[1] = 130;
  EXPECT_EQ(ParsePmpAddressReply(b.data(), b.size(), &r), ReplyCheck::kNotOurs);
  b = rep;
  b[1] = 0;  // a request
  EXPECT_EQ(ParsePmpAddressReply(b.data(), b.size(), &r), ReplyCheck::kMalformed);
  b = rep;
  b[0] = 1;
  EXPECT_EQ(ParsePmpAddressReply(b.data(), b.size(), &r), ReplyCheck::kMalformed);
  // An error may come as 8 bytes.
  const uint8_t err[] = {0, 128, 0, 3, 0, 0, 0, 1};
  ASSERT_EQ(ParsePmpAddressReply(err, sizeof(err), &r), ReplyCheck::kOk);
  EXPECT_EQ(r.result, 3);
  EXPECT_EQ(PmpResultName(3), "NETWORK_FAILURE");
}

TEST(PmpReply, MapEveryField) {
  std::vector<uint8_t> rep =
      natpmp::PmpMapResponse(2, natpmp::PmpResult::kSuccess, 99, 8080, 40000, 1800);
  PmpReply r;
  ASSERT_EQ(ParsePmpMapReply(rep.data(), rep.size(), Proto::kTcp, 8080, false, &r),
            ReplyCheck::kOk);
  EXPECT_EQ(r.opcode, 130);
  EXPECT_EQ(r.epoch, 99u);
  EXPECT_EQ(r.internal_port, 8080);
  EXPECT_EQ(r.external_port, 40000);
  EXPECT_EQ(r.lifetime, 1800u);
  // Another protocol's or port's reply is not ours; a short one is malformed.
  EXPECT_EQ(ParsePmpMapReply(rep.data(), rep.size(), Proto::kUdp, 8080, false, &r),
            ReplyCheck::kNotOurs);
  EXPECT_EQ(ParsePmpMapReply(rep.data(), rep.size(), Proto::kTcp, 8081, false, &r),
            ReplyCheck::kNotOurs);
  EXPECT_EQ(ParsePmpMapReply(rep.data(), 15, Proto::kTcp, 8080, false, &r),
            ReplyCheck::kMalformed);
  // A grant of port 0 is no grant; for a delete it is the answer.
  std::vector<uint8_t> del = natpmp::PmpMapResponse(2, natpmp::PmpResult::kSuccess, 99, 8080, 0, 0);
  EXPECT_EQ(ParsePmpMapReply(del.data(), del.size(), Proto::kTcp, 8080, false, &r),
            ReplyCheck::kMalformed);
  EXPECT_EQ(ParsePmpMapReply(del.data(), del.size(), Proto::kTcp, 8080, true, &r),
            ReplyCheck::kOk);
}

TEST(PmpReply, ResultCodesAndVersions) {
  for (int code : {2, 3, 4, 5}) {
    std::vector<uint8_t> rep =
        natpmp::PmpMapResponse(1, static_cast<natpmp::PmpResult>(code), 1, 53, 0, 0);
    PmpReply r;
    ASSERT_EQ(ParsePmpMapReply(rep.data(), rep.size(), Proto::kUdp, 53, false, &r),
              ReplyCheck::kOk);
    EXPECT_EQ(r.result, code);
  }
  PmpReply r;
  std::vector<uint8_t> v = natpmp::PmpUnsupportedVersion(7);
  EXPECT_EQ(ParsePmpMapReply(v.data(), v.size(), Proto::kTcp, 80, false, &r),
            ReplyCheck::kUnsupportedVersion);
  // A PCP-only server answers version 0 with PCP's UNSUPP_VERSION.
  std::vector<uint8_t> pcp(24, 0);
  pcp[0] = 2;
  pcp[1] = 0x80;
  pcp[3] = 1;
  EXPECT_EQ(ParsePmpAddressReply(pcp.data(), pcp.size(), &r), ReplyCheck::kUnsupportedVersion);
}

TEST(Epoch, RestartsDetected) {
  // In step: no reset.
  EXPECT_FALSE(EpochReset(1000, 50, 1005, 55));
  EXPECT_FALSE(EpochReset(1000, 50, 1000, 50.5));
  // Went back: a restart.
  EXPECT_TRUE(EpochReset(1000, 50, 3, 55));
  // Advanced far less than our clock: state lost meanwhile.
  EXPECT_TRUE(EpochReset(1000, 50, 1010, 150));
  // Advanced far more than our clock.
  EXPECT_TRUE(EpochReset(1000, 50, 2000, 60));
  // Small jitter is tolerated.
  EXPECT_FALSE(EpochReset(1000, 50, 1011, 60));
}

}  // namespace
}  // namespace fabric::agent::upstream
