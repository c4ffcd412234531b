// The merge contract: the one definition of what an N-way attention-state
// merge computes. The CPU reference (merge_reference.h) and the CUDA kernel
// (cuda/merge_launcher.h) both implement exactly this; tests compare them.
//
// ---------------------------------------------------------------- inputs ---
// N partial attention outputs of the same T tokens, H heads, D head size:
//   O_i[t,h,d]  dtype fp32 | fp16 | bf16, part i at partial_out[i];
//               element (t,h,d) at index t*token_stride + h*head_stride + d
//               (in elements; d is always contiguous).
//   L_i[t,h]    fp32 log-sum-exp, part i at partial_lse[i], contiguous,
//               layout [H,T] (index h*T + t, vLLM) or [T,H] (t*H + h,
//               FlashInfer); base e (FlashAttention, vLLM) or base 2
//               (FlashInfer). The base is part of the config, never guessed.
//
// ------------------------------------------------------------------ math ---
// Per (t,h), with exp/log in the configured base:
//   a part is EMPTY when L_i is not finite: -inf (FA3: no keys), +inf
//   (FA2: empty sequence) or NaN. An empty part has weight 0 and its O_i is
//   never read into the result (it may hold garbage, NaN included).
//   m   = max over non-empty parts of L_i
//   w_i = exp(L_i - m), s = sum_i w_i                    (fp32)
//   O   = (sum_i w_i * O_i) * (1 / s)                     (fp32 accumulation)
//   L   = m + log(s)
//   All parts empty: O = 0 and L = -inf (never NaN).
//   A NaN in a non-empty part's O_i propagates to O and is encoded as the
//   FP8 NaN code: corrupted inputs are made visible, not clamped to +-448.
//
// ---------------------------------------------------------------- output ---
// out is contiguous [T,H,D]; one of four modes:
//   kFp8PerTensor  FP8 E4M3 codes; q = e4m3(O * inv), inv = 1 / scale, with
//                  the static scale read from *static_scale at run time (a
//                  device pointer for the CUDA kernel, so a CUDA graph picks
//                  up scale changes). A scale that is <= 0, NaN, inf or
//                  outside [2^-126, 2^126] (see IsValidFp8Scale) is
//                  rejected by the CPU reference (INVALID_ARGUMENT) and by
//                  the control plane before it reaches a device; should one
//                  reach the kernel anyway, every code it writes is NaN.
//   kFp8PerToken   one scale per token over all H*D values: out_scales[t].
//   kFp8PerGroup   one scale per group of G = group_size (64|128) values
//                  along d: out_scales[(t*H + h)*(D/G) + g]; G divides D.
//   kPassthrough   O in the input dtype (round to nearest even), no scale.
// Dynamic scales (per token, per group): scale = DynamicFp8Scale(amax),
// amax = max |O| over the block's finite values (NaN and inf are left out
// of amax: NaN encodes as NaN, inf saturates). Codes: q = e4m3(O * (1/scale)).
// e4m3 (float8_e4m3fn): round to nearest even, saturate finite values and
// +-inf to +-448, every NaN -> 0x7F (the hardware drops a NaN's sign);
// bit-exact with CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
// out_lse (optional): fp32, same layout and base as the input LSE.
//
// Sizes are int64 throughout: T*H*D may exceed 2^31.
#ifndef DCPMERGE_KERNELS_MERGE_CONTRACT_H_
#define DCPMERGE_KERNELS_MERGE_CONTRACT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "base/limits.h"
#include "kernels/numeric.h"

namespace dcpmerge {

// kMaxParts (base/limits.h): most parts one merge combines.

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };
enum class LseBase : uint8_t { kNatural, kTwo };
enum class LseLayout : uint8_t { kHeadsTokens, kTokensHeads };
enum class OutputMode : uint8_t {
  kFp8PerTensor,
  kFp8PerToken,
  kFp8PerGroup,
  kPassthrough,
};

// Bytes per element: 4 (fp32) or 2 (fp16, bf16); 0 for an invalid value.
size_t DTypeSize(DType dtype);
absl::string_view DTypeName(DType dtype);
absl::string_view OutputModeName(OutputMode mode);

