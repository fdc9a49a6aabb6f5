#include "agent/upstream/mapper.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace fabric::agent::upstream {

std::string ShortDuration(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  int64_t s = absl::ToInt64Seconds(d);
  if (s >= 3600) {
    return s % 3600 >= 60 ? absl::StrCat(s / 3600, "h", s % 3600 / 60, "m")
                          : absl::StrCat(s / 3600, "h");
  }
  if (s >= 60) return absl::StrCat(s / 60, "m");
  return absl::StrCat(s, "s");
}

std::string MappingStatus::Describe(absl::Time now) const {
  switch (state) {
    case State::kPending: return "mapping...";
    case State::kMapped: {
      std::string s = absl::StrCat(Endpoint(result->external_ip, result->external_port), " via ",
                                   MethodName(result->method));
      if (renew_at == absl::InfiniteFuture()) return absl::StrCat(s, ", permanent");
      return absl::StrCat(s, ", renews in ", ShortDuration(renew_at - now));
    }
    case State::kFailing:
      return absl::StrCat("error: ", error.message(), " (retry in ",
                          ShortDuration(next_attempt - now), ")");
    case State::kRemoved:
      return error.ok() ? "removed" : absl::StrCat("removed; delete failed: ", error.message());
  }
  return "?";
}

std::string GatewayStatus::Describe() const {
  if (!connected) {
    return error.ok() ? "not connected yet" : absl::StrCat("no gateway: ", error.message());
  }
  std::string s = absl::StrCat("gateway ", Ipv4String(info.gateway), " via ",
                               MethodName(info.method));
  if (info.external_ip) absl::StrAppend(&s, ", external address ", Ipv4String(*info.external_ip));
  if (info.epoch) absl::StrAppend(&s, ", epoch ", *info.epoch);
  if (!error.ok()) absl::StrAppend(&s, "; last poll failed: ", error.message());
  return s;
}

Mapper::Mapper(Options options) : options_(std::move(options)) {
  if (options_.start_thread) worker_ = std::thread([this] { Loop(); });
}

Mapper::~Mapper() { Stop(false); }

void Mapper::Map(const MapRequest& request) {
  std::lock_guard<std::mutex> l(mu_);
  Entry& e = entries_[{request.proto, request.internal_port}];
  e.status.request = request;
  if (e.status.state == MappingStatus::State::kRemoved) e.status.state = MappingStatus::State::kPending;
  e.removing = false;
  e.due = absl::InfinitePast();
  ++e.generation;
  wake_ = true;
  cv_.notify_all();
}

void Mapper::Unmap(Proto proto, uint16_t internal_port) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find({proto, internal_port});
  if (it == entries_.end()) return;
  it->second.removing = true;
  ++it->second.generation;
  wake_ = true;
  cv_.notify_all();
}

std::vector<MappingStatus> Mapper::List() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<MappingStatus> out;
  for (const auto& [k, e] : entries_) out.push_back(e.status);
  return out;
}

std::optional<MappingStatus> Mapper::Get(Proto proto, uint16_t internal_port) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find({proto, internal_port});
  if (it == entries_.end()) return std::nullopt;
  return it->second.status;
}

GatewayStatus Mapper::Gateway() const {
  std::lock_guard<std::mutex> l(mu_);
  return gateway_;
}

void Mapper::Stop(bool unmap_all) {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    unmap_on_stop_ = unmap_on_stop_ || unmap_all;
    cv_.notify_all();
  }
  // The worker deletes on its way out (its thread is in the network
  // namespace the mappings were made from); without one, this thread does.
  if (worker_.joinable()) {
    worker_.join();
  } else if (unmap_all) {
    UnmapAll();
  }
}

void Mapper::UnmapAll() {
  if (client_ == nullptr) return;
  std::vector<std::tuple<Key, MapRequest, uint16_t>> held;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [k, e] : entries_) {
      if (e.status.result && e.status.state != MappingStatus::State::kRemoved) {
        held.push_back({k, e.status.request, e.status.result->external_port});
      }
    }
  }
  std::vector<MappingStatus> changes;
  for (const auto& [k, req, ext] : held) {
    absl::Status s = client_->Unmap(req, ext);
    std::lock_guard<std::mutex> l(mu_);
    MappingStatus& st = entries_[k].status;
    st.state = MappingStatus::State::kRemoved;
    st.error = s;
    changes.push_back(st);
  }
  Notify(std::move(changes), std::nullopt);
}

absl::Duration Mapper::Backoff(int failures) const {
  absl::Duration d = options_.retry_min;
  for (int i = 1; i < failures && d < options_.retry_max; ++i) d *= 2;
  return std::min(d, options_.retry_max);
}

