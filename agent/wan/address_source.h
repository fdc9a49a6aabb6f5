// AddressSource: the WAN interface's IPv4 address and its changes, as every
// front-end that publishes on it (NAT-PMP/PCP, later UPnP) and the core see
// them. AddressWatcher (address_watcher.h) follows the kernel through
// rtnetlink; FakeAddressSource (fake_address_source.h) lets tests set it.
//
// Every listener starts from "no address": on Subscribe it is called at
// once, on the subscribing thread, when the interface has an address, and
// then once per change, in order, from the source's own thread. Listeners
// run one at a time, never concurrently with Subscribe or Unsubscribe.
//
// Threading: every method is thread-safe. A listener may call address() but
// must not Subscribe or Unsubscribe (that deadlocks), and should return
// quickly (hand work to a thread of its own): the next change waits for it.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "nat/types.h"

namespace fabric::agent::wan {

struct AddressChange {
  std::string interface;
  std::optional<nat::IpAddress> address;   // now; nullopt: none
  std::optional<nat::IpAddress> previous;  // as this listener last saw it
};

class AddressSource {
 public:
  using Listener = std::function<void(const AddressChange&)>;

  explicit AddressSource(std::string interface) : interface_(std::move(interface)) {}
  virtual ~AddressSource() = default;
  AddressSource(const AddressSource&) = delete;
  AddressSource& operator=(const AddressSource&) = delete;

  // The WAN interface now (it changes when a watcher follows the default
  // route).
  std::string interface() const;
  // The address now (the first IPv4 address of the interface); nullopt
  // when it has none or does not exist.
  std::optional<nat::IpAddress> address() const;

  // Registers `listener` (see above); returns its id for Unsubscribe.
  int Subscribe(Listener listener);
  // Once this returns, the listener is not running and is not called again.
  void Unsubscribe(int id);

 protected:
  // Records `now` and, when it differs from the last address, tells every
  // listener, on the calling thread. Implementations call it from one
  // thread at a time.
  void Publish(std::optional<nat::IpAddress> now);
  // The same, for `now` on `interface`, which becomes the interface.
  void Publish(std::optional<nat::IpAddress> now, const std::string& interface);

 private:
  std::string interface_;  // guarded by address_mu_
  // Held while listeners run: orders Subscribe, Unsubscribe and changes.
  std::mutex listeners_mu_;
  std::map<int, Listener> listeners_;  // guarded by listeners_mu_
  int next_id_ = 1;                    // guarded by listeners_mu_
  mutable std::mutex address_mu_;      // taken inside listeners_mu_
  std::optional<nat::IpAddress> address_;  // guarded by address_mu_
};

}  // namespace fabric::agent::wan
