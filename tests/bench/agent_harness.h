// Shared pieces of the agent benchmarks (read_latency_bench, scale_bench,
// check_bench): a real fabric-agent process in a namespace the bench made
// (its pid, for RSS), a pre-filled store, gRPC stubs on its unix socket,
// GET /healthz from inside the namespace, conntrack entries made in bulk,
// `nft flush ruleset` in-process, and percentile lines printed beside a
// target. Benchmarks print figures; nothing here asserts on time.
#pragma once

#include "nat/netlink/socket.h"

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "testing/netns.h"

namespace fabric::bench {

namespace v1 = ::fabric::nat::v1;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d);
double Us(Clock::duration d);

// p in [0, 100], nearest rank; 0 for no samples.
double Percentile(std::vector<double> v, double p);

// "label  p50 X ms  p99 Y ms  max Z ms  (N samples)  target: p99 <= T ms: met|MISSED by ..."
void PrintLatency(const std::string& label, const std::vector<double>& ms,
                  double target_p99_ms);
// One figure beside its target ("<= target"); samples may be 0 (not shown).
void PrintFigure(const std::string& label, double value, const std::string& unit,
                 double target, size_t samples, const std::string& note = "");

// fabric-agent, started by the bench in `ns` (`ip netns exec` execs it, so
// pid() is the agent itself). Stopped with SIGTERM (then SIGKILL) when
// destroyed.
class Agent {
 public:
  // Socket and log under `dir`, state in `dir`/state. Waits (polling the log
  // every millisecond) until the agent logs "serving unix:", which it does
  // after the store is loaded and the kernel is in sync.
  static absl::StatusOr<std::unique_ptr<Agent>> Start(testing::Netns* ns, const std::string& dir,
                                                      const std::vector<std::string>& flags,
                                                      absl::Duration timeout = absl::Seconds(120));
  ~Agent();
  void Stop();

  pid_t pid() const { return pid_; }
  // Fork to "serving" (ms).
  double start_ms() const { return start_ms_; }
  const std::string& socket() const { return socket_; }
  std::string LogTail(size_t bytes = 2000) const;
  // VmRSS from /proc/PID/status, in MiB (-1 when unreadable).
  double RssMiB() const;
  // VmHWM (peak RSS), in MiB.
  double PeakRssMiB() const;

  std::shared_ptr<grpc::Channel> NewChannel() const;

 private:
  Agent() = default;
  pid_t pid_ = -1;
  double start_ms_ = 0;
  std::string socket_;
  std::string log_;
};

// Stubs on one channel.
struct Client {
  explicit Client(std::shared_ptr<grpc::Channel> channel);
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::AttachmentService::Stub> attachments;
  std::unique_ptr<v1::MappingService::Stub> mappings;
  std::unique_ptr<v1::AgentService::Stub> agent;
};
// A ClientContext with a deadline `seconds` away.
void SetDeadline(grpc::ClientContext* ctx, double seconds = 30);

// Store pre-fill (agent/store.h), before the agent starts.
// `n` API mappings, owner "bulk": TCP and UDP alternately, host ports
// 10000 + i/2 (so up to 111,070 fit), targets 10.99.x.y.
absl::Status PrefillMappings(const std::string& state_dir, int n);
// `n` CNI attachments as the plugin sends them (one TCP port each, host
// port 10000 + i, container 10.200.x.y/16 on br0, hairpin), each with the
// mapping owners::Attach makes of it.
absl::Status PrefillAttachments(const std::string& state_dir, int n);

// A CNI attachment with one port mapping.
v1::Attachment MakeAttachment(const std::string& container_id, const std::string& address,
                              v1::Protocol protocol, int host_port, int container_port);

// One Attach (timed) and the Detach after it, as a runtime's ADD and DEL.
struct Round {
  bool attached = false;
  bool detached = false;
  double attach_ms = 0;
};
Round AttachThenDetach(Client& c, const v1::Attachment& a);

// GET `path` on 127.0.0.1:`port` from the calling thread's namespace; the
// HTTP status code, or -1.
int HttpGet(int port, const std::string& path);

// Creates `n` UDP conntrack entries (NFCT_Q_CREATE, one netlink request
// each, no process per entry) in the calling thread's namespace: from
// 10.77.x.y:p to 192.0.2.1 ports 40000-59999, timeout 1 hour. Returns how
// many were created.
absl::StatusOr<int> FillConntrack(int n);
// Entries in the calling thread's namespace (a full dump).
absl::StatusOr<int> CountConntrack();

// `nft flush ruleset` from the calling thread's namespace, in-process (one
// batch deleting every table), so the clock starts when the kernel has
// flushed.
absl::Status FlushRuleset();
// The same through an open socket (whose netns is the one it was opened in).
absl::Status FlushRuleset(nat::netlink::NetlinkSocket& sock);

// GetStatus().repairs() (or -1).
int64_t Repairs(Client& c);

// Writes `samples` as "phase label ms" lines when FABRIC_BENCH_RAW names a
// file (appends); for looking at distributions afterwards.
void DumpRaw(const std::string& label, const std::vector<double>& ms);

}  // namespace fabric::bench
