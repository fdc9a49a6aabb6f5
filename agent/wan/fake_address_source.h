// FakeAddressSource: an AddressSource whose address a test sets; listeners
// run on the thread that calls Set. Test only.
#pragma once

#include <optional>
#include <string>

#include "agent/wan/address_source.h"

namespace fabric::agent::wan {

class FakeAddressSource : public AddressSource {
 public:
  explicit FakeAddressSource(std::string interface = "wan0")
      : AddressSource(std::move(interface)) {}
  // Thread-safe; one Set at a time is what the real watcher does.
  void Set(std::optional<nat::IpAddress> address) { Publish(address); }
};

}  // namespace fabric::agent::wan
