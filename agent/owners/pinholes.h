// IPv6 pinholes (UPnP WANIPv6FirewallControl:1): with the agent's IPv6
// firewall on, a LAN host may open its own address and port to new inbound
// connections for a while. Each pinhole is an element of the kernel's
// pinhole sets (nat::Pinhole), a store row, and lives until its lease runs
// out (checked every second with the leases) or it is deleted. A host holds
// at most policy.max_per_client pinholes, and all hosts together at most
// policy.max_leases. Every function works inside a writer transaction.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "agent/core/state.h"
#include "agent/core/txn.h"
#include "agent/owners/leases.h"

namespace fabric::agent {

// WANIPv6FirewallControl:1: LeaseTime 1-86400 s.
inline constexpr uint32_t kMaxPinholeLease = 86400;

struct PinholeRequest {
  enum class Op { kAdd, kUpdate, kDelete };
  Op op = Op::kAdd;
  nat::IpAddress client;  // the requester (IPv6)
  // kAdd:
  std::optional<nat::IpAddress> remote;  // nullopt: any remote host
  nat::Protocol protocol = nat::Protocol::kTcp;
  uint16_t internal_port = 0;
  // kAdd, kUpdate: seconds, 1-86400.
  uint32_t lease_seconds = 0;
  // kUpdate, kDelete:
  uint32_t unique_id = 0;
};

enum class PinholeOutcome {
  kOk,
  kNotAuthorized,     // 606: another host's pinhole, or not the requester's address
  kNoSuchEntry,       // 704
  kSpaceExhausted,    // 701: quota or cap
  kFirewallDisabled,  // 702
  kActionFailed,      // 501
};

struct PinholeResult {
  PinholeOutcome outcome = PinholeOutcome::kOk;
  uint32_t unique_id = 0;
  std::string detail;
};

namespace owners {

// A repeated AddPinhole for the same host, remote, protocol and port
// refreshes the existing pinhole and returns its id.
PinholeResult Pinholes(Txn& txn, const PinholeRequest& request, const LeasePolicy& policy);
// Removes pinholes whose lease ran out. Returns how many.
int ExpirePinholes(Txn& txn);
// The pinhole `unique_id` if `client` may see it: kNoSuchEntry or
// kNotAuthorized otherwise.
PinholeOutcome PinholeOf(const State& state, const nat::IpAddress& client, uint32_t unique_id,
                         const PinholeRecord** out);

}  // namespace owners
}  // namespace fabric::agent
