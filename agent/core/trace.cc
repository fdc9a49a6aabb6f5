#include "agent/core/trace.h"

#include <utility>

namespace fabric::agent {

namespace {
thread_local std::string current;
}  // namespace

ScopedTrace::ScopedTrace(std::string trace_id) : previous_(std::move(current)) {
  current = std::move(trace_id);
}

ScopedTrace::~ScopedTrace() { current = std::move(previous_); }

const std::string& CurrentTraceId() { return current; }

}  // namespace fabric::agent
