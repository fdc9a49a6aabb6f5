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
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/wan/routes.h"

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

std::string DefaultRouteInterface(std::string* why) {
  absl::StatusOr<std::vector<DefaultRoute>> routes = ReadDefaultRoutes();
  if (!routes.ok()) {
    *why = std::string(routes.status().message());
    return "";
  }
  std::set<std::string> found;
  for (const DefaultRoute& r : *routes) found.insert(r.interface);
  if (found.size() == 1) return *found.begin();
  *why = found.empty() ? "no IPv4 default route"
                       : absl::StrCat("default routes via ", absl::StrJoin(found, ", "));
  return "";
}

namespace {

// The rtnetlink socket and the eventfd of a watcher.
absl::Status Open(uint32_t groups, const std::string& what, int* rtnl, int* wake) {
  *rtnl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  sockaddr_nl nl{};
  nl.nl_family = AF_NETLINK;
  nl.nl_groups = groups;
  if (*rtnl < 0 || bind(*rtnl, reinterpret_cast<sockaddr*>(&nl), sizeof(nl)) != 0) {
    int e = errno;
    if (*rtnl >= 0) close(*rtnl);
    return absl::UnavailableError(
        absl::StrCat("cannot watch ", what, " (rtnetlink): ", std::strerror(e)));
  }
  *wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (*wake < 0) {
    int e = errno;
    close(*rtnl);
    return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(e)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<AddressWatcher>> AddressWatcher::Start(std::string interface) {
  if (interface.empty() || interface.size() >= IF_NAMESIZE) {
    return absl::InvalidArgumentError(
        absl::StrCat("WAN interface name \"", interface, "\" is empty or too long"));
  }
  int rtnl, wake;
  if (absl::Status s = Open(RTMGRP_IPV4_IFADDR | RTMGRP_LINK,
                            absl::StrCat("the address of ", interface), &rtnl, &wake);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<AddressWatcher>(
      new AddressWatcher(std::move(interface), rtnl, wake, false, nullptr));
}

absl::StatusOr<std::unique_ptr<AddressWatcher>> AddressWatcher::FollowDefaultRoute(
    std::function<void(const std::string&)> log) {
  int rtnl, wake;
  if (absl::Status s = Open(RTMGRP_IPV4_IFADDR | RTMGRP_LINK | RTMGRP_IPV4_ROUTE,
                            "the default route", &rtnl, &wake);
      !s.ok()) {
    return s;
  }
  // Subscribed before reading: a route change after this read is an event.
  std::string why;
  std::string interface = DefaultRouteInterface(&why);
  if (interface.empty()) {
    close(rtnl);
    close(wake);
    return absl::FailedPreconditionError(
        absl::StrCat("no WAN interface to follow: ", why, " (name one with --wan_interface)"));
  }
  return std::unique_ptr<AddressWatcher>(
      new AddressWatcher(std::move(interface), rtnl, wake, true, std::move(log)));
}

AddressWatcher::AddressWatcher(std::string interface, int rtnl, int wake, bool follow_route,
                               std::function<void(const std::string&)> log)
    : AddressSource(std::move(interface)),
      follow_route_(follow_route),
      log_(std::move(log)),
      rtnl_(rtnl),
      wake_(wake) {
  // Subscribed before reading: a change after this read is an event.
  Publish(InterfaceIPv4Address(this->interface()));
  thread_ = std::thread([this] { Run(); });
}

std::string AddressWatcher::Current() {
  std::string was = interface();
  if (!follow_route_) return was;
  std::string why;
  std::string now = DefaultRouteInterface(&why);
  if (now.empty() || now == was) return was;
  if (log_) log_(absl::StrCat("WAN interface ", now, ": the default route moved from ", was));
  return now;
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
      std::string interface = Current();
      Publish(InterfaceIPv4Address(interface), interface);
    }
  }
}

}  // namespace fabric::agent::wan
