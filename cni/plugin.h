// The fabric-nat CNI plugin's logic, independent of process concerns: given
// the CNI environment and stdin, it talks to the agent once and produces the
// exact stdout and exit code the CNI spec asks for.
//
// Spec versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0. Commands: ADD, DEL,
// CHECK (0.4.0+), VERSION, GC and STATUS (1.1.0+).
//
// Error codes: the spec's (1 incompatible version, 2 unsupported field,
// 3 unknown container, 4 bad environment, 6 undecodable input, 7 invalid
// network config, 11 try again later, 50 not available) and the plugin's
// own from 100.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cni/agent_client.h"
#include "cni/versions.h"

namespace fabric::cni {

// The plugin's own error codes.
enum PluginCode {
  kPortHeld = 100,          // a host port is held by someone else
  kPortsExhausted = 101,    // no free port in the range
  kRulesMissing = 102,      // CHECK: the kernel lacks the attachment's rules
  kAgentError = 103,        // any other agent failure
};

struct Invocation {
  std::map<std::string, std::string> env;  // CNI_* variables
  std::string stdin_data;
};

struct Outcome {
  int exit_code = 0;
  std::string stdout_data;
};

// Makes the agent client for a socket path (from the config's agentSocket).
using ClientFactory =
    std::function<std::unique_ptr<AgentClient>(const std::string& socket)>;

Outcome RunPlugin(const Invocation& in, const ClientFactory& client);

// Compares dotted versions ("0.4.0" < "1.0.0"). Malformed parts count as 0.
int CompareVersions(const std::string& a, const std::string& b);

}  // namespace fabric::cni
