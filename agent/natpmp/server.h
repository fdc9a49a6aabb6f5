// PmpServer: the NAT-PMP (RFC 6886) and PCP (RFC 6887) front-end. Answers
// on UDP 5351, only for requests that arrive on a configured LAN interface
// and are not addressed to the WAN address; every mapping goes to the
// requester's own address through AgentCore::Lease (the same allocator,
// store and kernel maps as container ports). Watches the WAN interface's
// address through rtnetlink and announces (NAT-PMP opcode 128 and PCP
// ANNOUNCE to 224.0.0.1:5350, ten times at 250 ms doubling) at start and
// whenever it changes.
//
// Threading: one thread of its own; it calls the thread-safe core.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/metrics.h"
#include "agent/natpmp/codec.h"

namespace fabric::agent::natpmp {

struct ServerConfig {
  std::vector<std::string> lan_interfaces;
  std::string wan_interface;
  bool pcp = true;  // false: NAT-PMP only (PCP requests get NAT-PMP's
                    // "unsupported version")
  LeasePolicy policy;
  // Per-client request rate: sustained per second (0: unlimited), and
  // burst.
  double rate_per_second = 10;
  double burst = 20;
  uint16_t port = kServerPort;
  uint16_t announce_port = kClientPort;
};

class PmpServer {
 public:
  static absl::StatusOr<std::unique_ptr<PmpServer>> Start(AgentCore* core,
                                                          Metrics* metrics,
                                                          ServerConfig config);
  ~PmpServer();

 private:
  PmpServer(AgentCore* core, Metrics* metrics, ServerConfig config, int udp,
            int rtnl);
  void Run();
  void Receive();
  // Re-reads the WAN address; on a change, moves leases and announces.
  void RefreshWanAddress();
  void SendAnnouncement();
  bool Allow(uint32_t client, absl::Time now);
  std::vector<uint8_t> HandlePmp(const uint8_t* data, size_t len,
                                 const nat::IpAddress& client);
  std::vector<uint8_t> HandlePcp(const uint8_t* data, size_t len,
                                 const nat::IpAddress& client);
  void Log(const std::string& op, const nat::IpAddress& client,
           const std::string& outcome, absl::Time start, bool ok);

  AgentCore* core_;
  Metrics* metrics_;
  ServerConfig config_;
  int udp_;
  int rtnl_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  // Server thread only:
  std::optional<nat::IpAddress> wan_;
  int announcements_left_ = 0;
  absl::Duration announce_gap_;
  absl::Time next_announcement_;
  struct Bucket {
    double tokens;
    absl::Time last;
  };
  std::map<uint32_t, Bucket> buckets_;
};

}  // namespace fabric::agent::natpmp
