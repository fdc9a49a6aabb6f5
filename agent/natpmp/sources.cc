#include "agent/natpmp/sources.h"

#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::agent::natpmp {

namespace {

int PrefixLength(const sockaddr* mask) {
  if (mask != nullptr && mask->sa_family == AF_INET6) {
    const uint8_t* b = reinterpret_cast<const sockaddr_in6*>(mask)->sin6_addr.s6_addr;
    int n = 0;
    while (n < 128 && (b[n / 8] & (0x80 >> (n % 8)))) ++n;
    return n;
  }
  if (mask == nullptr || mask->sa_family != AF_INET) return 32;
  uint32_t m = ntohl(reinterpret_cast<const sockaddr_in*>(mask)->sin_addr.s_addr);
  int n = 0;
  while (n < 32 && (m & (0x80000000u >> n))) ++n;
  return n;
}

}  // namespace

absl::StatusOr<InterfaceAddresses> InterfaceAddresses::Read() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return absl::UnavailableError(absl::StrCat("getifaddrs: ", std::strerror(errno)));
  }
  InterfaceAddresses out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET6) {
      nat::IpAddress a6 = nat::IpAddress::FromBytes(
          nat::Family::kIPv6,
          reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr.s6_addr);
      out.own.insert(a6);
      out.subnets6[i->ifa_name].push_back(nat::Prefix{a6, PrefixLength(i->ifa_netmask)});
      continue;
    }
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    nat::IpAddress a = nat::IpAddress::FromBytes(
        nat::Family::kIPv4,
        reinterpret_cast<const uint8_t*>(
            &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr));
    out.own.insert(a);
    out.subnets[i->ifa_name].push_back(nat::Prefix{a, PrefixLength(i->ifa_netmask)});
    if (i->ifa_flags & IFF_LOOPBACK) out.loopback.insert(i->ifa_name);
  }
  freeifaddrs(list);
  return out;
}

std::optional<std::string> RefusedSource(const InterfaceAddresses& addresses,
                                         const std::string& interface,
                                         const nat::IpAddress& source) {
  if (source.IsUnspecified() || source.IsMulticast() ||
      (source.is_v4() && source.IsLimitedBroadcast())) {
    return absl::StrCat(source.ToString(), " is not a unicast address");
  }
  bool loopback = addresses.loopback.count(interface) > 0;
  if (!loopback && addresses.own.count(source) > 0) {
    return absl::StrCat(source.ToString(), " is this host's own address");
  }
  if (!source.is_v4()) {
    auto v6 = addresses.subnets6.find(interface);
    if (v6 != addresses.subnets6.end()) {
      for (const nat::Prefix& p : v6->second) {
        if (p.Contains(source)) return std::nullopt;
      }
    }
    return absl::StrCat(source.ToString(), " is outside every IPv6 prefix of ", interface);
  }
  auto it = addresses.subnets.find(interface);
  if (it != addresses.subnets.end()) {
    for (const nat::Prefix& p : it->second) {
      if (!p.Contains(source)) continue;
      // A /31 or /32 has no network or broadcast address (RFC 3021).
      if (p.length <= 30 && (source == p.Network().address || source == p.Last())) {
        return absl::StrCat(source.ToString(), " is the network or broadcast address of ",
                            p.Network().ToString());
      }
      return std::nullopt;
    }
  }
  return absl::StrCat(source.ToString(), " is outside every subnet of ", interface);
}

absl::StatusOr<AddressEvents> AddressEvents::Open() {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("rtnetlink socket: ", std::strerror(errno)));
  }
  sockaddr_nl nl{};
  nl.nl_family = AF_NETLINK;
  nl.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_LINK;
  if (bind(fd, reinterpret_cast<sockaddr*>(&nl), sizeof(nl)) != 0) {
    int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("rtnetlink bind: ", std::strerror(e)));
  }
  return AddressEvents(fd);
}

AddressEvents::~AddressEvents() {
  if (fd_ >= 0) close(fd_);
}

bool AddressEvents::Drain() {
  bool changed = false;
  char buf[8192];
  for (;;) {
    ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      changed = true;
      continue;
    }
    // ENOBUFS: events were lost; read everything again.
    if (n < 0 && errno == ENOBUFS) {
      changed = true;
      continue;
    }
    return changed;
  }
}

std::optional<Datagram> ReceiveWithInfo(int fd, void* buf, size_t capacity) {
  Datagram d;
  char control[256];
  iovec iov{buf, capacity};
  msghdr msg{};
  msg.msg_name = &d.from;
  msg.msg_namelen = sizeof(d.from);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t len = recvmsg(fd, &msg, MSG_DONTWAIT);
  if (len < 0) return std::nullopt;
  bool have_info = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      std::memcpy(&d.info, CMSG_DATA(c), sizeof(d.info));
      have_info = true;
    }
  }
  if (!have_info || d.from.sin_family != AF_INET) return std::nullopt;
  d.length = static_cast<size_t>(len);
  d.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  return d;
}

bool SendWithInfo(int fd, const void* data, size_t len, const sockaddr_in& to, int ifindex,
                  in_addr from, int flags) {
  char control[CMSG_SPACE(sizeof(in_pktinfo))] = {};
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_in*>(&to);
  msg.msg_namelen = sizeof(to);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = IPPROTO_IP;
  c->cmsg_type = IP_PKTINFO;
  c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
  in_pktinfo info{};
  info.ipi_ifindex = ifindex;
  info.ipi_spec_dst = from;
  std::memcpy(CMSG_DATA(c), &info, sizeof(info));
  return sendmsg(fd, &msg, flags) == static_cast<ssize_t>(len);
}

}  // namespace fabric::agent::natpmp
