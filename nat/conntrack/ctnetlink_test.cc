// The ctnetlink messages, built and parsed without a kernel: each request is
// decoded back attribute by attribute; dumped entries are made the way the
// kernel lays them out (ctnetlink_fill_info).
#include "nat/conntrack/ctnetlink.h"

#include <arpa/inet.h>
#include <endian.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sys/socket.h>

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace fabric::nat::ctnetlink {
namespace {

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

// Attributes of one nest (or of a message after its nfgenmsg), by type.
std::map<int, const nlattr*> AttrsIn(const void* begin, const void* end) {
  std::map<int, const nlattr*> out;
  const auto* a = static_cast<const nlattr*>(begin);
  int len = static_cast<int>(static_cast<const char*>(end) - static_cast<const char*>(begin));
  for (; mnl_attr_ok(a, len); len -= MNL_ALIGN(a->nla_len), a = mnl_attr_next(a)) {
    out[mnl_attr_get_type(a)] = a;
  }
  return out;
}
std::map<int, const nlattr*> AttrsOf(const nlattr* nest) {
  const char* p = static_cast<const char*>(mnl_attr_get_payload(nest));
  return AttrsIn(p, p + mnl_attr_get_payload_len(nest));
}
std::map<int, const nlattr*> AttrsOf(const nlmsghdr* nlh) {
  return AttrsIn(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)),
                 mnl_nlmsg_get_payload_tail(nlh));
}

const nfgenmsg* Nfg(const nlmsghdr* nlh) {
  return static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
}

TEST(DumpRequestTest, FilteredToProtocolPortAndIpv4Host) {
  char buf[kMaxRequestSize];
  HostPortQuery q{Family::kIPv4, Protocol::kUdp, Ip("192.0.2.1"), 5353, 5360};
  uint32_t flags = FilterFlags(q, /*port=*/true);
  EXPECT_EQ(flags, kFilterIpDst | kFilterProtoNum | kFilterProtoDstPort);
  nlmsghdr* nlh = BuildDumpRequest(buf, 7, q, flags, 5354);
  EXPECT_EQ(nlh->nlmsg_type, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET);
  EXPECT_EQ(nlh->nlmsg_flags, NLM_F_REQUEST | NLM_F_DUMP);
  EXPECT_EQ(nlh->nlmsg_seq, 7u);
  EXPECT_EQ(Nfg(nlh)->nfgen_family, AF_INET);
  auto top = AttrsOf(nlh);
  ASSERT_EQ(top.size(), 2u);
  ASSERT_TRUE(top.count(CTA_TUPLE_ORIG));
  ASSERT_TRUE(top.count(CTA_FILTER));
  EXPECT_EQ(mnl_attr_get_u32(AttrsOf(top[CTA_FILTER])[CTA_FILTER_ORIG_FLAGS]), flags);
  auto tuple = AttrsOf(top[CTA_TUPLE_ORIG]);
  auto ip = AttrsOf(tuple[CTA_TUPLE_IP]);
  ASSERT_EQ(ip.size(), 1u);
  EXPECT_EQ(mnl_attr_get_u32(ip[CTA_IP_V4_DST]), htonl(0xc0000201));
  auto proto = AttrsOf(tuple[CTA_TUPLE_PROTO]);
  ASSERT_EQ(proto.size(), 2u);
  EXPECT_EQ(mnl_attr_get_u8(proto[CTA_PROTO_NUM]), 17);
  EXPECT_EQ(ntohs(mnl_attr_get_u16(proto[CTA_PROTO_DST_PORT])), 5354);
}

TEST(DumpRequestTest, Ipv6HostIsLeftToUserSpace) {
  char buf[kMaxRequestSize];
  HostPortQuery q{Family::kIPv6, Protocol::kTcp, Ip("2001:db8::1"), 80, 80};
  uint32_t flags = FilterFlags(q, /*port=*/true);
  EXPECT_EQ(flags, kFilterProtoNum | kFilterProtoDstPort);
  nlmsghdr* nlh = BuildDumpRequest(buf, 1, q, flags, 80);
  EXPECT_EQ(Nfg(nlh)->nfgen_family, AF_INET6);
  auto tuple = AttrsOf(AttrsOf(nlh)[CTA_TUPLE_ORIG]);
  EXPECT_FALSE(tuple.count(CTA_TUPLE_IP));
  EXPECT_TRUE(tuple.count(CTA_TUPLE_PROTO));
}

