#include "kernels/merge_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/merge_contract.h"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// Below this much work (T*H*D*N element-steps) a call runs inline; above it
// every extra thread gets at least this much.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 17;

// Element loaders / storers per input dtype.
struct F32 {
  using Elem = float;
  static float Load(float v) { return v; }
  static float Store(float v) { return v; }
};
struct F16 {
  using Elem = uint16_t;
  static float Load(uint16_t v) { return HalfBitsToFloat(v); }
  static uint16_t Store(float v) { return FloatToHalfBits(v); }
};
struct BF16 {
  using Elem = uint16_t;
  static float Load(uint16_t v) { return BFloat16BitsToFloat(v); }
  static uint16_t Store(float v) { return FloatToBFloat16Bits(v); }
};

// Largest |v| over the finite values (0 if none). On the bit patterns:
// non-negative floats order like their bits as integers, which vectorizes.
float FiniteAmax(const float* __restrict v, int64_t n) {
  int32_t amax = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t a = static_cast<int32_t>(FloatBits(v[i]) & 0x7FFFFFFFu);
    const int32_t finite = a < 0x7F800000 ? a : 0;  // NaN, inf left out
    amax = amax > finite ? amax : finite;
  }
  return BitsToFloat(static_cast<uint32_t>(amax));
}

void EncodeRow(const float* __restrict v, int64_t n, float inv,
               uint8_t* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = EncodeE4M3(v[i] * inv);
}

// Everything a worker needs, decoded once.
struct Plan {
  const MergeArgs* args;
  int64_t T, H, D;
  int N;
  bool base2;
  bool heads_tokens;
  OutputMode mode;
  bool pow2;
  int64_t group;     // kFp8PerGroup
  float inv_static;  // kFp8PerTensor
};

template <typename In>
class Worker {
 public:
  using Elem = typename In::Elem;

  explicit Worker(const Plan& p)
      : p_(p),
        buf_(static_cast<size_t>(p.mode == OutputMode::kFp8PerToken ? p.H * p.D
                                                                    : p.D)) {}

  void Run(int64_t t0, int64_t t1) {
    const bool per_token = p_.mode == OutputMode::kFp8PerToken;
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t h = 0; h < p_.H; ++h) {
        float* o = buf_.data() + (per_token ? h * p_.D : 0);
        MergeHead(t, h, o);
        if (!per_token) EmitHead(t, h, o);
      }
      if (per_token) {
        const int64_t n = p_.H * p_.D;
        const float scale =
            DynamicFp8Scale(FiniteAmax(buf_.data(), n), p_.pow2);
        static_cast<float*>(p_.args->out_scales.data)[t] = scale;
        EncodeRow(buf_.data(), n, 1.0f / scale,
                  static_cast<uint8_t*>(p_.args->out.data) + t * n);
      }
    }
  }

 private:
  // o[0..D) = merged O[t,h,:] (fp32); writes out_lse if wanted.
  void MergeHead(int64_t t, int64_t h, float* __restrict o) {
    const MergeArgs& a = *p_.args;
    const int64_t lse_index = p_.heads_tokens ? h * p_.T + t : t * p_.H + h;
    const int64_t D = p_.D;

    float lse[kMaxParts];
    bool live[kMaxParts];
    float m = -kInf;
    for (int i = 0; i < p_.N; ++i) {
      lse[i] = a.partial_lse[i][lse_index];
      live[i] = std::isfinite(lse[i]);
      m = (live[i] && lse[i] > m) ? lse[i] : m;
    }
    float* out_lse = static_cast<float*>(a.out_lse.data);
    if (m == -kInf) {  // every part empty
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      if (out_lse != nullptr) out_lse[lse_index] = -kInf;
      return;
    }

    const int64_t offset = t * a.token_stride + h * a.head_stride;
    float s = 0.0f;
    bool first = true;
    for (int i = 0; i < p_.N; ++i) {
      if (!live[i]) continue;  // empty: its O_i is never read
      const float w = p_.base2 ? exp2f(lse[i] - m) : expf(lse[i] - m);
      s += w;
      const Elem* __restrict src =
          static_cast<const Elem*>(a.partial_out[i]) + offset;
      if (first) {
        // Same as accumulating onto -0 (the additive identity).
        for (int64_t d = 0; d < D; ++d) o[d] = w * In::Load(src[d]);
        first = false;
      } else {
        for (int64_t d = 0; d < D; ++d) o[d] += w * In::Load(src[d]);
      }
    }
    const float inv_s = 1.0f / s;  // s >= 1: the max part has weight 1
    for (int64_t d = 0; d < D; ++d) o[d] *= inv_s;
    if (out_lse != nullptr) {
      out_lse[lse_index] = m + (p_.base2 ? log2f(s) : logf(s));
    }
  }

  void EmitHead(int64_t t, int64_t h, const float* __restrict o) {
    const MergeArgs& a = *p_.args;
    const int64_t D = p_.D;
    const int64_t base = (t * p_.H + h) * D;
    switch (p_.mode) {
      case OutputMode::kFp8PerTensor:
        EncodeRow(o, D, p_.inv_static,
                  static_cast<uint8_t*>(a.out.data) + base);
        break;
      case OutputMode::kFp8PerGroup: {
        const int64_t G = p_.group;
        const int64_t groups = D / G;
        float* scales =
            static_cast<float*>(a.out_scales.data) + (t * p_.H + h) * groups;
        uint8_t* codes = static_cast<uint8_t*>(a.out.data) + base;
        for (int64_t g = 0; g < groups; ++g) {
          const float scale =
              DynamicFp8Scale(FiniteAmax(o + g * G, G), p_.pow2);
          scales[g] = scale;
          EncodeRow(o + g * G, G, 1.0f / scale, codes + g * G);
        }
        break;
      }
      case OutputMode::kPassthrough: {
        Elem* __restrict dst = static_cast<Elem*>(a.out.data) + base;
        for (int64_t d = 0; d < D; ++d) dst[d] = In::Store(o[d]);
        break;
      }
      case OutputMode::kFp8PerToken:
        break;  // emitted per token
    }
  }

  const Plan& p_;
  std::vector<float> buf_;
};

