// The IPv6-to-IPv4 proxy (agent/proxy) against socat doing the same job
// (TCP6-LISTEN,fork -> TCP4), in one topology of veths:
//   client  eth0 2001:db8:1::10/64, 10.0.0.10/24 (v4 only for "direct")
//    |
//   router  lan0 2001:db8:1::1/64, 10.0.0.1/24; wan0 192.168.1.1/24
//           (the Proxy, in this process, or socat; forwards IPv4 for "direct")
//    |
//   server  eth0 192.168.1.100/24: a sink and an echo server (threads here)
// Prints: TCP throughput (one connection, --bytes), request/response round
// trips of 64 bytes (p50/p99) through the proxy, through socat and routed
// directly over IPv4, and the RSS of this process holding 100 forwards with
// 1,000 open connections through them (socat's: its processes' Pss).
// Figures only; nothing here is a test.
//
//   proxy_bench [--bytes N] [--rtts N] [--forwards N] [--connections N]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/proxy/proxy.h"
#include "testing/netns.h"

namespace fabric {
namespace {

using Clock = std::chrono::steady_clock;
using agent::proxy::Proxy;
using agent::proxy::ProxySpec;

constexpr uint16_t kSinkPort = 9000, kEchoPort = 9001, kHoldPort = 9002;

int SocketIn(const testing::Netns& ns, int family, int type) {
  auto in = testing::ScopedNetns::Enter(ns);
  if (!in.ok()) return -1;
  return socket(family, type | SOCK_CLOEXEC, 0);
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "proxy_bench: %s\n", what.c_str());
  std::exit(1);
}

void NoDelay(int fd) {
  int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

// A listening IPv4 socket in `ns` on `port`.
int Listen4(const testing::Netns& ns, uint16_t port, int backlog) {
  int fd = SocketIn(ns, AF_INET, SOCK_STREAM);
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, backlog) != 0) {
    Die(absl::StrCat("listen on ", port, ": ", strerror(errno)));
  }
  return fd;
}

// Sink (reads to EOF, then closes) and echo servers, a thread per connection.
class Servers {
 public:
  explicit Servers(const testing::Netns& ns) {
    sink_ = Listen4(ns, kSinkPort, 64);
    echo_ = Listen4(ns, kEchoPort, 64);
    threads_.emplace_back([this] { Accept(sink_, false); });
    threads_.emplace_back([this] { Accept(echo_, true); });
  }
  ~Servers() {
    shutdown(sink_, SHUT_RDWR);
    shutdown(echo_, SHUT_RDWR);
    for (auto& t : threads_) t.join();
    close(sink_);
    close(echo_);
  }

 private:
  void Accept(int lfd, bool echo) {
    for (;;) {
      int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      NoDelay(c);
      std::thread([c, echo] {
        std::vector<char> buf(1 << 20);
        for (;;) {
          ssize_t n = read(c, buf.data(), buf.size());
          if (n <= 0) break;
          if (echo && send(c, buf.data(), n, MSG_NOSIGNAL) != n) break;
        }
        close(c);
      }).detach();
    }
  }
  int sink_, echo_;
  std::vector<std::thread> threads_;
};

int Connect(const testing::Netns& client, const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos;
  int fd = SocketIn(client, v6 ? AF_INET6 : AF_INET, SOCK_STREAM);
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, host.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &a->sin_addr);
    len = sizeof(*a);
  }
  for (int i = 0; i < 100; ++i) {  // socat may still be starting
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) return fd;
    close(fd);
    usleep(20000);
    fd = SocketIn(client, v6 ? AF_INET6 : AF_INET, SOCK_STREAM);
  }
  Die(absl::StrCat("connect to ", host, ":", port, ": ", strerror(errno)));
}

