// SsdpServer in a network namespace of its own ("srv"), with a LAN
// namespace on a veth (srv lan0 10.77.0.1/24 <-> h0 10.77.0.2/24, plus
// 10.78.0.2/24, a source outside the LAN subnet) and a WAN namespace on
// another (srv wan0 10.88.0.1/24 <-> w0 10.88.0.2/24). The test's sockets
// are opened inside the LAN or WAN namespace (ScopedNetns) and used from
// here. Root only; the namespaces always go.
#include "agent/ssdp/server.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent::ssdp {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

constexpr char kRoot[] = "uuid:12345678-90ab-cdef-1234-567890abcdef";
constexpr char kLocation[] = "http://10.77.0.1:8080/rootDesc.xml";

struct Message {
  std::string first_line;
  std::map<std::string, std::string> headers;  // upper-case names
  std::string from;                            // source address
  absl::Duration after;                        // since the wait began
};

Message ParseMessage(const std::string& text) {
  Message m;
  std::vector<std::string> lines = absl::StrSplit(text, "\r\n");
  if (!lines.empty()) m.first_line = lines[0];
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    m.headers[absl::AsciiStrToUpper(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  return m;
}

std::string Search(const std::string& st, const std::string& mx = "1") {
  std::string out = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n";
  if (!mx.empty()) absl::StrAppend(&out, "MX: ", mx, "\r\n");
  absl::StrAppend(&out, "ST: ", st, "\r\n\r\n");
  return out;
}

class Socket {
 public:
  // A UDP socket in `ns` bound to bind_addr:port; `join_on` names the
  // interface to join the SSDP group on ("": none), and multicast goes out
  // from bind_addr.
  static std::unique_ptr<Socket> Open(const testing::Netns& ns, const std::string& bind_addr,
                                      uint16_t port, const std::string& join_on = "") {
    absl::StatusOr<std::unique_ptr<testing::ScopedNetns>> in = testing::ScopedNetns::Enter(ns);
    if (!in.ok()) return nullptr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int buf = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, bind_addr.c_str(), &a.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      close(fd);
      return nullptr;
    }
    if (!join_on.empty()) {
      ip_mreqn m{};
      inet_pton(AF_INET, kMulticastGroup, &m.imr_multiaddr);
      m.imr_ifindex = static_cast<int>(if_nametoindex(join_on.c_str()));
      if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof(m)) != 0) {
        close(fd);
        return nullptr;
      }
    } else if (bind_addr != "0.0.0.0") {
      in_addr ifaddr{};
      inet_pton(AF_INET, bind_addr.c_str(), &ifaddr);
      setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &ifaddr, sizeof(ifaddr));
    }
    return std::unique_ptr<Socket>(new Socket(fd));
  }
  ~Socket() { close(fd_); }

  void Send(const std::string& to, uint16_t port, const std::string& payload) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, to.c_str(), &a.sin_addr);
    sendto(fd_, payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  void SendSearch(const std::string& st, const std::string& mx = "1",
                  const std::string& to = kMulticastGroup) {
    Send(to, kSsdpPort, Search(st, mx));
  }

  // Everything that arrives within `wait` (or until `enough` messages).
  std::vector<Message> Collect(absl::Duration wait, size_t enough = SIZE_MAX) {
    std::vector<Message> out;
    absl::Time start = absl::Now(), deadline = start + wait;
    while (out.size() < enough) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) break;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) != 1) continue;
      char buf[4096];
      sockaddr_in from{};
      socklen_t len = sizeof(from);
      ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      Message m = ParseMessage(std::string(buf, n));
      char text[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &from.sin_addr, text, sizeof(text));
      m.from = text;
      m.after = absl::Now() - start;
      out.push_back(std::move(m));
    }
    return out;
  }

 private:
  explicit Socket(int fd) : fd_(fd) {}
  int fd_;
};

std::set<std::pair<std::string, std::string>> Pairs(const std::vector<Message>& v,
                                                    const char* st = "ST") {
  std::set<std::pair<std::string, std::string>> out;
  for (const Message& m : v) out.insert({m.headers.at(st), m.headers.at("USN")});
  return out;
}

std::set<std::pair<std::string, std::string>> Pairs(const std::vector<Answer>& v) {
  std::set<std::pair<std::string, std::string>> out;
  for (const Answer& a : v) out.insert({a.st, a.usn});
  return out;
}

