// W3C Trace Context (https://www.w3.org/TR/trace-context/) as CNI 1.1
// passes it to plugins (TRACEPARENT and TRACESTATE in the environment,
// OTEP 0258): the plugin forwards a valid one to the agent as gRPC metadata
// "traceparent"/"tracestate", and the agent names the trace in the
// operation's log line and its watch events (making one up when the caller
// sent none). Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace fabric::cni {

struct TraceContext {
  std::string traceparent;  // "00-<trace id>-<parent id>-<flags>"
  std::string tracestate;   // as given, when it fits (at most 512 bytes)
  std::string trace_id;     // 32 lowercase hex digits
};

// A version 00 traceparent (55 characters, lowercase hex, trace and parent
// ids not all zero; a higher version's first 55 characters as the standard
// says), else nullopt. An over-long or control-character tracestate is
// dropped, the traceparent kept.
std::optional<TraceContext> ParseTraceparent(absl::string_view traceparent,
                                             absl::string_view tracestate = "");

// A random trace id (32 hex digits, not all zero).
std::string NewTraceId();

}  // namespace fabric::cni
