// UPnP IGD AddPortMapping + DeletePortMapping round trips, closed loop, one
// LAN host: fabric-agent --upnp against Debian's miniupnpd (UPnP enabled) in
// the same namespace layout, in the same run, driven by the same client.
// Prints adds and deletes per second (the time spent in each kind), round
// trips per second, median and p99 latency of each, and the ratios next to
// the target (at least 5x miniupnpd's figures).
//
//   LAN 192.168.77.10 --- lan0 192.168.77.1 [router] wan0 11.77.0.1 --- outside 11.77.0.2 (STUN)
//
// The client does what miniupnpc does: a TCP connection per SOAP call, the
// same headers and envelope, the response read to EOF; HTTP 200 is success,
// anything else (a SOAP fault included) a failure that the table counts.
// Each server's control URL and service type come from its rootDesc.xml.
// Before timing, one mapping per server is added, read back with
// GetSpecificPortMappingEntry, looked for in the server's nftables rules,
// deleted and looked for again, so the figures cannot come from errors.
//
//   upnp_bench [--rounds=N] [--quick]   (2,000 rounds; --quick: 200)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "testing/cni_runtime.h"
#include "testing/netns.h"
#include "tests/bench/miniupnpd_env.h"

namespace fabric::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kHttpPort = 5000;
constexpr int kFirstPort = 20000;  // the timed rounds use 20000, 20001, ...
constexpr int kPortSpan = 40000;
constexpr int kCheckPort = 19999;  // the one checked before timing

struct Reply {
  int code = 0;
  std::string body;
};

// One HTTP exchange with the router's LAN address on a connection of its
// own, read to EOF. Runs in the calling thread's namespace.
absl::StatusOr<Reply> Exchange(const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const timeval timeout{5, 0};  // a server that hangs is a failure, not a hang
  for (int option : {SO_RCVTIMEO, SO_SNDTIMEO}) {
    setsockopt(fd, SOL_SOCKET, option, &timeout, sizeof(timeout));
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(kHttpPort);
  inet_pton(AF_INET, kLanRouter, &to.sin_addr);
  std::string text;
  absl::Status s;
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    s = absl::UnavailableError(absl::StrCat("connect: ", std::strerror(errno)));
  } else if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
             static_cast<ssize_t>(request.size())) {
    s = absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  } else {
    char chunk[8192];
    ssize_t n;
    while ((n = recv(fd, chunk, sizeof(chunk), 0)) > 0) text.append(chunk, n);
    if (n < 0) s = absl::DeadlineExceededError(absl::StrCat("recv: ", std::strerror(errno)));
  }
  close(fd);
  if (!s.ok()) return s;
  Reply r;
  size_t body = text.find("\r\n\r\n");
  if (!absl::StartsWith(text, "HTTP/1.") || text.size() < 12 || body == std::string::npos ||
      !absl::SimpleAtoi(text.substr(9, 3), &r.code)) {
    return absl::DataLossError(absl::StrCat("not an HTTP response: ", text.substr(0, 80)));
  }
  r.body = text.substr(body + 4);
  return r;
}

std::string Host() { return absl::StrCat(kLanRouter, ":", kHttpPort); }

// What a server's rootDesc.xml says of its WANIPConnection service.
struct Service {
  std::string type;         // urn:schemas-upnp-org:service:WANIPConnection:N
  std::string control_url;  // a path
};

std::string Between(const std::string& text, const std::string& open, const std::string& close,
                    size_t from = 0) {
  size_t a = text.find(open, from);
  if (a == std::string::npos) return "";
  a += open.size();
  size_t b = text.find(close, a);
  return b == std::string::npos ? "" : text.substr(a, b - a);
}

absl::StatusOr<Service> Discover() {
  absl::StatusOr<Reply> r = Exchange(absl::StrCat(
      "GET /rootDesc.xml HTTP/1.1\r\nHost: ", Host(), "\r\nConnection: close\r\n\r\n"));
  if (!r.ok()) return r.status();
  if (r->code != 200) return absl::UnavailableError(absl::StrCat("rootDesc.xml: ", r->code));
  const std::string kType = "urn:schemas-upnp-org:service:WANIPConnection:";
  size_t at = r->body.find("<serviceType>" + kType);
  if (at == std::string::npos) return absl::NotFoundError("no WANIPConnection service");
  Service s;
  s.type = Between(r->body, "<serviceType>", "</serviceType>", at);
  s.control_url = Between(r->body, "<controlURL>", "</controlURL>", at);
  if (absl::StartsWith(s.control_url, "http://")) {
    s.control_url = s.control_url.substr(s.control_url.find('/', 7));
  }
  if (s.control_url.empty()) return absl::NotFoundError("WANIPConnection has no controlURL");
  return s;
}

