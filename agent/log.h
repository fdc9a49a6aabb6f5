// The agent's log: one line per event on stderr, "<UTC time> <text>".
// Thread-safe (one fwrite per line).
#pragma once

#include <string>

namespace fabric::agent {

void LogLine(const std::string& text);

}  // namespace fabric::agent
