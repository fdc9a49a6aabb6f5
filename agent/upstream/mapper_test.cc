// The Mapper over a fake client and clock: renewals at half-life, the
// suggested port on renewal, epoch resets and address changes re-mapping
// everything, backoff while the gateway does not answer, deletes.
#include "agent/upstream/mapper.h"

#include <atomic>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent::upstream {
namespace {

using ::testing::HasSubstr;

struct Gateway {
  absl::Time now = absl::FromUnixSeconds(2000000);
  absl::Time start = now;
  uint32_t epoch_base = 100;  // epoch = epoch_base + seconds since start
  Ipv4 external{203, 0, 113, 1};
  bool answering = true;
  uint32_t max_lifetime = 3600;
  std::vector<std::string> log;  // "map tcp/8080 ext=0 life=600", "unmap ...", "probe"
  std::map<std::pair<Proto, uint16_t>, uint16_t> held;
  uint32_t Epoch() const {
    return epoch_base + static_cast<uint32_t>(absl::ToInt64Seconds(now - start));
  }
  // A restart: the epoch starts again and every mapping is gone.
  void Restart() {
    start = now;
    epoch_base = 0;
    held.clear();
  }
};

class FakeClient : public MethodClient {
 public:
  explicit FakeClient(Gateway* g) : g_(g) {}
  Method method() const override { return Method::kPcp; }
  absl::StatusOr<GatewayInfo> Probe() override {
    g_->log.push_back("probe");
    if (!g_->answering) return Silence();
    GatewayInfo i;
    i.method = Method::kPcp;
    i.gateway = {192, 168, 77, 1};
    i.epoch = g_->Epoch();
    i.external_ip = g_->external;
    return i;
  }
  absl::StatusOr<MapResult> Map(const MapRequest& r) override {
    g_->log.push_back(absl::StrCat("map ", ProtoName(r.proto), "/", r.internal_port,
                                   " ext=", r.external_port, " life=", r.lifetime));
    if (!g_->answering) return Silence();
    MapResult m;
    m.method = Method::kPcp;
    m.proto = r.proto;
    m.internal_port = r.internal_port;
    m.external_ip = g_->external;
    uint16_t want = r.external_port ? r.external_port : r.internal_port;
    m.external_port = g_->held.count({r.proto, r.internal_port})
                          ? g_->held[{r.proto, r.internal_port}]
                          : static_cast<uint16_t>(want + 1000);  // the gateway picks another
    g_->held[{r.proto, r.internal_port}] = m.external_port;
    m.lifetime = std::min(r.lifetime, g_->max_lifetime);
    m.epoch = g_->Epoch();
    return m;
  }
  absl::Status Unmap(const MapRequest& r, uint16_t ext) override {
    g_->log.push_back(absl::StrCat("unmap ", ProtoName(r.proto), "/", r.internal_port, " ext=", ext));
    if (!g_->answering) return Silence();
    g_->held.erase({r.proto, r.internal_port});
    return absl::OkStatus();
  }

 private:
  absl::Status Silence() {
    g_->now += absl::Seconds(3);  // an exchange's budget
    return absl::UnavailableError("no answer from gateway 192.168.77.1 to PCP MAP after 4 tries in 3s");
  }
  Gateway* g_;
};

class MapperTest : public ::testing::Test {
 protected:
  std::unique_ptr<Mapper> Make() {
    Mapper::Options o;
    o.start_thread = false;
    o.client.now = [this] { return gw_.now; };
    o.poll_interval = absl::Seconds(5);
    o.connect = [this]() -> absl::StatusOr<Connection> {
      ++connects_;
      auto c = std::make_unique<FakeClient>(&gw_);
      absl::StatusOr<GatewayInfo> i = c->Probe();
      if (!i.ok()) return i.status();
      return Connection{std::move(c), *i};
    };
    o.on_change = [this](const MappingStatus& s) { changes_.push_back(s.Describe(gw_.now)); };
    return std::make_unique<Mapper>(std::move(o));
  }
  // Runs rounds until `until` (as the worker would: sleeping to each next).
  void RunUntil(Mapper& m, absl::Time until) {
    for (int i = 0; i < 10000 && gw_.now <= until; ++i) {
      absl::Time next = m.RunOnce();
      if (next > until) {
        gw_.now = until + absl::Nanoseconds(1);
        m.RunOnce();
        return;
      }
      if (next > gw_.now) gw_.now = next;
    }
  }
  int Count(const std::string& prefix) const {
    return std::count_if(gw_.log.begin(), gw_.log.end(),
                         [&](const std::string& l) { return l.rfind(prefix, 0) == 0; });
  }

