#include "agent/upstream/codec.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::agent::upstream {
namespace {

void Put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = v >> 8;
  b[at + 1] = v & 0xff;
}
void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = (v >> (24 - 8 * i)) & 0xff;
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
         static_cast<uint32_t>(p[2]) << 8 | p[3];
}
void PutMapped(std::vector<uint8_t>& b, size_t at, const Ipv4& a) {
  // ::ffff:a.b.c.d
  for (int i = 0; i < 10; ++i) b[at + i] = 0;
  b[at + 10] = b[at + 11] = 0xff;
  std::memcpy(&b[at + 12], a.data(), 4);
}
bool GetMapped(const uint8_t* p, Ipv4* out) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(p, kPrefix, 12) != 0) return false;
  std::memcpy(out->data(), p + 12, 4);
  return true;
}

// Options after the opcode data: each 4 bytes of header and its data padded
// to 4 bytes, all inside the datagram (RFC 6887 section 7.3).
bool OptionsFit(const uint8_t* data, size_t len, size_t at) {
  while (at < len) {
    if (len - at < 4) return false;
    size_t olen = Get16(data + at + 2);
    size_t padded = (olen + 3) & ~size_t{3};
    if (padded > len - at - 4) return false;
    if (data[at] == 0) return false;  // option code 0 is reserved
    at += 4 + padded;
  }
  return true;
}

// The common checks of a PCP reply (RFC 6887 sections 7.2 and 8.3).
ReplyCheck PcpHeader(const uint8_t* data, size_t len, uint8_t opcode, PcpReply* out) {
  if (data == nullptr || len < 4) return ReplyCheck::kMalformed;
  if (data[0] == 0) {
    // A NAT-PMP-only server: version 0, opcode 128 + ours (it read our
    // first bytes as a NAT-PMP request), result 1 = unsupported version.
    if (len >= 4 && (data[1] & 0x80) && Get16(data + 2) == 1) {
      return ReplyCheck::kUnsupportedVersion;
    }
    return ReplyCheck::kMalformed;
  }
  if (len < kPcpHeaderSize || len > kPcpMaxSize || len % 4 != 0) return ReplyCheck::kMalformed;
  if (!(data[1] & 0x80)) return ReplyCheck::kMalformed;  // a request, not a reply
  if (data[0] != kPcpVersion) {
    // Another PCP version would answer UNSUPP_VERSION with the version it speaks.
    return data[3] == static_cast<uint8_t>(PcpResult::kUnsuppVersion)
               ? ReplyCheck::kUnsupportedVersion
               : ReplyCheck::kMalformed;
  }
  if ((data[1] & 0x7f) != opcode) return ReplyCheck::kNotOurs;
  out->opcode = data[1] & 0x7f;
  out->result = data[3];
  out->lifetime = Get32(data + 4);
  out->epoch = Get32(data + 8);
  return ReplyCheck::kOk;
}

}  // namespace

std::string PcpResultName(uint8_t code) {
  static constexpr const char* kNames[] = {
      "SUCCESS",          "UNSUPP_VERSION",     "NOT_AUTHORIZED",       "MALFORMED_REQUEST",
      "UNSUPP_OPCODE",    "UNSUPP_OPTION",      "MALFORMED_OPTION",     "NETWORK_FAILURE",
      "NO_RESOURCES",     "UNSUPP_PROTOCOL",    "USER_EX_QUOTA",        "CANNOT_PROVIDE_EXTERNAL",
      "ADDRESS_MISMATCH", "EXCESSIVE_REMOTE_PEERS"};
  if (code < sizeof(kNames) / sizeof(kNames[0])) return kNames[code];
  return absl::StrCat("result ", code);
}

