#include "agent/upnp/frontend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/version.h"

namespace fabric::agent::upnp {

absl::StatusOr<std::string> LoadOrCreateDeviceUuid(const std::string& state_dir) {
  const std::string path = absl::StrCat(state_dir, "/upnp-uuid");
  if (std::ifstream in(path); in) {
    std::stringstream text;
    text << in.rdbuf();
    absl::StatusOr<std::string> uuid =
        ssdp::NormalizeUuid(absl::StripAsciiWhitespace(text.str()));
    if (!uuid.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " holds no UUID (", uuid.status().message(), "); remove it to make a new one"));
    }
    return uuid;
  }
  unsigned char b[16];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, b, sizeof b) != static_cast<ssize_t>(sizeof b)) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError("cannot read /dev/urandom for the UPnP device UUID");
  }
  close(fd);
  b[6] = (b[6] & 0x0F) | 0x40;  // version 4
  b[8] = (b[8] & 0x3F) | 0x80;  // RFC 4122 variant
  std::string uuid = absl::StrFormat(
      "uuid:%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
      b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  const std::string tmp = path + ".tmp";
  fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::string line = uuid + "\n";
  bool ok = fd >= 0 && write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
            fsync(fd) == 0;
  if (fd >= 0) close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", strerror(errno)));
  }
  return uuid;
}

absl::StatusOr<std::unique_ptr<UpnpFrontend>> UpnpFrontend::Start(AgentCore* core,
                                                                  Metrics* metrics,
                                                                  FrontendConfig config) {
  std::unique_ptr<UpnpFrontend> f(new UpnpFrontend());
  absl::StatusOr<std::string> uuid = LoadOrCreateDeviceUuid(config.state_dir);
  if (!uuid.ok()) return uuid.status();
  f->uuid_ = *uuid;
  absl::StatusOr<ssdp::IgdUuids> ids = ssdp::DeriveIgdUuids(*uuid);
  if (!ids.ok()) return ids.status();
  DescriptionConfig& d = config.server.description;
  d.root_uuid = ids->root;
  d.wan_device_uuid = ids->wan_device;
  d.wan_connection_device_uuid = ids->wan_connection_device;
  d.model_number = kVersion;
  d.ipv6_firewall = config.server.igd.ipv6_firewall;
  absl::StatusOr<std::unique_ptr<UpnpServer>> http =
      UpnpServer::Start(core, metrics, config.server);
  if (!http.ok()) return http.status();
  f->http_ = std::move(*http);

  absl::StatusOr<ssdp::Device> device = ssdp::InternetGatewayDevice(*uuid);
  if (!device.ok()) return device.status();
  if (!d.ipv6_firewall) {
    // Advertise only the services the description lists.
    for (ssdp::DeviceEntry& e : device->devices) {
      std::vector<std::string> kept;
      for (std::string& s : e.services) {
        if (s != kIpv6Firewall.type) kept.push_back(std::move(s));
      }
      e.services = std::move(kept);
    }
  }
  ssdp::ServerConfig s;
  s.lan_interfaces = config.server.lan_interfaces;
  s.http_port = f->http_->port();
  s.description_path = kRootDescPath;
  s.device = *std::move(device);
  s.notify_interval = config.notify_interval;
  s.port = config.ssdp_port;
  // BOOTID.UPNP.ORG grows with every start (UDA 1.1 1.2.2): the start time.
  s.boot_id = static_cast<uint32_t>(time(nullptr)) & ssdp::kMaxBootId;
  s.version = kVersion;
  absl::StatusOr<std::unique_ptr<ssdp::SsdpServer>> ssdp = ssdp::SsdpServer::Start(s);
  if (!ssdp.ok()) return ssdp.status();
  f->ssdp_ = std::move(*ssdp);
  return f;
}

UpnpFrontend::~UpnpFrontend() {
  ssdp_.reset();
  http_.reset();
}

}  // namespace fabric::agent::upnp
