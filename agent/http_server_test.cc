// HttpServer on 127.0.0.1 (port 0), driven by raw sockets from this process:
// routing, methods, the request it hands to handlers, and what hostile
// clients (half-open, dripping, too many from one address, oversized headers
// and bodies) can and cannot do. Client sockets bind source addresses in
// 127.0.0.0/8, all loopback, to stand for several clients.
#include "agent/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A TCP connection to 127.0.0.1:port from `source` (port picked); -1 on
// failure.
int Connect(int port, const char* source = "127.0.0.1") {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  inet_pton(AF_INET, source, &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += n;
  }
  return true;
}

// Everything the peer sends until it closes (or resets), or `timeout_ms`.
// `closed` says whether it closed.
std::string ReadUntilClose(int fd, int timeout_ms, bool* closed = nullptr) {
  std::string out;
  Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  if (closed != nullptr) *closed = false;
  while (true) {
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) <= 0) return out;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      if (closed != nullptr) *closed = true;
      return out;
    }
    out.append(buf, n);
  }
}

// Sends `request` on a new connection and returns the whole response (the
// requests below ask the server to close).
std::string Exchange(int port, const std::string& request, const char* source = "127.0.0.1") {
  int fd = Connect(port, source);
  if (fd < 0) return "connect failed";
  SendAll(fd, request);
  std::string response = ReadUntilClose(fd, 5000);
  close(fd);
  return response;
}

std::string Get(int port, const std::string& target) {
  return Exchange(port, absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                     "Connection: close\r\n\r\n"));
}

std::string Body(const std::string& response) {
  size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// Waits (at most 5 s) until the server holds `n` connections.
bool WaitForConnections(const HttpServer& server, size_t n) {
  for (int i = 0; i < 500 && server.open_connections() != n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return server.open_connections() == n;
}

HttpServer::Response Ok(const HttpServer::Request&) { return {200, "text/plain", "ok\n"}; }

// Echoes what the handler was given.
HttpServer::Response Echo(const HttpServer::Request& r) {
  std::vector<std::string> query;
  for (const auto& [k, v] : r.query) query.push_back(absl::StrCat(k, "=", v));
  return {200,
          "text/plain",
          absl::StrCat("method=", r.method, "\npath=", r.path, "\nquery=",
                       absl::StrJoin(query, "&"), "\nx-test=", r.Header("X-TEST").value_or("-"),
                       "\npeer=", r.peer_address, " ", r.peer_port > 0, "\nlocal=", r.local_address,
                       ":", r.local_port, "\nbody=", r.body, "\n"),
          {{"X-Served-By", "fabric"}}};
}

std::unique_ptr<HttpServer> StartOrDie(HttpServer::Options options = HttpServer::Options()) {
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start("127.0.0.1:0", {{"/healthz", &Ok}, {"/echo", &Echo}}, std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(HttpServerTest, AnswersGetOnThePortItPicked) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  std::string r = Get(server->port(), "/healthz");
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(r, HasSubstr("Content-Type: text/plain\r\n"));
  EXPECT_THAT(r, HasSubstr("Content-Length: 3\r\n"));
  EXPECT_EQ(Body(r), "ok\n");
  // HTTP/1.0, as the old server spoke it and simple probes still do.
  r = Exchange(server->port(), "GET /healthz HTTP/1.0\r\n\r\n");
  EXPECT_THAT(r, ::testing::MatchesRegex("HTTP/1\\.[01] 200 OK\r\n(.|\r|\n)*"));
  EXPECT_EQ(Body(r), "ok\n");
}

TEST(HttpServerTest, HandsTheWholeRequestToItsHandler) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::string r = Exchange(server->port(),
                           "GET /echo?a=1&b=x%20y HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "x-test: yes\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(r, HasSubstr("X-Served-By: fabric\r\n"));
  EXPECT_EQ(Body(r), absl::StrCat("method=GET\npath=/echo\nquery=a=1&b=x y\nx-test=yes\n"
                                  "peer=127.0.0.1 1\nlocal=127.0.0.1:",
                                  server->port(), "\nbody=\n"));
}

TEST(HttpServerTest, HeadGetsHeadersWithoutBody) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::string r =
      Exchange(server->port(), "HEAD /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(r, StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(r, HasSubstr("Content-Length: 3\r\n"));
  EXPECT_EQ(Body(r), "");
}

TEST(HttpServerTest, UnknownPathIs404) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::string r = Get(server->port(), "/nothing");
  EXPECT_THAT(r, StartsWith("HTTP/1.1 404"));
  EXPECT_EQ(Body(r), "not found\n");
  EXPECT_THAT(Get(server->port(), "/healthz/"), StartsWith("HTTP/1.1 404"));
}

TEST(HttpServerTest, OtherMethodsAre405WithAllow) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS"}) {
    std::string r =
        Exchange(server->port(), absl::StrCat(method, " /healthz HTTP/1.1\r\nHost: h\r\n",
                                              "Content-Length: 0\r\nConnection: close\r\n\r\n"));
    EXPECT_THAT(r, StartsWith("HTTP/1.1 405")) << method;
    EXPECT_THAT(r, HasSubstr("Allow: GET, HEAD\r\n")) << method;
  }
}

