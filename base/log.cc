#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dcpmerge {
namespace {
std::atomic<bool> g_quiet{false};
}  // namespace

std::string EscapeForLog(absl::string_view s, size_t max_len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const size_t n = s.size() < max_len ? s.size() : max_len;
  out.reserve(n + 16);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += "\\x";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  if (s.size() > n) absl::StrAppend(&out, "...(", s.size(), " bytes)");
  return out;
}

void SetLogQuiet(bool quiet) { g_quiet.store(quiet); }

// ------------------------------------------------- formats and fields ---
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};

absl::Mutex g_component_mu;
std::string& DefaultComponent() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_component_mu) {
  static std::string* component = new std::string("dcpmerge");
  return *component;
}

// Length of the well-formed UTF-8 sequence at s[i], or 0 (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF).
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  }
  return n;
}

// A JSON string literal (RFC 8259) of `s`, always valid UTF-8.
void AppendJsonString(std::string* out, absl::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '\r') {
      out->append("\\r");
    } else if (c == '\t') {
      out->append("\\t");
    } else if (c < 0x20 || c == 0x7F) {
      out->append("\\u00");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
    } else if (c < 0x80) {
      out->push_back(static_cast<char>(c));
    } else if (const size_t n = Utf8SequenceLength(s, i); n > 0) {
      out->append(s.data() + i, n);
      i += n;
      continue;
    } else {
      out->append("\\ufffd");  // not UTF-8: one replacement per byte
    }
    ++i;
  }
  out->push_back('"');
}

// A text-format field value: as is when it is a plain token, else quoted
// and C-escaped (so a value never breaks the line or fakes another field).
std::string TextValue(absl::string_view v) {
  bool plain = !v.empty();
  for (const char ch : v) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-' || c == '_' || c == ':' || c == '/' || c == '[' ||
          c == ']' || c == '@' || c == ',' || c == '+')) {
      plain = false;
      break;
    }
  }
  return plain ? std::string(v) : absl::StrCat("\"", absl::CEscape(v), "\"");
}

const char* LevelName(LogLevel level) {
  return level == LogLevel::kInfo ? "info" : level == LogLevel::kWarning ? "warning" : "error";
}

void WriteAll(const std::string& line) {
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(2, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

bool ParseLogFormat(absl::string_view name, LogFormat* format) {
  if (name == "text") {
    *format = LogFormat::kText;
  } else if (name == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void SetLogFormat(LogFormat format) { g_format.store(format); }

LogFormat GetLogFormat() { return g_format.load(); }

void SetLogComponent(absl::string_view component) {
  absl::MutexLock lock(&g_component_mu);
  DefaultComponent() = std::string(component);
}

std::string FormatLogLine(LogFormat format, LogLevel level, absl::Time time, absl::string_view component,
                          absl::string_view message, absl::Span<const LogField> fields) {
  std::string line;
  if (format == LogFormat::kJson) {
    line = absl::StrCat("{\"time\":\"", absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", time, absl::UTCTimeZone()),
                        "\",\"level\":\"", LevelName(level), "\",\"component\":");
    AppendJsonString(&line, component);
    line.append(",\"message\":");
    AppendJsonString(&line, message);
    for (const LogField& f : fields) {
      line.push_back(',');
      AppendJsonString(&line, f.key);
      line.push_back(':');
      AppendJsonString(&line, f.value);
    }
    line.push_back('}');
    return line;
  }
  const char tag = level == LogLevel::kInfo ? 'I' : level == LogLevel::kWarning ? 'W' : 'E';
  line = absl::StrCat(std::string(1, tag), absl::FormatTime("%Y%m%d %H:%M:%E6S", time, absl::LocalTimeZone()),
                      " ", component, "] ", message);
  for (const LogField& f : fields) absl::StrAppend(&line, " ", f.key, "=", TextValue(f.value));
  return line;
}

void LogLine(LogLevel level, absl::string_view component, absl::string_view message,
             absl::Span<const LogField> fields) {
  if (level == LogLevel::kInfo && g_quiet.load()) return;
  std::string line = FormatLogLine(g_format.load(), level, absl::Now(), component, message, fields);
  line.push_back('\n');
  WriteAll(line);
}

void LogLine(LogLevel level, absl::string_view message) {
  if (level == LogLevel::kInfo && g_quiet.load()) return;
  std::string component;
  {
    absl::MutexLock lock(&g_component_mu);
    component = DefaultComponent();
  }
  LogLine(level, component, message, {});
}

}  // namespace dcpmerge
