#include "agent/ctl/upstream_cmd.h"

#include <signal.h>
#include <time.h>

#include <condition_variable>
#include <memory>
#include <mutex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/ctl/ctl.h"
#include "agent/upstream/mapper.h"
#include "nlohmann/json.hpp"

namespace fabric::agent::ctl {

namespace up = ::fabric::agent::upstream;

namespace {

constexpr char kUsage[] =
    "usage: fabricctl upstream map tcp|udp PORT [--external PORT] [--lifetime 3600]\n"
    "                              [--gateway IP] [--protocol auto|pcp|natpmp|upnp] [--json] [--keep]\n"
    "       fabricctl upstream unmap tcp|udp PORT [--external PORT] [--gateway IP] [--protocol ...]\n"
    "       fabricctl upstream status [--gateway IP] [--protocol ...] [--json]\n";

int Usage(const std::string& why, std::ostream& err) {
  err << "fabricctl upstream: " << why << "\n" << kUsage;
  return kExitUsage;
}

int Failed(const std::string& what, const absl::Status& s, std::ostream& err) {
  err << "fabricctl upstream " << what << ": " << s.message() << "\n";
  return kExitFailed;
}

up::ClientOptions ClientOptionsFor(const UpstreamOptions& o, up::Method method,
                                   const std::optional<up::Ipv4>& gateway) {
  up::ClientOptions c;
  c.gateway = gateway;
  c.method = method;
  c.schedule = o.schedule;
  c.port = o.gateway_port;
  return c;
}

std::string Line(const up::MapResult& m, const up::Ipv4& gateway) {
  return absl::StrCat(up::Endpoint(m.external_ip, m.external_port), " ", up::ProtoName(m.proto),
                      " -> ", up::Endpoint(m.internal_ip, m.internal_port), " via ",
                      up::MethodName(m.method), ", lifetime ",
                      m.lifetime ? absl::StrCat(m.lifetime, "s") : std::string("permanent"),
                      ", gateway ", up::Ipv4String(gateway));
}

nlohmann::json Json(const up::MapResult& m, const up::Ipv4& gateway) {
  nlohmann::json j = {{"protocol", up::ProtoName(m.proto)},
                      {"external_ip", up::Ipv4String(m.external_ip)},
                      {"external_port", m.external_port},
                      {"internal_ip", up::Ipv4String(m.internal_ip)},
                      {"internal_port", m.internal_port},
                      {"lifetime", m.lifetime},
                      {"method", up::MethodName(m.method)},
                      {"gateway", up::Ipv4String(gateway)}};
  if (m.epoch) j["epoch"] = *m.epoch;
  return j;
}

// SIGINT/SIGTERM, blocked in this thread (and so in threads it starts
// afterwards) and taken with sigtimedwait.
class Signals {
 public:
  Signals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~Signals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  bool Wait(absl::Duration d) {
    timespec ts = absl::ToTimespec(d);
    return sigtimedwait(&set_, nullptr, &ts) > 0;
  }

