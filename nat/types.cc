#include "nat/types.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fabric::nat {

namespace {
// Shifted ranges are expanded one element per port; keep that bounded.
constexpr int kMaxShiftedRange = 1024;
}  // namespace

absl::string_view ProtocolName(Protocol protocol) {
  switch (protocol) {
    case Protocol::kTcp:
      return "tcp";
    case Protocol::kUdp:
      return "udp";
    case Protocol::kSctp:
      return "sctp";
  }
  return "unknown";
}

absl::StatusOr<Protocol> ParseProtocol(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower == "tcp") return Protocol::kTcp;
  if (lower == "udp") return Protocol::kUdp;
  if (lower == "sctp") return Protocol::kSctp;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown protocol \"", name, "\": expected tcp, udp or sctp"));
}

absl::string_view FamilyName(Family family) {
  return family == Family::kIPv4 ? "ipv4" : "ipv6";
}

absl::StatusOr<IpAddress> IpAddress::Parse(absl::string_view text) {
  std::string s(text);
  IpAddress a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes_.data()) == 1) {
    a.family_ = Family::kIPv4;
    return a;
  }
  if (inet_pton(AF_INET6, s.c_str(), a.bytes_.data()) == 1) {
    a.family_ = Family::kIPv6;
    return a;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not an IPv4 or IPv6 address"));
}

IpAddress IpAddress::FromBytes(Family family, const uint8_t* bytes) {
  IpAddress a;
  a.family_ = family;
  std::memcpy(a.bytes_.data(), bytes, a.size());
  return a;
}

IpAddress IpAddress::AnyOf(Family family) {
  IpAddress a;
  a.family_ = family;
  return a;
}

bool IpAddress::IsUnspecified() const {
  for (size_t i = 0; i < size(); ++i) {
    if (bytes_[i] != 0) return false;
  }
  return true;
}

bool IpAddress::IsMulticast() const {
  return family_ == Family::kIPv4 ? (bytes_[0] & 0xf0) == 0xe0 : bytes_[0] == 0xff;
}

bool IpAddress::IsLimitedBroadcast() const {
  return family_ == Family::kIPv4 && bytes_[0] == 255 && bytes_[1] == 255 &&
         bytes_[2] == 255 && bytes_[3] == 255;
}

bool IpAddress::IsLoopback() const {
  if (is_v4()) return bytes_[0] == 127;
  for (int i = 0; i < 15; ++i) {
    if (bytes_[i] != 0) return false;
  }
  return bytes_[15] == 1;
}

std::string IpAddress::ToString() const {
  if (is_v4()) {
    // By hand: glibc's inet_ntop formats IPv4 through sprintf, and a listing
    // of 10k mappings formats 20k addresses (types_test compares the two
    // for every value of every octet).
    char buf[16];
    char* out = buf;
    for (int i = 0; i < 4; ++i) {
      unsigned v = bytes_[i];
      if (i > 0) *out++ = '.';
      if (v >= 100) *out++ = static_cast<char>('0' + v / 100);
      if (v >= 10) *out++ = static_cast<char>('0' + v / 10 % 10);
      *out++ = static_cast<char>('0' + v % 10);
    }
    return std::string(buf, out - buf);
  }
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, bytes_.data(), buf, sizeof(buf));
  return buf;
}

absl::StatusOr<Prefix> Prefix::Parse(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  if (parts.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not an address/length prefix"));
  }
  absl::StatusOr<IpAddress> address = IpAddress::Parse(parts[0]);
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", text, "\" is not a prefix: ", address.status().message()));
  }
  Prefix p{*address, address->is_v4() ? 32 : 128};
  if (parts.size() == 2) {
    int max = p.length;
    if (!absl::SimpleAtoi(parts[1], &p.length) || p.length < 0 ||
        p.length > max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", text, "\": prefix length must be 0-", max));
    }
  }
  return p;
}

