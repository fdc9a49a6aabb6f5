// UPnP IGD port mappings (WANIPConnection:1 and :2): leases of owner kind
// upnp, named by protocol and external port, to the requesting LAN host's
// own address. They share the allocator, the per-client quota and the
// global cap with NAT-PMP/PCP (agent/owners/leases.h): one host's NAT-PMP
// and UPnP leases are both its own (UPnP may replace or delete a NAT-PMP
// lease of the same host; a PCP lease answers only to its nonce), another
// host's are conflicts. Every function works inside a writer transaction
// (agent/core/writer.h); the SOAP front-end (agent/upnp/) maps the outcomes
// to UPnP faults.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/core/state.h"
#include "agent/core/txn.h"
#include "agent/owners/leases.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent {

// The longest lease IGD:2 grants (WANIPConnection:2, AddPortMapping):
// longer requests, and 0, get this.
inline constexpr uint32_t kUpnpMaxLease = 604800;

struct UpnpRequest {
  enum class Op {
    kAdd,          // AddPortMapping: exactly external_port
    kAddAny,       // AddAnyPortMapping: external_port or the nearest free
    kDelete,       // DeletePortMapping of (protocol, external_port)
    kDeleteRange,  // DeletePortMappingRange [external_port, end_port]
  };
  Op op = Op::kAdd;
  nat::IpAddress client;  // the requester (the HTTP peer)
  nat::Protocol protocol = nat::Protocol::kTcp;
  uint16_t external_port = 0;
  uint16_t end_port = 0;  // kDeleteRange
  uint16_t internal_port = 0;
  // Seconds; 0 means permanent on IGD:1 (permanent_ok) and kUpnpMaxLease on
  // IGD:2. Longer than the policy's max_lifetime: capped.
  uint32_t lease_seconds = 0;
  bool permanent_ok = false;
  std::string description;
};

enum class UpnpOutcome {
  kOk,
  kNotAuthorized,     // 606: not the requester's own mapping or address
  kConflict,          // 718: another host's lease holds the port
  kOtherMechanism,    // 729: a container, API or file mapping holds it, or
                      // the port is outside what leases may take
  kNoPortMaps,        // 728: quota, global cap or no free port
  kNoSuchEntry,       // 714: nothing mapped there
  kNoneInRange,       // 730: DeletePortMappingRange found nothing of its own
  kNetworkFailure,    // 501: no external address, the agent not ready
  kActionFailed,      // 501: the store or the kernel refused
};

struct UpnpResult {
  UpnpOutcome outcome = UpnpOutcome::kOk;
  uint16_t external_port = 0;  // adds: the port mapped
  uint32_t lease_seconds = 0;  // adds: granted (0: permanent)
  int deleted = 0;
  std::string detail;          // for logs and fault descriptions
};

namespace owners {

UpnpResult Upnp(Txn& txn, const UpnpRequest& request, const LeasePolicy& policy,
                nat::ConntrackCleaner* conntrack);

// A mapping as UPnP reports it (GetSpecificPortMappingEntry and friends).
struct UpnpEntry {
  nat::Protocol protocol = nat::Protocol::kTcp;
  uint16_t external_port = 0;
  std::string internal_client;
  uint16_t internal_port = 0;
  std::string description;
  uint32_t lease_remaining = 0;  // seconds; 0: permanent
  v1::OwnerKind kind = v1::OWNER_KIND_UPNP;
};

// Every lease (NAT-PMP, PCP, UPnP) on the external address, by protocol
// (TCP first) and external port.
std::vector<UpnpEntry> UpnpEntries(const State& state, absl::Time now);
// The lease on (protocol, external port), if any.
std::optional<UpnpEntry> UpnpEntryAt(const State& state, nat::Protocol protocol, uint16_t port,
                                     absl::Time now);

}  // namespace owners
}  // namespace fabric::agent