std::vector<uint8_t> PcpMapRequest(const Ipv4& client, const Nonce& nonce, Proto proto,
                                   uint16_t internal_port, uint16_t suggested_port,
                                   const Ipv4& suggested_ip, uint32_t lifetime) {
  std::vector<uint8_t> b(kPcpMapSize, 0);
  b[0] = kPcpVersion;
  b[1] = kPcpOpMap;
  Put32(b, 4, lifetime);
  PutMapped(b, 8, client);
  std::memcpy(&b[24], nonce.data(), nonce.size());
  b[36] = static_cast<uint8_t>(proto);
  Put16(b, 40, internal_port);
  Put16(b, 42, suggested_port);
  PutMapped(b, 44, suggested_ip);
  return b;
}

std::vector<uint8_t> PcpAnnounceRequest(const Ipv4& client) {
  std::vector<uint8_t> b(kPcpHeaderSize, 0);
  b[0] = kPcpVersion;
  b[1] = kPcpOpAnnounce;
  PutMapped(b, 8, client);
  return b;
}

ReplyCheck ParsePcpMapReply(const uint8_t* data, size_t len, const Nonce& nonce, Proto proto,
                            uint16_t internal_port, PcpReply* out) {
  PcpReply r;
  ReplyCheck c = PcpHeader(data, len, kPcpOpMap, &r);
  if (c != ReplyCheck::kOk) return c;
  if (len < kPcpMapSize) {
    // Header only: the errors a server sends before it reads opcode data.
    if (r.result == static_cast<uint8_t>(PcpResult::kUnsuppVersion)) {
      return ReplyCheck::kUnsupportedVersion;
    }
    if (r.result == static_cast<uint8_t>(PcpResult::kMalformedRequest) ||
        r.result == static_cast<uint8_t>(PcpResult::kUnsuppOpcode)) {
      *out = r;
      return ReplyCheck::kOk;
    }
    return ReplyCheck::kMalformed;
  }
  if (!OptionsFit(data, len, kPcpMapSize)) return ReplyCheck::kMalformed;
  std::memcpy(r.nonce.data(), data + 24, 12);
  r.protocol = data[36];
  r.internal_port = Get16(data + 40);
  r.external_port = Get16(data + 42);
  if (r.nonce != nonce || r.protocol != static_cast<uint8_t>(proto) ||
      r.internal_port != internal_port) {
    return ReplyCheck::kNotOurs;
  }
  if (r.result == static_cast<uint8_t>(PcpResult::kSuccess)) {
    if (!GetMapped(data + 44, &r.external_ip)) return ReplyCheck::kMalformed;
    // A delete (lifetime 0) may answer port 0; a grant may not.
    if (r.lifetime != 0 && r.external_port == 0) return ReplyCheck::kMalformed;
  } else {
    GetMapped(data + 44, &r.external_ip);  // informational only
  }
  *out = r;
  return ReplyCheck::kOk;
}

ReplyCheck ParsePcpAnnounceReply(const uint8_t* data, size_t len, PcpReply* out) {
  PcpReply r;
  ReplyCheck c = PcpHeader(data, len, kPcpOpAnnounce, &r);
  if (c != ReplyCheck::kOk) return c;
  if (r.result == static_cast<uint8_t>(PcpResult::kUnsuppVersion)) {
    return ReplyCheck::kUnsupportedVersion;
  }
  if (!OptionsFit(data, len, kPcpHeaderSize)) return ReplyCheck::kMalformed;
  *out = r;
  return ReplyCheck::kOk;
}

std::string PmpResultName(uint16_t code) {
  static constexpr const char* kNames[] = {"SUCCESS",         "UNSUPPORTED_VERSION",
                                           "NOT_AUTHORIZED",  "NETWORK_FAILURE",
                                           "OUT_OF_RESOURCES", "UNSUPPORTED_OPCODE"};
  if (code < sizeof(kNames) / sizeof(kNames[0])) return kNames[code];
  return absl::StrCat("result ", code);
}

std::vector<uint8_t> PmpAddressRequest() { return {0, kPmpOpAddress}; }

