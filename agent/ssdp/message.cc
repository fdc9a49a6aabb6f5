#include "agent/ssdp/message.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fabric::agent::ssdp {

namespace {

constexpr char kSearchLine[] = "M-SEARCH * HTTP/1.1";
constexpr char kDiscover[] = "\"ssdp:discover\"";
constexpr size_t kQuoteMax = 64;

// `s` for an error message: control and non-ASCII bytes as \xNN, cut at
// kQuoteMax bytes.
std::string Quote(absl::string_view s) {
  std::string out = "`";
  for (size_t i = 0; i < s.size() && i < kQuoteMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (s.size() > kQuoteMax) out += "...";
  out += "`";
  return out;
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// RFC 7230 tchar.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (absl::string_view("!#$%&'*+-.^_`|~").find(c) == absl::string_view::npos) return false;
  }
  return true;
}

// The next line of `text` from `*pos` without its CRLF (or bare LF); moves
// `*pos` past it.
absl::string_view NextLine(absl::string_view text, size_t* pos) {
  size_t end = text.find('\n', *pos);
  absl::string_view line;
  if (end == absl::string_view::npos) {
    line = text.substr(*pos);
    *pos = text.size();
  } else {
    line = text.substr(*pos, end - *pos);
    *pos = end + 1;
  }
  absl::ConsumeSuffix(&line, "\r");
  return line;
}

// A request line of another method ("NOTIFY * HTTP/1.1") or a status line:
// well-formed HTTPU, just not ours.
absl::Status NotASearch(absl::string_view line) {
  if (absl::StartsWith(line, "HTTP/")) {
    return absl::UnimplementedError(
        absl::StrCat("an HTTP response (", Quote(line), "), not an M-SEARCH"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() == 3 && IsToken(parts[0]) && !absl::EqualsIgnoreCase(parts[0], "M-SEARCH") &&
      absl::StartsWith(parts[2], "HTTP/1.")) {
    return absl::UnimplementedError(
        absl::StrCat("a ", Quote(parts[0]), " request, not an M-SEARCH"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request line must be `", kSearchLine, "`, got ", Quote(line)));
}

struct Urn {
  absl::string_view domain;
  absl::string_view kind;  // "device" or "service"
  absl::string_view name;
  int version = 0;
};

// "urn:<domain>:<kind>:<name>:<version>", version a positive integer.
std::optional<Urn> ParseUrn(absl::string_view s) {
  std::vector<absl::string_view> parts = absl::StrSplit(s, ':');
  if (parts.size() != 5 || parts[0] != "urn" || parts[1].empty() || parts[3].empty()) {
    return std::nullopt;
  }
  if (parts[2] != "device" && parts[2] != "service") return std::nullopt;
  int version = 0;
  if (!AllDigits(parts[4]) || parts[4].size() > 9 || !absl::SimpleAtoi(parts[4], &version) ||
      version < 1) {
    return std::nullopt;
  }
  return Urn{parts[1], parts[2], parts[3], version};
}

// Whether a search for `wanted` is answered by `ours`: same domain, kind and
// name, and no later version than ours.
bool Covers(absl::string_view ours, const Urn& wanted) {
  std::optional<Urn> u = ParseUrn(ours);
  return u && u->domain == wanted.domain && u->kind == wanted.kind &&
         u->name == wanted.name && wanted.version <= u->version;
}

std::vector<std::string> DistinctServices(const DeviceEntry& d) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& s : d.services) {
    if (seen.insert(s).second) out.push_back(s);
  }
  return out;
}

// FNV-1a-64, then MurmurHash3's fmix64 so that inputs differing in their
// last byte differ in every bit.
uint64_t Hash64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

absl::Status CheckField(absl::string_view name, absl::string_view value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " is empty"));
  if (!SafeHeaderValue(value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " holds a line break or another control character: ", Quote(value)));
  }
  return absl::OkStatus();
}

absl::Status CheckCommon(const Answer& answer, uint32_t boot_id, uint32_t config_id) {
  if (absl::Status s = CheckField("ST/NT", answer.st); !s.ok()) return s;
  if (absl::Status s = CheckField("USN", answer.usn); !s.ok()) return s;
  if (boot_id > kMaxBootId) {
    return absl::InvalidArgumentError(
        absl::StrCat("BOOTID.UPNP.ORG ", boot_id, " is above ", kMaxBootId, " (31 bits)"));
  }
  if (config_id > kMaxConfigId) {
    return absl::InvalidArgumentError(
        absl::StrCat("CONFIGID.UPNP.ORG ", config_id, " is above ", kMaxConfigId));
  }
  return absl::OkStatus();
}

absl::Status CheckAdvertised(absl::string_view location, absl::string_view server,
                             uint32_t max_age) {
  if (absl::Status s = CheckField("LOCATION", location); !s.ok()) return s;
  if (absl::Status s = CheckField("SERVER", server); !s.ok()) return s;
  if (max_age == 0) return absl::InvalidArgumentError("max-age must be at least 1 second");
  return absl::OkStatus();
}

}  // namespace

