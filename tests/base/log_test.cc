// base/log: the text format (with the year) and the JSON format (one object
// per line that a JSON parser reads back, with time, level, component,
// message and fields), escaping, and what LogLine writes to stderr.
#include "base/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

// One JSON object, parsed by protobuf's JSON parser (strict RFC 8259).
google::protobuf::Struct ParseJson(const std::string& line) {
  google::protobuf::Struct s;
  const auto st = google::protobuf::util::JsonStringToMessage(line, &s);
  EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << line;
  return s;
}

std::string Field(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  if (it == s.fields().end()) return "<missing>";
  return it->second.string_value();
}

// Runs `fn` with stderr going to a file; returns what was written.
template <typename Fn>
std::string CaptureStderr(Fn fn) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/log_test_stderr_", getpid());
  std::fflush(stderr);
  const int saved = dup(2);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, 2);
  close(fd);
  fn();
  dup2(saved, 2);
  close(saved);
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    std::fclose(f);
  }
  return out;
}

const absl::Time kTime = absl::FromCivil(absl::CivilSecond(2026, 12, 1, 15, 4, 5), absl::UTCTimeZone()) +
                         absl::Microseconds(123456);

TEST(LogFormatTest, ParsesTheFlagValues) {
  LogFormat f = LogFormat::kJson;
  EXPECT_TRUE(ParseLogFormat("text", &f));
  EXPECT_EQ(f, LogFormat::kText);
  EXPECT_TRUE(ParseLogFormat("json", &f));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("JSON ", &f));
  EXPECT_FALSE(ParseLogFormat("", &f));
}

TEST(LogFormatTest, TextLineHasTheYear) {
  const std::string line =
      FormatLogLine(LogFormat::kText, LogLevel::kWarning, kTime, "dcpmerge", "rank 1 dropped", {});
  // Local time zone: the date and hour depend on it, the year (2026 or, at
  // the turn of the year, 2027) and the shape do not.
  EXPECT_THAT(line, MatchesRegex("W202[67][01][0-9][0-3][0-9] [0-2][0-9]:[0-5][0-9]:05\\.123456 dcpmerge\\] "
                                 "rank 1 dropped"));
  const std::string local = absl::FormatTime("%Y%m%d %H:%M:%E6S", kTime, absl::LocalTimeZone());
  EXPECT_EQ(line, absl::StrCat("W", local, " dcpmerge] rank 1 dropped"));
}

TEST(LogFormatTest, TextFieldsArePlainOrQuoted) {
  const std::string line = FormatLogLine(LogFormat::kText, LogLevel::kInfo, kTime, "admin", "Configure: ok",
                                         {{"peer", "ipv4:127.0.0.1:5555"},
                                          {"token_sha256", "1a2b3c4d"},
                                          {"odd", "two words\nand a \"quote\""},
                                          {"empty", ""}});
  EXPECT_THAT(line, HasSubstr(" admin] Configure: ok peer=ipv4:127.0.0.1:5555 token_sha256=1a2b3c4d "
                              "odd=\"two words\\nand a \\\"quote\\\"\" empty=\"\""));
  EXPECT_THAT(line, Not(HasSubstr("\n")));
}

TEST(LogFormatTest, JsonLineParsesWithEveryField) {
  const std::string line = FormatLogLine(LogFormat::kJson, LogLevel::kError, kTime, "admin", "Drain: refused",
                                         {{"peer", "ipv6:[::1]:4242"}, {"token_sha256", "none"}});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const auto s = ParseJson(line);
  EXPECT_EQ(Field(s, "time"), "2026-12-01T15:04:05.123456Z");
  EXPECT_EQ(Field(s, "level"), "error");
  EXPECT_EQ(Field(s, "component"), "admin");
  EXPECT_EQ(Field(s, "message"), "Drain: refused");
  EXPECT_EQ(Field(s, "peer"), "ipv6:[::1]:4242");
  EXPECT_EQ(Field(s, "token_sha256"), "none");
  EXPECT_EQ(s.fields().size(), 6u);
  // RFC 3339: the time parses back to the same instant.
  absl::Time t;
  std::string err;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, Field(s, "time"), &t, &err)) << err;
  EXPECT_EQ(t, kTime);
  for (LogLevel l : {LogLevel::kInfo, LogLevel::kWarning}) {
    const auto v = ParseJson(FormatLogLine(LogFormat::kJson, l, kTime, "c", "m", {}));
    EXPECT_EQ(Field(v, "level"), l == LogLevel::kInfo ? "info" : "warning");
  }
}

