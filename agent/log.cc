#include "agent/log.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fabric::agent {

std::string EscapeForLog(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f || c == '\\') {
      absl::StrAppend(&out, absl::StrFormat("\\x%02x", c));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

void LogLine(const std::string& text) {
  // Ids, names and messages come from clients: one event is one line, and
  // no field can forge another line or a terminal escape.
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      " ", EscapeForLog(text), "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace fabric::agent
