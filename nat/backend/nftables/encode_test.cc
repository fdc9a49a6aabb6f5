// Netlink encoding without a kernel: golden files for the exact bytes, and
// decode(encode(x)) == x for every kind of element.
#include "nat/backend/nftables/encode.h"

#include <libmnl/libmnl.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/udata.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/nftables/internal/layout.h"
#include "testing/status_matchers.h"

namespace fabric::nat::nftables {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Key;
using ::testing::Not;

IpAddress Ip(const char* s) { return *IpAddress::Parse(s); }

RuleSet Sample() {
  RuleSet r;
  PortMapping m;
  m.protocol = Protocol::kTcp;
  m.host_port = 8080;
  m.target_ip = Ip("10.22.0.5");
  m.target_port = 80;
  r.dnat.insert(m.ToElements()[0]);
  m.host_ip = Ip("192.0.2.1");
  m.protocol = Protocol::kUdp;
  r.dnat.insert(m.ToElements()[0]);
  m.host_ip.reset();
  m.protocol = Protocol::kSctp;
  m.host_port = 7000;
  m.port_count = 11;
  m.target_port = 7000;
  r.dnat.insert(m.ToElements()[0]);
  m.protocol = Protocol::kTcp;
  m.host_ip = Ip("2001:db8::1");
  m.target_ip = Ip("fd00::5");
  r.dnat.insert(m.ToElements()[0]);
  m.port_count = 1;
  m.host_ip.reset();
  m.host_port = 8443;
  m.target_port = 443;
  r.dnat.insert(m.ToElements()[0]);
  r.masquerade = {*Prefix::Parse("10.22.0.0/16"), *Prefix::Parse("fd00::/64")};
  r.hairpin = {*Prefix::Parse("10.22.0.0/16"), *Prefix::Parse("10.23.0.0/16")};
  r.localhost_interfaces = {"cni0", "br-lab"};
  r.snat = {SnatRule{*Prefix::Parse("10.20.0.0/24"), Ip("203.0.113.5"), "wan0"},
            SnatRule{*Prefix::Parse("fd00:20::/64"), Ip("2001:db8::5"), ""}};
  return r;
}

// One line per message, then its bytes in hex: reviewable in a diff.
std::string Describe(const EncodedBatch& b) {
  std::string out;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(b.bytes.data());
  int len = static_cast<int>(b.bytes.size());
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    auto it = b.what.find(nlh->nlmsg_seq);
    absl::StrAppendFormat(&out, "seq %u type 0x%04x flags 0x%04x len %u  %s\n",
                          nlh->nlmsg_seq, nlh->nlmsg_type, nlh->nlmsg_flags,
                          nlh->nlmsg_len,
                          it == b.what.end() ? "(batch marker)" : it->second);
    const auto* p = reinterpret_cast<const uint8_t*>(nlh) + sizeof(nlmsghdr);
    size_t n = nlh->nlmsg_len - sizeof(nlmsghdr);
    for (size_t i = 0; i < n; i += 16) {
      out += "   ";
      for (size_t j = i; j < i + 16 && j < n; ++j) {
        absl::StrAppendFormat(&out, " %02x", p[j]);
      }
      out += "\n";
    }
  }
  return out;
}

void CheckGolden(const std::string& name, const std::string& actual) {
  // FABRIC_GOLDEN_DIR=<source testdata dir> rewrites the files
  // (tools/update_goldens.sh).
  if (const char* dir = std::getenv("FABRIC_GOLDEN_DIR")) {
    std::ofstream(absl::StrCat(dir, "/", name)) << actual;
    return;
  }
  std::string path = absl::StrCat(std::getenv("TEST_SRCDIR"), "/",
                                  std::getenv("TEST_WORKSPACE"),
                                  "/nat/backend/nftables/testdata/", name);
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "missing golden file " << path;
  std::stringstream want;
  want << f.rdbuf();
  EXPECT_EQ(actual, want.str()) << "golden " << name << " differs";
}

