#include "bench/bench_check.h"

#include <cstdlib>
#include <vector>

#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"

namespace dcpmerge {
namespace bench {

CheckResult CheckFp8PerTensor(int dtype, int num_parts, int64_t num_tokens,
                              int num_heads, int head_size,
                              const void* const* parts, const float* const* lses,
                              float scale, const uint8_t* codes) {
  CheckResult r;
  MergeArgs a;
  a.shape = {num_parts, num_tokens, num_heads, head_size};
  a.config.input_dtype = static_cast<DType>(dtype);
  a.config.lse_base = LseBase::kNatural;
  a.config.lse_layout = LseLayout::kHeadsTokens;
  a.config.output_mode = OutputMode::kFp8PerTensor;
  const int64_t elems = num_tokens * num_heads * head_size;
  for (int i = 0; i < num_parts; ++i) {
    a.partial_out[i] = parts[i];
    a.partial_lse[i] = lses[i];
  }
  a.partial_out_bytes = static_cast<size_t>(elems) * DTypeSize(a.config.input_dtype);
  a.partial_lse_bytes = static_cast<size_t>(num_tokens * num_heads) * 4;
  a.token_stride = int64_t{num_heads} * head_size;
  a.head_stride = head_size;
  a.static_scale = &scale;
  std::vector<uint8_t> ref(elems);
  a.out = {ref.data(), ref.size()};
  if (!MergeOnCpu(a).ok()) return r;
  r.ok = true;
  for (int64_t e = 0; e < elems; ++e) {
    ++r.compared;
    const uint8_t g = codes[e], c = ref[e];
    if (g == c) continue;
    const bool gn = (g & 0x7F) == 0x7F, cn = (c & 0x7F) == 0x7F;
    if (gn || cn) {
      if (!(gn && cn)) ++r.far;
      continue;
    }
    const int og = (g & 0x80) ? -(g & 0x7F) : (g & 0x7F);
    const int oc = (c & 0x80) ? -(c & 0x7F) : (c & 0x7F);
    if (std::abs(og - oc) <= 1) ++r.one_step; else ++r.far;
  }
  return r;
}

}  // namespace bench
}  // namespace dcpmerge
