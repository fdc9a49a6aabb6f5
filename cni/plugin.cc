#include "cni/plugin.h"

#include <arpa/inet.h>

#include <algorithm>
#include <optional>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cni/go_json.h"
#include "nlohmann/json.hpp"

namespace fabric::cni {

using json = nlohmann::json;

namespace {

constexpr char kDefaultSocket[] = "/run/fabric-nat/agent.sock";

struct CniError {
  int code;
  std::string msg;
  std::string details;
  // The config's version, when known before the error.
  std::string version;
};

Outcome ErrorOutcome(const std::string& version, const CniError& e) {
  std::string v = !version.empty() ? version : e.version;
  json out = {{"cniVersion", v.empty() ? "1.1.0" : v},
              {"code", e.code},
              {"msg", e.msg}};
  if (!e.details.empty()) out["details"] = e.details;
  return Outcome{1, out.dump(4) + "\n"};
}

bool Supported(const std::string& v) {
  const auto& all = SupportedVersions();
  return std::find(all.begin(), all.end(), v) != all.end();
}

// The network configuration, as far as fabric-nat reads it.
struct Config {
  std::string version;
  std::string name;
  std::string socket = kDefaultSocket;
  bool masquerade = false;
  bool hairpin = true;
  bool localhost = false;
  // "snatAddress": fixed-address SNAT instead of masquerade for the
  // container's networks of its family; 4 or 6 (0: none).
  std::string snat_address;
  int snat_family = 0;
  // "upstream": map the ports on the LAN's gateway too (or not), whatever
  // the agent's --upstream says; unset: as it says.
  std::optional<bool> upstream;
  json port_mappings = json::array();
  std::optional<json> prev_result;
  json raw;
};

// Reads a boolean key; anything but a JSON bool is a config error.
std::optional<CniError> ReadBool(const json& j, const char* key, bool* out) {
  if (!j.contains(key)) return std::nullopt;
  if (!j[key].is_boolean()) {
    return CniError{7, absl::StrCat("invalid network config: \"", key,
                                    "\" must be true or false"),
                    j[key].dump()};
  }
  *out = j[key].get<bool>();
  return std::nullopt;
}

// The family (4 or 6) of a unicast address literal; 0 for anything else
// (not an address; unspecified, loopback, multicast or broadcast).
int UnicastFamily(const std::string& text) {
  unsigned char b[16] = {};
  if (inet_pton(AF_INET, text.c_str(), b) == 1) {
    bool all_ones = b[0] == 255 && b[1] == 255 && b[2] == 255 && b[3] == 255;
    bool zero = b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] == 0;
    if (zero || b[0] == 127 || (b[0] & 0xf0) == 0xe0 || all_ones) return 0;
    return 4;
  }
  if (inet_pton(AF_INET6, text.c_str(), b) == 1) {
    bool zero = true;
    for (int i = 0; i < 15; ++i) zero = zero && b[i] == 0;
    if ((zero && (b[15] == 0 || b[15] == 1)) || b[0] == 0xff) return 0;
    return 6;
  }
  return 0;
}

// Bounds on what a runtime may hand the plugin: a network configuration
// with a prevResult is a few KiB; nlohmann's parser and printer recurse, so
// a deep enough nesting would exhaust the stack (30,000 levels crashed it).
constexpr size_t kMaxInput = 1 << 20;
constexpr int kMaxDepth = 64;

// The deepest nesting of objects and arrays in `data` (strings skipped).
int NestingDepth(const std::string& data) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char ch : data) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (ch == '\\') {
        escaped = true;
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '{' || ch == '[') {
      deepest = std::max(deepest, ++depth);
    } else if (ch == '}' || ch == ']') {
      --depth;
    }
  }
  return deepest;
}

