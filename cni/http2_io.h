// Socket I/O for an nghttp2 session on a non-blocking socket, bounded by a
// deadline: what the plugin's client (cni/grpc_unary.cc) and the agent's
// unary server (agent/unary_server.cc) share.
#pragma once

#include <nghttp2/nghttp2.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fabric::cni {

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

}  // namespace fabric::cni
