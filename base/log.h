// Tiny logging for every binary (abseil 20220623 has no absl/log): one line
// per message on stderr, "I0102 15:04:05.123456 dcpmerge] message".
#ifndef DCPMERGE_BASE_LOG_H_
#define DCPMERGE_BASE_LOG_H_

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace dcpmerge {

enum class LogLevel { kInfo, kWarning, kError };

// Thread-safe; one write(2) per line so lines never interleave.
void LogLine(LogLevel level, absl::string_view message);

// Silences kInfo lines (tests, the demo); warnings and errors still print.
void SetLogQuiet(bool quiet);

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
