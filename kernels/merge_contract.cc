#include "kernels/merge_contract.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dcpmerge {
namespace {

// a * b for a, b >= 0; false on int64 overflow.
bool MulNonNeg(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
bool AddNonNeg(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

bool ValidDType(DType d) {
  return static_cast<int>(d) <= static_cast<int>(DType::kBFloat16);
}
bool ValidMode(OutputMode m) {
  return static_cast<int>(m) <= static_cast<int>(OutputMode::kPassthrough);
}
bool IsDynamic(OutputMode m) {
  return m == OutputMode::kFp8PerToken || m == OutputMode::kFp8PerGroup;
}

// T*H*D, or -1 on overflow or a negative factor.
int64_t NumElements(const MergeShape& s) {
  if (s.num_tokens < 0 || s.num_heads < 0 || s.head_size < 0) return -1;
  int64_t th = 0, thd = 0;
  if (!MulNonNeg(s.num_tokens, s.num_heads, &th)) return -1;
  if (!MulNonNeg(th, s.head_size, &thd)) return -1;
  return thd;
}

std::string ShapeText(const MergeShape& s) {
  return absl::StrCat("T=", s.num_tokens, ",H=", s.num_heads,
                      ",D=", s.head_size);
}

absl::Status CheckCapacity(absl::string_view field, size_t have, int64_t need,
                           absl::string_view what) {
  if (need < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": size of ", what, " overflows int64"));
  }
  if (static_cast<uint64_t>(have) < static_cast<uint64_t>(need)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", have, " but ", what, " needs ", need));
  }
  return absl::OkStatus();
}

absl::Status CheckAligned(absl::string_view field, const void* p,
                          size_t align) {
  if (align > 1 && reinterpret_cast<uintptr_t>(p) % align != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be aligned to ", align, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
  }
  return 0;
}

uint64_t CountSaturatedFp8Codes(const uint8_t* codes, size_t count) {
  uint64_t n = 0;
  for (size_t i = 0; i < count; ++i) n += IsSaturatedFp8Code(codes[i]);
  return n;
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "fp32";
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
  }
  return "invalid_dtype";
}

absl::string_view OutputModeName(OutputMode mode) {
  switch (mode) {
    case OutputMode::kFp8PerTensor:
      return "fp8_per_tensor";
    case OutputMode::kFp8PerToken:
      return "fp8_per_token";
    case OutputMode::kFp8PerGroup:
      return "fp8_per_group";
    case OutputMode::kPassthrough:
      return "passthrough";
  }
  return "invalid_output_mode";
}

int64_t OutputBytes(const MergeShape& shape, const MergeConfig& config) {
  if (!ValidMode(config.output_mode) || !ValidDType(config.input_dtype)) {
    return -1;
  }
  const int64_t n = NumElements(shape);
  if (n < 0) return -1;
  if (config.output_mode != OutputMode::kPassthrough) return n;  // 1 B/code
  int64_t bytes = 0;
  if (!MulNonNeg(n, static_cast<int64_t>(DTypeSize(config.input_dtype)),
                 &bytes)) {
    return -1;
  }
  return bytes;
}

int64_t OutputScaleCount(const MergeShape& shape, const MergeConfig& config) {
  switch (config.output_mode) {
    case OutputMode::kFp8PerTensor:
    case OutputMode::kPassthrough:
      return 0;
    case OutputMode::kFp8PerToken:
      return shape.num_tokens < 0 ? -1 : shape.num_tokens;
    case OutputMode::kFp8PerGroup: {
      if (config.group_size <= 0 || shape.head_size < 0 ||
          shape.head_size % config.group_size != 0) {
        return -1;
      }
      if (shape.num_tokens < 0 || shape.num_heads < 0) return -1;
      int64_t th = 0, count = 0;
      if (!MulNonNeg(shape.num_tokens, shape.num_heads, &th)) return -1;
      if (!MulNonNeg(th, shape.head_size / config.group_size, &count)) {
        return -1;
      }
      return count;
    }
  }
  return -1;
}

