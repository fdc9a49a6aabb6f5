// AgentCore: the one place that owns NAT state. Every front-end (the gRPC
// services for the CNI plugin, orchestrators and fabricctl; later NAT-PMP,
// PCP and UPnP) calls into it; it serializes all of them.
//
// One operation: validate -> reserve host ports -> commit to the store ->
// apply one kernel batch -> reply. Any failure undoes what was done, so an
// operation either happened entirely (on disk and in the kernel) or not at
// all.
//
// Threading: thread-safe. One std::mutex guards everything; the core never
// calls out (no callbacks, RPCs or waits on others) while holding it. Watch
// events are pushed into per-subscriber queues that the subscriber drains on
// its own thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <tuple>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/store.h"
#include "fabric/nat/v1/nat.pb.h"
#include "nat/backend/backend.h"
#include "nat/conntrack/conntrack.h"
#include "nat/port_allocator.h"

namespace fabric::agent {

struct CoreOptions {
  // Dynamic host port range (host port 0 in a request).
  uint16_t dynamic_lo = 32768;
  uint16_t dynamic_hi = 60999;
  // The clock (tests inject one).
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

// NAT-PMP/PCP policy (agent flags).
struct LeasePolicy {
  uint16_t port_lo = 1024;
  uint16_t port_hi = 65535;
  int max_per_client = 50;
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
  kNotAuthorized,   // nonce mismatch
  kNoResources,     // no free port in the allowed range, or an internal error
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

// A subscriber's queue of mapping events (WatchMappings).
class EventQueue {
 public:
  // Waits up to `timeout` for an event. nullopt on timeout or when closed.
  std::optional<v1::MappingEvent> Pop(absl::Duration timeout);
  void Push(v1::MappingEvent event);
  void Close();
  bool closed() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::MappingEvent> events_;  // guarded by mu_
  bool closed_ = false;                  // guarded by mu_
};

class AgentCore {
 public:
  AgentCore(std::unique_ptr<Store> store, nat::Backend* backend,
            nat::ConntrackCleaner* conntrack, CoreOptions options);

  // Loads the store, rebuilds the allocator and makes the kernel match in
  // one batch. Until it succeeds the core is not ready and refuses changes
  // with kUnavailable.
  absl::Status Start();

  // CNI attachments (see proto/fabric/nat/v1/nat.proto for the contract).
  absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& attachment);
  // True when the attachment existed.
  absl::StatusOr<bool> Detach(const v1::AttachmentKey& key);
  absl::Status Check(const v1::AttachmentKey& key);
  absl::StatusOr<std::vector<v1::AttachmentKey>> GarbageCollect(
      const std::string& network,
      const std::vector<v1::AttachmentKey>& valid);

  // Mappings for orchestrators and tools.
  absl::StatusOr<v1::PortMapping> CreateMapping(const v1::PortMapping& request);
  absl::Status DeleteMapping(const std::string& id);
  std::vector<v1::PortMapping> ListMappings(v1::OwnerKind kind,
                                            const std::string& owner_id) const;
  // Current mappings as TYPE_ADDED events, then TYPE_SYNCED, then every
  // change, through the returned queue. Unsubscribe when done.
  std::shared_ptr<EventQueue> Subscribe(v1::OwnerKind kind,
                                        const std::string& owner_id);
  void Unsubscribe(const std::shared_ptr<EventQueue>& queue);

  // NAT-PMP/PCP leases: create or refresh (lifetime > 0) or delete
  // (lifetime 0; internal port 0 deletes all of the client's leases of that
  // protocol). A refresh keeps the external port; deleting what does not
  // exist succeeds.
  LeaseResult Lease(const LeaseRequest& request, const LeasePolicy& policy);
  // Removes leases whose lifetime ran out, in one batch. Returns how many.
  int ExpireLeases();
  // The external (WAN) address leases are published on; moving it moves
  // every lease. nullopt: none (requests get a network failure).
  void SetExternalAddress(std::optional<nat::IpAddress> address);
  std::optional<nat::IpAddress> external_address() const;
  // Seconds since the mapping table started (NAT-PMP/PCP epoch); persists
  // across restarts with the leases.
  uint32_t EpochSeconds() const;

  // Makes the kernel match the store again (reconciler, after a foreign
  // change). Reports what it did.
  absl::StatusOr<nat::SyncReport> Resync();

  // Detaches attachments whose network namespace path no longer exists
  // (the container is gone and no DEL came). Returns what it removed.
  absl::StatusOr<std::vector<v1::AttachmentKey>> SweepDeadNamespaces();

  // Writes a consistent snapshot of the store to `path`.
  absl::StatusOr<v1::BackupResponse> Backup(const std::string& path);

  v1::GetStatusResponse Status() const;
  // Kernel vs store (read only), readiness, port pool use.
  v1::DiagnoseResponse Diagnose() const;
  // The kernel state the store asks for.
  nat::RuleSet Desired() const;
  const std::string& backend_name() const { return backend_name_; }

 private:
  struct MappingRecord {
    v1::PortMapping proto;
    nat::PortMapping nat;
  };
  struct AttachmentRecord {
    v1::Attachment proto;
    std::vector<std::string> mapping_ids;
    std::vector<nat::Prefix> networks;  // container networks (prefix form)
  };

