// Readiness for systemd (Type=notify): sends a state string such as
// "READY=1" to the datagram socket named by $NOTIFY_SOCKET, as sd_notify(3)
// does, without linking libsystemd (the image and static builds stay free
// of it). Called by fabric-agent's main once the kernel matches the store
// and the API serves.
//
// Thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace fabric::agent {

// Without NOTIFY_SOCKET (not started by systemd) this does nothing and
// succeeds. An abstract socket is named with a leading '@'. kUnavailable
// when the socket cannot be reached.
absl::Status NotifySystemd(const std::string& state);

}  // namespace fabric::agent
