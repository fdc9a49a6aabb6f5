// AgentCore: the agent's NAT state as every front-end sees it (the gRPC
// services for the CNI plugin, orchestrators and fabricctl; NAT-PMP/PCP;
// the repair loop). It wires the single writer (agent/core/writer.h) to the
// owner units (agent/owners/: CNI attachments, API mappings, NAT-PMP/PCP
// leases):
//   - a change runs one writer transaction: validate -> hold ports ->
//     SQLite BEGIN + rows -> kernel batch -> COMMIT -> publish; all or
//     nothing, on disk and in the kernel before it returns;
//   - a read (ListMappings, Status, Diagnose, Desired, the start of a
//     watch) takes the latest immutable snapshot and never waits for a
//     write; Check and Diagnose read the kernel outside the writer's lock.
// Calls that change state take the caller's deadline: one whose deadline
// passed before the writer could start it is refused with
// kDeadlineExceeded, having changed nothing.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core/convert.h"
#include "agent/core/events.h"
#include "agent/core/snapshot.h"
#include "agent/core/writer.h"
#include "agent/owners/leases.h"
#include "agent/owners/pinholes.h"
#include "agent/owners/statics.h"
#include "agent/owners/upnp.h"
#include "agent/store.h"
#include "fabric/nat/v1/nat.pb.h"
#include "nat/backend/backend.h"
#include "nat/conntrack/conntrack.h"

namespace fabric::agent {

struct CoreOptions {
  // Dynamic host port range (host port 0 in a request).
  uint16_t dynamic_lo = 32768;
  uint16_t dynamic_hi = 60999;
  // The clock (tests inject one).
  std::function<absl::Time()> now = [] { return absl::Now(); };
  // WatchMappings streams served at once.
  size_t max_watches = 64;
  // A second backend for kernel reads outside the writer's lock (Check,
  // Diagnose, the periodic check); null: those reads take the lock.
  nat::Backend* reader = nullptr;
  // The directories Backup may write into (the state dir and --backup_dir).
  std::vector<std::string> backup_dirs;
  // The WAN interface the IPv6 firewall guards (--ipv6_firewall); empty:
  // no firewall, and no pinholes (stored ones are dropped at start).
  std::string firewall6_interface;
  // The forwards file's SNAT rules as the file says at start: in the first
  // kernel batch already, so that a restart never leaves a moment without
  // them (they are not stored; the file is their truth).
  std::vector<nat::SnatRule> static_snat;
};

class AgentCore {
 public:
  AgentCore(std::unique_ptr<Store> store, nat::Backend* backend,
            nat::ConntrackCleaner* conntrack, CoreOptions options);

  // Loads the store, holds its ports and makes the kernel match in one
  // batch, in O(attachments + mappings). Until it succeeds the core is not
  // ready and refuses changes with kUnavailable.
  absl::Status Start();

  // CNI attachments (see proto/fabric/nat/v1/nat.proto for the contract).
  absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& attachment,
                                            absl::Time deadline = absl::InfiniteFuture());
  // True when the attachment existed.
  absl::StatusOr<bool> Detach(const v1::AttachmentKey& key,
                              absl::Time deadline = absl::InfiniteFuture());
  absl::Status Check(const v1::AttachmentKey& key);
  absl::StatusOr<std::vector<v1::AttachmentKey>> GarbageCollect(
      const std::string& network, const std::vector<v1::AttachmentKey>& valid,
      absl::Time deadline = absl::InfiniteFuture());

  // Mappings for orchestrators and tools.
  absl::StatusOr<v1::PortMapping> CreateMapping(const v1::PortMapping& request,
                                                absl::Time deadline = absl::InfiniteFuture());
  absl::Status DeleteMapping(const std::string& id,
                             absl::Time deadline = absl::InfiniteFuture());
  // Sorted by id.
  std::vector<v1::PortMapping> ListMappings(v1::OwnerKind kind,
                                            const std::string& owner_id) const;
  // One page of the same: at most page_size (0: all) with ids after
  // page_token; next_page_token set when more may follow. Refuses a
  // negative size or a token no id could be (kInvalidArgument).
  struct Page {
    // The reply's own type: the service swaps it in, no copy.
    google::protobuf::RepeatedPtrField<v1::PortMapping> mappings;
    std::string next_page_token;
  };
  static constexpr int kMaxPageSize = 5000;
  absl::StatusOr<Page> ListMappingsPage(v1::OwnerKind kind, const std::string& owner_id,
                                        int page_size, const std::string& page_token) const;
  // Current mappings as TYPE_ADDED events, then TYPE_SYNCED, then every
  // change, through the returned queue (bounded: see EventQueue). When
  // max_watches are already served the queue comes back ended with
  // kResourceExhausted. Unsubscribe when done.
  std::shared_ptr<EventQueue> Subscribe(v1::OwnerKind kind, const std::string& owner_id);
  void Unsubscribe(const std::shared_ptr<EventQueue>& queue);