// A SOAP call as miniupnpc 2.2 writes it (soapPostSubmit, simpleUPnPcommand).
std::string SoapRequest(const Service& s, const std::string& action,
                        const std::vector<std::pair<std::string, std::string>>& args) {
  std::string body = absl::StrCat(
      "<?xml version=\"1.0\"?>\r\n"
      "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" "
      "s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:",
      action, " xmlns:u=\"", s.type, "\">");
  for (const auto& [name, value] : args) absl::StrAppend(&body, "<", name, ">", value, "</", name, ">");
  absl::StrAppend(&body, "</u:", action, "></s:Body></s:Envelope>\r\n");
  return absl::StrCat("POST ", s.control_url, " HTTP/1.1\r\nHost: ", Host(),
                      "\r\nUser-Agent: Debian/12, UPnP/1.1, MiniUPnPc/2.2.4\r\n"
                      "Content-Length: ", body.size(),
                      "\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n"
                      "SOAPAction: \"", s.type, "#", action,
                      "\"\r\nConnection: Close\r\nCache-Control: no-cache\r\n"
                      "Pragma: no-cache\r\n\r\n", body);
}

std::string AddRequest(const Service& s, int port) {
  std::string p = absl::StrCat(port);
  return SoapRequest(s, "AddPortMapping",
                     {{"NewRemoteHost", ""}, {"NewExternalPort", p}, {"NewProtocol", "TCP"},
                      {"NewInternalPort", p}, {"NewInternalClient", kLanHost},
                      {"NewEnabled", "1"}, {"NewPortMappingDescription", "upnp_bench"},
                      {"NewLeaseDuration", "3600"}});
}

std::string DeleteRequest(const Service& s, int port) {
  return SoapRequest(s, "DeletePortMapping",
                     {{"NewRemoteHost", ""}, {"NewExternalPort", absl::StrCat(port)},
                      {"NewProtocol", "TCP"}});
}

// One call that must answer 200.
absl::Status Call(const std::string& what, const std::string& request) {
  absl::StatusOr<Reply> r = Exchange(request);
  if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(what, ": ", r.status().message()));
  if (r->code != 200) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": HTTP ", r->code, " errorCode ", Between(r->body, "<errorCode>", "</errorCode>"),
        " ", Between(r->body, "<errorDescription>", "</errorDescription>")));
  }
  return absl::OkStatus();
}

// A server under test: how to find its mapping of a port in the kernel.
struct Server {
  std::string name;
  std::string rules_command;  // run in the router; its output lists the mappings
};

// The numbers in the server's rules (ports among them).
std::set<int> RuleNumbers(const Layout& l, const Server& server) {
  std::set<int> numbers;
  absl::StatusOr<std::string> rules = l.router->Exec(server.rules_command);
  if (!rules.ok()) return numbers;
  for (absl::string_view word : absl::StrSplit(*rules, absl::ByAnyChar(" \t\n,{}:."))) {
    int n;
    if (absl::SimpleAtoi(word, &n)) numbers.insert(n);
  }
  return numbers;
}

bool InRules(const Layout& l, const Server& server, int port) {
  return RuleNumbers(l, server).count(port) > 0;
}

// Adds kCheckPort, reads it back, finds it in the rules, deletes it, and
// finds it gone. In the LAN namespace.
absl::Status Verify(const Layout& l, const Server& server, const Service& s) {
  if (absl::Status st = Call("AddPortMapping", AddRequest(s, kCheckPort)); !st.ok()) return st;
  absl::StatusOr<Reply> entry = Exchange(SoapRequest(
      s, "GetSpecificPortMappingEntry",
      {{"NewRemoteHost", ""}, {"NewExternalPort", absl::StrCat(kCheckPort)}, {"NewProtocol", "TCP"}}));
  if (!entry.ok()) return entry.status();
  if (entry->code != 200 || !absl::StrContains(entry->body, kLanHost)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "GetSpecificPortMappingEntry after the add: HTTP ", entry->code, " ", entry->body));
  }
  if (!InRules(l, server, kCheckPort)) {
    return absl::FailedPreconditionError(
        absl::StrCat("port ", kCheckPort, " is not in `", server.rules_command, "`"));
  }
  if (absl::Status st = Call("DeletePortMapping", DeleteRequest(s, kCheckPort)); !st.ok()) return st;
  if (InRules(l, server, kCheckPort)) {
    return absl::FailedPreconditionError(
        absl::StrCat("port ", kCheckPort, " is still in `", server.rules_command, "`"));
  }
  return absl::OkStatus();
}

