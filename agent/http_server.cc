#include "agent/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace fabric::agent {

namespace {

using Clock = std::chrono::steady_clock;

// "1.2.3.4" / "::1" and the port of an IPv4 or IPv6 socket address.
std::pair<std::string, int> Format(const sockaddr* sa) {
  char text[INET6_ADDRSTRLEN] = "";
  if (sa == nullptr) return {"", 0};
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
    return {text, ntohs(sin->sin_port)};
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
    return {text, ntohs(sin6->sin6_port)};
  }
  return {"", 0};
}

// Appends each (key, value) libmicrohttpd holds of one kind to a vector.
MHD_Result Collect(void* cls, MHD_ValueKind, const char* key, size_t key_size, const char* value,
                   size_t value_size) {
  auto* out = static_cast<std::vector<std::pair<std::string, std::string>>*>(cls);
  out->emplace_back(std::string(key, key_size),
                    value == nullptr ? std::string() : std::string(value, value_size));
  return MHD_YES;
}

// One request being received: created on libmicrohttpd's first call (headers
// in), freed when the request completes.
struct Exchange {
  std::string body;
  bool answered = false;  // a refusal was queued before the body
};

}  // namespace

// One TCP connection, from libmicrohttpd's "started" to its "closed"
// notification (the socket is closed only after the latter, so `fd` is valid
// while the connection is in connections_).
struct HttpServer::Connection {
  int fd = -1;
  Clock::time_point deadline;
  bool closing = false;  // shut down by the sweeper already
};

