// NetlinkSocket: the one place that does netfilter netlink I/O (libmnl).
// Sends nftables batches and drains every reply, mapping each error back to
// the message (sequence number) that caused it; runs get/dump requests.
//
// Thread-compatible: one owner (the backend) at a time.
#pragma once

#include <libmnl/libmnl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::nat::netlink {

class NetlinkSocket {
 public:
  // Opens and binds a NETLINK_NETFILTER socket. kPermissionDenied without
  // CAP_NET_ADMIN; kUnavailable on other failures.
  static absl::StatusOr<std::unique_ptr<NetlinkSocket>> Open();
  ~NetlinkSocket();

  NetlinkSocket(const NetlinkSocket&) = delete;
  NetlinkSocket& operator=(const NetlinkSocket&) = delete;

  // One failed message of a batch.
  struct MessageError {
    uint32_t seq;
    int error;            // errno
    std::string message;  // the kernel's extended ack text, if any
  };
  struct BatchResult {
    std::vector<MessageError> errors;  // empty: the batch was committed
    uint32_t generation = 0;           // ruleset generation after the batch
  };

  // Sends `batch` (begin ... end, as built by nftables::Encode*) and waits
  // until the kernel has answered every message. Transport failures are a
  // status; per-message errors come back in the result.
  absl::StatusOr<BatchResult> SendBatch(const std::vector<uint8_t>& batch);

  // Sends one request (`build` fills the message for `seq`) and hands every
  // reply message to `on_reply` until the request completes (a dump's DONE
  // or a get's answer). A kernel error becomes a status whose code follows
  // errno (ENOENT: kNotFound), prefixed by `what`.
  absl::Status Request(const std::string& what,
                       const std::function<nlmsghdr*(char* buf, uint32_t seq)>& build,
                       const std::function<absl::Status(const nlmsghdr*)>& on_reply);

  // Next sequence number to use, reserving `count` of them.
  uint32_t ReserveSeq(uint32_t count);
  uint32_t port_id() const { return port_id_; }
  int fd() const;

 private:
  explicit NetlinkSocket(mnl_socket* socket);
  absl::Status Receive(uint32_t until_seq, bool until_done,
                       const std::function<absl::Status(const nlmsghdr*)>& on_reply,
                       std::vector<MessageError>* errors);

  mnl_socket* socket_;
  uint32_t port_id_;
  uint32_t seq_;
  uint32_t window_start_ = 0;  // first sequence of the current exchange
  std::vector<char> rx_;
};

// errno -> absl code: ENOENT kNotFound, EEXIST kAlreadyExists, EPERM/EACCES
// kPermissionDenied, EBUSY/EAGAIN/ENOBUFS/EINTR kUnavailable, EINVAL/
// EOPNOTSUPP kInvalidArgument, ENOSPC/ENOMEM kResourceExhausted, else
// kInternal.
absl::StatusCode CodeForErrno(int error);

}  // namespace fabric::nat::netlink