bool SafeHeaderValue(absl::string_view value) {
  for (char ch : value) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

absl::StatusOr<SearchRequest> ParseSearch(absl::string_view datagram) {
  if (datagram.size() > kMaxDatagram) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the datagram is ", datagram.size(), " bytes; an M-SEARCH is at most ", kMaxDatagram));
  }
  if (datagram.empty()) return absl::InvalidArgumentError("empty datagram");
  size_t pos = 0;
  absl::string_view request_line = NextLine(datagram, &pos);
  if (request_line != kSearchLine) return NotASearch(request_line);

  SearchRequest out;
  bool have_man = false, have_st = false, have_host = false, have_ua = false;
  int lines = 0;
  while (pos < datagram.size()) {
    absl::string_view line = NextLine(datagram, &pos);
    if (line.empty()) break;  // end of the headers; an M-SEARCH has no body
    if (++lines > kMaxHeaderLines) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", kMaxHeaderLines, " header lines"));
    }
    if (!SafeHeaderValue(line)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header line ", lines, " holds a control character: ", Quote(line)));
    }
    if (line[0] == ' ' || line[0] == '\t') {
      return absl::InvalidArgumentError(absl::StrCat(
          "header line ", lines, " is a continuation line (line folding is not accepted)"));
    }
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("header line ", lines, " has no colon: ", Quote(line)));
    }
    absl::string_view name = line.substr(0, colon);
    if (!IsToken(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("header line ", lines, ": ", Quote(name), " is not a header name"));
    }
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    auto once = [&](bool* seen) -> absl::Status {
      if (*seen) {
        return absl::InvalidArgumentError(
            absl::StrCat("more than one ", absl::AsciiStrToUpper(name), " header"));
      }
      *seen = true;
      return absl::OkStatus();
    };
    if (absl::EqualsIgnoreCase(name, "MAN")) {
      if (absl::Status s = once(&have_man); !s.ok()) return s;
      if (value != kDiscover) {
        return absl::InvalidArgumentError(absl::StrCat(
            "MAN must be ", kDiscover, " (with the quotes), got ", Quote(value)));
      }
    } else if (absl::EqualsIgnoreCase(name, "ST")) {
      if (absl::Status s = once(&have_st); !s.ok()) return s;
      if (value.empty()) return absl::InvalidArgumentError("ST is empty");
      out.st = std::string(value);
    } else if (absl::EqualsIgnoreCase(name, "MX")) {
      bool have_mx = out.mx.has_value();
      if (absl::Status s = once(&have_mx); !s.ok()) return s;
      int mx = 0;
      if (!AllDigits(value) || value.size() > 3 || !absl::SimpleAtoi(value, &mx) ||
          mx > kMaxMx) {
        return absl::InvalidArgumentError(absl::StrCat(
            "MX must be a whole number of seconds 0..", kMaxMx, ", got ", Quote(value)));
      }
      out.mx = mx;
    } else if (absl::EqualsIgnoreCase(name, "HOST")) {
      if (absl::Status s = once(&have_host); !s.ok()) return s;
      out.host = std::string(value);
    } else if (absl::EqualsIgnoreCase(name, "USER-AGENT")) {
      if (!have_ua) out.user_agent = std::string(value);
      have_ua = true;
    }
  }
  if (!have_man) {
    return absl::InvalidArgumentError(
        absl::StrCat("no MAN header (an M-SEARCH carries MAN: ", kDiscover, ")"));
  }
  if (!have_st) return absl::InvalidArgumentError("no ST header (the search target)");
  return out;
}

