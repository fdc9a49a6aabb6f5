// The agent's own server for the CNI plugin's calls. gRPC's server costs
// about as much CPU per connection as the handler behind it (a channel
// stack, a chttp2 transport and their teardown, measured with perf), and
// the plugin opens one connection per call. ServeUnaryConnection serves
// such a connection on the calling thread with nghttp2 doing the HTTP/2
// framing and HPACK: one gRPC unary request (POST, content-type
// application/grpc, one uncompressed length-prefixed message), the
// handler for its :path, the answer (headers, message, trailers with
// grpc-status and a percent-encoded grpc-message, or trailers only for an
// error), then GOAWAY and close. A second stream on the connection is
// refused (REFUSED_STREAM: gRPC clients retry it on a new connection).
//
// agent/socket_front.h decides which connections come here; every other
// goes to gRPC's server, so both paths answer the same methods the same
// way (cni/agent_client_test.cc runs the plugin's client against both).
//
// Bounds: the request's headers (16 KiB) and message (4 MiB, gRPC's
// default), the time to read the request and to write the answer
// (io_timeout each). The caller's grpc-timeout is the handler's deadline.
//
// Thread-compatible: one call per connection, any number of connections
// on different threads.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fabric::agent {

struct UnaryCall {
  std::string path;                              // "/fabric.nat.v1.AttachmentService/Attach"
  absl::Time deadline = absl::InfiniteFuture();  // from grpc-timeout
  std::string traceparent;                       // the caller's, or empty
};

// The request message's bytes in, the response's out; a status that is not
// OK is sent as grpc-status and grpc-message (the response is not sent).
using UnaryHandler =
    std::function<absl::Status(const UnaryCall&, absl::string_view request, std::string* response)>;
using UnaryHandlers = absl::flat_hash_map<std::string, UnaryHandler>;

struct UnaryServerLimits {
  size_t max_request_bytes = 4 << 20;
  size_t max_header_bytes = 16 << 10;
  absl::Duration io_timeout = absl::Seconds(10);
};

// Serves the connected socket `fd` and closes it. OK when an answer (a
// message or an error status) was sent; otherwise what went wrong with
// the connection (the peer closed or reset, spoke something other than
// HTTP/2, or ran out of time), for the log.
absl::Status ServeUnaryConnection(int fd, const UnaryHandlers& handlers,
                                  const UnaryServerLimits& limits = {});

// grpc-timeout's value ("100m", "5S": at most 8 digits and one of
// H M S m u n) as a duration; nullopt when it is not one.
std::optional<absl::Duration> ParseGrpcTimeout(absl::string_view value);

// grpc-message's encoding: bytes outside 0x20-0x7E, and '%', as %XX.
std::string PercentEncode(absl::string_view message);

}  // namespace fabric::agent
