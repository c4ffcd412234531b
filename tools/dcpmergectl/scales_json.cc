#include "tools/dcpmergectl/scales_json.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace dcpmerge::ctl {
namespace {

class Parser {
 public:
  explicit Parser(absl::string_view text) : text_(text) {}

  absl::StatusOr<std::map<int32_t, float>> Parse() {
    std::map<int32_t, float> out;
    std::map<int32_t, std::string> where;  // layer -> "line L, column C" of its key
    SkipSpace();
    if (AtEnd()) return Error("empty file: expected a JSON object like {\"0\": 0.0125}");
    if (Peek() != '{') return Error("expected '{': the file must be one JSON object of layer -> scale");
    Next();
    SkipSpace();
    if (!AtEnd() && Peek() == '}') {
      Next();
      return Finish(out);
    }
    while (true) {
      SkipSpace();
      if (AtEnd()) return Error("unexpected end of file inside the object (missing '}')");
      const std::string key_pos = Position();
      if (Peek() != '"') return Error("expected a layer id in double quotes, e.g. \"3\"");
      absl::StatusOr<int32_t> layer = ParseKey();
      if (!layer.ok()) return layer.status();
      if (auto it = where.find(*layer); it != where.end()) {
        return ErrorAt(key_pos, absl::StrCat("duplicate layer ", *layer, " (first given at ",
                                             it->second, ")"));
      }
      SkipSpace();
      if (AtEnd() || Peek() != ':') return Error(absl::StrCat("expected ':' after layer \"", *layer, "\""));
      Next();
      SkipSpace();
      absl::StatusOr<float> scale = ParseScale(*layer);
      if (!scale.ok()) return scale.status();
      out[*layer] = *scale;
      where[*layer] = key_pos;
      SkipSpace();
      if (AtEnd()) return Error("unexpected end of file inside the object (missing '}')");
      if (Peek() == ',') {
        Next();
        SkipSpace();
        if (!AtEnd() && Peek() == '}') return Error("trailing ',' before '}' is not JSON");
        continue;
      }
      if (Peek() == '}') {
        Next();
        return Finish(out);
      }
      return Error("expected ',' or '}' after a scale");
    }
  }

 private:
  absl::StatusOr<std::map<int32_t, float>> Finish(std::map<int32_t, float>& out) {
    SkipSpace();
    if (!AtEnd()) return Error("unexpected text after the closing '}'");
    return std::move(out);
  }

  // At the opening quote.
  absl::StatusOr<int32_t> ParseKey() {
    const std::string pos = Position();
    Next();  // '"'
    std::string digits;
    while (!AtEnd() && Peek() != '"') {
      const char c = Peek();
      if (c == '\n') break;
      digits.push_back(c);
      Next();
    }
    if (AtEnd() || Peek() != '"') return ErrorAt(pos, "unterminated string (layer id)");
    Next();  // closing '"'
    if (digits.empty()) return ErrorAt(pos, "empty layer id \"\"");
    for (char c : digits) {
      if (c < '0' || c > '9') {
        return ErrorAt(pos, absl::StrCat("layer id \"", digits,
                                         "\" is not a non-negative decimal integer"));
      }
    }
    if (digits.size() > 1 && digits[0] == '0') {
      return ErrorAt(pos, absl::StrCat("layer id \"", digits, "\" has a leading zero"));
    }
    if (digits.size() > 10 || std::stoll(digits) > std::numeric_limits<int32_t>::max()) {
      return ErrorAt(pos, absl::StrCat("layer id \"", digits, "\" is beyond 2147483647"));
    }
    return static_cast<int32_t>(std::stoll(digits));
  }

  // A JSON number (RFC 8259 grammar), finite and > 0 as a float.
  absl::StatusOr<float> ParseScale(int32_t layer) {
    const std::string pos = Position();
    const std::string what = absl::StrCat("layer \"", layer, "\": ");
    if (AtEnd()) return ErrorAt(pos, absl::StrCat(what, "missing scale"));
    const char c0 = Peek();
    if (c0 == '"') return ErrorAt(pos, absl::StrCat(what, "scale must be a number, not a string"));
    if (c0 == '{' || c0 == '[') {
      return ErrorAt(pos, absl::StrCat(what, "scale must be a number, not an object or array"));
    }
    if (c0 == 't' || c0 == 'f' || c0 == 'n') {
      return ErrorAt(pos, absl::StrCat(what, "scale must be a number, not true/false/null"));
    }
    const size_t begin = i_;
    if (Peek() == '-') Next();
    if (AtEnd() || !IsDigit(Peek())) return ErrorAt(pos, absl::StrCat(what, "scale is not a JSON number"));
    if (Peek() == '0') {
      Next();
      if (!AtEnd() && IsDigit(Peek())) {
        return ErrorAt(pos, absl::StrCat(what, "scale has a leading zero (not JSON)"));
      }
    } else {
      while (!AtEnd() && IsDigit(Peek())) Next();
    }
    if (!AtEnd() && Peek() == '.') {
      Next();
      if (AtEnd() || !IsDigit(Peek())) {
        return ErrorAt(pos, absl::StrCat(what, "scale needs digits after '.'"));
      }
      while (!AtEnd() && IsDigit(Peek())) Next();
    }
    if (!AtEnd() && (Peek() == 'e' || Peek() == 'E')) {
      Next();
      if (!AtEnd() && (Peek() == '+' || Peek() == '-')) Next();
      if (AtEnd() || !IsDigit(Peek())) {
        return ErrorAt(pos, absl::StrCat(what, "scale needs digits in its exponent"));
      }
      while (!AtEnd() && IsDigit(Peek())) Next();
    }
    const std::string literal(text_.substr(begin, i_ - begin));
    errno = 0;
    const double v = std::strtod(literal.c_str(), nullptr);
    const float f = static_cast<float>(v);
    if (!(v > 0.0)) {
      return ErrorAt(pos, absl::StrCat(what, "scale ", literal, " must be > 0"));
    }
    if (!std::isfinite(f)) {
      return ErrorAt(pos, absl::StrCat(what, "scale ", literal, " overflows a 32-bit float"));
    }
    if (f == 0.0f) {
      return ErrorAt(pos, absl::StrCat(what, "scale ", literal, " underflows a 32-bit float to 0"));
    }
    return f;
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }
  bool AtEnd() const { return i_ >= text_.size(); }
  char Peek() const { return text_[i_]; }
  void Next() {
    if (text_[i_] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    ++i_;
  }
  void SkipSpace() {
    while (!AtEnd() && (Peek() == ' ' || Peek() == '\t' || Peek() == '\n' || Peek() == '\r')) Next();
  }
  std::string Position() const { return absl::StrCat("line ", line_, ", column ", col_); }
  absl::Status Error(absl::string_view msg) const { return ErrorAt(Position(), msg); }
  static absl::Status ErrorAt(const std::string& pos, absl::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(pos, ": ", msg));
  }

  absl::string_view text_;
  size_t i_ = 0;
  int line_ = 1;
  int col_ = 1;
};

}  // namespace

absl::StatusOr<std::map<int32_t, float>> ParseScalesJson(absl::string_view text) {
  return Parser(text).Parse();
}

}  // namespace dcpmerge::ctl