std::vector<Message> WithNts(const std::vector<Message>& v, const std::string& nts) {
  std::vector<Message> out;
  for (const Message& m : v) {
    auto it = m.headers.find("NTS");
    if (it != m.headers.end() && it->second == nts) out.push_back(m);
  }
  return out;
}

class SsdpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "runs in network namespaces: root";
    ASSERT_OK_AND_ASSIGN(srv_, testing::Netns::Create("ssdp-srv"));
    ASSERT_OK_AND_ASSIGN(lan_, testing::Netns::Create("ssdp-lan"));
    ASSERT_OK_AND_ASSIGN(wan_, testing::Netns::Create("ssdp-wan"));
    ASSERT_OK(testing::Link(*srv_, "lan0", "10.77.0.1/24", *lan_, "h0",
                            "10.77.0.2/24 10.78.0.2/24"));
    ASSERT_OK(testing::Link(*srv_, "wan0", "10.88.0.1/24", *wan_, "w0", "10.88.0.2/24"));
    ASSERT_OK(wan_->Exec("ip route add 10.77.0.0/24 via 10.88.0.1").status());
    ASSERT_OK(lan_->Exec("ip route add 224.0.0.0/4 dev h0 && "
                         "ip route add 10.88.0.0/24 via 10.77.0.1").status());
    device_ = *InternetGatewayDevice(kRoot);
  }
  void TearDown() override {
    server_.reset();
    wan_.reset();
    lan_.reset();
    srv_.reset();
  }

  ServerConfig Config() {
    ServerConfig c;
    c.lan_interfaces = {"lan0"};
    c.http_port = 8080;
    c.device = device_;
    c.version = "test";
    return c;
  }
  void StartServer(ServerConfig config) {
    ASSERT_OK_AND_ASSIGN(auto in, testing::ScopedNetns::Enter(*srv_));
    ASSERT_OK_AND_ASSIGN(server_, SsdpServer::Start(std::move(config)));
  }
  void StartServer() { StartServer(Config()); }
  std::unique_ptr<Socket> LanClient(const std::string& addr = "10.77.0.2") {
    return Socket::Open(*lan_, addr, 0);
  }
  // Waits until the server's counters satisfy `done` (its thread counts).
  template <typename F>
  Counters WaitFor(F done) {
    absl::Time deadline = absl::Now() + absl::Seconds(3);
    Counters c = server_->counters();
    while (!done(c) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
      c = server_->counters();
    }
    return c;
  }

  std::unique_ptr<testing::Netns> srv_, lan_, wan_;
  Device device_;
  std::unique_ptr<SsdpServer> server_;
};

TEST_F(SsdpServerTest, AnswersAMulticastSearchForAllWithinMx) {
  StartServer();
  std::unique_ptr<Socket> client = LanClient();
  ASSERT_NE(client, nullptr);
  client->SendSearch("ssdp:all", "1");
  std::vector<Message> got = client->Collect(absl::Milliseconds(1500));
  ASSERT_THAT(got, SizeIs(10));
  EXPECT_EQ(Pairs(got), Pairs(Advertisements(device_)));
  for (const Message& m : got) {
    EXPECT_EQ(m.first_line, "HTTP/1.1 200 OK");
    EXPECT_EQ(m.from, "10.77.0.1");
    EXPECT_EQ(m.headers.at("LOCATION"), kLocation);
    EXPECT_EQ(m.headers.at("CACHE-CONTROL"), "max-age=1800");
    EXPECT_EQ(m.headers.count("EXT"), 1u);
    EXPECT_THAT(m.headers.at("SERVER"), StartsWith("Linux/"));
    EXPECT_THAT(m.headers.at("SERVER"), HasSubstr(" UPnP/1.1 fabric-nat/test"));
    EXPECT_EQ(m.headers.at("BOOTID.UPNP.ORG"), "1");
    EXPECT_LE(m.after, absl::Milliseconds(1200)) << "MX is 1 s";
  }
  Counters c = server_->counters();
  EXPECT_EQ(c.queries_answered, 1u);
  EXPECT_EQ(c.answers_sent, 10u);
  EXPECT_EQ(c.ignored(), 0u);
}

