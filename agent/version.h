// The version every fabric-nat binary reports (fabric-agent --version,
// fabricctl --version, GetStatus). Bump it with each release.
#pragma once

namespace fabric {

inline constexpr char kVersion[] = "0.3.0";

}  // namespace fabric