// Parses stdin. `version_only`: VERSION needs nothing but cniVersion.
std::variant<Config, CniError> ParseConfig(const std::string& data) {
  Config c;
  if (data.size() > kMaxInput) {
    return CniError{6, absl::StrCat("failed to decode the network configuration: ",
                                    data.size(), " bytes, more than ", kMaxInput),
                    ""};
  }
  if (int depth = NestingDepth(data); depth > kMaxDepth) {
    return CniError{6, absl::StrCat("failed to decode the network configuration: nested ",
                                    depth, " levels deep, more than ", kMaxDepth),
                    ""};
  }
  try {
    c.raw = json::parse(data);
  } catch (const json::exception& e) {
    return CniError{6, "failed to decode the network configuration (stdin is "
                       "not valid JSON)",
                    e.what()};
  }
  if (!c.raw.is_object()) {
    return CniError{6, "failed to decode the network configuration: not a "
                       "JSON object", ""};
  }
  const json& j = c.raw;
  // cniVersion is the version the runtime chose; a config that only lists
  // cniVersions (1.1.0) gets the highest one both sides support.
  if (j.contains("cniVersion") && j["cniVersion"].is_string()) {
    c.version = j["cniVersion"].get<std::string>();
  } else if (j.contains("cniVersions") && j["cniVersions"].is_array()) {
    for (const json& v : j["cniVersions"]) {
      if (v.is_string() && Supported(v.get<std::string>()) &&
          (c.version.empty() || CompareVersions(v.get<std::string>(), c.version) > 0)) {
        c.version = v.get<std::string>();
      }
    }
  }
  if (c.version.empty()) {
    if (!j.contains("cniVersion") || !j["cniVersion"].is_string()) {
      return CniError{7, "invalid network config: \"cniVersion\" is missing", ""};
    }
    c.version = j["cniVersion"].get<std::string>();
  }
  // From here on, errors are reported in the config's version.
  auto error = [&c](CniError e) {
    e.version = c.version;
    return e;
  };
  if (j.contains("name") && j["name"].is_string()) c.name = j["name"].get<std::string>();
  if (j.contains("agentSocket")) {
    if (!j["agentSocket"].is_string() || j["agentSocket"].get<std::string>().empty()) {
      return error(CniError{7, "invalid network config: \"agentSocket\" must be a path",
                      j["agentSocket"].dump()});
    }
    c.socket = j["agentSocket"].get<std::string>();
  }
  for (auto [key, out] : {std::pair<const char*, bool*>{"masquerade", &c.masquerade},
                          {"hairpin", &c.hairpin},
                          {"localhost", &c.localhost}}) {
    if (auto e = ReadBool(j, key, out)) return error(*e);
  }
  if (j.contains("upstream")) {
    bool up = false;
    if (auto e = ReadBool(j, "upstream", &up)) return error(*e);
    c.upstream = up;
  }
  if (j.contains("snatAddress") && !j["snatAddress"].is_null()) {
    const json& v = j["snatAddress"];
    if (!v.is_string() || (c.snat_family = UnicastFamily(v.get<std::string>())) == 0) {
      return error(CniError{7, "invalid network config: \"snatAddress\" must be a unicast IPv4 "
                               "or IPv6 address (not unspecified, loopback, multicast or "
                               "broadcast)",
                            v.dump().substr(0, 256)});
    }
    c.snat_address = v.get<std::string>();
  }
  // runtimeConfig and its entries come from runtimes that build them from
  // Go structs (containerd's go-cni sends "HostPort"): keys match as Go's
  // encoding/json matches them.
  if (j.contains("runtimeConfig") && j["runtimeConfig"].is_object()) {
    GoKey key = FindGoKey(j["runtimeConfig"], "portMappings");
    if (!key.ambiguous.empty()) {
      return error(CniError{7, absl::StrCat("invalid network config: runtimeConfig has ",
                                            key.ambiguous,
                                            ", keys that differ only in case"), ""});
    }
    if (key.value != nullptr) {
      if (!key.value->is_array()) {
        return error(CniError{7, absl::StrCat("invalid network config: runtimeConfig.",
                                              key.spelling, " must be a list"),
                              key.value->dump()});
      }
      c.port_mappings = *key.value;
    }
  }
  if (j.contains("prevResult") && !j["prevResult"].is_null()) {
    if (!j["prevResult"].is_object()) {
      return error(CniError{7, "invalid network config: prevResult must be an object", ""});
    }
    c.prev_result = j["prevResult"];
  }
  return c;
}

