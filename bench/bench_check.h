// CPU-reference check for the benchmark (g++ side: calls MergeOnCpu, which
// needs absl; the .cu bench sees only this plain interface).
#ifndef DCPMERGE_BENCH_BENCH_CHECK_H_
#define DCPMERGE_BENCH_BENCH_CHECK_H_

#include <cstdint>

namespace dcpmerge {
namespace bench {

struct CheckResult {
  int64_t compared = 0;
  int64_t one_step = 0;   // codes one E4M3 step from the reference
  int64_t far = 0;        // codes further off (or NaN mismatches)
  bool ok = false;        // MergeOnCpu accepted the arguments
};

// Packed inputs ([T,H,D] payloads, [H,T] natural-log LSEs), per-tensor FP8
// with `scale`. dtype: 0 fp32, 1 fp16, 2 bf16. `codes`: the GPU's output.
CheckResult CheckFp8PerTensor(int dtype, int num_parts, int64_t num_tokens,
                              int num_heads, int head_size,
                              const void* const* parts, const float* const* lses,
                              float scale, const uint8_t* codes);

}  // namespace bench
}  // namespace dcpmerge

#endif  // DCPMERGE_BENCH_BENCH_CHECK_H_