TEST(DumpRequestTest, SctpAndWideRangesFilterTheProtocolOnly) {
  HostPortQuery sctp{Family::kIPv4, Protocol::kSctp, std::nullopt, 9000, 9000};
  EXPECT_FALSE(KernelFiltersPort(Protocol::kSctp));
  EXPECT_EQ(FilterFlags(sctp, /*port=*/true), kFilterProtoNum);
  HostPortQuery udp{Family::kIPv4, Protocol::kUdp, std::nullopt, 1000, 2000};
  EXPECT_EQ(FilterFlags(udp, /*port=*/false), kFilterProtoNum);
  char buf[kMaxRequestSize];
  nlmsghdr* nlh = BuildDumpRequest(buf, 1, udp, kFilterProtoNum, 0);
  auto proto = AttrsOf(AttrsOf(AttrsOf(nlh)[CTA_TUPLE_ORIG])[CTA_TUPLE_PROTO]);
  EXPECT_EQ(proto.size(), 1u);
}

TEST(DumpRequestTest, UnfilteredDumpsTheFamily) {
  char buf[kMaxRequestSize];
  HostPortQuery q{Family::kIPv6, Protocol::kUdp, std::nullopt, 53, 53};
  nlmsghdr* nlh = BuildDumpRequest(buf, 3, q, 0, 0);
  EXPECT_EQ(Nfg(nlh)->nfgen_family, AF_INET6);
  EXPECT_TRUE(AttrsOf(nlh).empty());
  EXPECT_EQ(nlh->nlmsg_len, MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg)));
}

// A dump reply as ctnetlink_fill_info lays it out.
struct KernelEntry {
  uint8_t family = AF_INET;
  const char* src = "198.51.100.7";
  const char* dst = "192.0.2.1";
  uint8_t proto = IPPROTO_UDP;
  uint16_t sport = 40000, dport = 5353;
  std::optional<uint16_t> zone;
  uint32_t id = 0x11223344;
};

void PutTuple(nlmsghdr* nlh, int type, const KernelEntry& k, bool reply) {
  nlattr* t = mnl_attr_nest_start(nlh, type);
  nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  IpAddress src = Ip(reply ? k.dst : k.src), dst = Ip(reply ? k.src : k.dst);
  bool v4 = k.family == AF_INET;
  mnl_attr_put(nlh, v4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC, src.size(), src.bytes());
  mnl_attr_put(nlh, v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST, dst.size(), dst.bytes());
  mnl_attr_nest_end(nlh, ip);
  nlattr* p = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, k.proto);
  mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(reply ? k.dport : k.sport));
  mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(reply ? k.sport : k.dport));
  mnl_attr_nest_end(nlh, p);
  if (k.zone.has_value() && !reply) mnl_attr_put_u16(nlh, CTA_TUPLE_ZONE, htons(*k.zone));
  mnl_attr_nest_end(nlh, t);
}

nlmsghdr* KernelMessage(char* buf, const KernelEntry& k) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  nlh->nlmsg_flags = NLM_F_MULTI;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = k.family;
  PutTuple(nlh, CTA_TUPLE_ORIG, k, false);
  PutTuple(nlh, CTA_TUPLE_REPLY, k, true);
  if (k.zone.has_value()) mnl_attr_put_u16(nlh, CTA_ZONE, htons(*k.zone));
  mnl_attr_put_u32(nlh, CTA_STATUS, htonl(8));
  mnl_attr_put_u32(nlh, CTA_ID, htonl(k.id));
  mnl_attr_put_u32(nlh, CTA_TIMEOUT, htonl(30));
  return nlh;
}

TEST(ParseEntryTest, ReadsTheOriginalTuple) {
  std::vector<char> buf(1024);
  nlmsghdr* nlh = KernelMessage(buf.data(), KernelEntry{});
  std::optional<Entry> e = ParseEntry(nlh);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->family, Family::kIPv4);
  EXPECT_EQ(e->l4proto, IPPROTO_UDP);
  EXPECT_EQ(e->dst, Ip("192.0.2.1"));  // the original destination, not the reply's
  EXPECT_EQ(e->dst_port, 5353);
  EXPECT_EQ(e->id, htonl(0x11223344));
  EXPECT_FALSE(e->zone.has_value());
}

