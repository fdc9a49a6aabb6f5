#include "agent/natpmp/codec.h"

#include <cstring>

namespace fabric::agent::natpmp {

namespace {

void Put16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(v >> 8);
  out.push_back(v & 0xff);
}
void Put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back((v >> s) & 0xff);
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t Get32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
void Set32(uint8_t* p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = (v >> 16) & 0xff;
  p[2] = (v >> 8) & 0xff;
  p[3] = v & 0xff;
}

}  // namespace

// ---------------------------------------------------------------------------
// NAT-PMP

PmpParse ParsePmp(const uint8_t* data, size_t len, PmpRequest* out) {
  if (len < 2) return PmpParse::kIgnore;
  out->version = data[0];
  out->opcode = data[1];
  if (out->opcode >= 128) return PmpParse::kIgnore;  // a response: never answer
  if (out->version != 0) return PmpParse::kUnsupportedVersion;
  switch (out->opcode) {
    case static_cast<uint8_t>(PmpOpcode::kExternalAddress):
      return PmpParse::kOk;
    case static_cast<uint8_t>(PmpOpcode::kMapUdp):
    case static_cast<uint8_t>(PmpOpcode::kMapTcp):
      if (len < 12) return PmpParse::kTruncated;
      out->internal_port = Get16(data + 4);
      out->suggested_external_port = Get16(data + 6);
      out->lifetime = Get32(data + 8);
      return PmpParse::kOk;
    default:
      return PmpParse::kUnsupportedOpcode;
  }
}

std::vector<uint8_t> PmpExternalAddressResponse(PmpResult result, uint32_t epoch,
                                                const std::array<uint8_t, 4>& address) {
  std::vector<uint8_t> out = {0, 128};
  Put16(out, static_cast<uint16_t>(result));
  Put32(out, epoch);
  out.insert(out.end(), address.begin(), address.end());
  return out;
}

std::vector<uint8_t> PmpMapResponse(uint8_t request_opcode, PmpResult result,
                                    uint32_t epoch, uint16_t internal_port,
                                    uint16_t external_port, uint32_t lifetime) {
  std::vector<uint8_t> out = {0, static_cast<uint8_t>(request_opcode | 0x80)};
  Put16(out, static_cast<uint16_t>(result));
  Put32(out, epoch);
  Put16(out, internal_port);
  Put16(out, external_port);
  Put32(out, lifetime);
  return out;
}

std::vector<uint8_t> PmpUnsupportedVersion(uint32_t epoch) {
  std::vector<uint8_t> out = {0, 128};
  Put16(out, static_cast<uint16_t>(PmpResult::kUnsupportedVersion));
  Put32(out, epoch);
  return out;
}

std::vector<uint8_t> PmpUnsupportedOpcode(const uint8_t* request, size_t len) {
  // At least the 4-byte header, so the result code has a place; at most a
  // sane datagram.
  std::vector<uint8_t> out(request, request + std::min<size_t>(len, 1100));
  if (out.size() < 4) out.resize(4, 0);
  out[1] |= 0x80;
  out[2] = 0;
  out[3] = static_cast<uint8_t>(PmpResult::kUnsupportedOpcode);
  return out;
}

// ---------------------------------------------------------------------------
// PCP

bool IsShortLifetimeError(PcpResult r) {
  switch (r) {
    case PcpResult::kNetworkFailure:
    case PcpResult::kNoResources:
    case PcpResult::kUserExQuota:
    case PcpResult::kCannotProvideExternal:
    case PcpResult::kExcessiveRemotePeers:
      return true;
    default:
      return false;
  }
}

std::array<uint8_t, 16> MapV4(const std::array<uint8_t, 4>& v4) {
  std::array<uint8_t, 16> a{};
  a[10] = a[11] = 0xff;
  std::memcpy(a.data() + 12, v4.data(), 4);
  return a;
}

std::optional<std::array<uint8_t, 4>> UnmapV4(const std::array<uint8_t, 16>& a) {
  for (int i = 0; i < 10; ++i) {
    if (a[i] != 0) return std::nullopt;
  }
  if (a[10] != 0xff || a[11] != 0xff) return std::nullopt;
  std::array<uint8_t, 4> v4;
  std::memcpy(v4.data(), a.data() + 12, 4);
  return v4;
}

