// PluginHandlers against the proto: every AttachmentService method and
// AgentService.GetStatus, under the paths gRPC gives them (a path that
// drifted would still be answered, by gRPC's server, and the plugin's
// calls would quietly take the slow path).
#include "agent/service.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"

namespace fabric::agent {
namespace {

using ::testing::UnorderedElementsAreArray;

TEST(PluginHandlersTest, CoverTheAttachmentServiceAndGetStatus) {
  const google::protobuf::ServiceDescriptor* att =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          "fabric.nat.v1.AttachmentService");
  ASSERT_NE(att, nullptr);
  std::vector<std::string> want = {"/fabric.nat.v1.AgentService/GetStatus"};
  for (int i = 0; i < att->method_count(); ++i) {
    want.push_back("/fabric.nat.v1.AttachmentService/" + att->method(i)->name());
  }
  std::vector<std::string> got;
  for (const auto& [path, handler] : PluginHandlers(nullptr, nullptr)) got.push_back(path);
  EXPECT_THAT(got, UnorderedElementsAreArray(want));
}

}  // namespace
}  // namespace fabric::agent
