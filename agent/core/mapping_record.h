// MappingRecord: one mapping as the state holds it, compact. At 100k
// mappings a record holding its v1::PortMapping cost about 500 bytes (the
// message, its six string objects, the owner and two timestamps each a
// heap block); this one is about 180, with the text the client gave kept
// only where it differs from the canonical form. ToProto() gives back the
// message as it was stored.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "fabric/nat/v1/nat.pb.h"
#include "nat/types.h"

namespace fabric::agent {

namespace v1 = ::fabric::nat::v1;

class MappingRecord {
 public:
  // Who holds the mapping (the v1 Owner, with the same accessors).
  class Owner {
   public:
    v1::OwnerKind kind() const { return kind_; }
    const std::string& id() const { return id_; }

   private:
    friend class MappingRecord;
    v1::OwnerKind kind_ = v1::OWNER_KIND_UNSPECIFIED;
    std::string id_;
  };

  MappingRecord() = default;
  // `nat` is `proto` parsed (ToNatMapping) and completed (ports
  // allocated): the ports and addresses come from it.
  MappingRecord(const v1::PortMapping& proto, const nat::PortMapping& nat);

  // The mapping as stored and as the API shows it.
  v1::PortMapping ToProto() const;
  // The same into `out` (cleared first): a listing fills its reply's
  // messages in place.
  void ToProto(v1::PortMapping* out) const;

  // The kernel form. Its addresses and ports are the record's.
  nat::PortMapping nat;

  const std::string& id() const { return id_; }
  const Owner& owner() const { return owner_; }
  // Canonical text ("10.0.0.5", "fd00::5").
  std::string target_ip() const { return nat.target_ip.ToString(); }
  bool has_expires_at() const { return has_expires_; }
  // Only with has_expires_at().
  absl::Time expires_at() const { return absl::FromUnixNanos(expires_ns_); }
  void set_expires_at(absl::Time t);
  void clear_expires_at() { has_expires_ = false; }
  const std::string& description() const;
  void set_description(const std::string& d);
  const std::string& pcp_nonce() const;

 private:
  // How host_ip was written: the common forms without storing text.
  enum class HostText : uint8_t { kEmpty, kAny4, kAny6, kCanonical, kOther };
  // What few records carry, shared between copies (never written once
  // shared: a setter makes a new one).
  struct Extra {
    std::string description;
    std::string pcp_nonce;
    std::string host_ip;    // with HostText::kOther
    std::string target_ip;  // with !target_canonical_
  };
  Extra& MutableExtra();

  std::string id_;
  Owner owner_;
  int64_t created_ns_ = 0;
  int64_t expires_ns_ = 0;
  uint32_t port_count_ = 0;  // as given: 0 and 1 both mean one port
  bool has_created_ = false;
  bool has_expires_ = false;
  bool target_canonical_ = true;
  HostText host_text_ = HostText::kEmpty;
  std::shared_ptr<const Extra> extra_;
};

// Overloads of convert.h's helpers for a record.
std::string MappingHolder(const MappingRecord& m);
bool OwnerMatches(const MappingRecord& m, v1::OwnerKind kind, const std::string& owner_id);
bool IsLease(const MappingRecord& m);

}  // namespace fabric::agent
