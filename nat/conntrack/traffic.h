// TrafficAccounting: how many bytes and packets went through each DNAT
// translation, from the kernel's connection tracking. NAT rules see only a
// connection's first packet (their counters count connections); the bytes
// live in conntrack's accounting extension (net.netfilter.nf_conntrack_acct,
// per network namespace, which the agent turns on at start: see
// agent/agent.cc).
//
// Two sources, summed by Read():
//   - ended connections: a thread listens to conntrack destroy events
//     (NFNLGRP_CONNTRACK_DESTROY), which carry each connection's final
//     counters, and adds those of DNAT'd connections to a table kept here
//     (since Start; bounded by Options::max_keys);
//   - open connections: one dump of the conntrack table per family, at the
//     time of Read().
// Keys are the original destination (address, protocol, port) and the
// reply's source (the DNAT target), so that the agent can add them up per
// mapping (agent/operator_http.cc: TrafficOf). Counters of connections
// created while accounting was off are zero; their connections still count.
//
// A destroy event the kernel could not queue (the socket's buffer overran)
// is lost: lost_events() counts the overruns, and their bytes are missing.
//
// Everything runs in the network namespace of the thread that called
// Start. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>

#include "absl/status/statusor.h"
#include "nat/types.h"

struct mnl_socket;

namespace fabric::nat {

namespace ctnetlink {
struct Flow;
}
namespace netlink {
class NetlinkSocket;
}

// A DNAT translation: traffic to dst:dst_port/l4proto went to target:target_port.
struct FlowKey {
  Family family = Family::kIPv4;
  uint8_t l4proto = 0;
  uint16_t dst_port = 0;
  IpAddress dst;
  IpAddress target;
  uint16_t target_port = 0;

  auto tie() const { return std::tie(family, l4proto, dst_port, dst, target, target_port); }
  friend bool operator<(const FlowKey& a, const FlowKey& b) { return a.tie() < b.tie(); }
  friend bool operator==(const FlowKey& a, const FlowKey& b) { return a.tie() == b.tie(); }
};

struct Traffic {
  uint64_t open = 0;   // connections open at the time of the read
  uint64_t ended = 0;  // connections that ended since Start
  uint64_t packets = 0, bytes = 0;  // both directions, open and ended

  Traffic& operator+=(const Traffic& o) {
    open += o.open;
    ended += o.ended;
    packets += o.packets;
    bytes += o.bytes;
    return *this;
  }
};

// Ordered by family, protocol and original destination port first, so that
// a mapping's ports are one range of keys.
using TrafficTable = std::map<FlowKey, Traffic>;

class TrafficAccounting {
 public:
  struct Options {
    // Keys of ended connections kept; events for further keys are counted
    // in dropped_keys() and not added.
    size_t max_keys = 1 << 16;
  };

  // Subscribes to destroy events and opens the dump socket, both in the
  // calling thread's network namespace, and starts the event thread.
  // kPermissionDenied without CAP_NET_ADMIN; kUnavailable when the kernel
  // has no ctnetlink.
  static absl::StatusOr<std::unique_ptr<TrafficAccounting>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<TrafficAccounting>> Start() { return Start(Options{}); }
  ~TrafficAccounting();  // stops the thread

  TrafficAccounting(const TrafficAccounting&) = delete;
  TrafficAccounting& operator=(const TrafficAccounting&) = delete;

  // The ended connections' totals plus one dump of the open ones (both
  // families). The dump walks the whole conntrack table: milliseconds per
  // 10k entries. kUnavailable when the dump fails.
  absl::StatusOr<TrafficTable> Read();

  // Forgets the ended totals of keys `keep` says no longer matter (mappings
  // that went), bounding the table to what is published.
  template <typename Keep>
  void Retain(Keep keep) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = ended_.begin(); it != ended_.end();) {
      it = keep(it->first) ? std::next(it) : ended_.erase(it);
    }
  }

  uint64_t events() const { return events_.load(); }        // destroy events of DNAT'd flows
  uint64_t lost_events() const { return lost_.load(); }     // buffer overruns
  uint64_t dropped_keys() const { return dropped_.load(); } // beyond max_keys

 private:
  TrafficAccounting() = default;
  void Run();
  void Add(const ctnetlink::Flow& f);

  Options options_;
  mnl_socket* events_socket_ = nullptr;
  int stop_fd_ = -1;
  std::thread thread_;
  std::mutex dump_mu_;  // guards dumper_
  std::unique_ptr<netlink::NetlinkSocket> dumper_;
  std::mutex mu_;  // guards ended_
  TrafficTable ended_;
  std::atomic<uint64_t> events_{0}, lost_{0}, dropped_{0};
};

// The key of a DNAT'd flow (dump reply or destroy event); nullopt when it
// was not DNAT'd.
std::optional<FlowKey> KeyOf(const ctnetlink::Flow& f);

}  // namespace fabric::nat
