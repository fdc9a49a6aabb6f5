#include "nat/netlink/socket.h"

#include <errno.h>
#include <libnftnl/common.h>
#include <libnftnl/gen.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <time.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::nat::netlink {

namespace {
constexpr size_t kReceiveBuffer = 1 << 20;
constexpr int kSocketBuffer = 16 << 20;

// The kernel's extended-ack message attached to an error, if any.
std::string ExtAckMessage(const nlmsghdr* nlh) {
  if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS)) return "";
  const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
  size_t offset = sizeof(nlmsgerr);
  if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) offset += err->msg.nlmsg_len - sizeof(nlmsghdr);
  std::string msg;
  const char* end = reinterpret_cast<const char*>(nlh) + nlh->nlmsg_len;
  const auto* attr = reinterpret_cast<const nlattr*>(
      static_cast<const char*>(mnl_nlmsg_get_payload(nlh)) + MNL_ALIGN(offset));
  while (mnl_attr_ok(attr, static_cast<int>(end - reinterpret_cast<const char*>(attr)))) {
    if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG) {
      msg = static_cast<const char*>(mnl_attr_get_payload(attr));
    }
    attr = mnl_attr_next(attr);
  }
  return msg;
}
}  // namespace

absl::StatusCode CodeForErrno(int error) {
  switch (error) {
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case EBUSY:
    case EAGAIN:
    case ENOBUFS:
    case EINTR:
      return absl::StatusCode::kUnavailable;
    case EINVAL:
    case EOPNOTSUPP:
      return absl::StatusCode::kInvalidArgument;
    case ENOSPC:
    case ENOMEM:
    case E2BIG:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::StatusOr<std::unique_ptr<NetlinkSocket>> NetlinkSocket::Open() {
  mnl_socket* s = mnl_socket_open(NETLINK_NETFILTER);
  if (s == nullptr) {
    int e = errno;
    return absl::Status(e == EPERM || e == EACCES
                            ? absl::StatusCode::kPermissionDenied
                            : absl::StatusCode::kUnavailable,
                        absl::StrCat("netlink: open netfilter socket: ",
                                     std::strerror(e)));
  }
  if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    mnl_socket_close(s);
    return absl::UnavailableError(
        absl::StrCat("netlink: bind: ", std::strerror(e)));
  }
  int fd = mnl_socket_get_fd(s);
  int one = 1;
  // Errors carry only the header of the failed message, plus the kernel's
  // explanation.
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
  int size = kSocketBuffer;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  return std::unique_ptr<NetlinkSocket>(new NetlinkSocket(s));
}

NetlinkSocket::NetlinkSocket(mnl_socket* socket)
    : socket_(socket),
      port_id_(mnl_socket_get_portid(socket)),
      seq_(static_cast<uint32_t>(time(nullptr))),
      rx_(kReceiveBuffer) {}

NetlinkSocket::~NetlinkSocket() { mnl_socket_close(socket_); }

int NetlinkSocket::fd() const { return mnl_socket_get_fd(socket_); }

uint32_t NetlinkSocket::ReserveSeq(uint32_t count) {
  uint32_t first = seq_;
  seq_ += count;
  return first;
}

absl::Status NetlinkSocket::Receive(
    uint32_t until_seq, bool until_done,
    const std::function<absl::Status(const nlmsghdr*)>& on_reply,
    std::vector<MessageError>* errors) {
  absl::Status callback_status;
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(socket_, rx_.data(), rx_.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::Status(CodeForErrno(errno),
                          absl::StrCat("netlink: receive: ", std::strerror(errno)));
    }
    const nlmsghdr* nlh = reinterpret_cast<const nlmsghdr*>(rx_.data());
    int len = static_cast<int>(n);
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_pid != port_id_ && nlh->nlmsg_pid != 0) continue;
      bool last = nlh->nlmsg_seq == until_seq;
      if (nlh->nlmsg_type == NLMSG_ERROR) {
        const auto* err =
            static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
        // Errors are ours only from this exchange's sequence window; a
        // leftover from an earlier, aborted exchange is dropped.
        if (err->error != 0 && nlh->nlmsg_seq >= window_start_ &&
            nlh->nlmsg_seq <= until_seq) {
          errors->push_back(
              MessageError{nlh->nlmsg_seq, -err->error, ExtAckMessage(nlh)});
        }
        if (last) return callback_status;
        continue;
      }
      if (nlh->nlmsg_type == NLMSG_DONE) {
        if (last) return callback_status;
        continue;
      }
      if (nlh->nlmsg_seq == until_seq && callback_status.ok()) {
        callback_status = on_reply(nlh);
      }
      if (last && !until_done) return callback_status;
    }
  }
}

absl::StatusOr<NetlinkSocket::BatchResult> NetlinkSocket::SendBatch(
    const std::vector<uint8_t>& batch) {
  // The batch's first message (batch begin) carries its first sequence.
  window_start_ = batch.size() >= sizeof(nlmsghdr)
                      ? reinterpret_cast<const nlmsghdr*>(batch.data())->nlmsg_seq
                      : seq_;
  int fd = mnl_socket_get_fd(socket_);
  int size = static_cast<int>(batch.size()) + (1 << 16);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  }
  if (mnl_socket_sendto(socket_, batch.data(), batch.size()) < 0) {
    return absl::Status(CodeForErrno(errno),
                        absl::StrCat("netlink: send batch of ", batch.size(),
                                     " bytes: ", std::strerror(errno)));
  }
  // The kernel processes a batch while sending it, so every error it causes
  // is queued before the answer to this generation request.
  BatchResult result;
  uint32_t seq = ReserveSeq(1);
  char buf[256];
  nlmsghdr* nlh =
      nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETGEN, AF_UNSPEC, 0, seq);
  if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
    return absl::Status(CodeForErrno(errno),
                        absl::StrCat("netlink: send: ", std::strerror(errno)));
  }
  absl::Status s = Receive(
      seq, /*until_done=*/false,
      [&](const nlmsghdr* reply) {
        nftnl_gen* gen = nftnl_gen_alloc();
        if (nftnl_gen_nlmsg_parse(reply, gen) == 0) {
          result.generation = nftnl_gen_get_u32(gen, NFTNL_GEN_ID);
        }
        nftnl_gen_free(gen);
        return absl::OkStatus();
      },
      &result.errors);
  if (!s.ok()) return s;
  return result;
}

absl::Status NetlinkSocket::Request(
    const std::string& what,
    const std::function<nlmsghdr*(char* buf, uint32_t seq)>& build,
    const std::function<absl::Status(const nlmsghdr*)>& on_reply) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  uint32_t seq = ReserveSeq(1);
  window_start_ = seq;
  nlmsghdr* nlh = build(buf.data(), seq);
  bool dump = (nlh->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
    return absl::Status(CodeForErrno(errno),
                        absl::StrCat("netlink: ", what, ": ", std::strerror(errno)));
  }
  std::vector<MessageError> errors;
  absl::Status s = Receive(seq, dump, on_reply, &errors);
  if (!errors.empty()) {
    return absl::Status(CodeForErrno(errors[0].error),
                        absl::StrCat("netlink: ", what, ": ",
                                     std::strerror(errors[0].error)));
  }
  return s;
}

}  // namespace fabric::nat::netlink
