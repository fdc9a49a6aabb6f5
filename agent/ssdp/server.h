// SsdpServer: SSDP discovery (UPnP Device Architecture 1.1, section 1) for
// the UPnP IGD front-end. The description and control (HTTP/SOAP) are
// served elsewhere, at LOCATION = http://<LAN address>:<http_port><path>.
//
// One UDP socket on 0.0.0.0:port (SO_REUSEADDR, IP_PKTINFO), joined to the
// group (239.255.255.250) on each LAN interface by index; multicast loop
// off, TTL 2. Interfaces that do not exist yet are joined when they
// appear (the addresses are read again on every rtnetlink address or link
// event, or every second without rtnetlink).
//
// Searches: only an M-SEARCH that arrives on a LAN interface, sent to the
// group or to an address of that interface, from a source inside a subnet of that
// interface (natpmp::RefusedSource: not our own address, not the network
// or broadcast address) is served; anything else is dropped silently and
// counted, so the server never answers the WAN side and never answers a
// spoofed or off-link source. Each source is rate limited (token bucket)
// and so is the total. Answers go unicast to the source, from the address
// of the arrival interface in the source's subnet, which is also the
// LOCATION host: for a multicast search each after its own random delay in
// [0, min(MX, max_delay)], for a unicast one at once (UDA 1.1 1.3.3: MX is
// ignored). Waiting answers are bounded (AnswerQueue: in all and per
// source); what does not fit is dropped and counted, so a flood grows
// neither memory nor the answer stream.
//
// Advertisements: at start ssdp:byebye for every advertisement
// (WANIPConnection:2 asks IGDs to clear stale control-point caches
// before the first alive), then ssdp:alive `initial_announcements` times
// `announce_gap` apart, then every `notify_interval`; again (the initial
// burst) whenever a LAN interface gains an address. They go to the group on
// every LAN interface from each of its IPv4 addresses (IP_MULTICAST_IF
// and IP_PKTINFO), LOCATION naming that address. The destructor sends
// ssdp:byebye for every advertisement on every LAN interface before the
// socket closes.
//
// Threading: one thread of its own (poll over the socket, an eventfd that
// stops it and the rtnetlink socket; timers for answers and
// announcements); no thread per request. counters() is thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/natpmp/rate_limiter.h"
#include "agent/natpmp/sources.h"
#include "agent/ssdp/answer_queue.h"
#include "agent/ssdp/message.h"
#include "nat/types.h"

struct sockaddr_in;

namespace fabric::agent::ssdp {

struct ServerConfig {
  std::vector<std::string> lan_interfaces;  // required
  uint16_t http_port = 0;                   // required: LOCATION's port
  std::string description_path = "/rootDesc.xml";
  Device device;  // required, e.g. InternetGatewayDevice(root uuid)
  absl::Duration notify_interval = absl::Seconds(900);  // < max_age
  uint32_t max_age = 1800;                              // CACHE-CONTROL
  uint16_t port = kSsdpPort;
  std::string multicast_group = kMulticastGroup;
  uint32_t boot_id = 1;  // BOOTID.UPNP.ORG; <= kMaxBootId
  uint32_t config_id = 1;  // CONFIGID.UPNP.ORG; <= kMaxConfigId
  int ttl = 2;  // multicast TTL (UDA 1.1 default: 2)
  // SERVER is ServerString(uname release, version) unless `server` is set.
  // Pass fabric::kVersion (agent/version.h) as `version`.
  std::string version = "dev";
  std::string server;
  int initial_announcements = 3;
  absl::Duration announce_gap = absl::Milliseconds(200);
  // A multicast search's answers are spread over min(MX, max_delay).
  absl::Duration max_delay = absl::Seconds(5);
  size_t max_pending = 1024;           // answers waiting, in all
  size_t max_pending_per_client = 64;  // answers waiting for one source
  // M-SEARCHes a second per source (burst: at once), and in all; rate 0:
  // unlimited.
  double queries_per_second = 2;
  double query_burst = 10;
  size_t rate_clients = 1024;  // sources the per-source limiter remembers
  double total_queries_per_second = 100;
  double total_query_burst = 200;
};

// Monotonic counts since Start, for metrics.
struct Counters {
  uint64_t queries_answered = 0;   // M-SEARCHes with at least one answer queued
  uint64_t queries_unmatched = 0;  // valid M-SEARCHes for an ST we do not have
  // Dropped without an answer, by reason:
  uint64_t ignored_interface = 0;  // not a LAN interface, or not sent to the
                                   // group or an address of that interface
  uint64_t ignored_source = 0;     // source outside the interface's subnets
  uint64_t ignored_other = 0;      // not an M-SEARCH (NOTIFY, responses)
  uint64_t malformed = 0;          // a broken M-SEARCH
  uint64_t rate_limited = 0;
  uint64_t answers_sent = 0;
  uint64_t answers_dropped = 0;  // not queued: a bound was full
  uint64_t send_errors = 0;      // sendmsg failed (answers and NOTIFYs)
  uint64_t notifies_sent = 0;    // NOTIFY datagrams, alive and byebye

