// fabricctl's logic: the commands of the agent's command-line client, each a
// function over the v1 gRPC stubs that prints to the streams it is given and
// returns the process exit code. agent/fabricctl.cc parses flags into
// Options and calls Run; tests call the same functions against an
// in-process server.
//
//   list [--json]                      mappings of every owner
//   status [--json]                    agent status
//   add PROTO HOSTPORT TARGETIP:PORT   an API mapping (--owner, --host_ip,
//                                      --description)
//   remove ID                          delete an API mapping
//   backup PATH                        snapshot the agent's state
//   diagnose [--json]                  compare kernel and store
//   health [--ready]                   for probes (--timeout)
//   upstream map|unmap|status ...      the LAN gateway, without the agent
//                                      (upstream_cmd.h)
//
// When the agent does not answer (no socket file, or the call is UNAVAILABLE:
// connection refused), list, status and diagnose read the store instead
// (offline.h): <--state_dir>/state.db read-only, and for diagnose this
// network namespace's kernel, headed by a line saying the agent is not
// running and when it last started and wrote its state.
//
// Exit codes (scripts, probes and the deploy manifests rely on them):
//   0 done (offline list and status included); 1 the agent refused or
//   failed (health: it does not answer, or with --ready is not ready;
//   diagnose, online or offline: needs attention); 2 usage error, or status:
//   the agent answers but is not ready; 3 the agent is down (no socket, or
//   UNAVAILABLE) and, for list, status and diagnose, there is no store to
//   read instead either.
//
// --json output is the protobuf JSON mapping of the response
// (google::protobuf::util::MessageToJsonString, proto field names,
// indented): always one valid JSON object, never assembled by hand.
//
// Threading: the functions keep no state; each call makes its own RPC and
// may run concurrently with others on the same stubs.
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/ctl/upstream_cmd.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "nat/backend/backend.h"

namespace fabric::agent::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;  // also: status says not ready
inline constexpr int kExitAgentDown = 3;

// Everything the command line sets besides the positional arguments.
struct Options {
  std::string socket = "/run/fabric-nat/agent.sock";
  // The agent's state dir, read when it does not answer.
  std::string state_dir = "/var/lib/fabric-nat";
  bool json = false;         // list, status, diagnose
  bool full = false;         // diagnose: read every element (DiagnoseRequest.full)
  std::string owner = "fabricctl";  // add
  std::string host_ip;       // add; empty: any address
  std::string description;   // add
  bool ready = false;        // health
  absl::Duration timeout = absl::Seconds(10);  // health
  // The clock for list's "expires in" column (tests fix it).
  absl::Time (*now)() = absl::Now;
  // Offline diagnose's read of the kernel; unset: the nftables backend's
  // Read() in this network namespace (tests give their own).
  std::function<absl::StatusOr<nat::KernelState>()> read_kernel;
  // upstream: --external, --lifetime, --gateway, --protocol, --keep.
  UpstreamOptions upstream;
};

// The usage text (fabricctl's program usage message; printed on a usage
// error).
const char* Usage();

// Runs one command line: args are the positional arguments after flag
// parsing, args[0] the command. Connects to options.socket over a unix
// socket; a missing socket file is exit 3 (health: 1) naming the path.
int Run(const std::vector<std::string>& args, const Options& options,
        std::ostream& out, std::ostream& err);

// One command each, over stubs the caller made. `args` as for Run (args[0]
// is the command's name).
int List(nat::v1::MappingService::StubInterface& stub, const Options& options,
         std::ostream& out, std::ostream& err);
int Status(nat::v1::AgentService::StubInterface& stub, const Options& options,
           std::ostream& out, std::ostream& err);
int Add(nat::v1::MappingService::StubInterface& stub, const std::vector<std::string>& args,
        const Options& options, std::ostream& out, std::ostream& err);
int Remove(nat::v1::MappingService::StubInterface& stub, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err);
// A relative PATH is made absolute against the current directory (the agent
// writes the file, from its own working directory).
int Backup(nat::v1::AgentService::StubInterface& stub, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err);
int Diagnose(nat::v1::AgentService::StubInterface& stub, const Options& options,
             std::ostream& out, std::ostream& err);
int Health(nat::v1::AgentService::StubInterface& stub, const Options& options,
           std::ostream& out, std::ostream& err);

// The printing half of list, status and diagnose, shared by the commands
// above and their offline forms (offline.h): text, or with options.json the
// response as JSON. Return the exit code (status: `code`; kExitFailed when
// JSON cannot be made). `live`: the response comes from a running agent
// (offline, status shows no repair count: only a running agent keeps one).
// `healthy_line`: what diagnose says when there are no findings.
int PrintList(const nat::v1::ListMappingsResponse& r, const Options& options,
              std::ostream& out, std::ostream& err);
int PrintStatus(const nat::v1::GetStatusResponse& r, bool live, int code,
                const Options& options, std::ostream& out, std::ostream& err);
int PrintDiagnose(const nat::v1::DiagnoseResponse& r, const std::string& healthy_line,
                  const Options& options, std::ostream& out, std::ostream& err);

}  // namespace fabric::agent::ctl