// The previous result in the layout of `version`: 0.3.x and 0.4.0 carry
// "version" in each IP; 1.0.0 and later do not.
json ConvertResult(json result, const std::string& version) {
  result["cniVersion"] = version;
  bool legacy = CompareVersions(version, "1.0.0") < 0;
  if (result.contains("ips") && result["ips"].is_array()) {
    for (json& ip : result["ips"]) {
      if (!ip.is_object()) continue;
      if (legacy) {
        std::string addr =
            ip.contains("address") && ip["address"].is_string() ? ip["address"].get<std::string>() : "";
        ip["version"] = addr.find(':') != std::string::npos ? "6" : "4";
      } else {
        ip.erase("version");
      }
    }
  }
  return result;
}

// What a prevResult says about the container's interface.
struct Addresses {
  std::vector<std::string> container;  // "10.22.0.5/16"
  std::string host_interface;          // e.g. the bridge
};

Addresses FromPrevResult(const json& prev, const std::string& ifname,
                         const std::string& netns) {
  Addresses out;
  std::vector<int> container_ifs;
  if (prev.contains("interfaces") && prev["interfaces"].is_array()) {
    const json& ifs = prev["interfaces"];
    for (size_t i = 0; i < ifs.size(); ++i) {
      const json& f = ifs[i];
      if (!f.is_object()) continue;
      auto str = [&f](const char* key) {
        return f.contains(key) && f[key].is_string() ? f[key].get<std::string>() : "";
      };
      std::string name = str("name");
      std::string sandbox = str("sandbox");
      if (!sandbox.empty() && (name == ifname || sandbox == netns)) {
        container_ifs.push_back(static_cast<int>(i));
      } else if (sandbox.empty() && out.host_interface.empty()) {
        out.host_interface = name;
      }
    }
  }
  if (prev.contains("ips") && prev["ips"].is_array()) {
    for (const json& ip : prev["ips"]) {
      if (!ip.is_object() || !ip.contains("address") || !ip["address"].is_string()) continue;
      bool ours = true;
      if (ip.contains("interface") && ip["interface"].is_number_integer()) {
        int idx = ip["interface"].get<int>();
        ours = container_ifs.empty() ||
               std::find(container_ifs.begin(), container_ifs.end(), idx) !=
                   container_ifs.end();
      }
      if (ours) out.container.push_back(ip["address"].get<std::string>());
    }
  }
  return out;
}