  uint64_t ignored() const {
    return ignored_interface + ignored_source + ignored_other + malformed + rate_limited;
  }
};

class SsdpServer {
 public:
  // kInvalidArgument for a bad config (the message names the field),
  // kUnavailable when the socket cannot be set up (e.g. the port is taken
  // without SO_REUSEADDR).
  static absl::StatusOr<std::unique_ptr<SsdpServer>> Start(ServerConfig config);
  // Stops the thread, sends ssdp:byebye, closes the socket.
  ~SsdpServer();

  Counters counters() const;

 private:
  struct Lan {
    std::string name;
    int ifindex = 0;  // 0: does not exist (now)
    std::vector<nat::Prefix> addresses;
  };
  SsdpServer(ServerConfig config, std::string server, uint32_t group, int udp, int wake);
  void Run();
  void Receive();
  void Handle(const char* data, size_t len, bool truncated, const sockaddr_in& from,
              int ifindex, uint32_t dst);
  void SendDue();
  // Reads the addresses again when stale; joins the group on interfaces
  // that appeared; true when a LAN interface gained an address.
  bool RefreshAddresses();
  void Announce(NotifyKind kind);
  bool SendTo(const std::string& datagram, uint32_t to_addr, uint16_t to_port, int ifindex,
              uint32_t from_addr);
  // Logs a malformed search, at most one line a second (with the count).
  void LogMalformed(const std::string& why);
  std::string Location(const nat::IpAddress& address) const;

  const ServerConfig config_;
  const std::string server_;  // the SERVER header
  const uint32_t group_;      // network byte order
  const std::string host_;    // NOTIFY's HOST: "<group>:<port>"
  const std::vector<Answer> advertisements_;
  int udp_;
  int wake_;
  std::unique_ptr<natpmp::AddressEvents> address_events_;  // null: read every second
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  // Server thread only (and the constructor, before it starts):
  std::vector<Lan> lans_;
  natpmp::InterfaceAddresses addresses_;
  bool addresses_stale_ = true;
  absl::Time addresses_read_ = absl::InfinitePast();
  absl::Time retry_read_ = absl::InfinitePast();  // after a failed read
  AnswerQueue queue_;
  natpmp::RateLimiter per_client_;
  natpmp::RateLimiter total_;
  absl::BitGen random_;
  int burst_left_ = 0;
  absl::Time next_notify_;
  absl::Time last_malformed_log_ = absl::InfinitePast();
  int malformed_unlogged_ = 0;

  struct AtomicCounters {
    std::atomic<uint64_t> queries_answered{0}, queries_unmatched{0}, ignored_interface{0},
        ignored_source{0}, ignored_other{0}, malformed{0}, rate_limited{0}, answers_sent{0},
        answers_dropped{0}, send_errors{0}, notifies_sent{0};
  };
  AtomicCounters counters_;
};

}  // namespace fabric::agent::ssdp
