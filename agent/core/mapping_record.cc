#include "agent/core/mapping_record.h"

#include "agent/core/convert.h"

namespace fabric::agent {

namespace {
const std::string& Empty() {
  static const std::string* empty = new std::string();
  return *empty;
}
}  // namespace

MappingRecord::MappingRecord(const v1::PortMapping& proto, const nat::PortMapping& n)
    : nat(n), id_(proto.id()), port_count_(proto.port_count()) {
  owner_.kind_ = proto.owner().kind();
  owner_.id_ = proto.owner().id();
  if (proto.has_created_at()) {
    has_created_ = true;
    created_ns_ = absl::ToUnixNanos(FromTimestamp(proto.created_at()));
  }
  if (proto.has_expires_at()) {
    has_expires_ = true;
    expires_ns_ = absl::ToUnixNanos(FromTimestamp(proto.expires_at()));
  }
  const std::string& host = proto.host_ip();
  if (host.empty()) {
    host_text_ = HostText::kEmpty;
  } else if (host == "0.0.0.0") {
    host_text_ = HostText::kAny4;
  } else if (host == "::") {
    host_text_ = HostText::kAny6;
  } else if (nat.host_ip.has_value() && nat.host_ip->ToString() == host) {
    host_text_ = HostText::kCanonical;
  } else {
    host_text_ = HostText::kOther;
    MutableExtra().host_ip = host;
  }
  if (proto.target_ip() != nat.target_ip.ToString()) {
    target_canonical_ = false;
    MutableExtra().target_ip = proto.target_ip();
  }
  if (!proto.description().empty()) MutableExtra().description = proto.description();
  if (!proto.pcp_nonce().empty()) MutableExtra().pcp_nonce = proto.pcp_nonce();
}

MappingRecord::Extra& MappingRecord::MutableExtra() {
  auto fresh = extra_ ? std::make_shared<Extra>(*extra_) : std::make_shared<Extra>();
  Extra* out = fresh.get();
  extra_ = std::move(fresh);
  return *out;
}

v1::PortMapping MappingRecord::ToProto() const {
  v1::PortMapping p;
  ToProto(&p);
  return p;
}

void MappingRecord::ToProto(v1::PortMapping* out) const {
  v1::PortMapping& p = *out;
  p.Clear();
  p.set_id(id_);
  p.mutable_owner()->set_kind(owner_.kind_);
  p.mutable_owner()->set_id(owner_.id_);
  p.set_protocol(agent::ToProto(nat.protocol));
  switch (host_text_) {
    case HostText::kEmpty:
      break;
    case HostText::kAny4:
      p.set_host_ip("0.0.0.0");
      break;
    case HostText::kAny6:
      p.set_host_ip("::");
      break;
    case HostText::kCanonical:
      p.set_host_ip(nat.host_ip.has_value() ? nat.host_ip->ToString() : "");
      break;
    case HostText::kOther:
      p.set_host_ip(extra_->host_ip);
      break;
  }
  p.set_host_port(nat.host_port);
  p.set_port_count(port_count_);
  p.set_target_ip(target_canonical_ ? nat.target_ip.ToString() : extra_->target_ip);
  p.set_target_port(nat.target_port);
  if (has_expires_) *p.mutable_expires_at() = ToTimestamp(expires_at());
  if (has_created_) *p.mutable_created_at() = ToTimestamp(absl::FromUnixNanos(created_ns_));
  if (extra_) {
    if (!extra_->description.empty()) p.set_description(extra_->description);
    if (!extra_->pcp_nonce.empty()) p.set_pcp_nonce(extra_->pcp_nonce);
  }
}

void MappingRecord::set_expires_at(absl::Time t) {
  has_expires_ = true;
  expires_ns_ = absl::ToUnixNanos(t);
}

const std::string& MappingRecord::description() const {
  return extra_ ? extra_->description : Empty();
}

void MappingRecord::set_description(const std::string& d) {
  if (d == description()) return;
  MutableExtra().description = d;
}

const std::string& MappingRecord::pcp_nonce() const {
  return extra_ ? extra_->pcp_nonce : Empty();
}

std::string MappingHolder(const MappingRecord& m) {
  return MappingHolder(m.owner().kind(), m.owner().id(), m.id());
}

bool OwnerMatches(const MappingRecord& m, v1::OwnerKind kind, const std::string& owner_id) {
  return OwnerMatches(m.owner().kind(), m.owner().id(), kind, owner_id);
}

bool IsLease(const MappingRecord& m) { return IsLeaseKind(m.owner().kind()); }

}  // namespace fabric::agent
