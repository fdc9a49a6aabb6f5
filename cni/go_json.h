// Reading JSON object keys the way Go's encoding/json matches them to struct
// fields, so fabric-nat accepts what Go plugins (the reference portmap)
// accept. Container runtimes disagree on spelling: containerd 1.6 (go-cni)
// marshals its PortMapping struct without JSON tags ("HostPort",
// "ContainerPort", "Protocol", "HostIP"), while CRI-O, Podman and libcni send
// "hostPort" and so on.
//
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "nlohmann/json.hpp"

namespace fabric::cni {

// The key of `obj` that Go would decode into a field named `field`: the key
// spelled exactly like `field` if there is one, else the one key equal to it
// under Go's case folding (ASCII letters, plus U+212A KELVIN SIGN for 'k' and
// U+017F LATIN SMALL LETTER LONG S for 's', which Go folds too).
struct GoKey {
  // Null when no key matches (or on `ambiguous`).
  const nlohmann::json* value = nullptr;
  // The key as it appears in `obj`, for messages.
  std::string spelling;
  // Set when no key matches exactly and several match after folding: Go
  // would keep whichever comes last in the document, an order a parsed
  // object no longer has, so the caller reports the spellings instead of
  // guessing. Holds them, comma-separated.
  std::string ambiguous;
};
GoKey FindGoKey(const nlohmann::json& obj, std::string_view field);

// `s` under Go's case folding as above (for tests and comparisons).
std::string GoFold(std::string_view s);

}  // namespace fabric::cni
