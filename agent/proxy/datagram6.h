// IPv6 UDP datagrams with their local address: ReceiveWithInfo6 reports the
// address (and interface) a datagram was sent to (IPV6_RECVPKTINFO), and
// SendWithInfo6 answers from that address (IPV6_PKTINFO), so a socket bound
// to :: replies from the address the client spoke to. The IPv6 counterpart
// of agent/natpmp/sources.h's IPv4 pair. Used by the proxy's UDP flows.
//
// Thread-compatible (plain functions on a caller's socket).
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <optional>

#include "absl/status/status.h"

namespace fabric::agent::proxy {

// Turns IPV6_RECVPKTINFO on for `fd` (an AF_INET6 datagram socket).
absl::Status EnablePacketInfo6(int fd);

struct Datagram6 {
  size_t length = 0;  // bytes received (the buffer holds them)
  bool truncated = false;
  sockaddr_in6 from{};
  in6_pktinfo to{};  // zero when the kernel gave none
};

// One datagram, without blocking. nullopt when none is waiting or on an
// error (which is consumed).
std::optional<Datagram6> ReceiveWithInfo6(int fd, void* buf, size_t capacity);

// Sends `len` bytes to `to` from `from.ipi6_addr` (the socket's own address
// when unspecified or multicast) on `from.ipi6_ifindex` (any when 0),
// without blocking. True when it was sent whole.
bool SendWithInfo6(int fd, const void* data, size_t len, const sockaddr_in6& to,
                   const in6_pktinfo& from);

}  // namespace fabric::agent::proxy
