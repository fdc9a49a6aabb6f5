// SocketFront: the agent's unix socket. It listens (mode 0600) and looks at
// each connection's first bytes without taking them (MSG_PEEK): a client
// that sent the HTTP/2 preface, SETTINGS and the HEADERS of a call to one
// of `handlers`' methods in its first write (the CNI plugin sends its whole
// call in one) is served by agent/unary_server.h on one of a few worker
// threads; every other connection (gRPC's clients wait for the server's
// SETTINGS before their first HEADERS; fabricctl, orchestrators, watches,
// other methods) is handed, bytes untouched, to gRPC's server
// (grpc::AddInsecureChannelFromFd). Which path a call takes changes its
// cost, not its answer.
//
// Bounds: connections waiting for their first bytes (256; over that, and
// after 1 s of silence, they go to gRPC, which has its own limits), the
// workers' queue (as long as there are workers; when full, gRPC serves the
// connection).
//
// Thread-safe; destruction stops accepting, closes what waits, joins its
// threads and removes the socket file (call it before shutting gRPC's
// server down).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/unary_server.h"

namespace grpc {
class Server;
}

namespace fabric::agent {

struct SocketFrontOptions {
  int workers = 8;
  UnaryServerLimits limits;
  // Told where each connection went (true: a worker here); may be empty.
  std::function<void(bool served_here)> on_route;
};

class SocketFront {
 public:
  // Binds `path` (a stale socket there must have been removed) with mode
  // 0600. kUnavailable when it cannot listen.
  static absl::StatusOr<std::unique_ptr<SocketFront>> Start(const std::string& path,
                                                            grpc::Server* grpc_server,
                                                            UnaryHandlers handlers,
                                                            SocketFrontOptions options = {});
  ~SocketFront();

  // Connections served each way so far (for tests and the status line).
  uint64_t served_here() const;
  uint64_t handed_to_grpc() const;

 private:
  class Impl;
  explicit SocketFront(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The :path of the call whose HEADERS frame `bytes` (a connection's first
// bytes: the client preface, then frames) holds in full; nullopt when they
// are not that (short, not HTTP/2, another frame first, a header block
// that needs CONTINUATION or does not decode).
std::optional<std::string> FirstCallPath(absl::string_view bytes);

}  // namespace fabric::agent
