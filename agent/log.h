// The agent's log: one line per event on stderr, "<UTC time> <text>".
// Thread-safe (one fwrite per line).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace fabric::agent {

void LogLine(const std::string& text);
// `text` with control characters, DEL and backslash as \xNN: what LogLine
// writes of a line.
std::string EscapeForLog(absl::string_view text);

}  // namespace fabric::agent
