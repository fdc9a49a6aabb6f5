// The proxy with real traffic, in three namespaces:
//   client  eth0 2001:db8:1::10/64, 2001:db8:1::11/64 (IPv6 only)
//    |
//   router  lan0 2001:db8:1::1/64, 2001:db8:1::2/64; wan0 192.168.1.1/24: the Proxy
//    |
//   server  eth0 192.168.1.100/24 (IPv4 only): nettool.py and in-test servers
// The test thread sits in the router namespace (the Proxy's loop thread
// starts there); client and server sockets are opened in their namespaces
// and used from the test's threads. Root only.
#include "agent/proxy/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/netns.h"
#include "testing/status_matchers.h"

namespace fabric::agent::proxy {
namespace {

using ::fabric::testing::IsOkAndHolds;
using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;

nat::IpAddress Ip(const char* s) { return *nat::IpAddress::Parse(s); }

// A socket opened inside `ns` (it stays there when the thread leaves).
int SocketIn(const testing::Netns& ns, int family, int type) {
  auto in = testing::ScopedNetns::Enter(ns);
  if (!in.ok()) return -1;
  return socket(family, type | SOCK_CLOEXEC, 0);
}

sockaddr_in6 Addr6(const char* ip, uint16_t port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return a;
}

sockaddr_in Addr4(const char* ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

// Waits until `pred` holds, for up to 5 s.
bool Eventually(const std::function<bool()>& pred) {
  for (int i = 0; i < 500; ++i) {
    if (pred()) return true;
    usleep(10000);
  }
  return pred();
}

// Reads until EOF (or an error, noted in `error`).
std::string ReadAll(int fd, int* error = nullptr) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      out.append(buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (error != nullptr) *error = n < 0 ? errno : 0;
    return out;
  }
}

bool WriteAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n;
    len -= n;
  }
  return true;
}

// A TCP server in the server namespace, a thread per connection:
// kEcho writes back what it reads and sends FIN after the client's;
// kCount reads to EOF, then answers "<bytes read>\n" (needs half-close).
class TestServer {
 public:
  enum class Mode { kEcho, kCount };
  TestServer(const testing::Netns& ns, uint16_t port, Mode mode) : mode_(mode) {
    fd_ = SocketIn(ns, AF_INET, SOCK_STREAM);
    int on = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    sockaddr_in a = Addr4("0.0.0.0", port);
    ok_ = bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 && listen(fd_, 128) == 0;
    accepter_ = std::thread([this] { Accept(); });
  }
  ~TestServer() {
    shutdown(fd_, SHUT_RDWR);
    accepter_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int c : conns_) shutdown(c, SHUT_RDWR);
    }
    for (std::thread& t : workers_) t.join();
    for (int c : conns_) close(c);
    close(fd_);
  }
  bool ok() const { return ok_; }

 private:
  void Accept() {
    for (;;) {
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::lock_guard<std::mutex> lock(mu_);
      conns_.push_back(c);
      workers_.emplace_back([this, c] { Handle(c); });
    }
  }
  void Handle(int c) {
    if (mode_ == Mode::kCount) {
      std::string all = ReadAll(c);
      std::string answer = absl::StrCat(all.size(), "\n");
      WriteAll(c, answer.data(), answer.size());
      shutdown(c, SHUT_WR);
      return;
    }
    char buf[65536];
    for (;;) {
      ssize_t n = read(c, buf, sizeof(buf));
      if (n <= 0) break;
      if (!WriteAll(c, buf, n)) return;
    }
    shutdown(c, SHUT_WR);
  }

  Mode mode_;
  int fd_ = -1;
  bool ok_ = false;
  std::thread accepter_;
  std::mutex mu_;
  std::vector<int> conns_;  // guarded by mu_
  std::vector<std::thread> workers_;
};

class ProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "runs in network namespaces: root";
    ASSERT_OK_AND_ASSIGN(client_, testing::Netns::Create("p6cli"));
    ASSERT_OK_AND_ASSIGN(router_, testing::Netns::Create("p6rtr"));
    ASSERT_OK_AND_ASSIGN(server_, testing::Netns::Create("p4srv"));
    ASSERT_OK(testing::Link(*client_, "eth0", "2001:db8:1::10/64 2001:db8:1::11/64", *router_,
                            "lan0", "2001:db8:1::1/64 2001:db8:1::2/64"));
    ASSERT_OK(
        testing::Link(*router_, "wan0", "192.168.1.1/24", *server_, "eth0", "192.168.1.100/24"));
    ASSERT_OK_AND_ASSIGN(in_router_, testing::ScopedNetns::Enter(*router_));
  }
  void TearDown() override {
    proxy_.reset();
    in_router_.reset();
    client_.reset();
    router_.reset();
    server_.reset();
  }

  void StartProxy(ProxyOptions options = {}) {
    ASSERT_OK(RaiseOpenFileLimit(8192));
    ASSERT_OK_AND_ASSIGN(proxy_, Proxy::Start(options));
  }

  static ProxySpec Spec(nat::Protocol protocol, const char* listen, uint16_t port,
                        uint16_t target_port, uint16_t count = 1) {
    ProxySpec s;
    s.protocol = protocol;
    s.listen_ip = Ip(listen);
    s.listen_port = port;
    s.port_count = count;
    s.target_ip = Ip("192.168.1.100");
    s.target_port = target_port;
    s.name = "web";
    return s;
  }

  void BindAndServe(const ProxySpec& spec) {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Listener> l, proxy_->Bind(spec));
    proxy_->Serve(std::move(l));
  }

  // A TCP connection from the client namespace (source `from`, or any) to
  // the router; -1 when it fails.
  int Connect(const char* to, uint16_t port, const char* from = nullptr) {
    int fd = SocketIn(*client_, AF_INET6, SOCK_STREAM);
    if (from != nullptr) {
      sockaddr_in6 src = Addr6(from, 0);
      if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
        close(fd);
        return -1;
      }
    }
    sockaddr_in6 dst = Addr6(to, port);
    if (connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0) {
      close(fd);
      return -1;
    }
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
  }

  // Whether `fd` (to an echo server through the proxy) still echoes.
  static bool Echoes(int fd) {
    if (!WriteAll(fd, "hi\n", 3)) return false;
    char buf[3];
    size_t got = 0;
    while (got < 3) {
      ssize_t n = read(fd, buf + got, 3 - got);
      if (n <= 0) return false;
      got += n;
    }
    return std::memcmp(buf, "hi\n", 3) == 0;
  }

  // True when the peer reset or closed `fd` (read gives 0 or ECONNRESET).
  static bool ClosedByPeer(int fd) {
    char c;
    ssize_t n = read(fd, &c, 1);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

  std::unique_ptr<testing::Netns> client_, router_, server_;
  std::unique_ptr<testing::ScopedNetns> in_router_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(ProxyTest, TcpAnswerNamesTheRoutersIPv4Address) {
  StartProxy();
  ASSERT_OK(testing::Serve(*server_, "tcp", 9000, "srv"));
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8080, 9000));
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8080),
              IsOkAndHolds("srv 192.168.1.1\n"));
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::2", 8080),
              IsOkAndHolds("srv 192.168.1.1\n"));
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().active_connections == 0; }));
  ProxyCounters c = proxy_->counters();
  EXPECT_EQ(c.connections_accepted, 2u);
  EXPECT_EQ(c.connections_refused, 0u);
  std::optional<ProxyCounters> f = proxy_->ForwardCounters({nat::Protocol::kTcp, Ip("::"), 8080});
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->connections_accepted, 2u);
  EXPECT_EQ(f->bytes_to_client, 2 * std::string("srv 192.168.1.1\n").size());
}

