// The CNI spec versions fabric-nat speaks: the plugin answers VERSION with
// them, and the install step refuses to chain it into a network of any
// other version. Header only.
#pragma once

#include <string>
#include <vector>

namespace fabric::cni {

inline const std::vector<std::string>& SupportedVersions() {
  static const auto* v = new std::vector<std::string>{"0.3.0", "0.3.1", "0.4.0",
                                                      "1.0.0", "1.1.0"};
  return *v;
}

}  // namespace fabric::cni
