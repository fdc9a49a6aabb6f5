#include "agent/owners/api.h"

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"
#include "agent/owners/mappings.h"

namespace fabric::agent::owners {

absl::StatusOr<v1::PortMapping> CreateMapping(Txn& txn, const v1::PortMapping& request,
                                              nat::ConntrackCleaner* ct) {
  if (request.owner().kind() != v1::OWNER_KIND_API) {
    return absl::InvalidArgumentError(
        "CreateMapping takes owner kind API; CNI mappings come with attachments, "
        "NAT-PMP/PCP/UPnP leases from their front-ends and static forwards from "
        "--forwards_file");
  }
  if (request.owner().id().empty() || request.owner().id().size() > kMaxIdLength ||
      request.description().size() > kMaxDescriptionLength) {
    return absl::InvalidArgumentError(absl::StrCat("owner id must be 1-", kMaxIdLength,
                                                   " bytes and description at most ",
                                                   kMaxDescriptionLength));
  }
  if (request.has_expires_at()) {
    // A time the agent can represent, compute with and print: in the
    // future, at most ten years ahead.
    const google::protobuf::Timestamp& t = request.expires_at();
    absl::Time now = txn.now();
    if (t.nanos() < 0 || t.nanos() >= 1000000000 ||
        t.seconds() <= absl::ToUnixSeconds(now) ||
        t.seconds() > absl::ToUnixSeconds(now + absl::Hours(24 * 3653))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expires_at must be in the future and at most ten years ahead, with nanos "
          "0-999999999 (got seconds=", t.seconds(), " nanos=", t.nanos(), ")"));
    }
  }
  absl::StatusOr<nat::PortMapping> m = ToNatMapping(request);
  if (!m.ok()) return m.status();
  v1::PortMapping proto = request;
  // Output-only fields are ignored on input: not stored, not echoed.
  proto.clear_created_at();
  proto.clear_connections();
  proto.clear_bytes();
  proto.clear_packets();
  proto.clear_open_connections();
  proto.clear_upstream();
  return AddMapping(txn, proto, *m, ct);
}

absl::Status DeleteMapping(Txn& txn, const std::string& id, nat::ConntrackCleaner* ct) {
  const MappingRecord* m = txn.state().mappings.Find(id);
  if (m == nullptr) return absl::NotFoundError(absl::StrCat("no mapping ", id));
  if (m->owner().kind() == v1::OWNER_KIND_CNI) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mapping ", id, " belongs to container attachment ", m->owner().id(),
        "; it goes when the container is deleted"));
  }
  if (m->owner().kind() == v1::OWNER_KIND_STATIC) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mapping ", id, " is static forward ", m->owner().id(),
        " from --forwards_file; remove it from the file"));
  }
  RemoveMapping(txn, id, ct);
  return absl::OkStatus();
}

}  // namespace fabric::agent::owners