  Gateway gw_;
  int connects_ = 0;
  std::vector<std::string> changes_;
};

MapRequest Req(uint16_t port, uint32_t lifetime = 600, Proto p = Proto::kTcp) {
  MapRequest r;
  r.proto = p;
  r.internal_port = port;
  r.lifetime = lifetime;
  return r;
}

TEST_F(MapperTest, MapsThenRenewsAtHalfLifeSuggestingItsPort) {
  auto m = Make();
  m->Map(Req(8080));
  m->RunOnce();
  std::optional<MappingStatus> s = m->Get(Proto::kTcp, 8080);
  ASSERT_TRUE(s && s->state == MappingStatus::State::kMapped);
  EXPECT_EQ(s->result->external_port, 9080);
  EXPECT_EQ(s->renew_at - gw_.now, absl::Seconds(300));
  EXPECT_EQ(s->Describe(gw_.now), "203.0.113.1:9080 via pcp, renews in 5m");
  ASSERT_EQ(changes_.size(), 1u);
  EXPECT_EQ(m->Gateway().Describe(),
            "gateway 192.168.77.1 via pcp, external address 203.0.113.1, epoch 100");

  RunUntil(*m, gw_.start + absl::Seconds(299));
  EXPECT_EQ(Count("map "), 1);
  RunUntil(*m, gw_.start + absl::Seconds(301));
  EXPECT_EQ(Count("map "), 2);
  EXPECT_EQ(gw_.log.back().rfind("probe", 0) == 0 ? gw_.log[gw_.log.size() - 2] : gw_.log.back(),
            "map tcp/8080 ext=9080 life=600");
  // Five renewals in 25 minutes; polls every 5 s in between.
  RunUntil(*m, gw_.start + absl::Minutes(25) + absl::Seconds(1));
  EXPECT_EQ(Count("map "), 6);
  EXPECT_GE(Count("probe"), 25 * 12 - 2);
  EXPECT_EQ(connects_, 1);
}

TEST_F(MapperTest, ARestartedGatewayIsRemappedAtTheNextPoll) {
  auto m = Make();
  m->Map(Req(8080));
  m->Map(Req(5353, 600, Proto::kUdp));
  RunUntil(*m, gw_.start + absl::Seconds(60));
  ASSERT_EQ(Count("map "), 2);
  const absl::Time restart = gw_.now;
  gw_.Restart();
  gw_.held[{Proto::kTcp, 8080}] = 12345;  // the new instance would give another port
  gw_.held.erase({Proto::kTcp, 8080});
  RunUntil(*m, restart + absl::Seconds(6));
  EXPECT_EQ(Count("map "), 4) << absl::StrJoin(gw_.log, "\n");
  EXPECT_EQ(m->Gateway().resets, 1);
  EXPECT_EQ(gw_.held.size(), 2u);
  // Re-mapped asking for the ports they had.
  EXPECT_THAT(gw_.log, ::testing::Contains("map tcp/8080 ext=9080 life=600"));
  EXPECT_THAT(gw_.log, ::testing::Contains("map udp/5353 ext=6353 life=600"));
}

TEST_F(MapperTest, ANewExternalAddressIsFollowed) {
  auto m = Make();
  m->Map(Req(8080));
  RunUntil(*m, gw_.start + absl::Seconds(20));
  gw_.external = {198, 51, 100, 7};
  RunUntil(*m, gw_.now + absl::Seconds(6));
  EXPECT_EQ(Count("map "), 2);
  EXPECT_EQ(m->Get(Proto::kTcp, 8080)->result->external_ip, (Ipv4{198, 51, 100, 7}));
  EXPECT_THAT(changes_.back(), HasSubstr("198.51.100.7:9080 via pcp"));
}

TEST_F(MapperTest, SilentGatewayIsReportedAndRetriedWithBackoff) {
  gw_.answering = false;
  auto m = Make();
  m->Map(Req(8080));
  m->RunOnce();
  std::optional<MappingStatus> s = m->Get(Proto::kTcp, 8080);
  ASSERT_EQ(s->state, MappingStatus::State::kFailing);
  EXPECT_THAT(s->Describe(gw_.now),
              HasSubstr("error: no answer from gateway 192.168.77.1 to PCP MAP after 4 tries in "
                        "3s (retry in 2s)"));
  EXPECT_FALSE(m->Gateway().connected);
  EXPECT_THAT(m->Gateway().Describe(), HasSubstr("no gateway: no answer"));
  // Connect attempts back off: 2, 4, 8, 16 s (each plus the 3 s it waited).
  RunUntil(*m, gw_.start + absl::Seconds(50));
  EXPECT_EQ(connects_, 5) << absl::StrJoin(gw_.log, "\n");
  gw_.answering = true;
  RunUntil(*m, gw_.start + absl::Seconds(120));
  EXPECT_EQ(m->Get(Proto::kTcp, 8080)->state, MappingStatus::State::kMapped);
  EXPECT_EQ(m->Get(Proto::kTcp, 8080)->failures, 0);
}

TEST_F(MapperTest, AGatewayThatStopsAnsweringIsReconnected) {
  auto m = Make();
  m->Map(Req(8080, 3600));
  RunUntil(*m, gw_.start + absl::Seconds(10));
  gw_.answering = false;
  RunUntil(*m, gw_.now + absl::Seconds(30));
  EXPECT_FALSE(m->Gateway().connected);
  EXPECT_THAT(m->Gateway().error.message(), HasSubstr("no answer"));
  // Still granted upstream: reported as mapped until its lifetime says otherwise.
  EXPECT_EQ(m->Get(Proto::kTcp, 8080)->state, MappingStatus::State::kMapped);
  gw_.answering = true;
  RunUntil(*m, gw_.now + absl::Seconds(40));
  EXPECT_TRUE(m->Gateway().connected);
  EXPECT_GE(connects_, 2);  // reconnected
  EXPECT_EQ(m->Get(Proto::kTcp, 8080)->state, MappingStatus::State::kMapped);
}

TEST_F(MapperTest, UnmapDeletesByTheGrantedPortAndReportsRemoved) {
  auto m = Make();
  m->Map(Req(8080));
  m->RunOnce();
  m->Unmap(Proto::kTcp, 8080);
  m->RunOnce();
  EXPECT_THAT(gw_.log, ::testing::Contains("unmap tcp/8080 ext=9080"));
  EXPECT_FALSE(m->Get(Proto::kTcp, 8080).has_value());
  EXPECT_EQ(changes_.back(), "removed");
  EXPECT_TRUE(gw_.held.empty());
}

TEST_F(MapperTest, StopWithUnmapDeletesEverything) {
  auto m = Make();
  m->Map(Req(8080));
  m->Map(Req(53, 600, Proto::kUdp));
  m->RunOnce();
  ASSERT_EQ(gw_.held.size(), 2u);
  m->Stop(/*unmap_all=*/true);
  EXPECT_TRUE(gw_.held.empty());
  EXPECT_EQ(Count("unmap "), 2);
  EXPECT_EQ(m->List().size(), 2u);
  for (const MappingStatus& s : m->List()) EXPECT_EQ(s.state, MappingStatus::State::kRemoved);
}

TEST_F(MapperTest, RenewalFailuresAreRetriedBeforeTheGrantRunsOut) {
  auto m = Make();
  m->Map(Req(8080, 60));
  m->RunOnce();
  RunUntil(*m, gw_.start + absl::Seconds(29));
  gw_.answering = false;
  RunUntil(*m, gw_.start + absl::Seconds(40));
  std::optional<MappingStatus> s = m->Get(Proto::kTcp, 8080);
  EXPECT_EQ(s->state, MappingStatus::State::kFailing);
  EXPECT_TRUE(s->result.has_value());  // the last grant is kept
  EXPECT_THAT(changes_.back(), HasSubstr("error: no answer"));
}

TEST_F(MapperTest, WorkerThreadMapsAndStops) {
  Gateway real;
  std::atomic<int> mapped{0};
  Mapper::Options o;
  o.connect = [&real]() -> absl::StatusOr<Connection> {
    auto c = std::make_unique<FakeClient>(&real);
    absl::StatusOr<GatewayInfo> i = c->Probe();
    return Connection{std::move(c), *i};
  };
  o.on_change = [&](const MappingStatus& s) {
    if (s.state == MappingStatus::State::kMapped) ++mapped;
  };
  Mapper m(std::move(o));
  m.Map(Req(8080));
  for (int i = 0; i < 200 && mapped == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(mapped, 1);
  m.Stop(true);
  EXPECT_TRUE(real.held.empty());
}

TEST(ShortDuration, Forms) {
  EXPECT_EQ(ShortDuration(absl::Minutes(28)), "28m");
  EXPECT_EQ(ShortDuration(absl::Minutes(65)), "1h5m");
  EXPECT_EQ(ShortDuration(absl::Hours(2)), "2h");
  EXPECT_EQ(ShortDuration(absl::Seconds(12)), "12s");
  EXPECT_EQ(ShortDuration(-absl::Seconds(1)), "0s");
}

}  // namespace
}  // namespace fabric::agent::upstream