template <typename In>
void RunChunks(const Plan& plan, int threads) {
  if (threads <= 1) {
    Worker<In>(plan).Run(0, plan.T);
    return;
  }
  const int64_t T = plan.T;
  auto bound = [&](int k) { return T * k / threads; };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int k = 1; k < threads; ++k) {
    const int64_t lo = bound(k), hi = bound(k + 1);
    try {
      pool.emplace_back([&plan, lo, hi] { Worker<In>(plan).Run(lo, hi); });
    } catch (const std::system_error&) {
      Worker<In>(plan).Run(lo, hi);  // no thread to be had: do it here
    }
  }
  Worker<In>(plan).Run(0, bound(1));
  for (std::thread& th : pool) th.join();
}

}  // namespace

absl::Status MergeOnCpu(const MergeArgs& args, int num_threads) {
  if (absl::Status s = ValidateMergeArgs(args); !s.ok()) return s;
  const MergeShape& shape = args.shape;
  const MergeConfig& config = args.config;

  Plan plan;
  plan.args = &args;
  plan.T = shape.num_tokens;
  plan.H = shape.num_heads;
  plan.D = shape.head_size;
  plan.N = shape.num_parts;
  plan.base2 = config.lse_base == LseBase::kTwo;
  plan.heads_tokens = config.lse_layout == LseLayout::kHeadsTokens;
  plan.mode = config.output_mode;
  plan.pow2 = config.power_of_two_scales;
  plan.group = config.group_size;
  plan.inv_static = 1.0f;
  if (config.output_mode == OutputMode::kFp8PerTensor) {
    const float scale = *args.static_scale;
    if (absl::Status st = ValidateStaticScale(scale); !st.ok()) return st;
    plan.inv_static = 1.0f / scale;
  }
  if (plan.T == 0) return absl::OkStatus();

  // Threads over tokens; each token is computed the same way whatever the
  // split, so results do not depend on the thread count.
  int threads = num_threads > 0
                    ? num_threads
                    : static_cast<int>(std::thread::hardware_concurrency());
  // In double: T*H*D fits int64 (validated) but times N might not.
  const double work = static_cast<double>(plan.T) * plan.H * plan.D * plan.N;
  const double by_work = std::max(1.0, work / kMinWorkPerThread);
  threads = static_cast<int>(
      std::min<double>({static_cast<double>(std::max(threads, 1)),
                        static_cast<double>(plan.T), by_work}));
  threads = std::max(threads, 1);

  switch (config.input_dtype) {
    case DType::kFloat32:
      RunChunks<F32>(plan, threads);
      break;
    case DType::kFloat16:
      RunChunks<F16>(plan, threads);
      break;
    case DType::kBFloat16:
      RunChunks<BF16>(plan, threads);
      break;
  }
  return absl::OkStatus();
}

}  // namespace dcpmerge