TEST_F(SsdpServerTest, AnswersEarlierVersionsEchoingThem) {
  StartServer();
  std::unique_ptr<Socket> client = LanClient();
  ASSERT_NE(client, nullptr);
  const std::string igd1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
  const std::string ip1 = "urn:schemas-upnp-org:service:WANIPConnection:1";
  client->SendSearch("urn:schemas-upnp-org:service:WANPPPConnection:1", "1");  // none
  client->SendSearch(igd1, "1");
  client->SendSearch(ip1, "1");
  client->SendSearch("upnp:rootdevice", "0");  // MX 0: at once
  std::vector<Message> got = client->Collect(absl::Milliseconds(1500));
  ASSERT_THAT(got, SizeIs(3));
  const std::string c = device_.devices[2].uuid;
  EXPECT_EQ(Pairs(got),
            (std::set<std::pair<std::string, std::string>>{
                {igd1, std::string(kRoot) + "::" + igd1},
                {ip1, c + "::" + ip1},
                {"upnp:rootdevice", std::string(kRoot) + "::upnp:rootdevice"}}));
  for (const Message& m : got) {
    if (m.headers.at("ST") == "upnp:rootdevice") {
      EXPECT_LE(m.after, absl::Milliseconds(300));
    }
  }
  Counters counters = server_->counters();
  EXPECT_EQ(counters.queries_answered, 3u);
  EXPECT_EQ(counters.queries_unmatched, 1u);
}

TEST_F(SsdpServerTest, AnswersAUnicastSearchAtOnceWithoutMx) {
  StartServer();
  std::unique_ptr<Socket> client = LanClient();
  ASSERT_NE(client, nullptr);
  client->SendSearch("ssdp:all", "", "10.77.0.1");  // no MX: fine for unicast
  std::vector<Message> got = client->Collect(absl::Milliseconds(400));
  ASSERT_THAT(got, SizeIs(10));
  for (const Message& m : got) {
    EXPECT_EQ(m.headers.at("LOCATION"), kLocation);
    EXPECT_LE(m.after, absl::Milliseconds(300));
  }
  client->SendSearch(kWanIpConnection2, "120", "10.77.0.1");  // MX is ignored
  EXPECT_THAT(client->Collect(absl::Milliseconds(300)), SizeIs(1));
  // Multicast without MX is malformed.
  client->SendSearch("ssdp:all", "");
  EXPECT_THAT(client->Collect(absl::Milliseconds(300)), SizeIs(0));
  EXPECT_EQ(WaitFor([](const Counters& c) { return c.malformed >= 1; }).malformed, 1u);
}

TEST_F(SsdpServerTest, IgnoresWhatIsNotFromTheLanSilently) {
  StartServer();
  std::unique_ptr<Socket> outside = LanClient("10.78.0.2");  // on the LAN link, other subnet
  std::unique_ptr<Socket> wan = Socket::Open(*wan_, "10.88.0.2", 0);
  std::unique_ptr<Socket> lan = LanClient();
  ASSERT_NE(outside, nullptr);
  ASSERT_NE(wan, nullptr);
  ASSERT_NE(lan, nullptr);
  outside->SendSearch("ssdp:all", "0");
  outside->SendSearch("ssdp:all", "0", "10.77.0.1");
  wan->SendSearch("ssdp:all", "0");               // not joined on wan0: the kernel drops it
  wan->SendSearch("ssdp:all", "0", "10.88.0.1");  // to our WAN address
  wan->SendSearch("ssdp:all", "0", "10.77.0.1");  // to our LAN address, via the WAN
  lan->SendSearch("ssdp:all", "0", "10.88.0.1");  // to our WAN address, from the LAN
  // Other devices' messages and broken searches from the LAN.
  lan->Send(kMulticastGroup, kSsdpPort,
            "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\n"
            "NTS: ssdp:alive\r\nUSN: uuid:x::upnp:rootdevice\r\n\r\n");
  lan->Send(kMulticastGroup, kSsdpPort, "HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n");
  lan->Send(kMulticastGroup, kSsdpPort,
            "M-SEARCH * HTTP/1.1\r\nMAN: ssdp:discover\r\nMX: 1\r\nST: ssdp:all\r\n\r\n");
  lan->Send(kMulticastGroup, kSsdpPort, std::string(3000, 'x'));
  EXPECT_THAT(outside->Collect(absl::Milliseconds(500)), SizeIs(0));
  EXPECT_THAT(wan->Collect(absl::Milliseconds(100)), SizeIs(0));
  EXPECT_THAT(lan->Collect(absl::Milliseconds(100)), SizeIs(0));
  Counters c = WaitFor([](const Counters& c) {
    return c.ignored_source >= 2 && c.ignored_interface >= 3 && c.ignored_other >= 2 &&
           c.malformed >= 2;
  });
  EXPECT_EQ(c.ignored_source, 2u);
  EXPECT_EQ(c.ignored_interface, 3u);
  EXPECT_EQ(c.ignored_other, 2u);
  EXPECT_EQ(c.malformed, 2u);
  EXPECT_EQ(c.answers_sent, 0u);
  EXPECT_EQ(c.queries_answered, 0u);
}

