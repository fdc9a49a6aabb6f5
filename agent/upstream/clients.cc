#include "agent/upstream/clients.h"

#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>

#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/upstream/gateway.h"

namespace fabric::agent::upstream {

std::string Endpoint(const Ipv4& ip, uint16_t port) {
  return absl::StrCat(Ipv4String(ip), ":", port);
}

namespace {

// A decimal port number (1-65535).
bool ParsePort(absl::string_view s, uint16_t* out) {
  uint32_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v == 0 || v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

std::string What(const char* proto_name, const char* op, const MapRequest& r) {
  return absl::StrCat(proto_name, *op ? " " : "", op, " ", ProtoName(r.proto), "/",
                      r.internal_port);
}

// --------------------------------------------------------------------------
// Stable nonces: SipHash-2-4 keyed by the machine id.

uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

uint64_t SipHash24(const uint8_t key[16], const uint8_t* m, size_t len) {
  uint64_t k0 = 0, k1 = 0;
  std::memcpy(&k0, key, 8);
  std::memcpy(&k1, key + 8, 8);
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
  auto round = [&] {
    v0 += v1; v1 = Rotl(v1, 13); v1 ^= v0; v0 = Rotl(v0, 32);
    v2 += v3; v3 = Rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = Rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = Rotl(v1, 17); v1 ^= v2; v2 = Rotl(v2, 32);
  };
  size_t full = len / 8 * 8;
  for (size_t i = 0; i < full; i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, m + i, 8);
    v3 ^= w;
    round();
    round();
    v0 ^= w;
  }
  uint64_t last = static_cast<uint64_t>(len) << 56;
  for (size_t i = full; i < len; ++i) last |= static_cast<uint64_t>(m[i]) << (8 * (i - full));
  v3 ^= last;
  round();
  round();
  v0 ^= last;
  v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) round();
  return v0 ^ v1 ^ v2 ^ v3;
}

// --------------------------------------------------------------------------
// PCP and NAT-PMP result codes as statuses.

absl::Status PcpError(const Ipv4& gw, const std::string& what, uint8_t code) {
  std::string msg = absl::StrCat("gateway ", Ipv4String(gw), " refused ", what, ": ",
                                 PcpResultName(code));
  switch (static_cast<PcpResult>(code)) {
    case PcpResult::kNotAuthorized:
      return absl::PermissionDeniedError(absl::StrCat(
          msg, " (its policy refuses this mapping, or another host or program holds it under "
               "another nonce)"));
    case PcpResult::kNoResources:
    case PcpResult::kUserExQuota:
      return absl::ResourceExhaustedError(msg);
    case PcpResult::kNetworkFailure:
    case PcpResult::kCannotProvideExternal:
      return absl::UnavailableError(absl::StrCat(msg, " (transient; retry later)"));
    case PcpResult::kUnsuppOpcode:
    case PcpResult::kUnsuppVersion:
      return absl::UnimplementedError(msg);
    case PcpResult::kAddressMismatch:
      return absl::FailedPreconditionError(absl::StrCat(
          msg, " (it sees us from another address: is there another NAT between us?)"));
    default:
      return absl::FailedPreconditionError(msg);
  }
}

absl::Status PmpError(const Ipv4& gw, const std::string& what, uint16_t code) {
  std::string msg = absl::StrCat("gateway ", Ipv4String(gw), " refused ", what, ": ",
                                 PmpResultName(code));
  switch (static_cast<PmpResult>(code)) {
    case PmpResult::kRefused: return absl::PermissionDeniedError(msg);
    case PmpResult::kNetworkFailure:
      return absl::UnavailableError(absl::StrCat(msg, " (it has no external address yet?)"));
    case PmpResult::kOutOfResources: return absl::ResourceExhaustedError(msg);
    case PmpResult::kUnsupportedOpcode:
    case PmpResult::kUnsupportedVersion: return absl::UnimplementedError(msg);
    default: return absl::FailedPreconditionError(msg);
  }
}

// NAT-PMP opcode 0 over `t`.
absl::StatusOr<PmpReply> PmpAddress(Transport& t, const NowFn& now, const Schedule& s) {
  PmpReply r;
  absl::Status st = Exchange(t, now, s, "NAT-PMP external address request", PmpAddressRequest(),
                             [&](const std::vector<uint8_t>& d) {
                               return ParsePmpAddressReply(d.data(), d.size(), &r);
                             });
  if (!st.ok()) return st;
  if (r.result != 0) return PmpError(t.gateway(), "NAT-PMP external address request", r.result);
  return r;
}

class PcpClient : public MethodClient {
 public:
  PcpClient(std::unique_ptr<Transport> t, NowFn now, Schedule s)
      : t_(std::move(t)), now_(std::move(now)), s_(s) {}
  Method method() const override { return Method::kPcp; }