TEST_F(ProxyTest, TcpEchoesEightMebibytesIntact) {
  StartProxy();
  TestServer echo(*server_, 9000, TestServer::Mode::kEcho);
  ASSERT_TRUE(echo.ok());
  BindAndServe(Spec(nat::Protocol::kTcp, "2001:db8:1::1", 8080, 9000));
  std::string payload(8 << 20, '\0');
  std::mt19937 rng(42);
  for (char& ch : payload) ch = static_cast<char>(rng());
  int fd = Connect("2001:db8:1::1", 8080);
  ASSERT_GE(fd, 0);
  // Write and read at once: the echo comes back while we are still sending.
  std::thread writer([&] {
    WriteAll(fd, payload.data(), payload.size());
    shutdown(fd, SHUT_WR);  // the echo's FIN follows ours, through the proxy
  });
  int error = 0;
  std::string back = ReadAll(fd, &error);
  writer.join();
  close(fd);
  EXPECT_EQ(error, 0);
  ASSERT_EQ(back.size(), payload.size());
  EXPECT_EQ(std::hash<std::string>()(back), std::hash<std::string>()(payload));
  EXPECT_TRUE(back == payload);
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().active_connections == 0; }));
  EXPECT_EQ(proxy_->counters().bytes_to_target, payload.size());
  EXPECT_EQ(proxy_->counters().bytes_to_client, payload.size());
}

TEST_F(ProxyTest, HalfCloseCarriesTheAnswerAfterTheClientsFin) {
  StartProxy();
  TestServer count(*server_, 9001, TestServer::Mode::kCount);
  ASSERT_TRUE(count.ok());
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8081, 9001));
  int fd = Connect("2001:db8:1::1", 8081);
  ASSERT_GE(fd, 0);
  std::string data(100000, 'x');
  ASSERT_TRUE(WriteAll(fd, data.data(), data.size()));
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  int error = 0;
  EXPECT_EQ(ReadAll(fd, &error), "100000\n");
  EXPECT_EQ(error, 0);
  close(fd);
}

TEST_F(ProxyTest, PortRangeMapsPortNToPortN) {
  StartProxy();
  ASSERT_OK(testing::Serve(*server_, "tcp", 9100, "p0"));
  ASSERT_OK(testing::Serve(*server_, "tcp", 9102, "p2"));
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8100, 9100, 3));
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8100),
              IsOkAndHolds("p0 192.168.1.1\n"));
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8102),
              IsOkAndHolds("p2 192.168.1.1\n"));
  // Nothing listens on 9101: the proxy resets the client and counts it.
  EXPECT_FALSE(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8101).ok());
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().connect_failures == 1; }));
}

TEST_F(ProxyTest, TargetThatNeverAnswersResetsTheClientAfterTheConnectTimeout) {
  ProxyOptions options;
  options.connect_timeout = absl::Milliseconds(300);
  StartProxy(options);
  ProxySpec spec = Spec(nat::Protocol::kTcp, "::", 8080, 9000);
  spec.target_ip = Ip("192.168.1.200");  // no such host: ARP never answers
  BindAndServe(spec);
  int fd = Connect("2001:db8:1::1", 8080);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(ClosedByPeer(fd));
  close(fd);
  EXPECT_EQ(proxy_->counters().connect_failures, 1u);
  EXPECT_EQ(proxy_->counters().active_connections, 0u);
}

TEST_F(ProxyTest, SpecsAndKeysReadAsTheyAreWritten) {
  ProxySpec range = Spec(nat::Protocol::kUdp, "2001:db8::1", 7000, 8000, 10);
  EXPECT_EQ(range.ToString(), "udp [2001:db8::1]:7000-7009 -> 192.168.1.100:8000-8009");
  EXPECT_EQ(Spec(nat::Protocol::kTcp, "::", 8080, 80).ToString(),
            "tcp [::]:8080 -> 192.168.1.100:80");
  EXPECT_EQ(ForwardKey::Of(range).ToString(), "udp [2001:db8::1]:7000");
}

