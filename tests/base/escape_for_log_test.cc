// base/log.h's EscapeForLog: what a string from outside the process becomes
// in a log line (issue 11, finding 5: log injection through Join's host).
#include <string>

#include "base/log.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

TEST(EscapeForLogTest, ControlCharactersCannotStartALine) {
  EXPECT_EQ(EscapeForLog("node-1"), "node-1");
  EXPECT_EQ(EscapeForLog("a\nI1201 12:00:00.000000 dcpmerge] forged"),
            "a\\nI1201 12:00:00.000000 dcpmerge] forged");
  EXPECT_EQ(EscapeForLog("a\rb\tc\\d"), "a\\rb\\tc\\\\d");
  EXPECT_EQ(EscapeForLog(std::string("\x00\x1b[31m\x7f\xff", 8)), "\\x00\\x1b[31m\\x7f\\xff");
  EXPECT_EQ(EscapeForLog("").size(), 0u);
}

TEST(EscapeForLogTest, LengthIsCapped) {
  const std::string mib(1 << 20, 'h');
  const std::string out = EscapeForLog(mib, 64);
  EXPECT_EQ(out, std::string(64, 'h') + "...(1048576 bytes)");
  // Escapes count against the output, never past 4 bytes per input byte.
  EXPECT_LE(EscapeForLog(std::string(1 << 20, '\n'), 100).size(), 4u * 100 + 32);
  EXPECT_EQ(EscapeForLog("abc", 3), "abc");
}

}  // namespace
}  // namespace dcpmerge
