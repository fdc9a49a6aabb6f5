// ConntrackCleaner: forgets connection-tracking entries of a host port, so
// that a datagram flow keeps no stale translation after a mapping goes or
// changes (UDP clients that keep sending would otherwise stay pinned to the
// old container, or to no container, until the entry times out).
//
// Implementations: NetfilterConntrackCleaner (libnetfilter_conntrack, in the
// network namespace it was created in), RecordingConntrackCleaner (testonly).
// Thread-compatible.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nat/types.h"

namespace fabric::nat {

class ConntrackCleaner {
 public:
  virtual ~ConntrackCleaner() = default;
  // Deletes entries whose original direction is `protocol` to host ports
  // [port_lo, port_hi] (on `host_ip`, or any address) in `family`. Returns
  // how many were deleted.
  virtual absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                              std::optional<IpAddress> host_ip,
                                              uint16_t port_lo,
                                              uint16_t port_hi) = 0;
};

class NetfilterConntrackCleaner : public ConntrackCleaner {
 public:
  absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                      std::optional<IpAddress> host_ip,
                                      uint16_t port_lo,
                                      uint16_t port_hi) override;
};

// Records calls; for tests of code that uses a cleaner.
class RecordingConntrackCleaner : public ConntrackCleaner {
 public:
  absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                      std::optional<IpAddress> host_ip,
                                      uint16_t port_lo,
                                      uint16_t port_hi) override {
    std::lock_guard<std::mutex> lock(mu);
    calls.push_back(absl::StrCat(ProtocolName(protocol), " ", port_lo, "-",
                                 port_hi));
    return 0;
  }
  // Read `calls` only while no call is in flight.
  std::mutex mu;
  std::vector<std::string> calls;  // guarded by mu while calls run
};

}  // namespace fabric::nat
