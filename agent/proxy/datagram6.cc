#include "agent/proxy/datagram6.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::agent::proxy {

absl::Status EnablePacketInfo6(int fd) {
  int on = 1;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof(on)) != 0) {
    return absl::InternalError(absl::StrCat("setsockopt IPV6_RECVPKTINFO: ", strerror(errno)));
  }
  return absl::OkStatus();
}

std::optional<Datagram6> ReceiveWithInfo6(int fd, void* buf, size_t capacity) {
  Datagram6 d;
  iovec iov{buf, capacity};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))];
  msghdr msg{};
  msg.msg_name = &d.from;
  msg.msg_namelen = sizeof(d.from);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) return std::nullopt;
  d.length = static_cast<size_t>(n);
  d.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
        c->cmsg_len >= CMSG_LEN(sizeof(in6_pktinfo))) {
      std::memcpy(&d.to, CMSG_DATA(c), sizeof(in6_pktinfo));
    }
  }
  return d;
}

bool SendWithInfo6(int fd, const void* data, size_t len, const sockaddr_in6& to,
                   const in6_pktinfo& from) {
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_in6*>(&to);
  msg.msg_namelen = sizeof(to);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  in6_pktinfo info = from;
  if (IN6_IS_ADDR_MULTICAST(&info.ipi6_addr)) info.ipi6_addr = in6addr_any;
  if (!IN6_IS_ADDR_UNSPECIFIED(&info.ipi6_addr) || info.ipi6_ifindex != 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
    std::memcpy(CMSG_DATA(c), &info, sizeof(info));
  }
  ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n == static_cast<ssize_t>(len);
}

}  // namespace fabric::agent::proxy