std::optional<CniError> ParsePortMappings(const json& pms,
                                          v1::Attachment* attachment) {
  for (size_t i = 0; i < pms.size(); ++i) {
    const json& p = pms[i];
    std::string where = absl::StrCat("runtimeConfig.portMappings[", i, "]");
    if (!p.is_object()) {
      return CniError{7, absl::StrCat("invalid network config: ", where,
                                      " must be an object"), p.dump()};
    }
    // Each field as Go decodes it: "hostPort", else "HostPort" or any
    // other spelling that differs only in case.
    const json* fields[4] = {};
    const char* names[4] = {"hostPort", "containerPort", "protocol", "hostIP"};
    for (int f = 0; f < 4; ++f) {
      GoKey key = FindGoKey(p, names[f]);
      if (!key.ambiguous.empty()) {
        return CniError{7, absl::StrCat("invalid network config: ", where, " has ",
                                        key.ambiguous, ", keys that differ only in case"),
                        p.dump()};
      }
      fields[f] = key.value;
    }
    const json *host_port = fields[0], *container_port = fields[1],
               *protocol = fields[2], *host_ip = fields[3];
    auto port = [&](const char* key, const json* v, uint32_t* out) -> std::optional<CniError> {
      if (v == nullptr) {
        return CniError{7, absl::StrCat("invalid network config: ", where, ".",
                                        key, " is missing"), p.dump()};
      }
      if (!v->is_number_integer() || v->get<int64_t>() < 1 || v->get<int64_t>() > 65535) {
        return CniError{7, absl::StrCat("invalid network config: ", where, ".",
                                        key, " must be 1-65535"), p.dump()};
      }
      *out = static_cast<uint32_t>(v->get<int64_t>());
      return std::nullopt;
    };
    v1::PortMappingRequest* r = attachment->add_port_mappings();
    uint32_t host = 0, container = 0;
    if (auto e = port("hostPort", host_port, &host)) return e;
    if (auto e = port("containerPort", container_port, &container)) return e;
    r->set_host_port(host);
    r->set_container_port(container);
    std::string proto = "tcp";
    if (protocol != nullptr) {
      if (!protocol->is_string()) {
        return CniError{7, absl::StrCat("invalid network config: ", where,
                                        ".protocol must be a string"), p.dump()};
      }
      proto = protocol->get<std::string>();
      std::transform(proto.begin(), proto.end(), proto.begin(), ::tolower);
    }
    if (proto == "tcp" || proto.empty()) {
      r->set_protocol(v1::PROTOCOL_TCP);
    } else if (proto == "udp") {
      r->set_protocol(v1::PROTOCOL_UDP);
    } else if (proto == "sctp") {
      r->set_protocol(v1::PROTOCOL_SCTP);
    } else {
      return CniError{7, absl::StrCat("invalid network config: ", where,
                                      ".protocol \"", proto,
                                      "\" is not tcp, udp or sctp"), p.dump()};
    }
    if (host_ip != nullptr) {
      if (!host_ip->is_string()) {
        return CniError{7, absl::StrCat("invalid network config: ", where,
                                        ".hostIP must be a string"), p.dump()};
      }
      r->set_host_ip(host_ip->get<std::string>());
    }
  }
  return std::nullopt;
}

CniError FromAgent(const absl::Status& s, const std::string& socket) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return CniError{11, std::string(s.message()),
                      absl::StrCat("agent socket ", socket)};
    case absl::StatusCode::kInvalidArgument:
      return CniError{7, absl::StrCat("invalid network config: ", s.message()), ""};
    case absl::StatusCode::kAlreadyExists:
      return CniError{kPortHeld, std::string(s.message()), ""};
    case absl::StatusCode::kResourceExhausted:
      return CniError{kPortsExhausted, std::string(s.message()), ""};
    case absl::StatusCode::kNotFound:
      return CniError{3, std::string(s.message()), ""};
    case absl::StatusCode::kFailedPrecondition:
      return CniError{kRulesMissing, std::string(s.message()), ""};
    default:
      return CniError{kAgentError, absl::StrCat("fabric-agent: ", s.message()), ""};
  }
}

std::string Env(const Invocation& in, const char* key) {
  auto it = in.env.find(key);
  return it == in.env.end() ? "" : it->second;
}

std::optional<CniError> RequireEnv(const Invocation& in,
                                   const std::vector<const char*>& keys) {
  std::vector<std::string> missing;
  for (const char* k : keys) {
    if (Env(in, k).empty()) missing.push_back(k);
  }
  if (missing.empty()) return std::nullopt;
  return CniError{4, absl::StrCat("missing environment variable(s): ",
                                  absl::StrJoin(missing, ", ")), ""};
}

v1::AttachmentKey KeyOf(const Invocation& in, const Config& c) {
  v1::AttachmentKey k;
  k.set_container_id(Env(in, "CNI_CONTAINERID"));
  k.set_ifname(Env(in, "CNI_IFNAME"));
  k.set_network_name(c.name);
  return k;
}

}  // namespace

int CompareVersions(const std::string& a, const std::string& b) {
  std::vector<std::string> pa = absl::StrSplit(a, '.');
  std::vector<std::string> pb = absl::StrSplit(b, '.');
  for (size_t i = 0; i < std::max(pa.size(), pb.size()); ++i) {
    int x = 0, y = 0;
    if (i < pa.size()) (void)absl::SimpleAtoi(pa[i], &x);
    if (i < pb.size()) (void)absl::SimpleAtoi(pb[i], &y);
    if (x != y) return x < y ? -1 : 1;
  }
  return 0;
}

