#include "agent/ssdp/server.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/log.h"

namespace fabric::agent::ssdp {

namespace {

constexpr int kReceiveBatch = 64;  // datagrams per wake-up, then timers run

nat::IpAddress V4(uint32_t network_order) {
  return nat::IpAddress::FromBytes(nat::Family::kIPv4,
                                   reinterpret_cast<const uint8_t*>(&network_order));
}

uint32_t NetworkOrder(const nat::IpAddress& a) {
  uint32_t out = 0;
  if (a.is_v4()) std::memcpy(&out, a.bytes(), 4);
  return out;
}

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("SSDP: ", what));
}

absl::Status CheckConfig(const ServerConfig& c) {
  if (c.lan_interfaces.empty()) return Invalid("needs at least one LAN interface");
  for (const std::string& name : c.lan_interfaces) {
    if (name.empty() || name.size() >= IF_NAMESIZE) {
      return Invalid(absl::StrCat("`", name, "` is not an interface name"));
    }
  }
  if (c.http_port == 0) return Invalid("needs the description server's port (http_port)");
  if (c.description_path.empty() || c.description_path[0] != '/' ||
      !SafeHeaderValue(c.description_path) ||
      c.description_path.find(' ') != std::string::npos) {
    return Invalid(absl::StrCat("description_path `", c.description_path,
                                "` must be an absolute path without spaces"));
  }
  if (absl::Status s = ValidateDevice(c.device); !s.ok()) {
    return Invalid(absl::StrCat("device: ", s.message()));
  }
  if (c.max_age == 0) return Invalid("max_age must be at least 1 second");
  if (c.notify_interval < absl::Seconds(1) ||
      c.notify_interval >= absl::Seconds(c.max_age)) {
    return Invalid(absl::StrCat("notify_interval (", absl::FormatDuration(c.notify_interval),
                                ") must be at least 1s and shorter than max_age (", c.max_age,
                                "s), or advertisements expire between announcements"));
  }
  if (c.boot_id > kMaxBootId) {
    return Invalid(absl::StrCat("boot_id ", c.boot_id, " is above ", kMaxBootId));
  }
  if (c.config_id > kMaxConfigId) {
    return Invalid(absl::StrCat("config_id ", c.config_id, " is above ", kMaxConfigId));
  }
  if (c.ttl < 1 || c.ttl > 255) return Invalid(absl::StrCat("ttl ", c.ttl, " is not 1..255"));
  if (c.initial_announcements < 1) return Invalid("initial_announcements must be at least 1");
  if (c.announce_gap < absl::ZeroDuration() || c.max_delay < absl::ZeroDuration()) {
    return Invalid("announce_gap and max_delay cannot be negative");
  }
  if (c.max_pending < 1 || c.max_pending_per_client < 1 || c.rate_clients < 1) {
    return Invalid("max_pending, max_pending_per_client and rate_clients must be at least 1");
  }
  if ((c.queries_per_second > 0 && c.query_burst < 1) ||
      (c.total_queries_per_second > 0 && c.total_query_burst < 1)) {
    return Invalid("query_burst and total_query_burst must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SsdpServer>> SsdpServer::Start(ServerConfig config) {
  if (absl::Status s = CheckConfig(config); !s.ok()) return s;
  in_addr group{};
  if (inet_pton(AF_INET, config.multicast_group.c_str(), &group) != 1 ||
      !IN_MULTICAST(ntohl(group.s_addr))) {
    return Invalid(absl::StrCat("multicast_group `", config.multicast_group,
                                "` is not an IPv4 multicast address"));
  }
  std::string server = config.server;
  if (server.empty()) {
    utsname u{};
    server = ServerString(uname(&u) == 0 ? u.release : "unknown", config.version);
  }
  // Every field the builders will insert, checked once here.
  absl::StatusOr<std::string> probe =
      Notify(NotifyKind::kAlive, Advertisements(config.device)[0],
             absl::StrCat("http://0.0.0.0:", config.http_port, config.description_path), server,
             config.boot_id, config.config_id, config.max_age);
  if (!probe.ok()) return Invalid(probe.status().message());

  int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (udp < 0) {
    return absl::UnavailableError(absl::StrCat("SSDP: socket: ", std::strerror(errno)));
  }
  auto fail = [udp](absl::string_view what) {
    int e = errno;
    close(udp);
    return absl::UnavailableError(absl::StrCat("SSDP: ", what, ": ", std::strerror(e)));
  };
  int one = 1, zero = 0;
  unsigned char ttl = static_cast<unsigned char>(config.ttl);
  if (setsockopt(udp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    return fail("SO_REUSEADDR");
  }
  if (setsockopt(udp, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) != 0) {
    return fail("IP_PKTINFO");
  }
  // Only the groups this socket joined, not every group the host is in.
  if (setsockopt(udp, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof(zero)) != 0) {
    return fail("IP_MULTICAST_ALL");
  }
  unsigned char loop = 0;
  if (setsockopt(udp, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof(loop)) != 0) {
    return fail("IP_MULTICAST_LOOP");
  }
  if (setsockopt(udp, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof(ttl)) != 0) {
    return fail("IP_MULTICAST_TTL");
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(config.port);
  if (bind(udp, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return fail(absl::StrCat("cannot listen on udp port ", config.port));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) return fail("eventfd");
  return std::unique_ptr<SsdpServer>(
      new SsdpServer(std::move(config), std::move(server), group.s_addr, udp, wake));
}

SsdpServer::SsdpServer(ServerConfig config, std::string server, uint32_t group, int udp,
                       int wake)
    : config_(std::move(config)),
      server_(std::move(server)),
      group_(group),
      host_(absl::StrCat(config_.multicast_group, ":", config_.port)),
      advertisements_(Advertisements(config_.device)),
      udp_(udp),
      wake_(wake),
      queue_(config_.max_pending, config_.max_pending_per_client),
      per_client_(config_.queries_per_second, std::max(1.0, config_.query_burst),
                  config_.rate_clients),
      total_(config_.total_queries_per_second, std::max(1.0, config_.total_query_burst), 1) {
  absl::StatusOr<natpmp::AddressEvents> events = natpmp::AddressEvents::Open();
  if (events.ok()) {
    address_events_ = std::make_unique<natpmp::AddressEvents>(std::move(*events));
  } else {
    LogLine(absl::StrCat("ssdp: ", events.status().message(),
                         "; reading interface addresses every second instead"));
  }
  for (const std::string& name : config_.lan_interfaces) lans_.push_back(Lan{name, 0, {}});
  RefreshAddresses();
  burst_left_ = config_.initial_announcements;
  next_notify_ = absl::Now();
  LogLine(absl::StrCat("ssdp: listening on udp port ", config_.port, " for ",
                       absl::StrJoin(config_.lan_interfaces, ","), ", ",
                       advertisements_.size(), " advertisements of ", config_.device.uuid_root));
  thread_ = std::thread([this] { Run(); });
}

SsdpServer::~SsdpServer() {
  stopping_ = true;
  uint64_t one = 1;
  (void)write(wake_, &one, sizeof(one));
  thread_.join();  // the thread says byebye on its way out
  close(udp_);
  close(wake_);
}

Counters SsdpServer::counters() const {
  Counters c;
  c.queries_answered = counters_.queries_answered;
  c.queries_unmatched = counters_.queries_unmatched;
  c.ignored_interface = counters_.ignored_interface;
  c.ignored_source = counters_.ignored_source;
  c.ignored_other = counters_.ignored_other;
  c.malformed = counters_.malformed;
  c.rate_limited = counters_.rate_limited;
  c.answers_sent = counters_.answers_sent;
  c.answers_dropped = counters_.answers_dropped;
  c.send_errors = counters_.send_errors;
  c.notifies_sent = counters_.notifies_sent;
  return c;
}

std::string SsdpServer::Location(const nat::IpAddress& address) const {
  return absl::StrCat("http://", address.ToString(), ":", config_.http_port,
                      config_.description_path);
}

void SsdpServer::Run() {
  // Clear what control points may remember of a previous run first.
  Announce(NotifyKind::kByebye);
  while (!stopping_) {
    absl::Time now = absl::Now();
    absl::Time at = std::min({queue_.next_due(), next_notify_, now + absl::Seconds(1)});
    int timeout = static_cast<int>(
        std::ceil(absl::ToDoubleMilliseconds(std::max(absl::ZeroDuration(), at - now))));
    pollfd fds[3] = {{udp_, POLLIN, 0},
                     {wake_, POLLIN, 0},
                     {address_events_ ? address_events_->fd() : -1, POLLIN, 0}};
    int n = poll(fds, 3, timeout);
    if (stopping_) break;
    // Address changes before the searches that may depend on them.
    if (n > 0 && (fds[2].revents & POLLIN) && address_events_->Drain()) {
      addresses_stale_ = true;
    }
    if (RefreshAddresses()) {
      // A new LAN address: tell the LAN where we are now.
      burst_left_ = config_.initial_announcements;
      next_notify_ = absl::Now();
    }
    if (n > 0 && (fds[0].revents & POLLIN)) Receive();
    SendDue();
    if (absl::Now() >= next_notify_) {
      Announce(NotifyKind::kAlive);
      if (burst_left_ > 0) --burst_left_;
      next_notify_ = absl::Now() + (burst_left_ > 0 ? config_.announce_gap
                                                    : config_.notify_interval);
    }
  }
  Announce(NotifyKind::kByebye);
}

bool SsdpServer::RefreshAddresses() {
  absl::Time now = absl::Now();
  if (address_events_ == nullptr && now - addresses_read_ >= absl::Seconds(1)) {
    addresses_stale_ = true;
  }
  if (!addresses_stale_ || now < retry_read_) return false;
  absl::StatusOr<natpmp::InterfaceAddresses> read = natpmp::InterfaceAddresses::Read();
  if (!read.ok()) {
    LogLine(absl::StrCat("ssdp: ", read.status().message(), "; trying again in 1s"));
    retry_read_ = now + absl::Seconds(1);
    return false;
  }
  addresses_ = std::move(*read);
  addresses_stale_ = false;
  addresses_read_ = now;
  bool gained = false;
  for (Lan& lan : lans_) {
    int index = static_cast<int>(if_nametoindex(lan.name.c_str()));
    if (index != lan.ifindex) {
      if (index == 0) {
        LogLine(absl::StrCat("ssdp: LAN interface ", lan.name,
                             " does not exist (yet); joining the group when it appears"));
      } else {
        ip_mreqn m{};
        m.imr_multiaddr.s_addr = group_;
        m.imr_ifindex = index;
        if (setsockopt(udp_, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof(m)) != 0 &&
            errno != EADDRINUSE) {
          LogLine(absl::StrCat("ssdp: cannot join ", config_.multicast_group, " on ",
                               lan.name, ": ", std::strerror(errno)));
          index = 0;  // try again on the next change
          addresses_stale_ = address_events_ == nullptr;
        }
      }
      lan.ifindex = index;
    }
    std::vector<nat::Prefix> now_addresses;
    auto it = addresses_.subnets.find(lan.name);
    if (lan.ifindex != 0 && it != addresses_.subnets.end()) now_addresses = it->second;
    for (const nat::Prefix& p : now_addresses) {
      if (std::find(lan.addresses.begin(), lan.addresses.end(), p) == lan.addresses.end()) {
        gained = true;
      }
    }
    lan.addresses = std::move(now_addresses);
  }
  return gained;
}

void SsdpServer::Receive() {
  for (int i = 0; i < kReceiveBatch; ++i) {
    char buf[kMaxDatagram + 1];
    errno = 0;
    std::optional<natpmp::Datagram> d = natpmp::ReceiveWithInfo(udp_, buf, sizeof(buf));
    if (!d) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      ++counters_.ignored_interface;  // no packet info, or not IPv4
      continue;
    }
    const sockaddr_in& from = d->from;
    const in_pktinfo& info = d->info;
    const size_t len = d->length;
    bool truncated = d->truncated || len > kMaxDatagram;
    Handle(buf, std::min(len, kMaxDatagram), truncated, from,
           info.ipi_ifindex, info.ipi_addr.s_addr);
  }
}

void SsdpServer::Handle(const char* data, size_t len, bool truncated, const sockaddr_in& from,
                        int ifindex, uint32_t dst) {
  // Only LAN interfaces, only to the group or to an address of that
  // interface (not, say, the WAN address: LOCATION would name it).
  const Lan* lan = nullptr;
  for (const Lan& l : lans_) {
    if (l.ifindex != 0 && l.ifindex == ifindex) lan = &l;
  }
  bool multicast = dst == group_;
  auto on_lan = [&](const nat::Prefix& p) { return p.address == V4(dst); };
  if (lan == nullptr ||
      (!multicast && std::none_of(lan->addresses.begin(), lan->addresses.end(), on_lan))) {
    ++counters_.ignored_interface;
    return;
  }
  // Only sources inside the interface's subnets: anything else is spoofed
  // or off-link, and an answer would go to someone who did not ask.
  nat::IpAddress source = V4(from.sin_addr.s_addr);
  if (from.sin_port == 0 || natpmp::RefusedSource(addresses_, lan->name, source)) {
    ++counters_.ignored_source;
    return;
  }
  if (truncated) {
    ++counters_.malformed;
    LogMalformed(absl::StrCat("from ", source.ToString(), ": longer than ", kMaxDatagram,
                              " bytes"));
    return;
  }
  absl::StatusOr<SearchRequest> request = ParseSearch(absl::string_view(data, len));
  absl::Status status = request.status();
  if (status.ok() && multicast) status = CheckMulticastSearch(*request);
  if (status.code() == absl::StatusCode::kUnimplemented) {
    ++counters_.ignored_other;  // NOTIFYs and answers of other devices
    return;
  }
  if (!status.ok()) {
    ++counters_.malformed;
    LogMalformed(absl::StrCat("from ", source.ToString(), ": ", status.message()));
    return;
  }
  absl::Time now = absl::Now();
  if (!per_client_.Allow(from.sin_addr.s_addr, now) || !total_.Allow(0, now)) {
    ++counters_.rate_limited;
    return;
  }
  std::vector<Answer> answers = Match(config_.device, request->st);
  if (answers.empty()) {
    ++counters_.queries_unmatched;
    return;
  }
  // Answer from, and name in LOCATION, our address the source can reach:
  // the one it asked, or the one of the subnet it is in.
  nat::IpAddress ours = V4(dst);
  if (multicast) {
    ours = lan->addresses.empty() ? V4(0) : lan->addresses.front().address;
    for (const nat::Prefix& p : lan->addresses) {
      if (p.Contains(source)) {
        ours = p.address;
        break;
      }
    }
  }
  std::string location = Location(ours);
  absl::Duration window = absl::ZeroDuration();
  if (multicast) window = std::min(absl::Seconds(*request->mx), config_.max_delay);
  int queued = 0;
  for (const Answer& a : answers) {
    absl::StatusOr<std::string> datagram = SearchResponse(
        a, location, server_, config_.boot_id, config_.config_id, config_.max_age);
    if (!datagram.ok()) {  // the parser lets no unsafe ST through; be sure
      ++counters_.malformed;
      LogMalformed(absl::StrCat("from ", source.ToString(), ": ", datagram.status().message()));
      return;
    }
    PendingAnswer p;
    p.due = now + window * absl::Uniform(random_, 0.0, 1.0);
    p.to_addr = from.sin_addr.s_addr;
    p.to_port = ntohs(from.sin_port);
    p.ifindex = ifindex;
    p.from_addr = NetworkOrder(ours);
    p.datagram = std::move(*datagram);
    if (queue_.Push(std::move(p))) {
      ++queued;
    } else {
      ++counters_.answers_dropped;
    }
  }
  if (queued > 0) ++counters_.queries_answered;
}

void SsdpServer::SendDue() {
  for (const PendingAnswer& p : queue_.PopDue(absl::Now())) {
    if (SendTo(p.datagram, p.to_addr, p.to_port, p.ifindex, p.from_addr)) {
      ++counters_.answers_sent;
    } else {
      ++counters_.send_errors;
    }
  }
}

void SsdpServer::Announce(NotifyKind kind) {
  for (const Lan& lan : lans_) {
    if (lan.ifindex == 0 || lan.addresses.empty()) continue;
    ip_mreqn m{};
    m.imr_ifindex = lan.ifindex;
    m.imr_address.s_addr = NetworkOrder(lan.addresses.front().address);
    setsockopt(udp_, IPPROTO_IP, IP_MULTICAST_IF, &m, sizeof(m));
    // alive names each address in LOCATION; byebye names none: once.
    size_t sources = kind == NotifyKind::kAlive ? lan.addresses.size() : 1;
    for (size_t i = 0; i < sources; ++i) {
      const nat::IpAddress& from = lan.addresses[i].address;
      std::string location = Location(from);
      for (const Answer& a : advertisements_) {
        absl::StatusOr<std::string> datagram =
            Notify(kind, a, location, server_, config_.boot_id, config_.config_id,
                   config_.max_age, host_);
        if (!datagram.ok()) continue;  // checked at Start
        if (SendTo(*datagram, group_, config_.port, lan.ifindex, NetworkOrder(from))) {
          ++counters_.notifies_sent;
        } else {
          ++counters_.send_errors;
        }
      }
    }
  }
}

bool SsdpServer::SendTo(const std::string& datagram, uint32_t to_addr, uint16_t to_port,
                        int ifindex, uint32_t from_addr) {
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = to_addr;
  to.sin_port = htons(to_port);
  in_addr from{};
  from.s_addr = from_addr;
  return natpmp::SendWithInfo(udp_, datagram.data(), datagram.size(), to, ifindex, from,
                              MSG_DONTWAIT);
}

void SsdpServer::LogMalformed(const std::string& why) {
  ++malformed_unlogged_;
  absl::Time now = absl::Now();
  if (now - last_malformed_log_ < absl::Seconds(1)) return;
  LogLine(absl::StrCat("ssdp: ignored ", malformed_unlogged_,
                       " malformed search(es), the last ", EscapeForLog(why)));
  malformed_unlogged_ = 0;
  last_malformed_log_ = now;
}

}  // namespace fabric::agent::ssdp
