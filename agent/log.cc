#include "agent/log.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fabric::agent {

void LogLine(const std::string& text) {
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      " ", text, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace fabric::agent
