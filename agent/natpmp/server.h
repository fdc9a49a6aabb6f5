// PmpServer: the NAT-PMP (RFC 6886) and PCP (RFC 6887) front-end. Answers
// on UDP 5351, only for requests that arrive on a configured LAN interface,
// are not addressed to the WAN address and come from a source inside a
// subnet of that interface (sources.h; the interfaces' addresses are read
// again on every rtnetlink address event); every mapping goes to the
// requester's own address through AgentCore::Lease (the same allocator,
// store and kernel maps as container ports). An error answer is never
// longer than its request (none for a request shorter than a NAT-PMP
// header, 4 bytes, or, on the PCP side, a PCP header, 24 bytes), so a
// spoofed request cannot be amplified. Learns the WAN address from an
// wan::AddressSource (the Agent's rtnetlink watcher, shared with the core
// and other front-ends; a fake in tests) and announces (NAT-PMP opcode 128
// and PCP ANNOUNCE to 224.0.0.1:5350, ten times at 250 ms doubling) at start
// and whenever it changes. Telling the core (SetExternalAddress, which moves
// the leases) is the source owner's job: Agent subscribes the core first.
//
// Threading: one thread of its own; it calls the thread-safe core. The
// source's listener only queues the change and wakes that thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/metrics.h"
#include "agent/natpmp/codec.h"
#include "agent/natpmp/rate_limiter.h"
#include "agent/natpmp/sources.h"
#include "agent/wan/address_source.h"

namespace fabric::agent::natpmp {

struct ServerConfig {
  std::vector<std::string> lan_interfaces;
  bool pcp = true;  // false: NAT-PMP only (PCP requests get NAT-PMP's
                    // "unsupported version")
  LeasePolicy policy;
  // Per-client request rate: sustained per second (0: unlimited), and
  // burst, raised to at least twice policy.max_per_client (a map and an
  // address request for each lease) so a client can open its whole quota
  // at once, as clients do at start-up.
  double rate_per_second = 10;
  double burst = 20;
  // Clients the rate limiter remembers (least recently heard from go
  // first).
  size_t rate_clients = 4096;
  uint16_t port = kServerPort;
  uint16_t announce_port = kClientPort;
};

class PmpServer {
 public:
  // `wan` (the WAN interface and its address; nullptr: none configured)
  // must outlive the server.
  static absl::StatusOr<std::unique_ptr<PmpServer>> Start(AgentCore* core,
                                                          Metrics* metrics,
                                                          wan::AddressSource* wan,
                                                          ServerConfig config);
  ~PmpServer();

 private:
  PmpServer(AgentCore* core, Metrics* metrics, wan::AddressSource* wan,
            ServerConfig config, int udp, int wake);
  void Run();
  void Receive();
  // Takes the WAN address changes the listener queued; on a change,
  // announces.
  void ApplyWanChanges();
  void SendAnnouncement();
  // Reads the interfaces' addresses again when an event said they changed.
  void RefreshAddresses();
  // Logs a dropped request, at most one line a second (with the count).
  void LogDropped(const std::string& why);
  std::vector<uint8_t> HandlePmp(const uint8_t* data, size_t len,
                                 const nat::IpAddress& client);
  std::vector<uint8_t> HandlePcp(const uint8_t* data, size_t len,
                                 const nat::IpAddress& client);
  void Log(const std::string& op, const nat::IpAddress& client,
           const std::string& outcome, absl::Time start, bool ok);

  AgentCore* core_;
  Metrics* metrics_;
  wan::AddressSource* wan_source_;
  ServerConfig config_;
  int udp_;
  int wake_;  // eventfd: a queued WAN change
  std::unique_ptr<AddressEvents> address_events_;  // null: read every second
  int subscription_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::mutex pending_mu_;
  std::vector<std::optional<nat::IpAddress>> pending_;  // guarded by pending_mu_
  // Server thread only:
  std::optional<nat::IpAddress> wan_;
  int announcements_left_ = 0;
  absl::Duration announce_gap_;
  absl::Time next_announcement_;
  RateLimiter limiter_;
  InterfaceAddresses addresses_;
  bool addresses_stale_ = true;
  absl::Time addresses_read_ = absl::InfinitePast();
  absl::Time last_drop_log_ = absl::InfinitePast();
  int drops_unlogged_ = 0;
};

}  // namespace fabric::agent::natpmp