void Mapper::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    l.unlock();
    absl::Time next = RunOnce();
    l.lock();
    if (stop_) break;
    if (!wake_) {
      // Wall time: a fake clock goes with start_thread = false.
      absl::Duration wait = std::min(next - options_.client.now(), absl::Hours(1));
      if (wait > absl::ZeroDuration()) {
        cv_.wait_for(l, absl::ToChronoNanoseconds(wait), [this] { return stop_ || wake_; });
      }
    }
    wake_ = false;
  }
  const bool unmap = unmap_on_stop_;
  l.unlock();
  if (unmap) UnmapAll();
}

void Mapper::Notify(std::vector<MappingStatus> changes, std::optional<GatewayStatus> gateway) {
  if (gateway && options_.on_gateway) options_.on_gateway(*gateway);
  if (options_.on_change) {
    for (const MappingStatus& c : changes) options_.on_change(c);
  }
}

void Mapper::RemapAllLocked(absl::Time now) {
  for (auto& [k, e] : entries_) {
    if (!e.removing) e.due = now;
  }
}

void Mapper::Disconnect(const absl::Status& why, absl::Time now) {
  client_.reset();
  epoch_.reset();
  connect_at_ = now;
  std::lock_guard<std::mutex> l(mu_);
  gateway_.connected = false;
  gateway_.error = why;
}

