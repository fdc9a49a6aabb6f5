// The proxy's epoll loop and everything it owns: forwards (their listening
// sockets), TCP connections (two sockets, two splice pipes), UDP flows (a
// connected IPv4 socket each), timers. Proxy (proxy.h) is its public face.
//
// Threading: Run() is the loop thread; it alone touches the loop-owned state
// below. Other threads reach it through the command queue (Serve, Close,
// Stop: guarded by mu_, woken through an eventfd, each waiting until the loop
// has acted) and read the served-forward table and the atomic counters.
//
// Files: loop.cc (commands, timers, forwards, the loop itself), tcp.cc
// (accept, connect, splice), udp.cc (flows).
#pragma once

#include <netinet/in.h>
#include <sys/epoll.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "agent/proxy/proxy.h"
#include "nat/types.h"

namespace fabric::agent::proxy::internal {

struct AtomicCounters {
  std::atomic<uint64_t> connections_accepted{0}, connections_refused{0}, connect_failures{0},
      active_connections{0}, udp_flows_created{0}, udp_flows_refused{0}, udp_flows_expired{0},
      active_udp_flows{0}, bytes_to_target{0}, bytes_to_client{0};
  ProxyCounters Snapshot() const;
};

// What an epoll event's data.ptr points at.
struct Handler {
  enum class Kind : uint8_t { kWake, kTcpListen, kUdpListen, kTcpSide, kUdpFlow };
  explicit Handler(Kind k) : kind(k) {}
  Kind kind;
  int fd = -1;
  uint32_t interest = 0;  // events registered; meaningful while registered
  bool registered = false;
};

struct Forward;

// One listening socket: one port of a forward's range.
struct PortSocket : Handler {
  PortSocket(Handler::Kind k, Forward* f, uint16_t port)
      : Handler(k), forward(f), target_port(port) {}
  Forward* forward;
  uint16_t target_port;  // the target port this socket's port maps to
};

struct TcpConn;
struct TcpSide : Handler {
  TcpSide() : Handler(Kind::kTcpSide) {}
  TcpConn* conn = nullptr;
};

// A splice pipe and the bytes sitting in it.
struct Pipe {
  int r = -1, w = -1;
  size_t bytes = 0;
  // The last splice in would not go while bytes were in: full (a pipe's
  // slots can fill before its bytes do, one per socket buffer fragment).
  bool full = false;
};

struct TcpConn {
  uint64_t id = 0;
  Forward* forward = nullptr;
  nat::IpAddress client_ip;
  TcpSide client, target;
  Pipe up;    // client -> target
  Pipe down;  // target -> client
  bool connecting = true;
  bool client_eof = false, target_eof = false;    // read side saw EOF
  bool target_shut = false, client_shut = false;  // we sent FIN that way
  bool closed = false;
};

// A UDP flow's identity: the listening socket and the client's address.
struct FlowKey {
  const PortSocket* socket;
  std::array<uint8_t, 16> addr;
  uint16_t port;
  uint32_t scope;
  friend bool operator==(const FlowKey& a, const FlowKey& b) {
    return a.socket == b.socket && a.addr == b.addr && a.port == b.port && a.scope == b.scope;
  }
  template <typename H>
  friend H AbslHashValue(H h, const FlowKey& k) {
    return H::combine(std::move(h), k.socket, k.addr, k.port, k.scope);
  }
};

struct UdpFlow : Handler {
  UdpFlow() : Handler(Kind::kUdpFlow) {}
  uint64_t id = 0;
  Forward* forward = nullptr;
  PortSocket* listen = nullptr;
  FlowKey key{};
  nat::IpAddress client_ip;
  sockaddr_in6 client{};
  in6_pktinfo local{};  // the address (and interface) the client sent to
  int64_t last_active_ns = 0;
  bool closed = false;
};

struct Forward {
  ProxySpec spec;
  std::vector<std::unique_ptr<PortSocket>> sockets;
  absl::flat_hash_set<uint64_t> members;  // its TCP connections or UDP flows
  std::shared_ptr<AtomicCounters> counters;
  bool closed = false;
};

class Loop {
 public:
  static absl::StatusOr<std::unique_ptr<Loop>> Create(const ProxyOptions& options);
  ~Loop();  // closes everything; REQUIRES: Run() has returned or never ran

  // The loop thread's body; returns after Stop().
  void Run();

  // From any other thread; see Proxy.
  void Serve(std::unique_ptr<Listener> listener);
  bool Close(const ForwardKey& key);
  void Stop();

