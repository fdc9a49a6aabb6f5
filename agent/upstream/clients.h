// Clients of the LAN gateway's port-mapping protocols, one per protocol
// behind one interface: PCP (RFC 6887) and NAT-PMP (RFC 6886) over
// exchange.h with our own codec (codec.h), and UPnP IGD through Debian's
// libminiupnpc (SSDP discovery, UPNP_GetValidIGD, Add(Any)PortMapping,
// DeletePortMapping, GetExternalIPAddress). Connect() finds the gateway
// (the default route unless given) and the protocol it answers; with
// Method::kAuto it tries PCP, then NAT-PMP, then UPnP and keeps the first
// that answers.
//
// Why our own NAT-PMP codec rather than libnatpmp: PCP and NAT-PMP share
// port 5351, the retransmission schedule, the bounded exchange and the
// fake transport the tests use; libnatpmp brings its own socket, its own
// retry schedule (nine tries, up to 64 s) and its own gateway lookup, and
// checks neither the internal port nor the epoch of a reply.
//
// Used by the Mapper (mapper.h) and fabricctl's upstream commands. A
// client is not thread-safe: one thread at a time (the Mapper's worker).
// All I/O happens in the network namespace of the thread that made the
// client (its socket), and UPnP's in the calling thread's.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/upstream/exchange.h"
#include "agent/upstream/gateway.h"
#include "agent/upstream/types.h"

namespace fabric::agent::upstream {

class MethodClient {
 public:
  virtual ~MethodClient() = default;
  virtual Method method() const = 0;
  // Asks the gateway who it is: its epoch (PCP ANNOUNCE, NAT-PMP opcode 0)
  // and external address (NAT-PMP opcode 0, UPnP GetExternalIPAddress; PCP
  // asks NAT-PMP opcode 0 too while the gateway answers it).
  virtual absl::StatusOr<GatewayInfo> Probe() = 0;
  // Creates or renews a mapping. An error result from the gateway is
  // kResourceExhausted (no ports/quota), kPermissionDenied (refused),
  // kUnavailable (transient), kFailedPrecondition (otherwise), with the
  // gateway's words.
  virtual absl::StatusOr<MapResult> Map(const MapRequest& request) = 0;
  // Deletes a mapping. `external_port`: what Map granted (UPnP deletes by
  // it); 0: UPnP looks it up by internal port and our address.
  virtual absl::Status Unmap(const MapRequest& request, uint16_t external_port) = 0;
  // Whether the gateway still holds `mapping` (UPnP, whose gateways have no
  // epoch: a restart shows as a missing entry). PCP/NAT-PMP: true (the
  // epoch tells).
  virtual absl::StatusOr<bool> StillMapped(const MapResult& mapping) { return true; }
};

struct ClientOptions {
  std::optional<Ipv4> gateway;  // unset: the default route's (gateway.h)
  Method method = Method::kAuto;
  // One PCP/NAT-PMP exchange. With kAuto, PCP and NAT-PMP each get half
  // of it while looking for the protocol.
  Schedule schedule;
  // How long SSDP discovery waits for answers.
  absl::Duration upnp_discover = absl::Seconds(1);
  uint16_t port = kGatewayPort;  // tests run a fake gateway elsewhere
  NowFn now = [] { return absl::Now(); };
  std::string route_file = kRouteFile;
};

// A client for one protocol over `transport` (PCP, NAT-PMP).
std::unique_ptr<MethodClient> NewPcpClient(std::unique_ptr<Transport> transport, NowFn now,
                                           Schedule schedule);
std::unique_ptr<MethodClient> NewNatPmpClient(std::unique_ptr<Transport> transport, NowFn now,
                                              Schedule schedule);
// UPnP IGD: discovers IGDs by SSDP (waiting `discover`), keeps the one at
// `gateway` if given (else the first valid one). kNotFound when none.
absl::StatusOr<std::unique_ptr<MethodClient>> NewUpnpClient(std::optional<Ipv4> gateway,
                                                            absl::Duration discover);

struct Connection {
  std::unique_ptr<MethodClient> client;
  GatewayInfo info;  // what its Probe said
};

// Finds the gateway and a protocol it answers (options.method, or with
// kAuto the first of PCP, NAT-PMP, UPnP). The error names every protocol
// tried and why it failed.
absl::StatusOr<Connection> Connect(const ClientOptions& options);

// The PCP nonce for (proto, internal_port, client): keyed by
// /etc/machine-id, so every process on this host (a later `fabricctl
// upstream unmap`, a restarted agent) repeats the nonce the gateway knows
// the mapping by, while an off-path host cannot guess it. Without a
// machine id: random.
Nonce StableNonce(Proto proto, uint16_t internal_port, const Ipv4& client);

// "203.0.113.7:8080".
std::string Endpoint(const Ipv4& ip, uint16_t port);

}  // namespace fabric::agent::upstream
