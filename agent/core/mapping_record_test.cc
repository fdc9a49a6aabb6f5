#include "agent/core/mapping_record.h"

#include "agent/core/convert.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace fabric::agent {
namespace {

v1::PortMapping Base() {
  v1::PortMapping p;
  p.set_id("m-17");
  p.mutable_owner()->set_kind(v1::OWNER_KIND_API);
  p.mutable_owner()->set_id("billing-service-with-a-long-name");
  p.set_protocol(v1::PROTOCOL_UDP);
  p.set_host_port(8080);
  p.set_port_count(1);
  p.set_target_ip("10.22.0.5");
  p.set_target_port(80);
  return p;
}

// What the record gives back is the message it was made from, field for
// field, however the client wrote the addresses.
void ExpectRoundTrip(const v1::PortMapping& p) {
  absl::StatusOr<nat::PortMapping> n = ToNatMapping(p);
  ASSERT_TRUE(n.ok()) << n.status();
  MappingRecord rec(p, *n);
  v1::PortMapping back = rec.ToProto();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(back, p))
      << "given:\n" << p.DebugString() << "got:\n" << back.DebugString();
  MappingRecord copy = rec;
  EXPECT_EQ(copy.ToProto().DebugString(), p.DebugString());
  // Into a message that held another mapping (a reused reply): nothing of
  // it is left.
  v1::PortMapping reused;
  reused.set_id("old");
  reused.set_description("stale");
  reused.set_upstream("stale");
  *reused.mutable_expires_at() = ToTimestamp(absl::FromUnixSeconds(5));
  reused.set_host_ip("203.0.113.9");
  rec.ToProto(&reused);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(reused, p))
      << "given:\n" << p.DebugString() << "got:\n" << reused.DebugString();
}

TEST(MappingRecordTest, HostAddressSpellingsComeBackAsGiven) {
  for (const char* host : {"", "0.0.0.0", "192.0.2.7", "0000:0::0"}) {
    v1::PortMapping p = Base();
    p.set_host_ip(host);
    ExpectRoundTrip(p);
  }
  v1::PortMapping v6 = Base();
  v6.set_target_ip("fd00::5");
  for (const char* host : {"::", "", "fd00::1", "FD00:0::1"}) {
    v6.set_host_ip(host);
    ExpectRoundTrip(v6);
  }
}

TEST(MappingRecordTest, TargetSpellingComesBackAsGivenAndReadsCanonical) {
  v1::PortMapping p = Base();
  p.set_target_ip("FD00:0:0::5");
  p.set_host_ip("::");
  ExpectRoundTrip(p);
  MappingRecord rec(p, *ToNatMapping(p));
  EXPECT_EQ(rec.target_ip(), "fd00::5");
}

TEST(MappingRecordTest, TimesTextAndCountsComeBack) {
  v1::PortMapping p = Base();
  p.set_port_count(0);  // as a client may send it: one port
  p.set_description("a service");
  p.set_pcp_nonce(std::string("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b", 12));
  *p.mutable_created_at() = ToTimestamp(absl::FromUnixNanos(1764000000123456789));
  *p.mutable_expires_at() = ToTimestamp(absl::FromUnixSeconds(1800000000));
  ExpectRoundTrip(p);
  MappingRecord rec(p, *ToNatMapping(p));
  EXPECT_TRUE(rec.has_expires_at());
  EXPECT_EQ(rec.expires_at(), absl::FromUnixSeconds(1800000000));
  EXPECT_EQ(rec.nat.port_count, 1);
}

TEST(MappingRecordTest, SettersChangeOnlyTheirCopy) {
  v1::PortMapping p = Base();
  p.set_description("first");
  MappingRecord a(p, *ToNatMapping(p));
  MappingRecord b = a;
  b.set_description("second");
  b.set_expires_at(absl::FromUnixSeconds(1900000000));
  EXPECT_EQ(a.description(), "first");
  EXPECT_FALSE(a.has_expires_at());
  EXPECT_EQ(b.description(), "second");
  EXPECT_EQ(b.ToProto().expires_at().seconds(), 1900000000);
  b.clear_expires_at();
  EXPECT_FALSE(b.ToProto().has_expires_at());
}

TEST(MappingRecordTest, HelpersReadTheOwner) {
  v1::PortMapping p = Base();
  p.mutable_owner()->set_kind(v1::OWNER_KIND_PCP);
  p.mutable_owner()->set_id("192.168.1.20");
  MappingRecord rec(p, *ToNatMapping(p));
  EXPECT_TRUE(IsLease(rec));
  EXPECT_EQ(MappingHolder(rec), "PCP lease of 192.168.1.20");
  EXPECT_TRUE(OwnerMatches(rec, v1::OWNER_KIND_PCP, "192.168.1.20"));
  EXPECT_FALSE(OwnerMatches(rec, v1::OWNER_KIND_NATPMP, ""));
  EXPECT_FALSE(OwnerMatches(rec, v1::OWNER_KIND_UNSPECIFIED, "192.168.1.21"));
}

}  // namespace
}  // namespace fabric::agent
