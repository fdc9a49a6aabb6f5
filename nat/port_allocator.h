// PortAllocator: who holds which host port. The single source of truth for
// host ports across every front-end (CNI, NAT-PMP/PCP, UPnP, the API), so two
// owners can never publish the same port.
//
// Ports are held per (protocol, family, host address). A holder on "any"
// address (nullopt) conflicts with every specific address of that family on
// the same port, and the reverse; two different specific addresses do not
// conflict. IPv4 and IPv6 are independent.
//
// Dynamic allocation takes only ports that nobody holds on any address, from
// a configured range, least recently released first; it costs O(1)
// amortised for single ports, whatever the number of ports held.
//
// Thread-compatible: the agent's core serializes all calls.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nat/types.h"

namespace fabric::nat {

// Where a port is held: protocol, family and host address (nullopt = any).
struct PortScope {
  Protocol protocol = Protocol::kTcp;
  Family family = Family::kIPv4;
  std::optional<IpAddress> host_ip;

  static PortScope Of(const PortMapping& m) {
    return PortScope{m.protocol, m.family(), m.host_ip};
  }
  // "tcp on 0.0.0.0", "udp on fd00::1".
  std::string ToString() const;
};

class PortAllocator {
 public:
  // Dynamic allocation draws from [dynamic_lo, dynamic_hi].
  // REQUIRES: 1 <= dynamic_lo <= dynamic_hi <= 65535.
  PortAllocator(uint16_t dynamic_lo, uint16_t dynamic_hi);

  PortAllocator(const PortAllocator&) = delete;
  PortAllocator& operator=(const PortAllocator&) = delete;

  // Holds ports [port, port + count - 1] in `scope` for `holder`, all or
  // none. kAlreadyExists naming the first conflicting port and its holder
  // ("host port 8080/tcp on 0.0.0.0 is held by cni:3f2a/eth0");
  // kInvalidArgument for port 0, count 0 or a range past 65535.
  absl::Status Reserve(const PortScope& scope, uint16_t port, uint16_t count,
                       const std::string& holder);

  // Holds `count` consecutive ports that nobody holds on any address, from
  // the dynamic range, and returns the first. kResourceExhausted when no
  // such run is left.
  absl::StatusOr<uint16_t> Allocate(const PortScope& scope, uint16_t count,
                                    const std::string& holder);

  // Holds `count` consecutive ports free in `scope`, within [lo, hi],
  // preferring `suggested` and then the ports after it (wrapping). For
  // NAT-PMP/PCP, whose clients suggest a port and whose range differs from
  // the dynamic one. kResourceExhausted when none is free.
  absl::StatusOr<uint16_t> AllocateNear(const PortScope& scope,
                                        uint16_t suggested, uint16_t count,
                                        uint16_t lo, uint16_t hi,
                                        const std::string& holder);

  // Releases ports [port, port + count - 1] in exactly `scope`. Ports not
  // held there are ignored.
  void Release(const PortScope& scope, uint16_t port, uint16_t count);

  // Who holds `port` in a way that conflicts with `scope`, if anyone.
  std::optional<std::string> ConflictingHolder(const PortScope& scope,
                                               uint16_t port) const;

  // Number of (scope, port) holds.
  size_t held() const { return held_; }
  uint16_t dynamic_lo() const { return dynamic_lo_; }
  uint16_t dynamic_hi() const { return dynamic_hi_; }

 private:
  // A holder's name, as compact as a pointer: one exact-size block (a
  // std::string costs 32 bytes more per held port).
  class Name {
   public:
    Name() = default;
    explicit Name(const std::string& s);
    Name(Name&&) = default;
    Name& operator=(Name&&) = default;
    explicit operator bool() const { return text_ != nullptr; }
    std::string str() const { return text_ ? std::string(text_.get()) : std::string(); }
    void reset() { text_.reset(); }

   private:
    std::unique_ptr<char[]> text_;
  };
  // Holders of one port number within one (protocol, family).
  // Small on purpose (one per held port: 100k at scale): the holders on
  // specific addresses, rare, live behind a pointer.
  struct Slot {
    Name any_holder;
    std::unique_ptr<std::map<IpAddress, std::string>> specific;
    bool empty() const { return !any_holder && (!specific || specific->empty()); }
  };
  // The slots of 256 consecutive ports, made when one of them is first
  // held and dropped when the last is released: at 100k held ports about
  // 16 bytes a port, against a hash node's 64.
  static constexpr int kPageBits = 8;
  using Page = std::array<Slot, 1 << kPageBits>;
  // Everything about one (protocol, family).
  struct Pool {
    std::array<std::unique_ptr<Page>, (65536 >> kPageBits)> pages;
    // Bit p set: someone holds port p on some address.
    std::vector<uint64_t> used = std::vector<uint64_t>(65536 / 64, 0);
    // Candidate free ports of the dynamic range, least recently released
    // first. Entries may be stale (held since); they are skipped lazily.
    std::deque<uint16_t> free_queue;
    std::vector<bool> in_queue = std::vector<bool>(65536, false);
    bool initialized = false;

    bool IsUsed(uint16_t p) const { return (used[p >> 6] >> (p & 63)) & 1; }
    // The slot of port p, or null when its page is not there.
    const Slot* Find(uint16_t p) const {
      const std::unique_ptr<Page>& page = pages[p >> kPageBits];
      return page ? &(*page)[p & ((1 << kPageBits) - 1)] : nullptr;
    }
    Slot* Find(uint16_t p) {
      return const_cast<Slot*>(static_cast<const Pool*>(this)->Find(p));
    }
    // The slot of port p, its page made if needed.
    Slot& At(uint16_t p);
    // Drops port p's page when no port on it is used.
    void DropPageIfUnused(uint16_t p);
  };

  Pool& PoolFor(Protocol protocol, Family family);
  const Pool* FindPool(Protocol protocol, Family family) const;
  static std::optional<std::string> Conflict(const Pool& pool,
                                             const PortScope& scope,
                                             uint16_t port);
  void Hold(Pool& pool, const PortScope& scope, uint16_t port,
            const std::string& holder);
  // First port of a run of `count` unused ports in [lo, hi] at or after
  // `start` (wrapping to lo), or nullopt.
  static std::optional<uint16_t> FindUnusedRun(const Pool& pool, uint16_t start,
                                               uint16_t count, uint16_t lo,
                                               uint16_t hi);

  uint16_t dynamic_lo_;
  uint16_t dynamic_hi_;
  std::map<std::pair<Protocol, Family>, Pool> pools_;
  size_t held_ = 0;
};

}  // namespace fabric::nat
