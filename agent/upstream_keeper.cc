#include "agent/upstream_keeper.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/log.h"
#include "nlohmann/json.hpp"

namespace fabric::agent {

namespace {

using json = nlohmann::json;

std::string RecordsPath(const std::string& dir) { return dir + "/upstream.json"; }

std::optional<upstream::Proto> ProtoOf(nat::Protocol p) {
  if (p == nat::Protocol::kTcp) return upstream::Proto::kTcp;
  if (p == nat::Protocol::kUdp) return upstream::Proto::kUdp;
  return std::nullopt;
}

}  // namespace

absl::StatusOr<UpstreamKeeper::Options> UpstreamKeeper::ParseOptions(
    const std::string& mode, absl::Duration lifetime, const std::string& gateway,
    const std::string& state_dir) {
  Options o;
  o.by_default = mode != "off";
  if (o.by_default) {
    absl::StatusOr<upstream::Method> m = upstream::ParseMethod(mode);
    if (!m.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--upstream must be off, auto, pcp, natpmp or upnp, not \"", mode.substr(0, 64), "\""));
    }
    o.method = *m;
  }
  if (lifetime < absl::Seconds(120) || lifetime > absl::Hours(24)) {
    return absl::InvalidArgumentError("--upstream_lifetime must be 120s to 24h");
  }
  o.lifetime = lifetime;
  if (!gateway.empty()) {
    absl::StatusOr<upstream::Ipv4> g = upstream::ParseIpv4(gateway);
    if (!g.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--upstream_gateway: \"", gateway.substr(0, 64), "\" is not an IPv4 address"));
    }
    o.gateway = *g;
  }
  o.state_dir = state_dir;
  return o;
}

absl::StatusOr<std::unique_ptr<UpstreamKeeper>> UpstreamKeeper::Start(AgentCore* core,
                                                                      Options options) {
  std::unique_ptr<UpstreamKeeper> k(new UpstreamKeeper(core, std::move(options)));
  k->Load();
  k->thread_ = std::thread([p = k.get()] { p->Run(); });
  return k;
}

UpstreamKeeper::~UpstreamKeeper() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  std::unique_ptr<upstream::Mapper> m;
  {
    std::lock_guard<std::mutex> lock(mu_);
    m = std::move(mapper_);
  }
  // The gateway keeps them for their lifetime: the next start renews.
  if (m) m->Stop(/*unmap_all=*/false);
}

void UpstreamKeeper::Load() {
  std::ifstream in(RecordsPath(options_.state_dir));
  if (!in) return;
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("mappings") || !j["mappings"].is_array() ||
      j["mappings"].size() > 65536) {
    LogLine(absl::StrCat("upstream: ", RecordsPath(options_.state_dir),
                         " is not what this agent writes; starting without it"));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const json& m : j["mappings"]) {
    if (!m.is_object() || !m.value("protocol", json()).is_string() ||
        !m.value("port", json()).is_number_unsigned() ||
        !m.value("external_port", json()).is_number_unsigned()) {
      continue;
    }
    absl::StatusOr<upstream::Proto> proto = upstream::ParseProto(m["protocol"].get<std::string>());
    uint64_t port = m["port"].get<uint64_t>(), ext = m["external_port"].get<uint64_t>();
    if (!proto.ok() || port == 0 || port > 65535 || ext == 0 || ext > 65535) continue;
    records_[{*proto, static_cast<uint16_t>(port)}] =
        Record{static_cast<uint16_t>(ext), m.value("method", std::string())};
  }
}

void UpstreamKeeper::Save() {
  json list = json::array();
  for (const auto& [key, r] : records_) {
    list.push_back({{"protocol", upstream::ProtoName(key.first)},
                    {"port", key.second},
                    {"external_port", r.external_port},
                    {"method", r.method}});
  }
  const std::string path = RecordsPath(options_.state_dir);
  const std::string tmp = path + ".tmp";
  std::string text = json{{"mappings", list}}.dump() + "\n";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            fsync(fd) == 0;
  if (fd >= 0) close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    LogLine(absl::StrCat("upstream: cannot write ", path,
                         "; a restart may ask the gateway for other ports"));
  }
}

