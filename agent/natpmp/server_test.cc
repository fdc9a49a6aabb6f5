// PmpServer with an injected WAN address (FakeAddressSource): the external
// address it answers follows the source, and a missing one is a network
// failure. Runs in a network namespace of its own (UDP on its loopback, which
// is the server's LAN interface here). Root only.
#include "agent/natpmp/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/core.h"
#include "agent/metrics.h"
#include "agent/store.h"
#include "agent/wan/fake_address_source.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "nat/conntrack/conntrack.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent::natpmp {
namespace {

nat::IpAddress Ip(const char* s) { return *nat::IpAddress::Parse(s); }

class PmpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "runs in a network namespace: root";
    ASSERT_OK_AND_ASSIGN(ns_, testing::Netns::Create("pmp"));
    ASSERT_OK_AND_ASSIGN(in_ns_, testing::ScopedNetns::Enter(*ns_));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store,
                         Store::Open(std::string(std::getenv("TEST_TMPDIR")) + "/state"));
    CoreOptions options;
    options.dynamic_lo = 40000;
    options.dynamic_hi = 40099;
    core_ = std::make_unique<AgentCore>(std::move(store), &backend_, &conntrack_, options);
    ASSERT_OK(core_->Start());
    client_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(client_, 0);
  }
  void TearDown() override {
    server_.reset();
    if (client_ >= 0) close(client_);
    core_.reset();
    in_ns_.reset();
    ns_.reset();
  }

  void StartServer() {
    ServerConfig config;
    config.rate_per_second = 0;
    StartServer(config);
  }
  void StartServer(ServerConfig config) {
    config.lan_interfaces = {"lo"};
    absl::StatusOr<std::unique_ptr<PmpServer>> s =
        PmpServer::Start(core_.get(), &metrics_, &wan_, config);
    ASSERT_OK(s.status());
    server_ = std::move(*s);
  }

  // NAT-PMP "external address" request; the answer's result code and
  // address ("" on no answer).
  std::pair<int, std::string> AskAddress() {
    uint8_t req[2] = {0, 0};
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(kServerPort);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    sendto(client_, req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
    pollfd p{client_, POLLIN, 0};
    if (poll(&p, 1, 1000) != 1) return {-1, ""};
    uint8_t buf[64];
    ssize_t n = recv(client_, buf, sizeof(buf), 0);
    if (n != 12 || buf[1] != 128) return {-1, ""};
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, buf + 8, text, sizeof(text));
    return {(buf[2] << 8) | buf[3], text};
  }
  // Sends `request` and returns the answer's size (-1: no answer within
  // `wait`).
  int AnswerSize(const std::vector<uint8_t>& request,
                 absl::Duration wait = absl::Milliseconds(300)) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(kServerPort);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    sendto(client_, request.data(), request.size(), 0, reinterpret_cast<sockaddr*>(&to),
           sizeof(to));
    pollfd p{client_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(wait))) != 1) return -1;
    uint8_t buf[2048];
    return static_cast<int>(recv(client_, buf, sizeof(buf), 0));
  }
  // Asks until the answer is `want` (the server applies changes on its own
  // thread) or 2 s pass.
  std::pair<int, std::string> AskUntil(std::pair<int, std::string> want) {
    std::pair<int, std::string> got;
    absl::Time deadline = absl::Now() + absl::Seconds(2);
    do {
      got = AskAddress();
      if (got == want) break;
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < deadline);
    return got;
  }

  std::unique_ptr<testing::Netns> ns_;
  std::unique_ptr<testing::ScopedNetns> in_ns_;
  nat::FakeBackend backend_;
  nat::RecordingConntrackCleaner conntrack_;
  std::unique_ptr<AgentCore> core_;
  Metrics metrics_;
  wan::FakeAddressSource wan_{"wan0"};
  std::unique_ptr<PmpServer> server_;
  int client_ = -1;
};