struct HttpServer::Callbacks {
  static MHD_Result OnRequest(void* cls, MHD_Connection* connection, const char* url,
                              const char* method, const char* /*version*/, const char* upload_data,
                              size_t* upload_data_size, void** state) {
    auto* server = static_cast<HttpServer*>(cls);
    const Options& options = server->options_;
    auto* exchange = static_cast<Exchange*>(*state);
    if (exchange == nullptr) {
      // Headers in, body (if any) not yet: refuse early what can be refused.
      exchange = new Exchange;
      *state = exchange;
      if (std::find(options.methods.begin(), options.methods.end(), method) ==
          options.methods.end()) {
        exchange->answered = true;
        return Queue(connection, {405,
                                  "text/plain",
                                  "method not allowed\n",
                                  {{"Allow", absl::StrJoin(options.methods, ", ")}}});
      }
      std::vector<std::pair<std::string, std::string>> fields;
      MHD_get_connection_values_n(connection, MHD_HEADER_KIND, &Collect, &fields);
      MHD_get_connection_values_n(connection, MHD_GET_ARGUMENT_KIND, &Collect, &fields);
      size_t header_bytes = std::strlen(method) + std::strlen(url) + 12;
      for (const auto& [key, value] : fields) header_bytes += key.size() + value.size() + 4;
      if (header_bytes > options.max_header_bytes) {
        exchange->answered = true;
        return Queue(connection, {431, "text/plain", "request headers too large\n"});
      }
      const char* length =
          MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
      uint64_t declared = 0;
      bool chunked = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING) != nullptr;
      if ((length != nullptr &&
           (!absl::SimpleAtoi(length, &declared) || declared > options.max_body_bytes)) ||
          (chunked && options.max_body_bytes == 0)) {
        exchange->answered = true;
        return Queue(connection, {413, "text/plain", "request body too large\n"});
      }
      return MHD_YES;
    }
    if (*upload_data_size > 0) {
      if (exchange->answered) {  // refused already: the body is dropped
        *upload_data_size = 0;
        return MHD_YES;
      }
      // A chunked body past the cap: libmicrohttpd takes no response in the
      // middle of a body, so the connection is closed.
      if (exchange->body.size() + *upload_data_size > options.max_body_bytes) return MHD_NO;
      exchange->body.append(upload_data, *upload_data_size);
      *upload_data_size = 0;
      return MHD_YES;
    }
    if (exchange->answered) return MHD_YES;
    return Queue(connection, server->Dispatch(connection, url, method, std::move(exchange->body)));
  }

  static void OnRequestDone(void* cls, MHD_Connection* connection, void** state,
                            MHD_RequestTerminationCode) {
    delete static_cast<Exchange*>(*state);
    *state = nullptr;
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (info != nullptr && info->socket_context != nullptr) {
      static_cast<HttpServer*>(cls)->RestartDeadline(
          static_cast<Connection*>(info->socket_context));
    }
  }

  static void OnConnection(void* cls, MHD_Connection* connection, void** socket_context,
                           MHD_ConnectionNotificationCode what) {
    auto* server = static_cast<HttpServer*>(cls);
    if (what == MHD_CONNECTION_NOTIFY_STARTED) {
      auto* c = new Connection;
      const MHD_ConnectionInfo* info =
          MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      c->fd = info == nullptr ? -1 : info->connect_fd;
      *socket_context = c;
      std::lock_guard<std::mutex> lock(server->mu_);
      c->deadline = Clock::now() + absl::ToChronoNanoseconds(server->options_.request_timeout);
      // Every deadline is now + the same timeout, so a new one is never the
      // earliest unless it is the only one.
      if (server->connections_.empty()) server->wake_.notify_one();
      server->connections_.insert(c);
      return;
    }
    auto* c = static_cast<Connection*>(*socket_context);
    if (c == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(server->mu_);
      server->connections_.erase(c);
    }
    delete c;
    *socket_context = nullptr;
  }

  // libmicrohttpd's messages: kept while starting (they say why it could not
  // listen); afterwards dropped, since clients can cause them at will.
  static void OnLog(void* cls, const char* format, va_list args) {
    auto* server = static_cast<HttpServer*>(cls);
    std::lock_guard<std::mutex> lock(server->mu_);
    if (!server->starting_) return;
    char text[512];
    std::vsnprintf(text, sizeof(text), format, args);
    server->start_error_ = std::string(absl::StripTrailingAsciiWhitespace(text));
  }

  static MHD_Result Queue(MHD_Connection* connection, const Response& r) {
    MHD_Response* response = MHD_create_response_from_buffer(
        r.body.size(), const_cast<char*>(r.body.data()), MHD_RESPMEM_MUST_COPY);
    if (response == nullptr) return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type.c_str());
    for (const auto& [name, value] : r.headers) {
      MHD_add_response_header(response, name.c_str(), value.c_str());
    }
    MHD_Result ok = MHD_queue_response(connection, r.code, response);
    MHD_destroy_response(response);
    return ok;
  }
};

