// libFuzzer target for the SSDP parser, matcher and response builder.
//   bazel test --config=fuzz //agent/ssdp:ssdp_fuzz_test   (clang, libFuzzer)
// Without --config=fuzz the same function runs over a bounded generated
// corpus (testing/fuzz_driver.cc). Each input is tried three ways: as a
// whole datagram, as the ST of an otherwise valid M-SEARCH (so random bytes
// reach the header and matcher logic), and as a search target given to
// Match directly.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/ssdp/message.h"

namespace {

using namespace fabric::agent::ssdp;

const Device& TheDevice() {
  static const Device* d =
      new Device(*InternetGatewayDevice("uuid:12345678-90ab-cdef-1234-567890abcdef"));
  return *d;
}

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// Matches `st` and builds every answer: the builder must accept it exactly
// when the ST is safe to echo, and never answer more than ssdp:all does.
void MatchAndBuild(absl::string_view st) {
  std::vector<fabric::agent::ssdp::Answer> answers = Match(TheDevice(), st);
  Check(answers.size() <= Advertisements(TheDevice()).size());
  for (const auto& a : answers) {
    absl::StatusOr<std::string> r =
        SearchResponse(a, "http://10.0.0.1:5000/rootDesc.xml", "Linux/6 UPnP/1.1 fabric-nat/0",
                       1, 1, 1800);
    Check(r.ok() == SafeHeaderValue(st));
    if (r.ok()) Check(r->size() < 1024 + 2 * st.size());
  }
}

void Parse(absl::string_view datagram) {
  absl::StatusOr<SearchRequest> r = ParseSearch(datagram);
  if (!r.ok()) {
    Check(r.status().code() == absl::StatusCode::kInvalidArgument ||
          r.status().code() == absl::StatusCode::kUnimplemented);
    Check(datagram.size() <= kMaxDatagram || r.status().code() ==
                                                  absl::StatusCode::kInvalidArgument);
    return;
  }
  Check(datagram.size() <= kMaxDatagram);
  Check(!r->st.empty() && SafeHeaderValue(r->st) && SafeHeaderValue(r->host));
  Check(!r->mx.has_value() || (*r->mx >= 0 && *r->mx <= kMaxMx));
  (void)CheckMulticastSearch(*r);
  MatchAndBuild(r->st);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  Parse(in);
  Parse(absl::StrCat("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
                     "MAN: \"ssdp:discover\"\r\nMX: 2\r\nST: ",
                     in, "\r\n\r\n"));
  MatchAndBuild(in);
  // Structured search targets: the input after the known prefixes.
  static const char* const kPrefixes[] = {"urn:schemas-upnp-org:device:",
                                          "urn:schemas-upnp-org:service:", "uuid:"};
  if (size > 0) MatchAndBuild(absl::StrCat(kPrefixes[data[0] % 3], in.substr(1)));
  return 0;
}
