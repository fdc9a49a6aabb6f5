// Test fixture: network namespaces that a test creates, uses and always
// removes (destructors run on ASSERT failures too; namespaces left by a
// crashed test are swept by the next one). Names are "fnt-<pid>-<n>-<tag>",
// unique per process. Requires root.
//
// Commands run inside a namespace with `ip netns exec`; the test's own code
// enters one with ScopedNetns (setns on the calling thread), e.g. to open a
// netlink socket there. Never touches the machine's own namespace.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::testing {

// Runs `command` with /bin/sh; returns its stdout. kInternal with the
// command, exit code and stderr on failure.
absl::StatusOr<std::string> Shell(const std::string& command);

// `s` quoted for /bin/sh.
std::string ShellQuote(const std::string& s);

// A command's exit code and output, whatever the exit code.
struct CommandResult {
  int exit_code = 0;
  std::string out;
  std::string err;
};
absl::StatusOr<CommandResult> RunCommand(const std::string& command);

class Netns {
 public:
  // Creates namespace "fnt-<pid>-<n>-<tag>" with loopback up.
  static absl::StatusOr<std::unique_ptr<Netns>> Create(const std::string& tag);
  ~Netns();

  const std::string& name() const { return name_; }
  // `ip netns exec <name> sh -c <command>`; returns stdout.
  absl::StatusOr<std::string> Exec(const std::string& command) const;
  // Starts `command` in the background inside the namespace; it is killed
  // (with its process group) when the Netns goes.
  absl::StatusOr<pid_t> Spawn(const std::string& command);

  // Deletes namespaces named fnt-<pid>-* whose process is gone.
  static void SweepStale();

 private:
  explicit Netns(std::string name) : name_(std::move(name)) {}
  std::string name_;
  std::vector<pid_t> children_;
};

// Connects two namespaces with a veth pair: `a_if` in a with `a_addrs`,
// `b_if` in b with `b_addrs` (space-separated prefixes, v4 or v6).
absl::Status Link(Netns& a, const std::string& a_if, const std::string& a_addrs,
                  Netns& b, const std::string& b_if, const std::string& b_addrs);

// Enters a namespace on the calling thread until destroyed.
class ScopedNetns {
 public:
  static absl::StatusOr<std::unique_ptr<ScopedNetns>> Enter(const Netns& ns);
  ~ScopedNetns();

 private:
  explicit ScopedNetns(int original) : original_(original) {}
  int original_;
};

// A directory under /tmp with a short path (unix sockets allow 108 bytes),
// removed with everything in it when the object goes.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& tag);
  ~ScopedTempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Path of testing/nettool.py in the runfiles.
std::string NetTool();

// Starts `nettool.py serve` in `ns` (answering "<token> <peer address>") and
// waits until it listens.
absl::Status Serve(Netns& ns, const std::string& proto, int port,
                   const std::string& token);
// `nettool.py count` in `ns` on TCP `port` of `addr` (answering each
// connection with the bytes it got), started and listening.
absl::Status ServeCount(Netns& ns, int port, const std::string& addr = "0.0.0.0");
// `nettool.py send` from `ns`: `bytes` bytes to host:port over TCP; the
// answer ("<bytes the server got>\n").
absl::StatusOr<std::string> SendBytes(const Netns& ns, const std::string& host, int port,
                                      int bytes);
// `nettool.py ask` from `ns`: the server's answer, or an error when none
// comes within `timeout` seconds.
absl::StatusOr<std::string> Ask(const Netns& ns, const std::string& proto,
                                const std::string& host, int port,
                                double timeout = 2.0);

// The router layout the LAN front-end tests share (NAT-PMP, UPnP, static
// forwards):
//   lan  eth0 192.168.77.10/24 (default via the router)
//    |
//   router  lan0 192.168.77.1/24, wan0 <wan>.1/24 (forwards IPv4)
//    |
//   outside  eth0 <wan>.2/24
struct RouterLayout {
  std::unique_ptr<Netns> router, lan, outside;
};
absl::StatusOr<RouterLayout> MakeRouterLayout(const std::string& wan = "203.0.113");

}  // namespace fabric::testing
