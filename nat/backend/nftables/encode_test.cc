// Netlink encoding without a kernel: golden files for the exact bytes, and
// decode(encode(x)) == x for every kind of element.
#include "nat/backend/nftables/encode.h"

#include <libmnl/libmnl.h>
#include <libnftnl/set.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::nat::nftables {
namespace {

using ::testing::HasSubstr;

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
  CheckGolden("apply.golden", Describe(EncodeApply(b, 100)));
}

TEST(EncodeTest, ReplaceMatchesGolden) {
  CheckGolden("replace.golden", Describe(EncodeReplace(Sample(), 1)));
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
  EncodedBatch one = EncodeApply(Batch{{}, [] {
                                         RuleSet r;
                                         r.masquerade = {*Prefix::Parse("0.0.0.0/0")};
                                         return r;
                                       }()},
                                 1);
  EXPECT_EQ(one.messages, 1u);
}

// Parses the element messages of a batch back, grouped by set, as a kernel
// dump would deliver them (prefix sets pair start and end elements).
RuleSet DecodeBatch(const EncodedBatch& b) {
  std::map<std::string, nftnl_set*> sets;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(b.bytes.data());
  int len = static_cast<int>(b.bytes.size());
  for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
    if ((nlh->nlmsg_type & 0xff) != NFT_MSG_NEWSETELEM) continue;
    nftnl_set* one = nftnl_set_alloc();
    EXPECT_EQ(nftnl_set_elems_nlmsg_parse(nlh, one), 0);
    std::string name = nftnl_set_get_str(one, NFTNL_SET_NAME);
    nftnl_set_free(one);
    nftnl_set*& all = sets[name];
    if (all == nullptr) all = nftnl_set_alloc();
    EXPECT_EQ(nftnl_set_elems_nlmsg_parse(nlh, all), 0);
  }
  RuleSet out;
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
  RuleSet got = DecodeBatch(EncodeApply(b, 1));
  EXPECT_EQ(got, want) << got.DebugString();
}

TEST(EncodeTest, WholeAddressSpacePrefixRoundTrips) {
  RuleSet want;
  want.masquerade = {*Prefix::Parse("0.0.0.0/0"), *Prefix::Parse("::/0")};
  Batch b;
  b.add = want;
  EncodedBatch e = EncodeApply(b, 1);
  EXPECT_EQ(e.messages, 2u);  // no end element past the top
  EXPECT_EQ(DecodeBatch(e), want);
}

TEST(EncodeTest, RepeatedElementInOneDumpIsDetected) {
  Batch b;
  b.add = Sample();
  EncodedBatch e = EncodeApply(b, 1);
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
  EXPECT_EQ(ExpectedChains().size(), 5u);
  EXPECT_EQ(ExpectedSets().size(), SetNames().size());
  auto rules = ExpectedRuleSignatures();
  EXPECT_EQ(rules["hostports"].size(), 8u);
  EXPECT_EQ(rules["postrouting"].size(), 5u);
  EXPECT_THAT(rules["hostports"][1], HasSubstr("set dnat4_any"));
}

}  // namespace
}  // namespace fabric::nat::nftables
