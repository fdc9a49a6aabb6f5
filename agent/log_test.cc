#include "agent/log.h"

#include "gtest/gtest.h"

namespace fabric::agent {
namespace {

// Issue 10, item 15: a newline or an escape in a client's id cannot forge a
// log line or drive the terminal.
TEST(LogTest, ControlCharactersAreEscaped) {
  EXPECT_EQ(EscapeForLog("op=attach container=a\n2026-01-01T00:00:00Z op=detach"),
            "op=attach container=a\\x0a2026-01-01T00:00:00Z op=detach");
  EXPECT_EQ(EscapeForLog("\x1b[31mred\x7f\r\t"), "\\x1b[31mred\\x7f\\x0d\\x09");
  // A backslash is escaped too, so an escape in the log is always ours.
  EXPECT_EQ(EscapeForLog("a\\x0ab"), "a\\x5cx0ab");
  EXPECT_EQ(EscapeForLog("plain \xc3\xa9"), "plain \xc3\xa9");
}

}  // namespace
}  // namespace fabric::agent
