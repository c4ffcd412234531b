#include "bench/bench_check.h"

#include <cmath>
#include <cstdlib>
#include <vector>

#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"

namespace dcpmerge {
namespace bench {

bool WithinOneStep(uint8_t a, uint8_t b) {
  if (a == b) return true;
  const bool an = (a & 0x7F) == 0x7F, bn = (b & 0x7F) == 0x7F;
  if (an || bn) return false;
  const int oa = (a & 0x80) ? -(a & 0x7F) : (a & 0x7F);
  const int ob = (b & 0x80) ? -(b & 0x7F) : (b & 0x7F);
  return std::abs(oa - ob) <= 1;
}

CheckResult CheckFp8(int dtype, int mode, int num_parts, int64_t num_tokens,
                     int num_heads, int head_size, const void* const* parts,
                     const float* const* lses, float scale, const uint8_t* codes,
                     const float* scales) {
  CheckResult r;
  MergeArgs a;
  a.shape = {num_parts, num_tokens, num_heads, head_size};
  a.config.input_dtype = static_cast<DType>(dtype);
  a.config.lse_base = LseBase::kNatural;
  a.config.lse_layout = LseLayout::kHeadsTokens;
  a.config.output_mode = static_cast<OutputMode>(mode);
  a.config.group_size = 128;
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
  const int64_t nscales = OutputScaleCount(a.shape, a.config);
  std::vector<float> ref_scales(nscales);
  if (nscales > 0) a.out_scales = {ref_scales.data(), ref_scales.size() * 4};
  if (!MergeOnCpu(a).ok()) return r;
  r.ok = true;
  for (int64_t e = 0; e < elems; ++e) {
    ++r.compared;
    if (codes[e] == ref[e]) continue;
    if (WithinOneStep(codes[e], ref[e])) ++r.one_step; else ++r.far;
  }
  for (int64_t i = 0; i < nscales; ++i) {
    if (!(std::fabs(scales[i] - ref_scales[i]) <= 1e-6f * std::fabs(ref_scales[i])))
      ++r.scale_diff;
  }
  return r;
}

}  // namespace bench
}  // namespace dcpmerge
