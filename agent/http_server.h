// HttpServer: the agent's HTTP front door, on libmicrohttpd (Debian's
// libmicrohttpd12). Today it serves /metrics and /healthz (agent.cc); the
// UPnP front-end (SOAP over HTTP on LAN addresses) and a status page are to
// use it next, which is why requests carry headers, a body and the addresses.
//
// Hostile or broken clients cannot hold it up: connections are served by an
// epoll event loop on a small thread pool (an idle or dripping connection
// costs a file descriptor, not a thread), connections are capped in total and
// per client address, each request must arrive whole and be answered within
// `request_timeout` (libmicrohttpd's own timeout only bounds idle periods, so
// a sweeper enforces the deadline), and headers and bodies are capped.
//
// Threading: handlers run on the server's worker threads, several at once
// (Options::threads); they must be thread-safe and should not block long. The
// destructor stops the server and waits for running handlers.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct MHD_Connection;
struct MHD_Daemon;

namespace fabric::agent {

class HttpServer {
 public:
  // One request, whole: libmicrohttpd has parsed the request line and
  // headers, and the body (at most Options::max_body_bytes) has arrived.
  struct Request {
    std::string method;  // "GET", "HEAD", "POST", ... as sent
    std::string path;    // percent-decoded, without the query
    // Query arguments in order, percent-decoded ("?a=1&b" gives {a,1},{b,""}).
    std::vector<std::pair<std::string, std::string>> query;
    // Request headers in order, names as sent.
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::string peer_address;  // the client's IP address, "127.0.0.1", "::1"
    int peer_port = 0;
    std::string local_address;  // the address the request came in on
    int local_port = 0;

    // The first header named `name` (case-insensitive), if any.
    std::optional<absl::string_view> Header(absl::string_view name) const;
  };

  // Status code, content type, body, and any extra response headers.
  // HEAD requests get the same headers without the body.
  struct Response {
    int code = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
  };
  using Handler = std::function<Response(const Request&)>;

  // Limits. The defaults suit a metrics/health endpoint scraped now and then.
  struct Options {
    // Methods any path accepts; others get 405 with an Allow header. A
    // handler sees request.method and may refuse a method it does not take.
    std::vector<std::string> methods = {"GET", "HEAD"};
    // Request line plus headers, in bytes; beyond it 431 (or 414 for a
    // request line libmicrohttpd cannot hold) and the connection closes.
    size_t max_header_bytes = 8 * 1024;
    // Request body, in bytes; a larger declared length gets 413, a larger
    // chunked body closes the connection. 0: no request may have a body.
    size_t max_body_bytes = 0;
    // Open connections in all; beyond it new ones are closed at once.
    unsigned max_connections = 512;
    // Open connections from one client address; beyond it new ones from
    // that address are closed at once. 0: no per-address limit.
    unsigned max_connections_per_ip = 64;
    // A connection must deliver each request whole and have its response
    // sent within this long of its start (or of the previous response, on a
    // kept-alive connection); then it is closed.
    absl::Duration request_timeout = absl::Seconds(10);
    // A connection with no traffic for this long is closed (whole seconds,
    // at least one: libmicrohttpd's resolution).
    absl::Duration idle_timeout = absl::Seconds(5);
    // Worker threads, each with its own epoll loop and share of connections.
    unsigned threads = 2;
    // Pending connections the kernel queues before they are accepted.
    int listen_backlog = 128;
  };

  // Listens on "host:port" (an IP address; port 0 picks one) and serves
  // `handlers` by exact path; other paths get 404. kInvalidArgument for a bad
  // address or options, kUnavailable when the address cannot be listened on.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& address,
                                                           std::map<std::string, Handler> handlers,
                                                           Options options);
  // The same with the default Options.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& address,
                                                           std::map<std::string, Handler> handlers);
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (the one picked, when asked for port 0).
  int port() const { return port_; }
  // Connections open now (for tests and the status page).
  size_t open_connections() const;

 private:
  struct Connection;  // one TCP connection's deadline, in connections_
  struct Callbacks;   // libmicrohttpd's callbacks (http_server.cc)
  friend struct Callbacks;

  HttpServer(std::map<std::string, Handler> handlers, Options options);

  // Builds the request and runs its handler.
  Response Dispatch(MHD_Connection* connection, const char* url, const char* method,
                    std::string body) const;
  // Sets the deadline of the connection `socket_context` names to now +
  // request_timeout.
  void RestartDeadline(Connection* connection);
  // Closes (shutdown(2)) connections past their deadline until stopped.
  void SweepExpired();

  const std::map<std::string, Handler> handlers_;
  const Options options_;
  int port_ = 0;
  MHD_Daemon* daemon_ = nullptr;

  mutable std::mutex mu_;
  std::condition_variable wake_;       // guarded by mu_
  std::set<Connection*> connections_;  // guarded by mu_
  bool stopping_ = false;              // guarded by mu_
  bool starting_ = true;               // guarded by mu_
  std::string start_error_;            // guarded by mu_
  std::thread sweeper_;
};

}  // namespace fabric::agent