TEST_F(ProxyTest, UdpReplyComesFromTheAddressTheClientSentTo) {
  StartProxy();
  ASSERT_OK(testing::Serve(*server_, "udp", 5300, "dns"));
  BindAndServe(Spec(nat::Protocol::kUdp, "::", 53, 5300));
  int fd = SocketIn(*client_, AF_INET6, SOCK_DGRAM);
  ASSERT_GE(fd, 0);
  timeval tv{3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  for (const char* to : {"2001:db8:1::2", "2001:db8:1::1"}) {
    SCOPED_TRACE(to);
    sockaddr_in6 dst = Addr6(to, 53);
    ASSERT_EQ(sendto(fd, "ping\n", 5, 0, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)), 5);
    char buf[256];
    sockaddr_in6 from{};
    socklen_t len = sizeof(from);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
    ASSERT_GT(n, 0) << strerror(errno);
    EXPECT_EQ(std::string(buf, n), "dns 192.168.1.1\n");
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &from.sin6_addr, text, sizeof(text));
    EXPECT_STREQ(text, to);
    EXPECT_EQ(ntohs(from.sin6_port), 53);
  }
  close(fd);
  // One client address and port: one flow per listening address it used.
  EXPECT_EQ(proxy_->counters().udp_flows_created, 1u);
  // A reply is counted just after it is sent, so the client may read it
  // before the proxy's thread has counted it.
  const uint64_t replies = 2 * std::string("dns 192.168.1.1\n").size();
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().bytes_to_client >= replies; }));
  EXPECT_EQ(proxy_->counters().bytes_to_client, replies);
}

TEST_F(ProxyTest, UdpFlowsExpireWhenIdle) {
  ProxyOptions options;
  options.udp_idle_timeout = absl::Milliseconds(300);
  StartProxy(options);
  ASSERT_OK(testing::Serve(*server_, "udp", 5300, "dns"));
  BindAndServe(Spec(nat::Protocol::kUdp, "2001:db8:1::1", 5353, 5300));
  EXPECT_THAT(testing::Ask(*client_, "udp", "2001:db8:1::1", 5353),
              IsOkAndHolds("dns 192.168.1.1\n"));
  EXPECT_EQ(proxy_->counters().active_udp_flows, 1u);
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().active_udp_flows == 0; }));
  EXPECT_EQ(proxy_->counters().udp_flows_expired, 1u);
  // A new datagram makes a new flow.
  EXPECT_THAT(testing::Ask(*client_, "udp", "2001:db8:1::1", 5353),
              IsOkAndHolds("dns 192.168.1.1\n"));
  EXPECT_EQ(proxy_->counters().udp_flows_created, 2u);
}

TEST_F(ProxyTest, UdpFlowsPerClientAreBounded) {
  ProxyOptions options;
  options.max_udp_flows_per_client = 2;
  StartProxy(options);
  ASSERT_OK(testing::Serve(*server_, "udp", 5300, "dns"));
  BindAndServe(Spec(nat::Protocol::kUdp, "::", 5353, 5300));
  // Each ask is a new source port: a new flow.
  EXPECT_OK(testing::Ask(*client_, "udp", "2001:db8:1::1", 5353).status());
  EXPECT_OK(testing::Ask(*client_, "udp", "2001:db8:1::1", 5353).status());
  EXPECT_FALSE(testing::Ask(*client_, "udp", "2001:db8:1::1", 5353, 0.5).ok());
  EXPECT_EQ(proxy_->counters().udp_flows_refused, 1u);
  EXPECT_EQ(proxy_->counters().active_udp_flows, 2u);
}

