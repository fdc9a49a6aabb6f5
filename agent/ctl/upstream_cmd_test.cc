// fabricctl upstream against a fake gateway on 127.0.0.1: a UDP socket on
// an ephemeral port answered by the agent's own NAT-PMP/PCP server codec.
#include "agent/ctl/upstream_cmd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/ctl/ctl.h"
#include "agent/natpmp/codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace fabric::agent::ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class FakeGateway {
 public:
  explicit FakeGateway(bool answer = true) : answer_(answer) {
    fd_ = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeGateway() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  std::vector<std::string> log() {
    std::lock_guard<std::mutex> l(mu_);
    return log_;
  }
  int Count(const std::string& prefix) {
    int n = 0;
    for (const std::string& s : log()) n += s.rfind(prefix, 0) == 0;
    return n;
  }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      uint8_t buf[1500];
      sockaddr_in from{};
      socklen_t flen = sizeof(from);
      ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &flen);
      if (n <= 0 || !answer_) continue;
      std::vector<uint8_t> reply;
      const uint32_t epoch = 1000 + static_cast<uint32_t>(absl::ToInt64Seconds(absl::Now() - start_));
      if (buf[0] == 2) {
        natpmp::PcpRequest r;
        natpmp::PcpParseResult pr = natpmp::ParsePcp(buf, n, &r);
        uint16_t ext = 0;
        if (pr.kind == natpmp::PcpParseResult::kOk && r.opcode == 1) {
          ext = r.lifetime ? static_cast<uint16_t>(r.internal_port + 1) : 0;
          Log(absl::StrCat("pcp map ", r.protocol, "/", r.internal_port, " life=", r.lifetime));
        } else {
          Log("pcp announce");
        }
        reply = natpmp::PcpResponse(buf, n, pr.error, std::min<uint32_t>(r.lifetime, 3600), epoch,
                                    ext, natpmp::MapV4({203, 0, 113, 1}));
      } else {
        natpmp::PmpRequest r;
        if (natpmp::ParsePmp(buf, n, &r) != natpmp::PmpParse::kOk) continue;
        if (r.opcode == 0) {
          Log("pmp addr");
          reply = natpmp::PmpExternalAddressResponse(natpmp::PmpResult::kSuccess, epoch,
                                                     {203, 0, 113, 1});
        } else {
          Log(absl::StrCat("pmp map ", int{r.opcode}, "/", r.internal_port, " life=", r.lifetime));
          reply = natpmp::PmpMapResponse(r.opcode, natpmp::PmpResult::kSuccess, epoch,
                                         r.internal_port,
                                         r.lifetime ? r.internal_port + 2 : 0, r.lifetime);
        }
      }
      sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), flen);
    }
  }
  void Log(std::string s) {
    std::lock_guard<std::mutex> l(mu_);
    log_.push_back(std::move(s));
  }
  const bool answer_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  absl::Time start_ = absl::Now();
  std::mutex mu_;
  std::vector<std::string> log_;
  std::thread thread_;
};

struct Result {
  int code;
  std::string out, err;
};

Result Call(const std::vector<std::string>& args, UpstreamOptions o, bool json = false) {
  std::ostringstream out, err;
  int code = Upstream(args, o, json, out, err);
  return Result{code, out.str(), err.str()};
}

UpstreamOptions Local(const FakeGateway& g, const std::string& protocol) {
  UpstreamOptions o;
  o.gateway = "127.0.0.1";
  o.gateway_port = g.port();
  o.protocol = protocol;
  return o;
}

TEST(Upstream, MapPcpPrintsTheExternalEndpoint) {
  FakeGateway g;
  Result r = Call({"upstream", "map", "tcp", "8080"}, Local(g, "pcp"));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "203.0.113.1:8081 tcp -> 127.0.0.1:8080 via pcp, lifetime 3600s, gateway 127.0.0.1\n");
  EXPECT_EQ(g.Count("pcp map 6/8080 life=3600"), 1);
}

TEST(Upstream, MapAutoPrefersPcpAndJsonParses) {
  FakeGateway g;
  UpstreamOptions o = Local(g, "auto");
  o.lifetime = 600;
  o.external_port = 9000;
  Result r = Call({"upstream", "map", "udp", "5353"}, o, /*json=*/true);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["method"], "pcp");
  EXPECT_EQ(j["protocol"], "udp");
  EXPECT_EQ(j["external_ip"], "203.0.113.1");
  EXPECT_EQ(j["external_port"], 5354);
  EXPECT_EQ(j["internal_port"], 5353);
  EXPECT_EQ(j["lifetime"], 600);
  EXPECT_EQ(j["gateway"], "127.0.0.1");
  EXPECT_TRUE(j.contains("epoch"));
}

TEST(Upstream, MapNatPmp) {
  FakeGateway g;
  Result r = Call({"upstream", "map", "tcp", "8080"}, Local(g, "natpmp"));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, StartsWith("203.0.113.1:8082 tcp -> 127.0.0.1:8080 via natpmp"));
  EXPECT_EQ(g.Count("pmp map 2/8080 life=3600"), 1);
}