TEST(ParseEntryTest, Ipv6AndZone) {
  std::vector<char> buf(1024);
  KernelEntry k;
  k.family = AF_INET6;
  k.src = "2001:db8::7";
  k.dst = "2001:db8::1";
  k.proto = IPPROTO_TCP;
  k.dport = 443;
  k.zone = 5;
  std::optional<Entry> e = ParseEntry(KernelMessage(buf.data(), k));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->family, Family::kIPv6);
  EXPECT_EQ(e->dst, Ip("2001:db8::1"));
  EXPECT_EQ(e->dst_port, 443);
  EXPECT_EQ(e->zone, htons(5));
}

TEST(ParseEntryTest, RejectsOtherMessagesAndTruncatedTuples) {
  std::vector<char> buf(1024);
  nlmsghdr* nlh = KernelMessage(buf.data(), KernelEntry{});
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
  EXPECT_FALSE(ParseEntry(nlh).has_value());
  nlh->nlmsg_type = NLMSG_DONE;
  EXPECT_FALSE(ParseEntry(nlh).has_value());

  // A message with no original tuple.
  nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_INET;
  mnl_attr_put_u32(nlh, CTA_ID, 1);
  EXPECT_FALSE(ParseEntry(nlh).has_value());

  // An IPv6 family with a 4-byte destination.
  KernelEntry k;
  nlh = KernelMessage(buf.data(), k);
  static_cast<nfgenmsg*>(mnl_nlmsg_get_payload(nlh))->nfgen_family = AF_INET6;
  EXPECT_FALSE(ParseEntry(nlh).has_value());
}

void PutCounters(nlmsghdr* nlh, int type, uint64_t packets, uint64_t bytes) {
  nlattr* c = mnl_attr_nest_start(nlh, type);
  mnl_attr_put_u64(nlh, CTA_COUNTERS_PACKETS, htobe64(packets));
  mnl_attr_put_u64(nlh, CTA_COUNTERS_BYTES, htobe64(bytes));
  mnl_attr_nest_end(nlh, c);
}

TEST(ParseFlowTest, DestroyEventWithNatStatusAndCounters) {
  std::vector<char> buf(1024);
  KernelEntry k;
  k.dst = "192.0.2.1";
  k.dport = 8080;
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_INET;
  PutTuple(nlh, CTA_TUPLE_ORIG, k, false);
  // The reply comes from the DNAT target, 10.22.0.5:80.
  KernelEntry target = k;
  target.dst = "10.22.0.5";
  target.dport = 80;
  PutTuple(nlh, CTA_TUPLE_REPLY, target, true);
  mnl_attr_put_u32(nlh, CTA_STATUS, htonl(0x20 | 0x8));
  PutCounters(nlh, CTA_COUNTERS_ORIG, 3, 1000);
  PutCounters(nlh, CTA_COUNTERS_REPLY, 2, 500);
  std::optional<Flow> f = ParseFlow(nlh);
  ASSERT_TRUE(f.has_value());
  EXPECT_TRUE(f->destroyed);
  EXPECT_TRUE(f->dnat());
  EXPECT_EQ(f->dst, Ip("192.0.2.1"));
  EXPECT_EQ(f->dst_port, 8080);
  EXPECT_EQ(f->reply_src, Ip("10.22.0.5"));
  EXPECT_EQ(f->reply_src_port, 80);
  EXPECT_EQ(f->packets, 5u);
  EXPECT_EQ(f->bytes, 1500u);
}

TEST(ParseFlowTest, DumpReplyWithoutNatOrCounters) {
  std::vector<char> buf(1024);
  std::optional<Flow> f = ParseFlow(KernelMessage(buf.data(), KernelEntry{}));
  ASSERT_TRUE(f.has_value());
  EXPECT_FALSE(f->destroyed);
  EXPECT_FALSE(f->dnat());  // status 8: seen reply only
  EXPECT_EQ(f->reply_src, Ip("192.0.2.1"));
  EXPECT_EQ(f->bytes, 0u);

  nlmsghdr* nlh = KernelMessage(buf.data(), KernelEntry{});
  nlh->nlmsg_type = NLMSG_DONE;
  EXPECT_FALSE(ParseFlow(nlh).has_value());
}

