// fabric-nat: the CNI plugin executable. Reads the CNI environment and
// stdin, runs the plugin logic (cni/plugin.h), writes its result.
//
// A runtime execs it for every ADD and DEL, so start-up and exit are most of
// its cost (docs/ARCHITECTURE.md, "Where an ADD's time goes"): one thread,
// its one gRPC call made on it (cni/grpc_unary.h), and _exit once the
// result is written.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "cni/agent_client.h"
#include "cni/plugin.h"

extern char** environ;

int main() {
  fabric::cni::Invocation in;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    if (kv.rfind("CNI_", 0) != 0) continue;
    size_t eq = kv.find('=');
    if (eq != std::string::npos) in.env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  // VERSION may come with no stdin at all.
  if (!isatty(STDIN_FILENO)) {
    in.stdin_data.assign(std::istreambuf_iterator<char>(std::cin),
                         std::istreambuf_iterator<char>());
  }
  fabric::cni::Outcome out = fabric::cni::RunPlugin(
      in, [](const std::string& socket) {
        // Well inside the 5 s a runtime may wait for a verdict.
        return fabric::cni::NewGrpcAgentClient(socket, absl::Seconds(4));
      });
  std::fwrite(out.stdout_data.data(), 1, out.stdout_data.size(), stdout);
  int code = out.exit_code;
  // A result the runtime could not read is no result.
  if (std::fflush(stdout) != 0 && code == 0) code = 1;
  // Everything the process owes anyone is written: stdout is flushed,
  // stderr is unbuffered, the plugin keeps no files, and the agent has
  // answered the one call (its socket is closed). Static destructors have
  // nothing left to do for anyone.
  _exit(code);
}
