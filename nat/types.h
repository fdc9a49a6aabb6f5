// Value types shared by every part of Fabric NAT: protocols, addresses,
// prefixes, user-level port mappings, and the kernel-level elements a ruleset
// is made of.
//
// Everything here is a plain value: copyable, comparable, hashable, and
// thread-compatible. No I/O.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::nat {

// Transport protocol; the values are IANA protocol numbers (what the kernel's
// meta l4proto holds).
enum class Protocol : uint8_t { kTcp = 6, kUdp = 17, kSctp = 132 };

inline constexpr Protocol kAllProtocols[] = {Protocol::kTcp, Protocol::kUdp,
                                             Protocol::kSctp};

// "tcp", "udp", "sctp".
absl::string_view ProtocolName(Protocol protocol);
// Case-insensitive "tcp"/"udp"/"sctp". kInvalidArgument otherwise.
absl::StatusOr<Protocol> ParseProtocol(absl::string_view name);

enum class Family : uint8_t { kIPv4 = 4, kIPv6 = 6 };
absl::string_view FamilyName(Family family);  // "ipv4", "ipv6"

// An IPv4 or IPv6 address, stored in network byte order.
class IpAddress {
 public:
  // 0.0.0.0.
  IpAddress() = default;
  // Parses a literal ("10.0.0.1", "fd00::1"). kInvalidArgument otherwise.
  static absl::StatusOr<IpAddress> Parse(absl::string_view text);
  // From raw network-order bytes: 4 for IPv4, 16 for IPv6.
  static IpAddress FromBytes(Family family, const uint8_t* bytes);
  static IpAddress AnyOf(Family family);  // 0.0.0.0 or ::

  Family family() const { return family_; }
  // 4 or 16.
  size_t size() const { return family_ == Family::kIPv4 ? 4 : 16; }
  const uint8_t* bytes() const { return bytes_.data(); }
  bool is_v4() const { return family_ == Family::kIPv4; }
  bool IsUnspecified() const;
  bool IsLoopback() const;
  // 224.0.0.0/4 or ff00::/8.
  bool IsMulticast() const;
  // 255.255.255.255 (IPv4 only).
  bool IsLimitedBroadcast() const;
  std::string ToString() const;

  friend bool operator==(const IpAddress& a, const IpAddress& b) {
    return a.family_ == b.family_ && a.bytes_ == b.bytes_;
  }
  friend bool operator!=(const IpAddress& a, const IpAddress& b) {
    return !(a == b);
  }
  friend bool operator<(const IpAddress& a, const IpAddress& b) {
    return std::tie(a.family_, a.bytes_) < std::tie(b.family_, b.bytes_);
  }
  template <typename H>
  friend H AbslHashValue(H h, const IpAddress& a) {
    return H::combine(std::move(h), a.family_, a.bytes_);
  }

 private:
  Family family_ = Family::kIPv4;
  std::array<uint8_t, 16> bytes_{};
};

// An address with a prefix length ("10.22.0.5/16"). The address keeps its
// host bits; Network() clears them.
struct Prefix {
  IpAddress address;
  int length = 0;

  // "10.22.0.5/16", "fd00::5/64". A bare address gets the full length.
  static absl::StatusOr<Prefix> Parse(absl::string_view text);
  Family family() const { return address.family(); }
  // The prefix with host bits cleared: 10.22.0.0/16.
  Prefix Network() const;
  // The highest address in the prefix: 10.22.255.255.
  IpAddress Last() const;
  bool Contains(const IpAddress& a) const;
  std::string ToString() const;

  friend bool operator==(const Prefix& a, const Prefix& b) {
    return a.address == b.address && a.length == b.length;
  }
  friend bool operator<(const Prefix& a, const Prefix& b) {
    return std::tie(a.address, a.length) < std::tie(b.address, b.length);
  }
};

