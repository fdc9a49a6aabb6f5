// fabric-agent remove-rules (agent.h: RemoveKernelRules): the uninstall
// step for the kernel side.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/agent.h"
#include "agent/instance_lock.h"
#include "nat/backend/iptables/iptables_backend.h"
#include "nat/backend/nftables/forward_accept.h"
#include "nat/backend/nftables/nftables_backend.h"

namespace fabric::agent {

absl::StatusOr<std::string> RemoveKernelRules(const AgentConfig& config) {
  absl::StatusOr<std::unique_ptr<InstanceLock>> lock =
      InstanceLock::Acquire(config.state_dir, config.run_dir, config.socket);
  if (!lock.ok()) return lock.status();
  std::vector<std::string> done;
  if (config.backend == "nftables") {
    absl::StatusOr<std::unique_ptr<nat::nftables::ForwardAccept>> fa =
        nat::nftables::ForwardAccept::Open();
    if (!fa.ok()) return fa.status();
    absl::StatusOr<nat::nftables::ForwardAccept::Result> r = (*fa)->Ensure({});
    if (!r.ok()) return r.status();
    if (r->changed()) done.push_back(absl::StrCat("forward accept rules ", r->ToString()));
    absl::StatusOr<std::unique_ptr<nat::NftablesBackend>> b = nat::NftablesBackend::Create();
    if (!b.ok()) return b.status();
    if (absl::Status s = (*b)->DeleteTable(); !s.ok()) return s;
    done.push_back("table inet fabric_nat deleted");
  } else if (config.backend == "iptables") {
    absl::StatusOr<std::unique_ptr<nat::IptablesBackend>> b = nat::IptablesBackend::Create();
    if (!b.ok()) return b.status();
    if (absl::Status s = (*b)->DeleteTable(); !s.ok()) return s;
    done.push_back("iptables FABRIC-* chains deleted");
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be nftables or iptables, not ", config.backend));
  }
  return absl::StrJoin(done, "; ");
}

}  // namespace fabric::agent
