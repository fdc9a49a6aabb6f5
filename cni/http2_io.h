// Socket I/O for an nghttp2 session on a non-blocking socket, bounded by a
// deadline: what the plugin's client (cni/grpc_unary.cc) and the agent's
// unary server (agent/unary_server.cc) share.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fabric::cni {

struct SessionFree {
  void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
};
using SessionPtr = std::unique_ptr<nghttp2_session, SessionFree>;

// A client or server session whose callbacks `set` installs, with `user`
// as their user data. kResourceExhausted when nghttp2 has no memory.
absl::StatusOr<SessionPtr> NewSession(bool server, void* user,
                                      const std::function<void(nghttp2_session_callbacks*)>& set);

// Makes `fd` non-blocking (the I/O below polls with a deadline).
absl::Status SetNonBlocking(int fd);

// Waits until `fd` is ready for `events` (POLLIN, POLLOUT); kDeadlineExceeded
// ("Deadline Exceeded") when the deadline passes first.
absl::Status WaitFor(int fd, short events, absl::Time deadline);

// Writes everything `session` has queued, gathered into one send where the
// socket takes it (each write wakes the peer: frames sent one by one cost a
// wake-up each). `scratch` is reused across calls. kUnavailable with
// `peer_gone` when the peer has closed.
absl::Status FlushSession(int fd, nghttp2_session* session, std::string* scratch,
                          absl::Time deadline, absl::string_view peer_gone);

// nghttp2's view of `fields` (which must outlive it): names and values
// copied by nghttp2 when the frame is submitted.
std::vector<nghttp2_nv> NameValues(std::vector<std::pair<std::string, std::string>>& fields);

// gRPC's length prefix (a compressed flag, a big-endian length) and one
// message: what a request or an answer carries in its DATA frames.
inline constexpr size_t kGrpcPrefix = 5;
std::string GrpcMessage(const std::string& message);
// The length a prefix (kGrpcPrefix bytes at `prefix`) announces.
uint32_t GrpcMessageLength(const char* prefix);

}  // namespace fabric::cni
