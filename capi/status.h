// The C ABI's error channel: every exported function returns a status code
// and leaves the message in a thread-local string (dcpmerge_last_error_message).
#ifndef DCPMERGE_CAPI_STATUS_H_
#define DCPMERGE_CAPI_STATUS_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dcpmerge::capi {

// Records `s` as this thread's last error (cleared when OK); returns its code.
int32_t Report(const absl::Status& s);
const char* LastMessage();

// INVALID_ARGUMENT when `p` is null, naming `what`.
inline absl::Status NotNull(const void* p, absl::string_view what) {
  if (p == nullptr) return absl::InvalidArgumentError(std::string(what) + ": null pointer");
  return absl::OkStatus();
}

// Checks a caller's struct_size against the struct this library was built with.
absl::Status CheckStructSize(uint64_t given, size_t expected, absl::string_view what);

// "" for null: the C ABI's optional strings.
inline std::string Str(const char* s) { return s == nullptr ? std::string() : std::string(s); }

// A malloc'd copy of `s` (released by dcpmerge_free).
char* CopyOut(const std::string& s);

}  // namespace dcpmerge::capi

#endif  // DCPMERGE_CAPI_STATUS_H_
