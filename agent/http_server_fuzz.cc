// Fuzz target for the agent's HTTP front (agent/http_server.h over
// libmicrohttpd), as a client on the network sees it: each input is sent as
// the raw bytes of one connection to a server on 127.0.0.1 (GET and POST
// with a 4 KiB body cap, as the UPnP front-end will use it), and the server
// must answer or close, never crash, and keep serving: every 64 inputs a
// well-formed GET must still get its 200.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "agent/http_server.h"

namespace {

using fabric::agent::HttpServer;

HttpServer& Server() {
  static HttpServer* server = [] {
    HttpServer::Options o;
    o.methods = {"GET", "HEAD", "POST"};
    o.max_body_bytes = 4096;
    o.request_timeout = absl::Seconds(2);
    o.idle_timeout = absl::Seconds(1);
    // One client address sends everything here: the per-address cap would
    // refuse the liveness check, not find a bug.
    o.max_connections_per_ip = 0;
    auto s = HttpServer::Start(
        "127.0.0.1:0",
        {{"/healthz",
          [](const HttpServer::Request&) { return HttpServer::Response{200, "text/plain", "ok\n"}; }},
         {"/echo",
          [](const HttpServer::Request& r) {
            return HttpServer::Response{200, "text/plain",
                                        r.method + " " + r.path + " " + r.body};
          }}},
        o);
    if (!s.ok()) {
      std::fprintf(stderr, "cannot start the server: %s\n", std::string(s.status().message()).c_str());
      std::abort();
    }
    return s->release();
  }();
  return *server;
}

// Sends `bytes` on a fresh connection, half-closes, and reads the answer
// (until 10 ms pass in silence). Returns it.
std::string Exchange(const std::string& bytes, int quiet_ms = 10) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(Server().port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, quiet_ms) != 1) break;
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      if (out.size() > (1 << 20)) break;
    }
  }
  close(fd);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int runs = 0;
  if (size > 16384) return 0;
#ifndef FABRIC_LIBFUZZER
  // Plain builds feed a generic corpus of tens of thousands of inputs: a
  // smoke run of the first 1,500 is what one connection each affords.
  if (runs >= 1000) return 0;
#endif
  Exchange(std::string(reinterpret_cast<const char*>(data), size));
  if (++runs % 64 == 0) {
    std::string r =
        Exchange("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2000);
    if (r.rfind("HTTP/1.1 200", 0) != 0) {
      std::fprintf(stderr, "the server stopped serving: %s\n", r.c_str());
      std::abort();
    }
  }
  return 0;
}
