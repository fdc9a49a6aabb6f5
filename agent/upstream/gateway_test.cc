#include "agent/upstream/gateway.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent::upstream {
namespace {

using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kHeader[] =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

TEST(DefaultGateway, TheDefaultRoutesGateway) {
  std::string t = std::string(kHeader) +
                  "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
                  "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
  EXPECT_THAT(ParseDefaultGateway(t), IsOkAndHolds(Ipv4{192, 168, 1, 1}));
}

TEST(DefaultGateway, LowestMetricWins) {
  std::string t = std::string(kHeader) +
                  "wlan0\t00000000\t0101000A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
                  "eth0\t00000000\t014DA8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
  EXPECT_THAT(ParseDefaultGateway(t), IsOkAndHolds(Ipv4{192, 168, 77, 1}));
}

TEST(DefaultGateway, TwoAtTheSameMetricIsAmbiguous) {
  std::string t = std::string(kHeader) +
                  "wlan0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
                  "eth0\t00000000\t014DA8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
  EXPECT_THAT(ParseDefaultGateway(t),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--gateway")));
}

TEST(DefaultGateway, IgnoresDownAndDirectRoutes) {
  std::string t = std::string(kHeader) +
                  // down (no RTF_UP), and a default route without a gateway
                  "eth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
                  "tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
  EXPECT_THAT(ParseDefaultGateway(t), StatusIs(absl::StatusCode::kNotFound, HasSubstr("--gateway")));
  EXPECT_THAT(ParseDefaultGateway(kHeader), StatusIs(absl::StatusCode::kNotFound));
}

TEST(DefaultGateway, MalformedLineNamed) {
  std::string t = std::string(kHeader) + "eth0\tzz\n";
  EXPECT_THAT(ParseDefaultGateway(t),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2")));
}

TEST(DefaultGateway, MissingFile) {
  EXPECT_THAT(DefaultGateway("/nonexistent/route"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("/nonexistent/route")));
}

TEST(DefaultGateway, ThisNamespaceParses) {
  // Whatever this machine has, the kernel's own file must parse.
  absl::StatusOr<Ipv4> g = DefaultGateway();
  EXPECT_NE(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
}

}  // namespace
}  // namespace fabric::agent::upstream