absl::Time Mapper::RunOnce() {
  const NowFn& clock = options_.client.now;
  absl::Time now = clock();
  std::vector<MappingStatus> changes;
  std::optional<GatewayStatus> gateway_change;

  // Checks an epoch seen at `at` against the last one: true on a reset
  // (and then every mapping is due again).
  auto saw_epoch = [&](std::optional<uint32_t> epoch, absl::Time at) -> bool {
    if (!epoch) return false;
    bool reset = epoch_ && EpochReset(*epoch_, absl::ToDoubleSeconds(epoch_at_ - absl::UnixEpoch()),
                                      *epoch, absl::ToDoubleSeconds(at - absl::UnixEpoch()));
    epoch_ = epoch;
    epoch_at_ = at;
    return reset;
  };

  // 1. A connection.
  if (client_ == nullptr) {
    if (now < connect_at_) return connect_at_;
    absl::StatusOr<Connection> c =
        options_.connect ? options_.connect() : Connect(options_.client);
    now = clock();
    std::lock_guard<std::mutex> l(mu_);
    if (!c.ok()) {
      ++connect_failures_;
      connect_at_ = now + Backoff(connect_failures_);
      gateway_.connected = false;
      gateway_.error = c.status();
      gateway_change = gateway_;
      for (auto& [k, e] : entries_) {
        if (e.removing) continue;  // nothing to delete through
        MappingStatus& st = e.status;
        bool held = st.state == MappingStatus::State::kMapped && now < st.expires_at;
        if (held) continue;  // still granted; the poll/renewal will tell
        st.state = MappingStatus::State::kFailing;
        st.error = c.status();
        ++st.failures;
        st.next_attempt = connect_at_;
        changes.push_back(st);
      }
      // Mappings being removed with no gateway: forget them.
      for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->second.removing) {
          it->second.status.state = MappingStatus::State::kRemoved;
          changes.push_back(it->second.status);
          it = entries_.erase(it);
        } else {
          ++it;
        }
      }
    } else {
      connect_failures_ = 0;
      poll_failures_ = 0;
      client_ = std::move(c->client);
      gateway_.connected = true;
      gateway_.info = c->info;
      gateway_.error = absl::OkStatus();
      gateway_change = gateway_;
      bool reset = saw_epoch(c->info.epoch, now);
      if (external_ && c->info.external_ip && *external_ != *c->info.external_ip) reset = true;
      if (c->info.external_ip) external_ = c->info.external_ip;
      if (reset) ++gateway_.resets;
      next_poll_ = now + options_.poll_interval;
      RemapAllLocked(now);  // a new connection: make sure everything is there
    }
  }
  if (client_ == nullptr) {
    Notify(std::move(changes), gateway_change);
    return connect_at_;
  }

  // 2. Deletes, then maps and renewals that are due, one exchange at a time
  // with the lock released.
  while (true) {
    Key key;
    MapRequest req;
    bool remove = false;
    uint64_t generation = 0;
    std::optional<MapResult> had;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) break;
      now = clock();
      auto it = std::find_if(entries_.begin(), entries_.end(), [&](const auto& kv) {
        return kv.second.removing || kv.second.due <= now;
      });
      if (it == entries_.end()) break;
      key = it->first;
      req = it->second.status.request;
      remove = it->second.removing;
      generation = it->second.generation;
      had = it->second.status.result;
      if (!remove) {
        // Renewals suggest the port the gateway gave us.
        if (had && req.external_port == 0) req.external_port = had->external_port;
        it->second.due = absl::InfiniteFuture();  // in flight
      }
    }
    if (remove) {
      absl::Status s = had ? client_->Unmap(req, had->external_port) : absl::OkStatus();
      std::lock_guard<std::mutex> l(mu_);
      auto it = entries_.find(key);
      if (it == entries_.end()) continue;
      if (it->second.generation != generation || !it->second.removing) continue;  // re-added
      it->second.status.state = MappingStatus::State::kRemoved;
      it->second.status.error = s;
      changes.push_back(it->second.status);
      entries_.erase(it);
      continue;
    }
    absl::StatusOr<MapResult> r = client_->Map(req);
    now = clock();
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) continue;
    Entry& e = it->second;
    MappingStatus& st = e.status;
    if (r.ok()) {
      st.state = MappingStatus::State::kMapped;
      st.result = *r;
      st.error = absl::OkStatus();
      st.failures = 0;
      ++st.maps;
      if (r->lifetime == 0) {
        st.renew_at = st.expires_at = absl::InfiniteFuture();
      } else {
        st.expires_at = now + absl::Seconds(r->lifetime);
        st.renew_at = now + absl::Seconds(r->lifetime) / 2;
      }
      st.next_attempt = absl::InfiniteFuture();
      if (e.generation == generation) e.due = st.renew_at;
      changes.push_back(st);
      if (saw_epoch(r->epoch, now)) {
        ++gateway_.resets;
        gateway_change = gateway_;
        RemapAllLocked(now);
        e.due = e.generation == generation ? st.renew_at : e.due;  // this one is fresh
      }
      if (external_ && *external_ != r->external_ip) {
        ++gateway_.resets;
        gateway_change = gateway_;
        RemapAllLocked(now);
        e.due = e.generation == generation ? st.renew_at : e.due;
      }
      external_ = r->external_ip;
    } else {
      ++st.failures;
      st.error = r.status();
      absl::Duration wait = Backoff(st.failures);
      if (st.state == MappingStatus::State::kMapped && st.expires_at != absl::InfiniteFuture()) {
        // Renewing: try again before the grant runs out.
        wait = std::min(wait, std::max(absl::Seconds(1), (st.expires_at - now) / 2));
      }
      st.state = MappingStatus::State::kFailing;  // the grant, if any, stays in `result`
      st.next_attempt = now + wait;
      if (e.generation == generation) e.due = st.next_attempt;
      changes.push_back(st);
    }
  }

  // 3. The poll.
  now = clock();
  if (now >= next_poll_ && client_ != nullptr) {
    absl::StatusOr<GatewayInfo> info = client_->Probe();
    std::vector<std::pair<Key, MapResult>> check;
    now = clock();
    {
      std::lock_guard<std::mutex> l(mu_);
      next_poll_ = now + options_.poll_interval;
      if (!info.ok()) {
        ++poll_failures_;
        gateway_.error = info.status();
        gateway_change = gateway_;
      } else {
        poll_failures_ = 0;
        bool was_failing = !gateway_.error.ok();
        gateway_.info = *info;
        gateway_.error = absl::OkStatus();
        bool reset = saw_epoch(info->epoch, now);
        if (info->external_ip) {
          if (external_ && *external_ != *info->external_ip) reset = true;
          external_ = info->external_ip;
        }
        if (reset) {
          ++gateway_.resets;
          RemapAllLocked(now);
        }
        if (reset || was_failing) gateway_change = gateway_;
        if (!reset && client_->method() == Method::kUpnp) {
          for (auto& [k, e] : entries_) {
            if (!e.removing && e.status.state == MappingStatus::State::kMapped) {
              check.push_back({k, *e.status.result});
            }
          }
        }
      }
    }
    // UPnP: no epoch, so look for each mapping.
    for (const auto& [k, m] : check) {
      absl::StatusOr<bool> there = client_->StillMapped(m);
      if (there.ok() && !*there) {
        std::lock_guard<std::mutex> l(mu_);
        auto it = entries_.find(k);
        if (it != entries_.end() && !it->second.removing) it->second.due = clock();
      }
    }
    if (poll_failures_ >= 3) {
      Disconnect(absl::UnavailableError(absl::StrCat(
                     "the gateway stopped answering (3 polls): ", info.status().message())),
                 now);
      std::lock_guard<std::mutex> l(mu_);
      gateway_change = gateway_;
    }
  }

  // When next.
  absl::Time next = client_ ? next_poll_ : connect_at_;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [k, e] : entries_) {
      next = std::min(next, e.removing ? absl::InfinitePast() : e.due);
    }
  }
  Notify(std::move(changes), gateway_change);
  return next;
}

}  // namespace fabric::agent::upstream
