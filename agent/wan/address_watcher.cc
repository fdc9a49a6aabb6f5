#include "agent/wan/address_watcher.h"

#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::agent::wan {

std::optional<nat::IpAddress> InterfaceIPv4Address(const std::string& interface) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return std::nullopt;
  std::optional<nat::IpAddress> found;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    if (interface != i->ifa_name) continue;
    const auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
    found = nat::IpAddress::FromBytes(nat::Family::kIPv4,
                                      reinterpret_cast<const uint8_t*>(&sin->sin_addr));
    break;
  }
  freeifaddrs(list);
  return found;
}

absl::StatusOr<std::unique_ptr<AddressWatcher>> AddressWatcher::Start(std::string interface) {
  if (interface.empty() || interface.size() >= IF_NAMESIZE) {
    return absl::InvalidArgumentError(
        absl::StrCat("WAN interface name \"", interface, "\" is empty or too long"));
  }
  int rtnl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  sockaddr_nl nl{};
  nl.nl_family = AF_NETLINK;
  nl.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_LINK;
  if (rtnl < 0 || bind(rtnl, reinterpret_cast<sockaddr*>(&nl), sizeof(nl)) != 0) {
    int e = errno;
    if (rtnl >= 0) close(rtnl);
    return absl::UnavailableError(absl::StrCat(
        "cannot watch the address of ", interface, " (rtnetlink): ", std::strerror(e)));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    int e = errno;
    close(rtnl);
    return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(e)));
  }
  return std::unique_ptr<AddressWatcher>(new AddressWatcher(std::move(interface), rtnl, wake));
}

AddressWatcher::AddressWatcher(std::string interface, int rtnl, int wake)
    : AddressSource(std::move(interface)), rtnl_(rtnl), wake_(wake) {
  // Subscribed before reading: a change after this read is an event.
  Publish(InterfaceIPv4Address(this->interface()));
  thread_ = std::thread([this] { Run(); });
}

AddressWatcher::~AddressWatcher() {
  stopping_ = true;
  uint64_t one = 1;
  (void)write(wake_, &one, sizeof(one));
  thread_.join();
  close(rtnl_);
  close(wake_);
}

void AddressWatcher::Run() {
  while (!stopping_) {
    pollfd fds[2] = {{rtnl_, POLLIN, 0}, {wake_, POLLIN, 0}};
    int n = poll(fds, 2, -1);
    if (n < 0 && errno != EINTR) break;
    if (stopping_) break;
    if (n > 0 && (fds[0].revents & (POLLIN | POLLERR))) {
      // Which message it was does not matter: re-read. ENOBUFS (events
      // lost) ends the drain the same way, and the re-read catches up.
      char buf[16384];
      while (recv(rtnl_, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
      }
      Publish(InterfaceIPv4Address(interface()));
    }
  }
}

}  // namespace fabric::agent::wan
