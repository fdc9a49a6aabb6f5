// HttpServer: a minimal HTTP/1.0 server for /metrics and /healthz on a TCP
// address. One thread accepts and answers requests one at a time (scrapes
// are rare and small). Handlers run on that thread.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace fabric::agent {

class HttpServer {
 public:
  // (status code, content type, body).
  struct Response {
    int code = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  // Listens on "host:port" (port 0 picks one). kInvalidArgument for a bad
  // address, kUnavailable when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& address, std::map<std::string, Handler> handlers);
  ~HttpServer();

  int port() const { return port_; }

 private:
  HttpServer(int fd, int port, std::map<std::string, Handler> handlers);
  void Serve();

  int fd_;
  int port_;
  std::map<std::string, Handler> handlers_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace fabric::agent
