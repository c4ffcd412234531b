// GPU tests of the fused merge kernel against the CPU oracle (MergeOnCpu).
// Skip (GTEST_SKIP with the reason) where no CUDA device is usable.
//
// Environment:
//   DCPMERGE_GPU_TEST_QUICK=1  a reduced grid (for compute-sanitizer runs);
//                              the exhaustive FP8 test then covers 2^24
//                              patterns instead of all 2^32.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/merge_launcher.h"
#include "kernels/cuda/merge_launcher_internal.h"
#include "kernels/merge_contract.h"
#include "kernels/merge_reference.h"
#include "kernels/numeric.h"
#include "tests/kernels/cuda/fp8_exhaustive.h"

namespace dcpmerge {
namespace {

#define CUDA_OK(expr)                                                   \
  do {                                                                  \
    const cudaError_t e_ = (expr);                                      \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_); \
  } while (0)

bool Quick() {
  const char* q = std::getenv("DCPMERGE_GPU_TEST_QUICK");
  return q != nullptr && q[0] == '1';
}

// Empty string when a device is usable, else why not.
std::string GpuUnavailableReason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    return absl::StrCat("no usable CUDA device: cudaGetDeviceCount failed: ",
                        cudaGetErrorString(e));
  }
  if (n == 0) return "no CUDA device present";
  return "";
}

#define SKIP_WITHOUT_GPU()                                  \
  do {                                                      \
    const std::string why_ = GpuUnavailableReason();        \
    if (!why_.empty()) GTEST_SKIP() << why_;                \
  } while (0)

// Owning device allocation.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (n > 0 && cudaMalloc(&p, n) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() {
    if (p != nullptr) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

struct Case {
  int n = 2;
  DType dtype = DType::kBFloat16;
  int d = 128;
  int64_t t = 4;
  int h = 8;
  LseLayout layout = LseLayout::kHeadsTokens;
  LseBase base = LseBase::kNatural;
  OutputMode mode = OutputMode::kFp8PerTensor;
  int group = 128;
  bool pow2 = false;
  bool pad = false;      // padded head/token strides
  bool want_lse = true;
  int part_groups = 0;   // threads per item (0: launcher's choice)
  int threads = 0;       // CTA size override (0: launcher's choice)
  int cluster = 0;       // per-token CTAs per token (0: launcher's choice)
  bool wide = false;     // 64-bit index arithmetic where 32 bits would do
  bool pdl = false;      // programmatic dependent launch
  float scale = 0.05f;   // static scale
  uint32_t seed = 1;
  std::string Name() const {
    return absl::StrCat("N", n, "_", DTypeName(dtype), "_D", d, "_T", t, "_H",
                        h, "_", OutputModeName(mode),
                        mode == OutputMode::kFp8PerGroup ? absl::StrCat("G", group) : "",
                        pow2 ? "_pow2" : "",
                        layout == LseLayout::kTokensHeads ? "_TH" : "_HT",
                        base == LseBase::kTwo ? "_b2" : "_be", pad ? "_pad" : "",
                        part_groups ? absl::StrCat("_P", part_groups) : "",
                        threads ? absl::StrCat("_thr", threads) : "",
                        cluster ? absl::StrCat("_C", cluster) : "", wide ? "_wide" : "",
                        pdl ? "_pdl" : "");
  }
};

uint16_t ToBits16(float x, DType dt) {
  return dt == DType::kFloat16 ? FloatToHalfBits(x) : FloatToBFloat16Bits(x);
}
float From16(uint16_t b, DType dt) {
  return dt == DType::kFloat16 ? HalfBitsToFloat(b) : BFloat16BitsToFloat(b);
}

// Host-side inputs of one case.
struct Inputs {
  std::vector<std::vector<uint8_t>> out;  // N payloads, raw bytes
  std::vector<std::vector<float>> lse;    // N LSE arrays
  int64_t token_stride = 0, head_stride = 0;
  size_t out_bytes = 0;
};