TEST(EncodeTest, ApplyMatchesGolden) {
  Batch b;
  b.add = Sample();
  PortMapping gone;
  gone.host_port = 9000;
  gone.target_ip = Ip("10.22.0.9");
  gone.target_port = 90;
  b.remove.dnat.insert(gone.ToElements()[0]);
  // Only `gone` was there: the batch fills every other set it names, so it
  // lays down the rules of hostports and postrouting again too.
  SetSizes before = SizesOf(b.remove);
  CheckGolden("apply.golden", Describe(EncodeApply(b, before, 100)));
}

TEST(EncodeTest, ReplaceMatchesGolden) {
  CheckGolden("replace.golden", Describe(EncodeReplace(Sample(), 1)));
}

TEST(EncodeTest, EmptyReplaceHasNoRules) {
  EncodedBatch b = EncodeReplace(RuleSet{}, 1);
  for (const auto& [seq, what] : b.what) EXPECT_THAT(what, Not(HasSubstr("rule")));
}

// The rule messages of a batch, in order ("add rule to chain hostports",
// "flush chain hostports"; what a rule does left out), elements left out.
std::vector<std::string> RuleMessages(const EncodedBatch& b) {
  std::vector<std::string> out;
  for (const auto& [seq, what] : b.what) {
    if (what.find("chain") != std::string::npos) {
      out.push_back(what.substr(0, what.find(':')));
    }
  }
  return out;
}

TEST(EncodeTest, ApplyChangesNoRuleWhileNoSetFillsOrEmpties) {
  RuleSet present = Sample();
  Batch b;
  PortMapping m;
  m.host_port = 9000;
  m.target_ip = Ip("10.22.0.9");
  m.target_port = 90;
  b.add.dnat.insert(m.ToElements()[0]);
  b.remove.dnat.insert(*present.dnat.begin());
  EncodedBatch e = EncodeApply(b, SizesOf(present), 1);
  EXPECT_EQ(e.messages, 2u);
  EXPECT_THAT(RuleMessages(e), ElementsAre());
}

TEST(EncodeTest, FirstElementAddsItsRulesInTheSameBatch) {
  Batch b;
  PortMapping m;
  m.host_port = 8080;
  m.target_ip = Ip("10.22.0.5");
  m.target_port = 80;
  b.add.dnat.insert(m.ToElements()[0]);
  EXPECT_THAT(RuleMessages(EncodeApply(b, SetSizes{}, 1)),
              ElementsAre("flush chain hostports", "add rule to chain hostports",
                          "flush chain prerouting", "add rule to chain prerouting",
                          "flush chain output", "add rule to chain output"));
  // A second map of the same chain: hostports again, the jumps stay.
  Batch v6;
  m.target_ip = Ip("fd00::5");
  v6.add.dnat.insert(m.ToElements()[0]);
  EXPECT_THAT(RuleMessages(EncodeApply(v6, SizesAfter({}, b), 1)),
              ElementsAre("flush chain hostports", "add rule to chain hostports",
                          "add rule to chain hostports"));
}

TEST(EncodeTest, RuleMessagesSayWhatTheRuleDoes) {
  Batch b;
  b.add.hairpin = {*Prefix::Parse("10.22.0.0/16")};
  EncodedBatch e = EncodeApply(b, {}, 1);
  EXPECT_EQ(e.what.rbegin()->second,
            "add rule to chain postrouting: hairpin masquerade by set hairpin4");
}

TEST(EncodeTest, LastElementTakesItsRulesAway) {
  RuleSet one;
  one.masquerade = {*Prefix::Parse("10.22.0.0/16")};
  Batch b;
  b.remove = one;
  EncodedBatch e = EncodeApply(b, SizesOf(one), 1);
  EXPECT_THAT(RuleMessages(e), ElementsAre("flush chain postrouting"));
  EXPECT_TRUE(SizesAfter(SizesOf(one), b).empty());
}

