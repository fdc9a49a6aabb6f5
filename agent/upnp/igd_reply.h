// Internal to IgdControl (igd.cc, igd_pinholes.cc): building replies and
// reading the arguments every action takes the same way.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/upnp/igd.h"
#include "agent/upnp/soap.h"

namespace fabric::agent::upnp::internal {

using Out = std::vector<std::pair<std::string, std::string>>;

inline IgdControl::Reply Ok(const SoapCall& call, const Out& out = {}) {
  return {200, SoapResponse(call, out), 0, ""};
}

// A fault with the standard description; `detail` goes to the log only.
inline IgdControl::Reply Fault(int code, std::string detail) {
  return {500, SoapFault(code, UpnpErrorName(code)), code, std::move(detail)};
}

// An argument the action requires; kInvalidArgument (402) when missing.
absl::StatusOr<std::string> Required(const SoapCall& call, absl::string_view name);
// A decimal argument 0-`max` (digits only, surrounding blanks allowed).
absl::StatusOr<uint32_t> Unsigned(const SoapCall& call, absl::string_view name, uint32_t max);

}  // namespace fabric::agent::upnp::internal