std::vector<uint8_t> PmpMapRequest(Proto proto, uint16_t internal_port, uint16_t suggested_port,
                                   uint32_t lifetime) {
  std::vector<uint8_t> b(12, 0);
  b[1] = proto == Proto::kUdp ? kPmpOpMapUdp : kPmpOpMapTcp;
  Put16(b, 4, internal_port);
  Put16(b, 6, suggested_port);
  Put32(b, 8, lifetime);
  return b;
}

namespace {

// The common checks of a NAT-PMP reply to opcode `op`; `full` its success
// length.
ReplyCheck PmpHeader(const uint8_t* data, size_t len, uint8_t op, size_t full, PmpReply* out) {
  if (data == nullptr || len < 4) return ReplyCheck::kMalformed;
  if (data[0] == kPcpVersion) {
    // A PCP-only server answers version 0 with UNSUPP_VERSION, version 2.
    return len >= kPcpHeaderSize && (data[1] & 0x80) &&
                   data[3] == static_cast<uint8_t>(PcpResult::kUnsuppVersion)
               ? ReplyCheck::kUnsupportedVersion
               : ReplyCheck::kMalformed;
  }
  if (data[0] != 0) return ReplyCheck::kMalformed;
  uint16_t result = Get16(data + 2);
  if (data[1] != 128 + op) {
    // RFC 6886 3.5 / erratum 3618: "unsupported version" may come as
    // opcode 128 whatever we asked.
    if (data[1] == 128 && result == static_cast<uint16_t>(PmpResult::kUnsupportedVersion)) {
      return ReplyCheck::kUnsupportedVersion;
    }
    return data[1] & 0x80 ? ReplyCheck::kNotOurs : ReplyCheck::kMalformed;
  }
  if (result == static_cast<uint16_t>(PmpResult::kUnsupportedVersion)) {
    return ReplyCheck::kUnsupportedVersion;
  }
  if (len < 8) return ReplyCheck::kMalformed;
  if (result == 0 && len < full) return ReplyCheck::kMalformed;
  out->opcode = data[1];
  out->result = result;
  out->epoch = Get32(data + 4);
  return ReplyCheck::kOk;
}

}  // namespace

ReplyCheck ParsePmpAddressReply(const uint8_t* data, size_t len, PmpReply* out) {
  PmpReply r;
  ReplyCheck c = PmpHeader(data, len, kPmpOpAddress, 12, &r);
  if (c != ReplyCheck::kOk) return c;
  if (len >= 12) std::memcpy(r.external_ip.data(), data + 8, 4);
  *out = r;
  return ReplyCheck::kOk;
}

ReplyCheck ParsePmpMapReply(const uint8_t* data, size_t len, Proto proto, uint16_t internal_port,
                            bool deleting, PmpReply* out) {
  PmpReply r;
  uint8_t op = proto == Proto::kUdp ? kPmpOpMapUdp : kPmpOpMapTcp;
  ReplyCheck c = PmpHeader(data, len, op, 16, &r);
  if (c != ReplyCheck::kOk) return c;
  if (len >= 16) {
    r.internal_port = Get16(data + 8);
    r.external_port = Get16(data + 10);
    r.lifetime = Get32(data + 12);
    if (r.internal_port != internal_port) return ReplyCheck::kNotOurs;
  } else {
    r.internal_port = internal_port;  // an 8-byte error reply names no port
  }
  if (r.result == 0 && !deleting && (r.external_port == 0 || r.lifetime == 0)) {
    return ReplyCheck::kMalformed;
  }
  *out = r;
  return ReplyCheck::kOk;
}

bool EpochReset(uint32_t prev_epoch, double prev_client_s, uint32_t cur_epoch,
                double cur_client_s) {
  // RFC 6887 section 8.5.
  if (static_cast<double>(cur_epoch) + 1 < static_cast<double>(prev_epoch)) return true;
  double client_delta = cur_client_s - prev_client_s;
  double server_delta = static_cast<double>(cur_epoch) - static_cast<double>(prev_epoch);
  if (client_delta + 2 < server_delta - server_delta / 16) return true;
  if (server_delta + 2 < client_delta - client_delta / 16) return true;
  return false;
}

}  // namespace fabric::agent::upstream