struct MergeShape {
  int32_t num_parts = 0;   // N, 1..kMaxParts
  int64_t num_tokens = 0;  // T >= 0 (0 is a valid empty step)
  int32_t num_heads = 0;   // H >= 1
  int32_t head_size = 0;   // D >= 1
};

// Fixed per configuration version, not per step.
struct MergeConfig {
  DType input_dtype = DType::kBFloat16;
  LseBase lse_base = LseBase::kNatural;
  LseLayout lse_layout = LseLayout::kHeadsTokens;
  OutputMode output_mode = OutputMode::kFp8PerTensor;
  int32_t group_size = 128;           // kFp8PerGroup only: 64 or 128
  bool power_of_two_scales = false;   // dynamic modes: scale = 2^ceil(log2)
};

// A buffer with its capacity. Every output is checked against the bytes its
// mode writes, so a buffer narrower than the mode needs is an error, never an
// overflow (the bug found in review of vLLM PR #36518).
struct OutBuffer {
  void* data = nullptr;
  size_t bytes = 0;
};

struct MergeArgs {
  MergeShape shape;
  MergeConfig config;

  const void* partial_out[kMaxParts] = {};   // N parts, input dtype
  const float* partial_lse[kMaxParts] = {};  // N parts, T*H floats each
  size_t partial_out_bytes = 0;  // capacity of every partial_out[i]
  size_t partial_lse_bytes = 0;  // capacity of every partial_lse[i]
  int64_t token_stride = 0;      // elements between tokens (>= H*D packed)
  int64_t head_stride = 0;       // elements between heads (>= D)

  const float* static_scale = nullptr;  // kFp8PerTensor only

  OutBuffer out;         // [T,H,D]: 1-byte FP8 codes or the input dtype
  OutBuffer out_scales;  // dynamic modes only, fp32 (see above)
  OutBuffer out_lse;     // optional: data == nullptr means not wanted
};

// Bytes / counts each output needs for a shape and config.
int64_t OutputBytes(const MergeShape& shape, const MergeConfig& config);
int64_t OutputScaleCount(const MergeShape& shape, const MergeConfig& config);
// Bytes one part's partial output spans with the given strides.
int64_t PartialOutSpanBytes(const MergeShape& shape, DType dtype,
                            int64_t token_stride, int64_t head_stride);

// kFp8PerGroup: the group sizes the kernels support (G also has to divide
// the head size).
inline bool IsSupportedGroupSize(int32_t group_size) {
  return group_size == 64 || group_size == 128;
}

// FP8 E4M3 codes at +-448 (0x7E, 0xFE), where every value beyond the range
// saturates to: what the servers count as "fp8_saturated".
inline bool IsSaturatedFp8Code(uint8_t code) { return (code & 0x7F) == 0x7E; }
uint64_t CountSaturatedFp8Codes(const uint8_t* codes, size_t count);

// Checks a configuration on its own (valid enum values, group size divides
// the head size, ...). INVALID_ARGUMENT naming the field on failure.
absl::Status ValidateMergeConfig(const MergeShape& shape,
                                 const MergeConfig& config);

// Checks everything that can be checked without reading device memory:
// shape, config, pointers, strides and every buffer's capacity.
// INVALID_ARGUMENT naming the field on failure. Both backends call it.
absl::Status ValidateMergeArgs(const MergeArgs& args);

// A static FP8 scale is usable iff it is finite and > 0 and both the scale
// and its reciprocal (which the kernels multiply by) are normal floats, i.e.
// 2^-126 <= scale <= 2^126. A subnormal scale would make 1/scale inf (and
// 0 * inf = NaN) on the CPU and is flushed to 0 by FTZ GPU code.
inline bool IsValidFp8Scale(float scale) {
  return scale >= 1.1754943508222875e-38f &&  // 2^-126
         scale <= 8.5070591730234616e37f;     // 2^126
}

// OK, or INVALID_ARGUMENT naming static_scale when !IsValidFp8Scale(scale).
// For callers that hold the scale on the host (the CUDA kernel can only
// read its device copy, see kFp8PerTensor above).
absl::Status ValidateStaticScale(float scale);

}  // namespace dcpmerge

#endif  // DCPMERGE_KERNELS_MERGE_CONTRACT_H_
