// fabricctl's `upstream` commands: this host as a client of the LAN's own
// gateway (agent/upstream), without the agent — for an application that
// needs a port reachable from beyond the router (and one that rotates a
// random public port every hour).
//
//   upstream map PROTO PORT [--external PORT] [--lifetime 3600] [--gateway IP]
//                [--protocol auto|pcp|natpmp|upnp] [--json] [--keep]
//   upstream unmap PROTO PORT [--external PORT] [--gateway IP] [--protocol ...]
//   upstream status [--gateway IP] [--protocol ...] [--json]
//
// map prints "EXTERNAL_IP:PORT PROTO -> INTERNAL_IP:PORT via METHOD, ..."
// (the gateway may give another external port than asked: that is the one
// printed). With --keep it renews at half-life (agent/upstream Mapper: it
// also re-maps after a gateway restart or address change) printing a line
// per change, until SIGINT or SIGTERM, then deletes the mapping. unmap
// deletes it (PCP: the nonce is derived from the machine id, so another
// process repeats it; UPnP: found by internal port and our address).
// status asks every protocol (or the one given) and says which answer,
// with the external address and epoch.
//
// --json: map and unmap print one JSON object; map --keep prints one
// compact object per line (JSON Lines) per event; status one object.
//
// Exit codes: 0 done; 1 the gateway refused or did not answer (the error
// says which protocol and why); 2 usage.
//
// Threading: Upstream() runs on the calling thread (with --keep, a Mapper
// worker beside it); with --keep and no `stop` hook it blocks SIGINT and
// SIGTERM in the calling thread (before the worker starts) and waits for
// them with sigtimedwait.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/upstream/clients.h"

namespace fabric::agent::ctl {

struct UpstreamOptions {
  int external_port = 0;  // --external; 0: the internal port
  int lifetime = 3600;    // --lifetime, seconds
  std::string gateway;    // --gateway; empty: the default route's
  std::string protocol = "auto";  // --protocol
  bool keep = false;      // --keep
  // --keep: waits up to `d`; true once it is time to stop. Unset: SIGINT/SIGTERM.
  std::function<bool(absl::Duration d)> stop;
  // Tests: the gateway's PCP/NAT-PMP port, the exchange schedule, the
  // Mapper's poll interval.
  uint16_t gateway_port = upstream::kGatewayPort;
  upstream::Schedule schedule;
  absl::Duration poll_interval = absl::Seconds(5);
};

// args[0] == "upstream"; args[1] the subcommand.
int Upstream(const std::vector<std::string>& args, const UpstreamOptions& options, bool json,
             std::ostream& out, std::ostream& err);

}  // namespace fabric::agent::ctl