// MB/s of `bytes` sent one way over one connection, until the far side's
// close comes back (so everything reached the sink).
double Throughput(const testing::Netns& client, const std::string& host, uint16_t port,
                  uint64_t bytes) {
  int fd = Connect(client, host, port);
  std::vector<char> buf(1 << 20, 'x');
  auto start = Clock::now();
  uint64_t left = bytes;
  while (left > 0) {
    ssize_t n = send(fd, buf.data(), std::min<uint64_t>(left, buf.size()), MSG_NOSIGNAL);
    if (n <= 0) Die(absl::StrCat("send: ", strerror(errno)));
    left -= n;
  }
  shutdown(fd, SHUT_WR);
  char c;
  while (read(fd, &c, 1) > 0) {
  }
  double s = std::chrono::duration<double>(Clock::now() - start).count();
  close(fd);
  return bytes / s / 1e6;
}

struct Rtt {
  double p50_us, p99_us;
};

// Round trips of 64 bytes over one connection to the echo server.
Rtt RoundTrips(const testing::Netns& client, const std::string& host, uint16_t port, int n) {
  int fd = Connect(client, host, port);
  NoDelay(fd);
  char msg[64] = {}, back[64];
  std::vector<double> us;
  us.reserve(n);
  for (int i = 0; i < n + 500; ++i) {
    auto t0 = Clock::now();
    if (send(fd, msg, sizeof(msg), MSG_NOSIGNAL) != sizeof(msg)) Die("echo send");
    size_t got = 0;
    while (got < sizeof(back)) {
      ssize_t r = read(fd, back + got, sizeof(back) - got);
      if (r <= 0) Die("echo read");
      got += r;
    }
    if (i >= 500)
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  close(fd);
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

// A /proc/<pid>/status or smaps_rollup field in kB.
long ProcKb(const std::string& path, const std::string& field) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + field.size());
  }
  return 0;
}

long SelfRssKb() { return ProcKb("/proc/self/status", "VmRSS:"); }

// Total Pss (kB) of the processes in `ns` whose command is socat.
long SocatPssKb(const testing::Netns& ns) {
  absl::StatusOr<std::string> pids = ns.Exec("ip netns pids " + ns.name());
  if (!pids.ok()) return 0;
  long total = 0;
  for (char* p = std::strtok(pids->data(), "\n"); p != nullptr; p = std::strtok(nullptr, "\n")) {
    std::ifstream comm(absl::StrCat("/proc/", p, "/comm"));
    std::string name;
    std::getline(comm, name);
    if (name == "socat") total += ProcKb(absl::StrCat("/proc/", p, "/smaps_rollup"), "Pss:");
  }
  return total;
}

int CountSocat(const testing::Netns& ns) {
  absl::StatusOr<std::string> out = ns.Exec("for p in $(ip netns pids " + ns.name() +
                                            "); do cat /proc/$p/comm; done | grep -c '^socat$' "
                                            "|| true");
  int n = 0;
  if (out.ok()) (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(*out), &n);
  return n;
}

ProxySpec Spec(uint16_t port, uint16_t target_port) {
  ProxySpec s;
  s.protocol = nat::Protocol::kTcp;
  s.listen_ip = nat::IpAddress::AnyOf(nat::Family::kIPv6);
  s.listen_port = port;
  s.target_ip = *nat::IpAddress::Parse("192.168.1.100");
  s.target_port = target_port;
  s.name = absl::StrCat("bench-", port);
  return s;
}

void Serve(Proxy& proxy, const ProxySpec& spec) {
  absl::StatusOr<std::unique_ptr<agent::proxy::Listener>> l = proxy.Bind(spec);
  if (!l.ok()) Die(std::string(l.status().message()));
  proxy.Serve(std::move(*l));
}

void SpawnSocat(testing::Netns& router, uint16_t port, uint16_t target_port) {
  absl::StatusOr<pid_t> pid =
      router.Spawn(absl::StrCat("exec socat TCP6-LISTEN:", port,
                                ",fork,reuseaddr,ipv6only=1 TCP4:192.168.1.100:", target_port));
  if (!pid.ok()) Die(std::string(pid.status().message()));
}