TEST_F(PmpServerTest, AnswersTheSourcesAddressAndFollowsItsChanges) {
  wan_.Set(Ip("203.0.113.1"));
  StartServer();
  // Known at start, before the first request.
  EXPECT_EQ(AskAddress(), std::make_pair(0, std::string("203.0.113.1")));
  wan_.Set(Ip("203.0.113.50"));
  EXPECT_EQ(AskUntil({0, "203.0.113.50"}), std::make_pair(0, std::string("203.0.113.50")));
  // No address: NETWORK_FAILURE (3).
  wan_.Set(std::nullopt);
  EXPECT_EQ(AskUntil({3, "0.0.0.0"}), std::make_pair(3, std::string("0.0.0.0")));
  // Telling the core is the source owner's job (Agent), not the server's.
  EXPECT_EQ(core_->external_address(), std::nullopt);
}

TEST_F(PmpServerTest, StopsListeningOnDestruction) {
  StartServer();
  EXPECT_EQ(AskAddress().first, 3);
  server_.reset();
  wan_.Set(Ip("203.0.113.1"));  // no listener left: nothing runs
  EXPECT_EQ(AskAddress().first, -1);
}

TEST_F(PmpServerTest, NeedsAWanSourceNotALanInterface) {
  ServerConfig config;
  config.lan_interfaces = {"lo"};
  EXPECT_FALSE(PmpServer::Start(core_.get(), &metrics_, nullptr, config).ok());
  config.lan_interfaces = {"wan0"};
  absl::StatusOr<std::unique_ptr<PmpServer>> s =
      PmpServer::Start(core_.get(), &metrics_, &wan_, config);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(), "interface wan0 cannot be both LAN and WAN");
}

// Issue "Nothing hijacked", item 6: an error answer is never longer than
// its request (no amplification for a spoofed source); one shorter than a
// header gets none.
TEST_F(PmpServerTest, ErrorAnswersAreNeverLongerThanTheRequest) {
  wan_.Set(Ip("203.0.113.1"));
  StartServer();
  auto bytes = [](std::initializer_list<uint8_t> head, size_t size) {
    std::vector<uint8_t> v(head);
    v.resize(size, 0);
    return v;
  };
  // PCP shorter than its 24-byte header: no answer (was 24 bytes).
  EXPECT_EQ(AnswerSize({2, 1}), -1);
  EXPECT_EQ(AnswerSize(bytes({2, 1}, 20)), -1);
  // Another version, 2 bytes: no answer (was PCP's 24-byte UNSUPP_VERSION).
  EXPECT_EQ(AnswerSize({1, 0}), -1);
  EXPECT_EQ(AnswerSize(bytes({1, 0}, 24)), 24);
  // PCP unknown opcode: the request copied, never more than it.
  EXPECT_EQ(AnswerSize(bytes({2, 5}, 24)), 24);
  EXPECT_EQ(AnswerSize(bytes({2, 5}, 100)), 100);
  EXPECT_EQ(AnswerSize(bytes({2, 5}, 1100)), 1100);
  EXPECT_EQ(AnswerSize(bytes({2, 5}, 1101)), 24);  // MALFORMED_REQUEST, header only
  // NAT-PMP: an unknown opcode echoed; shorter than its header, nothing.
  EXPECT_EQ(AnswerSize({0, 5}), -1);
  EXPECT_EQ(AnswerSize(bytes({0, 5}, 4)), 4);
  // A map request cut short: the 4-byte header with result 2, or nothing.
  EXPECT_EQ(AnswerSize({0, 1}), -1);
  EXPECT_EQ(AnswerSize(bytes({0, 2}, 6)), 4);
  // The protocol's own answers keep their sizes (RFC 6886): 12 and 16.
  EXPECT_EQ(AnswerSize({0, 0}), 12);
  EXPECT_EQ(AnswerSize({0, 2, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0}), 16);
}

// Item 4: the burst lets a client use its whole quota at once, as clients
// that open their ports at start-up do.
TEST_F(PmpServerTest, BurstCoversTheWholeQuota) {
  wan_.Set(Ip("203.0.113.1"));
  ServerConfig config;
  config.rate_per_second = 10;
  config.burst = 20;
  config.policy.max_per_client = 50;
  StartServer(config);
  int answered = 0;
  for (int i = 0; i < 90; ++i) answered += AnswerSize({0, 0}, absl::Seconds(1)) == 12;
  EXPECT_EQ(answered, 90);
}

}  // namespace
}  // namespace fabric::agent::natpmp
