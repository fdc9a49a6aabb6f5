// The exchange's retransmission schedule and the PCP/NAT-PMP clients over a
// fake transport whose clock moves only when the client waits.
#include <deque>
#include <functional>

#include "agent/upstream/clients.h"
#include "agent/upstream/codec.h"
#include "agent/upstream/exchange.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent::upstream {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Ipv4 kGateway{192, 168, 77, 1};
const Ipv4 kLocal{192, 168, 77, 10};

struct FakeNet {
  absl::Time now = absl::FromUnixSeconds(1000000);
  std::vector<double> sent_at_ms;  // relative to the start
  std::vector<std::vector<uint8_t>> sent;
  // What the gateway answers to a datagram: replies (each after `delay`).
  std::function<std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>(
      const std::vector<uint8_t>&)>
      answer;
  std::deque<std::pair<absl::Time, std::vector<uint8_t>>> inbox;
  absl::Time start = now;
};

class FakeTransport : public Transport {
 public:
  explicit FakeTransport(FakeNet* net) : net_(net) {}
  absl::Status Send(const std::vector<uint8_t>& d) override {
    net_->sent.push_back(d);
    net_->sent_at_ms.push_back(absl::ToDoubleMilliseconds(net_->now - net_->start));
    if (net_->answer) {
      for (auto& [delay, reply] : net_->answer(d)) net_->inbox.push_back({net_->now + delay, reply});
    }
    std::sort(net_->inbox.begin(), net_->inbox.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<std::vector<uint8_t>>> Receive(absl::Duration timeout) override {
    absl::Time until = net_->now + timeout;
    if (!net_->inbox.empty() && net_->inbox.front().first <= until) {
      net_->now = std::max(net_->now, net_->inbox.front().first);
      std::vector<uint8_t> d = std::move(net_->inbox.front().second);
      net_->inbox.pop_front();
      return std::optional<std::vector<uint8_t>>(std::move(d));
    }
    net_->now = until;
    return std::optional<std::vector<uint8_t>>();
  }
  Ipv4 gateway() const override { return kGateway; }
  Ipv4 local_ip() const override { return kLocal; }

 private:
  FakeNet* net_;
};

NowFn Clock(FakeNet& net) {
  return [&net] { return net.now; };
}

void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = (v >> (24 - 8 * i)) & 0xff;
}

// A PCP gateway: answers MAP by echoing the opcode data with `port`, and
// ANNOUNCE; `result` for every reply.
std::vector<uint8_t> PcpAnswer(const std::vector<uint8_t>& req, uint8_t result, uint16_t port,
                               uint32_t lifetime, uint32_t epoch) {
  std::vector<uint8_t> r = req;
  r[1] |= 0x80;
  r[2] = 0;
  r[3] = result;
  Put32(r, 4, lifetime);
  Put32(r, 8, epoch);
  for (int i = 12; i < 24; ++i) r[i] = 0;
  if (req.size() >= 60) {
    r[42] = port >> 8;
    r[43] = port & 0xff;
    const uint8_t ext[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 1};
    std::memcpy(&r[44], ext, 16);
  }
  return r;
}

TEST(Exchange, RetransmitsOnTheRfcScheduleWithinTheBudget) {
  FakeNet net;  // nobody answers
  FakeTransport t(&net);
  int sends = 0;
  absl::Status s = Exchange(t, Clock(net), Schedule{}, "PCP MAP tcp/8080", {2, 1},
                            [](const std::vector<uint8_t>&) { return ReplyCheck::kOk; }, &sends);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("no answer from gateway 192.168.77.1 to PCP MAP tcp/8080 "
                                    "after 4 tries in 3s")));
  EXPECT_EQ(sends, 4);
  // 250 ms, doubling: sends at 0, 0.25, 0.75, 1.75 s; gives up at 3 s.
  EXPECT_THAT(net.sent_at_ms, ElementsAre(0, 250, 750, 1750));
  EXPECT_EQ(net.now - net.start, absl::Seconds(3));
}