  absl::StatusOr<GatewayInfo> Probe() override {
    PcpReply r;
    absl::Status st = Exchange(*t_, now_, s_, "PCP ANNOUNCE", PcpAnnounceRequest(t_->local_ip()),
                               [&](const std::vector<uint8_t>& d) {
                                 return ParsePcpAnnounceReply(d.data(), d.size(), &r);
                               });
    if (!st.ok()) return st;
    GatewayInfo info;
    info.method = Method::kPcp;
    info.gateway = t_->gateway();
    info.local_ip = t_->local_ip();
    info.epoch = r.epoch;
    if (r.result != 0) info.note = absl::StrCat("ANNOUNCE answered ", PcpResultName(r.result));
    // PCP has no request for the external address; NAT-PMP's opcode 0 is
    // one, on the same port, while the gateway answers it.
    if (pmp_address_) {
      Schedule quick{s_.initial, std::min(s_.budget, absl::Seconds(1))};
      absl::StatusOr<PmpReply> a = PmpAddress(*t_, now_, quick);
      if (a.ok()) {
        info.external_ip = a->external_ip;
      } else {
        pmp_address_ = false;
      }
    }
    if (!info.external_ip && last_external_) info.external_ip = last_external_;
    return info;
  }

  absl::StatusOr<MapResult> Map(const MapRequest& req) override {
    return Send(req, req.lifetime, req.external_port ? req.external_port : req.internal_port);
  }

  absl::Status Unmap(const MapRequest& req, uint16_t external_port) override {
    return Send(req, 0, external_port).status();
  }

 private:
  absl::StatusOr<MapResult> Send(const MapRequest& req, uint32_t lifetime, uint16_t suggested) {
    const Nonce zero{};
    const Nonce nonce =
        req.nonce == zero ? StableNonce(req.proto, req.internal_port, t_->local_ip()) : req.nonce;
    const std::string what = What("PCP MAP", lifetime ? "" : "delete", req);
    PcpReply r;
    absl::Status st =
        Exchange(*t_, now_, s_, what,
                 PcpMapRequest(t_->local_ip(), nonce, req.proto, req.internal_port, suggested,
                               Ipv4{}, lifetime),
                 [&](const std::vector<uint8_t>& d) {
                   return ParsePcpMapReply(d.data(), d.size(), nonce, req.proto,
                                           req.internal_port, &r);
                 });
    if (!st.ok()) return st;
    if (r.result != 0) return PcpError(t_->gateway(), what, r.result);
    MapResult m;
    m.method = Method::kPcp;
    m.proto = req.proto;
    m.internal_ip = t_->local_ip();
    m.internal_port = req.internal_port;
    m.external_ip = r.external_ip;
    m.external_port = r.external_port;
    m.lifetime = r.lifetime;
    m.epoch = r.epoch;
    if (lifetime != 0) last_external_ = r.external_ip;
    return m;
  }

  std::unique_ptr<Transport> t_;
  NowFn now_;
  Schedule s_;
  bool pmp_address_ = true;
  std::optional<Ipv4> last_external_;
};

class NatPmpClient : public MethodClient {
 public:
  NatPmpClient(std::unique_ptr<Transport> t, NowFn now, Schedule s)
      : t_(std::move(t)), now_(std::move(now)), s_(s) {}
  Method method() const override { return Method::kNatPmp; }

  absl::StatusOr<GatewayInfo> Probe() override {
    absl::StatusOr<PmpReply> r = PmpAddress(*t_, now_, s_);
    if (!r.ok()) return r.status();
    GatewayInfo info;
    info.method = Method::kNatPmp;
    info.gateway = t_->gateway();
    info.local_ip = t_->local_ip();
    info.epoch = r->epoch;
    info.external_ip = r->external_ip;
    return info;
  }

