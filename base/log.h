// Tiny logging for every binary (abseil 20220623 has no absl/log): one line
// per message on stderr, "I0102 15:04:05.123456 dcpmerge] message".
#ifndef DCPMERGE_BASE_LOG_H_
#define DCPMERGE_BASE_LOG_H_

#include <cstddef>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

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

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_LOG_H_