std::map<std::pair<upstream::Proto, uint16_t>, std::string> UpstreamPorts(
    const Snapshot& snap, bool by_default, int max_range_ports) {
  std::map<std::pair<upstream::Proto, uint16_t>, std::string> out;
  // Off, and no network asks: nothing to look at (100k mappings otherwise,
  // on every snapshot).
  if (!by_default && snap.state.network.upstream_asked == 0) return out;
  snap.state.mappings.ForEach([&](const std::string& id, const MappingRecord& rec) {
    v1::OwnerKind kind = rec.owner().kind();
    if (kind != v1::OWNER_KIND_CNI && kind != v1::OWNER_KIND_API &&
        kind != v1::OWNER_KIND_STATIC) {
      return;
    }
    std::optional<upstream::Proto> proto = ProtoOf(rec.nat.protocol);
    if (!proto.has_value() || !rec.nat.target_ip.is_v4()) return;
    bool on = by_default;
    if (kind == v1::OWNER_KIND_CNI) {
      if (const AttachmentRecord* a = snap.state.attachments.Find(rec.owner().id());
          a != nullptr && a->proto.options().has_upstream()) {
        on = a->proto.options().upstream();
      }
    }
    if (!on) return;
    int n = std::min<int>(rec.nat.port_count, max_range_ports);
    for (int i = 0; i < n; ++i) {
      out.emplace(std::make_pair(*proto, static_cast<uint16_t>(rec.nat.host_port + i)), id);
    }
  });
  return out;
}

void UpstreamKeeper::EnsureMapper() {
  std::lock_guard<std::mutex> lock(mu_);
  if (mapper_) return;
  upstream::Mapper::Options o;
  o.client.method = options_.method;
  o.client.gateway = options_.gateway;
  o.poll_interval = options_.poll_interval;
  o.on_change = [this](const upstream::MappingStatus& s) { OnChange(s); };
  o.on_gateway = [this](const upstream::GatewayStatus& g) {
    std::string d = g.Describe();
    {
      std::lock_guard<std::mutex> l(mu_);
      if (d == gateway_) return;
      gateway_ = d;
    }
    LogLine(absl::StrCat("upstream: ", d));
  };
  mapper_ = std::make_unique<upstream::Mapper>(std::move(o));
}

void UpstreamKeeper::OnChange(const upstream::MappingStatus& s) {
  const Key key{s.request.proto, s.request.internal_port};
  std::lock_guard<std::mutex> lock(mu_);
  if (s.state == upstream::MappingStatus::State::kRemoved) {
    if (records_.erase(key) > 0) Save();
    LogLine(absl::StrCat("upstream: ", upstream::ProtoName(key.first), " ", key.second,
                         s.error.ok() ? " removed from the gateway"
                                      : absl::StrCat(" not removed: ", s.error.message())));
    return;
  }
  if (s.state == upstream::MappingStatus::State::kMapped && s.result.has_value()) {
    Record r{s.result->external_port, upstream::MethodName(s.result->method)};
    auto it = records_.find(key);
    if (it == records_.end() || it->second.external_port != r.external_port ||
        it->second.method != r.method) {
      records_[key] = r;
      Save();
    }
    if (s.maps == 1) {
      LogLine(absl::StrCat("upstream: ", upstream::ProtoName(key.first), " ", key.second, " -> ",
                           s.Describe(absl::Now())));
    }
  } else if (s.state == upstream::MappingStatus::State::kFailing && s.failures == 1) {
    LogLine(absl::StrCat("upstream: ", upstream::ProtoName(key.first), " ", key.second, ": ",
                         s.Describe(absl::Now())));
  }
}

