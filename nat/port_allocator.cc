#include "nat/port_allocator.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace fabric::nat {

std::string PortScope::ToString() const {
  IpAddress a = host_ip.has_value() ? *host_ip : IpAddress::AnyOf(family);
  return absl::StrCat(ProtocolName(protocol), " on ", a.ToString());
}

PortAllocator::Name::Name(const std::string& s) : text_(new char[s.size() + 1]) {
  std::memcpy(text_.get(), s.c_str(), s.size() + 1);
}

PortAllocator::Slot& PortAllocator::Pool::At(uint16_t p) {
  std::unique_ptr<Page>& page = pages[p >> kPageBits];
  if (!page) page = std::make_unique<Page>();
  return (*page)[p & ((1 << kPageBits) - 1)];
}

void PortAllocator::Pool::DropPageIfUnused(uint16_t p) {
  // A page covers 1 << kPageBits ports: that many bits of `used`.
  constexpr int kWords = (1 << kPageBits) / 64;
  size_t first = static_cast<size_t>(p >> kPageBits) * kWords;
  for (int w = 0; w < kWords; ++w) {
    if (used[first + w] != 0) return;
  }
  pages[p >> kPageBits].reset();
}

PortAllocator::PortAllocator(uint16_t dynamic_lo, uint16_t dynamic_hi)
    : dynamic_lo_(dynamic_lo), dynamic_hi_(dynamic_hi) {}

PortAllocator::Pool& PortAllocator::PoolFor(Protocol protocol, Family family) {
  Pool& pool = pools_[{protocol, family}];
  if (!pool.initialized) {
    pool.initialized = true;
    for (uint32_t p = dynamic_lo_; p <= dynamic_hi_; ++p) {
      pool.free_queue.push_back(static_cast<uint16_t>(p));
      pool.in_queue[p] = true;
    }
  }
  return pool;
}

const PortAllocator::Pool* PortAllocator::FindPool(Protocol protocol,
                                                   Family family) const {
  auto it = pools_.find({protocol, family});
  return it == pools_.end() ? nullptr : &it->second;
}

std::optional<std::string> PortAllocator::Conflict(const Pool& pool,
                                                   const PortScope& scope,
                                                   uint16_t port) {
  if (!pool.IsUsed(port)) return std::nullopt;
  const Slot* found = pool.Find(port);
  if (found == nullptr) return std::nullopt;
  const Slot& slot = *found;
  if (slot.any_holder) return slot.any_holder.str();
  if (!slot.specific) return std::nullopt;
  if (!scope.host_ip.has_value()) return slot.specific->begin()->second;
  auto it = slot.specific->find(*scope.host_ip);
  if (it != slot.specific->end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> PortAllocator::ConflictingHolder(
    const PortScope& scope, uint16_t port) const {
  const Pool* pool = FindPool(scope.protocol, scope.family);
  if (pool == nullptr) return std::nullopt;
  return Conflict(*pool, scope, port);
}

void PortAllocator::Hold(Pool& pool, const PortScope& scope, uint16_t port,
                         const std::string& holder) {
  Slot& slot = pool.At(port);
  if (scope.host_ip.has_value()) {
    if (!slot.specific) slot.specific = std::make_unique<std::map<IpAddress, std::string>>();
    (*slot.specific)[*scope.host_ip] = holder;
  } else {
    slot.any_holder = Name(holder);
  }
  pool.used[port >> 6] |= uint64_t{1} << (port & 63);
  ++held_;
}

absl::Status PortAllocator::Reserve(const PortScope& scope, uint16_t port,
                                    uint16_t count, const std::string& holder) {
  if (port == 0 || count == 0 || int{port} + count - 1 > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot reserve ", count, " port(s) from ", port, " ",
                     scope.ToString(), ": ports must lie within 1-65535"));
  }
  Pool& pool = PoolFor(scope.protocol, scope.family);
  for (int p = port; p < int{port} + count; ++p) {
    if (auto held = Conflict(pool, scope, static_cast<uint16_t>(p))) {
      return absl::AlreadyExistsError(absl::StrCat(
          "host port ", p, "/", ProtocolName(scope.protocol), " on ",
          (scope.host_ip ? scope.host_ip->ToString()
                         : IpAddress::AnyOf(scope.family).ToString()),
          " is held by ", *held));
    }
  }
  for (int p = port; p < int{port} + count; ++p) {
    Hold(pool, scope, static_cast<uint16_t>(p), holder);
  }
  return absl::OkStatus();
}

