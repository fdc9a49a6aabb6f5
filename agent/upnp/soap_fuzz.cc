// libFuzzer target for the SOAP request parser and the answer builders.
//   bazel test --config=fuzz //agent/upnp:soap_fuzz_test   (clang, libFuzzer)
// Without --config=fuzz the same function runs over a bounded generated
// corpus (testing/fuzz_driver.cc). The input's first line is the SOAPAction
// header, the rest the body; a request that parses must give an answer that
// parses again with the same arguments (escaping holds).
#include <pugixml.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "agent/upnp/soap.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fabric::agent::upnp;
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  absl::string_view header = nl == absl::string_view::npos ? in : in.substr(0, nl);
  absl::string_view body = nl == absl::string_view::npos ? "" : in.substr(nl + 1);
  absl::StatusOr<SoapCall> call = ParseSoapCall(header, body);
  // Also the whole input as the body of a request miniupnpc would send.
  if (!call.ok()) {
    call = ParseSoapCall("\"urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping\"", in);
  }
  if (!call.ok()) return 0;
  if (call->arguments.size() > kMaxArguments) __builtin_trap();
  std::string answer = SoapResponse(*call, call->arguments, {{"Listing", std::string(body)}});
  pugi::xml_document doc;
  if (!doc.load_buffer(answer.data(), answer.size())) __builtin_trap();
  pugi::xml_node resp = doc.first_child().first_child().first_child();
  size_t i = 0;
  for (pugi::xml_node a = resp.first_child(); a && i < call->arguments.size();
       a = a.next_sibling(), ++i) {
    if (call->arguments[i].first != a.name()) __builtin_trap();
  }
  std::string fault = SoapFault(static_cast<int>(size % 1000), std::string(header));
  if (!doc.load_buffer(fault.data(), fault.size())) __builtin_trap();
  return 0;
}
