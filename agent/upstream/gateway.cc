#include "agent/upstream/gateway.h"

#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fabric::agent::upstream {
namespace {

constexpr unsigned kRtfUp = 0x1;
constexpr unsigned kRtfGateway = 0x2;

bool Hex32(absl::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 8) return false;
  return absl::SimpleHexAtoi(s, out);
}

}  // namespace

absl::StatusOr<Ipv4> ParseDefaultGateway(absl::string_view table) {
  std::optional<Ipv4> best;
  uint32_t best_metric = 0;
  bool tie = false;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(table, '\n')) {
    ++line_no;
    if (line_no == 1 || line.empty()) continue;  // the header
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    uint32_t dest = 0, gw = 0, flags = 0, metric = 0, mask = 0;
    if (f.size() < 8 || !Hex32(f[1], &dest) || !Hex32(f[2], &gw) || !Hex32(f[3], &flags) ||
        !absl::SimpleAtoi(f[6], &metric) || !Hex32(f[7], &mask)) {
      return absl::InvalidArgumentError(
          absl::StrCat("route table line ", line_no, " is not \"Iface Destination Gateway Flags "
                       "RefCnt Use Metric Mask ...\": \"", line, "\""));
    }
    if (dest != 0 || mask != 0 || !(flags & kRtfUp) || !(flags & kRtfGateway) || gw == 0) continue;
    // The kernel prints the address as the 32-bit word it holds in network
    // order: its bytes in memory are the address's bytes.
    Ipv4 a{};
    std::memcpy(a.data(), &gw, 4);
    if (!best || metric < best_metric) {
      best = a;
      best_metric = metric;
      tie = false;
    } else if (metric == best_metric && a != *best) {
      tie = true;
    }
  }
  if (!best) {
    return absl::NotFoundError("no IPv4 default route via a gateway in this network namespace "
                               "(give the gateway explicitly: --gateway IP)");
  }
  if (tie) {
    return absl::FailedPreconditionError(
        absl::StrCat("several IPv4 default routes with metric ", best_metric,
                     " via different gateways; give one explicitly (--gateway IP)"));
  }
  return *best;
}

absl::StatusOr<Ipv4> DefaultGateway(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", strerror(errno),
                                               " (give the gateway explicitly: --gateway IP)"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseDefaultGateway(text.str());
}

}  // namespace fabric::agent::upstream