  // NAT-PMP/PCP leases: create or refresh (lifetime > 0) or delete
  // (lifetime 0; internal port 0 deletes all of the client's leases of that
  // protocol). A refresh keeps the external port; deleting what does not
  // exist succeeds.
  LeaseResult Lease(const LeaseRequest& request, const LeasePolicy& policy);
  // Makes the static forwards and SNAT rules exactly `config`'s
  // (agent/owners/statics.h), in one transaction, or changes nothing.
  absl::StatusOr<StaticDiff> ApplyStaticForwards(const StaticConfig& config);
  // UPnP IGD port mappings (agent/owners/upnp.h). Not ready: kNetworkFailure.
  UpnpResult Upnp(const UpnpRequest& request, const LeasePolicy& policy);
  // IPv6 pinholes (agent/owners/pinholes.h). Not ready: kActionFailed.
  PinholeResult Pinhole(const PinholeRequest& request, const LeasePolicy& policy);
  // Packets each pinhole let in, as the kernel counts them (read outside
  // the writer's lock).
  absl::StatusOr<std::map<nat::Pinhole, uint64_t>> PinholePackets() const;
  // Connections the kernel's NAT rules translated, by kind (outside the
  // writer's lock); kUnimplemented on a backend that does not count them.
  // Backend::ConnectionCounts, plus "proxy": the connections the
  // IPv6-to-IPv4 proxy accepted.
  absl::StatusOr<std::map<std::string, uint64_t>> ConnectionCounts() const;
  // The proxy that serves IPv6-to-IPv4 static forwards (owned by the
  // agent, outliving the core's use of it); null: none. Set before the
  // forwards file is applied.
  void SetProxy(proxy::Proxy* proxy) { proxy_ = proxy; }
  // With --upstream: a mapping's state on the LAN's gateway, which
  // ListMappings puts in PortMapping.upstream. Set before serving.
  void SetUpstreamStatus(std::function<std::string(const v1::PortMapping&)> f) {
    upstream_status_ = std::move(f);
  }
  std::string UpstreamOf(const v1::PortMapping& m) const {
    return upstream_status_ ? upstream_status_(m) : "";
  }
  proxy::Proxy* proxy() const { return proxy_; }
  // Other tables' forward chains that drop DNAT'd connections
  // (Backend::ForwardDropChains).
  absl::StatusOr<std::vector<std::string>> ForwardDropChains() const {
    return writer_.ForwardDropChains();
  }
  // Connections each DNAT element translated (a full kernel read, outside
  // the writer's lock).
  absl::StatusOr<std::map<nat::DnatElement, uint64_t>> MappingConnections() const;
  // Removes leases (and pinholes) whose lifetime ran out, in one batch. Returns how many.
  int ExpireLeases();
  // The external (WAN) address leases are published on; moving it moves
  // every lease. nullopt: none (requests get a network failure).
  void SetExternalAddress(std::optional<nat::IpAddress> address);
  std::optional<nat::IpAddress> external_address() const;
  // Seconds since the mapping table started (NAT-PMP/PCP epoch); persists
  // across restarts with the leases.
  uint32_t EpochSeconds() const;

  // Makes the kernel match the store again (after a foreign change).
  absl::StatusOr<nat::SyncReport> Resync();
  // Compares the kernel with the latest snapshot outside the writer's lock;
  // repairs (under the lock) only when they differ. The periodic check.
  absl::StatusOr<nat::SyncReport> CheckAndRepair();

  // Detaches attachments whose network namespace path no longer exists
  // (the container is gone and no DEL came). The paths are looked at
  // outside the writer's lock. Returns what it removed.
  absl::StatusOr<std::vector<v1::AttachmentKey>> SweepDeadNamespaces();

  // Writes a consistent snapshot of the store to `path`, mode 0600. `path`
  // must lie in one of options.backup_dirs (after resolving links) and may
  // replace only an earlier backup (a fabric-nat database), never another
  // file. kPermissionDenied / kFailedPrecondition saying which rule.
  absl::StatusOr<v1::BackupResponse> Backup(const std::string& path);

  v1::GetStatusResponse Status() const;
  // Kernel vs store (read only), readiness, port pool use. Unless `full`,
  // a kernel whose generation is the known-good one (nothing but this
  // agent's own commits since it last matched) is not read element by
  // element: the generation proves it unchanged.
  v1::DiagnoseResponse Diagnose(bool full = false) const;
  // The kernel state the store asks for.
  nat::RuleSet Desired() const;
  const std::string& backend_name() const { return writer_.backend_name(); }
  std::shared_ptr<const Snapshot> snapshot() const { return writer_.snapshot(); }

 private:
  void DiagnoseFacts(const Snapshot& snap, v1::DiagnoseResponse* out) const;
  const CoreOptions options_;
  proxy::Proxy* proxy_ = nullptr;
  std::function<std::string(const v1::PortMapping&)> upstream_status_;
  nat::ConntrackCleaner* const conntrack_;
  const absl::Time started_at_;
  Writer writer_;
};

}  // namespace fabric::agent