TEST(Exchange, ALateReplyToAnEarlierSendCounts) {
  FakeNet net;
  int n = 0;
  net.answer = [&](const std::vector<uint8_t>& d) {
    std::vector<std::pair<absl::Duration, std::vector<uint8_t>>> out;
    if (++n == 2) out.push_back({absl::Milliseconds(100), d});  // the second send is answered
    return out;
  };
  FakeTransport t(&net);
  int sends = 0;
  ASSERT_OK(Exchange(t, Clock(net), Schedule{}, "x", {1},
                     [](const std::vector<uint8_t>&) { return ReplyCheck::kOk; }, &sends));
  EXPECT_EQ(sends, 2);
  EXPECT_EQ(net.now - net.start, absl::Milliseconds(350));
}

TEST(Exchange, InvalidRepliesAreIgnoredNotFatal) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>&) {
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{
        {absl::Milliseconds(10), {9}}, {absl::Milliseconds(20), {8}}, {absl::Milliseconds(30), {7}}};
  };
  FakeTransport t(&net);
  int seen = 0;
  ASSERT_OK(Exchange(t, Clock(net), Schedule{}, "x", {1}, [&](const std::vector<uint8_t>& d) {
    ++seen;
    return d[0] == 7 ? ReplyCheck::kOk : d[0] == 9 ? ReplyCheck::kMalformed : ReplyCheck::kNotOurs;
  }));
  EXPECT_EQ(seen, 3);
  EXPECT_EQ(net.sent.size(), 1u);
}

TEST(Exchange, UnsupportedVersionStopsAtOnce) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{{absl::Milliseconds(1), d}};
  };
  FakeTransport t(&net);
  EXPECT_THAT(Exchange(t, Clock(net), Schedule{}, "PCP ANNOUNCE", {1},
                       [](const std::vector<uint8_t>&) { return ReplyCheck::kUnsupportedVersion; }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("unsupported version")));
}

TEST(PcpClient, MapsRenewsAndDeletesWithOneNonce) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    uint32_t lifetime = d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7];
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{
        {absl::Milliseconds(2), PcpAnswer(d, 0, lifetime ? 40000 : 0, lifetime / 2, 77)}};
  };
  auto c = NewPcpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
  MapRequest req;
  req.proto = Proto::kTcp;
  req.internal_port = 8080;
  req.lifetime = 600;
  ASSERT_OK_AND_ASSIGN(MapResult m, c->Map(req));
  EXPECT_EQ(m.method, Method::kPcp);
  EXPECT_EQ(m.external_ip, (Ipv4{203, 0, 113, 1}));
  EXPECT_EQ(m.external_port, 40000);
  EXPECT_EQ(m.lifetime, 300u);
  EXPECT_EQ(m.epoch, 77u);
  EXPECT_EQ(m.internal_ip, kLocal);
  ASSERT_EQ(net.sent.size(), 1u);
  EXPECT_EQ(net.sent[0][42] << 8 | net.sent[0][43], 8080);  // suggests the internal port
  ASSERT_OK(c->Unmap(req, 40000));
  ASSERT_EQ(net.sent.size(), 2u);
  // Same nonce; lifetime 0.
  EXPECT_TRUE(std::equal(net.sent[0].begin() + 24, net.sent[0].begin() + 36,
                         net.sent[1].begin() + 24));
  EXPECT_EQ(net.sent[1][4] | net.sent[1][5] | net.sent[1][6] | net.sent[1][7], 0);
  EXPECT_EQ(StableNonce(Proto::kTcp, 8080, kLocal), StableNonce(Proto::kTcp, 8080, kLocal));
}

TEST(PcpClient, IgnoresARepliesWithAnotherNonceThenTakesOurs) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    std::vector<uint8_t> forged = PcpAnswer(d, 0, 1, 600, 77);
    forged[30] ^= 0xff;
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{
        {absl::Milliseconds(1), forged}, {absl::Milliseconds(5), PcpAnswer(d, 0, 40001, 600, 77)}};
  };
  auto c = NewPcpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
  MapRequest req;
  req.internal_port = 8080;
  ASSERT_OK_AND_ASSIGN(MapResult m, c->Map(req));
  EXPECT_EQ(m.external_port, 40001);
}