  absl::StatusOr<MapResult> Map(const MapRequest& req) override {
    // The map reply carries no address: ask for it first.
    absl::StatusOr<PmpReply> a = PmpAddress(*t_, now_, s_);
    if (!a.ok()) return a.status();
    absl::StatusOr<PmpReply> r =
        Send(req, req.lifetime, req.external_port ? req.external_port : req.internal_port);
    if (!r.ok()) return r.status();
    MapResult m;
    m.method = Method::kNatPmp;
    m.proto = req.proto;
    m.internal_ip = t_->local_ip();
    m.internal_port = req.internal_port;
    m.external_ip = a->external_ip;
    m.external_port = r->external_port;
    m.lifetime = r->lifetime;
    m.epoch = r->epoch;
    return m;
  }

  absl::Status Unmap(const MapRequest& req, uint16_t) override {
    return Send(req, 0, 0).status();
  }

 private:
  absl::StatusOr<PmpReply> Send(const MapRequest& req, uint32_t lifetime, uint16_t suggested) {
    const std::string what = What("NAT-PMP map", lifetime ? "" : "delete", req);
    PmpReply r;
    absl::Status st = Exchange(*t_, now_, s_, what,
                               PmpMapRequest(req.proto, req.internal_port, suggested, lifetime),
                               [&](const std::vector<uint8_t>& d) {
                                 return ParsePmpMapReply(d.data(), d.size(), req.proto,
                                                         req.internal_port, lifetime == 0, &r);
                               });
    if (!st.ok()) return st;
    if (r.result != 0) return PmpError(t_->gateway(), what, r.result);
    return r;
  }

  std::unique_ptr<Transport> t_;
  NowFn now_;
  Schedule s_;
};

// --------------------------------------------------------------------------
// UPnP IGD through libminiupnpc.

std::string UpnpErrorText(int code) {
  const char* s = strupnperror(code);
  return s ? absl::StrCat(code, " ", s) : absl::StrCat("error ", code);
}

absl::Status UpnpError(const std::string& what, int code) {
  std::string msg = absl::StrCat(what, ": ", UpnpErrorText(code));
  if (code < 0) return absl::UnavailableError(absl::StrCat(msg, " (no valid answer from the IGD)"));
  switch (code) {
    case 606: return absl::PermissionDeniedError(msg);
    case 718:
    case 729: return absl::AlreadyExistsError(msg);
    case 728: return absl::ResourceExhaustedError(msg);
    case 501: return absl::UnavailableError(msg);
    default: return absl::FailedPreconditionError(msg);
  }
}

// The host of a URL ("http://192.168.77.1:5000/rootDesc.xml" -> 192.168.77.1).
std::string UrlHost(const char* url) {
  if (url == nullptr) return "";
  absl::string_view u(url);
  size_t p = u.find("://");
  if (p == absl::string_view::npos) return "";
  u.remove_prefix(p + 3);
  size_t end = u.find_first_of(":/");
  return std::string(u.substr(0, end));
}

class UpnpClient : public MethodClient {
 public:
  UpnpClient() {
    std::memset(&urls_, 0, sizeof(urls_));
    std::memset(&data_, 0, sizeof(data_));
    std::memset(lan_, 0, sizeof(lan_));
  }
  ~UpnpClient() override { FreeUPNPUrls(&urls_); }
  Method method() const override { return Method::kUpnp; }