TEST(EncodeTest, SizesCountElementsPerSet) {
  SetSizes s = SizesOf(Sample());
  SetSizes want{{"dnat4", 1}, {"dnat4_any", 1}, {"dnat6_any", 1},
                {"range4_any", 1}, {"range6", 1}, {"masq4", 1},
                {"masq6", 1}, {"hairpin4", 2},
                {"localhost_ifaces", 2}};
  want.snat = Sample().snat;
  EXPECT_EQ(s, want);
  Batch b;
  b.remove.hairpin = {*Prefix::Parse("10.22.0.0/16")};
  b.add.localhost_interfaces = {"eth9"};
  SetSizes after = SizesAfter(s, b);
  EXPECT_EQ(after["hairpin4"], 1u);
  EXPECT_EQ(after["localhost_ifaces"], 3u);
}

TEST(EncodeTest, DeleteTableMatchesGolden) {
  CheckGolden("delete_table.golden", Describe(EncodeDeleteTable(1)));
}

TEST(EncodeTest, EveryMessageHasADescriptionAndSequence) {
  EncodedBatch b = EncodeReplace(Sample(), 1000);
  EXPECT_EQ(b.what.size(), b.messages);
  // begin + messages + end.
  EXPECT_EQ(b.next_seq, 1000 + b.messages + 2);
  EXPECT_THAT(b.what.begin()->second, HasSubstr("create table"));
  // A prefix is two elements (start, end); 0.0.0.0/0 has no end.
  RuleSet whole;
  whole.masquerade = {*Prefix::Parse("0.0.0.0/0")};
  EncodedBatch one = EncodeApply(Batch{{}, whole}, SizesOf(whole), 1);
  EXPECT_EQ(one.messages, 1u);
}

// Parses the element messages of a batch back, grouped by set, as a kernel
// dump would deliver them (prefix sets pair start and end elements).
RuleSet DecodeBatch(const EncodedBatch& b) {
  std::map<std::string, nftnl_set*> sets;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(b.bytes.data());
  int len = static_cast<int>(b.bytes.size());
  RuleSet out;
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    if ((nlh->nlmsg_type & 0xff) == NFT_MSG_NEWRULE) {
      // SNAT rules are rules, named by their comment (as Read() finds them).
      nftnl_rule* r = nftnl_rule_alloc();
      EXPECT_EQ(nftnl_rule_nlmsg_parse(nlh, r), 0);
      absl::StatusOr<std::optional<SnatRule>> snat = SnatRuleOf(r);
      EXPECT_OK(snat.status());
      if (snat.ok() && snat->has_value()) out.snat.insert(**snat);
      nftnl_rule_free(r);
      continue;
    }
    if ((nlh->nlmsg_type & 0xff) != NFT_MSG_NEWSETELEM) continue;
    nftnl_set* one = nftnl_set_alloc();
    EXPECT_EQ(nftnl_set_elems_nlmsg_parse(nlh, one), 0);
    std::string name = nftnl_set_get_str(one, NFTNL_SET_NAME);
    nftnl_set_free(one);
    nftnl_set*& all = sets[name];
    if (all == nullptr) all = nftnl_set_alloc();
    EXPECT_EQ(nftnl_set_elems_nlmsg_parse(nlh, all), 0);
  }
  for (auto& [name, set] : sets) {
    EXPECT_OK(DecodeElements(set, &out)) << name;
    nftnl_set_free(set);
  }
  return out;
}

TEST(EncodeTest, EveryKindOfElementRoundTrips) {
  RuleSet want = Sample();
  want.hairpin.insert(*Prefix::Parse("10.30.4.0/22"));
  want.masquerade.insert(*Prefix::Parse("2001:db8:ff::/48"));
  Batch b;
  b.add = want;
  RuleSet got = DecodeBatch(EncodeApply(b, {}, 1));
  EXPECT_EQ(got, want) << got.DebugString();
}

