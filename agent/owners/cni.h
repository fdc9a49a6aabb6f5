// CNI attachments: a container's interface on a network with its port
// mappings (one per requested port and address family) and the network
// rules it needs (masquerade, hairpin, localhost access), counted across
// attachments. The front-end is the AttachmentService (agent/service.h);
// every change runs inside a writer transaction (agent/core/txn.h).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/core/state.h"
#include "agent/core/txn.h"
#include "agent/store.h"
#include "nat/backend/backend.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent::owners {

// See proto/fabric/nat/v1/nat.proto for the contract: all or nothing; the
// same attachment again returns its mappings; a different one under the
// same key is kAlreadyExists.
absl::StatusOr<v1::AttachResponse> Attach(Txn& txn, const v1::Attachment& attachment,
                                          nat::ConntrackCleaner* conntrack);
// True when the attachment existed.
bool Detach(Txn& txn, const v1::AttachmentKey& key, nat::ConntrackCleaner* conntrack);

// What `key` needs in the kernel that `kernel` lacks, as an error
// (kNotFound: not attached; kFailedPrecondition naming what is missing).
absl::Status CheckAttachment(const State& state, const nat::KernelState& kernel,
                             const v1::AttachmentKey& key);

// Attachments of `network` not in `valid` (CNI GC).
std::vector<v1::AttachmentKey> StaleAttachments(const State& state, const std::string& network,
                                                const std::vector<v1::AttachmentKey>& valid);

// Start-up: the stored attachments into `state`, after the mappings, in
// O(attachments + mappings). Takes (moves) the attachments out of the vector.
void LoadAttachments(std::vector<v1::Attachment>& attachments, State* state);

}  // namespace fabric::agent::owners
