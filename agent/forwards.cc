#include "agent/forwards.h"

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace fabric::agent {

namespace {

using json = nlohmann::json;

// "lo-hi" or "p" (a JSON number or string) -> [lo, hi].
absl::StatusOr<std::pair<uint16_t, uint16_t>> Ports(const json& v) {
  std::string text;
  if (v.is_number_unsigned()) {
    text = std::to_string(v.get<uint64_t>());
  } else if (v.is_string()) {
    text = v.get<std::string>();
  } else {
    return absl::InvalidArgumentError("must be a port number or \"lo-hi\"");
  }
  size_t dash = text.find('-');
  uint32_t lo = 0, hi = 0;
  bool ok = dash == std::string::npos
                ? absl::SimpleAtoi(text, &lo) && (hi = lo, true)
                : absl::SimpleAtoi(text.substr(0, dash), &lo) &&
                      absl::SimpleAtoi(text.substr(dash + 1), &hi);
  if (!ok || lo < 1 || hi > 65535 || lo > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text.substr(0, 32), "\" is not a port 1-65535 or a range lo-hi"));
  }
  return std::make_pair(static_cast<uint16_t>(lo), static_cast<uint16_t>(hi));
}

bool GoodName(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<StaticForward> ParseOne(const json& f) {
  auto field = [&](const char* name) -> const json* {
    auto it = f.find(name);
    return it == f.end() ? nullptr : &*it;
  };
  for (const auto& [key, value] : f.items()) {
    if (key != "name" && key != "protocol" && key != "host_ip" && key != "host_port" &&
        key != "target") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field \"", key.substr(0, 64),
          "\" (name, protocol, host_ip, host_port, target)"));
    }
  }
  StaticForward out;
  const json* name = field("name");
  if (name == nullptr || !name->is_string() || !GoodName(name->get<std::string>())) {
    return absl::InvalidArgumentError("name: 1-64 of A-Z a-z 0-9 . _ -, required");
  }
  out.name = name->get<std::string>();
  nat::PortMapping& m = out.mapping;
  const json* proto = field("protocol");
  if (proto == nullptr || !proto->is_string()) {
    return absl::InvalidArgumentError("protocol: tcp, udp or sctp, required");
  }
  absl::StatusOr<nat::Protocol> p = nat::ParseProtocol(proto->get<std::string>());
  if (!p.ok()) return absl::InvalidArgumentError(absl::StrCat("protocol: ", p.status().message()));
  m.protocol = *p;
  const json* target = field("target");
  if (target == nullptr || !target->is_string()) {
    return absl::InvalidArgumentError("target: \"address:port\" or \"address:lo-hi\", required");
  }
  std::string t = target->get<std::string>();
  size_t colon = t.rfind(':');
  std::string addr = colon == std::string::npos ? t : t.substr(0, colon);
  if (addr.size() >= 2 && addr.front() == '[' && addr.back() == ']') {
    addr = addr.substr(1, addr.size() - 2);
  }
  absl::StatusOr<nat::IpAddress> ip = nat::IpAddress::Parse(addr);
  if (colon == std::string::npos || !ip.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target: \"", t.substr(0, 64), "\" is not address:port (IPv6 as [address]:port)"));
  }
  absl::StatusOr<std::pair<uint16_t, uint16_t>> tports = Ports(json(t.substr(colon + 1)));
  if (!tports.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("target: ", tports.status().message()));
  }
  m.target_ip = *ip;
  m.target_port = tports->first;
  const json* host_port = field("host_port");
  if (host_port == nullptr) return absl::InvalidArgumentError("host_port: required");
  absl::StatusOr<std::pair<uint16_t, uint16_t>> hports = Ports(*host_port);
  if (!hports.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("host_port: ", hports.status().message()));
  }
  m.host_port = hports->first;
  m.port_count = static_cast<uint16_t>(hports->second - hports->first + 1);
  if (tports->first != tports->second && tports->second - tports->first + 1 != m.port_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target: ", tports->second - tports->first + 1, " ports for ", m.port_count,
        " host ports"));
  }
  if (const json* host_ip = field("host_ip"); host_ip != nullptr) {
    if (!host_ip->is_string()) return absl::InvalidArgumentError("host_ip: must be a string");
    std::string h = host_ip->get<std::string>();
    if (h == "0.0.0.0" && !m.target_ip.is_v4()) {
      return absl::InvalidArgumentError(
          "host_ip: \"0.0.0.0\" is IPv4 and the target IPv6; IPv4 clients to IPv6 hosts "
          "are not served (the proxy serves IPv6 clients to IPv4 hosts)");
    }
    if (h == "::" && !m.target_ip.is_v4()) {
      // Every IPv6 address for an IPv6 target: plain DNAT, as empty.
    } else if (!h.empty() && h != "0.0.0.0") {
      absl::StatusOr<nat::IpAddress> hip = nat::IpAddress::Parse(h);
      if (!hip.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("host_ip: \"", h.substr(0, 64), "\" is not an address"));
      }
      if (hip->family() != m.target_ip.family()) {
        if (hip->is_v4()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "host_ip: \"", h, "\" is IPv4 and the target IPv6; IPv4 clients to IPv6 hosts "
              "are not served (the proxy serves IPv6 clients to IPv4 hosts)"));
        }
        // IPv6 clients to an IPv4 host: the kernel cannot NAT between
        // families, the in-agent proxy serves it (TCP and UDP).
        if (m.protocol == nat::Protocol::kSctp) {
          return absl::InvalidArgumentError(
              "protocol: sctp cannot go through the IPv6-to-IPv4 proxy (tcp or udp)");
        }
        if (hip->IsMulticast() || hip->IsLoopback()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "host_ip: \"", h, "\" must be a unicast address of this host, or \"::\""));
        }
        out.proxy = true;
      }
      m.host_ip = *hip;
    }
  }
  if (out.proxy) {
    // Validate() wants the host of the target's family: check the target
    // with an IPv4 stand-in host, the IPv6 side was checked above.
    const nat::IpAddress& t = m.target_ip;
    if (t.IsUnspecified() || t.IsLoopback() || t.IsMulticast() || t.IsLimitedBroadcast()) {
      return absl::InvalidArgumentError(
          absl::StrCat("target: ", t.ToString(), " must be a routable unicast address"));
    }
    nat::PortMapping check = m;
    check.host_ip.reset();
    if (absl::Status s = check.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(std::string(s.message()));
    }
    return out;
  }
  if (absl::Status s = m.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(std::string(s.message()));
  }
  return out;
}

