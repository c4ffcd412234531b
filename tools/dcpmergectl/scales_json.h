// Strict parser for scale files given to `dcpmergectl set-scales --file`.
//
// The file is one JSON object mapping a layer id to its static FP8 scale:
//
//   {"0": 0.0125, "1": 0.011, "17": 2.5e-2}
//
// Keys: decimal layer ids 0..2147483647 (no sign, no leading zeros, no
// escapes), each at most once. Values: JSON numbers that are finite and > 0
// as a 32-bit float (what the server stores). Anything else (comments,
// trailing commas, other value types, text after the object) is rejected
// with INVALID_ARGUMENT naming the line, the column and the problem.
#ifndef DCPMERGE_TOOLS_DCPMERGECTL_SCALES_JSON_H_
#define DCPMERGE_TOOLS_DCPMERGECTL_SCALES_JSON_H_

#include <cstdint>
#include <map>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dcpmerge::ctl {

absl::StatusOr<std::map<int32_t, float>> ParseScalesJson(absl::string_view text);

}  // namespace dcpmerge::ctl

#endif  // DCPMERGE_TOOLS_DCPMERGECTL_SCALES_JSON_H_
