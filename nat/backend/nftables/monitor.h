// ChangeMonitor: listens to nftables' netlink event group and tells when a
// process other than the agent changed table `inet fabric_nat` — a flush of
// the ruleset, a firewall reload, an element deleted by hand. The agent's
// own changes are recognized by the netlink port id of its backend's socket
// (the kernel stamps every event with the port id of the socket that made
// the change) and ignored, so repairs never trigger repairs. It can watch
// other tables instead.
//
// Thread-compatible: one reconciler thread owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct mnl_socket;

namespace fabric::nat {

class ChangeMonitor {
 public:
  // A table an event may concern: NFPROTO_* family and name.
  using Table = std::pair<uint32_t, std::string>;

  // Watches our table `inet fabric_nat`. kPermissionDenied without
  // CAP_NET_ADMIN.
  static absl::StatusOr<std::unique_ptr<ChangeMonitor>> Open();
  // Watches `tables` instead (agent/forward_accept_keeper.h watches the
  // tables whose forward chains hold its rule).
  static absl::StatusOr<std::unique_ptr<ChangeMonitor>> Open(std::set<Table> tables);
  ~ChangeMonitor();

  // Waits up to `timeout` for events. True when someone other than
  // `own_port_id` changed our table, or when events were lost (the socket
  // overflowed), so a change may have been missed. `what` then describes
  // the first foreign change seen ("delete table inet fabric_nat by nft").
  // `what` when the first thing seen was lost events: the agent's own big
  // batches overflow the socket too (100k elements at start), so whether
  // anyone else changed the table is for a comparison to say.
  static constexpr char kEventsLost[] = "netlink event queue overflowed";
  absl::StatusOr<bool> WaitForForeignChange(uint32_t own_port_id,
                                            absl::Duration timeout,
                                            std::string* what);

  // Reads whatever is queued without waiting; same result as above.
  absl::StatusOr<bool> Drain(uint32_t own_port_id, std::string* what);

 private:
  ChangeMonitor(mnl_socket* socket, std::set<Table> tables);
  absl::StatusOr<bool> Read(uint32_t own_port_id, int timeout_ms,
                            std::string* what);

  mnl_socket* socket_;
  std::string buffer_;
  const std::set<Table> tables_;
};

}  // namespace fabric::nat
