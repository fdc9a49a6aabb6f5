// One gRPC unary call on the calling thread, over a socket the caller has
// connected: HTTP/2 framing by nghttp2 (Debian's libnghttp2), the gRPC wire
// protocol (a length-prefixed message out, one back, grpc-status and
// grpc-message in the trailers) here.
//
// For the CNI plugin, a process that makes one call and exits: gRPC's own
// client runtime starts three threads, a timer, a resolver and a
// transport for it, which cost the plugin more than the agent's whole
// share of an ADD (docs/ARCHITECTURE.md, "Where an ADD's time goes").
// The agent side is gRPC's own server; cni/agent_client_test.cc runs every
// call against one.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fabric::cni {

struct UnaryCall {
  std::string path;     // "/package.Service/Method"
  std::string request;  // the serialized request message
  // Sent as request headers: lower-case names, printable ASCII values.
  std::vector<std::pair<std::string, std::string>> metadata;
  absl::Time deadline = absl::InfiniteFuture();  // also sent as grpc-timeout
  // A longer response (or header block) is refused (kResourceExhausted).
  size_t max_response_bytes = 4 << 20;
};

// Sends `call` on `fd` (connected, stream; made non-blocking, left open) and
// returns the serialized response message. Errors: the server's
// grpc-status as its code with its grpc-message; kDeadlineExceeded when
// `deadline` passes first; kUnavailable when the connection fails or closes
// before the answer; kInternal for a peer that does not answer in gRPC.
absl::StatusOr<std::string> CallUnary(int fd, const UnaryCall& call);

// grpc-timeout's value for `remaining` (at most 8 digits, rounded up, in the
// finest unit that fits; "0n" when nothing remains).
std::string GrpcTimeout(absl::Duration remaining);

// grpc-message's percent-encoding undone (a malformed escape is kept as is).
std::string PercentDecode(absl::string_view s);

}  // namespace fabric::cni
