// The agent's IPv6-to-IPv4 proxy (issue 12, item 4). The kernel cannot NAT
// between address families, so a static forward whose host side is IPv6 and
// whose target is IPv4 ("[::]:8080 -> 192.168.1.100:80") is served here, in
// user space: TCP through splice(2) (a pipe per direction, no user-space
// buffer), UDP through a flow table (one connected IPv4 socket per client
// address and port) with idle expiry.
//
// One epoll thread serves every forward, every connection and every flow; no
// thread or process per port or connection. Connections and flows are
// bounded per forward, per client address and in total; one over a bound is
// refused (a TCP connection is reset, a datagram dropped) and counted.
//
// Use (the static-forward owner, inside a transaction):
//   Bind(spec)   -> a Listener: sockets bound and listening, not served yet.
//                   A failure (port in use, address not on the host) fails
//                   the transaction with nothing open.
//   commit       -> Serve(std::move(listener)): the loop accepts from now on.
//   rollback     -> drop the Listener: its sockets close.
//   removal      -> Close(key) after the commit: accepting stops, the live
//                   connections and flows close, the port is free on return.
// Bind of a key this proxy already serves with the same port range duplicates
// the served sockets instead of binding again, so a forward can be
// re-targeted inside a transaction: Serve of the new Listener replaces the
// old forward (its connections close), dropping it keeps the old one.
//
// Namespaces: sockets are opened in the network namespace of the thread that
// calls Bind (listeners) and of the thread that called Start (connections to
// targets, made by the loop thread, which inherits it).
//
// A bound TCP Listener already listens: connections arriving before Serve
// wait in the kernel's backlog (and are reset if the Listener is dropped).
// The loop thread blocks SIGPIPE for itself (splice has no MSG_NOSIGNAL);
// the process's own disposition is not touched.
//
// Thread-safe: every public method may be called from any thread except the
// loop's own. Serve and Close return once the loop has acted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nat/types.h"

namespace fabric::agent::proxy {

// One forward: listen_ip:[listen_port, listen_port + port_count) over
// `protocol` to target_ip:[target_port, ...), port N of the range to port N
// of the target range, as DNAT ranges do.
struct ProxySpec {
  nat::Protocol protocol = nat::Protocol::kTcp;                          // kTcp or kUdp
  nat::IpAddress listen_ip = nat::IpAddress::AnyOf(nat::Family::kIPv6);  // IPv6, may be ::
  uint16_t listen_port = 0;
  uint16_t port_count = 1;
  nat::IpAddress target_ip;  // IPv4
  uint16_t target_port = 0;
  std::string name;  // for messages: the forward's name in its file

  // "tcp [::]:8080 -> 192.168.1.100:80", "udp [2001:db8::1]:7000-7009 ->
  // 10.0.0.5:7000-7009".
  std::string ToString() const;
};

// What identifies a served forward: its listening side.
struct ForwardKey {
  nat::Protocol protocol = nat::Protocol::kTcp;
  nat::IpAddress listen_ip;
  uint16_t listen_port = 0;

