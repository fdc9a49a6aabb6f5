// Escaping for XML and HTML text and attribute values, shared by the SOAP
// answers (agent/upnp/soap.cc) and the status page (status_page.cc):
// & < > " ' become entities, and control characters other than tab and
// newline (which neither XML 1.0 nor a page can carry) are dropped.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace fabric::agent {

std::string MarkupEscape(absl::string_view text);

}  // namespace fabric::agent
