#include "nat/backend/nftables/monitor.h"

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nat/backend/nftables/encode.h"

namespace fabric::nat {

namespace {

const char* MessageName(int type) {
  switch (type) {
    case NFT_MSG_NEWTABLE: return "add table";
    case NFT_MSG_DELTABLE: return "delete table";
    case NFT_MSG_NEWCHAIN: return "add chain";
    case NFT_MSG_DELCHAIN: return "delete chain";
    case NFT_MSG_NEWRULE: return "add rule";
    case NFT_MSG_DELRULE: return "delete rule";
    case NFT_MSG_NEWSET: return "add set";
    case NFT_MSG_DELSET: return "delete set";
    case NFT_MSG_NEWSETELEM: return "add element";
    case NFT_MSG_DELSETELEM: return "delete element";
    default: return "change";
  }
}

// The table an nftables event concerns: attribute 1 of table, chain, rule,
// set and element messages alike (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, ...).
std::string TableOf(const nlmsghdr* nlh) {
  const char* end = reinterpret_cast<const char*>(nlh) + nlh->nlmsg_len;
  const auto* attr = static_cast<const nlattr*>(
      mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
  while (mnl_attr_ok(attr, static_cast<int>(end - reinterpret_cast<const char*>(attr)))) {
    if (mnl_attr_get_type(attr) == 1 &&
        mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) {
      return static_cast<const char*>(mnl_attr_get_payload(attr));
    }
    attr = mnl_attr_next(attr);
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChangeMonitor>> ChangeMonitor::Open() {
  return Open({{NFPROTO_INET, nftables::kTableName}});
}

absl::StatusOr<std::unique_ptr<ChangeMonitor>> ChangeMonitor::Open(std::set<Table> tables) {
  mnl_socket* s = mnl_socket_open(NETLINK_NETFILTER);
  if (s == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("netlink: open event socket: ", std::strerror(errno)));
  }
  if (mnl_socket_bind(s, 1 << (NFNLGRP_NFTABLES - 1), MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    mnl_socket_close(s);
    return absl::PermissionDeniedError(
        absl::StrCat("netlink: subscribe to nftables events: ", std::strerror(e)));
  }
  int size = 8 << 20;
  setsockopt(mnl_socket_get_fd(s), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
  return std::unique_ptr<ChangeMonitor>(new ChangeMonitor(s, std::move(tables)));
}

ChangeMonitor::ChangeMonitor(mnl_socket* socket, std::set<Table> tables)
    : socket_(socket), buffer_(1 << 20, '\0'), tables_(std::move(tables)) {}

ChangeMonitor::~ChangeMonitor() { mnl_socket_close(socket_); }

absl::StatusOr<bool> ChangeMonitor::WaitForForeignChange(uint32_t own_port_id,
                                                         absl::Duration timeout,
                                                         std::string* what) {
  return Read(own_port_id,
              static_cast<int>(absl::ToInt64Milliseconds(timeout)), what);
}

absl::StatusOr<bool> ChangeMonitor::Drain(uint32_t own_port_id,
                                          std::string* what) {
  return Read(own_port_id, 0, what);
}

absl::StatusOr<bool> ChangeMonitor::Read(uint32_t own_port_id, int timeout_ms,
                                         std::string* what) {
  bool foreign = false;
  int fd = mnl_socket_get_fd(socket_);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int ready = poll(&p, 1, foreign ? 0 : timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return foreign;
    timeout_ms = 0;  // after the first wakeup, only drain what is queued
    ssize_t n = recv(fd, buffer_.data(), buffer_.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == ENOBUFS) {
        // Events were dropped: assume the worst.
        if (what->empty()) *what = kEventsLost;
        foreign = true;
        continue;
      }
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::UnavailableError(
          absl::StrCat("netlink: read events: ", std::strerror(errno)));
    }
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(buffer_.data());
    int len = static_cast<int>(n);
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_NFTABLES) continue;
      int type = NFNL_MSG_TYPE(nlh->nlmsg_type);
      if (type == NFT_MSG_NEWGEN) continue;
      if (nlh->nlmsg_pid == own_port_id && own_port_id != 0) continue;
      const auto* gen = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
      std::string table = TableOf(nlh);
      if (tables_.count({gen->nfgen_family, table}) == 0) continue;
      if (!foreign && what->empty()) {
        const char* family = gen->nfgen_family == NFPROTO_INET   ? "inet"
                             : gen->nfgen_family == NFPROTO_IPV4 ? "ip"
                             : gen->nfgen_family == NFPROTO_IPV6 ? "ip6"
                                                                 : "?";
        *what = absl::StrCat(MessageName(type), " in table ", family, " ", table,
                             " by netlink port ", nlh->nlmsg_pid);
      }
      foreign = true;
    }
  }
}

}  // namespace fabric::nat