  static ForwardKey Of(const ProxySpec& spec) {
    return {spec.protocol, spec.listen_ip, spec.listen_port};
  }
  std::string ToString() const;  // "tcp [::]:8080"
  friend bool operator<(const ForwardKey& a, const ForwardKey& b) {
    return std::tie(a.protocol, a.listen_ip, a.listen_port) <
           std::tie(b.protocol, b.listen_ip, b.listen_port);
  }
  friend bool operator==(const ForwardKey& a, const ForwardKey& b) {
    return a.protocol == b.protocol && a.listen_ip == b.listen_ip && a.listen_port == b.listen_port;
  }
};

struct ProxyOptions {
  // TCP connections open at once: per forward, per client address (over all
  // forwards), in total.
  int max_connections_per_forward = 1024;
  int max_connections_per_client = 256;
  int max_connections = 16384;
  // UDP flows (client address and port) at once, the same way.
  int max_udp_flows_per_forward = 1024;
  int max_udp_flows_per_client = 256;
  int max_udp_flows = 16384;
  // A flow with no datagram either way for this long is removed.
  absl::Duration udp_idle_timeout = absl::Seconds(60);
  // A target that has not accepted the connection by then: the client's
  // connection is reset.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Bytes each splice pipe holds (F_SETPIPE_SZ; the kernel rounds up to
  // pages). Two pipes per connection.
  int pipe_size = 64 * 1024;
  // Ports one forward may span (a socket each).
  int max_ports_per_forward = 1024;
};

// Counters, totals since Start (or the forward's Serve); active_* are gauges.
struct ProxyCounters {
  uint64_t connections_accepted = 0;  // TCP, accepted and sent on to the target
  uint64_t connections_refused = 0;   // TCP, reset because of a limit
  uint64_t connect_failures = 0;      // TCP, target refused or timed out
  uint64_t active_connections = 0;
  uint64_t udp_flows_created = 0;
  uint64_t udp_flows_refused = 0;  // datagrams dropped because of a flow limit
  uint64_t udp_flows_expired = 0;
  uint64_t active_udp_flows = 0;
  uint64_t bytes_to_target = 0;  // TCP and UDP payload, client -> target
  uint64_t bytes_to_client = 0;  // target -> client
};

// Raises RLIMIT_NOFILE's soft limit to at least `want` (up to the hard
// limit); each TCP connection holds six descriptors (two sockets, two
// pipes). kFailedPrecondition when the hard limit is lower (the soft limit
// is then raised to the hard one). For the owner's
// wiring; the proxy never changes process limits itself.
absl::Status RaiseOpenFileLimit(uint64_t want);

namespace internal {
class Loop;
}

// Sockets bound for one forward and not served yet. Made by Proxy::Bind;
// destroying one that was not handed to Serve closes its sockets.
// Thread-compatible.
class Listener {
 public:
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  const ProxySpec& spec() const { return spec_; }
  ForwardKey key() const { return ForwardKey::Of(spec_); }
  // One socket per port of the range, in port order.
  const std::vector<int>& fds() const { return fds_; }

 private:
  friend class Proxy;
  friend class internal::Loop;
  Listener(ProxySpec spec, std::vector<int> fds) : spec_(std::move(spec)), fds_(std::move(fds)) {}
  // Hands the sockets over (to the loop): the Listener closes nothing then.
  std::vector<int> Release() { return std::move(fds_); }

  ProxySpec spec_;
  std::vector<int> fds_;
};

class Proxy {
 public:
  // Starts the loop thread in the calling thread's network namespace.
  // kInternal when epoll/eventfd/the thread cannot be made; kInvalidArgument
  // for non-positive limits.
  static absl::StatusOr<std::unique_ptr<Proxy>> Start(ProxyOptions options = {});
  // Stops the loop and closes every forward, connection and flow.
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Opens, binds (IPV6_V6ONLY, SO_REUSEADDR for TCP) and (TCP) listens on
  // every port of `spec`; nothing is served until Serve.
  // kInvalidArgument: not TCP/UDP, listen_ip not IPv6 (or IPv4-mapped),
  // target_ip not IPv4, a port 0 or a range past 65535 or wider than
  // max_ports_per_forward. kAlreadyExists: a port is in use (the message
  // names this proxy's forward when it is one of ours). kFailedPrecondition:
  // listen_ip is not an address of this host. kPermissionDenied,
  // kResourceExhausted (out of descriptors), kInternal otherwise. On error
  // nothing stays open.
  absl::StatusOr<std::unique_ptr<Listener>> Bind(const ProxySpec& spec);

  // Serves `listener` from now on, replacing (and closing, with its
  // connections) a forward with the same key. Returns when the loop serves it.
  void Serve(std::unique_ptr<Listener> listener);

  // Stops serving `key`: its sockets, connections and flows are closed when
  // this returns. False when no such forward is served.
  bool Close(const ForwardKey& key);

  // Keys of the served forwards.
  std::vector<ForwardKey> Forwards() const;

  ProxyCounters counters() const;
  // One served forward's counters; nullopt when it is not served.
  std::optional<ProxyCounters> ForwardCounters(const ForwardKey& key) const;

  const ProxyOptions& options() const { return options_; }

 private:
  explicit Proxy(ProxyOptions options);

  ProxyOptions options_;
  std::unique_ptr<internal::Loop> loop_;
  std::thread thread_;
};

}  // namespace fabric::agent::proxy
