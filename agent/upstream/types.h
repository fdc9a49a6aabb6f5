// Value types of the upstream-mapping client (agent/upstream): what a caller
// asks the LAN's own gateway for and what it answers, whichever protocol
// (PCP, NAT-PMP, UPnP IGD) carried it. Used by every unit in
// agent/upstream, by fabricctl's `upstream` commands (agent/ctl) and by the
// agent. Plain values; no I/O, no state; safe to copy between threads.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::agent::upstream {

using Ipv4 = std::array<uint8_t, 4>;
using Nonce = std::array<uint8_t, 12>;

// The transport protocol of a mapping.
enum class Proto : uint8_t { kTcp = 6, kUdp = 17 };

// The protocol spoken to the gateway. kAuto: PCP, then NAT-PMP, then UPnP,
// remembering the first that answers.
enum class Method { kAuto, kPcp, kNatPmp, kUpnp };

// "tcp"/"udp"; "pcp"/"natpmp"/"upnp"/"auto".
const char* ProtoName(Proto p);
const char* MethodName(Method m);
// Parses the names above (lower case); kInvalidArgument naming the choices.
absl::StatusOr<Proto> ParseProto(absl::string_view s);
absl::StatusOr<Method> ParseMethod(absl::string_view s);

// "a.b.c.d"; and back (kInvalidArgument for anything but dotted quad).
std::string Ipv4String(const Ipv4& a);
absl::StatusOr<Ipv4> ParseIpv4(absl::string_view s);

// One mapping asked of the gateway. A mapping is named by (proto,
// internal_port) on this host; the gateway maps it to an external port of
// its choosing, ideally `external_port`.
struct MapRequest {
  Proto proto = Proto::kTcp;
  uint16_t internal_port = 0;
  uint16_t external_port = 0;  // suggestion; 0: the same as internal_port
  uint32_t lifetime = 3600;    // seconds asked for (the gateway may cut it)
  // PCP: must repeat for renewals and deletes. Zeroes: StableNonce(), so a
  // later process (fabricctl upstream unmap, a restarted agent) repeats it.
  Nonce nonce{};
  std::string description = "fabric-nat";  // UPnP's NewPortMappingDescription
};

// What the gateway granted.
struct MapResult {
  Method method = Method::kAuto;  // the protocol that carried it
  Proto proto = Proto::kTcp;
  Ipv4 internal_ip{};  // this host's address as the gateway sees it
  uint16_t internal_port = 0;
  Ipv4 external_ip{};
  uint16_t external_port = 0;
  uint32_t lifetime = 0;  // seconds granted; 0 with UPnP: permanent
  std::optional<uint32_t> epoch;  // PCP/NAT-PMP: the gateway's epoch
};

// The gateway as last seen.
struct GatewayInfo {
  Method method = Method::kAuto;
  Ipv4 gateway{};   // its LAN address
  Ipv4 local_ip{};  // ours, as it sees us
  std::optional<Ipv4> external_ip;
  std::optional<uint32_t> epoch;  // PCP/NAT-PMP seconds since its start
  // Anything worth saying: "UPnP IGD says not connected (external address
  // 203.0.113.1 is in a reserved range): accepted", the UPnP control URL.
  std::string note;
};

}  // namespace fabric::agent::upstream