struct Result {
  int adds = 0, deletes = 0, failed = 0;
  double add_seconds = 0, delete_seconds = 0, seconds = 0;
  std::vector<double> add_ms, delete_ms;
  std::string first_failure;
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// `rounds` of add then delete, ports varying. In the LAN namespace.
Result Run(const Service& s, int rounds) {
  Result r;
  auto start = Clock::now();
  for (int i = 0; i < rounds; ++i) {
    int port = kFirstPort + i % kPortSpan;
    for (bool add : {true, false}) {
      auto t0 = Clock::now();
      absl::Status st = add ? Call("AddPortMapping", AddRequest(s, port))
                            : Call("DeletePortMapping", DeleteRequest(s, port));
      double ms = Ms(Clock::now() - t0);
      (add ? r.add_ms : r.delete_ms).push_back(ms);
      (add ? r.add_seconds : r.delete_seconds) += ms / 1000;
      if (st.ok()) {
        ++(add ? r.adds : r.deletes);
      } else if (r.failed++ == 0) {
        r.first_failure = absl::StrCat("port ", port, ": ", st.message());
      }
    }
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

// Discovers, verifies and runs against the server now up in `l`.
absl::StatusOr<Result> Measure(const Layout& l, const Server& server, int rounds) {
  absl::StatusOr<std::unique_ptr<testing::ScopedNetns>> in_lan = testing::ScopedNetns::Enter(*l.lan);
  if (!in_lan.ok()) return in_lan.status();
  absl::StatusOr<Service> s = Discover();
  for (int i = 0; i < 50 && !s.ok(); ++i) {  // the agent's HTTP may come up after its socket
    usleep(100000);
    s = Discover();
  }
  if (!s.ok()) return s.status();
  // The HTTP floor: a connection per call that changes nothing.
  std::vector<double> get_ms;
  for (int i = 0; i < 200; ++i) {
    auto t0 = Clock::now();
    if (absl::StatusOr<Service> again = Discover(); !again.ok()) return again.status();
    get_ms.push_back(Ms(Clock::now() - t0));
  }
  std::printf("%-12s  %s at http://%s%s; GET /rootDesc.xml p50 %.3f ms\n", server.name.c_str(),
              s->type.c_str(), Host().c_str(), s->control_url.c_str(), Percentile(get_ms, 0.5));
  if (absl::Status v = Verify(l, server, *s); !v.ok()) {
    return absl::Status(v.code(), absl::StrCat("check before timing: ", v.message()));
  }
  Result r = Run(*s, rounds);
  // What the deletes answered 200 for is gone from the kernel too.
  std::set<int> left = RuleNumbers(l, server);
  int kept = 0;
  for (int i = 0; i < std::min(rounds, kPortSpan) && r.failed == 0; ++i) {
    kept += left.count(kFirstPort + i);
  }
  if (kept > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(kept, " of the timed ports are still in `", server.rules_command, "`"));
  }
  return r;
}

// The agent's own time per change: the duration= of its op=upnp log lines.
void PrintAgentDurations(const std::string& log) {
  std::vector<double> add, del;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StrContains(line, "op=upnp action=")) continue;
    size_t at = line.find(" duration=");
    double ms;
    if (at == absl::string_view::npos) continue;
    absl::string_view v = line.substr(at + 10);
    if (!absl::SimpleAtod(v.substr(0, v.find("ms")), &ms)) continue;
    if (absl::StrContains(line, "action=AddPortMapping ")) add.push_back(ms);
    if (absl::StrContains(line, "action=DeletePortMapping ")) del.push_back(ms);
  }
  std::printf("fabric-agent's own time (its log's duration=, SOAP parsed to reply built): "
              "add p50 %.3f / p99 %.3f ms, delete p50 %.3f / p99 %.3f ms (%zu + %zu calls)\n",
              Percentile(add, 0.5), Percentile(add, 0.99), Percentile(del, 0.5),
              Percentile(del, 0.99), add.size(), del.size());
}

void PrintRow(const std::string& name, const Result& r) {
  std::printf("%-12s %8.0f %10.0f %9.0f %8.3f / %-8.3f %8.3f / %-8.3f %7d\n", name.c_str(),
              r.adds / r.add_seconds, r.deletes / r.delete_seconds, r.add_ms.size() / r.seconds,
              Percentile(r.add_ms, 0.5), Percentile(r.add_ms, 0.99), Percentile(r.delete_ms, 0.5),
              Percentile(r.delete_ms, 0.99), r.failed);
  if (r.failed > 0) std::printf("  first failure: %s\n", r.first_failure.c_str());
}