TEST(DeleteTest, EchoesTupleZoneAndId) {
  std::vector<char> buf(1024);
  KernelEntry k;
  k.zone = 3;
  std::optional<Entry> e = ParseEntry(KernelMessage(buf.data(), k));
  ASSERT_TRUE(e.has_value());
  char out[kMaxRequestSize];
  nlmsghdr* del = BuildDelete(out, 9, *e);
  EXPECT_EQ(del->nlmsg_type, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE);
  EXPECT_EQ(del->nlmsg_flags, NLM_F_REQUEST | NLM_F_ACK);
  EXPECT_EQ(del->nlmsg_seq, 9u);
  EXPECT_EQ(Nfg(del)->nfgen_family, AF_INET);
  auto top = AttrsOf(del);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(mnl_attr_get_u32(top[CTA_ID]), htonl(0x11223344));
  EXPECT_EQ(mnl_attr_get_u16(top[CTA_ZONE]), htons(3));
  const nlattr* tuple = top[CTA_TUPLE_ORIG];
  EXPECT_TRUE(tuple->nla_type & NLA_F_NESTED);
  EXPECT_EQ(std::string(static_cast<const char*>(mnl_attr_get_payload(tuple)),
                        mnl_attr_get_payload_len(tuple)),
            e->orig_tuple);
  auto ip = AttrsOf(AttrsOf(tuple)[CTA_TUPLE_IP]);
  EXPECT_EQ(mnl_attr_get_u32(ip[CTA_IP_V4_SRC]), htonl(0xc6336407));
}

Entry Make(Family f, uint8_t proto, const char* dst, uint16_t port) {
  Entry e;
  e.family = f;
  e.l4proto = proto;
  e.dst = Ip(dst);
  e.dst_port = port;
  return e;
}

TEST(MatchesTest, ProtocolFamilyPortRangeAndHost) {
  HostPortQuery any{Family::kIPv4, Protocol::kUdp, std::nullopt, 5000, 5002};
  EXPECT_TRUE(Matches(Make(Family::kIPv4, 17, "192.0.2.1", 5000), any));
  EXPECT_TRUE(Matches(Make(Family::kIPv4, 17, "192.0.2.9", 5002), any));
  EXPECT_FALSE(Matches(Make(Family::kIPv4, 17, "192.0.2.1", 4999), any));
  EXPECT_FALSE(Matches(Make(Family::kIPv4, 17, "192.0.2.1", 5003), any));
  EXPECT_FALSE(Matches(Make(Family::kIPv4, 6, "192.0.2.1", 5000), any));
  EXPECT_FALSE(Matches(Make(Family::kIPv6, 17, "2001:db8::1", 5000), any));
  HostPortQuery host{Family::kIPv4, Protocol::kUdp, Ip("192.0.2.1"), 5000, 5000};
  EXPECT_TRUE(Matches(Make(Family::kIPv4, 17, "192.0.2.1", 5000), host));
  EXPECT_FALSE(Matches(Make(Family::kIPv4, 17, "192.0.2.2", 5000), host));
}

TEST(KernelIgnoredFilterTest, OnlyFieldsTheKernelWasAskedToFilter) {
  HostPortQuery q{Family::kIPv4, Protocol::kUdp, Ip("192.0.2.1"), 5000, 5010};
  uint32_t flags = FilterFlags(q, /*port=*/true);
  EXPECT_FALSE(KernelIgnoredFilter(Make(Family::kIPv4, 17, "192.0.2.1", 5003), q, flags, 5003));
  EXPECT_TRUE(KernelIgnoredFilter(Make(Family::kIPv4, 17, "192.0.2.1", 5004), q, flags, 5003));
  EXPECT_TRUE(KernelIgnoredFilter(Make(Family::kIPv4, 6, "192.0.2.1", 5003), q, flags, 5003));
  EXPECT_TRUE(KernelIgnoredFilter(Make(Family::kIPv4, 17, "192.0.2.2", 5003), q, flags, 5003));
  // Filtered to the protocol only: any port and address may come back.
  EXPECT_FALSE(KernelIgnoredFilter(Make(Family::kIPv4, 17, "192.0.2.1", 9), q, kFilterProtoNum, 0));
  EXPECT_TRUE(KernelIgnoredFilter(Make(Family::kIPv4, 6, "192.0.2.1", 9), q, kFilterProtoNum, 0));
}

}  // namespace
}  // namespace fabric::nat::ctnetlink