TEST(PcpClient, ResultCodesBecomeStatuses) {
  for (auto [code, want] : std::vector<std::pair<uint8_t, absl::StatusCode>>{
           {2, absl::StatusCode::kPermissionDenied},
           {8, absl::StatusCode::kResourceExhausted},
           {7, absl::StatusCode::kUnavailable},
           {12, absl::StatusCode::kFailedPrecondition}}) {
    FakeNet net;
    net.answer = [code = code](const std::vector<uint8_t>& d) {
      return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{
          {absl::Milliseconds(1), PcpAnswer(d, code, 0, 30, 77)}};
    };
    auto c = NewPcpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
    MapRequest req;
    req.internal_port = 8080;
    EXPECT_THAT(c->Map(req).status(),
                StatusIs(want, HasSubstr(absl::StrCat("refused PCP MAP tcp/8080: ",
                                                      PcpResultName(code)))));
  }
}

TEST(PcpClient, ProbeAsksAnnounceAndNatPmpAddress) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    std::vector<uint8_t> r;
    if (d[0] == 2) r = PcpAnswer(d, 0, 0, 0, 5000);
    if (d[0] == 0) r = {0, 128, 0, 0, 0, 0, 0x13, 0x88, 203, 0, 113, 9};
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{{absl::Milliseconds(1), r}};
  };
  auto c = NewPcpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
  ASSERT_OK_AND_ASSIGN(GatewayInfo g, c->Probe());
  EXPECT_EQ(g.method, Method::kPcp);
  EXPECT_EQ(g.epoch, 5000u);
  EXPECT_EQ(g.external_ip, (Ipv4{203, 0, 113, 9}));
  EXPECT_EQ(g.gateway, kGateway);
}

TEST(NatPmpClient, MapAsksTheAddressThenMaps) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    std::vector<uint8_t> r;
    if (d.size() == 2) r = {0, 128, 0, 0, 0, 0, 0, 10, 203, 0, 113, 1};
    if (d.size() == 12) {
      r = {0, static_cast<uint8_t>(128 + d[1]), 0, 0, 0, 0, 0, 10, d[4], d[5], 0x9c, 0x40,
           0, 0, 0x02, 0x58};
    }
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{{absl::Milliseconds(1), r}};
  };
  auto c = NewNatPmpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
  MapRequest req;
  req.proto = Proto::kUdp;
  req.internal_port = 5353;
  req.lifetime = 600;
  ASSERT_OK_AND_ASSIGN(MapResult m, c->Map(req));
  EXPECT_EQ(m.method, Method::kNatPmp);
  EXPECT_EQ(m.external_ip, (Ipv4{203, 0, 113, 1}));
  EXPECT_EQ(m.external_port, 40000);
  EXPECT_EQ(m.lifetime, 600u);
  EXPECT_EQ(m.epoch, 10u);
  ASSERT_EQ(net.sent.size(), 2u);
  EXPECT_EQ(net.sent[1], PmpMapRequest(Proto::kUdp, 5353, 5353, 600));
}

TEST(NatPmpClient, RefusalsAndSilence) {
  FakeNet net;
  net.answer = [](const std::vector<uint8_t>& d) {
    std::vector<uint8_t> r;
    if (d.size() == 2) r = {0, 128, 0, 0, 0, 0, 0, 10, 203, 0, 113, 1};
    if (d.size() == 12) r = {0, static_cast<uint8_t>(128 + d[1]), 0, 4, 0, 0, 0, 10};
    return std::vector<std::pair<absl::Duration, std::vector<uint8_t>>>{{absl::Milliseconds(1), r}};
  };
  auto c = NewNatPmpClient(std::make_unique<FakeTransport>(&net), Clock(net), Schedule{});
  MapRequest req;
  req.internal_port = 80;
  EXPECT_THAT(c->Map(req).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("OUT_OF_RESOURCES")));
  FakeNet quiet;
  auto q = NewNatPmpClient(std::make_unique<FakeTransport>(&quiet), Clock(quiet), Schedule{});
  EXPECT_THAT(q->Probe().status(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("after 4 tries in 3s")));
}

}  // namespace
}  // namespace fabric::agent::upstream
