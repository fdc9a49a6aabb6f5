#include "nat/conntrack/ctnetlink.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sys/socket.h>

#include <endian.h>

#include <cstring>

namespace fabric::nat::ctnetlink {

namespace {

uint8_t L3(Family family) { return family == Family::kIPv4 ? AF_INET : AF_INET6; }

nlmsghdr* PutHeader(char* buf, uint32_t seq, uint8_t type, uint16_t flags, Family family) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | type;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  nlh->nlmsg_seq = seq;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = L3(family);
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  return nlh;
}

// mnl_attr_parse callbacks collect attributes by type, bounded by `max`.
template <int kMax>
struct Attrs {
  const nlattr* at[kMax + 1] = {};
};

template <int kMax>
int CollectAttr(const nlattr* attr, void* data) {
  auto* attrs = static_cast<Attrs<kMax>*>(data);
  int type = mnl_attr_get_type(attr);
  if (type >= 0 && type <= kMax) attrs->at[type] = attr;
  return MNL_CB_OK;
}

template <int kMax>
bool ParseNested(const nlattr* nest, Attrs<kMax>* out) {
  return mnl_attr_parse_nested(nest, CollectAttr<kMax>, out) == MNL_CB_OK;
}

// An original tuple is about 100 bytes (IPv6, ports, zone); a delete echoes
// it into a kMaxRequestSize buffer.
constexpr size_t kMaxTupleSize = 160;

bool HasLen(const nlattr* attr, size_t len) {
  return attr != nullptr && mnl_attr_get_payload_len(attr) >= len;
}

}  // namespace

bool KernelFiltersPort(Protocol protocol) {
  return protocol == Protocol::kTcp || protocol == Protocol::kUdp;
}

uint32_t FilterFlags(const HostPortQuery& q, bool port) {
  uint32_t flags = kFilterProtoNum;
  if (port && KernelFiltersPort(q.protocol)) flags |= kFilterProtoDstPort;
  if (q.host_ip.has_value() && q.family == Family::kIPv4) flags |= kFilterIpDst;
  return flags;
}

namespace {

// The original-tuple values and CTA_FILTER of a filtered request for `q`.
void PutFilter(nlmsghdr* nlh, const HostPortQuery& q, uint32_t filter_flags, uint16_t port) {
  nlattr* tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
  if (filter_flags & kFilterIpDst) {
    nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    uint32_t dst;
    std::memcpy(&dst, q.host_ip->bytes(), 4);
    mnl_attr_put_u32(nlh, CTA_IP_V4_DST, dst);
    mnl_attr_nest_end(nlh, ip);
  }
  nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, static_cast<uint8_t>(q.protocol));
  if (filter_flags & kFilterProtoDstPort) {
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(port));
  }
  mnl_attr_nest_end(nlh, proto);
  mnl_attr_nest_end(nlh, tuple);
  nlattr* filter = mnl_attr_nest_start(nlh, CTA_FILTER);
  // Host order: the kernel reads it with nla_get_u32.
  mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, filter_flags);
  mnl_attr_nest_end(nlh, filter);
}

}  // namespace

nlmsghdr* BuildDumpRequest(char* buf, uint32_t seq, const HostPortQuery& q, uint32_t filter_flags,
                           uint16_t port) {
  nlmsghdr* nlh = PutHeader(buf, seq, IPCTNL_MSG_CT_GET, NLM_F_DUMP, q.family);
  if (filter_flags != 0) PutFilter(nlh, q, filter_flags, port);
  return nlh;
}

bool KernelFlushIsExact(const HostPortQuery& q) {
  return KernelFiltersPort(q.protocol) && (!q.host_ip.has_value() || q.family == Family::kIPv4);
}

nlmsghdr* BuildFilteredFlush(char* buf, uint32_t seq, const HostPortQuery& q, uint16_t port) {
  nlmsghdr* nlh = PutHeader(buf, seq, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, q.family);
  PutFilter(nlh, q, FilterFlags(q, /*port=*/true), port);
  return nlh;
}

