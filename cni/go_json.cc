#include "cni/go_json.h"

#include "absl/strings/str_cat.h"

namespace fabric::cni {

std::string GoFold(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 'A' && c <= 'Z') {
      out.push_back(static_cast<char>(c - 'A' + 'a'));
    } else if (c == 0xE2 && i + 2 < s.size() &&
               static_cast<unsigned char>(s[i + 1]) == 0x84 &&
               static_cast<unsigned char>(s[i + 2]) == 0xAA) {
      out.push_back('k');  // U+212A KELVIN SIGN
      i += 2;
    } else if (c == 0xC5 && i + 1 < s.size() &&
               static_cast<unsigned char>(s[i + 1]) == 0xBF) {
      out.push_back('s');  // U+017F LATIN SMALL LETTER LONG S
      i += 1;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

GoKey FindGoKey(const nlohmann::json& obj, std::string_view field) {
  GoKey found;
  if (!obj.is_object()) return found;
  auto exact = obj.find(std::string(field));
  if (exact != obj.end()) {
    found.value = &*exact;
    found.spelling = std::string(field);
    return found;
  }
  const std::string folded = GoFold(field);
  int matches = 0;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (GoFold(it.key()) != folded) continue;
    ++matches;
    if (matches == 1) {
      found.value = &*it;
      found.spelling = it.key();
      found.ambiguous = absl::StrCat("\"", it.key(), "\"");
    } else {
      absl::StrAppend(&found.ambiguous, ", \"", it.key(), "\"");
    }
  }
  if (matches > 1) {
    found.value = nullptr;
    found.spelling.clear();
  } else {
    found.ambiguous.clear();
  }
  return found;
}

}  // namespace fabric::cni
