// CPU-reference check for the benchmark (g++ side: calls MergeOnCpu, which
// needs absl; the .cu bench sees only this plain interface).
#ifndef DCPMERGE_BENCH_BENCH_CHECK_H_
#define DCPMERGE_BENCH_BENCH_CHECK_H_

#include <cstdint>

namespace dcpmerge {
namespace bench {

struct CheckResult {
  int64_t compared = 0;
  int64_t one_step = 0;     // codes one E4M3 step from the reference
  int64_t far = 0;          // codes further off (or NaN mismatches)
  int64_t scale_diff = 0;   // dynamic scales off by more than 1e-6 relative
  bool ok = false;          // MergeOnCpu accepted the arguments
};

// Codes a and b within one E4M3 step of each other (NaN only with NaN).
bool WithinOneStep(uint8_t a, uint8_t b);

// Packed inputs ([T,H,D] payloads, [H,T] natural-log LSEs). mode: 0 per
// tensor (static `scale`), 1 per token, 2 per group of 128 (dynamic scales
// in `scales`); dtype: 0 fp32, 1 fp16, 2 bf16. `codes`: the GPU's output.
CheckResult CheckFp8(int dtype, int mode, int num_parts, int64_t num_tokens,
                     int num_heads, int head_size, const void* const* parts,
                     const float* const* lses, float scale, const uint8_t* codes,
                     const float* scales);

}  // namespace bench
}  // namespace dcpmerge

#endif  // DCPMERGE_BENCH_BENCH_CHECK_H_