// The DNAT maps' direct decoder (the full read's fast path) against
// libnftnl's parse and DecodeElements, over every kind of DNAT element.
TEST(EncodeTest, DirectDnatDecodeMatchesLibnftnls) {
  RuleSet want = Sample();
  ASSERT_FALSE(want.dnat.empty());
  Batch b;
  b.add = want;
  EncodedBatch batch = EncodeApply(b, {}, 1);
  DnatSet direct;
  size_t malformed = 0, maps_seen = 0;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(batch.bytes.data());
  int len = static_cast<int>(batch.bytes.size());
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    if ((nlh->nlmsg_type & 0xff) != NFT_MSG_NEWSETELEM) continue;
    nftnl_set* one = nftnl_set_alloc();
    ASSERT_EQ(nftnl_set_elems_nlmsg_parse(nlh, one), 0);
    const internal::DnatMap* map = DnatMapNamed(nftnl_set_get_str(one, NFTNL_SET_NAME));
    nftnl_set_free(one);
    if (map == nullptr) continue;
    ++maps_seen;
    std::vector<DnatElement> found;
    DecodeDnatDump(nlh, *map, &found, &malformed);
    InsertSorted(std::move(found), &direct);
  }
  EXPECT_GE(maps_seen, 3u);
  EXPECT_EQ(malformed, 0u);
  EXPECT_EQ(direct, DecodeBatch(batch).dnat);
  EXPECT_EQ(direct, want.dnat);
  // A key of the wrong length is counted, not decoded.
  const internal::DnatMap* any4 = DnatMapNamed("dnat4_any");
  ASSERT_NE(any4, nullptr);
  uint8_t key[8] = {6, 0, 0, 0, 0, 80, 0, 0};  // protocol, port (4 bytes each)
  uint8_t data[8] = {10, 0, 0, 5, 0, 80, 0, 0};
  DnatElement d;
  EXPECT_FALSE(DecodeDnatElement(*any4, key, 7, nullptr, 0, data, sizeof(data), &d));
  EXPECT_TRUE(DecodeDnatElement(*any4, key, sizeof(key), nullptr, 0, data, sizeof(data), &d));
  EXPECT_EQ(d.port_lo, 80);
  EXPECT_EQ(d.target_port, 80);
}

TEST(EncodeTest, WholeAddressSpacePrefixRoundTrips) {
  RuleSet want;
  want.masquerade = {*Prefix::Parse("0.0.0.0/0"), *Prefix::Parse("::/0")};
  Batch b;
  b.add = want;
  EncodedBatch e = EncodeApply(b, SizesOf(want), 1);
  EXPECT_EQ(e.messages, 2u);  // no end element past the top
  EXPECT_EQ(DecodeBatch(e), want);
}

TEST(EncodeTest, RepeatedElementInOneDumpIsDetected) {
  Batch b;
  b.add = Sample();
  // Sizes as if present already: the first message is an element.
  EncodedBatch e = EncodeApply(b, SizesOf(b.add), 1);
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(e.bytes.data());
  int len = static_cast<int>(e.bytes.size());
  nlh = mnl_nlmsg_next(nlh, &len);  // past batch begin: the first element
  nftnl_set* s = nftnl_set_alloc();
  ASSERT_EQ(nftnl_set_elems_nlmsg_parse(nlh, s), 0);
  std::set<std::string> seen;
  RuleSet out;
  EXPECT_OK(DecodeElements(s, &out, &seen));
  EXPECT_THAT(DecodeElements(s, &out, &seen),
              fabric::testing::StatusIs(absl::StatusCode::kAborted,
                                        HasSubstr("came twice")));
  nftnl_set_free(s);
}

