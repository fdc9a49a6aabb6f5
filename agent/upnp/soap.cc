#include "agent/upnp/soap.h"

#include <pugixml.hpp>

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "agent/markup.h"

namespace fabric::agent::upnp {

namespace {

constexpr absl::string_view kEnvelopeNs = "http://schemas.xmlsoap.org/soap/envelope/";
constexpr absl::string_view kServicePrefix = "urn:schemas-upnp-org:service:";

absl::string_view LocalName(absl::string_view name) {
  size_t colon = name.find(':');
  return colon == absl::string_view::npos ? name : name.substr(colon + 1);
}

// The namespace URI of element `node`, from the xmlns declarations on it
// and its ancestors; empty when none is declared.
std::string NamespaceOf(pugi::xml_node node) {
  absl::string_view name = node.name();
  size_t colon = name.find(':');
  std::string attribute =
      colon == absl::string_view::npos
          ? std::string("xmlns")
          : absl::StrCat("xmlns:", name.substr(0, colon));
  for (pugi::xml_node n = node; n; n = n.parent()) {
    if (pugi::xml_attribute a = n.attribute(attribute.c_str())) return a.value();
  }
  return "";
}

// The only element child of `node`, or an error naming what else is there.
absl::StatusOr<pugi::xml_node> OnlyElement(pugi::xml_node node, absl::string_view what) {
  pugi::xml_node found;
  for (pugi::xml_node c = node.first_child(); c; c = c.next_sibling()) {
    if (c.type() == pugi::node_element) {
      if (found) return absl::InvalidArgumentError(absl::StrCat(what, " holds more than one element"));
      found = c;
    } else if (c.type() == pugi::node_pcdata &&
               std::strspn(c.value(), " \t\r\n") != std::strlen(c.value())) {
      return absl::InvalidArgumentError(absl::StrCat(what, " holds text"));
    }
  }
  if (!found) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  return found;
}

// Deepest nesting under `root` (children of root are at 1), without
// recursion; stops counting past `limit`.
int Depth(pugi::xml_node root, int limit) {
  std::vector<std::pair<pugi::xml_node, int>> stack = {{root, 0}};
  int max = 0;
  while (!stack.empty()) {
    auto [n, d] = stack.back();
    stack.pop_back();
    if (d > max) max = d;
    if (max > limit) return max;
    for (pugi::xml_node c = n.first_child(); c; c = c.next_sibling()) stack.emplace_back(c, d + 1);
  }
  return max;
}

}  // namespace

const std::string* SoapCall::Argument(absl::string_view name) const {
  for (const auto& [n, v] : arguments) {
    if (n == name) return &v;
  }
  return nullptr;
}

absl::StatusOr<SoapCall> ParseSoapCall(absl::string_view soap_action, absl::string_view body) {
  if (body.size() > kMaxSoapBody) {
    return absl::InvalidArgumentError(
        absl::StrCat("the body is ", body.size(), " bytes; at most ", kMaxSoapBody));
  }
  absl::string_view header = absl::StripAsciiWhitespace(soap_action);
  if (header.size() >= 2 && header.front() == '"' && header.back() == '"') {
    header = header.substr(1, header.size() - 2);
  }
  size_t hash = header.find('#');
  if (hash == absl::string_view::npos) {
    return absl::InvalidArgumentError("SOAPAction must be \"<service type>#<action>\"");
  }
  SoapCall call;
  call.service_type = std::string(header.substr(0, hash));
  call.action = std::string(header.substr(hash + 1));
  absl::string_view type = call.service_type;
  if (!absl::ConsumePrefix(&type, kServicePrefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SOAPAction names no UPnP service type: ", call.service_type));
  }
  size_t colon = type.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(type.substr(colon + 1), &call.version) || call.version < 1 ||
      call.version > 99) {
    return absl::InvalidArgumentError(
        absl::StrCat("SOAPAction's service type has no version: ", call.service_type));
  }
  if (call.action.empty() || call.action.size() > 64) {
    return absl::InvalidArgumentError("SOAPAction names no action");
  }

  pugi::xml_document doc;
  pugi::xml_parse_result parsed =
      doc.load_buffer(body.data(), body.size(),
                      pugi::parse_default | pugi::parse_doctype, pugi::encoding_utf8);
  if (!parsed) {
    return absl::InvalidArgumentError(
        absl::StrCat("the body is not XML: ", parsed.description(), " at byte ", parsed.offset));
  }
  for (pugi::xml_node c = doc.first_child(); c; c = c.next_sibling()) {
    if (c.type() == pugi::node_doctype) {
      return absl::InvalidArgumentError("a document type declaration is not accepted");
    }
  }
  if (int depth = Depth(doc, kMaxSoapDepth); depth > kMaxSoapDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("elements nest deeper than ", kMaxSoapDepth, " levels"));
  }
  absl::StatusOr<pugi::xml_node> envelope = OnlyElement(doc, "the document");
  if (!envelope.ok()) return envelope.status();
  if (LocalName(envelope->name()) != "Envelope" || NamespaceOf(*envelope) != kEnvelopeNs) {
    return absl::InvalidArgumentError("the document is not a SOAP 1.1 Envelope");
  }
  pugi::xml_node soap_body;
  for (pugi::xml_node c = envelope->first_child(); c; c = c.next_sibling()) {
    if (c.type() != pugi::node_element) continue;
    absl::string_view local = LocalName(c.name());
    if (local == "Body" && NamespaceOf(c) == kEnvelopeNs) {
      if (soap_body) return absl::InvalidArgumentError("the Envelope holds two Bodies");
      soap_body = c;
    } else if (local != "Header") {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected element <", c.name(), "> in the Envelope"));
    }
  }
  if (!soap_body) return absl::InvalidArgumentError("the Envelope has no Body");
  absl::StatusOr<pugi::xml_node> action = OnlyElement(soap_body, "the Body");
  if (!action.ok()) return action.status();
  if (LocalName(action->name()) != call.action) {
    return absl::InvalidArgumentError(absl::StrCat("SOAPAction names ", call.action,
                                                   " but the body holds ",
                                                   LocalName(action->name())));
  }
  if (std::string ns = NamespaceOf(*action); ns != call.service_type) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SOAPAction names service ", call.service_type, " but the body's action is in ",
        ns.empty() ? std::string("no namespace") : ns));
  }
  for (pugi::xml_node arg = action->first_child(); arg; arg = arg.next_sibling()) {
    if (arg.type() == pugi::node_pcdata) {
      if (std::strspn(arg.value(), " \t\r\n") != std::strlen(arg.value())) {
        return absl::InvalidArgumentError("the action element holds text");
      }
      continue;
    }
    if (arg.type() != pugi::node_element) continue;
    std::string name(LocalName(arg.name()));
    std::string value;
    for (pugi::xml_node t = arg.first_child(); t; t = t.next_sibling()) {
      if (t.type() == pugi::node_element) {
        return absl::InvalidArgumentError(absl::StrCat("argument ", name, " holds elements"));
      }
      if (t.type() == pugi::node_pcdata || t.type() == pugi::node_cdata) value += t.value();
    }
    if (name.empty() || name.size() > 64 || value.size() > kMaxArgumentBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("argument ", name.substr(0, 64), " is longer than ", kMaxArgumentBytes,
                       " bytes"));
    }
    if (call.Argument(name) != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("argument ", name, " is repeated"));
    }
    if (call.arguments.size() == kMaxArguments) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", kMaxArguments, " arguments"));
    }
    call.arguments.emplace_back(std::move(name), std::move(value));
  }
  return call;
}

