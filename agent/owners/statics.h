// Static port forwards (--forwards_file, agent/forwards.h): mappings of
// owner kind static, owner id the forward's name, held through the same
// allocator as everything else (a conflict names the holder). The file is
// the truth: ApplyStaticForwards makes the static mappings exactly the
// file's in one transaction (unchanged forwards are kept as they are, with
// their ids; changed ones are replaced; the rest removed), or changes
// nothing.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "agent/core/txn.h"
#include "nat/conntrack/conntrack.h"
#include "nat/types.h"

namespace fabric::agent {

struct StaticForward {
  std::string name;
  nat::PortMapping mapping;  // host_ip nullopt: every local address
};

struct StaticDiff {
  int added = 0, removed = 0, kept = 0;
};

namespace owners {

absl::StatusOr<StaticDiff> ApplyStaticForwards(Txn& txn, const std::vector<StaticForward>& wanted,
                                               nat::ConntrackCleaner* conntrack);

}  // namespace owners
}  // namespace fabric::agent