TEST_F(ProxyTest, TcpConnectionsPerClientAndPerForwardAreBounded) {
  ProxyOptions options;
  options.max_connections_per_client = 2;
  options.max_connections_per_forward = 3;
  StartProxy(options);
  TestServer echo(*server_, 9000, TestServer::Mode::kEcho);
  ASSERT_TRUE(echo.ok());
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8080, 9000));
  std::vector<int> open;
  for (int i = 0; i < 2; ++i) {
    int fd = Connect("2001:db8:1::1", 8080, "2001:db8:1::10");
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(Echoes(fd));
    open.push_back(fd);
  }
  // A third from the same client: reset.
  int third = Connect("2001:db8:1::1", 8080, "2001:db8:1::10");
  ASSERT_GE(third, 0);  // the kernel completed the handshake; the proxy resets it
  EXPECT_TRUE(ClosedByPeer(third));
  close(third);
  EXPECT_EQ(proxy_->counters().connections_refused, 1u);
  // Another client gets the forward's last slot, then the forward is full.
  int other = Connect("2001:db8:1::1", 8080, "2001:db8:1::11");
  ASSERT_GE(other, 0);
  EXPECT_TRUE(Echoes(other));
  open.push_back(other);
  int fourth = Connect("2001:db8:1::1", 8080, "2001:db8:1::11");
  ASSERT_GE(fourth, 0);
  EXPECT_TRUE(ClosedByPeer(fourth));
  close(fourth);
  EXPECT_EQ(proxy_->counters().connections_refused, 2u);
  EXPECT_EQ(proxy_->counters().active_connections, 3u);
  // A slot freed is a slot taken again.
  close(open[0]);
  open.erase(open.begin());
  ASSERT_TRUE(Eventually([&] { return proxy_->counters().active_connections == 2; }));
  int again = Connect("2001:db8:1::1", 8080, "2001:db8:1::10");
  ASSERT_GE(again, 0);
  EXPECT_TRUE(Echoes(again));
  open.push_back(again);
  for (int fd : open) close(fd);
}

TEST_F(ProxyTest, CloseEndsLiveConnectionsAndFreesThePort) {
  StartProxy();
  TestServer echo(*server_, 9000, TestServer::Mode::kEcho);
  ASSERT_TRUE(echo.ok());
  ProxySpec spec = Spec(nat::Protocol::kTcp, "::", 8080, 9000);
  BindAndServe(spec);
  ProxySpec udp = Spec(nat::Protocol::kUdp, "::", 8080, 9000);
  BindAndServe(udp);
  int fd = Connect("2001:db8:1::1", 8080);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(Echoes(fd));
  EXPECT_EQ(proxy_->Forwards().size(), 2u);
  EXPECT_TRUE(proxy_->Close(ForwardKey::Of(spec)));
  EXPECT_FALSE(proxy_->Close(ForwardKey::Of(spec)));
  EXPECT_EQ(proxy_->counters().active_connections, 0u);  // closed when Close returns
  EXPECT_TRUE(ClosedByPeer(fd));
  close(fd);
  EXPECT_EQ(Connect("2001:db8:1::1", 8080), -1);  // nothing listens
  EXPECT_FALSE(proxy_->ForwardCounters(ForwardKey::Of(spec)).has_value());
  // The port is free: Bind again succeeds and serves.
  BindAndServe(spec);
  fd = Connect("2001:db8:1::1", 8080);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(Echoes(fd));
  close(fd);
  EXPECT_TRUE(proxy_->Close(ForwardKey::Of(udp)));
}

TEST_F(ProxyTest, DroppedListenerClosesItsSocketsAndServesNothing) {
  StartProxy();
  ProxySpec spec = Spec(nat::Protocol::kTcp, "::", 8080, 9000, 2);
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Listener> l, proxy_->Bind(spec));
    EXPECT_EQ(l->fds().size(), 2u);
  }  // a rolled-back transaction
  EXPECT_TRUE(proxy_->Forwards().empty());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Listener> again, proxy_->Bind(spec));
}

TEST_F(ProxyTest, BindOfAPortInUseFailsWithNothingLeftOpen) {
  StartProxy();
  // Someone else's socket on [::]:7001.
  int foreign = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a = Addr6("::", 7001);
  ASSERT_EQ(bind(foreign, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(foreign, 8), 0);
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "::", 7000, 9000, 3)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("tcp [::]:7001 is in use by another socket (EADDRINUSE)")));
  // 7000 was bound before 7001 failed; it must be closed again: a plain bind
  // (no SO_REUSEADDR) succeeds.
  int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 p = Addr6("::", 7000);
  EXPECT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&p), sizeof(p)), 0) << strerror(errno);
  close(probe);
  close(foreign);

  // One of our own forwards: the message names it.
  BindAndServe(Spec(nat::Protocol::kUdp, "::", 5353, 5300));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kUdp, "2001:db8:1::1", 5350, 5300, 10)),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("udp [2001:db8:1::1]:5353 is already served by this proxy's "
                                 "forward 'web' (udp [::]:5353 -> 192.168.1.100:5300)")));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "2001:db8:99::1", 8080, 9000)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("EADDRNOTAVAIL")));
}

