// The trace (W3C trace id, 32 hex digits) of the operation the current
// thread serves: the gRPC services set it for the length of a call
// (ScopedTrace), and the transaction stamps it on the watch events it
// publishes (MappingEvent.trace_id). Empty when no operation set one (the
// repair loop, NAT-PMP, UPnP).
#pragma once

#include <string>

namespace fabric::agent {

class ScopedTrace {
 public:
  explicit ScopedTrace(std::string trace_id);
  ~ScopedTrace();
  ScopedTrace(const ScopedTrace&) = delete;
  ScopedTrace& operator=(const ScopedTrace&) = delete;

 private:
  std::string previous_;
};

const std::string& CurrentTraceId();

}  // namespace fabric::agent
