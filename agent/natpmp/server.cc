#include "agent/natpmp/server.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/log.h"

namespace fabric::agent::natpmp {

namespace {

constexpr uint32_t kShortErrorLifetime = 30;
constexpr uint32_t kLongErrorLifetime = 1800;
constexpr int kAnnouncements = 10;

std::array<uint8_t, 4> V4Bytes(const std::optional<nat::IpAddress>& a) {
  std::array<uint8_t, 4> out{};
  if (a.has_value() && a->is_v4()) std::memcpy(out.data(), a->bytes(), 4);
  return out;
}

PmpResult PmpResultOf(LeaseOutcome o) {
  switch (o) {
    case LeaseOutcome::kOk: return PmpResult::kSuccess;
    case LeaseOutcome::kNotAuthorized: return PmpResult::kRefused;
    case LeaseOutcome::kNetworkFailure: return PmpResult::kNetworkFailure;
    default: return PmpResult::kOutOfResources;
  }
}

PcpResult PcpResultOf(LeaseOutcome o) {
  switch (o) {
    case LeaseOutcome::kOk: return PcpResult::kSuccess;
    case LeaseOutcome::kNotAuthorized: return PcpResult::kNotAuthorized;
    case LeaseOutcome::kNoResources: return PcpResult::kNoResources;
    case LeaseOutcome::kQuota: return PcpResult::kUserExQuota;
    case LeaseOutcome::kNetworkFailure: return PcpResult::kNetworkFailure;
    case LeaseOutcome::kCannotProvide: return PcpResult::kCannotProvideExternal;
  }
  return PcpResult::kNoResources;
}

// An error answer no longer than its request: when it would be longer,
// only its 4-byte NAT-PMP header (version, opcode, result), or nothing for
// a request shorter than that.
std::vector<uint8_t> CapErrorReply(std::vector<uint8_t> reply, size_t request_len) {
  if (reply.size() <= request_len) return reply;
  if (request_len < 4) return {};
  reply.resize(4);
  return reply;
}

const char* OutcomeName(LeaseOutcome o) {
  switch (o) {
    case LeaseOutcome::kOk: return "ok";
    case LeaseOutcome::kNotAuthorized: return "not_authorized";
    case LeaseOutcome::kNoResources: return "no_resources";
    case LeaseOutcome::kQuota: return "quota";
    case LeaseOutcome::kNetworkFailure: return "network_failure";
    case LeaseOutcome::kCannotProvide: return "cannot_provide";
  }
  return "?";
}

}  // namespace

absl::StatusOr<std::unique_ptr<PmpServer>> PmpServer::Start(AgentCore* core,
                                                            Metrics* metrics,
                                                            wan::AddressSource* wan,
                                                            ServerConfig config) {
  if (config.lan_interfaces.empty()) {
    return absl::InvalidArgumentError("NAT-PMP/PCP needs --lan_interfaces");
  }
  if (wan == nullptr || wan->interface().empty()) {
    return absl::InvalidArgumentError("NAT-PMP/PCP needs --wan_interface");
  }
  for (const std::string& lan : config.lan_interfaces) {
    if (lan == wan->interface()) {
      return absl::InvalidArgumentError(
          absl::StrCat("interface ", lan, " cannot be both LAN and WAN"));
    }
  }
  int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(udp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(udp, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(config.port);
  if (bind(udp, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    close(udp);
    return absl::UnavailableError(absl::StrCat(
        "NAT-PMP/PCP: cannot listen on udp port ", config.port, ": ", std::strerror(e)));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    int e = errno;
    close(udp);
    return absl::UnavailableError(absl::StrCat("NAT-PMP/PCP: eventfd: ", std::strerror(e)));
  }
  return std::unique_ptr<PmpServer>(
      new PmpServer(core, metrics, wan, std::move(config), udp, wake));
}

PmpServer::PmpServer(AgentCore* core, Metrics* metrics, wan::AddressSource* wan,
                     ServerConfig config, int udp, int wake)
    : core_(core),
      metrics_(metrics),
      wan_source_(wan),
      config_(std::move(config)),
      udp_(udp),
      wake_(wake),
      limiter_(config_.rate_per_second,
               std::max(config_.burst, 2.0 * config_.policy.max_per_client),
               config_.rate_clients) {
  absl::StatusOr<AddressEvents> events = AddressEvents::Open();
  if (events.ok()) {
    address_events_ = std::make_unique<AddressEvents>(std::move(*events));
  } else {
    LogLine(absl::StrCat("nat-pmp: ", events.status().message(),
                         "; reading interface addresses every second instead"));
  }
  RefreshAddresses();
  // The listener runs on the source's thread (or here, at once, with the
  // address now): it only queues, the server thread applies.
  subscription_ = wan_source_->Subscribe([this](const wan::AddressChange& c) {
    {
      std::lock_guard<std::mutex> l(pending_mu_);
      pending_.push_back(c.address);
    }
    uint64_t one = 1;
    (void)write(wake_, &one, sizeof(one));
  });
  ApplyWanChanges();
  // Announce at start even if the address did not change: the epoch may
  // have (RFC 6886 section 3.2.1).
  announcements_left_ = kAnnouncements;
  announce_gap_ = absl::Milliseconds(250);
  next_announcement_ = absl::Now();
  thread_ = std::thread([this] { Run(); });
}

PmpServer::~PmpServer() {
  wan_source_->Unsubscribe(subscription_);  // no listener call after this
  stopping_ = true;
  uint64_t one = 1;
  (void)write(wake_, &one, sizeof(one));
  thread_.join();
  close(udp_);
  close(wake_);
}

void PmpServer::ApplyWanChanges() {
  uint64_t count;
  (void)read(wake_, &count, sizeof(count));
  std::vector<std::optional<nat::IpAddress>> changes;
  {
    std::lock_guard<std::mutex> l(pending_mu_);
    changes.swap(pending_);
  }
  for (const std::optional<nat::IpAddress>& now : changes) {
    if (now == wan_) continue;
    LogLine(absl::StrCat("nat-pmp: external address of ", wan_source_->interface(), " is ",
                         now ? now->ToString() : "none",
                         wan_ ? " (was " + wan_->ToString() + ")" : ""));
    wan_ = now;
    if (now.has_value()) {
      announcements_left_ = kAnnouncements;
      announce_gap_ = absl::Milliseconds(250);
      next_announcement_ = absl::Now();
    }
  }
}

void PmpServer::SendAnnouncement() {
  uint32_t epoch = core_->EpochSeconds();
  std::vector<std::vector<uint8_t>> messages = {
      PmpExternalAddressResponse(wan_ ? PmpResult::kSuccess : PmpResult::kNetworkFailure,
                                 epoch, V4Bytes(wan_))};
  if (config_.pcp) messages.push_back(PcpAnnounce(epoch));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(config_.announce_port);
  inet_pton(AF_INET, "224.0.0.1", &to.sin_addr);
  for (const std::string& lan : config_.lan_interfaces) {
    ip_mreqn mreq{};
    mreq.imr_ifindex = static_cast<int>(if_nametoindex(lan.c_str()));
    if (mreq.imr_ifindex == 0) continue;
    setsockopt(udp_, IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof(mreq));
    for (const auto& m : messages) {
      sendto(udp_, m.data(), m.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
    }
  }
}

void PmpServer::RefreshAddresses() {
  if (address_events_ != nullptr && address_events_->Drain()) addresses_stale_ = true;
  absl::Time now = absl::Now();
  if (address_events_ == nullptr && now - addresses_read_ >= absl::Seconds(1)) {
    addresses_stale_ = true;
  }
  if (!addresses_stale_) return;
  absl::StatusOr<InterfaceAddresses> read = InterfaceAddresses::Read();
  if (!read.ok()) {
    LogLine(absl::StrCat("nat-pmp: ", read.status().message()));
    return;  // keep the last one; try again on the next request
  }
  addresses_ = std::move(*read);
  addresses_stale_ = false;
  addresses_read_ = now;
}

void PmpServer::LogDropped(const std::string& why) {
  metrics_->RecordOperation("natpmp_dropped", false, absl::ZeroDuration());
  ++drops_unlogged_;
  absl::Time now = absl::Now();
  if (now - last_drop_log_ < absl::Seconds(1)) return;
  LogLine(absl::StrCat("nat-pmp: dropped ", drops_unlogged_, " request(s), the last because ",
                       why));
  drops_unlogged_ = 0;
  last_drop_log_ = now;
}

void PmpServer::Run() {
  while (!stopping_) {
    absl::Duration wait = absl::Milliseconds(200);
    if (announcements_left_ > 0) {
      wait = std::min(wait, std::max(absl::ZeroDuration(), next_announcement_ - absl::Now()));
    }
    pollfd fds[3] = {{udp_, POLLIN, 0},
                     {wake_, POLLIN, 0},
                     {address_events_ ? address_events_->fd() : -1, POLLIN, 0}};
    int n = poll(fds, 3, static_cast<int>(absl::ToInt64Milliseconds(wait)));
    if (stopping_) break;
    if (n > 0 && (fds[1].revents & POLLIN)) ApplyWanChanges();
    // Address changes before the requests that may depend on them.
    if (n > 0 && (fds[2].revents & POLLIN) && address_events_->Drain()) {
      addresses_stale_ = true;
    }
    if (n > 0 && (fds[0].revents & POLLIN)) Receive();
    if (announcements_left_ > 0 && absl::Now() >= next_announcement_) {
      SendAnnouncement();
      --announcements_left_;
      next_announcement_ = absl::Now() + announce_gap_;
      announce_gap_ *= 2;
    }
  }
}

void PmpServer::Receive() {
  uint8_t buf[2048];
  std::optional<Datagram> d = ReceiveWithInfo(udp_, buf, sizeof(buf));
  if (!d) return;
  sockaddr_in from = d->from;
  const in_pktinfo& info = d->info;
  const ssize_t len = static_cast<ssize_t>(std::min(d->length, sizeof(buf)));
  // Only configured LAN interfaces, never the WAN side.
  char ifname[IF_NAMESIZE] = {};
  if (if_indextoname(info.ipi_ifindex, ifname) == nullptr) return;
  if (std::find(config_.lan_interfaces.begin(), config_.lan_interfaces.end(),
                ifname) == config_.lan_interfaces.end()) {
    return;
  }
  nat::IpAddress dst = nat::IpAddress::FromBytes(
      nat::Family::kIPv4, reinterpret_cast<const uint8_t*>(&info.ipi_addr));
  if (wan_.has_value() && dst == *wan_) return;  // addressed to the WAN address
  nat::IpAddress client = nat::IpAddress::FromBytes(
      nat::Family::kIPv4, reinterpret_cast<const uint8_t*>(&from.sin_addr));
  // Only sources inside the arrival interface's subnets: anything else is
  // spoofed or off-link, and an answer would go to someone who did not ask.
  RefreshAddresses();
  if (std::optional<std::string> why = RefusedSource(addresses_, ifname, client)) {
    LogDropped(absl::StrCat(*why, " (on ", ifname, ")"));
    return;
  }
  if (!limiter_.Allow(from.sin_addr.s_addr, absl::Now())) return;

  std::vector<uint8_t> reply;
  size_t request_len = static_cast<size_t>(len);
  if (len >= 1 && buf[0] == kPcpVersion && config_.pcp) {
    reply = HandlePcp(buf, request_len, client);
  } else if (len >= 1 && buf[0] != 0 && buf[0] != kPcpVersion && config_.pcp && len >= 2 &&
             !(buf[1] & 0x80)) {
    // Neither NAT-PMP nor PCP v2: PCP's UNSUPP_VERSION names version 2.
    reply = HandlePcp(buf, request_len, client);
  } else {
    reply = HandlePmp(buf, request_len, client);
  }
  if (reply.empty()) return;
  // Answer from the address the client asked.
  SendWithInfo(udp_, reply.data(), reply.size(), from, info.ipi_ifindex, info.ipi_addr);
}

void PmpServer::Log(const std::string& op, const nat::IpAddress& client,
                    const std::string& outcome, absl::Time start, bool ok) {
  absl::Duration took = absl::Now() - start;
  metrics_->RecordOperation(op, ok, took);
  LogLine(absl::StrFormat("op=%s client=%s %s duration=%.3fms", op, client.ToString(),
                          outcome, absl::ToDoubleMilliseconds(took)));
}

std::vector<uint8_t> PmpServer::HandlePmp(const uint8_t* data, size_t len,
                                          const nat::IpAddress& client) {
  absl::Time start = absl::Now();
  PmpRequest req;
  uint32_t epoch = core_->EpochSeconds();
  switch (ParsePmp(data, len, &req)) {
    case PmpParse::kIgnore:
      return {};
    case PmpParse::kUnsupportedVersion:
      Log("natpmp", client, absl::StrCat("outcome=unsupported_version version=", req.version),
          start, false);
      return CapErrorReply(PmpUnsupportedVersion(epoch), len);
    case PmpParse::kUnsupportedOpcode:
      Log("natpmp", client, absl::StrCat("outcome=unsupported_opcode opcode=", req.opcode),
          start, false);
      return CapErrorReply(PmpUnsupportedOpcode(data, len), len);
    case PmpParse::kTruncated:
      Log("natpmp_map", client, "outcome=refused (truncated request)", start, false);
      return CapErrorReply(PmpMapResponse(req.opcode, PmpResult::kRefused, epoch, 0, 0, 0),
                           len);
    case PmpParse::kOk:
      break;
  }
  if (req.opcode == static_cast<uint8_t>(PmpOpcode::kExternalAddress)) {
    Log("natpmp_address", client, absl::StrCat("outcome=", wan_ ? "ok" : "network_failure"),
        start, wan_.has_value());
    return PmpExternalAddressResponse(wan_ ? PmpResult::kSuccess : PmpResult::kNetworkFailure,
                                      epoch, V4Bytes(wan_));
  }
  nat::Protocol proto =
      req.opcode == static_cast<uint8_t>(PmpOpcode::kMapUdp) ? nat::Protocol::kUdp
                                                             : nat::Protocol::kTcp;
  if (req.internal_port == 0 && req.lifetime != 0) {
    Log("natpmp_map", client, "outcome=refused (internal port 0)", start, false);
    return PmpMapResponse(req.opcode, PmpResult::kRefused, epoch, 0, 0, 0);
  }
  LeaseRequest lr;
  lr.kind = v1::OWNER_KIND_NATPMP;
  lr.client = client;
  lr.protocol = proto;
  lr.internal_port = req.internal_port;
  lr.suggested_port = req.suggested_external_port;
  lr.lifetime = req.lifetime;
  LeaseResult r = core_->Lease(lr, config_.policy);
  Log(req.lifetime == 0 ? "natpmp_unmap" : "natpmp_map", client,
      absl::StrCat("proto=", nat::ProtocolName(proto), " internal=", req.internal_port,
                   " external=", r.external_port, " lifetime=", r.lifetime,
                   " outcome=", OutcomeName(r.outcome), " (", r.detail, ")"),
      start, r.outcome == LeaseOutcome::kOk);
  return PmpMapResponse(req.opcode, PmpResultOf(r.outcome), core_->EpochSeconds(),
                        req.internal_port, r.outcome == LeaseOutcome::kOk ? r.external_port : 0,
                        r.outcome == LeaseOutcome::kOk ? r.lifetime : 0);
}

std::vector<uint8_t> PmpServer::HandlePcp(const uint8_t* data, size_t len,
                                          const nat::IpAddress& client) {
  absl::Time start = absl::Now();
  PcpRequest req;
  PcpParseResult parsed = ParsePcp(data, len, &req);
  if (parsed.kind == PcpParseResult::kIgnore) return {};
  // Shorter than a PCP header: no answer (one would be longer than the
  // request, and a real PCP client never sends it).
  if (len < kPcpHeaderSize) {
    Log("pcp", client, absl::StrCat("outcome=dropped (", len, "-byte request)"), start, false);
    return {};
  }
  auto respond = [&](PcpResult result, uint32_t lifetime, uint16_t port,
                     const std::string& detail) {
    bool ok = result == PcpResult::kSuccess;
    if (!ok) {
      lifetime = IsShortLifetimeError(result) ? kShortErrorLifetime : kLongErrorLifetime;
    }
    Log(req.opcode == static_cast<uint8_t>(PcpOpcode::kMap) ? "pcp_map" : "pcp", client,
        absl::StrCat("result=", static_cast<int>(result), " ", detail), start, ok);
    std::array<uint8_t, 16> ext{};
    if (ok && wan_.has_value()) ext = MapV4(V4Bytes(wan_));
    // Never longer than the request (PcpResponse keeps to it; this says so).
    return CapErrorReply(PcpResponse(data, len, result, lifetime, core_->EpochSeconds(), port, ext),
                         len);
  };
  if (parsed.kind == PcpParseResult::kError) return respond(parsed.error, 0, 0, "parse error");
  // The client-IP field must be the packet's source (no NAT in between).
  std::optional<std::array<uint8_t, 4>> claimed = UnmapV4(req.client_ip);
  if (!claimed || std::memcmp(claimed->data(), client.bytes(), 4) != 0) {
    return respond(PcpResult::kAddressMismatch, 0, 0, "client IP field is not the source");
  }
  if (req.third_party) {
    return respond(PcpResult::kNotAuthorized, 0, 0, "THIRD_PARTY is not allowed");
  }
  if (req.filter) return respond(PcpResult::kUnsuppOption, 0, 0, "FILTER is not supported");
  if (req.opcode == static_cast<uint8_t>(PcpOpcode::kAnnounce)) {
    return respond(PcpResult::kSuccess, 0, 0, "announce");
  }
  // MAP.
  nat::Protocol protocol = nat::Protocol::kTcp;
  bool all_protocols = false;
  switch (req.protocol) {
    case 6: protocol = nat::Protocol::kTcp; break;
    case 17: protocol = nat::Protocol::kUdp; break;
    case 132: protocol = nat::Protocol::kSctp; break;
    case 0:
      // All protocols (and so all ports, RFC 6887 section 11.1): only as a
      // delete here.
      if (req.lifetime == 0) {
        all_protocols = true;
        break;
      }
      [[fallthrough]];
    default:
      return respond(PcpResult::kUnsuppProtocol, 0, 0,
                     absl::StrCat("protocol ", req.protocol, " is not supported"));
  }
  if (req.internal_port == 0 && req.lifetime != 0) {
    return respond(PcpResult::kMalformedRequest, 0, 0, "internal port 0 with a lifetime");
  }
  bool wants_other_ip = false;
  std::array<uint8_t, 16> zero{};
  if (req.suggested_external_ip != zero && req.suggested_external_ip != MapV4(V4Bytes(wan_))) {
    std::optional<std::array<uint8_t, 4>> v4 = UnmapV4(req.suggested_external_ip);
    wants_other_ip = !(v4 && *v4 == std::array<uint8_t, 4>{0, 0, 0, 0});
  }
  if (wants_other_ip && req.prefer_failure) {
    return respond(PcpResult::kCannotProvideExternal, 0, 0, "suggested external IP not ours");
  }
  LeaseRequest lr;
  lr.kind = v1::OWNER_KIND_PCP;
  lr.client = client;
  lr.protocol = protocol;
  lr.all_protocols = all_protocols;
  lr.internal_port = all_protocols ? 0 : req.internal_port;
  lr.suggested_port = req.suggested_external_port;
  lr.lifetime = req.lifetime;
  lr.nonce.assign(reinterpret_cast<const char*>(req.nonce.data()), req.nonce.size());
  lr.prefer_failure = req.prefer_failure;
  LeaseResult last = core_->Lease(lr, config_.policy);
  return respond(PcpResultOf(last.outcome), last.lifetime, last.external_port,
                 absl::StrCat("internal=", req.internal_port, " external=", last.external_port,
                              " lifetime=", last.lifetime, " (", last.detail, ")"));
}

}  // namespace fabric::agent::natpmp