// One DNAT entry as the kernel holds it: traffic to host_ip (or any local
// address) : host ports [port_lo, port_hi] / protocol goes to target_ip.
// A single port (port_lo == port_hi) carries target_port; a range keeps the
// destination port (host port N goes to target port N), so target_port is 0.
struct DnatElement {
  Family family = Family::kIPv4;
  Protocol protocol = Protocol::kTcp;
  std::optional<IpAddress> host_ip;  // nullopt: any local address
  uint16_t port_lo = 0;
  uint16_t port_hi = 0;
  IpAddress target_ip;
  uint16_t target_port = 0;

  bool is_range() const { return port_lo != port_hi; }
  // "tcp 0.0.0.0:8080 -> 10.22.0.5:80", "udp [fd00::1]:7000-7010 -> [fd00::5]".
  std::string ToString() const;

  auto tie() const {
    return std::tie(family, protocol, host_ip, port_lo, port_hi, target_ip,
                    target_port);
  }
  friend bool operator==(const DnatElement& a, const DnatElement& b) {
    return a.tie() == b.tie();
  }
  friend bool operator<(const DnatElement& a, const DnatElement& b) {
    return a.tie() < b.tie();
  }
};

// An inbound IPv6 allowance through the agent's IPv6 firewall (UPnP
// WANIPv6FirewallControl): new connections arriving on a firewalled WAN
// interface for `internal`:`port`/`protocol`, from `remote` only when set,
// pass; others are dropped. Protocol TCP or UDP.
struct Pinhole {
  IpAddress internal;
  Protocol protocol = Protocol::kTcp;
  uint16_t port = 0;
  std::optional<IpAddress> remote;  // nullopt: any remote host

  // "tcp [2001:db8::5]:80 from any", "udp [2001:db8::5]:53 from 2001:db8:9::1".
  std::string ToString() const;
  auto tie() const { return std::tie(internal, protocol, port, remote); }
  friend bool operator==(const Pinhole& a, const Pinhole& b) { return a.tie() == b.tie(); }
  friend bool operator<(const Pinhole& a, const Pinhole& b) { return a.tie() < b.tie(); }
};

// Fixed-address SNAT (a router's static public address, or a CNI network's
// snatAddress): new connections from `source` leaving through
// `out_interface` (empty: any interface) to a destination outside `source`
// get source address `to`. Evaluated before masquerade, so it wins for the
// same source.
struct SnatRule {
  Prefix source;  // network form (host bits clear)
  IpAddress to;
  std::string out_interface;  // empty: any

  // kInvalidArgument naming the rule and the cause: a source with host bits
  // set or of length 0, `to` of the other family or not a unicast address
  // (unspecified, loopback, multicast, broadcast), an interface name that
  // is not 1-15 bytes of printable characters without '/', ':' or spaces.
  absl::Status Validate() const;
  // "10.20.0.0/24 -> 203.0.113.5 via wan0", "... via any".
  std::string ToString() const;

  auto tie() const { return std::tie(source, to, out_interface); }
  friend bool operator==(const SnatRule& a, const SnatRule& b) { return a.tie() == b.tie(); }
  friend bool operator!=(const SnatRule& a, const SnatRule& b) { return !(a == b); }
  friend bool operator<(const SnatRule& a, const SnatRule& b) { return a.tie() < b.tie(); }
};

// At most this many SNAT rules in the kernel: each is a rule of its own on
// every new outbound connection's path (they are for routers and a few
// networks, not per container).
inline constexpr size_t kMaxSnatRules = 256;

// The order both backends lay SNAT rules in: the most specific source
// first, and for the same source a named interface before "any", so that an
// entry for a subnet of another entry's network still applies.
std::vector<SnatRule> SnatOrder(const std::set<SnatRule>& rules);

// What the agent wants the kernel to hold (or what a backend read back).
// DNAT elements by value: a B-tree, not std::set. A kernel read-back
// builds two of these (what the kernel has, what the state wants) with one
// allocation per node of several elements rather than one per element;
// with it and Desired()'s ordered load, Diagnose at 30k mappings went from
// 6.1 to 2.6-2.8 us a mapping (check_bench).
using DnatSet = absl::btree_set<DnatElement>;