// Whatever a message holds (client strings: quotes, newlines, control
// characters, bytes that are not UTF-8), the line stays one valid JSON
// object and the text reads back.
TEST(LogFormatTest, JsonEscapesEverything) {
  const std::string nasty = std::string("a \"quoted\" \\ back\nslash\r\t\x01\x1f\x7f end ") + "caf\xc3\xa9 " +
                            "\xe2\x82\xac " + "\xf0\x9f\x98\x80 " + "bad:\xff\xc3(\xed\xa0\x80";
  const std::string line = FormatLogLine(LogFormat::kJson, LogLevel::kInfo, kTime, "comp\"x", nasty,
                                         {{"key\n", "value\x02"}});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  for (const char c : line) EXPECT_GE(static_cast<unsigned char>(c), 0x20) << line;
  const auto s = ParseJson(line);
  EXPECT_EQ(Field(s, "component"), "comp\"x");
  EXPECT_EQ(Field(s, "key\n"), "value\x02");
  const std::string back = Field(s, "message");
  const std::string valid_part = std::string("a \"quoted\" \\ back\nslash\r\t\x01\x1f\x7f end ") + "caf\xc3\xa9 " +
                                 "\xe2\x82\xac " + "\xf0\x9f\x98\x80 ";
  EXPECT_EQ(back.substr(0, valid_part.size()), valid_part);
  // Each byte that is not UTF-8 became U+FFFD: \xff, \xc3 (cut short), and
  // the three bytes of an encoded surrogate.
  EXPECT_EQ(back.substr(valid_part.size()),
            "bad:\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(LogLineTest, WritesOneJsonObjectPerLineToStderr) {
  SetLogQuiet(false);
  SetLogFormat(LogFormat::kJson);
  const absl::Time before = absl::Now();
  const std::string out = CaptureStderr([] {
    LogInfo("step %d failed: %s", 7, "timeout");
    LogLine(LogLevel::kWarning, "admin", "Configure: refused", {{"peer", "ipv4:10.0.0.1:1"}});
    SetLogQuiet(true);
    LogInfo("not shown");
    LogError("shown %s", "anyway");
    SetLogQuiet(false);
  });
  SetLogFormat(LogFormat::kText);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(out.back(), '\n');
  const auto a = ParseJson(lines[0]);
  EXPECT_EQ(Field(a, "level"), "info");
  EXPECT_EQ(Field(a, "component"), "dcpmerge");
  EXPECT_EQ(Field(a, "message"), "step 7 failed: timeout");
  absl::Time t;
  std::string err;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, Field(a, "time"), &t, &err)) << err;
  EXPECT_GE(t, before - absl::Seconds(1));
  EXPECT_LE(t, absl::Now() + absl::Seconds(1));
  EXPECT_EQ(Field(a, "time").substr(0, 4), absl::FormatTime("%Y", t, absl::UTCTimeZone()));
  const auto b = ParseJson(lines[1]);
  EXPECT_EQ(Field(b, "component"), "admin");
  EXPECT_EQ(Field(b, "level"), "warning");
  EXPECT_EQ(Field(b, "peer"), "ipv4:10.0.0.1:1");
  EXPECT_EQ(Field(ParseJson(lines[2]), "message"), "shown anyway");
}

TEST(LogLineTest, TextStaysTheDefaultWithTheYearAndComponent) {
  EXPECT_EQ(GetLogFormat(), LogFormat::kText);
  SetLogComponent("dcpmergectl");
  const std::string out = CaptureStderr([] { LogWarning("x=%d", 1); });
  SetLogComponent("dcpmerge");
  const std::string year = absl::FormatTime("%Y", absl::Now(), absl::LocalTimeZone());
  EXPECT_THAT(out, MatchesRegex(absl::StrCat("W", year, "[0-9]{4} [0-9:.]{15} dcpmergectl\\] x=1\n")));
}

}  // namespace
}  // namespace dcpmerge
