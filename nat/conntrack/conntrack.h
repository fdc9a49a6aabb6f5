// ConntrackCleaner: forgets connection-tracking entries of a host port, so
// that a datagram flow keeps no stale translation after a mapping goes or
// changes (UDP clients that keep sending would otherwise stay pinned to the
// old container, or to no container, until the entry times out). The agent's
// owners call it after a commit, outside the writer's lock
// (agent/owners/mappings.cc: ForgetFlowsAfterCommit).
//
// Implementations: NetfilterConntrackCleaner (ctnetlink through
// nat/netlink, in the calling thread's network namespace),
// RecordingConntrackCleaner (testonly).
// Thread-safe: calls may run concurrently.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nat/types.h"

namespace fabric::nat::netlink {
class NetlinkSocket;
}  // namespace fabric::nat::netlink
namespace fabric::nat::ctnetlink {
struct HostPortQuery;
}  // namespace fabric::nat::ctnetlink

namespace fabric::nat {

class ConntrackCleaner {
 public:
  virtual ~ConntrackCleaner() = default;
  // Deletes entries whose original direction is `protocol` to host ports
  // [port_lo, port_hi] (on `host_ip`, or any address) in `family`. Returns
  // how many were deleted, or kUncounted when the kernel deleted them
  // itself and did not say.
  static constexpr int kUncounted = -1;
  virtual absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                              std::optional<IpAddress> host_ip, uint16_t port_lo,
                                              uint16_t port_hi) = 0;
};

// Targeted. Where the kernel's filter selects exactly the entries asked for
// (TCP or UDP, any address or an IPv4 one, a range of at most kMaxPortDumps
// ports), one filtered delete per port (IPCTNL_MSG_CT_DELETE with
// CTA_TUPLE_ORIG + CTA_FILTER): the kernel walks its table and deletes the
// matches itself, taking each bucket's lock in turn and yielding the CPU
// between buckets. A dump cannot yield: it walks the whole table with
// bottom halves off until its message is full, and a filtered dump that
// finds nothing walks all of it at once (~50 ms at 200k entries on this
// machine, during which that core runs nothing else: readers' tails).
//
// Otherwise, and when the kernel refuses filtered deletes (it then answers
// EINVAL and deletes nothing; logged once, later calls dump): one
// kernel-filtered dump per port of the range (IPCTNL_MSG_CT_GET
// with CTA_TUPLE_ORIG + CTA_FILTER, Linux >= 5.8; see ctnetlink.h for what
// the kernel compares), then one IPCTNL_MSG_CT_DELETE per entry found, by
// its original tuple and id. Ranges wider than kMaxPortDumps, and protocols
// whose ports the kernel cannot filter (SCTP), take one dump filtered by
// protocol (and IPv4 host address) instead. Every returned entry is matched
// again here, so a kernel that filters less than asked costs time, never
// correctness.
//
// Fallback: when the kernel refuses the filter (EINVAL/EOPNOTSUPP) or
// returns entries it should have filtered out (kernels before 5.8 ignore
// the attributes), the call redoes the work with one dump of the whole
// family, filtered here, logs that once, and every later call does the
// same.
//
// Each call opens its own netlink socket; the only shared state is the
// fallback flag (atomic). Thread-safe.
class NetfilterConntrackCleaner : public ConntrackCleaner {
 public:
  // Wider ranges take one protocol-filtered dump. Every dump walks the
  // kernel's whole conntrack hash (all buckets, every namespace's entries)
  // whatever it returns, so N port dumps cost N walks: on the 2-core
  // machine, 262,144 buckets, one walk took ~12 ms empty and 55-135 ms with
  // 200k entries, while a protocol dump that copies out 10k (200k) entries
  // costs 3-4 (~10-20) walks (tests/bench/conntrack_bench.cc).
  static constexpr int kMaxPortDumps = 4;

  enum class Dump {
    kFlush,     // kernel-side filtered deletes where exact, else kFiltered
    kFiltered,  // kernel-side filtered dumps, falling back to kFull
    kFull,      // one dump of the family per call, filtered here
  };
  struct Options {
    Dump dump = Dump::kFlush;
    // Where the one line about a fallback goes (must be thread-safe);
    // nullptr: stderr.
    std::function<void(const std::string&)> log;
  };

  NetfilterConntrackCleaner() : NetfilterConntrackCleaner(Options{}) {}
  explicit NetfilterConntrackCleaner(Options options);

  // kInvalidArgument: port_lo > port_hi. kPermissionDenied without
  // CAP_NET_ADMIN, kUnavailable (or the code of the errno) when a dump or
  // delete fails; entries that went meanwhile are not errors and not
  // counted.
  absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                      std::optional<IpAddress> host_ip, uint16_t port_lo,
                                      uint16_t port_hi) override;

  // Whether calls still filter in the kernel (false with Dump::kFull or
  // after a fallback).
  bool filters_in_kernel() const { return filtered_.load(); }
  // Whether calls still delete in the kernel where exact (false unless
  // Dump::kFlush, and after the kernel refused).
  bool deletes_in_kernel() const { return flush_.load(); }

 private:
  void FallBack(const std::string& why);
  // The filtered deletes of `q`: OK, kInvalidArgument when the kernel
  // refused them (nothing deleted), or another error.
  absl::Status Flush(netlink::NetlinkSocket& socket, const ctnetlink::HostPortQuery& q);

  std::function<void(const std::string&)> log_;
  std::atomic<bool> flush_;
  std::atomic<bool> filtered_;
};

// Records calls; for tests of code that uses a cleaner.
class RecordingConntrackCleaner : public ConntrackCleaner {
 public:
  absl::StatusOr<int> ForgetHostPorts(Family family, Protocol protocol,
                                      std::optional<IpAddress> host_ip, uint16_t port_lo,
                                      uint16_t port_hi) override {
    std::lock_guard<std::mutex> lock(mu);
    calls.push_back(absl::StrCat(ProtocolName(protocol), " ", port_lo, "-", port_hi));
    return 0;
  }
  // Read `calls` only while no call is in flight.
  std::mutex mu;
  std::vector<std::string> calls;  // guarded by mu while calls run
};

}  // namespace fabric::nat
