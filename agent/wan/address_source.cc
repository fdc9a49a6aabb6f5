#include "agent/wan/address_source.h"

namespace fabric::agent::wan {

std::optional<nat::IpAddress> AddressSource::address() const {
  std::lock_guard<std::mutex> l(address_mu_);
  return address_;
}

std::string AddressSource::interface() const {
  std::lock_guard<std::mutex> l(address_mu_);
  return interface_;
}

int AddressSource::Subscribe(Listener listener) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  int id = next_id_++;
  std::optional<nat::IpAddress> now = address();
  if (now.has_value()) listener(AddressChange{interface(), now, std::nullopt});
  listeners_.emplace(id, std::move(listener));
  return id;
}

void AddressSource::Unsubscribe(int id) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  listeners_.erase(id);
}

void AddressSource::Publish(std::optional<nat::IpAddress> now) { Publish(now, interface()); }

void AddressSource::Publish(std::optional<nat::IpAddress> now, const std::string& interface) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  std::optional<nat::IpAddress> previous;
  {
    std::lock_guard<std::mutex> a(address_mu_);
    interface_ = interface;
    if (address_ == now) return;
    previous = address_;
    address_ = now;
  }
  AddressChange change{interface, now, previous};
  for (auto& [id, listener] : listeners_) listener(change);
}

}  // namespace fabric::agent::wan