absl::Status CheckMulticastSearch(const SearchRequest& request) {
  if (!request.mx.has_value()) {
    return absl::InvalidArgumentError("no MX header: a multicast M-SEARCH must carry one");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> NormalizeUuid(absl::string_view uuid) {
  absl::string_view bare = uuid;
  if (bare.size() >= 5 && absl::EqualsIgnoreCase(bare.substr(0, 5), "uuid:")) {
    bare.remove_prefix(5);
  }
  bool ok = bare.size() == 36;
  for (size_t i = 0; ok && i < bare.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    ok = dash ? bare[i] == '-' : absl::ascii_isxdigit(static_cast<unsigned char>(bare[i]));
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a UUID: ", Quote(uuid), " (want 8-4-4-4-12 hex digits, optionally after uuid:)"));
  }
  return absl::StrCat("uuid:", absl::AsciiStrToLower(bare));
}

absl::StatusOr<std::string> DeriveUuid(absl::string_view root_uuid, int index) {
  if (index < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedded device index ", index, " must be at least 1"));
  }
  absl::StatusOr<std::string> root = NormalizeUuid(root_uuid);
  if (!root.ok()) return root.status();
  constexpr uint64_t kMask = (uint64_t{1} << 48) - 1;
  constexpr size_t kNode = 5 + 24;  // "uuid:" and "xxxxxxxx-xxxx-xxxx-xxxx-"
  uint64_t root_node = 0;
  if (!absl::SimpleHexAtoi(absl::string_view(*root).substr(kNode), &root_node)) root_node = 0;
  uint64_t node = Hash64(absl::StrCat(*root, "#", index)) & kMask;
  if (node == root_node) node = (node + 1) & kMask;
  return absl::StrCat(root->substr(0, kNode), absl::StrFormat("%012x", node));
}

absl::StatusOr<IgdUuids> DeriveIgdUuids(absl::string_view root_uuid) {
  IgdUuids out;
  absl::StatusOr<std::string> a = NormalizeUuid(root_uuid);
  if (!a.ok()) return a.status();
  absl::StatusOr<std::string> b = DeriveUuid(*a, 1);
  absl::StatusOr<std::string> c = DeriveUuid(*a, 2);
  if (!b.ok()) return b.status();
  if (!c.ok()) return c.status();
  out.root = std::move(*a);
  out.wan_device = std::move(*b);
  out.wan_connection_device = std::move(*c);
  return out;
}

absl::StatusOr<Device> InternetGatewayDevice(absl::string_view root_uuid) {
  absl::StatusOr<IgdUuids> ids = DeriveIgdUuids(root_uuid);
  if (!ids.ok()) return ids.status();
  Device d;
  d.uuid_root = ids->root;
  d.devices = {
      {ids->root, kInternetGatewayDevice2, {}},
      {ids->wan_device, kWanDevice2, {kWanCommonInterfaceConfig1}},
      {ids->wan_connection_device, kWanConnectionDevice2,
       {kWanIpConnection2, kWanIpv6FirewallControl1}},
  };
  if (absl::Status s = ValidateDevice(d); !s.ok()) return s;
  return d;
}

absl::Status ValidateDevice(const Device& device) {
  if (device.devices.empty()) return absl::InvalidArgumentError("the device tree is empty");
  if (device.uuid_root != device.devices[0].uuid) {
    return absl::InvalidArgumentError(absl::StrCat("uuid_root ", Quote(device.uuid_root),
                                                   " is not the first device's UUID ",
                                                   Quote(device.devices[0].uuid)));
  }
  std::set<std::string> uuids;
  for (const DeviceEntry& d : device.devices) {
    absl::StatusOr<std::string> n = NormalizeUuid(d.uuid);
    if (!n.ok()) return n.status();
    if (*n != d.uuid) {
      return absl::InvalidArgumentError(
          absl::StrCat("UUID ", Quote(d.uuid), " is not normalized (want ", *n, ")"));
    }
    if (!uuids.insert(d.uuid).second) {
      return absl::InvalidArgumentError(absl::StrCat("UUID ", d.uuid, " is used twice"));
    }
    std::optional<Urn> type = ParseUrn(d.type);
    if (!type || type->kind != "device" || !SafeHeaderValue(d.type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "device type ", Quote(d.type), " is not urn:<domain>:device:<name>:<version>"));
    }
    for (const std::string& s : d.services) {
      std::optional<Urn> u = ParseUrn(s);
      if (!u || u->kind != "service" || !SafeHeaderValue(s)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "service type ", Quote(s), " is not urn:<domain>:service:<name>:<version>"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<Answer> Advertisements(const Device& device) {
  std::vector<Answer> out;
  out.push_back({"upnp:rootdevice", device.uuid_root + "::upnp:rootdevice"});
  for (const DeviceEntry& d : device.devices) {
    out.push_back({d.uuid, d.uuid});
    out.push_back({d.type, absl::StrCat(d.uuid, "::", d.type)});
    for (const std::string& s : DistinctServices(d)) {
      out.push_back({s, absl::StrCat(d.uuid, "::", s)});
    }
  }
  return out;
}

std::vector<Answer> Match(const Device& device, absl::string_view st) {
  if (st == "ssdp:all") return Advertisements(device);
  if (st == "upnp:rootdevice") {
    return {{std::string(st), device.uuid_root + "::upnp:rootdevice"}};
  }
  std::vector<Answer> out;
  if (absl::StartsWithIgnoreCase(st, "uuid:")) {
    for (const DeviceEntry& d : device.devices) {
      if (absl::EqualsIgnoreCase(d.uuid, st)) out.push_back({std::string(st), d.uuid});
    }
    return out;
  }
  std::optional<Urn> wanted = ParseUrn(st);
  if (!wanted) return out;
  for (const DeviceEntry& d : device.devices) {
    bool hit = false;
    if (wanted->kind == "device") {
      hit = Covers(d.type, *wanted);
    } else {
      for (const std::string& s : d.services) hit = hit || Covers(s, *wanted);
    }
    if (hit) out.push_back({std::string(st), absl::StrCat(d.uuid, "::", st)});
  }
  return out;
}

std::string ServerString(absl::string_view os_version, absl::string_view product_version) {
  return absl::StrCat("Linux/", os_version, " UPnP/1.1 fabric-nat/", product_version);
}

absl::StatusOr<std::string> SearchResponse(const Answer& answer, absl::string_view location,
                                           absl::string_view server, uint32_t boot_id,
                                           uint32_t config_id, uint32_t max_age) {
  if (absl::Status s = CheckCommon(answer, boot_id, config_id); !s.ok()) return s;
  if (absl::Status s = CheckAdvertised(location, server, max_age); !s.ok()) return s;
  return absl::StrCat("HTTP/1.1 200 OK\r\n",                         //
                      "CACHE-CONTROL: max-age=", max_age, "\r\n",    //
                      "EXT:\r\n",                                    //
                      "LOCATION: ", location, "\r\n",                //
                      "SERVER: ", server, "\r\n",                    //
                      "ST: ", answer.st, "\r\n",                     //
                      "USN: ", answer.usn, "\r\n",                   //
                      "BOOTID.UPNP.ORG: ", boot_id, "\r\n",          //
                      "CONFIGID.UPNP.ORG: ", config_id, "\r\n\r\n");
}

absl::StatusOr<std::string> Notify(NotifyKind kind, const Answer& advertisement,
                                   absl::string_view location, absl::string_view server,
                                   uint32_t boot_id, uint32_t config_id, uint32_t max_age,
                                   absl::string_view host) {
  if (absl::Status s = CheckField("HOST", host); !s.ok()) return s;
  if (absl::Status s = CheckCommon(advertisement, boot_id, config_id); !s.ok()) return s;
  std::string ids = absl::StrCat("BOOTID.UPNP.ORG: ", boot_id, "\r\n",  //
                                 "CONFIGID.UPNP.ORG: ", config_id, "\r\n\r\n");
  if (kind == NotifyKind::kByebye) {
    return absl::StrCat("NOTIFY * HTTP/1.1\r\n",                   //
                        "HOST: ", host, "\r\n",                    //
                        "NT: ", advertisement.st, "\r\n",          //
                        "NTS: ssdp:byebye\r\n",                    //
                        "USN: ", advertisement.usn, "\r\n", ids);
  }
  if (absl::Status s = CheckAdvertised(location, server, max_age); !s.ok()) return s;
  return absl::StrCat("NOTIFY * HTTP/1.1\r\n",                        //
                      "HOST: ", host, "\r\n",                         //
                      "CACHE-CONTROL: max-age=", max_age, "\r\n",     //
                      "LOCATION: ", location, "\r\n",                 //
                      "NT: ", advertisement.st, "\r\n",               //
                      "NTS: ssdp:alive\r\n",                          //
                      "SERVER: ", server, "\r\n",                     //
                      "USN: ", advertisement.usn, "\r\n", ids);
}

}  // namespace fabric::agent::ssdp