Inputs MakeInputs(const Case& c) {
  std::mt19937 rng(c.seed);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t esz = DTypeSize(c.dtype);
  const int vec = static_cast<int>(16 / esz);
  Inputs in;
  in.head_stride = c.d + (c.pad ? vec : 0);
  in.token_stride = c.h * in.head_stride + (c.pad ? 3 * vec : 0);
  const int64_t span = (c.t - 1) * in.token_stride + (c.h - 1) * in.head_stride + c.d;
  in.out_bytes = static_cast<size_t>(std::max<int64_t>(span, 0)) * esz;
  const int64_t rows = c.t * c.h;
  // Row kinds: 3% all parts empty, 2% saturating magnitudes.
  std::vector<uint8_t> kind(rows);
  for (auto& k : kind) {
    const float r = uni(rng);
    k = r < 0.03f ? 1 : r < 0.05f ? 2 : 0;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  in.lse.assign(c.n, std::vector<float>(rows));
  for (int i = 0; i < c.n; ++i) {
    for (int64_t t = 0; t < c.t; ++t) {
      for (int h = 0; h < c.h; ++h) {
        const int64_t row = t * c.h + h;
        const int64_t li = c.layout == LseLayout::kTokensHeads ? row : h * c.t + t;
        float v = 4.0f * normal(rng);
        const float r = uni(rng);
        if (r < 0.04f) v = -inf;
        else if (r < 0.07f) v = inf;
        else if (r < 0.10f) v = nan;
        if (kind[row] == 1) v = (i % 3 == 0) ? inf : (i % 3 == 1 ? -inf : nan);
        in.lse[i][li] = v;
      }
    }
  }
  in.out.assign(c.n, std::vector<uint8_t>(in.out_bytes, 0xCD));  // padding garbage
  for (int i = 0; i < c.n; ++i) {
    for (int64_t t = 0; t < c.t; ++t) {
      for (int h = 0; h < c.h; ++h) {
        const int64_t row = t * c.h + h;
        const int64_t li = c.layout == LseLayout::kTokensHeads ? row : h * c.t + t;
        const bool empty = !std::isfinite(in.lse[i][li]);
        const float mag = kind[row] == 2 ? 3000.0f : 1.0f;
        const float row_sign = (row & 1) ? -1.0f : 1.0f;
        for (int d = 0; d < c.d; ++d) {
          // Saturating rows: one sign per row, so the merge never cancels
          // large terms (fp32 cancellation error would exceed tolerances).
          float v = kind[row] == 2 ? row_sign * mag * (1.0f + 0.1f * normal(rng))
                                   : normal(rng);
          const float r = uni(rng);
          if (empty && r < 0.3f) v = nan;            // garbage in empty parts
          else if (!empty && r < 0.0005f) v = nan;  // corrupted input
          const int64_t e = t * in.token_stride + h * in.head_stride + d;
          if (c.dtype == DType::kFloat32) {
            std::memcpy(&in.out[i][e * 4], &v, 4);
          } else {
            const uint16_t b = ToBits16(v, c.dtype);
            std::memcpy(&in.out[i][e * 2], &b, 2);
          }
        }
      }
    }
  }
  return in;
}

// Outputs of one run.
struct Outputs {
  std::vector<uint8_t> out;
  std::vector<float> scales;
  std::vector<float> lse;
};

MergeArgs BaseArgs(const Case& c, const Inputs& in) {
  MergeArgs a;
  a.shape.num_parts = c.n;
  a.shape.num_tokens = c.t;
  a.shape.num_heads = c.h;
  a.shape.head_size = c.d;
  a.config.input_dtype = c.dtype;
  a.config.lse_base = c.base;
  a.config.lse_layout = c.layout;
  a.config.output_mode = c.mode;
  a.config.group_size = c.group;
  a.config.power_of_two_scales = c.pow2;
  a.partial_out_bytes = in.out_bytes;
  a.partial_lse_bytes = static_cast<size_t>(c.t * c.h) * 4;
  a.token_stride = in.token_stride;
  a.head_stride = in.head_stride;
  return a;
}

// Global statistics over all FP8 comparisons (reported at the end).
std::atomic<int64_t> g_codes_total{0}, g_codes_differ{0};

struct Compare {
  int64_t codes = 0, codes_off_by_one = 0, bad = 0, scale_flips = 0;
  std::string first_error;
  void Fail(const std::string& s) {
    if (bad++ == 0) first_error = s;
  }
};

int CodeOrdinal(uint8_t c) {
  const int m = c & 0x7F;
  return (c & 0x80) ? -m : m;
}
bool IsNanCode(uint8_t c) { return (c & 0x7F) == 0x7F; }

void CompareOutputs(const Case& c, const Outputs& g, const Outputs& r,
                    Compare* cmp) {
  const int64_t elems = c.t * c.h * c.d;
  const bool fp8 = c.mode != OutputMode::kPassthrough;
  // Blocks whose dynamic scales differ (pow2 rounding can flip at an exact
  // power of two when amax differs in the last bit): codes not compared.
  std::vector<uint8_t> skip_block;
  int64_t block_elems = 0;
  if (c.mode == OutputMode::kFp8PerToken || c.mode == OutputMode::kFp8PerGroup) {
    block_elems = c.mode == OutputMode::kFp8PerToken ? int64_t{c.h} * c.d : c.group;
    skip_block.assign(g.scales.size(), 0);
    for (size_t i = 0; i < g.scales.size(); ++i) {
      const float a = g.scales[i], b = r.scales[i];
      if (a == b) continue;
      if (std::fabs(a - b) <= 2e-6f * std::fabs(b)) continue;
      if (c.pow2 && (a == 2 * b || b == 2 * a)) {
        ++cmp->scale_flips;
        skip_block[i] = 1;
        continue;
      }
      cmp->Fail(absl::StrCat("scale[", i, "] gpu=", a, " ref=", b));
    }
  }
  for (int64_t e = 0; e < elems; ++e) {
    if (fp8) {
      if (!skip_block.empty() && skip_block[e / block_elems]) continue;
      const uint8_t a = g.out[e], b = r.out[e];
      ++cmp->codes;
      if (a == b) continue;
      if (IsNanCode(a) || IsNanCode(b)) {
        if (IsNanCode(a) && IsNanCode(b)) continue;
        cmp->Fail(absl::StrCat("code[", e, "] gpu=", int{a}, " ref=", int{b}, " (NaN)"));
        continue;
      }
      if (std::abs(CodeOrdinal(a) - CodeOrdinal(b)) <= 1) {
        ++cmp->codes_off_by_one;
      } else {
        cmp->Fail(absl::StrCat("code[", e, "] gpu=0x", absl::Hex(a), " ref=0x",
                               absl::Hex(b)));
      }
    } else {
      float a, b;
      if (c.dtype == DType::kFloat32) {
        std::memcpy(&a, &g.out[e * 4], 4);
        std::memcpy(&b, &r.out[e * 4], 4);
      } else {
        uint16_t x, y;
        std::memcpy(&x, &g.out[e * 2], 2);
        std::memcpy(&y, &r.out[e * 2], 2);
        a = From16(x, c.dtype);
        b = From16(y, c.dtype);
      }
      if (std::isnan(a) || std::isnan(b)) {
        if (!(std::isnan(a) && std::isnan(b)))
          cmp->Fail(absl::StrCat("out[", e, "] gpu=", a, " ref=", b));
        continue;
      }
      if (a == b) continue;
      const float rel = c.dtype == DType::kFloat32 ? 2e-5f
                        : c.dtype == DType::kFloat16 ? 1.5e-3f : 1.2e-2f;
      if (std::fabs(a - b) > rel * std::fabs(b) + 2e-5f * (std::fabs(b) > 100 ? 3000 : 1))
        cmp->Fail(absl::StrCat("out[", e, "] gpu=", a, " ref=", b));
    }
  }
  for (size_t i = 0; i < r.lse.size(); ++i) {
    const float a = g.lse[i], b = r.lse[i];
    if (std::isnan(a) || std::isnan(b)) {
      cmp->Fail(absl::StrCat("lse[", i, "] is NaN gpu=", a, " ref=", b));
    } else if (a != b && !(std::fabs(a - b) <= 2e-5f * (1.0f + std::fabs(b)))) {
      cmp->Fail(absl::StrCat("lse[", i, "] gpu=", a, " ref=", b));
    }
  }
}

constexpr size_t kGuard = 256;  // bytes after each output, must stay poisoned

// Runs one case on the GPU twice (two poison patterns) and the CPU once.
void RunCase(const Case& c) {
  SCOPED_TRACE(c.Name());
  const Inputs in = MakeInputs(c);
  MergeArgs host = BaseArgs(c, in);
  const int64_t rows = c.t * c.h;
  const int64_t out_bytes = OutputBytes(host.shape, host.config);
  const int64_t nscales = OutputScaleCount(host.shape, host.config);
  ASSERT_GE(out_bytes, 0);
  Outputs ref;
  ref.out.assign(out_bytes, 0);
  ref.scales.assign(nscales, 0.0f);
  if (c.want_lse) ref.lse.assign(rows, 0.0f);
  float scale = c.scale;
  for (int i = 0; i < c.n; ++i) {
    host.partial_out[i] = in.out[i].data();
    host.partial_lse[i] = in.lse[i].data();
  }
  host.static_scale = &scale;
  host.out = {ref.out.data(), ref.out.size()};
  if (nscales > 0) host.out_scales = {ref.scales.data(), ref.scales.size() * 4};
  if (c.want_lse) host.out_lse = {ref.lse.data(), ref.lse.size() * 4};
  {
    const absl::Status s = MergeOnCpu(host);
    ASSERT_TRUE(s.ok()) << s;
  }

  std::vector<std::unique_ptr<DevBuf>> parts, lses;
  MergeArgs dev = BaseArgs(c, in);
  for (int i = 0; i < c.n; ++i) {
    parts.push_back(std::make_unique<DevBuf>(in.out_bytes));
    lses.push_back(std::make_unique<DevBuf>(rows * 4));
    ASSERT_NE(parts.back()->p, nullptr);
    CUDA_OK(cudaMemcpy(parts.back()->p, in.out[i].data(), in.out_bytes,
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(lses.back()->p, in.lse[i].data(), rows * 4,
                       cudaMemcpyHostToDevice));
    dev.partial_out[i] = parts.back()->p;
    dev.partial_lse[i] = static_cast<const float*>(lses.back()->p);
  }
  DevBuf d_scale(4), d_out(out_bytes + kGuard), d_scales(nscales * 4 + kGuard),
      d_lse(rows * 4 + kGuard);
  CUDA_OK(cudaMemcpy(d_scale.p, &scale, 4, cudaMemcpyHostToDevice));
  dev.static_scale = static_cast<const float*>(d_scale.p);
  dev.out = {d_out.p, static_cast<size_t>(out_bytes)};
  if (nscales > 0) dev.out_scales = {d_scales.p, static_cast<size_t>(nscales) * 4};
  if (c.want_lse) dev.out_lse = {d_lse.p, static_cast<size_t>(rows) * 4};
  cuda::MergeLaunchOptions opt;
  opt.part_groups = c.part_groups;
  opt.threads_per_cta = c.threads;
  opt.ctas_per_token = c.cluster;
  opt.wide_index = c.wide ? 1 : 0;
  opt.pdl = c.pdl ? 1 : 0;

  Outputs run[2];
  const uint8_t poison[2] = {0xA5, 0x5A};
  for (int k = 0; k < 2; ++k) {
    CUDA_OK(cudaMemset(d_out.p, poison[k], d_out.bytes));
    CUDA_OK(cudaMemset(d_scales.p, poison[k], d_scales.bytes));
    CUDA_OK(cudaMemset(d_lse.p, poison[k], d_lse.bytes));
    const absl::Status s = MergeOnGpuWithOptions(dev, nullptr, opt);
    ASSERT_TRUE(s.ok()) << s;
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint8_t> o(d_out.bytes), sc(d_scales.bytes), l(d_lse.bytes);
    CUDA_OK(cudaMemcpy(o.data(), d_out.p, o.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(sc.data(), d_scales.p, sc.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(l.data(), d_lse.p, l.size(), cudaMemcpyDeviceToHost));
    // Nothing past the end is written.
    for (size_t i = out_bytes; i < o.size(); ++i)
      ASSERT_EQ(o[i], poison[k]) << "out overflow at byte " << i;
    for (size_t i = nscales * 4; i < sc.size(); ++i)
      ASSERT_EQ(sc[i], poison[k]) << "out_scales overflow at byte " << i;
    for (size_t i = c.want_lse ? rows * 4 : 0; i < l.size(); ++i)
      ASSERT_EQ(l[i], poison[k]) << "out_lse written at byte " << i;
    run[k].out.assign(o.begin(), o.begin() + out_bytes);
    run[k].scales.resize(nscales);
    std::memcpy(run[k].scales.data(), sc.data(), nscales * 4);
    if (c.want_lse) {
      run[k].lse.resize(rows);
      std::memcpy(run[k].lse.data(), l.data(), rows * 4);
    }
  }
  // Two poisons, same bytes: every element was written (and deterministic).
  ASSERT_TRUE(run[0].out == run[1].out) << "unwritten or nondeterministic out";
  ASSERT_EQ(std::memcmp(run[0].scales.data(), run[1].scales.data(), nscales * 4), 0)
      << "unwritten out_scales";
  if (c.want_lse) {
    ASSERT_EQ(std::memcmp(run[0].lse.data(), run[1].lse.data(), rows * 4), 0)
        << "unwritten out_lse";
  }
  Compare cmp;
  CompareOutputs(c, run[0], ref, &cmp);
  g_codes_total += cmp.codes;
  g_codes_differ += cmp.codes_off_by_one;
  EXPECT_EQ(cmp.bad, 0) << cmp.first_error;
  // pow2 scale flips need an amax within an ulp of a power of two * 448.
  EXPECT_LE(cmp.scale_flips, 2 + static_cast<int64_t>(ref.scales.size() / 1000));
  if (cmp.codes > 0) {
    EXPECT_LE(cmp.codes_off_by_one, cmp.codes / 50 + 8)
        << "too many FP8 codes one step off";
  }
}

std::vector<Case> SweepCases() {
  const bool quick = Quick();
  const int parts[] = {1, 2, 3, 4, 8, 16, 64};
  const DType dtypes[] = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};
  const int heads_d[] = {64, 128, 256, 512, 576};
  struct M { OutputMode mode; int group; bool pow2; };
  const M modes[] = {{OutputMode::kFp8PerTensor, 128, false},
                     {OutputMode::kFp8PerToken, 128, false},
                     {OutputMode::kFp8PerToken, 128, true},
                     {OutputMode::kFp8PerGroup, 128, false},
                     {OutputMode::kFp8PerGroup, 64, true},
                     {OutputMode::kPassthrough, 128, false}};
  const int64_t tokens[] = {1, 3, 17, 64, 130};
  const int hs[] = {1, 8, 16, 5, 32};
  std::vector<Case> out;
  uint32_t seed = 100;
  int k = 0;
  for (int n : parts) {
    for (DType dt : dtypes) {
      for (const M& m : modes) {
        ++k;
        if (quick && k % 7 != 0) continue;
        Case c;
        c.n = n;
        c.dtype = dt;
        c.mode = m.mode;
        c.group = m.group;
        c.pow2 = m.pow2;
        c.d = heads_d[k % 5];
        if (c.mode == OutputMode::kFp8PerGroup) {
          while (c.d % c.group != 0) c.d = heads_d[(k + 1) % 5] == c.d ? 128 : 512;
        }
        c.t = tokens[(k / 5) % 5];
        c.h = hs[(k / 3) % 5];
        if (n == 64 && c.t * c.h * c.d > 200000) c.t = 3;
        c.layout = (k & 1) ? LseLayout::kTokensHeads : LseLayout::kHeadsTokens;
        c.base = (k & 2) ? LseBase::kTwo : LseBase::kNatural;
        c.pad = (k % 3) == 0;
        c.want_lse = (k % 4) != 3;
        c.part_groups = (k % 5) == 0 ? 0 : 1 << ((k / 5) % 5);  // 1..16
        c.threads = (k % 11) == 0 ? 32 : (k % 13) == 0 ? 512 : 0;
        c.cluster = (k % 7) == 0 ? 1 + (k / 7) % 8 : 0;
        c.wide = (k % 3) == 1;
        c.pdl = (k % 4) == 2;
        c.scale = (k % 2) ? 0.05f : 2.0f;
        c.seed = seed++;
        out.push_back(c);
      }
    }
  }
  // Every head size x dtype x (per tensor, per token, passthrough) with the
  // parts of an item in one thread and split over four.
  for (int d : heads_d) {
    for (DType dt : dtypes) {
      for (OutputMode mode : {OutputMode::kFp8PerTensor, OutputMode::kFp8PerToken,
                              OutputMode::kPassthrough}) {
        for (int groups : {1, 4}) {
          ++k;
          if (quick && k % 9 != 0) continue;
          Case c;
          c.n = 4;
          c.dtype = dt;
          c.d = d;
          c.t = 33;
          c.h = 8;
          c.mode = mode;
          c.part_groups = groups;
          c.wide = (k & 4) != 0;
          c.layout = (k & 1) ? LseLayout::kTokensHeads : LseLayout::kHeadsTokens;
          c.base = (k & 2) ? LseBase::kTwo : LseBase::kNatural;
          c.seed = seed++;
          out.push_back(c);
        }
      }
    }
  }
  return out;
}

class MergeGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
};

TEST_F(MergeGpuTest, SweepMatchesCpuReference) {
  const std::vector<Case> cases = SweepCases();
  int done = 0;
  for (const Case& c : cases) {
    RunCase(c);
    if (HasFatalFailure()) return;
    ++done;
  }
  std::printf("[ sweep ] %d cases\n", done);
}

TEST_F(MergeGpuTest, LargeShapes) {
  std::vector<Case> cases;
  Case a;  // many tokens, the decode-batch upper end
  a.n = 4; a.t = Quick() ? 1024 : 16384; a.h = 8; a.d = 128;
  cases.push_back(a);
  Case b = a;  // MLA-like, per token, many tokens: staged in shared memory
  b.n = 8; b.t = Quick() ? 16 : 512; b.h = 16; b.d = 512;
  b.mode = OutputMode::kFp8PerToken; b.layout = LseLayout::kTokensHeads;
  cases.push_back(b);
  Case f = b;  // per-token, few tokens: a 16-CTA cluster per token
  f.n = 3; f.t = 5; f.h = 128; f.d = 512;
  cases.push_back(f);
  Case e = b;  // per-token, many tokens too large to stage: two passes
  e.n = 8; e.t = Quick() ? 270 : 300; e.h = Quick() ? 64 : 128; e.d = Quick() ? 512 : 576;
  cases.push_back(e);
  Case g = a;  // per-token, many heads and parts (N > NB: batched loop)
  g.n = 64; g.t = 3; g.h = 200; g.d = 64; g.mode = OutputMode::kFp8PerToken;
  cases.push_back(g);
  Case h = a;  // per group, many tokens, fp16
  h.dtype = DType::kFloat16; h.t = Quick() ? 256 : 4096; h.h = 32;
  h.mode = OutputMode::kFp8PerGroup; h.group = 64; h.n = 16;
  cases.push_back(h);
  Case k = a;  // per token, one CTA per token, four items per thread in registers
  k.n = 2; k.t = 300; k.h = 128; k.d = 128; k.mode = OutputMode::kFp8PerToken;
  cases.push_back(k);
  Case m = k;  // the same with two items per thread, 8 parts each
  m.n = 8; m.h = 64;
  cases.push_back(m);
  for (const Case& c : cases) {
    RunCase(c);
    if (HasFatalFailure()) return;
  }
}

// A scale the control plane would have rejected turns every code into NaN.
TEST_F(MergeGpuTest, InvalidStaticScaleGivesNanCodes) {
  const float bad[] = {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(), 1e-40f, 1e38f};
  Case c;
  c.t = 7;
  const Inputs in = MakeInputs(c);
  MergeArgs a = BaseArgs(c, in);
  std::vector<std::unique_ptr<DevBuf>> bufs;
  for (int i = 0; i < c.n; ++i) {
    bufs.push_back(std::make_unique<DevBuf>(in.out_bytes));
    CUDA_OK(cudaMemcpy(bufs.back()->p, in.out[i].data(), in.out_bytes, cudaMemcpyHostToDevice));
    a.partial_out[i] = bufs.back()->p;
    bufs.push_back(std::make_unique<DevBuf>(in.lse[i].size() * 4));
    CUDA_OK(cudaMemcpy(bufs.back()->p, in.lse[i].data(), in.lse[i].size() * 4,
                       cudaMemcpyHostToDevice));
    a.partial_lse[i] = static_cast<const float*>(bufs.back()->p);
  }
  const int64_t n = OutputBytes(a.shape, a.config);
  DevBuf out(n), sc(4);
  a.out = {out.p, static_cast<size_t>(n)};
  a.static_scale = static_cast<const float*>(sc.p);
  for (float s : bad) {
    CUDA_OK(cudaMemcpy(sc.p, &s, 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out.p, 0, n));
    ASSERT_TRUE(MergeOnGpu(a, nullptr).ok());
    std::vector<uint8_t> h(n);
    CUDA_OK(cudaMemcpy(h.data(), out.p, n, cudaMemcpyDeviceToHost));
    int64_t non_nan = 0;
    for (uint8_t v : h) non_nan += !IsNanCode(v);
    EXPECT_EQ(non_nan, 0) << "scale " << s;
  }
}

TEST_F(MergeGpuTest, InvalidArgumentsAreRejected) {
  Case c;
  c.t = 4;
  const Inputs in = MakeInputs(c);
  MergeArgs a = BaseArgs(c, in);
  std::vector<std::unique_ptr<DevBuf>> bufs;
  for (int i = 0; i < c.n; ++i) {
    bufs.push_back(std::make_unique<DevBuf>(in.out_bytes + 64));
    a.partial_out[i] = bufs.back()->p;
    bufs.push_back(std::make_unique<DevBuf>(in.lse[i].size() * 4));
    a.partial_lse[i] = static_cast<const float*>(bufs.back()->p);
  }
  const int64_t n = OutputBytes(a.shape, a.config);
  DevBuf out(n + 64), sc(4);
  a.out = {out.p, static_cast<size_t>(n)};
  a.static_scale = static_cast<const float*>(sc.p);
  ASSERT_TRUE(ValidateMergeArgs(a).ok());

  auto expect_invalid = [](const MergeArgs& m, const std::string& field) {
    const absl::Status s = MergeOnGpu(m, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field << ": " << s;
    EXPECT_NE(std::string(s.message()).find(field), std::string::npos)
        << "message does not name " << field << ": " << s;
  };
  {  // output buffer one byte short (the PR #36518 review bug)
    MergeArgs m = a;
    m.out.bytes = n - 1;
    expect_invalid(m, "out.bytes");
  }
  {  // passthrough needs 2 bytes per element, the FP8-sized buffer is narrow
    MergeArgs m = a;
    m.config.output_mode = OutputMode::kPassthrough;
    expect_invalid(m, "out.bytes");
  }
  {
    MergeArgs m = a;
    m.partial_out[1] = static_cast<const char*>(a.partial_out[1]) + 2;
    expect_invalid(m, "partial_out[1]");
  }
  {
    MergeArgs m = a;
    m.out.data = static_cast<char*>(out.p) + 8;
    expect_invalid(m, "out.data");
  }
  {
    MergeArgs m = a;
    m.head_stride = c.d + 4;
    m.token_stride = m.head_stride * c.h;
    m.partial_out_bytes = in.out_bytes * 2;
    expect_invalid(m, "head_stride");
  }
  {
    MergeArgs m = a;
    m.token_stride = c.h * c.d + 2;
    m.partial_out_bytes = in.out_bytes * 2;
    expect_invalid(m, "token_stride");
  }
  {
    MergeArgs m = a;
    m.shape.head_size = 100;
    m.head_stride = 100;
    m.token_stride = 100 * c.h;
    expect_invalid(m, "head_size");
  }
  {
    MergeArgs m = a;
    m.static_scale = nullptr;
    expect_invalid(m, "static_scale");
  }
  {
    MergeArgs m = a;
    m.shape.num_parts = 65;
    expect_invalid(m, "num_parts");
  }
  {
    MergeArgs m = a;
    m.config.output_mode = OutputMode::kFp8PerToken;
    expect_invalid(m, "out_scales");
  }
  {
    MergeArgs m = a;
    m.config.output_mode = OutputMode::kFp8PerGroup;
    m.config.group_size = 32;
    expect_invalid(m, "group_size");
  }
  {  // T == 0: valid, nothing launched or written
    MergeArgs m = a;
    m.shape.num_tokens = 0;
    EXPECT_TRUE(MergeOnGpu(m, nullptr).ok());
  }
}

// Capture once, change the device scale, replay: the output follows.
TEST_F(MergeGpuTest, CudaGraphPicksUpScaleChanges) {
  Case c;
  c.n = 4;
  c.t = 16;
  c.h = 16;
  c.seed = 77;
  const Inputs in = MakeInputs(c);
  MergeArgs a = BaseArgs(c, in);
  MergeArgs host = BaseArgs(c, in);
  std::vector<std::unique_ptr<DevBuf>> bufs;
  for (int i = 0; i < c.n; ++i) {
    bufs.push_back(std::make_unique<DevBuf>(in.out_bytes));
    CUDA_OK(cudaMemcpy(bufs.back()->p, in.out[i].data(), in.out_bytes, cudaMemcpyHostToDevice));
    a.partial_out[i] = bufs.back()->p;
    bufs.push_back(std::make_unique<DevBuf>(in.lse[i].size() * 4));
    CUDA_OK(cudaMemcpy(bufs.back()->p, in.lse[i].data(), in.lse[i].size() * 4,
                       cudaMemcpyHostToDevice));
    a.partial_lse[i] = static_cast<const float*>(bufs.back()->p);
    host.partial_out[i] = in.out[i].data();
    host.partial_lse[i] = in.lse[i].data();
  }
  const int64_t n = OutputBytes(a.shape, a.config);
  DevBuf out(n), sc(4);
  a.out = {out.p, static_cast<size_t>(n)};
  a.static_scale = static_cast<const float*>(sc.p);
  float s1 = 1.0f;
  CUDA_OK(cudaMemcpy(sc.p, &s1, 4, cudaMemcpyHostToDevice));

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // Plain, and with programmatic dependent launch (MergeOnGpu's enable_pdl).
  for (const bool pdl : {false, true}) {
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const absl::Status st = MergeOnGpu(a, stream, pdl);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ASSERT_TRUE(st.ok()) << st;
    cudaGraphExec_t exec;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

    for (float s : {1.0f, 4.0f, 0.03125f}) {
      CUDA_OK(cudaMemcpyAsync(sc.p, &s, 4, cudaMemcpyHostToDevice, stream));
      CUDA_OK(cudaMemsetAsync(out.p, 0xA5, n, stream));
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaStreamSynchronize(stream));
      std::vector<uint8_t> got(n), ref(n);
      CUDA_OK(cudaMemcpy(got.data(), out.p, n, cudaMemcpyDeviceToHost));
      host.static_scale = &s;
      host.out = {ref.data(), static_cast<size_t>(n)};
      ASSERT_TRUE(MergeOnCpu(host).ok());
      int64_t far = 0;
      for (int64_t e = 0; e < n; ++e) {
        if (got[e] == ref[e] || (IsNanCode(got[e]) && IsNanCode(ref[e]))) continue;
        if (IsNanCode(got[e]) || IsNanCode(ref[e]) ||
            std::abs(CodeOrdinal(got[e]) - CodeOrdinal(ref[e])) > 1)
          ++far;
      }
      EXPECT_EQ(far, 0) << "scale " << s << (pdl ? " with PDL" : "");
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(stream);
}

// Hardware E4M3 conversion == EncodeE4M3 on the device and on the host, for
// every float bit pattern.
TEST_F(MergeGpuTest, Fp8ConversionAllPatterns) {
  const uint64_t chunk = uint64_t{1} << 26;
  // Full: all 2^32 patterns in chunks. Quick: 2^22-pattern windows around
  // the e4m3 subnormals, the saturation edge, negatives and inf/NaN.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  if (Quick()) {
    for (uint64_t s : {0x3A800000ull, 0x43C00000ull, 0xBB000000ull, 0x7F800000ull})
      ranges.push_back({s, uint64_t{1} << 22});
  } else {
    for (uint64_t f = 0; f < (uint64_t{1} << 32); f += chunk) ranges.push_back({f, chunk});
  }
  uint64_t total = 0;
  for (const auto& r : ranges) total += r.second;
  DevBuf codes(chunk), counters(sizeof(testing::Fp8DeviceCounters));
  CUDA_OK(cudaMemset(counters.p, 0, counters.bytes));
  std::vector<uint8_t> host(chunk);
  std::atomic<uint64_t> host_mismatch{0};
  std::atomic<uint32_t> first_host_bad{0};
  const int workers = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  for (const auto& range : ranges) {
    const uint64_t start = range.first, cnt = range.second;
    CUDA_OK(testing::Fp8ConvertRange(start, cnt, static_cast<uint8_t*>(codes.p),
                                     static_cast<testing::Fp8DeviceCounters*>(counters.p),
                                     nullptr));
    CUDA_OK(cudaMemcpy(host.data(), codes.p, cnt, cudaMemcpyDeviceToHost));
    std::vector<std::thread> th;
    for (int w = 0; w < workers; ++w) {
      th.emplace_back([&, w] {
        uint64_t bad = 0;
        for (uint64_t k = w; k < cnt; k += workers) {
          const uint32_t u = static_cast<uint32_t>(start + k);
          if (EncodeE4M3(BitsToFloat(u)) != host[k]) {
            if (bad++ == 0) first_host_bad.store(u);
          }
        }
        host_mismatch += bad;
      });
    }
    for (auto& t : th) t.join();
  }
  testing::Fp8DeviceCounters dc;
  CUDA_OK(cudaMemcpy(&dc, counters.p, sizeof(dc), cudaMemcpyDeviceToHost));
  std::printf("[ fp8 ] patterns=%llu hw_vs_device_EncodeE4M3=%llu "
              "x2_vs_device_EncodeE4M3=%llu hw_vs_host_EncodeE4M3=%llu\n",
              static_cast<unsigned long long>(total), dc.mismatch_scalar,
              dc.mismatch_x2, static_cast<unsigned long long>(host_mismatch.load()));
  for (unsigned i = 0; i < std::min(dc.num_examples, 16u); ++i)
    std::printf("[ fp8 ] mismatch example bits=0x%08x hw=0x%02x EncodeE4M3=0x%02x x2=0x%04x\n",
                dc.examples[i], dc.example_codes[i] & 0xFF, (dc.example_codes[i] >> 8) & 0xFF,
                dc.example_codes[i] >> 16);
  EXPECT_EQ(dc.mismatch_scalar, 0u);
  EXPECT_EQ(dc.mismatch_x2, 0u);
  EXPECT_EQ(host_mismatch.load(), 0u) << "first at 0x" << std::hex << first_host_bad.load();
}

// Printed last (test order is declaration order).
TEST_F(MergeGpuTest, ZzReportCodeDifferences) {
  const int64_t total = g_codes_total.load(), differ = g_codes_differ.load();
  std::printf("[ fp8 codes ] compared=%lld one_step_off=%lld fraction=%.3g\n",
              static_cast<long long>(total), static_cast<long long>(differ),
              total ? static_cast<double>(differ) / total : 0.0);
}

}  // namespace
}  // namespace dcpmerge