Prefix Prefix::Network() const {
  uint8_t bytes[16];
  std::memcpy(bytes, address.bytes(), address.size());
  for (size_t i = 0; i < address.size(); ++i) {
    int bits = length - static_cast<int>(i) * 8;
    if (bits >= 8) continue;
    bytes[i] &= bits <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
  }
  return Prefix{IpAddress::FromBytes(family(), bytes), length};
}

IpAddress Prefix::Last() const {
  uint8_t bytes[16];
  std::memcpy(bytes, address.bytes(), address.size());
  for (size_t i = 0; i < address.size(); ++i) {
    int bits = length - static_cast<int>(i) * 8;
    if (bits >= 8) continue;
    bytes[i] |= bits <= 0 ? 0xff : static_cast<uint8_t>(0xff >> bits);
  }
  return IpAddress::FromBytes(family(), bytes);
}

bool Prefix::Contains(const IpAddress& a) const {
  if (a.family() != family()) return false;
  return Prefix{a, length}.Network().address == Network().address;
}

std::string Prefix::ToString() const {
  return absl::StrCat(address.ToString(), "/", length);
}

namespace {
std::string HostPort(const std::optional<IpAddress>& ip, Family family,
                     absl::string_view ports) {
  IpAddress a = ip.has_value() ? *ip : IpAddress::AnyOf(family);
  if (a.is_v4()) return absl::StrCat(a.ToString(), ":", ports);
  return absl::StrCat("[", a.ToString(), "]:", ports);
}
}  // namespace

std::string DnatElement::ToString() const {
  std::string ports = is_range() ? absl::StrCat(port_lo, "-", port_hi)
                                 : absl::StrCat(port_lo);
  std::string target =
      is_range() ? (target_ip.is_v4() ? target_ip.ToString()
                                      : absl::StrCat("[", target_ip.ToString(),
                                                     "]"))
                 : HostPort(target_ip, family, absl::StrCat(target_port));
  return absl::StrCat(ProtocolName(protocol), " ",
                      HostPort(host_ip, family, ports), " -> ", target);
}

std::string Pinhole::ToString() const {
  return absl::StrCat(ProtocolName(protocol), " [", internal.ToString(), "]:", port, " from ",
                      remote ? remote->ToString() : "any");
}

absl::Status SnatRule::Validate() const {
  auto fail = [this](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("snat ", ToString(), ": ", why));
  };
  if (source.length == 0) {
    return fail("a /0 source would translate every host's traffic; name the network");
  }
  if (!(source.Network() == source)) {
    return fail(absl::StrCat("source has host bits set (the network is ",
                             source.Network().ToString(), ")"));
  }
  if (to.family() != source.family()) {
    return fail(absl::StrCat("to-address is ", FamilyName(to.family()), " but the source is ",
                             FamilyName(source.family())));
  }
  if (to.IsUnspecified() || to.IsLoopback() || to.IsMulticast() || to.IsLimitedBroadcast()) {
    return fail("to-address must be a unicast address (not unspecified, loopback, multicast "
                "or broadcast)");
  }
  if (!out_interface.empty()) {
    if (out_interface.size() > 15 || out_interface == "." || out_interface == "..") {
      return fail("interface name must be 1-15 bytes and not \".\" or \"..\"");
    }
    for (char c : out_interface) {
      auto u = static_cast<unsigned char>(c);
      if (c == '/' || c == ':' || u <= 0x20 || u >= 0x7f) {
        return fail("interface name may hold only printable characters other than '/', ':' "
                    "and space");
      }
    }
  }
  return absl::OkStatus();
}

std::string SnatRule::ToString() const {
  return absl::StrCat(source.ToString(), " -> ", to.ToString(), " via ",
                      out_interface.empty() ? "any" : out_interface);
}

std::string RuleSet::DebugString() const {
  std::string out;
  for (const auto& e : dnat) absl::StrAppend(&out, "dnat ", e.ToString(), "\n");
  for (const auto& p : masquerade) {
    absl::StrAppend(&out, "masquerade ", p.ToString(), "\n");
  }
  for (const auto& r : snat) absl::StrAppend(&out, "snat ", r.ToString(), "\n");
  for (const auto& p : hairpin) {
    absl::StrAppend(&out, "hairpin ", p.ToString(), "\n");
  }
  for (const auto& i : localhost_interfaces) {
    absl::StrAppend(&out, "localhost ", i, "\n");
  }
  for (const auto& i : firewall6_interfaces) absl::StrAppend(&out, "firewall6 ", i, "\n");
  for (const auto& p : pinholes) absl::StrAppend(&out, "pinhole ", p.ToString(), "\n");
  return out;
}

