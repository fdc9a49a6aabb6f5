// fabric-nat: the CNI plugin executable. Reads the CNI environment and
// stdin, runs the plugin logic (cni/plugin.h), writes its result.
//
// A runtime execs it for every ADD and DEL, so start-up and exit are most of
// its cost (docs/ARCHITECTURE.md, "Where an ADD's time goes"): gRPC's event
// engine starts only if used, and the process ends with _exit once its
// result is written, without tearing gRPC down.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cni/agent_client.h"
#include "cni/plugin.h"

extern char** environ;

namespace {

// Hands RunPlugin a client it may destroy without tearing down the real one
// (its channel, and with it gRPC's shutdown: joining threads, draining the
// executor), which the process never needs: _exit follows.
class Borrowed : public fabric::cni::AgentClient {
 public:
  explicit Borrowed(fabric::cni::AgentClient* real) : real_(real) {}
  absl::StatusOr<fabric::cni::v1::AttachResponse> Attach(
      const fabric::cni::v1::Attachment& a) override {
    return real_->Attach(a);
  }
  absl::Status Detach(const fabric::cni::v1::AttachmentKey& key) override {
    return real_->Detach(key);
  }
  absl::Status Check(const fabric::cni::v1::AttachmentKey& key) override {
    return real_->Check(key);
  }
  absl::StatusOr<fabric::cni::v1::GarbageCollectResponse> GarbageCollect(
      const fabric::cni::v1::GarbageCollectRequest& request) override {
    return real_->GarbageCollect(request);
  }
  absl::StatusOr<fabric::cni::v1::GetStatusResponse> GetStatus() override {
    return real_->GetStatus();
  }

 private:
  fabric::cni::AgentClient* real_;
};

}  // namespace

int main() {
  // Debian builds abseil with its mutex deadlock detector on; gRPC takes
  // hundreds of locks while starting, each one recorded in its graph. A
  // process that lives for one RPC has no use for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  fabric::cni::PrepareGrpcForOneShotProcess();
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
  // Owned by nobody: see Borrowed.
  std::unique_ptr<fabric::cni::AgentClient> kept;
  fabric::cni::Outcome out = fabric::cni::RunPlugin(
      in, [&kept](const std::string& socket) -> std::unique_ptr<fabric::cni::AgentClient> {
        // Well inside the 5 s a runtime may wait for a verdict.
        kept = fabric::cni::NewGrpcAgentClient(socket, absl::Seconds(4));
        return std::make_unique<Borrowed>(kept.get());
      });
  std::fwrite(out.stdout_data.data(), 1, out.stdout_data.size(), stdout);
  int code = out.exit_code;
  // A result the runtime could not read is no result.
  if (std::fflush(stdout) != 0 && code == 0) code = 1;
  // Everything the process owes anyone is written: stdout is flushed,
  // stderr is unbuffered, the plugin keeps no files, and the agent has
  // answered the one call (the kernel closes the socket, which the agent
  // sees as the client going away). Skip static destructors and gRPC's
  // teardown, which cost more than the call itself.
  _exit(code);
}