  absl::Status Init(std::optional<Ipv4> gateway, absl::Duration discover) {
    // One search (libminiupnpc waits the whole delay per search type):
    // every UPnP root device answers upnp:rootdevice (UDA 1.0 section 1.3.2),
    // IGD:1 and IGD:2 alike; UPNP_GetValidIGD below picks the IGD.
    static const char* const kTypes[] = {"upnp:rootdevice", nullptr};
    int error = 0;
    UPNPDev* devs = upnpDiscoverDevices(
        kTypes, static_cast<int>(absl::ToInt64Milliseconds(discover)), nullptr, nullptr,
        UPNP_LOCAL_PORT_ANY, 0, 2, &error, 0);
    if (devs == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "no UPnP IGD answered SSDP discovery within ", absl::FormatDuration(discover),
          error ? absl::StrCat(" (miniupnpc error ", error, ")") : std::string(),
          " (is UPnP enabled on the router?)"));
    }
    std::string want = gateway ? Ipv4String(*gateway) : "";
    std::vector<std::string> seen;
    int found = 0;
    for (UPNPDev* d = devs; d != nullptr && found == 0; d = d->pNext) {
      seen.push_back(d->descURL ? d->descURL : "?");
      if (!want.empty() && UrlHost(d->descURL) != want) continue;
      UPNPDev* next = d->pNext;
      d->pNext = nullptr;  // this one device only
      FreeUPNPUrls(&urls_);
      std::memset(&urls_, 0, sizeof(urls_));
      std::memset(&data_, 0, sizeof(data_));
      int r = UPNP_GetValidIGD(d, &urls_, &data_, lan_, sizeof(lan_));
      d->pNext = next;
      if (r == 1) {
        found = 1;
      } else if ((r == 2 || r == 3) && urls_.controlURL && urls_.controlURL[0] &&
                 (absl::StrContains(data_.first.servicetype, "WANIPConnection") ||
                  absl::StrContains(data_.first.servicetype, "WANPPPConnection"))) {
        // libminiupnpc calls an IGD whose external address is in a reserved
        // range "not connected"; test networks and carrier-grade NAT use
        // such ranges, and the mapping works all the same.
        found = r;
      }
    }
    freeUPNPDevlist(devs);
    if (found == 0) {
      return absl::NotFoundError(absl::StrCat(
          "no usable UPnP IGD", want.empty() ? "" : absl::StrCat(" at ", want),
          " among the devices that answered SSDP: ", absl::StrJoin(seen, ", ")));
    }
    connected_ = found == 1;
    absl::StatusOr<Ipv4> lan = ParseIpv4(lan_);
    if (lan.ok()) local_ = *lan;
    absl::StatusOr<Ipv4> gw = ParseIpv4(UrlHost(urls_.controlURL));
    if (gw.ok()) gateway_ = *gw;
    v2_ = absl::StrContains(data_.first.servicetype, ":2");
    return absl::OkStatus();
  }

  absl::StatusOr<GatewayInfo> Probe() override {
    GatewayInfo info;
    info.method = Method::kUpnp;
    info.gateway = gateway_;
    info.local_ip = local_;
    char ext[64] = {0};
    int r = UPNP_GetExternalIPAddress(urls_.controlURL, data_.first.servicetype, ext);
    if (r != UPNPCOMMAND_SUCCESS) return UpnpError("UPnP GetExternalIPAddress", r);
    absl::StatusOr<Ipv4> e = ParseIpv4(ext);
    if (!e.ok()) {
      return absl::UnavailableError(absl::StrCat("the IGD at ", urls_.controlURL,
                                                 " reports no external address (\"", ext, "\")"));
    }
    info.external_ip = *e;
    info.note = absl::StrCat(data_.first.servicetype, " at ", urls_.controlURL);
    if (!connected_) {
      absl::StrAppend(&info.note, "; libminiupnpc calls it not connected (its external address ",
                      ext, " is in a reserved range, as on test networks and behind "
                      "carrier-grade NAT): used anyway");
    }
    return info;
  }

  absl::StatusOr<MapResult> Map(const MapRequest& req) override {
    absl::StatusOr<GatewayInfo> info = Probe();
    if (!info.ok()) return info.status();
    const std::string ext = absl::StrCat(req.external_port ? req.external_port : req.internal_port);
    const std::string in = absl::StrCat(req.internal_port);
    const char* proto = req.proto == Proto::kUdp ? "UDP" : "TCP";
    std::string lease = absl::StrCat(req.lifetime);
    int r = UPNP_AddPortMapping(urls_.controlURL, data_.first.servicetype, ext.c_str(), in.c_str(),
                                lan_, req.description.c_str(), proto, nullptr, lease.c_str());
    if (r == 725) {  // OnlyPermanentLeasesSupported (IGD:1)
      lease = "0";
      r = UPNP_AddPortMapping(urls_.controlURL, data_.first.servicetype, ext.c_str(), in.c_str(),
                              lan_, req.description.c_str(), proto, nullptr, lease.c_str());
    }
    uint16_t granted = 0;
    ParsePort(ext, &granted);
    if (r == 718 && v2_) {
      // Taken by someone else: IGD:2 lets the gateway pick another port.
      char reserved[8] = {0};
      r = UPNP_AddAnyPortMapping(urls_.controlURL, data_.first.servicetype, ext.c_str(),
                                 in.c_str(), lan_, req.description.c_str(), proto, nullptr,
                                 lease.c_str(), reserved);
      if (r == UPNPCOMMAND_SUCCESS && !ParsePort(reserved, &granted)) {
        return absl::UnavailableError(absl::StrCat(
            "UPnP AddAnyPortMapping answered no valid port (\"", reserved, "\")"));
      }
    }
    if (r != UPNPCOMMAND_SUCCESS) {
      return UpnpError(absl::StrCat("UPnP AddPortMapping ", ProtoName(req.proto), " ", ext, " -> ",
                                    lan_, ":", in),
                       r);
    }
    MapResult m;
    m.method = Method::kUpnp;
    m.proto = req.proto;
    m.internal_ip = local_;
    m.internal_port = req.internal_port;
    m.external_ip = *info->external_ip;
    m.external_port = granted;
    absl::SimpleAtoi(lease, &m.lifetime);
    return m;
  }

  absl::Status Unmap(const MapRequest& req, uint16_t external_port) override {
    const char* proto = req.proto == Proto::kUdp ? "UDP" : "TCP";
    if (external_port == 0) {
      absl::StatusOr<uint16_t> found = Find(req);
      if (!found.ok()) return found.status();
      external_port = *found;
    }
    std::string ext = absl::StrCat(external_port);
    int r = UPNP_DeletePortMapping(urls_.controlURL, data_.first.servicetype, ext.c_str(), proto,
                                   nullptr);
    if (r != UPNPCOMMAND_SUCCESS) {
      if (r == 714) {
        return absl::NotFoundError(absl::StrCat("UPnP DeletePortMapping ", ProtoName(req.proto),
                                                " ", ext, ": the IGD holds no such mapping"));
      }
      return UpnpError(absl::StrCat("UPnP DeletePortMapping ", ProtoName(req.proto), " ", ext), r);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<bool> StillMapped(const MapResult& m) override {
    char client[64] = {0}, port[16] = {0}, desc[128] = {0}, enabled[8] = {0}, lease[32] = {0};
    std::string ext = absl::StrCat(m.external_port);
    int r = UPNP_GetSpecificPortMappingEntry(urls_.controlURL, data_.first.servicetype,
                                             ext.c_str(), m.proto == Proto::kUdp ? "UDP" : "TCP",
                                             nullptr, client, port, desc, enabled, lease);
    if (r == 714) return false;  // NoSuchEntryInArray
    if (r != UPNPCOMMAND_SUCCESS) return UpnpError("UPnP GetSpecificPortMappingEntry", r);
    return std::string(client) == lan_ && std::string(port) == absl::StrCat(m.internal_port);
  }

 private:
  // Our mapping of req's internal port: the same external port first, then
  // the IGD's table (bounded).
  absl::StatusOr<uint16_t> Find(const MapRequest& req) {
    const char* proto = req.proto == Proto::kUdp ? "UDP" : "TCP";
    MapResult probe;
    probe.proto = req.proto;
    probe.internal_port = req.internal_port;
    probe.external_port = req.external_port ? req.external_port : req.internal_port;
    absl::StatusOr<bool> same = StillMapped(probe);
    if (same.ok() && *same) return probe.external_port;
    for (int i = 0; i < 1024; ++i) {
      char index[16], ext[16] = {0}, client[64] = {0}, port[16] = {0}, p[8] = {0},
                      desc[128] = {0}, enabled[8] = {0}, host[64] = {0}, dur[32] = {0};
      snprintf(index, sizeof(index), "%d", i);
      int r = UPNP_GetGenericPortMappingEntry(urls_.controlURL, data_.first.servicetype, index,
                                              ext, client, port, p, desc, enabled, host, dur);
      if (r != UPNPCOMMAND_SUCCESS) break;  // 713 SpecifiedArrayIndexInvalid: the end
      uint16_t e = 0;
      if (std::string(client) == lan_ && std::string(port) == absl::StrCat(req.internal_port) &&
          absl::EqualsIgnoreCase(p, proto) && ParsePort(ext, &e)) {
        return e;
      }
    }
    return absl::NotFoundError(absl::StrCat("the IGD holds no mapping of ", ProtoName(req.proto),
                                            " port ", req.internal_port, " to ", lan_));
  }

  UPNPUrls urls_;
  IGDdatas data_;
  char lan_[64];
  bool connected_ = false;
  bool v2_ = false;
  Ipv4 gateway_{};
  Ipv4 local_{};
};

}  // namespace

