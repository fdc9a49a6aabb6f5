#include "nat/conntrack/conntrack.h"

#include <arpa/inet.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace fabric::nat {

namespace {

struct Match {
  uint8_t l3;
  uint8_t l4;
  std::optional<IpAddress> host_ip;
  uint16_t lo, hi;
  std::vector<nf_conntrack*> found;
};

int Collect(enum nf_conntrack_msg_type, struct nf_conntrack* ct, void* data) {
  auto* m = static_cast<Match*>(data);
  if (nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO) != m->l3 ||
      nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) != m->l4) {
    return NFCT_CB_CONTINUE;
  }
  uint16_t port = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST));
  if (port < m->lo || port > m->hi) return NFCT_CB_CONTINUE;
  if (m->host_ip.has_value()) {
    const void* dst = m->l3 == AF_INET ? nfct_get_attr(ct, ATTR_ORIG_IPV4_DST)
                                       : nfct_get_attr(ct, ATTR_ORIG_IPV6_DST);
    if (dst == nullptr ||
        std::memcmp(dst, m->host_ip->bytes(), m->host_ip->size()) != 0) {
      return NFCT_CB_CONTINUE;
    }
  }
  m->found.push_back(nfct_clone(ct));
  return NFCT_CB_CONTINUE;
}

}  // namespace

absl::StatusOr<int> NetfilterConntrackCleaner::ForgetHostPorts(
    Family family, Protocol protocol, std::optional<IpAddress> host_ip,
    uint16_t port_lo, uint16_t port_hi) {
  nfct_handle* h = nfct_open(CONNTRACK, 0);
  if (h == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("conntrack: open: ", std::strerror(errno)));
  }
  Match m{static_cast<uint8_t>(family == Family::kIPv4 ? AF_INET : AF_INET6),
          static_cast<uint8_t>(protocol), host_ip, port_lo, port_hi, {}};
  nfct_callback_register(h, NFCT_T_ALL, Collect, &m);
  uint32_t l3 = m.l3;
  int rc = nfct_query(h, NFCT_Q_DUMP, &l3);
  int dump_errno = errno;
  nfct_callback_unregister(h);
  int deleted = 0;
  for (nf_conntrack* ct : m.found) {
    // An entry may have gone in the meantime; that is fine.
    if (nfct_query(h, NFCT_Q_DESTROY, ct) == 0) ++deleted;
    nfct_destroy(ct);
  }
  nfct_close(h);
  if (rc < 0) {
    return absl::UnavailableError(
        absl::StrCat("conntrack: dump: ", std::strerror(dump_errno)));
  }
  return deleted;
}

}  // namespace fabric::nat