// One "snat" entry.
absl::StatusOr<nat::SnatRule> ParseSnat(const json& f, const ForwardsOptions& options) {
  for (const auto& [key, value] : f.items()) {
    if (key != "source" && key != "to" && key != "out_interface") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field \"", key.substr(0, 64), "\" (source, to, out_interface)"));
    }
  }
  nat::SnatRule out;
  auto source = f.find("source");
  if (source == f.end() || !source->is_string()) {
    return absl::InvalidArgumentError("source: a network \"address/length\", required");
  }
  std::string src = source->get<std::string>();
  absl::StatusOr<nat::Prefix> prefix = nat::Prefix::Parse(src);
  if (!prefix.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("source: \"", src.substr(0, 64),
                                                   "\" is not a network address/length"));
  }
  if (prefix->length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "source: \"", src, "\" would translate every host's traffic; name the network"));
  }
  if (!(prefix->Network() == *prefix)) {
    return absl::InvalidArgumentError(absl::StrCat("source: \"", src,
                                                   "\" has host bits set; the network is ",
                                                   prefix->Network().ToString()));
  }
  out.source = *prefix;
  auto to = f.find("to");
  if (to == f.end() || !to->is_string()) {
    return absl::InvalidArgumentError("to: an address, required");
  }
  std::string t = to->get<std::string>();
  absl::StatusOr<nat::IpAddress> ip = nat::IpAddress::Parse(t);
  if (!ip.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("to: \"", t.substr(0, 64), "\" is not an address"));
  }
  if (ip->family() != out.source.family()) {
    return absl::InvalidArgumentError(absl::StrCat("to: ", t, " is ", nat::FamilyName(ip->family()),
                                                   " but source ", src, " is ",
                                                   nat::FamilyName(out.source.family())));
  }
  if (ip->IsUnspecified() || ip->IsLoopback() || ip->IsMulticast() || ip->IsLimitedBroadcast()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "to: ", t, " must be a unicast address (not unspecified, loopback, multicast or "
        "broadcast)"));
  }
  out.to = *ip;
  auto iface = f.find("out_interface");
  if (iface == f.end()) {
    out.out_interface = options.default_out_interface;
  } else if (!iface->is_string()) {
    return absl::InvalidArgumentError("out_interface: must be an interface name (\"\": any)");
  } else {
    out.out_interface = iface->get<std::string>();
  }
  if (absl::Status s = out.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        iface == f.end() ? "out_interface (from --wan_interface): " : "out_interface: ",
        "\"", out.out_interface.substr(0, 64),
        "\" must be 1-15 printable bytes without '/', ':' or spaces (\"\": any)"));
  }
  return out;
}

}  // namespace

