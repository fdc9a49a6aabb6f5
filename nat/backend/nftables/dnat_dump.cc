// DNAT map elements straight from a GETSETELEM dump message: the large
// maps (one element per mapping) are read on every full read, and
// libnftnl's parse allocates an object per element and per expression
// before DecodeElements looks at them: about a sixth of a Diagnose --full.
#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <algorithm>
#include <cstring>

#include "nat/backend/nftables/encode.h"
#include "nat/backend/nftables/internal/layout.h"

namespace fabric::nat::nftables {

namespace {

// Calls f on each attribute in [start, start + len) that is whole
// (mnl_attr_ok: its length fits what is left).
template <typename F>
void ForEachAttr(const void* start, size_t len, F f) {
  const auto* a = static_cast<const nlattr*>(start);
  int left = static_cast<int>(len);
  while (mnl_attr_ok(a, left)) {
    f(a);
    left -= static_cast<int>(MNL_ALIGN(a->nla_len));
    a = mnl_attr_next(a);
  }
}

template <typename F>
void ForEachNested(const nlattr* attr, F f) {
  ForEachAttr(mnl_attr_get_payload(attr), mnl_attr_get_payload_len(attr), f);
}

// The NFTA_DATA_VALUE inside a KEY, KEY_END or DATA attribute.
void DataValue(const nlattr* attr, const uint8_t** value, uint32_t* len) {
  ForEachNested(attr, [&](const nlattr* inner) {
    if (mnl_attr_get_type(inner) == NFTA_DATA_VALUE) {
      *value = static_cast<const uint8_t*>(mnl_attr_get_payload(inner));
      *len = mnl_attr_get_payload_len(inner);
    }
  });
}

}  // namespace

const internal::DnatMap* DnatMapNamed(const std::string& name) {
  for (const internal::DnatMap& m : internal::kDnatMaps) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

bool DecodeDnatElement(const internal::DnatMap& map, const uint8_t* key, uint32_t klen,
                       const uint8_t* key_end, uint32_t kelen, const uint8_t* data, uint32_t dlen,
                       DnatElement* out) {
  size_t alen = internal::AddrLen(map.family);
  size_t want_key = (map.specific_host ? alen : 0) + 8;
  size_t want_data = alen + (map.range ? 0 : 4);
  if (key == nullptr || klen != want_key || data == nullptr || dlen != want_data ||
      (map.range && (key_end == nullptr || kelen != klen))) {
    return false;
  }
  DnatElement d;
  d.family = map.family;
  size_t off = 0;
  if (map.specific_host) {
    d.host_ip = IpAddress::FromBytes(map.family, key);
    off = alen;
  }
  d.protocol = static_cast<Protocol>(key[off]);
  uint16_t port;
  std::memcpy(&port, key + off + 4, 2);
  d.port_lo = d.port_hi = ntohs(port);
  if (map.range) {
    std::memcpy(&port, key_end + off + 4, 2);
    d.port_hi = ntohs(port);
  }
  d.target_ip = IpAddress::FromBytes(map.family, data);
  if (!map.range) {
    std::memcpy(&port, data + alen, 2);
    d.target_port = ntohs(port);
  }
  *out = d;
  return true;
}

void DecodeDnatDump(const nlmsghdr* nlh, const internal::DnatMap& map,
                    std::vector<DnatElement>* out, size_t* malformed) {
  const auto* begin = static_cast<const char*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
  const auto* end = static_cast<const char*>(mnl_nlmsg_get_payload_tail(nlh));
  if (end <= begin) return;
  ForEachAttr(begin, static_cast<size_t>(end - begin), [&](const nlattr* list) {
    if (mnl_attr_get_type(list) != NFTA_SET_ELEM_LIST_ELEMENTS) return;
    ForEachNested(list, [&](const nlattr* elem) {
      if (mnl_attr_get_type(elem) != NFTA_LIST_ELEM) return;
      const uint8_t *key = nullptr, *key_end = nullptr, *data = nullptr;
      uint32_t klen = 0, kelen = 0, dlen = 0;
      ForEachNested(elem, [&](const nlattr* field) {
        switch (mnl_attr_get_type(field)) {
          case NFTA_SET_ELEM_KEY:
            DataValue(field, &key, &klen);
            break;
          case NFTA_SET_ELEM_KEY_END:
            DataValue(field, &key_end, &kelen);
            break;
          case NFTA_SET_ELEM_DATA:
            DataValue(field, &data, &dlen);
            break;
          default:
            break;
        }
      });
      DnatElement d;
      if (DecodeDnatElement(map, key, klen, key_end, kelen, data, dlen, &d)) {
        out->push_back(d);
      } else {
        ++*malformed;
      }
    });
  });
}

void InsertSorted(std::vector<DnatElement> elements, DnatSet* set) {
  std::sort(elements.begin(), elements.end());
  for (const DnatElement& d : elements) set->insert(set->end(), d);
}

}  // namespace fabric::nat::nftables
