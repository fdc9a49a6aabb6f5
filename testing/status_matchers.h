// gMock matchers for absl::Status and absl::StatusOr (Debian's Abseil does
// not ship absl/status/status_matchers.h).
//
//   EXPECT_THAT(f(), IsOk());
//   EXPECT_THAT(f(), StatusIs(absl::StatusCode::kAlreadyExists,
//                             HasSubstr("held by")));
//   ASSERT_OK_AND_ASSIGN(auto v, g());
#pragma once

#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace fabric::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

MATCHER_P(StatusIs, code, "") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::Matches(message_matcher)(std::string(s.message()));
}

MATCHER_P(IsOkAndHolds, value_matcher, "") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  *result_listener << "value is \"" << ::testing::PrintToString(*arg) << "\"";
  return ::testing::Matches(value_matcher)(*arg);
}

}  // namespace fabric::testing

#define FABRIC_CONCAT_INNER(a, b) a##b
#define FABRIC_CONCAT(a, b) FABRIC_CONCAT_INNER(a, b)
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::fabric::testing::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::fabric::testing::IsOk())
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                                 \
  auto FABRIC_CONCAT(status_or_, __LINE__) = (expr);                     \
  ASSERT_TRUE(FABRIC_CONCAT(status_or_, __LINE__).ok())                  \
      << FABRIC_CONCAT(status_or_, __LINE__).status();                   \
  lhs = std::move(*FABRIC_CONCAT(status_or_, __LINE__))
