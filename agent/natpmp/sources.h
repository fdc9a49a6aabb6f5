// Which NAT-PMP/PCP requests come from a LAN host that may be answered.
// A request's source must be inside a subnet configured on the LAN
// interface it arrived on (not that subnet's network or broadcast address)
// and must not be one of the host's own addresses (except on a loopback
// interface, where only the host itself can send). Anything else can only
// be spoofed or off-link, and is dropped without an answer, so the server
// cannot be used to reflect traffic at a third party. (Container networks
// and other owners' mapping targets are refused later, with
// NOT_AUTHORIZED, by the lease logic: agent/owners/leases.h.)
//
// InterfaceAddresses is a snapshot of the host's IPv4 addresses, read with
// getifaddrs; AddressEvents tells when to read it again (rtnetlink address
// and link events). Used by PmpServer on its own thread.
//
// Thread-compatible.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nat/types.h"

namespace fabric::agent::natpmp {

struct InterfaceAddresses {
  // Interface name -> its IPv4 addresses with their prefix lengths.
  std::map<std::string, std::vector<nat::Prefix>> subnets;
  // The same for IPv6 (link-local ones included), for the UPnP front-end.
  std::map<std::string, std::vector<nat::Prefix>> subnets6;
  std::set<std::string> loopback;  // interfaces with IFF_LOOPBACK
  std::set<nat::IpAddress> own;    // every IPv4 and IPv6 address of the host

  // The host's addresses now (getifaddrs).
  static absl::StatusOr<InterfaceAddresses> Read();
};

// Why a request from `source` that arrived on `interface` is dropped, or
// nullopt when it may be served. An IPv6 source must lie inside one of the
// interface's IPv6 prefixes.
std::optional<std::string> RefusedSource(const InterfaceAddresses& addresses,
                                         const std::string& interface,
                                         const nat::IpAddress& source);

// One datagram from a UDP socket with IP_PKTINFO on, without blocking:
// its length as received (larger than the buffer when truncated: MSG_TRUNC
// is not passed, so it is the buffer's size then), flags, source and
// arrival interface and address.
struct Datagram {
  size_t length = 0;
  bool truncated = false;
  sockaddr_in from{};
  in_pktinfo info{};
};
// nullopt when nothing is waiting, or for a datagram without IPv4 packet
// info (which is consumed).
std::optional<Datagram> ReceiveWithInfo(int fd, void* buf, size_t capacity);

// Sends `len` bytes to `to` from local address `from` on interface
// `ifindex` (IP_PKTINFO), with sendmsg `flags`. True when all was sent.
bool SendWithInfo(int fd, const void* data, size_t len, const sockaddr_in& to, int ifindex,
                  in_addr from, int flags = 0);

// An rtnetlink socket subscribed to IPv4 address and link changes: poll
// fd() for POLLIN, then Drain(), which says whether anything changed (or
// messages were lost) so the addresses must be read again.
class AddressEvents {
 public:
  // kUnavailable when the socket cannot be opened.
  static absl::StatusOr<AddressEvents> Open();
  AddressEvents(AddressEvents&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  AddressEvents& operator=(AddressEvents&&) = delete;
  ~AddressEvents();
  int fd() const { return fd_; }
  bool Drain();

 private:
  explicit AddressEvents(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace fabric::agent::natpmp
