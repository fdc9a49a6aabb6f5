// AddressWatcher: the AddressSource that follows the kernel. Opens a
// NETLINK_ROUTE socket subscribed to RTMGRP_IPV4_IFADDR (and RTMGRP_LINK, so
// an interface created, renamed or removed is noticed), reads the
// interface's address at start, and on every event re-reads it
// (getifaddrs: its first IPv4 address) and tells the listeners when it
// changed. An interface that does not exist (yet) has no address. Without
// a named interface it follows the default route's (FollowDefaultRoute).
//
// Works in the network namespace of the thread that calls Start (its thread
// is created there too).
//
// Threading: one thread of its own, from which listeners are called;
// destruction stops and joins it (no listener runs after the destructor).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "agent/wan/address_source.h"
#include "nat/types.h"

namespace fabric::agent::wan {

class AddressWatcher : public AddressSource {
 public:
  // kInvalidArgument for an empty or too long name; kUnavailable when
  // rtnetlink cannot be opened.
  static absl::StatusOr<std::unique_ptr<AddressWatcher>> Start(std::string interface);
  // Follows the interface of the one IPv4 default route instead (also
  // subscribed to RTMGRP_IPV4_ROUTE): when the route moves to another
  // interface, the address becomes that interface's, and `log` is told
  // ("WAN interface wan1: the default route moved from wan0"). With no
  // default route, or several, the interface stays the last one found.
  // kFailedPrecondition when there is none (or several) at start.
  static absl::StatusOr<std::unique_ptr<AddressWatcher>> FollowDefaultRoute(
      std::function<void(const std::string&)> log);
  ~AddressWatcher() override;

 private:
  AddressWatcher(std::string interface, int rtnl, int wake, bool follow_route,
                 std::function<void(const std::string&)> log);
  void Run();
  // The interface to read: the default route's when following it.
  std::string Current();

  const bool follow_route_;
  const std::function<void(const std::string&)> log_;
  const int rtnl_;
  const int wake_;  // eventfd: the destructor wakes the thread
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// The first IPv4 address of `interface` in the calling thread's network
// namespace; nullopt when it has none or does not exist.
std::optional<nat::IpAddress> InterfaceIPv4Address(const std::string& interface);

// The interface of the one IPv4 default route (/proc/net/route of the
// calling process's namespace); "" with `why` set when there is none, or
// several ("default routes via wan0, wan1").
std::string DefaultRouteInterface(std::string* why);

}  // namespace fabric::agent::wan