std::optional<Entry> ParseEntry(const nlmsghdr* nlh) {
  if (nlh->nlmsg_type != ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW) ||
      nlh->nlmsg_len < MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg))) {
    return std::nullopt;
  }
  const auto* nfg = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
  Entry e;
  if (nfg->nfgen_family == AF_INET) {
    e.family = Family::kIPv4;
  } else if (nfg->nfgen_family == AF_INET6) {
    e.family = Family::kIPv6;
  } else {
    return std::nullopt;
  }
  Attrs<CTA_MAX> top;
  if (mnl_attr_parse(nlh, sizeof(nfgenmsg), CollectAttr<CTA_MAX>, &top) != MNL_CB_OK) {
    return std::nullopt;
  }
  const nlattr* orig = top.at[CTA_TUPLE_ORIG];
  Attrs<CTA_TUPLE_MAX> tuple;
  if (orig == nullptr || !ParseNested(orig, &tuple) || tuple.at[CTA_TUPLE_IP] == nullptr ||
      tuple.at[CTA_TUPLE_PROTO] == nullptr || mnl_attr_get_payload_len(orig) > kMaxTupleSize) {
    return std::nullopt;
  }
  Attrs<CTA_IP_MAX> ip;
  Attrs<CTA_PROTO_MAX> proto;
  if (!ParseNested(tuple.at[CTA_TUPLE_IP], &ip) ||
      !ParseNested(tuple.at[CTA_TUPLE_PROTO], &proto) || !HasLen(proto.at[CTA_PROTO_NUM], 1)) {
    return std::nullopt;
  }
  const nlattr* dst = e.family == Family::kIPv4 ? ip.at[CTA_IP_V4_DST] : ip.at[CTA_IP_V6_DST];
  if (!HasLen(dst, e.family == Family::kIPv4 ? 4 : 16)) return std::nullopt;
  e.dst = IpAddress::FromBytes(e.family, static_cast<const uint8_t*>(mnl_attr_get_payload(dst)));
  e.l4proto = mnl_attr_get_u8(proto.at[CTA_PROTO_NUM]);
  if (HasLen(proto.at[CTA_PROTO_DST_PORT], 2)) {
    e.dst_port = ntohs(mnl_attr_get_u16(proto.at[CTA_PROTO_DST_PORT]));
  }
  e.orig_tuple.assign(static_cast<const char*>(mnl_attr_get_payload(orig)),
                      mnl_attr_get_payload_len(orig));
  if (HasLen(top.at[CTA_ID], 4)) e.id = mnl_attr_get_u32(top.at[CTA_ID]);
  if (HasLen(top.at[CTA_ZONE], 2)) e.zone = mnl_attr_get_u16(top.at[CTA_ZONE]);
  return e;
}

namespace {

// A tuple's destination (or source) address and port.
bool ParseTupleEnd(const nlattr* tuple_attr, Family family, bool source, IpAddress* addr,
                   uint16_t* port, uint8_t* l4proto) {
  Attrs<CTA_TUPLE_MAX> tuple;
  if (tuple_attr == nullptr || !ParseNested(tuple_attr, &tuple) ||
      tuple.at[CTA_TUPLE_IP] == nullptr || tuple.at[CTA_TUPLE_PROTO] == nullptr) {
    return false;
  }
  Attrs<CTA_IP_MAX> ip;
  Attrs<CTA_PROTO_MAX> proto;
  if (!ParseNested(tuple.at[CTA_TUPLE_IP], &ip) ||
      !ParseNested(tuple.at[CTA_TUPLE_PROTO], &proto) || !HasLen(proto.at[CTA_PROTO_NUM], 1)) {
    return false;
  }
  bool v4 = family == Family::kIPv4;
  const nlattr* a = source ? ip.at[v4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC]
                           : ip.at[v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST];
  if (!HasLen(a, v4 ? 4 : 16)) return false;
  *addr = IpAddress::FromBytes(family, static_cast<const uint8_t*>(mnl_attr_get_payload(a)));
  *l4proto = mnl_attr_get_u8(proto.at[CTA_PROTO_NUM]);
  const nlattr* p = proto.at[source ? CTA_PROTO_SRC_PORT : CTA_PROTO_DST_PORT];
  *port = HasLen(p, 2) ? ntohs(mnl_attr_get_u16(p)) : 0;
  return true;
}

// CTA_COUNTERS_ORIG or _REPLY: packets and bytes, big-endian u64 each.
void AddCounters(const nlattr* counters, uint64_t* packets, uint64_t* bytes) {
  Attrs<CTA_COUNTERS_MAX> c;
  if (counters == nullptr || !ParseNested(counters, &c)) return;
  if (HasLen(c.at[CTA_COUNTERS_PACKETS], 8)) {
    *packets += be64toh(mnl_attr_get_u64(c.at[CTA_COUNTERS_PACKETS]));
  }
  if (HasLen(c.at[CTA_COUNTERS_BYTES], 8)) {
    *bytes += be64toh(mnl_attr_get_u64(c.at[CTA_COUNTERS_BYTES]));
  }
}

}  // namespace