TEST(Upstream, UnmapDeletes) {
  FakeGateway g;
  Result r = Call({"upstream", "unmap", "tcp", "8080"}, Local(g, "pcp"));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "unmapped tcp/8080 via pcp (gateway 127.0.0.1)\n");
  EXPECT_EQ(g.Count("pcp map 6/8080 life=0"), 1);
  r = Call({"upstream", "unmap", "udp", "53"}, Local(g, "natpmp"));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(g.Count("pmp map 1/53 life=0"), 1);
}

// A --keep loop's stop test: sleeps as asked, true once `after` has passed.
std::function<bool(absl::Duration)> StopAfter(absl::Duration after) {
  const absl::Time until = absl::Now() + after;
  return [until](absl::Duration d) {
    absl::SleepFor(d);
    return absl::Now() >= until;
  };
}

TEST(Upstream, KeepRenewsThenDeletesOnStop) {
  FakeGateway g;
  UpstreamOptions o = Local(g, "pcp");
  o.lifetime = 2;
  o.keep = true;
  o.stop = StopAfter(absl::Milliseconds(3300));
  Result r = Call({"upstream", "map", "tcp", "8080"}, o);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  // Mapped, renewed at each half-life (1 s), then deleted.
  EXPECT_THAT(r.out, StartsWith("203.0.113.1:8081 tcp -> 127.0.0.1:8080 via pcp, lifetime 2s"));
  EXPECT_THAT(r.out, HasSubstr("tcp/8080: 203.0.113.1:8081 via pcp, renews in"));
  EXPECT_THAT(r.out, HasSubstr("tcp/8080: removed\nunmapped tcp/8080\n"));
  EXPECT_GE(g.Count("pcp map 6/8080 life=2"), 3);
  EXPECT_EQ(g.Count("pcp map 6/8080 life=0"), 1);
}

TEST(Upstream, KeepJsonLines) {
  FakeGateway g;
  UpstreamOptions o = Local(g, "natpmp");
  o.lifetime = 2;
  o.keep = true;
  o.stop = StopAfter(absl::Milliseconds(1500));
  Result r = Call({"upstream", "map", "tcp", "8080"}, o, /*json=*/true);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  std::istringstream lines(r.out);
  std::vector<std::string> events;
  for (std::string line; std::getline(lines, line);) {
    events.push_back(nlohmann::json::parse(line)["event"]);
  }
  ASSERT_GE(events.size(), 3u) << r.out;
  EXPECT_EQ(events.front(), "mapped");
  EXPECT_EQ(events[1], "renewed");
  EXPECT_EQ(events.back(), "removed");
}

TEST(Upstream, SilentGatewayFailsWithinTheBudget) {
  FakeGateway g(/*answer=*/false);
  UpstreamOptions o = Local(g, "pcp");
  o.schedule.budget = absl::Seconds(1);
  absl::Time start = absl::Now();
  Result r = Call({"upstream", "map", "tcp", "8080"}, o);
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_THAT(r.err, HasSubstr("fabricctl upstream map: gateway 127.0.0.1: pcp: no answer from "
                               "gateway 127.0.0.1 to PCP ANNOUNCE after 3 tries in 1s"));
  // --keep says the same and does not hang.
  o.keep = true;
  o.stop = [](absl::Duration d) {
    absl::SleepFor(d);
    return false;
  };
  r = Call({"upstream", "map", "tcp", "8080"}, o);
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_THAT(r.err, HasSubstr("no answer from gateway 127.0.0.1"));
}

TEST(Upstream, StatusSaysWhatAnswers) {
  FakeGateway g;
  Result r = Call({"upstream", "status"}, Local(g, "pcp"));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("gateway:          127.0.0.1 (given)\n"
                               "protocol:         pcp\n"
                               "external address: 203.0.113.1\n"
                               "epoch:            100"));
  r = Call({"upstream", "status"}, Local(g, "natpmp"), /*json=*/true);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["protocol"], "natpmp");
  EXPECT_EQ(j["external_ip"], "203.0.113.1");
  EXPECT_EQ(j["protocols"]["natpmp"]["answers"], true);
}

TEST(Upstream, UsageErrors) {
  UpstreamOptions o;
  EXPECT_EQ(Call({"upstream"}, o).code, kExitUsage);
  EXPECT_EQ(Call({"upstream", "frob"}, o).code, kExitUsage);
  EXPECT_EQ(Call({"upstream", "map", "sctp", "80"}, o).code, kExitUsage);
  EXPECT_EQ(Call({"upstream", "map", "tcp", "0"}, o).code, kExitUsage);
  EXPECT_EQ(Call({"upstream", "map", "tcp", "70000"}, o).code, kExitUsage);
  o.protocol = "carrier-pigeon";
  Result r = Call({"upstream", "map", "tcp", "80"}, o);
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("expected auto, pcp, natpmp or upnp"));
  o.protocol = "auto";
  o.gateway = "router";
  EXPECT_THAT(Call({"upstream", "status"}, o).err, HasSubstr("not an IPv4 address"));
  // Dispatched from Run, without an agent socket.
  Options opts;
  opts.socket = "/nonexistent/agent.sock";
  std::ostringstream out, err;
  EXPECT_EQ(ctl::Run({"upstream", "map"}, opts, out, err), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("takes PROTO and PORT"));
}

}  // namespace
}  // namespace fabric::agent::ctl