TEST(EncodeTest, LayoutIsConsistent) {
  // No filter chain without the IPv6 firewall: an accept there would
  // change no packet's fate.
  EXPECT_THAT(ExpectedChains({{"dnat4", 1}, {"pinhole6", 1}}),
              ElementsAre(Key("hostports"), Key("output"), Key("postrouting"),
                          Key("prerouting")));
  EXPECT_THAT(ExpectedChains({{"fw6_ifaces", 1}}),
              ElementsAre(Key("forward"), Key("hostports"), Key("output"), Key("postrouting"),
                          Key("prerouting")));
  EXPECT_EQ(ExpectedSets().size(), SetNames().size());
  SetSizes every;
  for (const std::string& name : SetNames()) every[name] = 1;
  auto rules = ExpectedRuleSignatures(every);
  EXPECT_EQ(rules["hostports"].size(), 8u);
  EXPECT_EQ(rules["postrouting"].size(), 5u);
  EXPECT_EQ(rules["prerouting"].size(), 1u);
  // Pinholes accept, then the firewall drops.
  ASSERT_EQ(rules["forward"].size(), 3u);
  EXPECT_THAT(rules["forward"][0], HasSubstr("set pinhole6 "));
  EXPECT_THAT(rules["forward"][1], HasSubstr("set pinhole6_from"));
  EXPECT_THAT(rules["forward"][2], HasSubstr("drop"));
  // The any-address map is looked up first.
  EXPECT_THAT(rules["hostports"][0], HasSubstr("set dnat4_any"));
  EXPECT_THAT(rules["hostports"][2], HasSubstr("set dnat4 "));
}

TEST(EncodeTest, RulesFollowWhatTheSetsHold) {
  auto none = ExpectedRuleSignatures({});
  EXPECT_EQ(none.size(), ExpectedChains({}).size());
  for (const auto& [chain, rules] : none) EXPECT_THAT(rules, ElementsAre()) << chain;
  auto some = ExpectedRuleSignatures({{"dnat4", 3}, {"hairpin6", 1}});
  ASSERT_EQ(some["hostports"].size(), 1u);
  EXPECT_THAT(some["hostports"][0], HasSubstr("set dnat4 "));
  EXPECT_EQ(some["prerouting"].size(), 1u);
  EXPECT_EQ(some["output"].size(), 1u);
  ASSERT_EQ(some["postrouting"].size(), 1u);
  EXPECT_THAT(some["postrouting"][0], HasSubstr("set hairpin6"));
}

SnatRule Snat(const char* source, const char* to, const char* iface) {
  return SnatRule{*Prefix::Parse(source), Ip(to), iface};
}

// The rules of postrouting that EncodeReplace lays down, parsed back.
std::vector<nftnl_rule*> PostroutingRules(const EncodedBatch& b) {
  std::vector<nftnl_rule*> out;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(b.bytes.data());
  int len = static_cast<int>(b.bytes.size());
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    if ((nlh->nlmsg_type & 0xff) != NFT_MSG_NEWRULE) continue;
    nftnl_rule* r = nftnl_rule_alloc();
    EXPECT_EQ(nftnl_rule_nlmsg_parse(nlh, r), 0);
    if (std::string(nftnl_rule_get_str(r, NFTNL_RULE_CHAIN)) == "postrouting") {
      out.push_back(r);
    } else {
      nftnl_rule_free(r);
    }
  }
  return out;
}

TEST(EncodeTest, SnatRulesComeFirstInPostroutingAndReadBackFromTheirComment) {
  RuleSet want;
  want.masquerade = {*Prefix::Parse("10.20.0.0/16")};
  want.snat = {Snat("10.20.0.0/16", "203.0.113.5", ""), Snat("10.20.1.0/24", "203.0.113.6", "wan0"),
               Snat("10.20.1.0/24", "203.0.113.7", ""), Snat("fd00:20::/64", "2001:db8::5", "")};
  std::vector<nftnl_rule*> rules = PostroutingRules(EncodeReplace(want, 1));
  ASSERT_EQ(rules.size(), 5u);
  std::vector<SnatRule> order;
  for (nftnl_rule* r : rules) {
    absl::StatusOr<std::optional<SnatRule>> snat = SnatRuleOf(r);
    ASSERT_OK(snat.status());
    if (snat->has_value()) order.push_back(**snat);
  }
  // The most specific first; for the same source a named interface first;
  // the masquerade rule (no comment) last.
  EXPECT_THAT(order, ElementsAre(Snat("fd00:20::/64", "2001:db8::5", ""),
                                 Snat("10.20.1.0/24", "203.0.113.6", "wan0"),
                                 Snat("10.20.1.0/24", "203.0.113.7", ""),
                                 Snat("10.20.0.0/16", "203.0.113.5", "")));
  ASSERT_OK_AND_ASSIGN(std::optional<SnatRule> last, SnatRuleOf(rules.back()));
  EXPECT_FALSE(last.has_value());
  // What Read() compares: the signatures of what was laid down equal those
  // the contents call for.
  std::vector<std::string> sigs;
  for (nftnl_rule* r : rules) sigs.push_back(RuleSignature(r));
  EXPECT_EQ(sigs, ExpectedRuleSignatures(SizesOf(want))["postrouting"]);
  EXPECT_THAT(sigs[1], HasSubstr("oifname"));
  EXPECT_THAT(sigs[1], HasSubstr("nat snat ip addr_min reg 1"));
  uint64_t packets = 7;
  EXPECT_EQ(RuleCounterKind(rules[0], &packets), "snat");
  EXPECT_EQ(RuleCounterKind(rules.back(), &packets), "masquerade");
  for (nftnl_rule* r : rules) nftnl_rule_free(r);
}