namespace {

constexpr absl::string_view kEnvelopeStart =
    "<?xml version=\"1.0\"?>\r\n"
    "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" "
    "s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>";
constexpr absl::string_view kEnvelopeEnd = "</s:Body></s:Envelope>\r\n";

}  // namespace

std::string SoapResponse(const SoapCall& call,
                         const std::vector<std::pair<std::string, std::string>>& out,
                         const std::vector<std::pair<std::string, std::string>>& cdata) {
  std::string body(kEnvelopeStart);
  absl::StrAppend(&body, "<u:", call.action, "Response xmlns:u=\"", MarkupEscape(call.service_type),
                  "\">");
  for (const auto& [name, value] : out) {
    absl::StrAppend(&body, "<", name, ">", MarkupEscape(value), "</", name, ">");
  }
  for (const auto& [name, value] : cdata) {
    // "]]>" inside the value ends one section and starts the next.
    absl::StrAppend(&body, "<", name, "><![CDATA[",
                    absl::StrReplaceAll(value, {{"]]>", "]]]]><![CDATA[>"}}), "]]></", name, ">");
  }
  absl::StrAppend(&body, "</u:", call.action, "Response>", kEnvelopeEnd);
  return body;
}

std::string SoapFault(int code, absl::string_view description) {
  return absl::StrCat(kEnvelopeStart,
                      "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
                      "<detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>",
                      code, "</errorCode><errorDescription>", MarkupEscape(description),
                      "</errorDescription></UPnPError></detail></s:Fault>", kEnvelopeEnd);
}

absl::string_view UpnpErrorName(int code) {
  switch (code) {
    case 401: return "Invalid Action";
    case 402: return "Invalid Args";
    case 501: return "Action Failed";
    case 606: return "Action not authorized";
    case 701: return "PinholeSpaceExhausted";
    case 702: return "FirewallDisabled";
    case 703: return "InboundPinholeNotAllowed";
    case 704: return "NoSuchEntry";
    case 705: return "ProtocolNotSupported";
    case 706: return "InternalPortWildcardingNotAllowed";
    case 707: return "ProtocolWildcardingNotAllowed";
    case 708: return "WildCardNotPermittedInSrcIP";
    case 709: return "NoTrafficReceived";
    case 713: return "SpecifiedArrayIndexInvalid";
    case 714: return "NoSuchEntryInArray";
    case 715: return "WildCardNotPermittedInSrcIP";
    case 716: return "WildCardNotPermittedInExtPort";
    case 718: return "ConflictInMappingEntry";
    case 724: return "SamePortValuesRequired";
    case 725: return "OnlyPermanentLeasesSupported";
    case 726: return "RemoteHostOnlySupportsWildcard";
    case 727: return "ExternalPortOnlySupportsWildcard";
    case 728: return "NoPortMapsAvailable";
    case 729: return "ConflictWithOtherMechanisms";
    case 730: return "PortMappingNotFound";
    case 732: return "WildCardNotPermittedInIntPort";
    case 733: return "InconsistentParameters";
    default: return "Action Failed";
  }
}

}  // namespace fabric::agent::upnp
