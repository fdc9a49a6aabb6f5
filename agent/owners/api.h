// Mappings that orchestrators and tools create through the MappingService
// (owner kind API, or UPNP from a UPnP front-end), inside a writer
// transaction (agent/core/txn.h).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/core/txn.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent::owners {

// kInvalidArgument for other owner kinds or a malformed request;
// kAlreadyExists naming the holder of a taken port.
absl::StatusOr<v1::PortMapping> CreateMapping(Txn& txn, const v1::PortMapping& request,
                                              nat::ConntrackCleaner* conntrack);
// kNotFound; kFailedPrecondition for a container's mapping (it goes with
// its attachment).
absl::Status DeleteMapping(Txn& txn, const std::string& id, nat::ConntrackCleaner* conntrack);

}  // namespace fabric::agent::owners