std::optional<uint16_t> PortAllocator::FindUnusedRun(const Pool& pool,
                                                     uint16_t start,
                                                     uint16_t count,
                                                     uint16_t lo,
                                                     uint16_t hi) {
  if (count == 0 || int{hi} - lo + 1 < count) return std::nullopt;
  if (start < lo || start > hi) start = lo;
  // Two passes: [start, hi], then [lo, start).
  for (int pass = 0; pass < 2; ++pass) {
    int from = pass == 0 ? start : lo;
    int to = pass == 0 ? hi : std::min<int>(hi, int{start} + count - 2);
    int run = 0;
    for (int p = from; p <= to;) {
      // Skip a whole word of used ports at once.
      if ((p & 63) == 0 && p + 63 <= to && pool.used[p >> 6] == ~uint64_t{0}) {
        run = 0;
        p += 64;
        continue;
      }
      if (pool.IsUsed(static_cast<uint16_t>(p))) {
        run = 0;
      } else if (++run == count) {
        return static_cast<uint16_t>(p - count + 1);
      }
      ++p;
    }
  }
  return std::nullopt;
}

absl::StatusOr<uint16_t> PortAllocator::Allocate(const PortScope& scope,
                                                 uint16_t count,
                                                 const std::string& holder) {
  if (count == 0) {
    return absl::InvalidArgumentError("cannot allocate zero ports");
  }
  Pool& pool = PoolFor(scope.protocol, scope.family);
  if (count == 1) {
    while (!pool.free_queue.empty()) {
      uint16_t p = pool.free_queue.front();
      pool.free_queue.pop_front();
      pool.in_queue[p] = false;
      if (!pool.IsUsed(p)) {
        Hold(pool, scope, p, holder);
        return p;
      }
    }
  } else if (auto first = FindUnusedRun(pool, dynamic_lo_, count, dynamic_lo_,
                                        dynamic_hi_)) {
    for (int p = *first; p < *first + count; ++p) {
      Hold(pool, scope, static_cast<uint16_t>(p), holder);
    }
    return *first;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "no ", count == 1 ? "free port" : absl::StrCat(count, " free ports"),
      " left for ", scope.ToString(), " in the dynamic range ", dynamic_lo_,
      "-", dynamic_hi_));
}

absl::StatusOr<uint16_t> PortAllocator::AllocateNear(
    const PortScope& scope, uint16_t suggested, uint16_t count, uint16_t lo,
    uint16_t hi, const std::string& holder) {
  if (count == 0 || lo == 0 || lo > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot allocate ", count, " port(s) in ", lo, "-", hi));
  }
  Pool& pool = PoolFor(scope.protocol, scope.family);
  // The suggested port is fine if it is free in this scope, even when held
  // on another specific address.
  if (suggested >= lo && int{suggested} + count - 1 <= hi) {
    bool free = true;
    for (int p = suggested; p < int{suggested} + count && free; ++p) {
      free = !Conflict(pool, scope, static_cast<uint16_t>(p)).has_value();
    }
    if (free) {
      for (int p = suggested; p < int{suggested} + count; ++p) {
        Hold(pool, scope, static_cast<uint16_t>(p), holder);
      }
      return suggested;
    }
  }
  if (auto first = FindUnusedRun(pool, suggested, count, lo, hi)) {
    for (int p = *first; p < *first + count; ++p) {
      Hold(pool, scope, static_cast<uint16_t>(p), holder);
    }
    return *first;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "no free port left for ", scope.ToString(), " in ", lo, "-", hi));
}

void PortAllocator::Release(const PortScope& scope, uint16_t port,
                            uint16_t count) {
  auto pit = pools_.find({scope.protocol, scope.family});
  if (pit == pools_.end()) return;
  Pool& pool = pit->second;
  for (int p = port; p < int{port} + count && p <= 65535; ++p) {
    Slot* found = pool.IsUsed(static_cast<uint16_t>(p)) ? pool.Find(static_cast<uint16_t>(p))
                                                         : nullptr;
    if (found == nullptr) continue;
    Slot& slot = *found;
    bool released = false;
    if (scope.host_ip.has_value()) {
      released = slot.specific && slot.specific->erase(*scope.host_ip) > 0;
    } else if (slot.any_holder) {
      slot.any_holder.reset();
      released = true;
    }
    if (released) --held_;
    if (!slot.empty()) continue;
    slot.specific.reset();
    pool.used[p >> 6] &= ~(uint64_t{1} << (p & 63));
    pool.DropPageIfUnused(static_cast<uint16_t>(p));
    if (p >= dynamic_lo_ && p <= dynamic_hi_ && !pool.in_queue[p]) {
      pool.free_queue.push_back(static_cast<uint16_t>(p));
      pool.in_queue[p] = true;
    }
  }
}

}  // namespace fabric::nat