PcpParseResult ParsePcp(const uint8_t* data, size_t len, PcpRequest* out) {
  auto error = [](PcpResult r) { return PcpParseResult{PcpParseResult::kError, r}; };
  if (len < 2) return {PcpParseResult::kIgnore};
  out->version = data[0];
  if (data[1] & 0x80) return {PcpParseResult::kIgnore};  // a response
  out->opcode = data[1] & 0x7f;
  if (out->version != kPcpVersion) return error(PcpResult::kUnsuppVersion);
  if (len < kPcpHeaderSize || len > kPcpMaxSize || len % 4 != 0) {
    return error(PcpResult::kMalformedRequest);
  }
  out->lifetime = Get32(data + 4);
  std::memcpy(out->client_ip.data(), data + 8, 16);
  size_t pos = kPcpHeaderSize;
  switch (static_cast<PcpOpcode>(out->opcode)) {
    case PcpOpcode::kAnnounce:
      break;
    case PcpOpcode::kMap:
      if (len < pos + kPcpMapDataSize) return error(PcpResult::kMalformedRequest);
      std::memcpy(out->nonce.data(), data + pos, 12);
      out->protocol = data[pos + 12];
      out->internal_port = Get16(data + pos + 16);
      out->suggested_external_port = Get16(data + pos + 18);
      std::memcpy(out->suggested_external_ip.data(), data + pos + 20, 16);
      pos += kPcpMapDataSize;
      break;
    default:
      return error(PcpResult::kUnsuppOpcode);
  }
  // Options: code, reserved, length, data padded to 4 bytes.
  while (pos < len) {
    if (len - pos < 4) return error(PcpResult::kMalformedOption);
    uint8_t code = data[pos];
    uint16_t olen = Get16(data + pos + 2);
    size_t padded = (olen + 3u) & ~3u;
    if (padded > len - pos - 4) return error(PcpResult::kMalformedOption);
    switch (code) {
      case static_cast<uint8_t>(PcpOption::kThirdParty):
        if (olen != 16 || out->third_party) return error(PcpResult::kMalformedOption);
        out->third_party = true;
        break;
      case static_cast<uint8_t>(PcpOption::kPreferFailure):
        if (olen != 0 || out->prefer_failure ||
            out->opcode != static_cast<uint8_t>(PcpOpcode::kMap)) {
          return error(PcpResult::kMalformedOption);
        }
        out->prefer_failure = true;
        break;
      case static_cast<uint8_t>(PcpOption::kFilter):
        if (olen != 20) return error(PcpResult::kMalformedOption);
        out->filter = true;
        break;
      default:
        // 0-127: mandatory to process; unknown ones are refused. 128-255:
        // optional; unknown ones are skipped.
        if (code < 128) return error(PcpResult::kUnsuppOption);
    }
    pos += 4 + padded;
  }
  return {PcpParseResult::kOk};
}

std::vector<uint8_t> PcpResponse(const uint8_t* request, size_t len,
                                 PcpResult result, uint32_t lifetime,
                                 uint32_t epoch, uint16_t external_port,
                                 const std::array<uint8_t, 16>& external_ip) {
  bool header_only = result == PcpResult::kUnsuppVersion ||
                     result == PcpResult::kMalformedRequest || len < kPcpHeaderSize ||
                     len > kPcpMaxSize;
  size_t keep = header_only ? kPcpHeaderSize : (len & ~size_t{3});
  std::vector<uint8_t> out(keep, 0);
  if (!header_only) std::memcpy(out.data(), request, keep);
  out[0] = kPcpVersion;
  out[1] = static_cast<uint8_t>(0x80 | (len >= 2 ? request[1] & 0x7f : 0));
  out[2] = 0;
  out[3] = static_cast<uint8_t>(result);
  Set32(out.data() + 4, lifetime);
  Set32(out.data() + 8, epoch);
  std::memset(out.data() + 12, 0, 12);
  if (!header_only && (request[1] & 0x7f) == static_cast<uint8_t>(PcpOpcode::kMap) &&
      keep >= kPcpHeaderSize + kPcpMapDataSize) {
    uint8_t* map = out.data() + kPcpHeaderSize;
    map[18] = external_port >> 8;
    map[19] = external_port & 0xff;
    std::memcpy(map + 20, external_ip.data(), 16);
  }
  return out;
}

std::vector<uint8_t> PcpAnnounce(uint32_t epoch) {
  std::vector<uint8_t> out(kPcpHeaderSize, 0);
  out[0] = kPcpVersion;
  out[1] = 0x80 | static_cast<uint8_t>(PcpOpcode::kAnnounce);
  Set32(out.data() + 8, epoch);
  return out;
}

}  // namespace fabric::agent::natpmp
