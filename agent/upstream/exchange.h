// One request/reply exchange with the gateway over UDP (PCP and NAT-PMP
// share port 5351), with the retransmission schedule of RFC 6886 section
// 3.1 / RFC 6887 section 8.1.1: send, wait 250 ms, resend, double the wait,
// until a valid reply comes or the exchange's time budget is spent (the
// RFCs' own upper bounds, 64 s / 1024 s, are far too long for a CLI call or
// for a loop that must notice a gateway restart within 10 s; the budget is
// the caller's). Every datagram is checked by the caller's parser; anything
// that is not a reply to this request is ignored and the wait goes on.
//
// Used by clients.cc; tests replace Transport and the clock. An Exchange
// runs on the calling thread; a Transport is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/upstream/codec.h"
#include "agent/upstream/types.h"

namespace fabric::agent::upstream {

// A datagram path to the gateway's PCP/NAT-PMP port.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual absl::Status Send(const std::vector<uint8_t>& datagram) = 0;
  // The next datagram from the gateway within `timeout`; nullopt when none
  // came. An error when the path is gone (ICMP port unreachable: kUnavailable).
  virtual absl::StatusOr<std::optional<std::vector<uint8_t>>> Receive(absl::Duration timeout) = 0;
  virtual Ipv4 gateway() const = 0;
  // Our source address towards the gateway.
  virtual Ipv4 local_ip() const = 0;
};

// A UDP socket connected to gateway:port, in the calling thread's network
// namespace (so only the gateway's datagrams arrive).
absl::StatusOr<std::unique_ptr<Transport>> OpenUdpTransport(const Ipv4& gateway,
                                                            uint16_t port = kGatewayPort);

struct Schedule {
  absl::Duration initial = absl::Milliseconds(250);  // first wait; doubles
  absl::Duration budget = absl::Seconds(3);          // the whole exchange
};

using NowFn = std::function<absl::Time()>;

// Sends `request` on `schedule` until `check` says kOk (returns OK) or
// kUnsupportedVersion (kUnimplemented), or the budget runs out
// (kUnavailable: "no answer from G:5351 to WHAT after N tries in Ds").
// `what` names the request in errors ("PCP MAP tcp/8080"). `sends`, if
// given, receives the number of datagrams sent.
absl::Status Exchange(Transport& transport, const NowFn& now, const Schedule& schedule,
                      const std::string& what, const std::vector<uint8_t>& request,
                      const std::function<ReplyCheck(const std::vector<uint8_t>&)>& check,
                      int* sends = nullptr);

}  // namespace fabric::agent::upstream
