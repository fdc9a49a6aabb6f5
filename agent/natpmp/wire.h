// The numbers NAT-PMP (RFC 6886) and PCP (RFC 6887) put on the wire, shared
// by both sides of them in this repository: the server (agent/natpmp/
// codec.h, for LAN hosts) and the client (agent/upstream/codec.h, towards
// the LAN's own gateway). Constants only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fabric::agent::natpmp {

inline constexpr uint16_t kServerPort = 5351;
inline constexpr uint16_t kClientPort = 5350;  // announcements go here

// RFC 6886 section 3.5 result codes.
enum class PmpResult : uint16_t {
  kSuccess = 0,
  kUnsupportedVersion = 1,
  kRefused = 2,  // "Not Authorized/Refused"
  kNetworkFailure = 3,
  kOutOfResources = 4,
  kUnsupportedOpcode = 5,
};

enum class PmpOpcode : uint8_t { kExternalAddress = 0, kMapUdp = 1, kMapTcp = 2 };

inline constexpr uint8_t kPcpVersion = 2;
inline constexpr size_t kPcpHeaderSize = 24;
inline constexpr size_t kPcpMaxSize = 1100;
inline constexpr size_t kPcpMapDataSize = 36;

// RFC 6887 section 7.4 result codes.
enum class PcpResult : uint8_t {
  kSuccess = 0,
  kUnsuppVersion = 1,
  kNotAuthorized = 2,
  kMalformedRequest = 3,
  kUnsuppOpcode = 4,
  kUnsuppOption = 5,
  kMalformedOption = 6,
  kNetworkFailure = 7,
  kNoResources = 8,
  kUnsuppProtocol = 9,
  kUserExQuota = 10,
  kCannotProvideExternal = 11,
  kAddressMismatch = 12,
  kExcessiveRemotePeers = 13,
};

enum class PcpOpcode : uint8_t { kAnnounce = 0, kMap = 1, kPeer = 2 };

}  // namespace fabric::agent::natpmp