TEST(EncodeTest, AForeignCommentIsNoSnatRuleAndABrokenOneIsDataLoss) {
  internal::RulePtr plain = internal::NewRule("postrouting");
  EXPECT_THAT(SnatRuleOf(plain.get()), fabric::testing::IsOkAndHolds(std::nullopt));
  auto with_comment = [](const std::string& text) {
    internal::RulePtr r = internal::NewRule("postrouting");
    nftnl_udata_buf* u = nftnl_udata_buf_alloc(256);
    nftnl_udata_put_strz(u, NFTNL_UDATA_RULE_COMMENT, text.c_str());
    nftnl_rule_set_data(r.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(u),
                        nftnl_udata_buf_len(u));
    nftnl_udata_buf_free(u);
    return r;
  };
  EXPECT_THAT(SnatRuleOf(with_comment("someone's rule").get()),
              fabric::testing::IsOkAndHolds(std::nullopt));
  EXPECT_THAT(SnatRuleOf(with_comment("fabric-nat snat 10.0.0.0/8 to").get()),
              fabric::testing::StatusIs(absl::StatusCode::kDataLoss, HasSubstr("no SNAT rule")));
  EXPECT_THAT(SnatRuleOf(with_comment("fabric-nat snat 10.0.0.0/8 to 2001:db8::1").get()),
              fabric::testing::StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(SnatRuleOf(with_comment("fabric-nat snat 10.0.0.0/8 to 192.0.2.1 oif wan0").get()),
              fabric::testing::IsOkAndHolds(Snat("10.0.0.0/8", "192.0.2.1", "wan0")));
}

TEST(EncodeTest, ASnatChangeRewritesPostroutingInTheSameBatch) {
  RuleSet present;
  present.masquerade = {*Prefix::Parse("10.22.0.0/16")};
  Batch add;
  add.add.snat = {Snat("10.20.0.0/24", "203.0.113.5", "wan0")};
  EncodedBatch e = EncodeApply(add, SizesOf(present), 1);
  EXPECT_THAT(RuleMessages(e), ElementsAre("flush chain postrouting", "add rule to chain postrouting",
                                           "add rule to chain postrouting"));
  EXPECT_EQ(std::next(e.what.begin(), 1)->second,
            "add rule to chain postrouting: snat 10.20.0.0/24 -> 203.0.113.5 via wan0");
  SetSizes after = SizesAfter(SizesOf(present), add);
  EXPECT_EQ(after.snat, add.add.snat);
  // Removing it: postrouting again, with the masquerade rule alone.
  Batch remove;
  remove.remove.snat = add.add.snat;
  EXPECT_THAT(RuleMessages(EncodeApply(remove, after, 1)),
              ElementsAre("flush chain postrouting", "add rule to chain postrouting"));
  EXPECT_TRUE(SizesAfter(after, remove).snat.empty());
}

}  // namespace
}  // namespace fabric::nat::nftables
