// UDP: a flow per (listening socket, client address and port) with its own
// connected IPv4 socket to the target. Datagrams from the client go out of
// the flow's socket; replies go back from the listening socket, from the
// address the client sent to (IPV6_PKTINFO). A flow idle both ways for
// udp_idle_timeout is removed: its timer is checked lazily (a heap entry per
// flow, pushed again with the new deadline when the flow was used since).
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "agent/proxy/datagram6.h"
#include "agent/proxy/internal/loop.h"

namespace fabric::agent::proxy::internal {
namespace {

constexpr int kDatagramsPerEvent = 64;

}  // namespace

void Loop::OnUdpListen(PortSocket* socket) {
  Forward* f = socket->forward;
  for (int i = 0; i < kDatagramsPerEvent; ++i) {
    std::optional<Datagram6> d = ReceiveWithInfo6(socket->fd, datagram_.data(), datagram_.size());
    if (!d) return;
    FlowKey key{socket, {}, d->from.sin6_port, d->from.sin6_scope_id};
    std::memcpy(key.addr.data(), d->from.sin6_addr.s6_addr, 16);
    UdpFlow* flow;
    if (auto it = flow_index_.find(key); it != flow_index_.end()) {
      flow = it->second;
    } else {
      flow = NewFlow(socket, d->from);
      if (flow == nullptr) continue;  // refused and counted
    }
    flow->local = d->to;
    flow->last_active_ns = Now();
    if (send(flow->fd, datagram_.data(), d->length, MSG_DONTWAIT | MSG_NOSIGNAL) ==
        static_cast<ssize_t>(d->length)) {
      totals_.bytes_to_target.fetch_add(d->length, std::memory_order_relaxed);
      f->counters->bytes_to_target.fetch_add(d->length, std::memory_order_relaxed);
    }
  }
}

UdpFlow* Loop::NewFlow(PortSocket* socket, const sockaddr_in6& from) {
  Forward* f = socket->forward;
  nat::IpAddress client = nat::IpAddress::FromBytes(nat::Family::kIPv6, from.sin6_addr.s6_addr);
  auto count = udp_per_client_.find(client);
  int per_client = count == udp_per_client_.end() ? 0 : count->second;
  if (static_cast<int>(f->members.size()) >= options_.max_udp_flows_per_forward ||
      per_client >= options_.max_udp_flows_per_client ||
      static_cast<int>(flows_.size()) >= options_.max_udp_flows) {
    totals_.udp_flows_refused.fetch_add(1, std::memory_order_relaxed);
    f->counters->udp_flows_refused.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(socket->target_port);
  std::memcpy(&to.sin_addr, f->spec.target_ip.bytes(), 4);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    if (fd >= 0) close(fd);
    return nullptr;
  }
  auto flow = std::make_unique<UdpFlow>();
  flow->id = next_id_++;
  flow->fd = fd;
  flow->forward = f;
  flow->listen = socket;
  flow->client_ip = client;
  flow->client = from;
  flow->key = FlowKey{socket, {}, from.sin6_port, from.sin6_scope_id};
  std::memcpy(flow->key.addr.data(), from.sin6_addr.s6_addr, 16);
  ++udp_per_client_[client];
  f->members.insert(flow->id);
  totals_.udp_flows_created.fetch_add(1, std::memory_order_relaxed);
  totals_.active_udp_flows.fetch_add(1, std::memory_order_relaxed);
  f->counters->udp_flows_created.fetch_add(1, std::memory_order_relaxed);
  f->counters->active_udp_flows.fetch_add(1, std::memory_order_relaxed);
  SetInterest(flow.get(), EPOLLIN);
  AddTimer(Now() + absl::ToInt64Nanoseconds(options_.udp_idle_timeout), flow->id,
           TimerKind::kUdpIdle);
  UdpFlow* raw = flow.get();
  flow_index_[raw->key] = raw;
  flows_[raw->id] = std::move(flow);
  return raw;
}

void Loop::OnUdpFlow(UdpFlow* flow) {
  AtomicCounters& fc = *flow->forward->counters;
  // Answer from the address the client sent to; name the interface only for
  // a link-local one, which needs it (routing picks it for the others).
  in6_pktinfo from = flow->local;
  if (!IN6_IS_ADDR_LINKLOCAL(&from.ipi6_addr)) from.ipi6_ifindex = 0;
  for (int i = 0; i < kDatagramsPerEvent; ++i) {
    ssize_t n = recv(flow->fd, datagram_.data(), datagram_.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == ECONNREFUSED || errno == EINTR) continue;  // an ICMP error, consumed
      return;
    }
    flow->last_active_ns = Now();
    if (SendWithInfo6(flow->listen->fd, datagram_.data(), static_cast<size_t>(n), flow->client,
                      from)) {
      totals_.bytes_to_client.fetch_add(n, std::memory_order_relaxed);
      fc.bytes_to_client.fetch_add(n, std::memory_order_relaxed);
    }
  }
}

void Loop::CloseFlow(UdpFlow* flow) {
  if (flow->closed) return;
  flow->closed = true;
  SetInterest(flow, 0);
  close(flow->fd);
  Forward* f = flow->forward;
  f->members.erase(flow->id);
  f->counters->active_udp_flows.fetch_sub(1, std::memory_order_relaxed);
  totals_.active_udp_flows.fetch_sub(1, std::memory_order_relaxed);
  if (auto it = udp_per_client_.find(flow->client_ip); it != udp_per_client_.end()) {
    if (--it->second <= 0) udp_per_client_.erase(it);
  }
  flow_index_.erase(flow->key);
  auto it = flows_.find(flow->id);
  dead_flows_.push_back(std::move(it->second));
  flows_.erase(it);
}

void Loop::OnUdpIdle(uint64_t id, int64_t now) {
  auto it = flows_.find(id);
  if (it == flows_.end()) return;
  UdpFlow* flow = it->second.get();
  int64_t deadline = flow->last_active_ns + absl::ToInt64Nanoseconds(options_.udp_idle_timeout);
  if (deadline > now) {
    AddTimer(deadline, id, TimerKind::kUdpIdle);
    return;
  }
  totals_.udp_flows_expired.fetch_add(1, std::memory_order_relaxed);
  flow->forward->counters->udp_flows_expired.fetch_add(1, std::memory_order_relaxed);
  CloseFlow(flow);
}

}  // namespace fabric::agent::proxy::internal
