// Kernel tests for ForwardAccept in a namespace of the test's own, whose
// firewall (`table inet filter`, forward policy drop) is loaded and
// reloaded with `nft -f` as a router's would be: our rule goes first and
// stays alone there, survives nothing it should not, and leaves every
// other rule of that table as it was.
#include "nat/backend/nftables/forward_accept.h"

#include <linux/netfilter.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::nat::nftables {
namespace {

using ::fabric::testing::Netns;
using ::fabric::testing::ScopedNetns;
using ::fabric::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kFirewall[] = R"(flush ruleset
table inet filter {
  chain input { type filter hook input priority 0; policy accept; }
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan0" accept
  }
}
)";

class ForwardAcceptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "kernel tests run as root";
    Netns::SweepStale();
    ASSERT_OK_AND_ASSIGN(ns_, Netns::Create("fwacc"));
    Load(kFirewall);
    ASSERT_OK_AND_ASSIGN(auto enter, ScopedNetns::Enter(*ns_));
    ASSERT_OK_AND_ASSIGN(fa_, ForwardAccept::Open());
  }

  void Load(const std::string& ruleset) {
    ASSERT_OK(ns_->Exec(absl::StrCat("printf '%s' ", testing::ShellQuote(ruleset),
                                     " > /tmp/", ns_->name(), ".nft && nft -f /tmp/",
                                     ns_->name(), ".nft && rm /tmp/", ns_->name(), ".nft")));
  }

  // The rules of inet filter forward, one line each, as nft lists them.
  std::vector<std::string> Rules(const std::string& chain = "forward") {
    absl::StatusOr<std::string> out = ns_->Exec("nft list chain inet filter " + chain);
    EXPECT_OK(out.status());
    std::vector<std::string> rules;
    if (!out.ok()) return rules;
    for (absl::string_view line : absl::StrSplit(*out, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || absl::StartsWith(line, "table") || absl::StartsWith(line, "chain") ||
          absl::StartsWith(line, "type") || line == "}") {
        continue;
      }
      rules.emplace_back(line);
    }
    return rules;
  }

  const std::string kOurs =
      "ct status dnat counter packets 0 bytes 0 accept comment \"fabric-nat: DNAT'd flows pass "
      "(--forward_accept)\"";
  const ChainRef kForward{NFPROTO_INET, "filter", "forward"};
  std::unique_ptr<Netns> ns_;
  std::unique_ptr<ForwardAccept> fa_;
};

TEST_F(ForwardAcceptTest, InsertsFirstOnceAndLeavesTheRestAlone) {
  ASSERT_OK_AND_ASSIGN(ForwardAccept::Result r, fa_->Ensure({kForward}));
  EXPECT_THAT(r.inserted, ElementsAre("inet/filter/forward"));
  EXPECT_EQ(r.ToString(), "inserted at the top of inet/filter/forward");
  EXPECT_THAT(Rules(), ElementsAre(kOurs, "ct state established,related accept",
                                   "iifname \"lan0\" accept"));
  // Nothing to do the second time.
  ASSERT_OK_AND_ASSIGN(r, fa_->Ensure({kForward}));
  EXPECT_FALSE(r.changed());
  EXPECT_EQ(r.ToString(), "in place");
  EXPECT_THAT(Rules(), ::testing::SizeIs(3));
}

TEST_F(ForwardAcceptTest, MovesBackToTheTopAndKeepsOneCopy) {
  ASSERT_OK(fa_->Ensure({kForward}).status());
  // Someone inserts a rule above ours, and a copy of ours further down.
  ASSERT_OK(ns_->Exec("nft insert rule inet filter forward ip saddr 192.0.2.9 drop && "
                      "nft add rule inet filter forward ct status dnat accept comment "
                      "'\"fabric-nat: DNAT'\"'\"'d flows pass (--forward_accept)\"'"));
  ASSERT_THAT(Rules(), ::testing::SizeIs(5));
  ASSERT_OK_AND_ASSIGN(ForwardAccept::Result r, fa_->Ensure({kForward}));
  EXPECT_THAT(r.moved, ElementsAre("inet/filter/forward"));
  EXPECT_THAT(Rules(), ElementsAre(kOurs, "ip saddr 192.0.2.9 drop",
                                   "ct state established,related accept",
                                   "iifname \"lan0\" accept"));
}

TEST_F(ForwardAcceptTest, AReloadedFirewallGetsItBack) {
  ASSERT_OK(fa_->Ensure({kForward}).status());
  Load(kFirewall);  // flush ruleset + the table again: ours is gone
  ASSERT_THAT(Rules(), ::testing::SizeIs(2));
  ASSERT_OK_AND_ASSIGN(ForwardAccept::Result r, fa_->Ensure({kForward}));
  EXPECT_THAT(r.inserted, ElementsAre("inet/filter/forward"));
  EXPECT_EQ(Rules().front(), kOurs);
}

TEST_F(ForwardAcceptTest, RemovedWhenNoLongerWantedAndMissingChainsReported) {
  ASSERT_OK(fa_->Ensure({kForward}).status());
  const ChainRef other{NFPROTO_IPV4, "router", "transit"};
  ASSERT_OK_AND_ASSIGN(ForwardAccept::Result r, fa_->Ensure({other}));
  EXPECT_THAT(r.removed, ElementsAre("inet/filter/forward"));
  EXPECT_THAT(r.missing, ElementsAre("ip/router/transit"));
  EXPECT_THAT(r.ToString(), HasSubstr("no chain ip/router/transit (yet)"));
  EXPECT_THAT(Rules(), ElementsAre("ct state established,related accept",
                                   "iifname \"lan0\" accept"));
  // The chain appears: the next Ensure fills it.
  ASSERT_OK(ns_->Exec("nft 'add table ip router; add chain ip router transit "
                      "{ type filter hook forward priority 10; policy drop; }'"));
  ASSERT_OK_AND_ASSIGN(r, fa_->Ensure({other}));
  EXPECT_THAT(r.inserted, ElementsAre("ip/router/transit"));
  // Uninstall: none anywhere.
  ASSERT_OK_AND_ASSIGN(r, fa_->Ensure({}));
  EXPECT_THAT(r.removed, ElementsAre("ip/router/transit"));
  EXPECT_THAT(ns_->Exec("nft list ruleset"),
              testing::IsOkAndHolds(::testing::Not(HasSubstr("fabric-nat"))));
}

TEST(ChainRefTest, ParsesAndRefuses) {
  ASSERT_OK_AND_ASSIGN(ChainRef c, ChainRef::Parse("inet/filter/forward"));
  EXPECT_EQ(c.family, static_cast<uint32_t>(NFPROTO_INET));
  EXPECT_EQ(c.ToString(), "inet/filter/forward");
  ASSERT_OK_AND_ASSIGN(c, ChainRef::Parse("ip6/t/FORWARD"));
  EXPECT_EQ(c.family, static_cast<uint32_t>(NFPROTO_IPV6));
  EXPECT_THAT(ChainRef::Parse("inet/filter"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not three parts")));
  EXPECT_THAT(ChainRef::Parse("bridge/filter/forward"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("inet, ip or ip6")));
  EXPECT_THAT(ChainRef::Parse("inet/fabric_nat/forward"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("the agent's own table")));
  EXPECT_THAT(ChainRef::Parse("inet/fil ter/forward"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("space")));
  EXPECT_THAT(ChainRef::Parse("inet//forward"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
}

}  // namespace
}  // namespace fabric::nat::nftables
