#include "nat/conntrack/conntrack.h"

#include <cstdio>
#include <utility>
#include <vector>

#include "nat/conntrack/ctnetlink.h"
#include "nat/netlink/socket.h"

namespace fabric::nat {

namespace {

std::string Describe(const ctnetlink::HostPortQuery& q) {
  return absl::StrCat(ProtocolName(q.protocol), " ",
                      q.host_ip.has_value() ? q.host_ip->ToString() : FamilyName(q.family),
                      " port ", q.port_lo,
                      q.port_hi != q.port_lo ? absl::StrCat("-", q.port_hi) : "");
}

// One dump: its filter flags (0: the whole family) and port.
struct DumpPlan {
  uint32_t flags;
  uint16_t port;
};

}  // namespace

NetfilterConntrackCleaner::NetfilterConntrackCleaner(Options options)
    : log_(std::move(options.log)),
      flush_(options.dump == Dump::kFlush),
      filtered_(options.dump != Dump::kFull) {
  if (!log_) {
    log_ = [](const std::string& line) {
      std::string text = line + "\n";
      std::fwrite(text.data(), 1, text.size(), stderr);
    };
  }
}

void NetfilterConntrackCleaner::FallBack(const std::string& why) {
  if (filtered_.exchange(false)) {
    log_(absl::StrCat("conntrack: ", why,
                      "; forgetting host ports by dumping the whole table from now on"));
  }
}

absl::StatusOr<int> NetfilterConntrackCleaner::ForgetHostPorts(Family family, Protocol protocol,
                                                               std::optional<IpAddress> host_ip,
                                                               uint16_t port_lo, uint16_t port_hi) {
  if (port_lo > port_hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("conntrack: empty port range ", port_lo, "-", port_hi));
  }
  if (host_ip.has_value() && host_ip->family() != family) {
    return absl::InvalidArgumentError(absl::StrCat("conntrack: host address ", host_ip->ToString(),
                                                   " is not ", FamilyName(family)));
  }
  const ctnetlink::HostPortQuery q{family, protocol, host_ip, port_lo, port_hi};
  absl::StatusOr<std::unique_ptr<netlink::NetlinkSocket>> socket = netlink::NetlinkSocket::Open();
  if (!socket.ok()) return socket.status();

  // One request per port where the kernel compares the port, up to
  // kMaxPortDumps of them: a delete each where its filter is exact, else a
  // dump each.
  const bool per_port = ctnetlink::KernelFiltersPort(protocol) && port_hi - port_lo < kMaxPortDumps;
  if (flush_.load() && per_port && ctnetlink::KernelFlushIsExact(q)) {
    absl::Status s = Flush(**socket, q);
    if (s.ok()) return kUncounted;
    if (!absl::IsInvalidArgument(s)) return s;
    if (flush_.exchange(false)) {
      log_(absl::StrCat("conntrack: the kernel refused a filtered delete (", s.message(),
                        "); forgetting host ports by filtered dumps from now on"));
    }
  }

  std::vector<ctnetlink::Entry> found;
  // Runs one dump; `ignored`: the kernel returned entries outside the filter.
  auto dump = [&](DumpPlan d, bool* ignored) {
    return (*socket)->Request(
        absl::StrCat("conntrack: dump ", d.flags != 0 ? "filtered to " : "for ", Describe(q)),
        [&](char* buf, uint32_t seq) {
          return ctnetlink::BuildDumpRequest(buf, seq, q, d.flags, d.port);
        },
        [&](const nlmsghdr* nlh) {
          std::optional<ctnetlink::Entry> e = ctnetlink::ParseEntry(nlh);
          if (!e.has_value()) return absl::OkStatus();
          if (d.flags != 0 && ctnetlink::KernelIgnoredFilter(*e, q, d.flags, d.port)) {
            *ignored = true;
          }
          if (ctnetlink::Matches(*e, q)) found.push_back(std::move(*e));
          return absl::OkStatus();
        });
  };

  bool full = !filtered_.load();
  if (!full) {
    std::vector<DumpPlan> plan;
    if (per_port) {
      uint32_t flags = ctnetlink::FilterFlags(q, /*port=*/true);
      for (int p = port_lo; p <= port_hi; ++p) plan.push_back({flags, static_cast<uint16_t>(p)});
    } else {
      plan.push_back({ctnetlink::FilterFlags(q, /*port=*/false), 0});
    }
    for (const DumpPlan& d : plan) {
      bool ignored = false;
      absl::Status s = dump(d, &ignored);
      if (absl::IsInvalidArgument(s)) {
        FallBack(absl::StrCat("the kernel refused a filtered dump (", s.message(), ")"));
        found.clear();
        full = true;
        break;
      }
      if (!s.ok()) return s;
      if (ignored) {
        // A kernel before 5.8 ignores the filter (that dump held the whole
        // family); one that filters wrongly may also have left out entries
        // it should have sent, so the full dump starts over.
        FallBack("the kernel returned entries outside the filter of a dump");
        found.clear();
        full = true;
        break;
      }
    }
  }
  if (full) {
    bool ignored = false;
    if (absl::Status s = dump({0, 0}, &ignored); !s.ok()) return s;
  }

  int deleted = 0;
  absl::Status first_error;
  for (const ctnetlink::Entry& e : found) {
    absl::Status s = (*socket)->Request(
        absl::StrCat("conntrack: delete ", ProtocolName(protocol), " entry to ", e.dst.ToString(),
                     " port ", e.dst_port),
        [&](char* buf, uint32_t seq) { return ctnetlink::BuildDelete(buf, seq, e); },
        [](const nlmsghdr*) { return absl::OkStatus(); });
    if (s.ok()) {
      ++deleted;
    } else if (!absl::IsNotFound(s) && first_error.ok()) {
      // An entry that went meanwhile is fine; anything else is reported
      // after the others were tried.
      first_error = s;
    }
  }
  if (!first_error.ok()) return first_error;
  return deleted;
}

absl::Status NetfilterConntrackCleaner::Flush(netlink::NetlinkSocket& socket,
                                              const ctnetlink::HostPortQuery& q) {
  for (int p = q.port_lo; p <= q.port_hi; ++p) {
    ctnetlink::HostPortQuery one = q;
    one.port_lo = one.port_hi = static_cast<uint16_t>(p);
    absl::Status s = socket.Request(
        absl::StrCat("conntrack: filtered delete of ", Describe(one)),
        [&](char* buf, uint32_t seq) {
          return ctnetlink::BuildFilteredFlush(buf, seq, q, one.port_lo);
        },
        [](const nlmsghdr*) { return absl::OkStatus(); });
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace fabric::nat