struct RuleSet {
  DnatSet dnat;
  // Container networks whose traffic to anywhere outside them is
  // masqueraded.
  std::set<Prefix> masquerade;
  // Fixed-address SNAT, evaluated before masquerade.
  std::set<SnatRule> snat;
  // Container networks among which DNAT'd traffic is masqueraded, so that a
  // container can reach a published port through the host's address.
  std::set<Prefix> hairpin;
  // Host interfaces behind which published ports are reachable from
  // 127.0.0.1 (route_localnet plus SNAT of loopback sources).
  std::set<std::string> localhost_interfaces;
  // WAN interfaces on which new inbound IPv6 connections are dropped
  // unless a pinhole (or DNAT) lets them in (ICMPv6 always passes).
  std::set<std::string> firewall6_interfaces;
  std::set<Pinhole> pinholes;

  bool empty() const {
    return dnat.empty() && masquerade.empty() && snat.empty() && hairpin.empty() &&
           localhost_interfaces.empty() && firewall6_interfaces.empty() && pinholes.empty();
  }
  size_t size() const {
    return dnat.size() + masquerade.size() + snat.size() + hairpin.size() +
           localhost_interfaces.size() + firewall6_interfaces.size() + pinholes.size();
  }
  friend bool operator==(const RuleSet& a, const RuleSet& b) {
    return a.dnat == b.dnat && a.masquerade == b.masquerade && a.snat == b.snat &&
           a.hairpin == b.hairpin &&
           a.localhost_interfaces == b.localhost_interfaces &&
           a.firewall6_interfaces == b.firewall6_interfaces && a.pinholes == b.pinholes;
  }
  friend bool operator!=(const RuleSet& a, const RuleSet& b) {
    return !(a == b);
  }
  // A short multi-line description, for logs and test failures.
  std::string DebugString() const;
};

// A user-level port mapping (what the API, CNI and NAT-PMP speak about).
struct PortMapping {
  Protocol protocol = Protocol::kTcp;
  std::optional<IpAddress> host_ip;  // nullopt: any local address
  uint16_t host_port = 0;
  uint16_t port_count = 1;
  IpAddress target_ip;
  uint16_t target_port = 0;

  Family family() const { return target_ip.family(); }
  // Host ports host_port .. host_port + port_count - 1.
  uint16_t last_host_port() const { return host_port + port_count - 1; }
  // kInvalidArgument naming the field: ports out of 1-65535, a range past
  // 65535, a host address of the other family, an unspecified or loopback
  // target.
  absl::Status Validate() const;
  // The kernel elements that realize this mapping: one element, or for a
  // range whose host and target ports differ, one element per port (the
  // kernel's nftables NAT cannot shift a port range).
  std::vector<DnatElement> ToElements() const;
  // Calls f(element) for each of them, without the vector.
  template <typename F>
  void ForEachElement(F f) const {
    DnatElement e;
    e.family = family();
    e.protocol = protocol;
    e.host_ip = host_ip;
    e.target_ip = target_ip;
    if (port_count <= 1 || host_port == target_port) {
      e.port_lo = host_port;
      e.port_hi = port_count <= 1 ? host_port : last_host_port();
      e.target_port = port_count <= 1 ? target_port : uint16_t{0};
      f(e);
      return;
    }
    for (int i = 0; i < port_count; ++i) {
      e.port_lo = e.port_hi = static_cast<uint16_t>(host_port + i);
      e.target_port = static_cast<uint16_t>(target_port + i);
      f(e);
    }
  }
  std::string ToString() const;

  auto tie() const {
    return std::tie(protocol, host_ip, host_port, port_count, target_ip,
                    target_port);
  }
  friend bool operator==(const PortMapping& a, const PortMapping& b) {
    return a.tie() == b.tie();
  }
  friend bool operator<(const PortMapping& a, const PortMapping& b) {
    return a.tie() < b.tie();
  }
};

// The prefixes in network form, without any prefix that another one covers:
// what an interval set can hold (the kernel rejects overlapping intervals).
std::set<Prefix> CoalescePrefixes(const std::set<Prefix>& prefixes);

// Parses "lo-hi" (or a single port) into an inclusive range within 1-65535.
absl::StatusOr<std::pair<uint16_t, uint16_t>> ParsePortRange(
    absl::string_view text);

}  // namespace fabric::nat