int64_t PartialOutSpanBytes(const MergeShape& shape, DType dtype,
                            int64_t token_stride, int64_t head_stride) {
  const int64_t size = static_cast<int64_t>(DTypeSize(dtype));
  if (size == 0 || shape.num_tokens < 0 || shape.num_heads < 0 ||
      shape.head_size < 0 || token_stride < 0 || head_stride < 0) {
    return -1;
  }
  if (shape.num_tokens == 0 || shape.num_heads == 0 || shape.head_size == 0) {
    return 0;
  }
  // ((T-1)*token_stride + (H-1)*head_stride + D) * size: one past the last
  // element read.
  int64_t a = 0, b = 0, elems = 0, bytes = 0;
  if (!MulNonNeg(shape.num_tokens - 1, token_stride, &a) ||
      !MulNonNeg(static_cast<int64_t>(shape.num_heads) - 1, head_stride, &b) ||
      !AddNonNeg(a, b, &elems) || !AddNonNeg(elems, shape.head_size, &elems) ||
      !MulNonNeg(elems, size, &bytes)) {
    return -1;
  }
  return bytes;
}

absl::Status ValidateMergeConfig(const MergeShape& shape,
                                 const MergeConfig& config) {
  if (shape.num_parts < 1 || shape.num_parts > kMaxParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_parts must be in [1, ", kMaxParts, "], got ",
                     shape.num_parts));
  }
  if (shape.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_tokens must be >= 0, got ", shape.num_tokens));
  }
  if (shape.num_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_heads must be >= 1, got ", shape.num_heads));
  }
  if (shape.head_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.head_size must be >= 1, got ", shape.head_size));
  }
  if (!ValidDType(config.input_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.input_dtype has invalid value ",
                     static_cast<int>(config.input_dtype)));
  }
  if (static_cast<int>(config.lse_base) > static_cast<int>(LseBase::kTwo)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.lse_base has invalid value ",
                     static_cast<int>(config.lse_base)));
  }
  if (static_cast<int>(config.lse_layout) >
      static_cast<int>(LseLayout::kTokensHeads)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.lse_layout has invalid value ",
                     static_cast<int>(config.lse_layout)));
  }
  if (!ValidMode(config.output_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.output_mode has invalid value ",
                     static_cast<int>(config.output_mode)));
  }
  if (config.output_mode == OutputMode::kFp8PerGroup) {
    if (!IsSupportedGroupSize(config.group_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.group_size must be 64 or 128 in output_mode "
                       "fp8_per_group, got ",
                       config.group_size));
    }
    if (shape.head_size % config.group_size != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.group_size ", config.group_size,
                       " does not divide shape.head_size ", shape.head_size));
    }
  }
  if (NumElements(shape) < 0 || OutputBytes(shape, config) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.num_tokens: ", ShapeText(shape),
                     " makes the output size overflow int64"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMergeArgs(const MergeArgs& args) {
  const MergeShape& shape = args.shape;
  const MergeConfig& config = args.config;
  if (absl::Status s = ValidateMergeConfig(shape, config); !s.ok()) return s;

  const int64_t T = shape.num_tokens;
  const int64_t H = shape.num_heads;
  const int64_t D = shape.head_size;
  const size_t elem = DTypeSize(config.input_dtype);
  // Nothing is read or written for T == 0, so buffers may be null/empty.
  const bool empty = T == 0;

  // Strides (in elements). Overlapping heads or tokens are allowed (inputs
  // are only read); the span they imply must fit every part's capacity.
  if (args.head_stride < D) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_stride must be >= shape.head_size (", D, "), got ",
                     args.head_stride));
  }
  if (args.token_stride < D) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_stride must be >= shape.head_size (", D, "), got ",
                     args.token_stride));
  }
  const int64_t span = PartialOutSpanBytes(shape, config.input_dtype,
                                           args.token_stride, args.head_stride);
  if (span < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_stride/head_stride: the span of a partial output with ",
        ShapeText(shape), ", token_stride=", args.token_stride,
        ", head_stride=", args.head_stride, " overflows int64"));
  }
  if (absl::Status s = CheckCapacity(
          "partial_out_bytes", args.partial_out_bytes, span,
          absl::StrCat(DTypeName(config.input_dtype), " partial output with ",
                       ShapeText(shape), ", token_stride=", args.token_stride,
                       ", head_stride=", args.head_stride));
      !s.ok()) {
    return s;
  }
  int64_t lse_count = 0, lse_bytes = 0;
  if (!MulNonNeg(T, H, &lse_count) || !MulNonNeg(lse_count, 4, &lse_bytes)) {
    lse_bytes = -1;
  }
  if (absl::Status s =
          CheckCapacity("partial_lse_bytes", args.partial_lse_bytes, lse_bytes,
                        absl::StrCat("fp32 LSE with ", ShapeText(shape)));
      !s.ok()) {
    return s;
  }
  for (int i = 0; i < shape.num_parts; ++i) {
    if (!empty && args.partial_out[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("partial_out[", i, "] is null"));
    }
    if (absl::Status s = CheckAligned(absl::StrCat("partial_out[", i, "]"),
                                      args.partial_out[i], elem);
        !s.ok()) {
      return s;
    }
    if (!empty && args.partial_lse[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("partial_lse[", i, "] is null"));
    }
    if (absl::Status s = CheckAligned(absl::StrCat("partial_lse[", i, "]"),
                                      args.partial_lse[i], 4);
        !s.ok()) {
      return s;
    }
  }

  if (config.output_mode == OutputMode::kFp8PerTensor) {
    if (args.static_scale == nullptr) {
      return absl::InvalidArgumentError(
          "static_scale is null but output_mode fp8_per_tensor needs it");
    }
    if (absl::Status s = CheckAligned("static_scale", args.static_scale, 4);
        !s.ok()) {
      return s;
    }
  }

  const int64_t out_bytes = OutputBytes(shape, config);
  if (!empty && args.out.data == nullptr) {
    return absl::InvalidArgumentError("out.data is null");
  }
  std::string out_what =
      absl::StrCat("output_mode ", OutputModeName(config.output_mode));
  if (config.output_mode == OutputMode::kPassthrough) {
    absl::StrAppend(&out_what, " (", DTypeName(config.input_dtype), ")");
  }
  absl::StrAppend(&out_what, " with ", ShapeText(shape));
  if (absl::Status s =
          CheckCapacity("out.bytes", args.out.bytes, out_bytes, out_what);
      !s.ok()) {
    return s;
  }
  if (config.output_mode == OutputMode::kPassthrough) {
    if (absl::Status s = CheckAligned("out.data", args.out.data, elem);
        !s.ok()) {
      return s;
    }
  }

  if (IsDynamic(config.output_mode)) {
    const int64_t count = OutputScaleCount(shape, config);
    int64_t bytes = 0;
    if (count < 0 || !MulNonNeg(count, 4, &bytes)) bytes = -1;
    if (!empty && args.out_scales.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("out_scales.data is null but output_mode ",
                       OutputModeName(config.output_mode), " writes scales"));
    }
    std::string what =
        absl::StrCat("output_mode ", OutputModeName(config.output_mode),
                     " with ", ShapeText(shape));
    if (config.output_mode == OutputMode::kFp8PerGroup) {
      absl::StrAppend(&what, ",G=", config.group_size);
    }
    if (absl::Status s = CheckCapacity("out_scales.bytes",
                                       args.out_scales.bytes, bytes, what);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            CheckAligned("out_scales.data", args.out_scales.data, 4);
        !s.ok()) {
      return s;
    }
  }

  if (args.out_lse.data != nullptr) {
    if (absl::Status s =
            CheckCapacity("out_lse.bytes", args.out_lse.bytes, lse_bytes,
                          absl::StrCat("fp32 LSE with ", ShapeText(shape)));
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckAligned("out_lse.data", args.out_lse.data, 4);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateStaticScale(float scale) {
  if (IsValidFp8Scale(scale)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "static_scale must be finite and in [2^-126, 2^126], got ", scale));
}

}  // namespace dcpmerge
