#include "capi/status.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace dcpmerge::capi {
namespace {
thread_local std::string last_message;
}  // namespace

int32_t Report(const absl::Status& s) {
  if (s.ok()) {
    last_message.clear();
    return 0;
  }
  last_message = std::string(s.message());
  return static_cast<int32_t>(s.code());
}

const char* LastMessage() { return last_message.c_str(); }

absl::Status CheckStructSize(uint64_t given, size_t expected, absl::string_view what) {
  if (given != expected) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".struct_size is ", given, ", this library expects ",
                                                   expected, " (binding and library versions differ)"));
  }
  return absl::OkStatus();
}

char* CopyOut(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p == nullptr) return nullptr;
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

}  // namespace dcpmerge::capi
