// AddressWatcher: the AddressSource that follows the kernel. Opens a
// NETLINK_ROUTE socket subscribed to RTMGRP_IPV4_IFADDR (and RTMGRP_LINK, so
// an interface created, renamed or removed is noticed), reads the
// interface's address at start, and on every event re-reads it
// (getifaddrs: its first IPv4 address) and tells the listeners when it
// changed. An interface that does not exist (yet) has no address.
//
// Works in the network namespace of the thread that calls Start (its thread
// is created there too).
//
// Threading: one thread of its own, from which listeners are called;
// destruction stops and joins it (no listener runs after the destructor).
#pragma once

#include <atomic>
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
  ~AddressWatcher() override;

 private:
  AddressWatcher(std::string interface, int rtnl, int wake);
  void Run();

  const int rtnl_;
  const int wake_;  // eventfd: the destructor wakes the thread
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// The first IPv4 address of `interface` in the calling thread's network
// namespace; nullopt when it has none or does not exist.
std::optional<nat::IpAddress> InterfaceIPv4Address(const std::string& interface);

}  // namespace fabric::agent::wan