// fabric-agent in a layout of its own; its log in `log`.
absl::StatusOr<Result> MeasureAgent(const std::string& dir, int rounds, std::string* log) {
  absl::StatusOr<Layout> l = MakeLayout("11.77.0");
  if (!l.ok()) return l.status();
  absl::StatusOr<std::unique_ptr<testing::AgentProcess>> agent = testing::AgentProcess::Start(
      l->router.get(), dir + "/agent",
      absl::StrCat("--lan_interfaces=lan0 --wan_interface=wan0 --upnp --upnp_http_port=",
                   kHttpPort));
  if (!agent.ok()) return agent.status();
  absl::StatusOr<Result> r =
      Measure(*l, {"fabric-agent", "nft list map inet fabric_nat dnat4"}, rounds);
  *log = (*agent)->LogText();
  return r;
}

// Debian's miniupnpd in the same layout, UPnP only, on the same port.
absl::StatusOr<Result> MeasureMiniupnpd(const std::string& dir, int rounds) {
  absl::StatusOr<Layout> l = MakeLayout("11.77.0");
  if (!l.ok()) return l.status();
  const Layout& layout = *l;
  absl::StatusOr<std::unique_ptr<Miniupnpd>> miniupnpd = Miniupnpd::Start(
      *l, dir, absl::StrCat("enable_natpmp=no\nenable_upnp=yes\nhttp_port=", kHttpPort),
      [&layout] {
        return layout.lan
            ->Exec(absl::StrCat("curl -sf -o /dev/null http://", Host(), "/rootDesc.xml"))
            .ok();
      });
  if (!miniupnpd.ok()) return miniupnpd.status();
  absl::StatusOr<Result> r = Measure(*l, {"miniupnpd", "nft list table inet filter"}, rounds);
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat(r.status().message(), "\nits log ends:\n",
                                                        (*miniupnpd)->LogTail(5)));
  }
  return r;
}

int Main(int rounds) {
  std::printf("UPnP AddPortMapping + DeletePortMapping, closed loop, %d rounds, ports %d-%d, "
              "a TCP connection per call (as miniupnpc)\n",
              rounds, kFirstPort, kFirstPort + std::min(rounds, kPortSpan) - 1);
  std::fflush(stdout);
  testing::ScopedTempDir dir("fub");
  if (dir.path().empty()) return 1;
  std::string agent_log;
  absl::StatusOr<Result> agent = MeasureAgent(dir.path(), rounds, &agent_log);
  absl::StatusOr<Result> miniupnpd =
      agent.ok() ? MeasureMiniupnpd(dir.path(), rounds) : absl::CancelledError("not run");
  for (const auto& [name, r] : {std::pair{"fabric-agent", &agent}, {"miniupnpd", &miniupnpd}}) {
    if (!r->ok()) {
      std::fprintf(stderr, "%s: %s\n", name, std::string(r->status().message()).c_str());
      return 1;
    }
  }
  const Result& ours = *agent;
  const Result& theirs = *miniupnpd;
  std::printf("%-12s %8s %10s %9s %19s %19s %7s\n", "server", "adds/s", "deletes/s", "rounds/s",
              "add p50/p99 ms", "delete p50/p99 ms", "failed");
  PrintRow("fabric-agent", ours);
  PrintRow("miniupnpd", theirs);
  double add_ratio = (ours.adds / ours.add_seconds) / (theirs.adds / theirs.add_seconds);
  double delete_ratio =
      (ours.deletes / ours.delete_seconds) / (theirs.deletes / theirs.delete_seconds);
  std::printf("%-12s %7.1fx %9.1fx %8.1fx %8.1fx lower       %8.1fx lower\n", "ratio", add_ratio,
              delete_ratio, theirs.seconds / ours.seconds,
              Percentile(theirs.add_ms, 0.5) / Percentile(ours.add_ms, 0.5),
              Percentile(theirs.delete_ms, 0.5) / Percentile(ours.delete_ms, 0.5));
  bool met = add_ratio >= 5 && delete_ratio >= 5 && ours.failed == 0;
  std::printf("target       >= 5.0x adds/s and deletes/s, no failures: %s\n",
              met ? "met" : "MISSED");
  PrintAgentDurations(agent_log);
  return 0;
}

}  // namespace
}  // namespace fabric::bench

int main(int argc, char** argv) {
  int rounds = 2000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) rounds = 200;
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) rounds = std::atoi(argv[i] + 9);
  }
  if (rounds <= 0) {
    std::fprintf(stderr, "--rounds must be positive\n");
    return 2;
  }
  return fabric::bench::Main(rounds);
}
