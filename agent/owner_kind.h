// The short names of owner kinds, as fabricctl prints them and /metrics
// labels them.
#pragma once

#include <array>

#include "fabric/nat/v1/nat.pb.h"

namespace fabric::agent {

inline const char* OwnerKindName(::fabric::nat::v1::OwnerKind k) {
  namespace v1 = ::fabric::nat::v1;
  switch (k) {
    case v1::OWNER_KIND_CNI: return "cni";
    case v1::OWNER_KIND_NATPMP: return "natpmp";
    case v1::OWNER_KIND_PCP: return "pcp";
    case v1::OWNER_KIND_UPNP: return "upnp";
    case v1::OWNER_KIND_API: return "api";
    case v1::OWNER_KIND_STATIC: return "static";
    default: return "?";
  }
}

// Every kind a mapping can have, in the order above.
inline constexpr std::array<::fabric::nat::v1::OwnerKind, 6> kOwnerKinds = {
    ::fabric::nat::v1::OWNER_KIND_CNI,  ::fabric::nat::v1::OWNER_KIND_NATPMP,
    ::fabric::nat::v1::OWNER_KIND_PCP,  ::fabric::nat::v1::OWNER_KIND_UPNP,
    ::fabric::nat::v1::OWNER_KIND_API,  ::fabric::nat::v1::OWNER_KIND_STATIC};

}  // namespace fabric::agent