void UpstreamKeeper::ForgetStale(const std::map<Key, Record>& stale) {
  upstream::ClientOptions c;
  c.method = options_.method;
  c.gateway = options_.gateway;
  absl::StatusOr<upstream::Connection> conn = upstream::Connect(c);
  for (const auto& [key, r] : stale) {
    upstream::MapRequest req;
    req.proto = key.first;
    req.internal_port = key.second;
    req.external_port = r.external_port;
    absl::Status s = conn.ok() ? conn->client->Unmap(req, r.external_port) : conn.status();
    LogLine(absl::StrCat("upstream: ", upstream::ProtoName(key.first), " ", key.second,
                         " went while the agent was down: ",
                         s.ok() ? "removed from the gateway"
                                : absl::StrCat("not removed (", s.message(),
                                               "); it ends with its lifetime")));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, r] : stale) records_.erase(key);
  Save();
}

void UpstreamKeeper::Run() {
  std::shared_ptr<const Snapshot> last;
  bool first = true;
  while (!stop_) {
    std::shared_ptr<const Snapshot> snap = core_->snapshot();
    if (snap->ready && snap != last) {
      last = snap;
      std::map<Key, std::string> wanted =
          UpstreamPorts(*snap, options_.by_default, kMaxRangePorts);
      if (first) {
        // What was mapped for ports that went while the agent was down.
        first = false;
        std::map<Key, Record> stale;
        {
          std::lock_guard<std::mutex> lock(mu_);
          for (const auto& [key, r] : records_) {
            if (wanted.count(key) == 0) stale.emplace(key, r);
          }
        }
        if (!stale.empty()) ForgetStale(stale);
      }
      if (!wanted.empty()) EnsureMapper();
      std::vector<upstream::MapRequest> add;
      std::vector<Key> remove;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [key, id] : wanted) {
          if (mapped_.count(key) > 0) continue;
          upstream::MapRequest req;
          req.proto = key.first;
          req.internal_port = key.second;
          auto rec = records_.find(key);
          req.external_port = rec != records_.end() ? rec->second.external_port : key.second;
          req.lifetime = static_cast<uint32_t>(absl::ToInt64Seconds(options_.lifetime));
          req.description = absl::StrCat("fabric-nat ", id);
          add.push_back(req);
        }
        for (const auto& [key, id] : mapped_) {
          if (wanted.count(key) == 0) remove.push_back(key);
        }
        mapped_ = wanted;
        for (const upstream::MapRequest& r : add) mapper_->Map(r);
        for (const Key& k : remove) mapper_->Unmap(k.first, k.second);
      }
    }
    absl::SleepFor(options_.scan_interval);
  }
}

std::string UpstreamKeeper::StatusOf(const v1::PortMapping& m) const {
  upstream::Proto proto = m.protocol() == v1::PROTOCOL_UDP ? upstream::Proto::kUdp
                                                           : upstream::Proto::kTcp;
  if (m.protocol() != v1::PROTOCOL_UDP && m.protocol() != v1::PROTOCOL_TCP) return "";
  const Key key{proto, static_cast<uint16_t>(m.host_port())};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = mapped_.find(key);
  if (it == mapped_.end() || it->second != m.id() || !mapper_) return "";
  std::optional<upstream::MappingStatus> s = mapper_->Get(key.first, key.second);
  if (!s.has_value()) return "";
  std::string d = s->Describe(absl::Now());
  if (m.port_count() > UpstreamKeeper::kMaxRangePorts) {
    absl::StrAppend(&d, " (first ", kMaxRangePorts, " ports only)");
  }
  return d;
}

std::string UpstreamKeeper::StatusLine() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!mapper_) return "upstream mapping: nothing to map on the LAN's gateway yet";
  return absl::StrCat("upstream mapping on the LAN's gateway: ",
                      gateway_.empty() ? "connecting" : gateway_, ", ", mapped_.size(),
                      " port(s)");
}

}  // namespace fabric::agent
