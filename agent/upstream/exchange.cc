#include "agent/upstream/exchange.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::agent::upstream {
namespace {

class UdpTransport : public Transport {
 public:
  UdpTransport(int fd, const Ipv4& gateway, uint16_t port, const Ipv4& local)
      : fd_(fd), gateway_(gateway), port_(port), local_(local) {}
  ~UdpTransport() override { close(fd_); }

  absl::Status Send(const std::vector<uint8_t>& d) override {
    if (send(fd_, d.data(), d.size(), 0) < 0) return Errno("send to");
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<std::vector<uint8_t>>> Receive(absl::Duration timeout) override {
    int ms = static_cast<int>(std::ceil(absl::ToDoubleMilliseconds(timeout)));
    pollfd p{fd_, POLLIN, 0};
    int n = poll(&p, 1, ms < 0 ? 0 : ms);
    if (n < 0) {
      if (errno == EINTR) return std::optional<std::vector<uint8_t>>();
      return Errno("poll");
    }
    if (n == 0) return std::optional<std::vector<uint8_t>>();
    std::vector<uint8_t> buf(1500);
    ssize_t r = recv(fd_, buf.data(), buf.size(), MSG_TRUNC);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) return std::optional<std::vector<uint8_t>>();
      return Errno("receive from");
    }
    // A datagram longer than the buffer is no valid reply: keep it too
    // long so the parser refuses it.
    buf.resize(static_cast<size_t>(r) > buf.size() ? buf.size() : static_cast<size_t>(r));
    if (static_cast<size_t>(r) > 1500) buf.assign(kPcpMaxSize + 4, 0);
    return std::optional<std::vector<uint8_t>>(std::move(buf));
  }

  Ipv4 gateway() const override { return gateway_; }
  Ipv4 local_ip() const override { return local_; }

 private:
  absl::Status Errno(const char* what) const {
    int e = errno;
    std::string where = absl::StrCat(Ipv4String(gateway_), ":", port_);
    if (e == ECONNREFUSED) {
      return absl::UnavailableError(absl::StrCat(
          where, " refuses PCP/NAT-PMP (ICMP port unreachable): nothing listens there"));
    }
    if (e == ENETUNREACH || e == EHOSTUNREACH) {
      return absl::UnavailableError(absl::StrCat("cannot reach ", where, ": ", strerror(e)));
    }
    return absl::UnavailableError(absl::StrCat(what, " ", where, ": ", strerror(e)));
  }
  int fd_;
  Ipv4 gateway_;
  uint16_t port_;
  Ipv4 local_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> OpenUdpTransport(const Ipv4& gateway, uint16_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  std::memcpy(&to.sin_addr, gateway.data(), 4);
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot reach gateway ", Ipv4String(gateway), ":",
                                               port, ": ", strerror(e),
                                               " (is there a route to it?)"));
  }
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  Ipv4 l{};
  std::memcpy(l.data(), &local.sin_addr, 4);
  return std::unique_ptr<Transport>(new UdpTransport(fd, gateway, port, l));
}

absl::Status Exchange(Transport& t, const NowFn& now, const Schedule& schedule,
                      const std::string& what, const std::vector<uint8_t>& request,
                      const std::function<ReplyCheck(const std::vector<uint8_t>&)>& check,
                      int* sends) {
  const absl::Time start = now();
  const absl::Time deadline = start + schedule.budget;
  absl::Duration wait = schedule.initial;
  int sent = 0;
  if (sends) *sends = 0;
  while (now() < deadline) {
    if (absl::Status s = t.Send(request); !s.ok()) return s;
    ++sent;
    if (sends) *sends = sent;
    const absl::Time resend = std::min(now() + wait, deadline);
    while (true) {
      absl::Time n = now();
      if (n >= resend) break;
      absl::StatusOr<std::optional<std::vector<uint8_t>>> got = t.Receive(resend - n);
      if (!got.ok()) return got.status();
      if (!got->has_value()) continue;
      switch (check(**got)) {
        case ReplyCheck::kOk: return absl::OkStatus();
        case ReplyCheck::kUnsupportedVersion:
          return absl::UnimplementedError(absl::StrCat(
              "gateway ", Ipv4String(t.gateway()), " answers ", what, ": unsupported version"));
        case ReplyCheck::kNotOurs:
        case ReplyCheck::kMalformed: break;  // not a reply to this request
      }
    }
    wait *= 2;
  }
  return absl::UnavailableError(absl::StrCat(
      "no answer from gateway ", Ipv4String(t.gateway()), " to ", what, " after ", sent,
      sent == 1 ? " try" : " tries", " in ", absl::FormatDuration(schedule.budget)));
}

}  // namespace fabric::agent::upstream