TEST_F(SsdpServerTest, AnnouncesAliveAtStartAndByebyeOnShutdown) {
  std::unique_ptr<Socket> listener = Socket::Open(*lan_, "0.0.0.0", kSsdpPort, "h0");
  ASSERT_NE(listener, nullptr);
  ServerConfig config = Config();
  config.boot_id = 42;
  StartServer(config);
  // byebye once (clearing stale caches), then alive 3 times 200 ms apart.
  std::vector<Message> start = listener->Collect(absl::Milliseconds(1000), 40);
  ASSERT_THAT(start, SizeIs(40));
  std::vector<Message> byebye = WithNts(start, "ssdp:byebye");
  std::vector<Message> alive = WithNts(start, "ssdp:alive");
  ASSERT_THAT(byebye, SizeIs(10));
  ASSERT_THAT(alive, SizeIs(30));
  EXPECT_EQ(start.front().headers.at("NTS"), "ssdp:byebye");
  EXPECT_EQ(Pairs(alive, "NT"), Pairs(Advertisements(device_)));
  EXPECT_EQ(Pairs(byebye, "NT"), Pairs(Advertisements(device_)));
  for (const Message& m : alive) {
    EXPECT_EQ(m.first_line, "NOTIFY * HTTP/1.1");
    EXPECT_EQ(m.from, "10.77.0.1");
    EXPECT_EQ(m.headers.at("HOST"), "239.255.255.250:1900");
    EXPECT_EQ(m.headers.at("LOCATION"), kLocation);
    EXPECT_EQ(m.headers.at("CACHE-CONTROL"), "max-age=1800");
    EXPECT_EQ(m.headers.at("BOOTID.UPNP.ORG"), "42");
    EXPECT_EQ(m.headers.count("SERVER"), 1u);
  }
  EXPECT_THAT(listener->Collect(absl::Milliseconds(300)), SizeIs(0)) << "then every 900 s";

  server_.reset();
  std::vector<Message> bye = listener->Collect(absl::Milliseconds(500));
  ASSERT_THAT(bye, SizeIs(10));
  EXPECT_THAT(WithNts(bye, "ssdp:byebye"), SizeIs(10));
  EXPECT_EQ(Pairs(bye, "NT"), Pairs(Advertisements(device_)));
  for (const Message& m : bye) {
    EXPECT_EQ(m.from, "10.77.0.1");
    EXPECT_EQ(m.headers.count("LOCATION"), 0u);
    EXPECT_EQ(m.headers.at("BOOTID.UPNP.ORG"), "42");
  }
}

TEST_F(SsdpServerTest, AnnouncesAgainWhenTheLanGainsAnAddress) {
  std::unique_ptr<Socket> listener = Socket::Open(*lan_, "0.0.0.0", kSsdpPort, "h0");
  ASSERT_NE(listener, nullptr);
  StartServer();
  ASSERT_THAT(listener->Collect(absl::Milliseconds(1000), 40), SizeIs(40));
  ASSERT_OK(srv_->Exec("ip addr add 10.77.5.1/24 dev lan0").status());
  std::vector<Message> got = WithNts(listener->Collect(absl::Milliseconds(1500)), "ssdp:alive");
  std::set<std::string> locations;
  for (const Message& m : got) locations.insert(m.headers.at("LOCATION") + " " + m.from);
  EXPECT_EQ(locations, (std::set<std::string>{
                           std::string(kLocation) + " 10.77.0.1",
                           "http://10.77.5.1:8080/rootDesc.xml 10.77.5.1"}));
}

