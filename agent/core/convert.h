// Conversions between the v1 API's messages and the NAT value types, and the
// names messages give to owners ("container 3f2a9b1c5d6e (eth0, network
// podnet)"). Pure functions, used by the writer, the owner units and the
// front-ends.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "nat/types.h"

namespace fabric::agent {

namespace v1 = ::fabric::nat::v1;

// Longest owner id, container id or network name accepted.
inline constexpr size_t kMaxIdLength = 256;
inline constexpr size_t kMaxDescriptionLength = 1024;
inline constexpr size_t kMaxNetnsPathLength = 4096;
// IFNAMSIZ - 1.
inline constexpr size_t kMaxInterfaceName = 15;

// CNI's rules for the ids of an attachment (container id: letters, digits,
// '.', '_', '-'; interface: 1-15 bytes, no '/', ':' or white space, not "."
// or ".."; network name: [a-zA-Z0-9][a-zA-Z0-9_.-]*), which also keep the
// '/' separators of AttachmentOwnerId unambiguous: no two keys share an
// owner id. kInvalidArgument naming the field.
absl::Status ValidateAttachmentKey(const v1::AttachmentKey& key);
// An interface name as the kernel takes it (see above). `what` names the
// field in the message.
absl::Status ValidateInterfaceName(const std::string& name, const std::string& what);

// Parses and checks a v1 mapping request into the NAT value type (host port
// 0 is allowed: allocated later). kInvalidArgument naming the field.
absl::StatusOr<nat::PortMapping> ToNatMapping(const v1::PortMapping& m);
v1::Protocol ToProto(nat::Protocol p);
absl::StatusOr<nat::Protocol> FromProto(v1::Protocol p);
// "" / 0.0.0.0 / :: -> nullopt (any address). kInvalidArgument otherwise.
absl::StatusOr<std::optional<nat::IpAddress>> ParseHostIp(const std::string& text);

// A container id as messages show it: runtimes' 64-hex ids shortened to 12
// characters (as docker and crictl show them), anything else whole.
std::string ShortContainerId(const std::string& id);
// "container 3f2a9b1c5d6e (eth0, network podnet)".
std::string AttachmentHolder(const v1::AttachmentKey& k);
// Who holds a mapping's ports, as conflict messages name it.
std::string MappingHolder(v1::OwnerKind kind, const std::string& owner_id,
                          const std::string& mapping_id);
std::string MappingHolder(const v1::PortMapping& m);

// Filter of ListMappings/WatchMappings: kind UNSPECIFIED and an empty id
// match everything.
bool OwnerMatches(v1::OwnerKind kind_of, const std::string& id_of, v1::OwnerKind kind,
                  const std::string& owner_id);
bool OwnerMatches(const v1::PortMapping& m, v1::OwnerKind kind,
                  const std::string& owner_id);
// A lease: NAT-PMP, PCP or UPnP.
bool IsLeaseKind(v1::OwnerKind kind);
bool IsLease(const v1::PortMapping& m);

google::protobuf::Timestamp ToTimestamp(absl::Time t);
absl::Time FromTimestamp(const google::protobuf::Timestamp& t);

}  // namespace fabric::agent
