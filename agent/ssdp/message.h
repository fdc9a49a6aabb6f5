// SSDP (UPnP Device Architecture 1.1, section 1) for the UPnP IGD
// front-end: parsing the M-SEARCH requests LAN hosts send, deciding what
// to answer (the device tree is data: Device), and building the search
// responses and NOTIFY messages. Pure functions over strings: no I/O, no
// clock, no state.
//
// ParseSearch is bounded (kMaxDatagram bytes, kMaxHeaderLines header
// lines) and fuzzed (ssdp_fuzz.cc). Its errors tell two cases apart so the
// server can ignore the common one silently:
//   kUnimplemented   a well-formed message that is not an M-SEARCH: another
//                    device's NOTIFY, another device's search response;
//   kInvalidArgument a broken M-SEARCH, or a datagram that is no HTTPU
//                    message at all; the message says what is wrong.
// Every string a builder inserts is checked: one holding CR, LF or another
// control character (HTAB excepted) is kInvalidArgument, so no field can
// inject a header. Header values ParseSearch returns never hold one.
//
// The UUIDs: the root device's comes from configuration; the embedded
// devices' are derived from it (DeriveUuid), so the description the HTTP
// side serves and the advertisements here agree as long as both take them
// from one Device (InternetGatewayDevice).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::agent::ssdp {

inline constexpr uint16_t kSsdpPort = 1900;
inline constexpr char kMulticastGroup[] = "239.255.255.250";
inline constexpr char kMulticastHost[] = "239.255.255.250:1900";
inline constexpr size_t kMaxDatagram = 2048;
inline constexpr int kMaxHeaderLines = 32;
inline constexpr int kMaxMx = 120;
// UDA 1.1: BOOTID.UPNP.ORG is a 31-bit integer, CONFIGID.UPNP.ORG at most
// 16777215.
inline constexpr uint32_t kMaxBootId = 0x7fffffff;
inline constexpr uint32_t kMaxConfigId = 16777215;

// The IGD:2 tree's types (the description writer uses the same).
inline constexpr char kInternetGatewayDevice2[] =
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2";
inline constexpr char kWanDevice2[] = "urn:schemas-upnp-org:device:WANDevice:2";
inline constexpr char kWanConnectionDevice2[] =
    "urn:schemas-upnp-org:device:WANConnectionDevice:2";
inline constexpr char kWanCommonInterfaceConfig1[] =
    "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1";
inline constexpr char kWanIpConnection2[] = "urn:schemas-upnp-org:service:WANIPConnection:2";
inline constexpr char kWanIpv6FirewallControl1[] =
    "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1";

// --------------------------------------------------------------------------
// M-SEARCH

struct SearchRequest {
  std::string st;          // search target, required
  std::optional<int> mx;   // 0..kMaxMx; absent is valid for a unicast search only
  std::string host;        // "" when absent
  std::string user_agent;  // "" when absent
};

// Parses one datagram sent to the SSDP port. Request line exactly
// "M-SEARCH * HTTP/1.1"; lines end in CRLF (a bare LF is accepted); header
// names are case-insensitive; MAN must be "ssdp:discover" with its quotes;
// ST is required; MX, when present, is 0..120 in digits only; MAN, ST, MX
// and HOST at most once each; other headers are ignored; the headers end at
// an empty line or at the end of the datagram.
absl::StatusOr<SearchRequest> ParseSearch(absl::string_view datagram);

// A search sent to the multicast group must carry MX (UDA 1.1 1.3.2);
// kInvalidArgument otherwise.
absl::Status CheckMulticastSearch(const SearchRequest& request);

// --------------------------------------------------------------------------
// The device model

struct DeviceEntry {
  std::string uuid;                   // "uuid:" + 36 lowercase characters
  std::string type;                   // "urn:<domain>:device:<name>:<version>"
  std::vector<std::string> services;  // "urn:<domain>:service:<name>:<version>"
};

struct Device {
  std::string uuid_root;             // == devices[0].uuid
  std::vector<DeviceEntry> devices;  // [0] is the root; embedded ones follow
};

// "uuid:" + the UUID in lowercase, from "uuid:<UUID>" or a bare UUID
// (8-4-4-4-12 hex digits, any case). kInvalidArgument otherwise.
absl::StatusOr<std::string> NormalizeUuid(absl::string_view uuid);

