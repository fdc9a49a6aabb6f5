// StoreReader: what fabricctl reads from an agent's state dir when the agent
// does not answer (offline list, status and diagnose). Never changes the
// agent's files and never takes its lock.
//
// SQLite cannot read a WAL database in place without writing beside it:
// `mode=ro` creates -wal and -shm files next to a cleanly closed store and
// writes read marks into an existing -shm, and `immutable=1` ignores the WAL
// (which after a crash holds the last commits). So the reader copies
// state.db and state.db-wal (each opened O_RDONLY) into a private temporary
// directory, checks that neither changed meanwhile (retrying a few times),
// and reads the copy; the copy is removed before ReadStateDir returns.
//
// The store records no agent start. What is known is shown with its source:
// the mtime of <state_dir>/agent.lock, which every agent rewrites (pid,
// state dir, socket) once it holds the lock (agent/instance_lock.cc), and
// the newest mtime of state.db and state.db-wal. /proc/locks tells whether
// a process holds agent.lock now (an agent that runs but does not answer).
//
// Thread-compatible; no state.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.pb.h"

namespace fabric::agent::ctl {

// The newest schema this reader knows (agent::Store::kSchemaVersion; the
// test checks they agree).
inline constexpr int kKnownSchemaVersion = 2;

struct StoreReading {
  std::string db_path;  // <state_dir>/state.db
  std::string store_id;
  int schema_version = 0;
  std::vector<nat::v1::Attachment> attachments;
  std::vector<nat::v1::PortMapping> mappings;  // ordered by id, as ListMappings
  size_t pinholes = 0;
  // Newest mtime of state.db and state.db-wal, and that file's name.
  absl::Time last_written = absl::InfinitePast();
  std::string last_written_file;
  // From <state_dir>/agent.lock, when it exists: its mtime (the last start),
  // what the agent wrote there ("pid 4242, state dir ..., socket ..."), and
  // the socket it named.
  std::string lock_path;
  std::optional<absl::Time> last_start;
  std::string last_start_pid;  // "pid 4242", or empty
  std::string last_socket;
  // A process holding agent.lock now, per /proc/locks (0: none).
  pid_t lock_holder = 0;
};

// Reads <state_dir>/state.db as above. kNotFound when there is no store
// there (naming the path and --state_dir), kPermissionDenied when it cannot
// be read, kFailedPrecondition when it is not a fabric-nat store, is
// corrupt, or has a newer schema, kAborted when it kept changing while being
// copied (an agent is writing it), kInternal for temporary-file errors.
absl::StatusOr<StoreReading> ReadStateDir(const std::string& state_dir);

// The pid of a process holding an flock on `path`, from /proc/locks (0 when
// none or unknown). Exposed for the tests.
pid_t FlockHolder(const std::string& path);

}  // namespace fabric::agent::ctl
