// podserve: the workload of the containerd end-to-end test's pod image.
//
// The image holds only Debian's busybox-static, whose nc has no UDP mode and
// no python3; this static binary (libc only) speaks testing/nettool.py's
// protocol from inside a container, so the test's Ask() works unchanged:
//
//   podserve serve TOKEN PROTO:PORT...
//       Answers every TCP connection and UDP datagram on each PORT with
//       "TOKEN <peer address>\n" (dual-stack sockets; IPv4 peers are printed
//       without the ::ffff: prefix).
//   podserve ask tcp|udp HOST PORT
//       Sends one request, prints the answer, exits 1 when none comes in 2 s.
//       Run through the CRI's ExecSync, it shows what a pod sees.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::string PeerText(const sockaddr_storage& peer) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (peer.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, buf,
              sizeof(buf));
    return buf;
  }
  inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr, buf,
            sizeof(buf));
  std::string s = buf;
  if (s.rfind("::ffff:", 0) == 0 && s.find('.') != std::string::npos) s = s.substr(7);
  return s;
}

struct Listener {
  int fd;
  bool udp;
};

int Serve(const std::string& token, int argc, char** argv) {
  std::vector<Listener> listeners;
  for (int i = 0; i < argc; ++i) {
    std::string spec = argv[i];
    size_t colon = spec.find(':');
    if (colon == std::string::npos) {
      std::fprintf(stderr, "podserve: %s is not PROTO:PORT\n", spec.c_str());
      return 2;
    }
    bool udp = spec.substr(0, colon) == "udp";
    int port = std::atoi(spec.c_str() + colon + 1);
    int fd = socket(AF_INET6, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    int zero = 0, one = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in6 addr = {};
    addr.sin6_family = AF_INET6;
    addr.sin6_port = htons(port);
    addr.sin6_addr = in6addr_any;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        (!udp && listen(fd, 64) != 0)) {
      std::perror(("podserve: bind " + spec).c_str());
      return 1;
    }
    listeners.push_back({fd, udp});
  }
  std::printf("podserve %s listening\n", token.c_str());
  std::fflush(stdout);
  std::vector<pollfd> fds;
  for (const Listener& l : listeners) fds.push_back({l.fd, POLLIN, 0});
  while (true) {
    if (poll(fds.data(), fds.size(), -1) < 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & POLLIN)) continue;
      sockaddr_storage peer = {};
      socklen_t len = sizeof(peer);
      if (listeners[i].udp) {
        char buf[2048];
        ssize_t n = recvfrom(fds[i].fd, buf, sizeof(buf), 0,
                             reinterpret_cast<sockaddr*>(&peer), &len);
        if (n < 0) continue;
        std::string answer = token + " " + PeerText(peer) + "\n";
        sendto(fds[i].fd, answer.data(), answer.size(), 0,
               reinterpret_cast<sockaddr*>(&peer), len);
      } else {
        int c = accept(fds[i].fd, reinterpret_cast<sockaddr*>(&peer), &len);
        if (c < 0) continue;
        std::string answer = token + " " + PeerText(peer) + "\n";
        (void)!write(c, answer.data(), answer.size());
        close(c);
      }
    }
  }
}

int Ask(const std::string& proto, const std::string& host, const std::string& port) {
  addrinfo hints = {};
  hints.ai_socktype = proto == "udp" ? SOCK_DGRAM : SOCK_STREAM;
  addrinfo* ai = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &ai) != 0 || ai == nullptr) {
    std::fprintf(stderr, "podserve: bad address %s:%s\n", host.c_str(), port.c_str());
    return 2;
  }
  int fd = socket(ai->ai_family, ai->ai_socktype, 0);
  timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (rc != 0) {
    std::fprintf(stderr, "no answer from %s:%s/%s: %s\n", host.c_str(), port.c_str(),
                 proto.c_str(), std::strerror(errno));
    return 1;
  }
  if (proto == "udp") (void)!write(fd, "ping\n", 5);
  std::string data;
  char buf[2048];
  while (data.empty() || data.back() != '\n') {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    data.append(buf, n);
  }
  if (data.empty()) {
    std::fprintf(stderr, "no answer from %s:%s/%s\n", host.c_str(), port.c_str(),
                 proto.c_str());
    return 1;
  }
  std::fwrite(data.data(), 1, data.size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "serve") == 0) {
    return Serve(argv[2], argc - 3, argv + 3);
  }
  if (argc == 5 && std::strcmp(argv[1], "ask") == 0) return Ask(argv[2], argv[3], argv[4]);
  std::fprintf(stderr,
               "usage: podserve serve TOKEN PROTO:PORT... | podserve ask PROTO HOST PORT\n");
  return 2;
}