// The UUID of embedded device `index` (>= 1) under root `root_uuid`: the
// root's with its last 12 hex digits (the node field) replaced by the low
// 48 bits of a 64-bit hash (FNV-1a, then MurmurHash3's fmix64 finalizer)
// of "<normalized root>#<index>", e.g. "uuid:...-567890abcdef#1".
// Deterministic on every machine and build, never equal to the root's.
absl::StatusOr<std::string> DeriveUuid(absl::string_view root_uuid, int index);

struct IgdUuids {
  std::string root;                   // InternetGatewayDevice:2 (A)
  std::string wan_device;             // WANDevice:2 (B) = DeriveUuid(A, 1)
  std::string wan_connection_device;  // WANConnectionDevice:2 (C) = DeriveUuid(A, 2)
};
absl::StatusOr<IgdUuids> DeriveIgdUuids(absl::string_view root_uuid);

// The IGD:2 tree: root A (InternetGatewayDevice:2, no services), B
// (WANDevice:2: WANCommonInterfaceConfig:1), C (WANConnectionDevice:2:
// WANIPConnection:2, WANIPv6FirewallControl:1).
absl::StatusOr<Device> InternetGatewayDevice(absl::string_view root_uuid);

// At least one device; uuid_root is devices[0].uuid; every UUID normalized
// and distinct; every type a device URN and every service a service URN
// (version a positive integer) with no control characters.
absl::Status ValidateDevice(const Device& device);

// --------------------------------------------------------------------------
// What to answer

// One advertisement: ST of a search response, or NT of a NOTIFY; and USN.
struct Answer {
  std::string st;
  std::string usn;
  friend bool operator==(const Answer& a, const Answer& b) {
    return a.st == b.st && a.usn == b.usn;
  }
};

// Every advertisement (UDA 1.1 1.2.2: 3 + 2d + k): upnp:rootdevice once,
// then per device its uuid and its type, then each distinct service type
// of that device. For NOTIFY and for ssdp:all.
std::vector<Answer> Advertisements(const Device& device);

// The answers to a search for `st` (REQUIRES: ValidateDevice(device) ok):
//   ssdp:all          Advertisements(device)
//   upnp:rootdevice   one
//   uuid:<UUID>       one, for the device with that UUID (any case)
//   urn:<domain>:device:<name>:<v>, urn:<domain>:service:<name>:<v>
//                     one per device having that type (or a service of
//                     it) with the same domain and name and version >= v
//                     (v >= 1); ST and USN carry the requested version
//                     (UDA 1.1: a device answers for earlier versions)
// Anything else: none.
std::vector<Answer> Match(const Device& device, absl::string_view st);

// --------------------------------------------------------------------------
// Builders

// "Linux/<os_version> UPnP/1.1 fabric-nat/<product_version>".
std::string ServerString(absl::string_view os_version, absl::string_view product_version);

// HTTP/1.1 200 OK, CACHE-CONTROL: max-age=N, EXT:, LOCATION, SERVER, ST,
// USN, BOOTID.UPNP.ORG, CONFIGID.UPNP.ORG, blank line (no DATE: the output
// depends on its arguments only). kInvalidArgument for an empty or unsafe
// field, boot_id > kMaxBootId, config_id > kMaxConfigId or max_age 0.
absl::StatusOr<std::string> SearchResponse(const Answer& answer, absl::string_view location,
                                           absl::string_view server, uint32_t boot_id,
                                           uint32_t config_id, uint32_t max_age);

enum class NotifyKind { kAlive, kByebye };

// NOTIFY * HTTP/1.1 to `host` (the group and port). ssdp:alive: HOST,
// CACHE-CONTROL, LOCATION, NT, NTS, SERVER, USN, BOOTID.UPNP.ORG,
// CONFIGID.UPNP.ORG. ssdp:byebye: HOST, NT, NTS, USN, BOOTID.UPNP.ORG,
// CONFIGID.UPNP.ORG (UDA 1.1 1.2.3: no CACHE-CONTROL, LOCATION or SERVER;
// `location`, `server` and `max_age` are not used). Errors as
// SearchResponse.
absl::StatusOr<std::string> Notify(NotifyKind kind, const Answer& advertisement,
                                   absl::string_view location, absl::string_view server,
                                   uint32_t boot_id, uint32_t config_id, uint32_t max_age,
                                   absl::string_view host = kMulticastHost);

// Whether `value` may go into a header: no CR, LF or other control
// character (HTAB is allowed), no DEL.
bool SafeHeaderValue(absl::string_view value);

}  // namespace fabric::agent::ssdp