TEST_F(SsdpServerTest, JoinsAnInterfaceThatAppearsLater) {
  ServerConfig config = Config();
  config.lan_interfaces = {"lan0", "lan1"};
  StartServer(config);
  ASSERT_OK(testing::Link(*srv_, "lan1", "10.79.0.1/24", *lan_, "h1", "10.79.0.2/24"));
  std::unique_ptr<Socket> client = LanClient("10.79.0.2");
  ASSERT_NE(client, nullptr);
  std::vector<Message> got;
  for (int i = 0; i < 20 && got.empty(); ++i) {  // until the server has seen it
    client->SendSearch("upnp:rootdevice", "0");
    got = client->Collect(absl::Milliseconds(100), 1);
  }
  ASSERT_THAT(got, SizeIs(1));
  EXPECT_EQ(got[0].headers.at("LOCATION"), "http://10.79.0.1:8080/rootDesc.xml");
}

TEST_F(SsdpServerTest, AFloodStaysWithinTheBounds) {
  ServerConfig config = Config();
  config.queries_per_second = 1;
  config.query_burst = 10;
  config.max_pending_per_client = 64;
  StartServer(config);
  std::unique_ptr<Socket> client = LanClient();
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 300; ++i) client->SendSearch("ssdp:all", "1");
  std::vector<Message> got = client->Collect(absl::Milliseconds(2000));
  Counters c = server_->counters();
  // 10 queries pass the limiter (its burst) and want 100 answers; at most
  // 64 wait for one client (a few more if some went out during the flood).
  EXPECT_GE(got.size(), 60u);
  EXPECT_LE(got.size(), 74u);
  EXPECT_EQ(c.answers_sent, got.size());
  EXPECT_EQ(c.answers_sent + c.answers_dropped, 100u);
  // The rest are refused (those the socket buffers held: some may be lost).
  EXPECT_GE(c.rate_limited, 200u);
  EXPECT_LE(c.rate_limited, 290u);
  // Queries 1-6 queue all 10, the 7th 4 of them, the rest none (unless
  // some went out meanwhile).
  EXPECT_GE(c.queries_answered, 7u);
  EXPECT_LE(c.queries_answered, 10u);
}

TEST_F(SsdpServerTest, TheTotalBoundHoldsAcrossSources) {
  ServerConfig config = Config();
  config.max_pending = 25;
  StartServer(config);
  ASSERT_OK(lan_->Exec("for i in 11 12 13 14; do ip addr add 10.77.0.$i/24 dev h0; done")
                .status());
  std::vector<std::unique_ptr<Socket>> clients;
  for (const char* a : {"10.77.0.2", "10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14"}) {
    clients.push_back(LanClient(a));
    ASSERT_NE(clients.back(), nullptr);
  }
  for (auto& c : clients) c->SendSearch("ssdp:all", "1");
  absl::SleepFor(absl::Milliseconds(1500));  // MX: every answer is out by now
  size_t total = 0;
  for (auto& c : clients) total += c->Collect(absl::Milliseconds(50)).size();
  Counters c = server_->counters();
  EXPECT_GE(total, 25u);
  EXPECT_LE(total, 30u);
  EXPECT_EQ(c.answers_sent + c.answers_dropped, 50u);
}

// Debian's upnpc (miniupnpc) discovers the server: it prints the LOCATION
// it found, then fails to fetch it (nothing serves HTTP here).
TEST_F(SsdpServerTest, UpnpcFindsTheLocation) {
  if (access("/usr/bin/upnpc", X_OK) != 0) GTEST_SKIP() << "upnpc is not installed";
  StartServer();
  ASSERT_OK_AND_ASSIGN(testing::CommandResult r,
                       testing::RunCommand(absl::StrCat("ip netns exec ", lan_->name(),
                                                        " timeout 20 upnpc -m h0 -l 2>&1")));
  RecordProperty("upnpc_output", r.out);
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("desc: ", kLocation))) << r.out << r.err;
  EXPECT_GE(server_->counters().queries_answered, 1u);
}

}  // namespace
}  // namespace fabric::agent::ssdp