TEST(HttpServerTest, ListensOnlyOnItsAddress) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(server->port());
  inet_pton(AF_INET, "127.0.0.2", &to.sin_addr);
  EXPECT_NE(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  EXPECT_EQ(errno, ECONNREFUSED);
  close(fd);
}

TEST(HttpServerTest, RefusesBadAddressesAndBusyPorts) {
  EXPECT_THAT(HttpServer::Start("127.0.0.1", {}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(HttpServer::Start("localhost:0", {}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(HttpServer::Start("127.0.0.1:70000", {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  HttpServer::Options no_threads;
  no_threads.threads = 0;
  EXPECT_THAT(HttpServer::Start("127.0.0.1:0", {}, no_threads),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<HttpServer>> second =
      HttpServer::Start(absl::StrCat("127.0.0.1:", server->port()), {});
  EXPECT_THAT(second, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("Address already in use")))
      << second.status();
  // IPv6 loopback, where the machine has it.
  absl::StatusOr<std::unique_ptr<HttpServer>> v6 = HttpServer::Start("[::1]:0", {});
  if (v6.ok()) {
    EXPECT_GT((*v6)->port(), 0);
  }
}

// The case: connections that send part of a request line and then
// nothing (some drip a byte every 100 ms) must not delay anyone else. The
// figure the issue asks for is 100 ms; the assertion allows 1 s so a loaded
// machine does not fail it, and the measured figure is printed.
TEST(HttpServerTest, HealthzAnswersPromptlyWith200HalfOpenConnections) {
  std::unique_ptr<HttpServer> server = StartOrDie();  // default limits
  ASSERT_NE(server, nullptr);
  constexpr int kHalfOpen = 200;
  std::vector<int> half_open;
  for (int i = 0; i < kHalfOpen; ++i) {
    // 50 from each of four addresses, under the default per-address limit.
    std::string source = absl::StrCat("127.0.0.", 2 + i % 4);
    int fd = Connect(server->port(), source.c_str());
    ASSERT_GE(fd, 0) << "connection " << i << " from " << source;
    ASSERT_TRUE(SendAll(fd, "GET /heal"));
    half_open.push_back(fd);
  }
  ASSERT_TRUE(WaitForConnections(*server, kHalfOpen)) << server->open_connections();

  std::atomic<bool> done{false};
  std::thread dripper([&] {
    while (!done) {
      for (int i = 0; i < 20; ++i) SendAll(half_open[i], "t");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::vector<double> millis;
  for (int i = 0; i < 20; ++i) {
    Clock::time_point start = Clock::now();
    std::string r = Get(server->port(), "/healthz");
    millis.push_back(MillisSince(start));
    EXPECT_THAT(r, StartsWith("HTTP/1.1 200"));
  }
  done = true;
  dripper.join();
  std::sort(millis.begin(), millis.end());
  std::printf(
      "GET /healthz with %d half-open connections: median %.2f ms, max %.2f ms "
      "(target 100 ms)\n",
      kHalfOpen, millis[millis.size() / 2], millis.back());
  EXPECT_LT(millis.back(), 1000.0);
  EXPECT_EQ(server->open_connections(), kHalfOpen);  // none of them was dropped
  for (int fd : half_open) close(fd);
}

TEST(HttpServerTest, PerAddressLimitClosesTheNextConnection) {
  HttpServer::Options options;
  options.max_connections_per_ip = 4;
  std::unique_ptr<HttpServer> server = StartOrDie(options);
  ASSERT_NE(server, nullptr);
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) {
    int fd = Connect(server->port(), "127.0.0.3");
    ASSERT_GE(fd, 0);
    SendAll(fd, "GET /");
    held.push_back(fd);
  }
  ASSERT_TRUE(WaitForConnections(*server, 4));
  int fifth = Connect(server->port(), "127.0.0.3");
  ASSERT_GE(fifth, 0);  // the kernel accepts; the server closes it at once
  SendAll(fifth, "GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  bool closed = false;
  EXPECT_EQ(ReadUntilClose(fifth, 2000, &closed), "");
  EXPECT_TRUE(closed);
  close(fifth);
  // Another address is served.
  EXPECT_THAT(Get(server->port(), "/healthz"), StartsWith("HTTP/1.1 200"));
  EXPECT_TRUE(WaitForConnections(*server, 4));
  // A slot given back can be used again.
  close(held.back());
  held.pop_back();
  ASSERT_TRUE(WaitForConnections(*server, 3));
  EXPECT_THAT(
      Exchange(server->port(), "GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
               "127.0.0.3"),
      StartsWith("HTTP/1.1 200"));
  for (int fd : held) close(fd);
}

TEST(HttpServerTest, RequestTimeoutClosesADrippingClient) {
  HttpServer::Options options;
  options.request_timeout = absl::Milliseconds(500);
  std::unique_ptr<HttpServer> server = StartOrDie(options);
  ASSERT_NE(server, nullptr);
  int fd = Connect(server->port());
  ASSERT_GE(fd, 0);
  Clock::time_point start = Clock::now();
  std::string request = "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: ";
  bool closed = false;
  // A byte every 100 ms: never idle long enough for the idle timeout (5 s).
  for (size_t i = 0; MillisSince(start) < 5000; ++i) {
    if (!SendAll(fd, std::string(1, i < request.size() ? request[i] : 'a'))) break;
    if (!ReadUntilClose(fd, 100, &closed).empty() || closed) break;
  }
  double took = MillisSince(start);
  std::printf("dripping client closed after %.0f ms (request timeout 500 ms)\n", took);
  EXPECT_GE(took, 400.0);
  EXPECT_LT(took, 2000.0);
  EXPECT_TRUE(WaitForConnections(*server, 0));
  close(fd);
}

TEST(HttpServerTest, KeptAliveConnectionGetsAFreshDeadlinePerRequest) {
  HttpServer::Options options;
  options.request_timeout = absl::Milliseconds(600);
  std::unique_ptr<HttpServer> server = StartOrDie(options);
  ASSERT_NE(server, nullptr);
  int fd = Connect(server->port());
  ASSERT_GE(fd, 0);
  // Three requests 400 ms apart: 1.2 s in all on one connection.
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(SendAll(fd, "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"));
    std::string r = ReadUntilClose(fd, 300);
    EXPECT_THAT(r, StartsWith("HTTP/1.1 200")) << i;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  close(fd);
}

TEST(HttpServerTest, OversizedHeadersGet431) {
  std::unique_ptr<HttpServer> server = StartOrDie();  // 8 KiB of headers
  ASSERT_NE(server, nullptr);
  std::string fits =
      Exchange(server->port(),
               absl::StrCat("GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: ", std::string(7000, 'a'),
                            "\r\nConnection: close\r\n\r\n"));
  EXPECT_THAT(fits, StartsWith("HTTP/1.1 200"));
  std::string over =
      Exchange(server->port(),
               absl::StrCat("GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: ", std::string(9000, 'a'),
                            "\r\nConnection: close\r\n\r\n"));
  EXPECT_THAT(over, StartsWith("HTTP/1.1 431"));
  // Past what libmicrohttpd holds at all: it answers 431 itself and closes.
  int fd = Connect(server->port());
  ASSERT_GE(fd, 0);
  SendAll(fd, absl::StrCat("GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: ",
                           std::string(64 * 1024, 'a'), "\r\n\r\n"));
  bool closed = false;
  std::string huge = ReadUntilClose(fd, 3000, &closed);
  EXPECT_TRUE(closed);
  EXPECT_THAT(huge, StartsWith("HTTP/1.1 431"));
  close(fd);
}

TEST(HttpServerTest, BodiesBeyondTheCapGet413) {
  std::unique_ptr<HttpServer> server = StartOrDie();  // no bodies at all
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(Exchange(server->port(),
                       "GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                       "Connection: close\r\n\r\nhello"),
              StartsWith("HTTP/1.1 413"));
  EXPECT_THAT(Exchange(server->port(),
                       "GET /healthz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                       "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
              StartsWith("HTTP/1.1 413"));

  // What the UPnP front-end will use: POST with a capped body.
  HttpServer::Options soap;
  soap.methods = {"GET", "POST"};
  soap.max_body_bytes = 16;
  std::unique_ptr<HttpServer> upnp = StartOrDie(soap);
  ASSERT_NE(upnp, nullptr);
  std::string at_cap = Exchange(upnp->port(),
                                "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 16\r\n"
                                "Connection: close\r\n\r\n0123456789abcdef");
  EXPECT_THAT(at_cap, StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(Body(at_cap), HasSubstr("method=POST\n"));
  EXPECT_THAT(Body(at_cap), HasSubstr("body=0123456789abcdef\n"));
  EXPECT_THAT(Exchange(upnp->port(),
                       "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n"
                       "Connection: close\r\n\r\n0123456789abcdefg"),
              StartsWith("HTTP/1.1 413"));
  EXPECT_THAT(Exchange(upnp->port(),
                       "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n"
                       "Connection: close\r\n\r\n"),
              ::testing::Not(StartsWith("HTTP/1.1 200")));
  // Chunked past the cap: no response can be sent mid-body, so it is closed.
  std::string chunked = Exchange(upnp->port(),
                                 "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                 "Connection: close\r\n\r\n10\r\n0123456789abcdef\r\n"
                                 "5\r\nhello\r\n0\r\n\r\n");
  EXPECT_THAT(chunked, ::testing::Not(HasSubstr("200")));
}

TEST(HttpServerTest, StopsPromptlyWithConnectionsOpen) {
  std::unique_ptr<HttpServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::vector<int> fds;
  for (int i = 0; i < 20; ++i) {
    int fd = Connect(server->port());
    ASSERT_GE(fd, 0);
    SendAll(fd, "GET /");
    fds.push_back(fd);
  }
  ASSERT_TRUE(WaitForConnections(*server, 20));
  Clock::time_point start = Clock::now();
  server.reset();
  EXPECT_LT(MillisSince(start), 1000.0);
  for (int fd : fds) close(fd);
}

}  // namespace
}  // namespace fabric::agent