Nonce StableNonce(Proto proto, uint16_t internal_port, const Ipv4& client) {
  Nonce n{};
  std::string id;
  std::getline(std::ifstream("/etc/machine-id"), id);
  uint8_t key[16] = {0};
  bool have = id.size() >= 32;
  for (size_t i = 0; have && i < 16; ++i) {
    int v = 0;
    if (!absl::SimpleHexAtoi(id.substr(2 * i, 2), &v)) have = false;
    key[i] = static_cast<uint8_t>(v);
  }
  if (!have) {
    std::random_device rd;
    for (auto& b : n) b = static_cast<uint8_t>(rd());
    return n;
  }
  uint8_t msg[9] = {static_cast<uint8_t>(proto), static_cast<uint8_t>(internal_port >> 8),
                    static_cast<uint8_t>(internal_port), client[0], client[1], client[2],
                    client[3], 0, 'P'};
  uint64_t a = SipHash24(key, msg, sizeof(msg));
  msg[7] = 1;
  uint64_t b = SipHash24(key, msg, sizeof(msg));
  std::memcpy(n.data(), &a, 8);
  std::memcpy(n.data() + 8, &b, 4);
  return n;
}

std::unique_ptr<MethodClient> NewPcpClient(std::unique_ptr<Transport> t, NowFn now, Schedule s) {
  return std::make_unique<PcpClient>(std::move(t), std::move(now), s);
}

