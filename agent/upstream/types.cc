#include "agent/upstream/types.h"

#include <arpa/inet.h>

#include "absl/strings/str_cat.h"

namespace fabric::agent::upstream {

const char* ProtoName(Proto p) { return p == Proto::kUdp ? "udp" : "tcp"; }

const char* MethodName(Method m) {
  switch (m) {
    case Method::kPcp: return "pcp";
    case Method::kNatPmp: return "natpmp";
    case Method::kUpnp: return "upnp";
    case Method::kAuto: break;
  }
  return "auto";
}

absl::StatusOr<Proto> ParseProto(absl::string_view s) {
  if (s == "tcp") return Proto::kTcp;
  if (s == "udp") return Proto::kUdp;
  return absl::InvalidArgumentError(
      absl::StrCat("protocol \"", s, "\": upstream mappings are tcp or udp"));
}

absl::StatusOr<Method> ParseMethod(absl::string_view s) {
  if (s == "auto") return Method::kAuto;
  if (s == "pcp") return Method::kPcp;
  if (s == "natpmp" || s == "nat-pmp") return Method::kNatPmp;
  if (s == "upnp") return Method::kUpnp;
  return absl::InvalidArgumentError(
      absl::StrCat("--protocol \"", s, "\": expected auto, pcp, natpmp or upnp"));
}

std::string Ipv4String(const Ipv4& a) { return absl::StrCat(a[0], ".", a[1], ".", a[2], ".", a[3]); }

absl::StatusOr<Ipv4> ParseIpv4(absl::string_view s) {
  Ipv4 a{};
  std::string text(s);
  if (inet_pton(AF_INET, text.c_str(), a.data()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("\"", s, "\" is not an IPv4 address"));
  }
  return a;
}

}  // namespace fabric::agent::upstream
