// SOAP 1.1 as UPnP control uses it (UPnP Device Architecture 1.1, 3.2):
// the request body names one action of one service and carries its
// arguments as child elements; the answer is an <ActionResponse> or a
// UPnPError fault. Parsing is bounded and strict: the body size is capped
// by the HTTP server, XML goes through pugixml (no DTD, no external
// entities: pugixml expands only the predefined ones), nesting is limited,
// the SOAPAction header must name the same service type and action as the
// body, arguments are unique and short. No I/O.
//
// Thread-safe (pure functions).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::agent::upnp {

// Limits on one request.
inline constexpr size_t kMaxSoapBody = 16 * 1024;
inline constexpr int kMaxSoapDepth = 8;   // Envelope/Body/Action/Arg is 4
inline constexpr size_t kMaxArguments = 16;
inline constexpr size_t kMaxArgumentBytes = 1024;

// A parsed request.
struct SoapCall {
  std::string service_type;  // "urn:schemas-upnp-org:service:WANIPConnection:2"
  int version = 0;           // the service type's version, 2 above
  std::string action;        // "AddPortMapping"
  std::vector<std::pair<std::string, std::string>> arguments;  // in order

  // The argument named `name`, or nullptr.
  const std::string* Argument(absl::string_view name) const;
};

// Parses `body` against the SOAPAction header value (with or without its
// quotes). kInvalidArgument saying what is wrong (not XML, no Envelope,
// too deep, header and body disagree, a repeated or oversized argument).
absl::StatusOr<SoapCall> ParseSoapCall(absl::string_view soap_action, absl::string_view body);

// The body of a successful answer: <u:{action}Response xmlns:u=...> with
// the arguments in order, every value escaped, then the `cdata` arguments,
// each value whole in a CDATA section (GetListOfPortMappings' XML listing,
// which clients read unescaped).
std::string SoapResponse(const SoapCall& call,
                         const std::vector<std::pair<std::string, std::string>>& out,
                         const std::vector<std::pair<std::string, std::string>>& cdata = {});

// The body of a fault (sent with HTTP 500): faultcode s:Client, faultstring
// UPnPError, detail/UPnPError/errorCode and errorDescription.
std::string SoapFault(int code, absl::string_view description);

// The standard description of a UPnP error code ("ConflictInMappingEntry"
// for 718), or "Action Failed" for one it does not know.
absl::string_view UpnpErrorName(int code);

}  // namespace fabric::agent::upnp
