#include "agent/core/convert.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/time_util.h"

namespace fabric::agent {

using nat::IpAddress;
using nat::PortMapping;

namespace {

bool IdChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

// At most 64 bytes of client input in a message.
std::string Quote(const std::string& s) {
  std::string cut = s.size() > 64 ? s.substr(0, 64) + "..." : s;
  return absl::StrCat("\"", absl::CEscape(cut), "\"");
}

}  // namespace

absl::Status ValidateInterfaceName(const std::string& name, const std::string& what) {
  if (name.empty() || name.size() > kMaxInterfaceName || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", Quote(name), " must be 1-15 bytes and not \".\" or \"..\""));
  }
  for (char c : name) {
    if (c == '/' || c == ':' || absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " ", Quote(name), " may not contain '/', ':', white space or control characters"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateAttachmentKey(const v1::AttachmentKey& key) {
  const std::string& cid = key.container_id();
  if (cid.empty() || cid.size() > kMaxIdLength ||
      !std::all_of(cid.begin(), cid.end(), IdChar)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "container id ", Quote(cid), " must be 1-", kMaxIdLength,
        " letters, digits, '.', '_' or '-' (CNI_CONTAINERID)"));
  }
  if (absl::Status s = ValidateInterfaceName(key.ifname(), "interface name (CNI_IFNAME)");
      !s.ok()) {
    return s;
  }
  const std::string& net = key.network_name();
  if (!net.empty() &&
      (net.size() > kMaxIdLength || !absl::ascii_isalnum(static_cast<unsigned char>(net[0])) ||
       !std::all_of(net.begin(), net.end(), IdChar))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "network name ", Quote(net), " must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most ",
        kMaxIdLength, " bytes)"));
  }
  return absl::OkStatus();
}

bool OwnerMatches(v1::OwnerKind kind_of, const std::string& id_of, v1::OwnerKind kind,
                  const std::string& owner_id) {
  if (kind != v1::OWNER_KIND_UNSPECIFIED && kind_of != kind) return false;
  return owner_id.empty() || id_of == owner_id;
}

bool OwnerMatches(const v1::PortMapping& m, v1::OwnerKind kind,
                  const std::string& owner_id) {
  return OwnerMatches(m.owner().kind(), m.owner().id(), kind, owner_id);
}

std::string AttachmentHolder(const v1::AttachmentKey& k) {
  return absl::StrCat("container ", ShortContainerId(k.container_id()), " (",
                      k.ifname(), ", network ", k.network_name(), ")");
}

std::string MappingHolder(v1::OwnerKind kind, const std::string& owner_id,
                          const std::string& mapping_id) {
  switch (kind) {
    case v1::OWNER_KIND_CNI: {
      // The owner id is "<container>/<ifname>/<network>"
      // (AttachmentOwnerId).
      std::vector<std::string> parts =
          absl::StrSplit(owner_id, absl::MaxSplits('/', 2));
      v1::AttachmentKey k;
      k.set_container_id(parts[0]);
      if (parts.size() > 1) k.set_ifname(parts[1]);
      if (parts.size() > 2) k.set_network_name(parts[2]);
      return AttachmentHolder(k);
    }
    case v1::OWNER_KIND_NATPMP:
      return absl::StrCat("NAT-PMP lease of ", owner_id);
    case v1::OWNER_KIND_PCP:
      return absl::StrCat("PCP lease of ", owner_id);
    case v1::OWNER_KIND_UPNP:
      return absl::StrCat("UPnP mapping of ", owner_id);
    case v1::OWNER_KIND_STATIC:
      return absl::StrCat("static forward ", owner_id);
    default:
      return absl::StrCat("mapping ", mapping_id, " of ", owner_id);
  }
}

std::string MappingHolder(const v1::PortMapping& m) {
  return MappingHolder(m.owner().kind(), m.owner().id(), m.id());
}

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(t));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(
      google::protobuf::util::TimeUtil::TimestampToNanoseconds(t));
}

bool IsLeaseKind(v1::OwnerKind kind) {
  return kind == v1::OWNER_KIND_NATPMP || kind == v1::OWNER_KIND_PCP ||
         kind == v1::OWNER_KIND_UPNP;
}

bool IsLease(const v1::PortMapping& m) { return IsLeaseKind(m.owner().kind()); }

std::string ShortContainerId(const std::string& id) {
  if (id.size() >= 32 &&
      id.find_first_not_of("0123456789abcdef") == std::string::npos) {
    return id.substr(0, 12);
  }
  return id;
}

v1::Protocol ToProto(nat::Protocol p) {
  switch (p) {
    case nat::Protocol::kTcp:
      return v1::PROTOCOL_TCP;
    case nat::Protocol::kUdp:
      return v1::PROTOCOL_UDP;
    case nat::Protocol::kSctp:
      return v1::PROTOCOL_SCTP;
  }
  return v1::PROTOCOL_UNSPECIFIED;
}

absl::StatusOr<nat::Protocol> FromProto(v1::Protocol p) {
  switch (p) {
    case v1::PROTOCOL_TCP:
      return nat::Protocol::kTcp;
    case v1::PROTOCOL_UDP:
      return nat::Protocol::kUdp;
    case v1::PROTOCOL_SCTP:
      return nat::Protocol::kSctp;
    default:
      return absl::InvalidArgumentError(
          "protocol must be PROTOCOL_TCP, PROTOCOL_UDP or PROTOCOL_SCTP");
  }
}

absl::StatusOr<std::optional<IpAddress>> ParseHostIp(const std::string& text) {
  if (text.empty()) return std::optional<IpAddress>();
  absl::StatusOr<IpAddress> ip = IpAddress::Parse(text);
  if (!ip.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("host IP: ", ip.status().message()));
  }
  if (ip->IsUnspecified()) return std::optional<IpAddress>();
  return std::optional<IpAddress>(*ip);
}

absl::StatusOr<PortMapping> ToNatMapping(const v1::PortMapping& m) {
  PortMapping out;
  absl::StatusOr<nat::Protocol> proto = FromProto(m.protocol());
  if (!proto.ok()) return proto.status();
  out.protocol = *proto;
  absl::StatusOr<std::optional<IpAddress>> host = ParseHostIp(m.host_ip());
  if (!host.ok()) return host.status();
  out.host_ip = *host;
  absl::StatusOr<IpAddress> target = IpAddress::Parse(m.target_ip());
  if (!target.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("target IP: ", target.status().message()));
  }
  out.target_ip = *target;
  if (m.host_port() > 65535 || m.target_port() > 65535 ||
      m.port_count() > 65535) {
    return absl::InvalidArgumentError("ports must be 1-65535");
  }
  out.host_port = static_cast<uint16_t>(m.host_port());
  out.target_port = static_cast<uint16_t>(m.target_port());
  out.port_count = m.port_count() == 0 ? 1 : static_cast<uint16_t>(m.port_count());
  if (out.host_ip.has_value() && out.host_ip->family() != out.target_ip.family()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host IP ", out.host_ip->ToString(), " and target IP ",
        out.target_ip.ToString(), " are of different families"));
  }
  // Host port 0 is allocated later; validate the rest with a placeholder.
  PortMapping check = out;
  if (check.host_port == 0) check.host_port = 1;
  if (absl::Status s = check.Validate(); !s.ok()) return s;
  return out;
}

}  // namespace fabric::agent