std::optional<absl::string_view> HttpServer::Request::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return absl::string_view(value);
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address, std::map<std::string, Handler> handlers) {
  return Start(address, std::move(handlers), Options());
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address, std::map<std::string, Handler> handlers, Options options) {
  size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP address \"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  sockaddr_in sin{};
  sockaddr_in6 sin6{};
  const sockaddr* sa;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  if (inet_pton(AF_INET, host.c_str(), &sin.sin_addr) == 1) {
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sa = reinterpret_cast<const sockaddr*>(&sin);
  } else if (inet_pton(AF_INET6, host.c_str(), &sin6.sin6_addr) == 1) {
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    sa = reinterpret_cast<const sockaddr*>(&sin6);
    flags |= MHD_USE_IPv6;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP address \"", address, "\": host must be an IP address"));
  }
  if (options.threads == 0 || options.max_connections == 0 ||
      options.request_timeout <= absl::ZeroDuration() || options.max_header_bytes == 0 ||
      options.listen_backlog <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP server on ", address,
                     ": threads, max_connections, request_timeout, max_header_bytes and "
                     "listen_backlog must be positive"));
  }
  unsigned idle_seconds = static_cast<unsigned>(std::max<int64_t>(
      1, absl::ToInt64Seconds(absl::Ceil(options.idle_timeout, absl::Seconds(1)))));
  // The request line and headers live in libmicrohttpd's per-connection
  // pool, with its bookkeeping and the response's headers: room for twice
  // the cap, so the exact cap is the one checked in OnRequest.
  size_t pool_bytes = 2 * options.max_header_bytes + 4096;

  // libmicrohttpd sets SO_REUSEADDR by itself; MHD_OPTION_LISTENING_ADDRESS_REUSE
  // would add SO_REUSEPORT and let a second agent share the port.
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(handlers), options));
  server->daemon_ = MHD_start_daemon(
      flags, static_cast<uint16_t>(port), nullptr, nullptr, &Callbacks::OnRequest, server.get(),
      MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_LISTEN_BACKLOG_SIZE,
      static_cast<unsigned>(options.listen_backlog), MHD_OPTION_THREAD_POOL_SIZE, options.threads,
      MHD_OPTION_CONNECTION_LIMIT, options.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      options.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT, idle_seconds,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool_bytes, MHD_OPTION_NOTIFY_COMPLETED,
      &Callbacks::OnRequestDone, server.get(), MHD_OPTION_NOTIFY_CONNECTION,
      &Callbacks::OnConnection, server.get(), MHD_OPTION_EXTERNAL_LOGGER, &Callbacks::OnLog,
      server.get(), MHD_OPTION_END);
  std::string error;
  {
    std::lock_guard<std::mutex> lock(server->mu_);
    server->starting_ = false;
    error = std::move(server->start_error_);
  }
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", address, ": ",
                     error.empty() ? "libmicrohttpd would not start" : error));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info == nullptr ? port : info->port;
  return server;
}

HttpServer::HttpServer(std::map<std::string, Handler> handlers, Options options)
    : handlers_(std::move(handlers)), options_(std::move(options)) {
  sweeper_ = std::thread([this] { SweepExpired(); });
}

HttpServer::~HttpServer() {
  // Closes every connection (each "closed" notification leaves
  // connections_) and waits for running handlers.
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  sweeper_.join();
}

HttpServer::Response HttpServer::Dispatch(MHD_Connection* connection, const char* url,
                                          const char* method, std::string body) const {
  auto it = handlers_.find(url);
  if (it == handlers_.end()) return {404, "text/plain", "not found\n"};
  Request request;
  request.method = method;
  request.path = url;
  request.body = std::move(body);
  MHD_get_connection_values_n(connection, MHD_GET_ARGUMENT_KIND, &Collect, &request.query);
  MHD_get_connection_values_n(connection, MHD_HEADER_KIND, &Collect, &request.headers);
  const MHD_ConnectionInfo* peer =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  std::tie(request.peer_address, request.peer_port) =
      Format(peer == nullptr ? nullptr : peer->client_addr);
  const MHD_ConnectionInfo* fd =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  if (fd != nullptr &&
      getsockname(fd->connect_fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
    std::tie(request.local_address, request.local_port) =
        Format(reinterpret_cast<sockaddr*>(&local));
  }
  return it->second(request);
}

size_t HttpServer::open_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connections_.size();
}

void HttpServer::RestartDeadline(Connection* connection) {
  std::lock_guard<std::mutex> lock(mu_);
  connection->deadline = Clock::now() + absl::ToChronoNanoseconds(options_.request_timeout);
}

void HttpServer::SweepExpired() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    Clock::time_point now = Clock::now();
    Clock::time_point next = Clock::time_point::max();
    for (Connection* c : connections_) {
      if (c->closing) continue;
      if (c->deadline <= now) {
        // libmicrohttpd sees end of file and closes the connection itself,
        // on its own thread; the socket stays open until then.
        shutdown(c->fd, SHUT_RDWR);
        c->closing = true;
      } else {
        next = std::min(next, c->deadline);
      }
    }
    if (next == Clock::time_point::max()) {
      wake_.wait(lock);
    } else {
      wake_.wait_until(lock, next);
    }
  }
}

}  // namespace fabric::agent
