// The scale files `dcpmergectl set-scales --file` reads
// (tools/dcpmergectl/scales_json.h): an operator's file, possibly damaged or
// not what it claims to be.
//
// Input: the file's bytes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "tests/fuzz/fuzz_check.h"
#include "tools/dcpmergectl/scales_json.h"

namespace dcpmerge::ctl {
namespace {

// The table as a writer would put it in a file (9 significant digits: every
// float reads back exactly).
std::string ToJson(const std::map<int32_t, float>& scales) {
  std::string out = "{";
  for (const auto& [layer, scale] : scales) {
    absl::StrAppend(&out, out.size() > 1 ? ",\n" : "\n", "  \"", layer, "\": ", absl::StrFormat("%.9g", scale));
  }
  return out + "\n}\n";
}

void FuzzOne(absl::string_view text) {
  const absl::StatusOr<std::map<int32_t, float>> scales = ParseScalesJson(text);
  if (!scales.ok()) {
    // Refusals are INVALID_ARGUMENT and say where ("line L, column C: ...").
    FUZZ_CHECK(absl::IsInvalidArgument(scales.status()) && absl::StartsWith(scales.status().message(), "line "),
               scales.status().ToString());
    return;
  }
  for (const auto& [layer, scale] : *scales) {
    FUZZ_CHECK(layer >= 0, absl::StrCat("layer ", layer));
    FUZZ_CHECK(std::isfinite(scale) && scale > 0.0f, absl::StrCat("layer ", layer, " scale ", scale));
  }
  const std::string again = ToJson(*scales);
  const absl::StatusOr<std::map<int32_t, float>> back = ParseScalesJson(again);
  FUZZ_CHECK(back.ok() && *back == *scales, absl::StrCat("re-encoded as\n", again, "reads back as ",
                                                          back.ok() ? ToJson(*back) : back.status().ToString()));
}

}  // namespace
}  // namespace dcpmerge::ctl

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpmerge::ctl::FuzzOne(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
