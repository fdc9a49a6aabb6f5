// State: everything the agent knows about NAT, as the writer holds it and
// as readers see it in snapshots. Copying a State is cheap (its big tables
// are PersistentTables), so a transaction works on a copy and the writer
// publishes a copy after every commit.
//
// Thread-compatible; a published copy is never written again.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/core/mapping_record.h"
#include "agent/core/owner_index.h"
#include "agent/core/table.h"
#include "fabric/nat/v1/nat.pb.h"
#include "nat/port_allocator.h"
#include "nat/types.h"

namespace fabric::agent {

namespace v1 = ::fabric::nat::v1;

struct PinholeRecord {
  v1::Pinhole proto;
  nat::Pinhole nat;
};

struct AttachmentRecord {
  v1::Attachment proto;
  std::vector<std::string> mapping_ids;
  std::vector<nat::Prefix> networks;  // container networks (prefix form)
};

// How many attachments need each network rule; the kernel holds a rule
// while its count is positive. Kept incrementally, so an operation costs
// the same with 10 or 10,000 attachments.
struct NetworkRefs {
  std::map<nat::Prefix, int> masquerade;
  // Fixed-address SNAT: attachments with snat_address (one rule per
  // network of that family, any interface) and the static file's rules
  // (State::static_snat), counted together so that one rule asked for by
  // both stays while either wants it.
  std::map<nat::SnatRule, int> snat;
  std::map<nat::Prefix, int> hairpin;
  std::map<std::string, int> interfaces;
  // Every container network, whatever its options: NAT-PMP/PCP refuse a
  // client inside one (agent/owners/leases.h).
  std::map<nat::Prefix, int> containers;
  // Attachments whose network asks for upstream mapping (the CNI key
  // `upstream`: true), so that the upstream keeper need not look at every
  // mapping when --upstream is off and nobody asks.
  int upstream_asked = 0;
  // Adds (delta 1) or removes (delta -1) one attachment's needs.
  void Count(const AttachmentRecord& rec, int delta);
  // The same for one static SNAT rule.
  void CountSnat(const nat::SnatRule& rule, int delta);
  // The network part of the desired kernel state.
  void Fill(nat::RuleSet* rules) const;
};

struct State {
  // Mapping id -> mapping, every owner.
  PersistentTable<MappingRecord> mappings;
  // Owner id (any kind) -> its mappings' ids: a listing of one owner reads
  // only its own.
  OwnerIndex by_owner;
  // AttachmentOwnerId -> attachment (CNI).
  PersistentTable<AttachmentRecord> attachments;
  NetworkRefs network;
  // NAT-PMP/PCP: LeaseKey(client, protocol, internal port) -> mapping id.
  PersistentTable<std::string> leases;
  // Every lease (NAT-PMP, PCP, UPnP): LeasePortKey(protocol, external
  // port) -> mapping id. UPnP names a mapping by its external port; its
  // size is the number of leases.
  PersistentTable<std::string> leases_by_port;
  // Client address -> number of leases of every kind.
  PersistentTable<int> leases_per_client;
  // Target address -> how many mappings of other owners (CNI, API) send
  // traffic there: NAT-PMP/PCP/UPnP refuse such an address as a client.
  PersistentTable<int> mapping_targets;
  // The static forwards file's SNAT rules (--forwards_file "snat"), as last
  // applied; not stored: the file is their truth, applied again at start.
  std::set<nat::SnatRule> static_snat;
  // The file's IPv6-to-IPv4 forwards the proxy serves, by name (host_ip
  // the IPv6 listen address, :: for any; target IPv4); not stored either.
  std::map<std::string, nat::PortMapping> static_proxies;
  // Lease id -> the companion port scope it holds (RFC 6886 3.3).
  PersistentTable<nat::PortScope> companions;
  // IPv6 pinholes by unique id (decimal), and the WAN interface the IPv6
  // firewall guards (--ipv6_firewall; empty: off). Pinholes only exist
  // with the firewall on.
  PersistentTable<PinholeRecord> pinholes;
  std::string firewall6_interface;
  // The address leases are published on; none: requests get a network
  // failure.
  std::optional<nat::IpAddress> external_address;
  // A move of leases to a new external address failed; the expiry tick
  // retries.
  bool leases_need_move = false;
  absl::Time epoch_start;
  int64_t next_mapping_id = 1;

  // The kernel state this state asks for.
  nat::RuleSet Desired() const;
  // Gives back the tables' spare capacity after a bulk load (start-up):
  // at 100k mappings about 3 MB.
  void ShrinkToFit();
};

// The mappings OwnerMatches(kind, owner_id) selects whose id sorts after
// `after` (empty: from the first), ordered by id, at most `limit` of them
// (0: all). Through by_owner when owner_id is set, so that costs the
// owner's count, not the table's. The pointers live as long as `state`.
std::vector<const MappingRecord*> SelectMappings(const State& state, v1::OwnerKind kind,
                                                 const std::string& owner_id,
                                                 const std::string& after, size_t limit);
// The same (all, from the first), shared: they outlive `state`.
std::vector<std::shared_ptr<const MappingRecord>> MappingsOf(const State& state,
                                                             v1::OwnerKind kind,
                                                             const std::string& owner_id);

// The leases index key.
std::string LeaseKey(const std::string& client, nat::Protocol protocol,
                     uint16_t internal_port);
std::string LeaseKeyOf(const MappingRecord& m);
// The leases_by_port key.
std::string LeasePortKey(nat::Protocol protocol, uint16_t external_port);
std::string LeasePortKeyOf(const MappingRecord& m);

}  // namespace fabric::agent
