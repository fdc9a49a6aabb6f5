// fabricctl's offline commands: list, status and diagnose when the agent
// does not answer, like a gateway's "direct" commands used from a console
// when its API is unreachable. They read the store read-only
// (store_reader.h: a private copy; the agent's files and lock are never
// touched) and, for diagnose, the kernel of the calling network namespace,
// and print what the online commands print (the same Print* functions of
// ctl.h), headed by
//
//   fabric-agent is not running: read from /var/lib/fabric-nat/state.db (read-only)
//     no agent socket at /run/fabric-nat/agent.sock; last started 2026-05-01 10:00:00 UTC
//     (pid 4242, /var/lib/fabric-nat/agent.lock); state last written ... (state.db)
//
// (two lines, the second one wrapped here; on stderr with --json, so that
// stdout stays one JSON object). When a process still holds agent.lock the
// first line says so instead ("fabric-agent does not answer, but pid N
// holds ...").
//
// Offline diagnose compares the store's DNAT entries (its mappings through
// ToNatMapping and ToElements, as the agent's State::Desired() builds them)
// with what table inet fabric_nat holds: missing and extra entries, a
// missing table, a damaged layout, a table made by another store. The
// network entries (masquerade, hairpin, localhost, IPv6 firewall) follow
// the agent's flags, which the store does not keep: they are counted, not
// compared. A kernel that cannot be read is a finding.
//
// Exit codes: list and status 0; diagnose 1 with findings, else 0; all
// three 3 when the store cannot be read either (both reasons on stderr).
#pragma once

#include <ostream>
#include <string>

#include "agent/ctl/ctl.h"

namespace fabric::agent::ctl {

// Why the online command could not be served.
struct Unreachable {
  // What fabricctl says when there is no store to fall back on either
  // ("no agent socket at ... (is fabric-agent running? --socket)",
  // "list: <gRPC message>").
  std::string error;
  // The same for the header ("no agent socket at PATH").
  std::string reason;
};

// Runs `cmd` ("list", "status" or "diagnose") offline.
int RunOffline(const std::string& cmd, const Unreachable& why, const Options& options,
               std::ostream& out, std::ostream& err);

}  // namespace fabric::agent::ctl