TEST_F(ProxyTest, BindRejectsWhatItCannotProxy) {
  StartProxy();
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "0.0.0.0", 8080, 9000)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be IPv6")));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "::ffff:10.0.0.1", 8080, 9000)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be IPv6")));
  ProxySpec v6 = Spec(nat::Protocol::kTcp, "::", 8080, 9000);
  v6.target_ip = Ip("2001:db8::5");
  EXPECT_THAT(proxy_->Bind(v6),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("target must be IPv4")));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kSctp, "::", 8080, 9000)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("only tcp and udp")));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "::", 65535, 9000, 2)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("passes 65535")));
  EXPECT_THAT(proxy_->Bind(Spec(nat::Protocol::kTcp, "::", 0, 9000)),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ProxyTest, RetargetInsideATransactionReusesTheServedSockets) {
  StartProxy();
  ASSERT_OK(testing::Serve(*server_, "tcp", 9000, "old"));
  ASSERT_OK(testing::Serve(*server_, "tcp", 9001, "new"));
  ProxySpec spec = Spec(nat::Protocol::kTcp, "::", 8080, 9000);
  BindAndServe(spec);
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8080),
              IsOkAndHolds("old 192.168.1.1\n"));
  spec.target_port = 9001;
  {
    // Bound (the served sockets, duplicated), then rolled back: still old.
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Listener> l, proxy_->Bind(spec));
  }
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8080),
              IsOkAndHolds("old 192.168.1.1\n"));
  BindAndServe(spec);  // committed: new
  EXPECT_THAT(testing::Ask(*client_, "tcp", "2001:db8:1::1", 8080),
              IsOkAndHolds("new 192.168.1.1\n"));
  EXPECT_EQ(proxy_->Forwards().size(), 1u);
}

// The echo comes back to a client that has gone: the proxy's splice into
// its socket fails (EPIPE, and SIGPIPE, which must not reach the process).
TEST_F(ProxyTest, ClientGoneMidTransferClosesOnlyItsConnection) {
  StartProxy();
  TestServer echo(*server_, 9000, TestServer::Mode::kEcho);
  ASSERT_TRUE(echo.ok());
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8080, 9000));
  for (int round = 0; round < 3; ++round) {
    int fd = Connect("2001:db8:1::1", 8080);
    ASSERT_GE(fd, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    std::string data(1 << 20, 'y');
    timeval tv{0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    send(fd, data.data(), data.size(), MSG_NOSIGNAL);  // the echo backs up toward us
    usleep(100000);
    close(fd);  // unread data: a reset
  }
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().active_connections == 0; }));
  int fd = Connect("2001:db8:1::1", 8080);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(Echoes(fd));
  close(fd);
}

TEST_F(ProxyTest, HundredConnectionsAtOnce) {
  StartProxy();
  TestServer echo(*server_, 9000, TestServer::Mode::kEcho);
  ASSERT_TRUE(echo.ok());
  BindAndServe(Spec(nat::Protocol::kTcp, "::", 8080, 9000));
  std::vector<int> fds;
  for (int i = 0; i < 100; ++i) {
    int fd = Connect("2001:db8:1::1", 8080);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  for (int fd : fds) EXPECT_TRUE(Echoes(fd));
  EXPECT_EQ(proxy_->counters().active_connections, 100u);
  for (int fd : fds) close(fd);
  EXPECT_TRUE(Eventually([&] { return proxy_->counters().active_connections == 0; }));
}

}  // namespace
}  // namespace fabric::agent::proxy
