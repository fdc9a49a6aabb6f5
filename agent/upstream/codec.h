// The client side of PCP (RFC 6887) and NAT-PMP (RFC 6886): building the
// requests fabric-nat sends to the LAN's gateway and checking every reply
// that comes back. The reply comes from the network, so each parser checks
// length, version, the R bit / response opcode, the result code, and that
// the reply answers this very request (PCP: opcode, nonce, protocol,
// internal port; NAT-PMP: opcode, internal port), and never reads past the
// buffer (fuzzed: codec_fuzz.cc).
//
// Used by clients.cc (the exchanges) and its tests. Pure functions over
// bytes; no I/O, no state; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/natpmp/wire.h"
#include "agent/upstream/types.h"

namespace fabric::agent::upstream {

inline constexpr uint16_t kGatewayPort = natpmp::kServerPort;

// --------------------------------------------------------------------------
// PCP

// The wire's numbers, as the server side has them (agent/natpmp/wire.h).
using natpmp::kPcpHeaderSize;
using natpmp::kPcpMaxSize;
using natpmp::kPcpVersion;
using natpmp::PcpResult;
inline constexpr size_t kPcpMapSize = kPcpHeaderSize + natpmp::kPcpMapDataSize;
inline constexpr uint8_t kPcpOpAnnounce = static_cast<uint8_t>(natpmp::PcpOpcode::kAnnounce);
inline constexpr uint8_t kPcpOpMap = static_cast<uint8_t>(natpmp::PcpOpcode::kMap);
// "NOT_AUTHORIZED" and so on; "result 42" for codes without a name.
std::string PcpResultName(uint8_t code);

// A MAP request: 60 bytes. `client` is our address as the gateway will see
// it (sent IPv4-mapped); `suggested_ip` the external address we would like
// (zeroes: any, sent as ::ffff:0.0.0.0 per RFC 6887 section 11.1).
std::vector<uint8_t> PcpMapRequest(const Ipv4& client, const Nonce& nonce, Proto proto,
                                   uint16_t internal_port, uint16_t suggested_port,
                                   const Ipv4& suggested_ip, uint32_t lifetime);
// An ANNOUNCE request: the 24-byte header, lifetime 0 (RFC 6887 section 14.1).
std::vector<uint8_t> PcpAnnounceRequest(const Ipv4& client);

// A checked PCP reply.
struct PcpReply {
  uint8_t opcode = 0;
  uint8_t result = 0;  // PcpResult
  uint32_t lifetime = 0;
  uint32_t epoch = 0;
  // MAP only.
  Nonce nonce{};
  uint8_t protocol = 0;
  uint16_t internal_port = 0;
  uint16_t external_port = 0;
  Ipv4 external_ip{};
};

// How a datagram relates to the request we sent.
enum class ReplyCheck {
  kOk,         // a well-formed reply to our request (its result may be an error)
  kNotOurs,    // well-formed, but for another request (nonce, port, opcode): keep waiting
  kMalformed,  // not a valid reply at all: keep waiting
  // A server that speaks the other protocol says "unsupported version"
  // (version 0 / 2 with result 1): give up on this protocol.
  kUnsupportedVersion,
};

// Checks `data` as the reply to a MAP request for (nonce, proto,
// internal_port). kOk with a success result also guarantees an IPv4-mapped
// external address and a non-zero external port. A header-only error
// reply (24 bytes) is taken as ours only for the results a server may send
// without opcode data (UNSUPP_VERSION, MALFORMED_REQUEST, UNSUPP_OPCODE).
ReplyCheck ParsePcpMapReply(const uint8_t* data, size_t len, const Nonce& nonce, Proto proto,
                            uint16_t internal_port, PcpReply* out);
// Checks `data` as the reply to an ANNOUNCE request.
ReplyCheck ParsePcpAnnounceReply(const uint8_t* data, size_t len, PcpReply* out);

// --------------------------------------------------------------------------
// NAT-PMP

using natpmp::PmpResult;
inline constexpr uint8_t kPmpOpAddress = static_cast<uint8_t>(natpmp::PmpOpcode::kExternalAddress);
inline constexpr uint8_t kPmpOpMapUdp = static_cast<uint8_t>(natpmp::PmpOpcode::kMapUdp);
inline constexpr uint8_t kPmpOpMapTcp = static_cast<uint8_t>(natpmp::PmpOpcode::kMapTcp);
std::string PmpResultName(uint16_t code);

// The 2-byte external address request.
std::vector<uint8_t> PmpAddressRequest();
// A 12-byte map request (lifetime 0 deletes).
std::vector<uint8_t> PmpMapRequest(Proto proto, uint16_t internal_port, uint16_t suggested_port,
                                   uint32_t lifetime);

struct PmpReply {
  uint8_t opcode = 0;   // 128 + the request's opcode
  uint16_t result = 0;  // PmpResult
  uint32_t epoch = 0;
  // Opcode 0.
  Ipv4 external_ip{};
  // Map.
  uint16_t internal_port = 0;
  uint16_t external_port = 0;
  uint32_t lifetime = 0;
};

// Checks `data` as the reply to the address request (12 bytes on success;
// an error may come as 8 bytes: version, opcode, result, epoch).
ReplyCheck ParsePmpAddressReply(const uint8_t* data, size_t len, PmpReply* out);
// Checks `data` as the reply to a map request for (proto, internal_port)
// (16 bytes; an error may come as 8). Success guarantees a non-zero
// external port unless the request was a delete (`deleting`).
ReplyCheck ParsePmpMapReply(const uint8_t* data, size_t len, Proto proto, uint16_t internal_port,
                            bool deleting, PmpReply* out);

// --------------------------------------------------------------------------
// Epochs (RFC 6887 section 8.5, which subsumes RFC 6886 section 3.6): has
// the gateway lost its state between two replies? `prev_*` the last reply's
// epoch and our clock then (seconds), `cur_*` the new one's.
bool EpochReset(uint32_t prev_epoch, double prev_client_s, uint32_t cur_epoch,
                double cur_client_s);

}  // namespace fabric::agent::upstream
