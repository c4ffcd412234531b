// Deterministic partial outputs for tests and the expected merge from the
// CPU reference (MergeOnCpu), bf16 in, [H,T] natural-log LSE.
#ifndef DCPMERGE_TESTS_SERVER_TEST_DATA_H_
#define DCPMERGE_TESTS_SERVER_TEST_DATA_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"
#include "kernels/numeric.h"

namespace dcpmerge::testing {

struct PartData {
  std::string out;         // [T,H,D] bf16
  std::vector<float> lse;  // [H,T]
};

inline PartData MakePart(uint64_t seed, uint64_t step, int rank, int64_t T, int H, int D) {
  std::mt19937_64 rng(seed * 1000003ull + step * 7919ull + rank);
  std::uniform_real_distribution<float> val(-4.0f, 4.0f);
  PartData p;
  p.out.resize(T * H * D * 2);
  for (int64_t i = 0; i < T * H * D; ++i) {
    const uint16_t b = FloatToBFloat16Bits(val(rng));
    memcpy(&p.out[i * 2], &b, 2);
  }
  p.lse.resize(T * H);
  for (auto& l : p.lse) {
    l = val(rng);
    if (rng() % 10 == 0) l = -std::numeric_limits<float>::infinity();  // empty part
  }
  return p;
}

struct Expected {
  std::vector<uint8_t> out;
  std::vector<float> scales;
};

// MergeOnCpu over `parts` with FP8 per tensor (static scale) or the dynamic
// modes; packed strides.
inline Expected MergeExpected(const std::vector<PartData>& parts, int64_t T, int H, int D,
                              OutputMode mode, float scale) {
  MergeArgs a;
  a.shape = {static_cast<int32_t>(parts.size()), T, H, D};
  a.config.input_dtype = DType::kBFloat16;
  a.config.lse_base = LseBase::kNatural;
  a.config.lse_layout = LseLayout::kHeadsTokens;
  a.config.output_mode = mode;
  a.config.group_size = D % 128 == 0 ? 128 : 64;
  for (size_t i = 0; i < parts.size(); ++i) {
    a.partial_out[i] = parts[i].out.data();
    a.partial_lse[i] = parts[i].lse.data();
  }
  a.partial_out_bytes = T * H * D * 2;
  a.partial_lse_bytes = T * H * 4;
  a.token_stride = int64_t{H} * D;
  a.head_stride = D;
  a.static_scale = &scale;
  Expected e;
  e.out.resize(OutputBytes(a.shape, a.config));
  a.out = {e.out.data(), e.out.size()};
  if (mode == OutputMode::kFp8PerTensor) {
    e.scales = {scale};
  } else {
    e.scales.resize(OutputScaleCount(a.shape, a.config));
    a.out_scales = {e.scales.data(), e.scales.size() * 4};
  }
  absl::Status st = MergeOnCpu(a, 1);
  if (!st.ok()) e.out.clear();
  return e;
}

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_SERVER_TEST_DATA_H_
