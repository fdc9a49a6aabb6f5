#include "agent/wan/routes.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fabric::agent::wan {
namespace {

constexpr unsigned kRtfUp = 0x1;
constexpr unsigned kRtfGateway = 0x2;

bool Hex32(absl::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 8) return false;
  return absl::SimpleHexAtoi(s, out);
}

}  // namespace

absl::StatusOr<std::vector<DefaultRoute>> ParseDefaultRoutes(absl::string_view table) {
  std::vector<DefaultRoute> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(table, '\n')) {
    ++line_no;
    if (line_no == 1 || line.empty()) continue;  // the header
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    uint32_t dest = 0, gw = 0, flags = 0, metric = 0, mask = 0;
    if (f.size() < 8 || !Hex32(f[1], &dest) || !Hex32(f[2], &gw) || !Hex32(f[3], &flags) ||
        !absl::SimpleAtoi(f[6], &metric) || !Hex32(f[7], &mask)) {
      return absl::InvalidArgumentError(
          absl::StrCat("route table line ", line_no, " is not \"Iface Destination Gateway Flags "
                       "RefCnt Use Metric Mask ...\": \"", line, "\""));
    }
    if (dest != 0 || mask != 0 || !(flags & kRtfUp)) continue;
    DefaultRoute r;
    r.interface = std::string(f[0]);
    // The kernel prints the address as the 32-bit word it holds in network
    // order: its bytes in memory are the address's bytes.
    std::memcpy(r.gateway.data(), &gw, 4);
    r.via_gateway = (flags & kRtfGateway) != 0;
    r.metric = metric;
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<DefaultRoute>> ReadDefaultRoutes(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  return ParseDefaultRoutes(text.str());
}

}  // namespace fabric::agent::wan
