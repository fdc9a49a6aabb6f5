// NAT-PMP and PCP leases (RFC 6886, RFC 6887): mappings from the external
// address to a LAN host's own port, with a lifetime, a per-client quota, a
// port range, companion ports (the same external port held in the other
// protocol, RFC 6886 3.3), PCP nonces, expiry, and moves when the external
// address changes. Every function works inside a transaction of the writer
// (agent/core/writer.h); the front-end is agent/natpmp/.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/core/state.h"
#include "agent/core/txn.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent {

// NAT-PMP/PCP policy (agent flags).
struct LeasePolicy {
  // External ports leases may take (--natpmp_port_range) ...
  uint16_t port_lo = 1024;
  uint16_t port_hi = 65535;
  // ... less the containers' dynamic pool (the allocator's dynamic range,
  // --port_range): a suggestion or internal port inside it gets the nearest
  // free port outside it. false: the whole range.
  bool avoid_dynamic_range = true;
  int max_per_client = 50;
  // Leases of every client together (--natpmp_max_leases).
  int max_leases = 1024;
  uint32_t max_lifetime = 7200;  // seconds
};

// A NAT-PMP or PCP request for a mapping to the requester's own address.
struct LeaseRequest {
  v1::OwnerKind kind = v1::OWNER_KIND_NATPMP;  // or OWNER_KIND_PCP
  nat::IpAddress client;
  nat::Protocol protocol = nat::Protocol::kTcp;
  uint16_t internal_port = 0;
  uint16_t suggested_port = 0;  // 0: any
  uint32_t lifetime = 0;        // seconds; 0 deletes
  std::string nonce;            // PCP's 12-byte nonce; empty for NAT-PMP
  bool prefer_failure = false;  // PCP: the suggested port or nothing
  // Delete only (lifetime 0): every protocol and internal port of the
  // client (PCP protocol 0).
  bool all_protocols = false;
};

enum class LeaseOutcome {
  kOk,
  // A PCP nonce that does not match; a NAT-PMP request for a PCP lease
  // (NAT-PMP has no nonce to prove it is the lease's own client); a client
  // the agent serves no lease to (RefusedClient).
  kNotAuthorized,
  // No free port in the allowed range, max_leases reached, or an internal
  // error.
  kNoResources,
  kQuota,           // the client holds max_per_client leases
  kNetworkFailure,  // no external address
  kCannotProvide,   // PREFER_FAILURE and the suggested port is not free
};

struct LeaseResult {
  LeaseOutcome outcome = LeaseOutcome::kOk;
  uint16_t external_port = 0;
  uint32_t lifetime = 0;  // granted, seconds
  std::string detail;     // for logs
};

namespace owners {

// Creates, refreshes (keeping the external port) or deletes (lifetime 0)
// leases. An outcome other than kOk discards the transaction.
LeaseResult Lease(Txn& txn, const LeaseRequest& request, const LeasePolicy& policy,
                  nat::ConntrackCleaner* conntrack);
// Why `client` may not hold a lease, or nullopt: an address inside a
// container network (any CNI attachment's) or the target of a mapping of
// another owner (CNI, API, UPnP): a LAN host claiming it would publish
// someone else's ports.
std::optional<std::string> RefusedClient(const State& state, const nat::IpAddress& client);
// Removes the leases whose lifetime ran out (and retries a failed move
// first). Returns how many.
int ExpireLeases(Txn& txn, nat::ConntrackCleaner* conntrack);
// Moves every lease onto state().external_address; a lease whose port is
// taken there is dropped.
void MoveLeases(Txn& txn, nat::ConntrackCleaner* conntrack);

// Shared with the UPnP owner (upnp.h):
// The ports a lease may take: the policy's [lo, hi] less the dynamic range,
// as at most two segments.
struct Segment {
  uint16_t lo, hi;
  bool Contains(uint16_t p) const { return p >= lo && p <= hi; }
};
std::vector<Segment> AllowedPorts(const LeasePolicy& policy, const nat::PortAllocator& a);
bool Allowed(const std::vector<Segment>& allowed, uint16_t port);
// "1024-65535 outside the containers' 32768-60999", for messages.
std::string DescribeAllowed(const LeasePolicy& policy, const nat::PortAllocator& a);
// Holds a port for a new lease: `want` itself when allowed and free, else
// the nearest free allowed port (`want` inside the dynamic range: the
// nearest on either side of it; elsewhere: the next one up, wrapping, as
// AllocateNear does); `want` outside every segment: the first free one.
absl::StatusOr<uint16_t> HoldLeasePort(Txn& txn, const nat::PortScope& scope, uint16_t want,
                                       const LeasePolicy& policy,
                                       const std::vector<Segment>& allowed,
                                       const std::string& holder);
// kQuota when `client` holds policy.max_per_client leases (of every kind),
// kNoResources when all clients together hold policy.max_leases; nullopt
// when there is room for one more.
std::optional<std::pair<LeaseOutcome, std::string>> RoomForLease(const State& state,
                                                                 const std::string& client,
                                                                 const LeasePolicy& policy);

// The index and companion bookkeeping, also used at start-up and by
// RemoveMapping.
void IndexLease(State& state, const MappingRecord& m);
void UnindexLease(State& state, const MappingRecord& m);
// Holds the same external port in the other protocol for the lease's client
// when it is free. At start-up pass a null txn and the allocator directly.
void HoldCompanion(Txn& txn, const MappingRecord& m);
void HoldCompanionAtStart(State& state, nat::PortAllocator& allocator, const MappingRecord& m);
void ReleaseCompanion(Txn& txn, const MappingRecord& m);
// Releases the companion hold `client`'s own lease has on `port` in
// `protocol`, if any, so a new lease of the client can take the port (the
// transaction undoes it if the request fails).
void FreeOwnCompanion(Txn& txn, const std::string& client, nat::Protocol protocol,
                      uint16_t port);

}  // namespace owners
}  // namespace fabric::agent