std::optional<Flow> ParseFlow(const nlmsghdr* nlh) {
  const uint16_t type = nlh->nlmsg_type;
  if ((type != ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW) &&
       type != ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE)) ||
      nlh->nlmsg_len < MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg))) {
    return std::nullopt;
  }
  const auto* nfg = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
  Flow f;
  if (nfg->nfgen_family == AF_INET) {
    f.family = Family::kIPv4;
  } else if (nfg->nfgen_family == AF_INET6) {
    f.family = Family::kIPv6;
  } else {
    return std::nullopt;
  }
  Attrs<CTA_MAX> top;
  if (mnl_attr_parse(nlh, sizeof(nfgenmsg), CollectAttr<CTA_MAX>, &top) != MNL_CB_OK) {
    return std::nullopt;
  }
  uint8_t reply_proto = 0;
  if (!ParseTupleEnd(top.at[CTA_TUPLE_ORIG], f.family, /*source=*/false, &f.dst, &f.dst_port,
                     &f.l4proto) ||
      !ParseTupleEnd(top.at[CTA_TUPLE_REPLY], f.family, /*source=*/true, &f.reply_src,
                     &f.reply_src_port, &reply_proto) ||
      reply_proto != f.l4proto) {
    return std::nullopt;
  }
  if (HasLen(top.at[CTA_STATUS], 4)) f.status = ntohl(mnl_attr_get_u32(top.at[CTA_STATUS]));
  f.destroyed = type == ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE);
  AddCounters(top.at[CTA_COUNTERS_ORIG], &f.packets, &f.bytes);
  AddCounters(top.at[CTA_COUNTERS_REPLY], &f.packets, &f.bytes);
  return f;
}

bool Matches(const Entry& e, const HostPortQuery& q) {
  return e.family == q.family && e.l4proto == static_cast<uint8_t>(q.protocol) &&
         e.dst_port >= q.port_lo && e.dst_port <= q.port_hi &&
         (!q.host_ip.has_value() || e.dst == *q.host_ip);
}

bool KernelIgnoredFilter(const Entry& e, const HostPortQuery& q, uint32_t filter_flags,
                         uint16_t port) {
  if ((filter_flags & kFilterProtoNum) && e.l4proto != static_cast<uint8_t>(q.protocol)) {
    return true;
  }
  if ((filter_flags & kFilterProtoDstPort) && e.dst_port != port) return true;
  return (filter_flags & kFilterIpDst) && e.dst != *q.host_ip;
}

nlmsghdr* BuildDelete(char* buf, uint32_t seq, const Entry& e) {
  nlmsghdr* nlh = PutHeader(buf, seq, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, e.family);
  mnl_attr_put(nlh, CTA_TUPLE_ORIG | NLA_F_NESTED, e.orig_tuple.size(), e.orig_tuple.data());
  if (e.zone.has_value()) mnl_attr_put_u16(nlh, CTA_ZONE, *e.zone);
  if (e.id.has_value()) mnl_attr_put_u32(nlh, CTA_ID, *e.id);
  return nlh;
}

}  // namespace fabric::nat::ctnetlink