// Opens `n` connections spread over ports [first, first + forwards) and
// waits until `ready` says they are all through.
std::vector<int> OpenMany(const testing::Netns& client, uint16_t first, int forwards, int n) {
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    fds.push_back(Connect(client, "2001:db8:1::1", first + i % forwards));
  }
  return fds;
}

int Run(uint64_t bytes, int rtts, int forwards, int connections) {
  testing::Netns::SweepStale();
  auto must = [](auto s) {
    if (!s.ok()) Die(std::string(s.status().message()));
    return std::move(*s);
  };
  std::unique_ptr<testing::Netns> client = must(testing::Netns::Create("pbcli"));
  std::unique_ptr<testing::Netns> router = must(testing::Netns::Create("pbrtr"));
  std::unique_ptr<testing::Netns> server = must(testing::Netns::Create("pbsrv"));
  absl::Status s = testing::Link(*client, "eth0", "2001:db8:1::10/64 10.0.0.10/24", *router, "lan0",
                                 "2001:db8:1::1/64 10.0.0.1/24");
  if (s.ok()) {
    s = testing::Link(*router, "wan0", "192.168.1.1/24", *server, "eth0", "192.168.1.100/24");
  }
  if (s.ok()) s = router->Exec("sysctl -qw net.ipv4.ip_forward=1").status();
  if (s.ok()) s = client->Exec("ip route add default via 10.0.0.1").status();
  if (s.ok()) s = server->Exec("ip route add default via 192.168.1.1").status();
  if (!s.ok()) Die(std::string(s.message()));
  if (absl::Status l = agent::proxy::RaiseOpenFileLimit(8 * connections + 4096); !l.ok()) {
    Die(std::string(l.message()));
  }

  std::printf("IPv6 -> IPv4 TCP proxy, client -> router -> server over veths\n");
  // Memory first, from a clean process: `forwards` forwards, `connections`
  // open connections through them to a target that never accepts (the
  // kernel's accept queue holds them, so the server side costs this process
  // nothing; client sockets are kernel memory, not RSS).
  int hold = Listen4(*server, kHoldPort, 4096);
  std::vector<int> fds;
  {
    long rss_before = SelfRssKb();
    agent::proxy::ProxyOptions options;
    options.max_connections_per_client = connections;  // one client address here
    options.max_connections_per_forward = connections;
    std::unique_ptr<Proxy> proxy;
    {
      auto in = must(testing::ScopedNetns::Enter(*router));
      proxy = must(Proxy::Start(options));
    }
    long rss_start = SelfRssKb();
    {
      auto in = must(testing::ScopedNetns::Enter(*router));
      for (int i = 0; i < forwards; ++i) Serve(*proxy, Spec(10000 + i, kHoldPort));
    }
    long rss_forwards = SelfRssKb();
    fds = OpenMany(*client, 10000, forwards, connections);
    for (int i = 0; i < 500 && proxy->counters().active_connections < uint64_t(connections); ++i) {
      usleep(10000);
    }
    // Data through every connection (into the target's receive buffer).
    for (int fd : fds) send(fd, "hello\n", 6, MSG_NOSIGNAL);
    usleep(200000);
    long rss_conns = SelfRssKb();
    std::printf("memory, %d forwards, %d open connections (VmRSS of this process):\n", forwards,
                connections);
    std::printf(
        "  proxy started: +%ld kB; %d forwards: +%ld kB; %d connections (%lu active, "
        "%lu bytes through): +%ld kB (%.2f kB each)\n",
        rss_start - rss_before, forwards, rss_forwards - rss_start, connections,
        (unsigned long)proxy->counters().active_connections,
        (unsigned long)proxy->counters().bytes_to_target, rss_conns - rss_forwards,
        double(rss_conns - rss_forwards) / connections);
    std::printf("  fabric proxy total: %.1f MiB (process %.1f MiB before it)\n",
                (rss_conns - rss_before) / 1024.0, rss_before / 1024.0);
    for (int fd : fds) close(fd);
    fds.clear();
  }

  // socat, the same: a listening process per forward, a process per connection.
  for (int i = 0; i < forwards; ++i) SpawnSocat(*router, 11000 + i, kHoldPort);
  for (int i = 0; i < 200 && CountSocat(*router) < forwards; ++i) usleep(20000);
  long socat_listen = SocatPssKb(*router);
  fds = OpenMany(*client, 11000, forwards, connections);
  for (int i = 0; i < 500 && CountSocat(*router) < forwards + connections; ++i) {
    usleep(20000);
  }
  long socat_conns = SocatPssKb(*router);
  std::printf(
      "  socat: %d processes, Pss %.1f MiB with %d forwards, %.1f MiB with %d "
      "connections\n",
      CountSocat(*router), socat_listen / 1024.0, forwards, socat_conns / 1024.0, connections);
  std::printf("  (docker-proxy, as the issue quotes it: about 116 MB per 100 ports)\n");
  for (int fd : fds) close(fd);
  fds.clear();
  close(hold);

  std::unique_ptr<Proxy> proxy;
  {
    auto in = must(testing::ScopedNetns::Enter(*router));
    proxy = must(Proxy::Start());
    Serve(*proxy, Spec(8000, kSinkPort));
    Serve(*proxy, Spec(8001, kEchoPort));
  }
  SpawnSocat(*router, 8100, kSinkPort);
  SpawnSocat(*router, 8101, kEchoPort);
  Servers servers(*server);

  std::printf("throughput, one connection, %.1f GiB one way (MB/s):\n", bytes / double(1 << 30));
  double direct = Throughput(*client, "192.168.1.100", kSinkPort, bytes);
  double ours = Throughput(*client, "2001:db8:1::1", 8000, bytes);
  double socat = Throughput(*client, "2001:db8:1::1", 8100, bytes);
  std::printf(
      "  direct (routed IPv4)   %8.0f\n  fabric proxy (splice)  %8.0f\n"
      "  socat                  %8.0f   (proxy / socat: %.2fx)\n",
      direct, ours, socat, ours / socat);

  std::printf("round trip, 64 bytes, %d on one connection, p50 / p99 (us):\n", rtts);
  Rtt d = RoundTrips(*client, "192.168.1.100", kEchoPort, rtts);
  Rtt o = RoundTrips(*client, "2001:db8:1::1", 8001, rtts);
  Rtt k = RoundTrips(*client, "2001:db8:1::1", 8101, rtts);
  std::printf("  direct (routed IPv4)   %6.1f / %6.1f\n", d.p50_us, d.p99_us);
  std::printf("  fabric proxy           %6.1f / %6.1f   (+%.1f us p50 over direct)\n", o.p50_us,
              o.p99_us, o.p50_us - d.p50_us);
  std::printf("  socat                  %6.1f / %6.1f   (+%.1f us p50 over direct)\n", k.p50_us,
              k.p99_us, k.p50_us - d.p50_us);
  std::printf("  proxy counters: %lu connections, %lu MB to target, %lu MB to client\n",
              (unsigned long)proxy->counters().connections_accepted,
              (unsigned long)(proxy->counters().bytes_to_target / 1000000),
              (unsigned long)(proxy->counters().bytes_to_client / 1000000));

  return 0;
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  uint64_t bytes = 2ull << 30;
  int rtts = 20000, forwards = 100, connections = 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    uint64_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (flag == "--bytes") bytes = v;
    if (flag == "--rtts") rtts = static_cast<int>(v);
    if (flag == "--forwards") forwards = static_cast<int>(v);
    if (flag == "--connections") connections = static_cast<int>(v);
  }
  if (argc > 1 && std::strcmp(argv[1], "--quick") == 0) {
    bytes = 256 << 20;
    rtts = 2000;
  }
  return fabric::Run(bytes, rtts, forwards, connections);
}
