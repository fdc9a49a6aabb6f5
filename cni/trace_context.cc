#include "cni/trace_context.h"

#include "absl/random/random.h"
#include "absl/strings/str_format.h"

namespace fabric::cni {

namespace {

bool Hex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool AllZero(absl::string_view s) { return s.find_first_not_of('0') == absl::string_view::npos; }

}  // namespace

std::optional<TraceContext> ParseTraceparent(absl::string_view tp, absl::string_view state) {
  if (tp.size() < 55) return std::nullopt;
  absl::string_view version = tp.substr(0, 2);
  if (!Hex(version) || version == "ff") return std::nullopt;
  // Version 00 is exactly 55 characters; a later version may add fields
  // after a dash.
  if (version == "00" ? tp.size() != 55 : (tp.size() > 55 && tp[55] != '-')) {
    return std::nullopt;
  }
  if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return std::nullopt;
  absl::string_view trace_id = tp.substr(3, 32), parent = tp.substr(36, 16),
                    flags = tp.substr(53, 2);
  if (!Hex(trace_id) || !Hex(parent) || !Hex(flags) || AllZero(trace_id) || AllZero(parent)) {
    return std::nullopt;
  }
  TraceContext t;
  t.traceparent = std::string(tp.substr(0, 55));
  t.trace_id = std::string(trace_id);
  bool clean = state.size() <= 512;
  for (char c : state) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) clean = false;
  }
  if (clean) t.tracestate = std::string(state);
  return t;
}

std::string NewTraceId() {
  thread_local absl::BitGen local;
  uint64_t hi = absl::Uniform<uint64_t>(local), lo = absl::Uniform<uint64_t>(local);
  if (hi == 0 && lo == 0) lo = 1;
  return absl::StrFormat("%016x%016x", hi, lo);
}

}  // namespace fabric::cni
