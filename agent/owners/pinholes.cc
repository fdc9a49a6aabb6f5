#include "agent/owners/pinholes.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/core/convert.h"

namespace fabric::agent::owners {

namespace {

PinholeResult Refuse(Txn& txn, PinholeOutcome outcome, std::string detail) {
  txn.Discard();
  return {outcome, 0, std::move(detail)};
}

void Put(Txn& txn, const PinholeRecord& rec, bool is_new) {
  txn.write().put_pinholes.push_back(rec.proto);
  if (is_new) txn.batch().add.pinholes.insert(rec.nat);
  txn.state().pinholes.Put(absl::StrCat(rec.proto.unique_id()), rec);
}

void Remove(Txn& txn, const PinholeRecord& rec) {
  txn.write().delete_pinholes.push_back(rec.proto.unique_id());
  txn.batch().remove.pinholes.insert(rec.nat);
  txn.state().pinholes.Erase(absl::StrCat(rec.proto.unique_id()));
}

// The lowest unique id (1-65535) no live pinhole holds.
std::optional<uint32_t> FreeId(const State& st) {
  std::vector<bool> used(65536, false);
  st.pinholes.ForEach([&](const std::string&, const PinholeRecord& p) {
    used[p.proto.unique_id() & 0xFFFF] = true;
  });
  for (uint32_t id = 1; id <= 65535; ++id) {
    if (!used[id]) return id;
  }
  return std::nullopt;
}

}  // namespace

PinholeOutcome PinholeOf(const State& st, const nat::IpAddress& client, uint32_t unique_id,
                         const PinholeRecord** out) {
  const PinholeRecord* rec = st.pinholes.Find(absl::StrCat(unique_id));
  if (rec == nullptr) return PinholeOutcome::kNoSuchEntry;
  if (rec->nat.internal != client) return PinholeOutcome::kNotAuthorized;
  *out = rec;
  return PinholeOutcome::kOk;
}

PinholeResult Pinholes(Txn& txn, const PinholeRequest& r, const LeasePolicy& policy) {
  State& st = txn.state();
  if (st.firewall6_interface.empty()) {
    return Refuse(txn, PinholeOutcome::kFirewallDisabled,
                  "the IPv6 firewall is off (--ipv6_firewall)");
  }
  const absl::Time expires = txn.now() + absl::Seconds(r.lease_seconds);
  if (r.op != PinholeRequest::Op::kAdd) {
    const PinholeRecord* found = nullptr;
    PinholeOutcome o = PinholeOf(st, r.client, r.unique_id, &found);
    if (o != PinholeOutcome::kOk) {
      return Refuse(txn, o,
                    o == PinholeOutcome::kNoSuchEntry
                        ? absl::StrCat("no pinhole ", r.unique_id)
                        : absl::StrCat("pinhole ", r.unique_id, " belongs to another host"));
    }
    PinholeRecord rec = *found;
    if (r.op == PinholeRequest::Op::kDelete) {
      Remove(txn, rec);
      return {PinholeOutcome::kOk, r.unique_id, absl::StrCat("deleted pinhole ", r.unique_id)};
    }
    *rec.proto.mutable_expires_at() = ToTimestamp(expires);
    Put(txn, rec, /*is_new=*/false);
    return {PinholeOutcome::kOk, r.unique_id, absl::StrCat("updated pinhole ", r.unique_id)};
  }

  nat::Pinhole want{r.client, r.protocol, r.internal_port, r.remote};
  const std::string client = r.client.ToString();
  const PinholeRecord* same = nullptr;
  int mine = 0;
  st.pinholes.ForEach([&](const std::string&, const PinholeRecord& p) {
    if (p.nat == want) same = &p;
    if (p.nat.internal == r.client) ++mine;
  });
  if (same != nullptr) {
    PinholeRecord rec = *same;
    *rec.proto.mutable_expires_at() = ToTimestamp(expires);
    Put(txn, rec, /*is_new=*/false);
    return {PinholeOutcome::kOk, rec.proto.unique_id(),
            absl::StrCat("refreshed pinhole ", rec.proto.unique_id())};
  }
  if (mine >= policy.max_per_client) {
    return Refuse(txn, PinholeOutcome::kSpaceExhausted,
                  absl::StrCat(client, " already holds ", mine, " pinholes"));
  }
  if (st.pinholes.size() >= static_cast<size_t>(std::max(policy.max_leases, 0))) {
    return Refuse(txn, PinholeOutcome::kSpaceExhausted,
                  absl::StrCat("the agent already holds ", st.pinholes.size(), " pinholes"));
  }
  std::optional<uint32_t> id = FreeId(st);
  if (!id) return Refuse(txn, PinholeOutcome::kSpaceExhausted, "every pinhole id is taken");
  PinholeRecord rec;
  rec.nat = want;
  rec.proto.set_unique_id(*id);
  rec.proto.set_internal_client(client);
  rec.proto.set_internal_port(r.internal_port);
  rec.proto.set_protocol(ToProto(r.protocol));
  if (r.remote) rec.proto.set_remote_host(r.remote->ToString());
  *rec.proto.mutable_expires_at() = ToTimestamp(expires);
  *rec.proto.mutable_created_at() = ToTimestamp(txn.now());
  Put(txn, rec, /*is_new=*/true);
  return {PinholeOutcome::kOk, *id, absl::StrCat("new pinhole ", *id, " ", want.ToString())};
}

int ExpirePinholes(Txn& txn) {
  std::vector<PinholeRecord> expired;
  txn.state().pinholes.ForEach([&](const std::string&, const PinholeRecord& p) {
    if (FromTimestamp(p.proto.expires_at()) <= txn.now()) expired.push_back(p);
  });
  for (const PinholeRecord& p : expired) Remove(txn, p);
  return static_cast<int>(expired.size());
}

}  // namespace fabric::agent::owners