  // Duplicates of the sockets of the served forward with `spec`'s key when
  // its port range is the same; nullopt otherwise.
  std::optional<std::vector<int>> DupServed(const ProxySpec& spec) const;
  // The served forward whose range holds `port` on an overlapping address
  // for `protocol` ("forward 'web' (tcp [::]:8080 -> 10.0.0.5:80)"), or "".
  std::string DescribeHolder(nat::Protocol protocol, const nat::IpAddress& ip, uint16_t port) const;
  std::vector<ForwardKey> Keys() const;
  std::optional<ProxyCounters> ForwardCounters(const ForwardKey& key) const;
  const AtomicCounters& totals() const { return totals_; }

 private:
  struct Command {
    enum class Kind { kServe, kClose, kStop } kind;
    std::unique_ptr<Listener> listener;
    ForwardKey key;
    std::shared_ptr<AtomicCounters> counters;
    uint64_t seq = 0;
  };
  struct Served {
    ProxySpec spec;
    std::vector<int> fds;
    std::shared_ptr<AtomicCounters> counters;
  };
  enum class TimerKind : uint8_t { kConnect, kUdpIdle, kRearm };
  struct Timer {
    int64_t when_ns;
    uint64_t id;
    TimerKind kind;
    friend bool operator>(const Timer& a, const Timer& b) { return a.when_ns > b.when_ns; }
  };

  Loop(const ProxyOptions& options, int epfd, int wakefd);

  // --- control (loop.cc)
  void Submit(Command command);  // any thread: queue, wake, wait until done
  void RunCommands();            // loop thread
  void AddForward(std::unique_ptr<Listener> listener, std::shared_ptr<AtomicCounters> counters);
  void RemoveForward(const ForwardKey& key);
  void DestroyForward(Forward* forward);
  void RunTimers(int64_t now);
  int TimeoutMs(int64_t now) const;
  void AddTimer(int64_t when_ns, uint64_t id, TimerKind kind);
  // Sets `h`'s epoll interest (0 removes it from epoll).
  void SetInterest(Handler* h, uint32_t events);
  void PauseListener(PortSocket* socket);  // out of descriptors: retry later
  static int64_t Now();

  // --- TCP (tcp.cc)
  void OnTcpAccept(PortSocket* socket);
  void OnTcpSide(TcpSide* side, uint32_t events);
  void OnConnected(TcpConn* conn);
  // Moves what it can both ways; closes the connection when both ways are
  // done or on an error. False when it closed the connection.
  bool Pump(TcpConn* conn);
  void UpdateTcpInterest(TcpConn* conn);
  void CloseConn(TcpConn* conn, bool reset);
  void OnConnectTimeout(uint64_t id);

  // --- UDP (udp.cc)
  void OnUdpListen(PortSocket* socket);
  void OnUdpFlow(UdpFlow* flow);
  UdpFlow* NewFlow(PortSocket* socket, const sockaddr_in6& from);
  void CloseFlow(UdpFlow* flow);
  void OnUdpIdle(uint64_t id, int64_t now);

  const ProxyOptions options_;
  const int epfd_;
  Handler wake_;  // the eventfd
  AtomicCounters totals_;

  // Guarded by mu_.
  mutable std::mutex mu_;
  std::condition_variable done_cv_;
  std::deque<Command> commands_;
  uint64_t next_seq_ = 1;
  uint64_t done_seq_ = 0;
  bool stopped_ = false;
  std::map<ForwardKey, Served> served_;

  // Loop thread only.
  bool stop_ = false;
  std::map<ForwardKey, std::unique_ptr<Forward>> forwards_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<TcpConn>> conns_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<UdpFlow>> flows_;
  absl::flat_hash_map<FlowKey, UdpFlow*> flow_index_;
  absl::flat_hash_map<nat::IpAddress, int> tcp_per_client_, udp_per_client_;
  uint64_t next_id_ = 1;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  std::vector<PortSocket*> paused_;
  // Closed this batch; freed after it, since later events of the same
  // epoll_wait may still point at them.
  std::vector<std::unique_ptr<TcpConn>> dead_conns_;
  std::vector<std::unique_ptr<UdpFlow>> dead_flows_;
  std::vector<std::unique_ptr<Forward>> dead_forwards_;
  std::vector<char> datagram_;  // one datagram at a time, 64 KiB
};

}  // namespace fabric::agent::proxy::internal