Outcome RunPluginUnchecked(const Invocation& in, const ClientFactory& make_client);

Outcome RunPlugin(const Invocation& in, const ClientFactory& make_client) {
  // Every field is type-checked where it is read; should a value of an
  // unexpected type slip through, answer with a decode error rather than
  // abort without one.
  try {
    return RunPluginUnchecked(in, make_client);
  } catch (const nlohmann::json::exception& e) {
    return ErrorOutcome("", {6, "failed to decode the network configuration", e.what()});
  }
}

Outcome RunPluginUnchecked(const Invocation& in, const ClientFactory& make_client) {
  std::string command = Env(in, "CNI_COMMAND");
  if (command.empty()) {
    return ErrorOutcome("", {4, "missing environment variable(s): CNI_COMMAND", ""});
  }
  if (command == "VERSION") {
    std::string version = "1.1.0";
    if (!in.stdin_data.empty()) {
      auto parsed = ParseConfig(in.stdin_data);
      if (auto* c = std::get_if<Config>(&parsed)) version = c->version;
    }
    json out = {{"cniVersion", version},
                {"supportedVersions", SupportedVersions()}};
    return Outcome{0, out.dump(4) + "\n"};
  }
  if (command != "ADD" && command != "DEL" && command != "CHECK" &&
      command != "GC" && command != "STATUS") {
    return ErrorOutcome("", {4, absl::StrCat("unknown CNI_COMMAND \"", command,
                                             "\": expected ADD, DEL, CHECK, GC, "
                                             "STATUS or VERSION"), ""});
  }

  auto parsed = ParseConfig(in.stdin_data);
  if (auto* e = std::get_if<CniError>(&parsed)) return ErrorOutcome("", *e);
  Config& c = std::get<Config>(parsed);
  if (!Supported(c.version)) {
    return ErrorOutcome(c.version,
                        {1, absl::StrCat("incompatible CNI version ", c.version,
                                         ": fabric-nat supports ",
                                         absl::StrJoin(SupportedVersions(), ", ")),
                         ""});
  }
  auto fail = [&](const CniError& e) { return ErrorOutcome(c.version, e); };
  std::unique_ptr<AgentClient> agent;
  auto client = [&]() -> AgentClient& {
    if (!agent) agent = make_client(c.socket);
    return *agent;
  };

  if (command == "STATUS") {
    if (CompareVersions(c.version, "1.1.0") < 0) {
      return fail({1, absl::StrCat("config version ", c.version,
                                   " does not allow STATUS (needs 1.1.0)"), ""});
    }
    absl::StatusOr<v1::GetStatusResponse> st = client().GetStatus();
    if (!st.ok()) {
      return fail({50, absl::StrCat("plugin not available: ", st.status().message()),
                   absl::StrCat("agent socket ", c.socket)});
    }
    if (!st->ready()) {
      return fail({50, absl::StrCat("plugin not available: agent not ready: ",
                                    st->reason()), ""});
    }
    return Outcome{0, ""};
  }

  if (command == "GC") {
    if (CompareVersions(c.version, "1.1.0") < 0) {
      return fail({1, absl::StrCat("config version ", c.version,
                                   " does not allow GC (needs 1.1.0)"), ""});
    }
    if (auto e = RequireEnv(in, {"CNI_PATH"})) return fail(*e);
    v1::GarbageCollectRequest req;
    req.set_network_name(c.name);
    // libcni 1.2.0-1.2.2 also sent "cni.dev/attachments". Without either,
    // every attachment would look stale: refuse rather than delete all.
    if (!c.raw.contains("cni.dev/valid-attachments") &&
        !c.raw.contains("cni.dev/attachments")) {
      return fail({7, "invalid network config: GC needs cni.dev/valid-attachments", ""});
    }
    for (const char* key : {"cni.dev/valid-attachments", "cni.dev/attachments"}) {
      if (!c.raw.contains(key)) continue;
      const json& list = c.raw[key];
      if (!list.is_array()) {
        return fail({7, absl::StrCat("invalid network config: \"", key,
                                     "\" must be a list"), list.dump()});
      }
      for (const json& a : list) {
        if (!a.is_object() || !a.contains("containerID") || !a["containerID"].is_string() ||
            !a.contains("ifname") || !a["ifname"].is_string()) {
          return fail({7, absl::StrCat("invalid network config: every \"", key,
                                       "\" entry needs a containerID and an ifname"),
                       a.dump()});
        }
        v1::AttachmentKey* k = req.add_valid_attachments();
        k->set_container_id(a["containerID"].get<std::string>());
        k->set_ifname(a["ifname"].get<std::string>());
        k->set_network_name(c.name);
      }
      break;
    }
    absl::StatusOr<v1::GarbageCollectResponse> r = client().GarbageCollect(req);
    if (!r.ok()) return fail(FromAgent(r.status(), c.socket));
    return Outcome{0, ""};
  }

  if (command == "DEL") {
    if (auto e = RequireEnv(in, {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"})) {
      return fail(*e);
    }
    absl::Status s = client().Detach(KeyOf(in, c));
    if (!s.ok()) return fail(FromAgent(s, c.socket));
    return Outcome{0, ""};
  }

  // ADD and CHECK.
  if (auto e = RequireEnv(in, {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"})) {
    return fail(*e);
  }
  if (command == "CHECK" && CompareVersions(c.version, "0.4.0") < 0) {
    return fail({1, absl::StrCat("config version ", c.version,
                                 " does not allow CHECK (needs 0.4.0)"), ""});
  }
  if (!c.prev_result.has_value()) {
    return fail({7, absl::StrCat("invalid network config: fabric-nat is a "
                                 "chained plugin and ", command,
                                 " needs prevResult (put it after a plugin "
                                 "that creates the interface, e.g. bridge)"), ""});
  }
  if (command == "CHECK") {
    absl::Status s = client().Check(KeyOf(in, c));
    if (!s.ok()) return fail(FromAgent(s, c.socket));
    return Outcome{0, ""};
  }

  v1::Attachment a;
  *a.mutable_key() = KeyOf(in, c);
  a.set_netns_path(Env(in, "CNI_NETNS"));
  Addresses addrs = FromPrevResult(*c.prev_result, Env(in, "CNI_IFNAME"),
                                   Env(in, "CNI_NETNS"));
  for (const std::string& addr : addrs.container) a.add_container_addresses(addr);
  a.set_host_interface(addrs.host_interface);
  a.mutable_options()->set_masquerade(c.masquerade);
  if (c.upstream.has_value()) a.mutable_options()->set_upstream(*c.upstream);
  a.mutable_options()->set_hairpin(c.hairpin);
  a.mutable_options()->set_localhost(c.localhost);
  if (!c.snat_address.empty()) {
    bool family_found = false;
    for (const std::string& addr : addrs.container) {
      family_found = family_found ||
                     (addr.find(':') != std::string::npos ? 6 : 4) == c.snat_family;
    }
    if (!family_found) {
      return fail({7, absl::StrCat("invalid network config: \"snatAddress\" ", c.snat_address,
                                   " is IPv", c.snat_family,
                                   " but prevResult names no IPv", c.snat_family,
                                   " address for the container interface"),
                   ""});
    }
    a.mutable_options()->set_snat_address(c.snat_address);
  }
  if (auto e = ParsePortMappings(c.port_mappings, &a)) return fail(*e);
  if (a.port_mappings_size() > 0 && a.container_addresses_size() == 0) {
    return fail({7, "invalid network config: prevResult names no IP address "
                    "for the container interface, so ports cannot be published",
                 ""});
  }
  // Always attach, even with nothing to publish: CHECK, DEL and GC then
  // find the attachment the runtime knows about.
  absl::StatusOr<v1::AttachResponse> r = client().Attach(a);
  if (!r.ok()) return fail(FromAgent(r.status(), c.socket));
  return Outcome{0, ConvertResult(*c.prev_result, c.version).dump(4) + "\n"};
}

}  // namespace fabric::cni
