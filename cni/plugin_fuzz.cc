// Fuzz target for everything the plugin reads from a runtime: the first
// byte picks the command (and a few environment variables), the rest is
// stdin. The agent is a fake that answers every call. The plugin must
// always produce a well-formed result or error object, never crash, and
// never ask the agent anything for input it could not decode.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cni/plugin.h"
#include "nlohmann/json.hpp"

namespace {

class Agent : public fabric::cni::AgentClient {
 public:
  absl::StatusOr<fabric::nat::v1::AttachResponse> Attach(
      const fabric::nat::v1::Attachment&) override {
    return fabric::nat::v1::AttachResponse();
  }
  absl::Status Detach(const fabric::nat::v1::AttachmentKey&) override {
    return absl::OkStatus();
  }
  absl::Status Check(const fabric::nat::v1::AttachmentKey&) override {
    return absl::OkStatus();
  }
  absl::StatusOr<fabric::nat::v1::GarbageCollectResponse> GarbageCollect(
      const fabric::nat::v1::GarbageCollectRequest&) override {
    return fabric::nat::v1::GarbageCollectResponse();
  }
  absl::StatusOr<fabric::nat::v1::GetStatusResponse> GetStatus() override {
    fabric::nat::v1::GetStatusResponse r;
    r.set_ready(true);
    return r;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* kCommands[] = {"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"};
  fabric::cni::Invocation in;
  in.env["CNI_COMMAND"] = kCommands[data[0] % 6];
  if (!(data[0] & 0x10)) in.env["CNI_CONTAINERID"] = "3f2a9b1c";
  if (!(data[0] & 0x20)) in.env["CNI_NETNS"] = "/run/netns/c1";
  if (!(data[0] & 0x40)) in.env["CNI_IFNAME"] = "eth0";
  if (!(data[0] & 0x80)) in.env["CNI_PATH"] = "/usr/lib/cni";
  in.stdin_data.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  fabric::cni::Outcome o = fabric::cni::RunPlugin(
      in, [](const std::string&) { return std::make_unique<Agent>(); });
  if (o.exit_code != 0 || !o.stdout_data.empty()) {
    // Whatever it printed is one JSON value (a result or an error object).
    nlohmann::json::parse(o.stdout_data);
  }
  if (o.exit_code != 0 && !nlohmann::json::parse(o.stdout_data).contains("code")) __builtin_trap();
  return 0;
}