namespace {

// "forwards[2] (\"web\")": entry `i` of array `list`, named by its `key`
// field when it has a string one (for error messages).
std::string Where(const char* list, size_t i, const json& entry, const char* key) {
  std::string where = absl::StrCat(list, "[", i, "]");
  if (entry.is_object()) {
    auto k = entry.find(key);
    if (k != entry.end() && k->is_string()) {
      absl::StrAppend(&where, " (\"", k->get<std::string>().substr(0, 64), "\")");
    }
  }
  return where;
}

}  // namespace

absl::StatusOr<StaticConfig> ParseForwards(absl::string_view text, const std::string& path,
                                           const ForwardsOptions& options) {
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (text.size() > kMaxForwardsFile) {
    return fail(absl::StrCat("larger than ", kMaxForwardsFile, " bytes"));
  }
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return fail("not JSON");
  if (!doc.is_object()) return fail("must be an object {\"forwards\": [...]}");
  for (const auto& [key, value] : doc.items()) {
    if (key != "forwards" && key != "snat") {
      return fail(absl::StrCat("unknown key \"", key.substr(0, 64), "\" (forwards, snat)"));
    }
  }
  StaticConfig config;
  if (auto snat = doc.find("snat"); snat != doc.end()) {
    if (!snat->is_array()) return fail("snat: must be an array");
    if (snat->size() > nat::kMaxSnatRules) {
      return fail(absl::StrCat("snat: ", snat->size(), " entries; at most ", nat::kMaxSnatRules));
    }
    std::map<std::pair<nat::Prefix, std::string>, size_t> seen;
    for (size_t i = 0; i < snat->size(); ++i) {
      const json& f = (*snat)[i];
      const std::string where = Where("snat", i, f, "source");
      if (!f.is_object()) return fail(absl::StrCat(where, ": must be an object"));
      absl::StatusOr<nat::SnatRule> one = ParseSnat(f, options);
      if (!one.ok()) return fail(absl::StrCat(where, ": ", one.status().message()));
      auto [it, fresh] = seen.emplace(std::make_pair(one->source, one->out_interface), i);
      if (!fresh) {
        return fail(absl::StrCat(where, ": source ", one->source.ToString(), " via ",
                                 one->out_interface.empty() ? "any interface" : one->out_interface,
                                 " is already translated by snat[", it->second, "]"));
      }
      config.snat.push_back(*std::move(one));
    }
  }
  auto list = doc.find("forwards");
  if (list == doc.end()) return config;
  if (!list->is_array()) return fail("forwards: must be an array");
  if (list->size() > kMaxForwards) {
    return fail(absl::StrCat("forwards: ", list->size(), " entries; at most ", kMaxForwards));
  }
  std::vector<StaticForward>& out = config.forwards;
  std::set<std::string> names;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& f = (*list)[i];
    const std::string where = Where("forwards", i, f, "name");
    if (!f.is_object()) return fail(absl::StrCat(where, ": must be an object"));
    absl::StatusOr<StaticForward> one = ParseOne(f);
    if (!one.ok()) return fail(absl::StrCat(where, ": ", one.status().message()));
    if (!names.insert(one->name).second) {
      return fail(absl::StrCat(where, ": name: \"", one->name, "\" is used twice"));
    }
    out.push_back(*std::move(one));
  }
  return config;
}

absl::StatusOr<StaticConfig> LoadForwardsFile(const std::string& path,
                                              const ForwardsOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string text(kMaxForwardsFile + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return ParseForwards(text, path, options);
}

}  // namespace fabric::agent