 private:
  sigset_t set_, old_;
};

int Map(const up::MapRequest& req, const UpstreamOptions& o, up::Method method,
        const std::optional<up::Ipv4>& gateway, bool json, std::ostream& out, std::ostream& err) {
  if (!o.keep) {
    absl::StatusOr<up::Connection> c = up::Connect(ClientOptionsFor(o, method, gateway));
    if (!c.ok()) return Failed("map", c.status(), err);
    absl::StatusOr<up::MapResult> m = c->client->Map(req);
    if (!m.ok()) return Failed("map", m.status(), err);
    if (json) {
      out << Json(*m, c->info.gateway).dump(2) << "\n";
    } else {
      out << Line(*m, c->info.gateway) << "\n";
    }
    return kExitOk;
  }

  // --keep: a Mapper renews; this thread prints its reports and waits for
  // a signal. Signals are blocked before the worker starts.
  std::optional<Signals> signals;
  std::function<bool(absl::Duration)> stop = o.stop;
  if (!stop) {
    signals.emplace();
    stop = [&signals](absl::Duration d) { return signals->Wait(d); };
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<up::MappingStatus> reports;
  up::Mapper::Options mo;
  mo.client = ClientOptionsFor(o, method, gateway);
  mo.poll_interval = o.poll_interval;
  mo.on_change = [&](const up::MappingStatus& s) {
    std::lock_guard<std::mutex> l(mu);
    reports.push_back(s);
    cv.notify_all();
  };
  auto mapper = std::make_unique<up::Mapper>(std::move(mo));
  mapper->Map(req);
  const std::string name = absl::StrCat(up::ProtoName(req.proto), "/", req.internal_port);
  auto print = [&](const up::MappingStatus& s) {
    up::Ipv4 gw = mapper->Gateway().info.gateway;
    if (json) {
      nlohmann::json j = s.result ? Json(*s.result, gw) : nlohmann::json::object();
      const char* event = "error";
      switch (s.state) {
        case up::MappingStatus::State::kMapped: event = s.maps == 1 ? "mapped" : "renewed"; break;
        case up::MappingStatus::State::kRemoved: event = "removed"; break;
        default: break;
      }
      j["event"] = event;
      j["status"] = s.Describe(absl::Now());
      if (!s.error.ok()) j["error"] = std::string(s.error.message());
      out << j.dump() << std::endl;
    } else if (s.state == up::MappingStatus::State::kMapped && s.maps == 1) {
      out << Line(*s.result, gw) << std::endl;
    } else {
      out << name << ": " << s.Describe(absl::Now()) << std::endl;
    }
  };
  bool first = true;
  int code = kExitOk;
  while (true) {
    std::vector<up::MappingStatus> batch;
    {
      std::unique_lock<std::mutex> l(mu);
      cv.wait_for(l, std::chrono::milliseconds(first ? 100 : 0), [&] { return !reports.empty(); });
      batch.swap(reports);
    }
    for (const up::MappingStatus& s : batch) {
      print(s);
      if (first && s.state == up::MappingStatus::State::kFailing) {
        // The first attempt failed: say so and give up, as without --keep.
        mapper->Stop(false);
        return Failed("map", s.error, err);
      }
      first = false;
    }
    if (stop(absl::Milliseconds(first ? 0 : 200))) break;
  }
  mapper->Stop(/*unmap_all=*/true);
  std::lock_guard<std::mutex> l(mu);
  for (const up::MappingStatus& s : reports) {
    print(s);
    if (!s.error.ok()) code = kExitFailed;
  }
  if (!json && code == kExitOk) out << "unmapped " << name << "\n";
  return code;
}

int Unmap(const up::MapRequest& req, const UpstreamOptions& o, up::Method method,
          const std::optional<up::Ipv4>& gateway, bool json, std::ostream& out,
          std::ostream& err) {
  absl::StatusOr<up::Connection> c = up::Connect(ClientOptionsFor(o, method, gateway));
  if (!c.ok()) return Failed("unmap", c.status(), err);
  absl::Status s = c->client->Unmap(req, static_cast<uint16_t>(o.external_port));
  if (!s.ok()) return Failed("unmap", s, err);
  if (json) {
    out << nlohmann::json({{"protocol", up::ProtoName(req.proto)},
                           {"internal_port", req.internal_port},
                           {"method", up::MethodName(c->client->method())},
                           {"gateway", up::Ipv4String(c->info.gateway)},
                           {"unmapped", true}})
               .dump(2)
        << "\n";
  } else {
    out << "unmapped " << up::ProtoName(req.proto) << "/" << req.internal_port << " via "
        << up::MethodName(c->client->method()) << " (gateway " << up::Ipv4String(c->info.gateway)
        << ")\n";
  }
  return kExitOk;
}

int Status(const UpstreamOptions& o, up::Method method, const std::optional<up::Ipv4>& gateway,
           bool json, std::ostream& out, std::ostream& err) {
  std::optional<up::Ipv4> gw = gateway;
  std::string source = "given";
  if (!gw) {
    absl::StatusOr<up::Ipv4> d = up::DefaultGateway();
    if (!d.ok()) return Failed("status", d.status(), err);
    gw = *d;
    source = "the default route";
  }
  nlohmann::json j = {{"gateway", up::Ipv4String(*gw)}, {"protocols", nlohmann::json::object()}};
  std::string text = absl::StrCat("gateway:          ", up::Ipv4String(*gw), " (", source, ")\n");
  std::optional<up::GatewayInfo> first;
  std::string lines;
  for (up::Method m : {up::Method::kPcp, up::Method::kNatPmp, up::Method::kUpnp}) {
    if (method != up::Method::kAuto && method != m) continue;
    UpstreamOptions quick = o;
    if (method == up::Method::kAuto) quick.schedule.budget = o.schedule.budget / 2;
    absl::StatusOr<up::Connection> c = up::Connect(ClientOptionsFor(quick, m, gw));
    nlohmann::json p;
    std::string line = absl::StrCat("  ", up::MethodName(m), ":");
    line.resize(20, ' ');
    if (!c.ok()) {
      p = {{"answers", false}, {"error", std::string(c.status().message())}};
      absl::StrAppend(&line, "no: ", c.status().message());
    } else {
      const up::GatewayInfo& i = c->info;
      if (!first) first = i;
      p = {{"answers", true}, {"local_ip", up::Ipv4String(i.local_ip)}};
      absl::StrAppend(&line, "answers");
      if (i.external_ip) {
        p["external_ip"] = up::Ipv4String(*i.external_ip);
        absl::StrAppend(&line, ", external address ", up::Ipv4String(*i.external_ip));
      }
      if (i.epoch) {
        p["epoch"] = *i.epoch;
        absl::StrAppend(&line, ", epoch ", *i.epoch);
      }
      if (!i.note.empty()) {
        p["note"] = i.note;
        absl::StrAppend(&line, " (", i.note, ")");
      }
    }
    j["protocols"][up::MethodName(m)] = p;
    absl::StrAppend(&lines, line, "\n");
  }
  if (first) {
    j["protocol"] = up::MethodName(first->method);
    if (first->external_ip) j["external_ip"] = up::Ipv4String(*first->external_ip);
    if (first->epoch) j["epoch"] = *first->epoch;
    j["local_ip"] = up::Ipv4String(first->local_ip);
    absl::StrAppend(&text, "protocol:         ", up::MethodName(first->method), "\n");
    absl::StrAppend(&text, "external address: ",
                    first->external_ip ? up::Ipv4String(*first->external_ip) : "-", "\n");
    absl::StrAppend(&text, "epoch:            ",
                    first->epoch ? absl::StrCat(*first->epoch, "s") : "-", "\n");
    absl::StrAppend(&text, "local address:    ", up::Ipv4String(first->local_ip), "\n");
  } else {
    absl::StrAppend(&text, "protocol:         none answers\n");
  }
  absl::StrAppend(&text, "protocols:\n", lines);
  if (json) {
    out << j.dump(2) << "\n";
  } else {
    out << text;
  }
  return first ? kExitOk : kExitFailed;
}

}  // namespace

int Upstream(const std::vector<std::string>& args, const UpstreamOptions& o, bool json,
             std::ostream& out, std::ostream& err) {
  if (args.size() < 2) return Usage("expected map, unmap or status", err);
  const std::string& sub = args[1];
  absl::StatusOr<up::Method> method = up::ParseMethod(o.protocol);
  if (!method.ok()) return Usage(std::string(method.status().message()), err);
  std::optional<up::Ipv4> gateway;
  if (!o.gateway.empty()) {
    absl::StatusOr<up::Ipv4> g = up::ParseIpv4(o.gateway);
    if (!g.ok()) return Usage(absl::StrCat("--gateway: ", g.status().message()), err);
    gateway = *g;
  }
  if (sub == "status") {
    if (args.size() != 2) return Usage("status takes no arguments", err);
    return Status(o, *method, gateway, json, out, err);
  }
  if (sub != "map" && sub != "unmap") {
    return Usage(absl::StrCat("unknown subcommand \"", sub, "\""), err);
  }
  if (args.size() != 4) return Usage(absl::StrCat(sub, " takes PROTO and PORT"), err);
  absl::StatusOr<up::Proto> proto = up::ParseProto(args[2]);
  if (!proto.ok()) return Usage(std::string(proto.status().message()), err);
  int port = 0;
  if (!absl::SimpleAtoi(args[3], &port) || port < 1 || port > 65535) {
    return Usage(absl::StrCat("PORT \"", args[3], "\" is not a port (1-65535)"), err);
  }
  if (o.external_port < 0 || o.external_port > 65535) {
    return Usage(absl::StrCat("--external ", o.external_port, " is not a port (1-65535)"), err);
  }
  if (o.lifetime < 1) {
    return Usage(absl::StrCat("--lifetime ", o.lifetime, ": at least 1 second"), err);
  }
  up::MapRequest req;
  req.proto = *proto;
  req.internal_port = static_cast<uint16_t>(port);
  req.external_port = static_cast<uint16_t>(o.external_port);
  req.lifetime = static_cast<uint32_t>(o.lifetime);
  req.description = absl::StrCat("fabricctl ", up::ProtoName(req.proto), "/", port);
  if (sub == "map") return Map(req, o, *method, gateway, json, out, err);
  return Unmap(req, o, *method, gateway, json, out, err);
}

}  // namespace fabric::agent::ctl