std::unique_ptr<MethodClient> NewNatPmpClient(std::unique_ptr<Transport> t, NowFn now,
                                              Schedule s) {
  return std::make_unique<NatPmpClient>(std::move(t), std::move(now), s);
}

absl::StatusOr<std::unique_ptr<MethodClient>> NewUpnpClient(std::optional<Ipv4> gateway,
                                                            absl::Duration discover) {
  auto c = std::make_unique<UpnpClient>();
  if (absl::Status s = c->Init(gateway, discover); !s.ok()) return s;
  return std::unique_ptr<MethodClient>(std::move(c));
}

absl::StatusOr<Connection> Connect(const ClientOptions& o) {
  Ipv4 gw{};
  if (o.gateway) {
    gw = *o.gateway;
  } else {
    absl::StatusOr<Ipv4> d = DefaultGateway(o.route_file);
    if (!d.ok()) return d.status();
    gw = *d;
  }
  const bool any = o.method == Method::kAuto;
  Schedule s = o.schedule;
  if (any) s.budget = s.budget / 2;
  std::vector<std::string> why;
  auto attempt = [&](std::unique_ptr<MethodClient> c) -> absl::StatusOr<Connection> {
    absl::StatusOr<GatewayInfo> info = c->Probe();
    if (!info.ok()) return info.status();
    return Connection{std::move(c), *info};
  };
  absl::StatusCode last = absl::StatusCode::kUnavailable;
  for (Method m : {Method::kPcp, Method::kNatPmp, Method::kUpnp}) {
    if (!any && o.method != m) continue;
    absl::StatusOr<Connection> c = absl::UnavailableError("");
    if (m == Method::kUpnp) {
      absl::StatusOr<std::unique_ptr<MethodClient>> u =
          NewUpnpClient(o.gateway ? o.gateway : std::optional<Ipv4>(gw), o.upnp_discover);
      c = u.ok() ? attempt(std::move(*u)) : absl::StatusOr<Connection>(u.status());
    } else {
      absl::StatusOr<std::unique_ptr<Transport>> t = OpenUdpTransport(gw, o.port);
      if (!t.ok()) {
        c = t.status();
      } else {
        c = attempt(m == Method::kPcp ? NewPcpClient(std::move(*t), o.now, s)
                                      : NewNatPmpClient(std::move(*t), o.now, s));
      }
    }
    if (c.ok()) return c;
    last = c.status().code();
    why.push_back(absl::StrCat(MethodName(m), ": ", c.status().message()));
  }
  std::string msg = absl::StrCat("gateway ", Ipv4String(gw), ": ", absl::StrJoin(why, "; "));
  if (!any) return absl::Status(last, msg);
  return absl::UnavailableError(
      absl::StrCat(msg, " (no port-mapping protocol answers: is PCP/NAT-PMP or UPnP enabled on "
                        "the router?)"));
}

}  // namespace fabric::agent::upstream
