// fabricctl: a command-line client of the agent's v1 API. Flags and wiring
// only; the commands live in agent/ctl (see ctl.h for them and their exit
// codes; offline.h for list, status and diagnose when the agent does not
// answer).
//
//   fabricctl [--socket PATH] [--state_dir DIR] list [--json]
//   fabricctl [--socket PATH] [--state_dir DIR] status [--json]
//   fabricctl [--socket PATH] add PROTO HOSTPORT TARGETIP:PORT [--owner ID] [--host_ip IP]
//   fabricctl [--socket PATH] remove ID
//   fabricctl [--socket PATH] backup PATH
//   fabricctl [--socket PATH] [--state_dir DIR] diagnose [--json] [--full]
//   fabricctl [--socket PATH] health [--ready]
//   fabricctl upstream map|unmap PROTO PORT [--external PORT] [--lifetime S] [--gateway IP]
//             [--protocol auto|pcp|natpmp|upnp] [--json] [--keep]
//   fabricctl upstream status [--gateway IP] [--protocol ...] [--json]
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/ctl/ctl.h"
#include "agent/version.h"

ABSL_FLAG(std::string, socket, "/run/fabric-nat/agent.sock", "agent socket");
ABSL_FLAG(std::string, state_dir, "/var/lib/fabric-nat",
          "the agent's state dir: list, status and diagnose read its store "
          "(read-only) when the agent does not answer");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");
ABSL_FLAG(bool, full, false,
          "diagnose: read and compare every element of the kernel's table, even when its "
          "generation shows that only the agent changed it since it last matched");
ABSL_FLAG(std::string, owner, "fabricctl", "owner id for add");
ABSL_FLAG(std::string, host_ip, "", "host address for add (default: any)");
ABSL_FLAG(std::string, description, "", "description for add");
ABSL_FLAG(bool, ready, false,
          "health: succeed only when the agent is ready (store open, kernel "
          "reconciled), not merely answering");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10),
          "how long to wait for the agent's answer");
ABSL_FLAG(int32_t, external, 0, "upstream: the external port to ask for (default: the same)");
ABSL_FLAG(int32_t, lifetime, 3600, "upstream map: the lifetime to ask for, seconds");
ABSL_FLAG(std::string, gateway, "", "upstream: the gateway (default: the default route's)");
ABSL_FLAG(std::string, protocol, "auto", "upstream: auto, pcp, natpmp or upnp");
ABSL_FLAG(bool, keep, false,
          "upstream map: renew until SIGINT/SIGTERM, then delete the mapping");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(fabric::agent::ctl::Usage());
  absl::FlagsUsageConfig usage;
  usage.version_string = [] { return absl::StrCat("fabricctl ", fabric::kVersion, "\n"); };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> args(positional.begin() + 1, positional.end());

  fabric::agent::ctl::Options options;
  options.socket = absl::GetFlag(FLAGS_socket);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.json = absl::GetFlag(FLAGS_json);
  options.full = absl::GetFlag(FLAGS_full);
  options.owner = absl::GetFlag(FLAGS_owner);
  options.host_ip = absl::GetFlag(FLAGS_host_ip);
  options.description = absl::GetFlag(FLAGS_description);
  options.ready = absl::GetFlag(FLAGS_ready);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.upstream.external_port = absl::GetFlag(FLAGS_external);
  options.upstream.lifetime = absl::GetFlag(FLAGS_lifetime);
  options.upstream.gateway = absl::GetFlag(FLAGS_gateway);
  options.upstream.protocol = absl::GetFlag(FLAGS_protocol);
  options.upstream.keep = absl::GetFlag(FLAGS_keep);
  return fabric::agent::ctl::Run(args, options, std::cout, std::cerr);
}
