// The names the tools use for the v1 API's enums (flags, tables, metrics
// labels): one table per enum, shared by dcpmerge_server's flags,
// dcpmergectl, the demo and the metrics exporter.
//
//   input dtype   bf16 | fp16 | fp32
//   LSE base      e | 2
//   LSE layout    heads_tokens | tokens_heads
//   output mode   fp8_per_tensor | fp8_per_token | fp8_per_group | passthrough
//   return mode   full | head_slice
//   data plane    grpc | nccl
#ifndef DCPMERGE_COMMON_NAMES_H_
#define DCPMERGE_COMMON_NAMES_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "dcpmerge/v1/config.pb.h"

namespace dcpmerge {

template <typename E>
struct NamedValue {
  const char* name;
  E value;
};

inline constexpr NamedValue<v1::DType> kDTypeNames[] = {
    {"bf16", v1::DTYPE_BFLOAT16}, {"fp16", v1::DTYPE_FLOAT16}, {"fp32", v1::DTYPE_FLOAT32}};
inline constexpr NamedValue<v1::LseBase> kLseBaseNames[] = {{"e", v1::LSE_BASE_E}, {"2", v1::LSE_BASE_2}};
inline constexpr NamedValue<v1::LseLayout> kLseLayoutNames[] = {
    {"heads_tokens", v1::LSE_LAYOUT_HEADS_TOKENS}, {"tokens_heads", v1::LSE_LAYOUT_TOKENS_HEADS}};
inline constexpr NamedValue<v1::OutputMode> kOutputModeNames[] = {
    {"fp8_per_tensor", v1::OUTPUT_MODE_FP8_PER_TENSOR},
    {"fp8_per_token", v1::OUTPUT_MODE_FP8_PER_TOKEN},
    {"fp8_per_group", v1::OUTPUT_MODE_FP8_PER_GROUP},
    {"passthrough", v1::OUTPUT_MODE_PASSTHROUGH}};
inline constexpr NamedValue<v1::ReturnMode> kReturnModeNames[] = {{"full", v1::RETURN_MODE_FULL},
                                                                  {"head_slice", v1::RETURN_MODE_HEAD_SLICE}};
inline constexpr NamedValue<v1::DataPlane> kDataPlaneNames[] = {{"grpc", v1::DATA_PLANE_GRPC},
                                                                {"nccl", v1::DATA_PLANE_NCCL}};

// The name of `value`; "" when the table has none (an unspecified value).
template <typename E, size_t N>
absl::string_view NameOf(const NamedValue<E> (&table)[N], E value) {
  for (const NamedValue<E>& n : table) {
    if (n.value == value) return n.name;
  }
  return "";
}

// "a | b | c": every name of the table.
template <typename E, size_t N>
std::string NameChoices(const NamedValue<E> (&table)[N]) {
  std::string out;
  for (const NamedValue<E>& n : table) absl::StrAppend(&out, out.empty() ? "" : " | ", n.name);
  return out;
}

// Parses a name (case-insensitive) into *out. INVALID_ARGUMENT
// "--<flag>: '<text>' is not one of a | b | c" otherwise.
template <typename E, size_t N>
absl::Status ParseName(const NamedValue<E> (&table)[N], absl::string_view flag, absl::string_view text,
                       E* out) {
  const std::string lower = absl::AsciiStrToLower(text);
  for (const NamedValue<E>& n : table) {
    if (lower == n.name) {
      *out = n.value;
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, ": '", text, "' is not one of ", NameChoices(table)));
}

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_NAMES_H_
