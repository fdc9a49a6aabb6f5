// ctnetlink messages for forgetting the conntrack entries of host ports:
// the dump request (filtered in the kernel, or the whole family), the parse
// of one dumped entry, the user-space match, and the delete of one entry.
// Pure functions, no I/O (nat/netlink does the socket); used by
// NetfilterConntrackCleaner and tested without a kernel.
//
// The kernel-side filter (Linux >= 5.8, ctnetlink_start/ctnetlink_filter_match):
// a dump request that carries CTA_TUPLE_ORIG and CTA_FILTER
// {CTA_FILTER_ORIG_FLAGS = which fields of that tuple must be equal} returns
// only the entries whose original tuple matches. The kernel compares
//   - the destination address, exactly (IPv4 only here: the kernel
//     compares IPv6 addresses with `!ipv6_addr_cmp`, inverted; on Linux
//     6.18 a dump filtered to 2001:db8::1 returns the entries of every
//     other address and none of it. An IPv6 address is matched in user
//     space instead);
//   - the L4 protocol number;
//   - the destination port, exactly, and only for TCP and UDP (other
//     protocols' ports are parsed and ignored). No ranges.
// Kernels without CTA_FILTER ignore both attributes and dump the whole
// family, which is why every entry is matched again in user space.
//
// Thread-compatible (values only).
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <optional>
#include <string>

#include "nat/types.h"

namespace fabric::nat::ctnetlink {

// The kernel's CTA_FILTER_F_* bits (net/netfilter/nf_internals.h; not in the
// uapi headers, stable since 5.8).
inline constexpr uint32_t kFilterIpDst = 1u << 1;
inline constexpr uint32_t kFilterProtoNum = 1u << 3;
inline constexpr uint32_t kFilterProtoDstPort = 1u << 5;

// Entries whose original direction is `protocol` to ports [port_lo, port_hi]
// of `host_ip` (nullopt: any address) in `family`.
struct HostPortQuery {
  Family family = Family::kIPv4;
  Protocol protocol = Protocol::kUdp;
  std::optional<IpAddress> host_ip;
  uint16_t port_lo = 0;
  uint16_t port_hi = 0;
};

// Whether the kernel can filter `protocol`'s destination port in a dump
// (TCP and UDP). For the others one dump serves the whole range.
bool KernelFiltersPort(Protocol protocol);

// The CTA_FILTER_ORIG_FLAGS of a filtered dump for `q`: the protocol, the
// IPv4 host address if any, and with `port` the destination port where the
// kernel can filter it.
uint32_t FilterFlags(const HostPortQuery& q, bool port);

// Maximum size of a message built here.
inline constexpr size_t kMaxRequestSize = 256;

// Builds, at `buf` (kMaxRequestSize bytes), IPCTNL_MSG_CT_GET with
// NLM_F_DUMP for `q.family`. With `filter_flags` (from FilterFlags): the
// kernel returns only entries whose original tuple has those fields of `q`,
// with destination port `port`. With 0: every entry of the family (the
// fallback).
nlmsghdr* BuildDumpRequest(char* buf, uint32_t seq, const HostPortQuery& q, uint32_t filter_flags,
                           uint16_t port);

// Whether the kernel's filter can select exactly `q`'s entries of one port
// (TCP or UDP; an IPv4 host address or none: the kernel's IPv6 address
// filter compares the wrong way round), so that it may delete them itself.
bool KernelFlushIsExact(const HostPortQuery& q);

// Builds IPCTNL_MSG_CT_DELETE with CTA_TUPLE_ORIG + CTA_FILTER and NLM_F_ACK:
// the kernel deletes every entry of `q.family` whose original tuple matches
// FilterFlags(q, true) with destination port `port`, walking its table with
// its per-bucket locks (preemptible), and does not say how many. A kernel
// that does not filter deletes (before 6.4) takes the tuple as one entry's,
// finds it incomplete (no source) and answers EINVAL: nothing is deleted.
// (Linux 6.18 filters them.)
nlmsghdr* BuildFilteredFlush(char* buf, uint32_t seq, const HostPortQuery& q, uint16_t port);

// One dumped entry: what the match needs, and what deleting it needs.
struct Entry {
  Family family = Family::kIPv4;
  uint8_t l4proto = 0;
  IpAddress dst;                 // original direction's destination
  uint16_t dst_port = 0;         // host order; 0 for protocols without ports
  std::string orig_tuple;        // CTA_TUPLE_ORIG's payload, as the kernel sent it
  std::optional<uint32_t> id;    // CTA_ID, network order as sent
  std::optional<uint16_t> zone;  // CTA_ZONE, network order as sent
};

// Parses an IPCTNL_MSG_CT_NEW message (a dump reply). nullopt: another
// message type, or no parsable original tuple.
std::optional<Entry> ParseEntry(const nlmsghdr* nlh);

// Whether `e` is one of the entries `q` asks for.
bool Matches(const Entry& e, const HostPortQuery& q);

// Whether `e`, returned by a dump built with `filter_flags` and `port`, is
// one the kernel should have left out: then the kernel ignored the filter
// and that dump held the whole family.
bool KernelIgnoredFilter(const Entry& e, const HostPortQuery& q, uint32_t filter_flags,
                         uint16_t port);

// One connection as traffic accounting sees it (a dump reply or a destroy
// event): its original destination, the reply's source (where DNAT sent
// it), its NAT status and its counters (both directions; zero unless
// net.netfilter.nf_conntrack_acct was on when it was created).
struct Flow {
  Family family = Family::kIPv4;
  uint8_t l4proto = 0;
  IpAddress dst;            // original direction's destination
  uint16_t dst_port = 0;    // host order; 0 for protocols without ports
  IpAddress reply_src;      // reply direction's source: the DNAT target
  uint16_t reply_src_port = 0;
  uint32_t status = 0;      // IPS_* bits (host order)
  bool destroyed = false;   // an IPCTNL_MSG_CT_DELETE (destroy event)
  uint64_t packets = 0, bytes = 0;  // both directions

  // The kernel's IPS_DST_NAT: a DNAT rule translated it.
  bool dnat() const { return (status & (1u << 5)) != 0; }
};

// Parses an IPCTNL_MSG_CT_NEW (dump reply, new event) or
// IPCTNL_MSG_CT_DELETE (destroy event) message. nullopt: another type, or
// no parsable original and reply tuples.
std::optional<Flow> ParseFlow(const nlmsghdr* nlh);

// Builds, at `buf` (kMaxRequestSize bytes), IPCTNL_MSG_CT_DELETE of `e` with
// NLM_F_ACK: its original tuple, zone and id (so that a new entry that took
// the same tuple meanwhile stays).
nlmsghdr* BuildDelete(char* buf, uint32_t seq, const Entry& e);

}  // namespace fabric::nat::ctnetlink
