// The status page in a real browser: Debian's Chromium, headless, loads /
// from a live agent in a router namespace that holds an API mapping (whose
// description is an HTML injection attempt) and a NAT-PMP lease a LAN host
// got with natpmpc; the rendered DOM must list both, show the description
// as text, and run nothing. Real traffic through the lease shows up as its
// connections and bytes on the page, in /api/v1/mappings and on /metrics. A screenshot goes to the test's outputs
// (bazel-testlogs/tests/e2e/status_page_test/test.outputs/status.png).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric {
namespace {

using ::fabric::testing::AgentProcess;
using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::Netns;
using ::testing::HasSubstr;
using ::testing::Not;

class StatusPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u);
    dir_ = tmp_.path();
    ASSERT_OK_AND_ASSIGN(testing::RouterLayout l, testing::MakeRouterLayout("11.77.0"));
    router_ = std::move(l.router);
    lan_ = std::move(l.lan);
    outside_ = std::move(l.outside);
    ASSERT_OK_AND_ASSIGN(
        agent_, AgentProcess::Start(router_.get(), dir_,
                                    "--lan_interfaces=lan0 --wan_interface=wan0 --upnp "
                                    "--metrics_address=127.0.0.1:19334 --metrics_per_mapping"));
  }

  // Chromium, headless, in the router namespace (where the page is on
  // loopback), with a fresh profile and no background networking.
  absl::StatusOr<std::string> Chromium(const std::string& args) {
    return router_->Exec(absl::StrCat(
        "chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync "
        "--user-data-dir=",
        dir_, "/profile ", args, " http://127.0.0.1:19334/ 2>/dev/null"));
  }

  testing::ScopedTempDir tmp_{"page"};
  std::string dir_;
  std::unique_ptr<Netns> router_, lan_, outside_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(StatusPageTest, ChromiumRendersMappingsAndLeasesAndRunsNothing) {
  ASSERT_OK(testing::Fabricctl(agent_->socket(),
                               "add tcp 8080 10.1.0.5:80 --owner web "
                               "--description '<script>document.title=\"pwned\"</script><b>x</b>'")
                .status());
  ASSERT_OK(lan_->Exec("natpmpc -g 192.168.77.1 -a 8088 80 tcp 3600").status());
  // Real traffic through the lease: 200,000 bytes from outside to a LAN
  // server that answers with the count it got.
  ASSERT_OK(testing::ServeCount(*lan_, 80));
  EXPECT_THAT(testing::SendBytes(*outside_, "11.77.0.1", 8088, 200000),
              IsOkAndHolds("200000\n"));
  // Its bytes, from conntrack accounting, in the REST view and on /metrics
  // (the connection is closed but still tracked, in TIME_WAIT).
  ASSERT_OK_AND_ASSIGN(std::string json,
                       router_->Exec("curl -s 'http://127.0.0.1:19334/api/v1/mappings?"
                                     "owner_kind=natpmp'"));
  EXPECT_THAT(json, ::testing::ContainsRegex("\"bytes\": ?\"2[01][0-9]{4}\""));
  EXPECT_THAT(json, ::testing::ContainsRegex("\"open_connections\": ?\"1\""));
  EXPECT_THAT(json, ::testing::ContainsRegex("\"connections\": ?\"1\""));
  EXPECT_THAT(router_->Exec("curl -s http://127.0.0.1:19334/metrics"),
              IsOkAndHolds(::testing::ContainsRegex(
                  "nat_mapping_bytes_total\\{id=\"[^\"]+\",owner=\"natpmp\",owner_id=\""
                  "192.168.77.10\"\\} 2[01][0-9]{4}\n")));

  ASSERT_OK_AND_ASSIGN(std::string dom, Chromium("--dump-dom"));
  EXPECT_THAT(dom, HasSubstr("<title>fabric-agent status</title>"));  // no script ran
  EXPECT_THAT(dom, HasSubstr("11.77.0.1"));                           // the WAN address
  // The API mapping and the NAT-PMP lease, in the mappings table.
  EXPECT_THAT(dom, HasSubstr("<td>api</td><td>web</td><td>tcp</td><td>*:8080</td>"
                             "<td>10.1.0.5:80</td>"));
  EXPECT_THAT(dom, HasSubstr("<td>natpmp</td><td>192.168.77.10</td><td>tcp</td>"
                             "<td>11.77.0.1:8088</td><td>192.168.77.10:80</td>"));
  // Its connections, open ones and bytes (about 196 KiB with headers).
  EXPECT_THAT(dom, ::testing::ContainsRegex("<td>192.168.77.10:80</td><td>[^<]+</td>"
                                            "<td>1</td><td>1</td><td>19[0-9]\\.[0-9] KiB</td>"));
  // The description as text: escaped in the DOM, no element made of it.
  EXPECT_THAT(dom, HasSubstr("&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;"
                             "&lt;b&gt;x&lt;/b&gt;"));
  EXPECT_THAT(dom, Not(HasSubstr("<b>x</b>")));
  EXPECT_THAT(dom, HasSubstr("UPnP IGD: SSDP on udp 1900"));

  const char* out = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  std::string png = absl::StrCat(out != nullptr ? out : dir_.c_str(), "/status.png");
  ASSERT_OK(Chromium(absl::StrCat("--window-size=1280,900 --screenshot=", png)).status());
  struct stat st;
  ASSERT_EQ(stat(png.c_str(), &st), 0) << png;
  EXPECT_GT(st.st_size, 10000) << "a rendered page, not a blank one";
  // A repair shows up with what it restored.
  ASSERT_OK(router_->Exec("nft flush ruleset"));
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_OK_AND_ASSIGN(dom, Chromium("--dump-dom"));
  EXPECT_THAT(dom, ::testing::ContainsRegex(
                       "<table id=\"repairs\">.*rebuilt the table .*lacked 2 \\(dnat tcp"));
  // The headers that keep anything from running or loading.
  EXPECT_THAT(router_->Exec("curl -sI http://127.0.0.1:19334/"),
              IsOkAndHolds(HasSubstr("Content-Security-Policy: default-src 'none'")));
}

}  // namespace
}  // namespace fabric