absl::Status PortMapping::Validate() const {
  if (host_port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), ": host port must be 1-65535"));
  }
  if (target_port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), ": target port must be 1-65535"));
  }
  if (port_count == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), ": port count must be at least 1"));
  }
  if (int{host_port} + port_count - 1 > 65535 ||
      int{target_port} + port_count - 1 > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), ": port range runs past 65535"));
  }
  if (port_count > 1 && host_port != target_port &&
      port_count > kMaxShiftedRange) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToString(), ": a range whose host and target ports differ may span at "
                    "most ",
        kMaxShiftedRange, " ports (ranges with equal ports have no limit)"));
  }
  if (host_ip.has_value() && host_ip->family() != target_ip.family()) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToString(), ": host address ", host_ip->ToString(), " is ",
        FamilyName(host_ip->family()), " but target is ",
        FamilyName(target_ip.family())));
  }
  if (target_ip.IsUnspecified() || target_ip.IsLoopback() || target_ip.IsMulticast() ||
      target_ip.IsLimitedBroadcast()) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToString(), ": target address must be a routable unicast address"));
  }
  return absl::OkStatus();
}

std::vector<DnatElement> PortMapping::ToElements() const {
  std::vector<DnatElement> out;
  ForEachElement([&out](const DnatElement& e) { out.push_back(e); });
  return out;
}

std::string PortMapping::ToString() const {
  std::string host = port_count > 1
                         ? absl::StrCat(host_port, "-", last_host_port())
                         : absl::StrCat(host_port);
  std::string target = port_count > 1
                           ? absl::StrCat(target_port, "-",
                                          int{target_port} + port_count - 1)
                           : absl::StrCat(target_port);
  return absl::StrCat(ProtocolName(protocol), " ",
                      HostPort(host_ip, family(), host), " -> ",
                      HostPort(target_ip, family(), target));
}

std::set<Prefix> CoalescePrefixes(const std::set<Prefix>& prefixes) {
  // Shortest first: a prefix is kept unless a kept one covers it.
  std::vector<Prefix> nets;
  for (const Prefix& p : prefixes) nets.push_back(p.Network());
  std::sort(nets.begin(), nets.end(), [](const Prefix& a, const Prefix& b) {
    return a.length < b.length;
  });
  std::set<Prefix> out;
  for (const Prefix& p : nets) {
    bool covered = false;
    for (const Prefix& kept : out) {
      if (kept.length <= p.length && kept.Contains(p.address)) {
        covered = true;
        break;
      }
    }
    if (!covered) out.insert(p);
  }
  return out;
}

absl::StatusOr<std::pair<uint16_t, uint16_t>> ParsePortRange(
    absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '-');
  int lo = 0, hi = 0;
  bool ok = parts.size() <= 2 && absl::SimpleAtoi(parts[0], &lo);
  hi = lo;
  if (ok && parts.size() == 2) ok = absl::SimpleAtoi(parts[1], &hi);
  if (!ok || lo < 1 || hi > 65535 || lo > hi) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", text, "\" is not a port range: expected LO-HI within 1-65535"));
  }
  return std::make_pair(static_cast<uint16_t>(lo), static_cast<uint16_t>(hi));
}

std::vector<SnatRule> SnatOrder(const std::set<SnatRule>& rules) {
  std::vector<SnatRule> out(rules.begin(), rules.end());
  std::stable_sort(out.begin(), out.end(), [](const SnatRule& a, const SnatRule& b) {
    if (a.source.length != b.source.length) return a.source.length > b.source.length;
    return a.out_interface.empty() < b.out_interface.empty();
  });
  return out;
}

}  // namespace fabric::nat
