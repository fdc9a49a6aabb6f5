#include "agent/proxy/proxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/proxy/datagram6.h"
#include "agent/proxy/internal/loop.h"

namespace fabric::agent::proxy {
namespace {

std::string Range(uint16_t first, uint16_t count) {
  if (count <= 1) return absl::StrCat(first);
  return absl::StrCat(first, "-", first + count - 1);
}

std::string Endpoint(nat::Protocol protocol, const nat::IpAddress& ip, uint16_t port) {
  return absl::StrCat(nat::ProtocolName(protocol), " [", ip.ToString(), "]:", port);
}

bool IsV4Mapped(const nat::IpAddress& ip) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return !ip.is_v4() && std::memcmp(ip.bytes(), kPrefix, 12) == 0;
}

absl::Status ValidateSpec(const ProxySpec& spec, const ProxyOptions& options) {
  std::string what = spec.ToString();
  if (spec.protocol != nat::Protocol::kTcp && spec.protocol != nat::Protocol::kUdp) {
    return absl::InvalidArgumentError(
        absl::StrCat("proxy ", what, ": only tcp and udp can be proxied"));
  }
  if (spec.listen_ip.is_v4() || IsV4Mapped(spec.listen_ip)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "proxy ", what, ": the listening address must be IPv6 (IPv4 forwards are kernel DNAT)"));
  }
  if (!spec.target_ip.is_v4()) {
    return absl::InvalidArgumentError(
        absl::StrCat("proxy ", what, ": the target must be IPv4 (IPv6 targets are kernel DNAT)"));
  }
  if (spec.listen_port == 0 || spec.target_port == 0 || spec.port_count == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("proxy ", what, ": ports and the port count must be at least 1"));
  }
  if (spec.listen_port + spec.port_count - 1 > 65535 ||
      spec.target_port + spec.port_count - 1 > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("proxy ", what, ": the range passes 65535"));
  }
  if (spec.port_count > options.max_ports_per_forward) {
    return absl::InvalidArgumentError(absl::StrCat("proxy ", what, ": ", spec.port_count,
                                                   " ports, at most ",
                                                   options.max_ports_per_forward, " per forward"));
  }
  return absl::OkStatus();
}

// The Status for a failed bind/listen of `endpoint` with errno `e`.
absl::Status BindError(const std::string& endpoint, const char* call, int e,
                       const std::string& holder) {
  std::string cause = absl::StrCat(strerror(e), " (", call, ")");
  switch (e) {
    case EADDRINUSE:
      if (!holder.empty()) {
        return absl::AlreadyExistsError(
            absl::StrCat(endpoint, " is already served by this proxy's ", holder));
      }
      return absl::AlreadyExistsError(absl::StrCat(
          endpoint, " is in use by another socket (EADDRINUSE); free the port or pick another"));
    case EADDRNOTAVAIL:
      return absl::FailedPreconditionError(
          absl::StrCat(endpoint,
                       ": the address is not one of this host's (EADDRNOTAVAIL); add it to an "
                       "interface or listen on [::]"));
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(
          absl::StrCat(endpoint, ": ", cause, "; ports below 1024 need CAP_NET_BIND_SERVICE"));
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      return absl::ResourceExhaustedError(
          absl::StrCat(endpoint, ": ", cause, "; raise the open-file limit"));
    default:
      return absl::InternalError(absl::StrCat(endpoint, ": ", cause));
  }
}

}  // namespace

std::string ProxySpec::ToString() const {
  return absl::StrCat(nat::ProtocolName(protocol), " [", listen_ip.ToString(),
                      "]:", Range(listen_port, port_count), " -> ", target_ip.ToString(), ":",
                      Range(target_port, port_count));
}

std::string ForwardKey::ToString() const { return Endpoint(protocol, listen_ip, listen_port); }

