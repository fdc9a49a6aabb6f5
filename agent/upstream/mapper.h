// Mapper: keeps a set of this host's ports mapped on the LAN's gateway for
// as long as it lives — the long-running half of agent/upstream, for the
// agent (--upstream) and `fabricctl upstream map --keep`.
//
// Each mapping is named by (proto, internal port). The Mapper connects
// (clients.h: the default route's gateway, the protocol asked for or the
// first of PCP, NAT-PMP, UPnP that answers, remembered), maps, and renews
// at half the granted lifetime, suggesting the port it had. Every
// `poll_interval` it asks the gateway for its epoch and external address
// (PCP ANNOUNCE, a 2-byte NAT-PMP request; UPnP: GetExternalIPAddress and
// each mapping's entry, as IGDs have no epoch); an epoch that went back (RFC
// 6887 8.5, RFC 6886 3.6), a new external address or a missing entry makes
// it map everything again at once (so within poll_interval + one exchange
// of a gateway restart; 10 s by the RFCs). A failure is retried with
// exponential backoff (retry_min doubling to retry_max); a gateway that
// stops answering is reconnected (perhaps with another protocol) after
// three failed polls. Every change of a mapping's upstream state is
// reported through on_change: "203.0.113.7:8080 via pcp, renews in 28m", or
// the error and when it is retried.
//
// Threading: public methods are thread-safe and never block on the
// network. All I/O runs on one worker thread (or, with start_thread false,
// on whichever thread calls RunOnce: tests, with a fake clock and
// connection). Callbacks run on that thread with no lock held; they may
// call List()/Get() but must not call Stop().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/upstream/clients.h"
#include "agent/upstream/types.h"

namespace fabric::agent::upstream {

struct MappingStatus {
  enum class State {
    kPending,  // not answered yet
    kMapped,   // held on the gateway
    kFailing,  // the last attempt failed; retried at next_attempt
    kRemoved,  // deleted (Unmap or Stop): the last report of this mapping
  };
  MapRequest request;
  State state = State::kPending;
  std::optional<MapResult> result;  // the last grant
  absl::Time renew_at = absl::InfiniteFuture();  // kMapped
  absl::Time expires_at = absl::InfiniteFuture();
  absl::Time next_attempt = absl::InfiniteFuture();  // kFailing
  absl::Status error;  // the last failure (kFailing; kRemoved: a failed delete)
  int failures = 0;    // in a row
  int maps = 0;        // successful map/renew exchanges

  // One line for people: "203.0.113.7:8080 via pcp, renews in 28m",
  // "error: <why> (retry in 8s)", "mapping...", "removed".
  std::string Describe(absl::Time now) const;
};

struct GatewayStatus {
  bool connected = false;
  GatewayInfo info;  // the last probe (valid while connected)
  absl::Status error;  // the last connect/poll failure; OK when the last poll answered
  int resets = 0;      // restarts / address changes seen
  std::string Describe() const;
};

class Mapper {
 public:
  struct Options {
    ClientOptions client;
    absl::Duration poll_interval = absl::Seconds(5);
    absl::Duration retry_min = absl::Seconds(2);
    absl::Duration retry_max = absl::Minutes(5);
    // Called on the worker for every change of a mapping's state.
    std::function<void(const MappingStatus&)> on_change;
    // Called on the worker when the gateway is (re)connected, lost, or reset.
    std::function<void(const GatewayStatus&)> on_gateway;
    bool start_thread = true;
    // Makes the connection; unset: Connect(client). Tests give fakes.
    std::function<absl::StatusOr<Connection>()> connect;
  };

  explicit Mapper(Options options);
  // Stop(false): the gateway keeps the mappings until their lifetime ends
  // (a restarted agent renews them under the same nonce).
  ~Mapper();
  Mapper(const Mapper&) = delete;
  Mapper& operator=(const Mapper&) = delete;

  // Adds a mapping, or changes one (a new lifetime or suggested port):
  // mapped on the worker as soon as it can.
  void Map(const MapRequest& request);
  // Deletes a mapping on the gateway (on the worker), then forgets it.
  void Unmap(Proto proto, uint16_t internal_port);

  std::vector<MappingStatus> List() const;
  std::optional<MappingStatus> Get(Proto proto, uint16_t internal_port) const;
  GatewayStatus Gateway() const;

  // Stops the worker; with unmap_all, it first deletes every mapping on the
  // gateway (each one exchange, bounded by the schedule) and reports them
  // removed. Blocks until done. Idempotent; call from any thread but a
  // callback.
  void Stop(bool unmap_all);

  // One round of work at options.client.now(): connect if needed, delete,
  // map what is due, poll. Returns when the next work is due. Without a
  // worker thread, tests call it; otherwise only the worker does.
  absl::Time RunOnce();

 private:
  using Key = std::pair<Proto, uint16_t>;
  struct Entry {
    MappingStatus status;
    absl::Time due = absl::InfinitePast();  // next map/renew
    bool removing = false;
    uint64_t generation = 0;
  };

  void Loop();
  // Deletes every mapping held (on the thread that does the I/O).
  void UnmapAll();
  absl::Duration Backoff(int failures) const;
  void Disconnect(const absl::Status& why, absl::Time now);
  // Marks every held mapping due now (after a reset).
  void RemapAllLocked(absl::Time now);
  void Notify(std::vector<MappingStatus> changes, std::optional<GatewayStatus> gateway);

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, Entry> entries_;
  GatewayStatus gateway_;
  bool stop_ = false;
  bool unmap_on_stop_ = false;
  bool wake_ = false;
  // Worker state (only RunOnce's thread touches these).
  std::unique_ptr<MethodClient> client_;
  absl::Time connect_at_ = absl::InfinitePast();
  int connect_failures_ = 0;
  absl::Time next_poll_ = absl::InfiniteFuture();
  int poll_failures_ = 0;
  std::optional<uint32_t> epoch_;
  absl::Time epoch_at_;
  std::optional<Ipv4> external_;
  std::thread worker_;
};

// "28m", "1h5m", "12s".
std::string ShortDuration(absl::Duration d);

}  // namespace fabric::agent::upstream