  absl::Status ReadyOrError() const;
  nat::RuleSet DesiredLocked() const;
  // Reserves `m`'s host ports (allocating when host_port is 0) for holder.
  absl::Status ReservePorts(nat::PortMapping& m, const std::string& holder);
  void ReleasePorts(const nat::PortMapping& m);
  // Commits `write`, then applies `batch`; if the kernel refuses, commits
  // `undo` and returns the kernel's error.
  absl::Status Realize(const StoreWrite& write, const StoreWrite& undo,
                       const nat::Batch& batch);
  // How many attachments need each network rule; the kernel holds a rule
  // while its count is positive. Kept incrementally so that an operation
  // costs the same with 10 or 10,000 attachments.
  struct NetworkRefs {
    std::map<nat::Prefix, int> masquerade;
    std::map<nat::Prefix, int> hairpin;
    std::map<std::string, int> interfaces;
    // Adds (delta 1) or removes (delta -1) one attachment's needs.
    void Count(const AttachmentRecord& rec, int delta);
    // The network part of the desired kernel state.
    void Fill(nat::RuleSet* rules) const;
  };
  // The network part of the batch for adding or removing `rec`, and the
  // counts after it.
  nat::Batch NetworkBatch(const AttachmentRecord& rec, int delta,
                          NetworkRefs* after) const;
  // Assigns an id, reserves the ports (host port 0: allocates) and adds the
  // mapping to `write` and `batch`.
  absl::StatusOr<v1::PortMapping> AddMappingLocked(v1::PortMapping proto,
                                                   nat::PortMapping nat,
                                                   StoreWrite* write,
                                                   nat::Batch* batch);
  void Forget(const nat::PortMapping& m);
  // Removes mappings (store, kernel, ports, indexes) in one operation.
  absl::Status RemoveMappingsLocked(const std::vector<std::string>& ids);
  // After the store and kernel dropped mapping `id`: its ports, companion,
  // lease index and conntrack entries go, and subscribers hear of it.
  void DropMappingLocked(const std::string& id);
  LeaseResult DeleteLeasesLocked(const LeaseRequest& request);
  using LeaseKey = std::tuple<std::string, nat::Protocol, uint16_t>;
  static LeaseKey KeyOf(const v1::PortMapping& m);
  void IndexLease(const v1::PortMapping& m, const nat::PortMapping& n);
  void UnindexLease(const v1::PortMapping& m);
  // Holds the same external port in the companion protocol (TCP <-> UDP)
  // for the lease's client, when free (RFC 6886 section 3.3).
  void HoldCompanion(const v1::PortMapping& m, const nat::PortMapping& n);
  void ReleaseCompanion(const std::string& id);
  // Moves leases onto external_address_; on failure sets leases_need_move_
  // so that the next ExpireLeases() tries again.
  void MoveLeasesLocked();
  // A port (run) of m's protocol free in m's family and in `others`.
  absl::StatusOr<uint16_t> FreeInFamilies(const nat::PortMapping& m,
                                          const std::vector<nat::Family>& others);
  void Publish(v1::MappingEvent::Type type, const v1::PortMapping& m);
  absl::StatusOr<bool> DetachLocked(const v1::AttachmentKey& key);
  std::string NewMappingId();

  const CoreOptions options_;
  const std::string backend_name_;
  nat::Backend* const backend_;
  nat::ConntrackCleaner* const conntrack_;
  const absl::Time started_at_;

  mutable std::mutex mu_;
  std::unique_ptr<Store> store_;                          // guarded by mu_
  nat::PortAllocator allocator_;                          // guarded by mu_
  std::map<std::string, MappingRecord> mappings_;         // guarded by mu_
  std::map<std::string, AttachmentRecord> attachments_;   // guarded by mu_
  NetworkRefs network_refs_;                              // guarded by mu_
  // NAT-PMP/PCP: (client, protocol, internal port) -> mapping id.
  std::map<LeaseKey, std::string> leases_;                // guarded by mu_
  std::map<std::string, int> leases_per_client_;          // guarded by mu_
  // Lease id -> the companion port scope it holds.
  std::map<std::string, nat::PortScope> companions_;      // guarded by mu_
  std::optional<nat::IpAddress> external_address_;        // guarded by mu_
  bool leases_need_move_ = false;                         // guarded by mu_
  absl::Time epoch_start_;                                // guarded by mu_
  int64_t next_mapping_id_ = 1;                           // guarded by mu_
  bool ready_ = false;                                    // guarded by mu_
  std::string not_ready_reason_ = "starting";             // guarded by mu_
  uint64_t repairs_ = 0;                                  // guarded by mu_
  absl::Time last_repair_ = absl::InfinitePast();         // guarded by mu_
  struct Subscriber {
    v1::OwnerKind kind;
    std::string owner_id;
    std::shared_ptr<EventQueue> queue;
  };
  std::vector<Subscriber> subscribers_;                   // guarded by mu_
};

// Parses and checks a v1 mapping request into the NAT value type.
// kInvalidArgument naming the field.
absl::StatusOr<nat::PortMapping> ToNatMapping(const v1::PortMapping& m);
v1::Protocol ToProto(nat::Protocol p);
// A container id as messages show it: runtimes' 64-hex ids shortened to 12
// characters (as docker and crictl show them), anything else whole.
std::string ShortContainerId(const std::string& id);
absl::StatusOr<nat::Protocol> FromProto(v1::Protocol p);

}  // namespace fabric::agent