absl::Status RaiseOpenFileLimit(uint64_t want) {
  rlimit l{};
  if (getrlimit(RLIMIT_NOFILE, &l) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", strerror(errno)));
  }
  if (l.rlim_cur >= want) return absl::OkStatus();
  if (l.rlim_max < want) {
    // As far as the hard limit allows, and say so.
    if (l.rlim_cur < l.rlim_max) {
      l.rlim_cur = l.rlim_max;
      setrlimit(RLIMIT_NOFILE, &l);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("open-file limit: ", want, " wanted, raised to the hard limit ", l.rlim_max,
                     " (raise LimitNOFILE)"));
  }
  l.rlim_cur = want;
  if (setrlimit(RLIMIT_NOFILE, &l) != 0) {
    return absl::InternalError(absl::StrCat("setrlimit(RLIMIT_NOFILE): ", strerror(errno)));
  }
  return absl::OkStatus();
}

Listener::~Listener() {
  for (int fd : fds_) close(fd);
}

Proxy::Proxy(ProxyOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Proxy>> Proxy::Start(ProxyOptions options) {
  if (options.max_connections_per_forward <= 0 || options.max_connections_per_client <= 0 ||
      options.max_connections <= 0 || options.max_udp_flows_per_forward <= 0 ||
      options.max_udp_flows_per_client <= 0 || options.max_udp_flows <= 0 ||
      options.pipe_size <= 0 || options.max_ports_per_forward <= 0 ||
      options.udp_idle_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("proxy: every limit, size and timeout must be positive");
  }
  std::unique_ptr<Proxy> proxy(new Proxy(options));
  absl::StatusOr<std::unique_ptr<internal::Loop>> loop = internal::Loop::Create(options);
  if (!loop.ok()) return loop.status();
  proxy->loop_ = std::move(*loop);
  internal::Loop* raw = proxy->loop_.get();
  proxy->thread_ = std::thread([raw] { raw->Run(); });
  return proxy;
}

Proxy::~Proxy() {
  loop_->Stop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();
}

absl::StatusOr<std::unique_ptr<Listener>> Proxy::Bind(const ProxySpec& spec) {
  if (absl::Status s = ValidateSpec(spec, options_); !s.ok()) return s;
  if (std::optional<std::vector<int>> fds = loop_->DupServed(spec)) {
    return std::unique_ptr<Listener>(new Listener(spec, std::move(*fds)));
  }
  const bool tcp = spec.protocol == nat::Protocol::kTcp;
  // Owns what is open so far: an error return closes it all.
  std::unique_ptr<Listener> listener(new Listener(spec, {}));
  for (int i = 0; i < spec.port_count; ++i) {
    const uint16_t port = static_cast<uint16_t>(spec.listen_port + i);
    const std::string endpoint = Endpoint(spec.protocol, spec.listen_ip, port);
    int fd = socket(AF_INET6, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return BindError(endpoint, "socket", errno, "");
    listener->fds_.push_back(fd);
    int on = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    if (tcp) {
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    } else if (absl::Status s = EnablePacketInfo6(fd); !s.ok()) {
      return absl::InternalError(absl::StrCat(endpoint, ": ", s.message()));
    }
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_port = htons(port);
    std::memcpy(&addr.sin6_addr, spec.listen_ip.bytes(), 16);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      int e = errno;
      return BindError(endpoint, "bind", e,
                       loop_->DescribeHolder(spec.protocol, spec.listen_ip, port));
    }
    if (tcp && listen(fd, SOMAXCONN) != 0) {
      int e = errno;
      return BindError(endpoint, "listen", e,
                       loop_->DescribeHolder(spec.protocol, spec.listen_ip, port));
    }
  }
  return listener;
}

void Proxy::Serve(std::unique_ptr<Listener> listener) { loop_->Serve(std::move(listener)); }

bool Proxy::Close(const ForwardKey& key) { return loop_->Close(key); }

std::vector<ForwardKey> Proxy::Forwards() const { return loop_->Keys(); }

ProxyCounters Proxy::counters() const { return loop_->totals().Snapshot(); }

std::optional<ProxyCounters> Proxy::ForwardCounters(const ForwardKey& key) const {
  return loop_->ForwardCounters(key);
}

}  // namespace fabric::agent::proxy
