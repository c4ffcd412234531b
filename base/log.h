// Tiny logging for every binary (abseil 20220623 has no absl/log): one line
// per message on stderr, as text (the default, glog-like with the year)
//   I20261201 15:04:05.123456 dcpmerge] message
// or as JSON (--log_format=json), one object per line:
//   {"time":"2026-12-01T15:04:05.123456Z","level":"info","component":"dcpmerge","message":"message"}
// See docs/operations.md, "Logs".
#ifndef DCPMERGE_BASE_LOG_H_
#define DCPMERGE_BASE_LOG_H_

#include <cstddef>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace dcpmerge {

enum class LogLevel { kInfo, kWarning, kError };

// Thread-safe; one write(2) per line so lines never interleave.
void LogLine(LogLevel level, absl::string_view message);

// Silences kInfo lines (tests, the demo); warnings and errors still print.
void SetLogQuiet(bool quiet);

// A string from outside the process (a rank's host name, a peer address, a
// request field) made safe for one log line: backslash, control characters
// and bytes >= 0x7f are written as \\, \n, \t, \xNN, and at most `max_len`
// input bytes are kept (then "...(N bytes)"). A newline in a Join's host can
// therefore never start a forged log line, and a 1 MiB host costs
// max_len bytes of log, not 1 MiB.
std::string EscapeForLog(absl::string_view s, size_t max_len = 128);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kError, absl::StrFormat(format, args...));
}

// --------------------------------------------- format, component, fields ---
// Text: "<L><yyyymmdd> <hh:mm:ss.micros> <component>] <message>[ key=value...]"
// in the local time zone (L: I, W, E). JSON: "time" (RFC 3339, UTC, with
// microseconds), "level" ("info", "warning", "error"), "component",
// "message", then the fields, all strings. Both are one line: JSON escapes
// control characters (and replaces bytes that are not UTF-8 with U+FFFD);
// text quotes and C-escapes a field value that is not a plain token.
enum class LogFormat { kText, kJson };

// "text" or "json" (--log_format); false for anything else.
bool ParseLogFormat(absl::string_view name, LogFormat* format);
void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();

// The component of lines logged without one (LogInfo etc.): "dcpmerge"
// unless a binary sets another.
void SetLogComponent(absl::string_view component);

// One extra key/value of a line (e.g. the caller of an admin change).
struct LogField {
  std::string key;
  std::string value;
};

// A line of `component` with extra fields, in the current format.
void LogLine(LogLevel level, absl::string_view component, absl::string_view message,
             absl::Span<const LogField> fields);

// The text of one line without its newline (what LogLine writes; tests).
std::string FormatLogLine(LogFormat format, LogLevel level, absl::Time time, absl::string_view component,
                          absl::string_view message, absl::Span<const LogField> fields);

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_LOG_H_
