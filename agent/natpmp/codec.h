// NAT-PMP (RFC 6886) and PCP (RFC 6887) wire formats: parsing requests and
// building responses. Pure functions over bytes; no I/O, no state. Both
// protocols share UDP port 5351 and are told apart by the first byte
// (version 0: NAT-PMP, 2: PCP).
//
// Parsers never read past the buffer and reject what does not fit; they are
// fuzzed (codec_fuzz.cc).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/natpmp/wire.h"

namespace fabric::agent::natpmp {

// --------------------------------------------------------------------------
// NAT-PMP

struct PmpRequest {
  uint8_t version = 0;
  uint8_t opcode = 0;
  // Map requests only.
  uint16_t internal_port = 0;
  uint16_t suggested_external_port = 0;
  uint32_t lifetime = 0;
};

enum class PmpParse {
  kOk,
  kIgnore,              // a response (opcode >= 128) or too short to answer
  kUnsupportedVersion,  // answer with the version error
  kUnsupportedOpcode,   // answer by echoing the request with result 5
  kTruncated,           // a known opcode, but too short: refused
};

// Parses a datagram sent to the NAT-PMP port with version 0 (or another
// non-PCP version: kUnsupportedVersion).
PmpParse ParsePmp(const uint8_t* data, size_t len, PmpRequest* out);

// External address response (opcode 128): 12 bytes.
std::vector<uint8_t> PmpExternalAddressResponse(PmpResult result, uint32_t epoch,
                                                const std::array<uint8_t, 4>& address);
// Map response (opcode 129 or 130): 16 bytes.
std::vector<uint8_t> PmpMapResponse(uint8_t request_opcode, PmpResult result,
                                    uint32_t epoch, uint16_t internal_port,
                                    uint16_t external_port, uint32_t lifetime);
// "Unsupported version": version 0, opcode 128, result 1, epoch (8 bytes;
// RFC 6886 erratum 3618).
std::vector<uint8_t> PmpUnsupportedVersion(uint32_t epoch);
// "Unsupported opcode": the request echoed with the top bit of the opcode
// set and result 5 (RFC 6886 section 3.5).
std::vector<uint8_t> PmpUnsupportedOpcode(const uint8_t* request, size_t len);

// --------------------------------------------------------------------------
// PCP

// Short-lifetime errors are transient (retry soon); the rest persist until
// something is reconfigured (RFC 6887 section 7.4).
bool IsShortLifetimeError(PcpResult r);

enum class PcpOption : uint8_t { kThirdParty = 1, kPreferFailure = 2, kFilter = 3 };

struct PcpRequest {
  uint8_t version = 0;
  uint8_t opcode = 0;
  uint32_t lifetime = 0;
  std::array<uint8_t, 16> client_ip{};  // IPv4-mapped for IPv4 clients
  // MAP only.
  std::array<uint8_t, 12> nonce{};
  uint8_t protocol = 0;
  uint16_t internal_port = 0;
  uint16_t suggested_external_port = 0;
  std::array<uint8_t, 16> suggested_external_ip{};
  // Options.
  bool third_party = false;
  bool prefer_failure = false;
  bool filter = false;
};

struct PcpParseResult {
  enum Kind { kOk, kIgnore, kError } kind = kOk;
  PcpResult error = PcpResult::kSuccess;  // for kError
};

// Parses a PCP request. kIgnore: drop silently (a response, or too short to
// answer). kError: answer with `error` (the request's fields parsed so far
// are in `out` for the reply).
PcpParseResult ParsePcp(const uint8_t* data, size_t len, PcpRequest* out);

// A response to `request` (its bytes, for echoing opcode data and options):
// the common header with R set, `result`, `lifetime` and `epoch`, then for
// MAP the opcode data with the assigned port and address, then the
// request's options. For UNSUPP_VERSION and MALFORMED_REQUEST only the
// header is sent.
std::vector<uint8_t> PcpResponse(const uint8_t* request, size_t len,
                                 PcpResult result, uint32_t lifetime,
                                 uint32_t epoch, uint16_t external_port,
                                 const std::array<uint8_t, 16>& external_ip);

// An unsolicited ANNOUNCE response (sent after a restart or an epoch reset).
std::vector<uint8_t> PcpAnnounce(uint32_t epoch);

// IPv4 address as the 16-byte IPv4-mapped form (::ffff:a.b.c.d), and back.
std::array<uint8_t, 16> MapV4(const std::array<uint8_t, 4>& v4);
std::optional<std::array<uint8_t, 4>> UnmapV4(const std::array<uint8_t, 16>& a);

}  // namespace fabric::agent::natpmp
