// MergeOnCpu against a naive float64 implementation of the contract's math
// (written here, independently), plus every edge case the contract names.
#include "kernels/merge_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/merge_contract.h"
#include "kernels/numeric.h"

namespace dcpmerge {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kInfD = std::numeric_limits<double>::infinity();

// Relative error bound for a merged value, against sum_i w_i |O_i| / s, per
// input dtype (fp32 accumulation, then rounding to the input dtype in
// passthrough mode: 2^-11 for fp16, 2^-8 for bf16).
double Tolerance(DType d) {
  switch (d) {
    case DType::kFloat32:
      return 1e-5;
    case DType::kFloat16:
      return 1e-3;
    case DType::kBFloat16:
      return 8e-3;
  }
  return 0;
}

struct Spec {
  int N = 2;
  int64_t T = 2;
  int H = 2;
  int D = 64;
  DType dtype = DType::kFloat32;
  LseBase base = LseBase::kNatural;
  LseLayout layout = LseLayout::kHeadsTokens;
  OutputMode mode = OutputMode::kPassthrough;
  int G = 64;
  bool pow2 = false;
  int64_t head_pad = 0;   // head_stride = D + head_pad
  int64_t token_pad = 0;  // token_stride = H * head_stride + token_pad
  float static_scale = 1.0f;
  bool want_lse = true;

  std::string ToString() const {
    return absl::StrFormat(
        "N=%d T=%d H=%d D=%d dtype=%s base=%d layout=%d mode=%s G=%d pow2=%d "
        "head_pad=%d token_pad=%d scale=%a",
        N, T, H, D, DTypeName(dtype), static_cast<int>(base),
        static_cast<int>(layout), OutputModeName(mode), G, pow2, head_pad,
        token_pad, static_scale);
  }
};

// Owns the buffers of one merge problem.
class Problem {
 public:
  explicit Problem(const Spec& s) : s_(s) {
    head_stride_ = s.D + s.head_pad;
    token_stride_ = s.H * head_stride_ + s.token_pad;
    MergeShape shape{s.N, s.T, s.H, s.D};
    span_bytes_ =
        PartialOutSpanBytes(shape, s.dtype, token_stride_, head_stride_);
    for (int i = 0; i < s.N; ++i) {
      parts_.emplace_back(span_bytes_ / 4 + 1);
      lse_.emplace_back(s.T * s.H, 0.0f);
      // Padding (and everything not set) holds NaN: a leak shows.
      FillNaN(i);
    }
    const MergeConfig config = Config();
    out_.assign(OutputBytes(shape, config) / 4 + 1, 0.0f);
    std::memset(out_.data(), 0xCD, out_.size() * 4);
    scales_.assign(OutputScaleCount(shape, config) + 1, -1.0f);
    out_lse_.assign(s.T * s.H + 1, 12345.0f);
  }

  const Spec& spec() const { return s_; }

  MergeConfig Config() const {
    MergeConfig c;
    c.input_dtype = s_.dtype;
    c.lse_base = s_.base;
    c.lse_layout = s_.layout;
    c.output_mode = s_.mode;
    c.group_size = s_.G;
    c.power_of_two_scales = s_.pow2;
    return c;
  }

  MergeArgs Args() {
    MergeArgs a;
    a.shape = {s_.N, s_.T, s_.H, s_.D};
    a.config = Config();
    for (int i = 0; i < s_.N; ++i) {
      a.partial_out[i] = parts_[i].data();
      a.partial_lse[i] = lse_[i].data();
    }
    a.partial_out_bytes = span_bytes_;
    a.partial_lse_bytes = s_.T * s_.H * 4;
    a.token_stride = token_stride_;
    a.head_stride = head_stride_;
    a.static_scale = &s_.static_scale;
    a.out = {out_.data(), static_cast<size_t>(OutputBytes(a.shape, a.config))};
    a.out_scales = {
        scales_.data(),
        static_cast<size_t>(OutputScaleCount(a.shape, a.config)) * 4};
    if (s_.want_lse)
      a.out_lse = {out_lse_.data(), lse_.empty() ? 0 : lse_[0].size() * 4};
    return a;
  }

  absl::Status Run(int threads = 1) { return MergeOnCpu(Args(), threads); }

  // Stores v (rounded to the input dtype) at part i, (t, h, d).
  void SetX(int i, int64_t t, int h, int d, float v) {
    const int64_t e = Index(t, h, d);
    switch (s_.dtype) {
      case DType::kFloat32:
        parts_[i][e] = v;
        break;
      case DType::kFloat16:
        U16(i)[e] = FloatToHalfBits(v);
        break;
      case DType::kBFloat16:
        U16(i)[e] = FloatToBFloat16Bits(v);
        break;
    }
  }
  // The exact stored value.
  double GetX(int i, int64_t t, int h, int d) const {
    const int64_t e = Index(t, h, d);
    switch (s_.dtype) {
      case DType::kFloat32:
        return parts_[i][e];
      case DType::kFloat16:
        return HalfBitsToFloat(U16(i)[e]);
      case DType::kBFloat16:
        return BFloat16BitsToFloat(U16(i)[e]);
    }
    return 0;
  }
  float& L(int i, int64_t t, int h) { return lse_[i][LseIndex(t, h)]; }
  float L(int i, int64_t t, int h) const { return lse_[i][LseIndex(t, h)]; }

  // Outputs.
  uint8_t Code(int64_t t, int h, int d) const {
    return reinterpret_cast<const uint8_t*>(out_.data())[OutIndex(t, h, d)];
  }
  float Passthrough(int64_t t, int h, int d) const {
    const int64_t e = OutIndex(t, h, d);
    const uint16_t* p16 = reinterpret_cast<const uint16_t*>(out_.data());
    switch (s_.dtype) {
      case DType::kFloat32:
        return out_[e];
      case DType::kFloat16:
        return HalfBitsToFloat(p16[e]);
      case DType::kBFloat16:
        return BFloat16BitsToFloat(p16[e]);
    }
    return 0;
  }
  float Scale(int64_t t, int h, int d) const {
    switch (s_.mode) {
      case OutputMode::kFp8PerTensor:
        return s_.static_scale;
      case OutputMode::kFp8PerToken:
        return scales_[t];
      case OutputMode::kFp8PerGroup:
        return scales_[(t * s_.H + h) * (s_.D / s_.G) + d / s_.G];
      case OutputMode::kPassthrough:
        return 1.0f;
    }
    return 0;
  }
  float OutLse(int64_t t, int h) const { return out_lse_[LseIndex(t, h)]; }

  // Raw output bytes (for bit-identity comparisons).
  std::vector<uint8_t> Bytes() const {
    std::vector<uint8_t> b(out_.size() * 4 + scales_.size() * 4 +
                           out_lse_.size() * 4);
    std::memcpy(b.data(), out_.data(), out_.size() * 4);
    std::memcpy(b.data() + out_.size() * 4, scales_.data(), scales_.size() * 4);
    std::memcpy(b.data() + out_.size() * 4 + scales_.size() * 4,
                out_lse_.data(), out_lse_.size() * 4);
    return b;
  }

 private:
  int64_t Index(int64_t t, int h, int d) const {
    return t * token_stride_ + h * head_stride_ + d;
  }
  int64_t OutIndex(int64_t t, int h, int d) const {
    return (t * s_.H + h) * s_.D + d;
  }
  int64_t LseIndex(int64_t t, int h) const {
    return s_.layout == LseLayout::kHeadsTokens ? h * s_.T + t : t * s_.H + h;
  }
  uint16_t* U16(int i) { return reinterpret_cast<uint16_t*>(parts_[i].data()); }
  const uint16_t* U16(int i) const {
    return reinterpret_cast<const uint16_t*>(parts_[i].data());
  }
  void FillNaN(int i) {
    if (s_.dtype == DType::kFloat32) {
      std::fill(parts_[i].begin(), parts_[i].end(), kNaN);
    } else {
      const uint16_t nan = s_.dtype == DType::kFloat16 ? 0x7E00 : 0x7FC0;
      std::fill(U16(i), U16(i) + parts_[i].size() * 2, nan);
    }
  }

  Spec s_;
  int64_t head_stride_, token_stride_, span_bytes_;
  std::vector<std::vector<float>> parts_;
  std::vector<std::vector<float>> lse_;
  std::vector<float> out_, scales_, out_lse_;
};

// ---------------------------------------------------- float64 reference ---

struct RefHead {
  std::vector<double> o;    // merged value
  std::vector<double> mag;  // sum_i w_i |O_i| / s: scale of rounding error
  double lse = -kInfD;
};

RefHead Reference(const Problem& p, int64_t t, int h) {
  const Spec& s = p.spec();
  RefHead r;
  r.o.assign(s.D, 0.0);
  r.mag.assign(s.D, 0.0);
  double m = -kInfD;
  for (int i = 0; i < s.N; ++i) {
    const double l = p.L(i, t, h);
    if (std::isfinite(l)) m = std::max(m, l);
  }
  if (m == -kInfD) return r;  // all parts empty: 0 and -inf
  double sum = 0;
  for (int i = 0; i < s.N; ++i) {
    const double l = p.L(i, t, h);
    if (!std::isfinite(l)) continue;
    const double w =
        s.base == LseBase::kTwo ? std::exp2(l - m) : std::exp(l - m);
    sum += w;
    for (int d = 0; d < s.D; ++d) {
      const double x = p.GetX(i, t, h, d);
      r.o[d] += w * x;
      r.mag[d] += w * std::fabs(x);
    }
  }
  for (int d = 0; d < s.D; ++d) {
    r.o[d] /= sum;
    r.mag[d] /= sum;
  }
  r.lse = m + (s.base == LseBase::kTwo ? std::log2(sum) : std::log(sum));
  return r;
}

// One e4m3 code step at |y| (y already divided by the scale).
double E4M3Step(double y) {
  const double a = std::fabs(y);
  if (a < std::ldexp(1.0, -6)) return std::ldexp(1.0, -9);
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(a))) - 3);
}

// Compares every output of `p` (already run) with the float64 reference.
void CheckAgainstReference(const Problem& p) {
  const Spec& s = p.spec();
  const double tol = Tolerance(s.dtype);
  int failures = 0;
  auto fail = [&](const std::string& msg) {
    if (++failures <= 8) ADD_FAILURE() << msg;
  };
  for (int64_t t = 0; t < s.T; ++t) {
    std::vector<RefHead> heads;
    for (int h = 0; h < s.H; ++h) heads.push_back(Reference(p, t, h));
    for (int h = 0; h < s.H; ++h) {
      const RefHead& r = heads[h];
      if (s.want_lse) {
        const double got = p.OutLse(t, h);
        if (r.lse == -kInfD) {
          if (got != -kInfD) {
            fail(absl::StrFormat("lse t=%d h=%d: got %g want -inf", t, h, got));
          }
        } else if (!(std::fabs(got - r.lse) <= 2e-6 * (1 + std::fabs(r.lse)))) {
          fail(absl::StrFormat("lse t=%d h=%d: got %.9g want %.9g", t, h, got,
                               r.lse));
        }
      }
      // The block a dynamic scale covers, for checking the scale itself.
      for (int d = 0; d < s.D; ++d) {
        const double want = r.o[d];
        const double err_acc = tol * r.mag[d] + 1e-30;
        if (s.mode == OutputMode::kPassthrough) {
          const double got = p.Passthrough(t, h, d);
          const double abs_floor =
              s.dtype == DType::kFloat16 ? std::ldexp(1.0, -24) : 0.0;
          if (std::isnan(want)
                  ? !std::isnan(got)
                  : !(std::fabs(got - want) <= err_acc + abs_floor)) {
            fail(
                absl::StrFormat("passthrough t=%d h=%d d=%d: got %.9g want "
                                "%.9g (mag %.3g)",
                                t, h, d, got, want, r.mag[d]));
          }
          continue;
        }
        const uint8_t code = p.Code(t, h, d);
        const double scale = p.Scale(t, h, d);
        if (std::isnan(want)) {
          if ((code & 0x7F) != 0x7F) {
            fail(absl::StrFormat("t=%d h=%d d=%d: NaN merged, code 0x%02x", t,
                                 h, d, code));
          }
          continue;
        }
        const double y = std::clamp(want / scale, -448.0, 448.0);
        const double got = static_cast<double>(DecodeE4M3(code)) * scale;
        const double allowed = E4M3Step(y) * scale + err_acc;
        if (!(std::fabs(got - y * scale) <= allowed)) {
          fail(absl::StrFormat(
              "fp8 t=%d h=%d d=%d: code 0x%02x -> %.9g, want %.9g (scale %a, "
              "allowed %.3g)",
              t, h, d, code, got, want, scale, allowed));
        }
      }
    }
    // Dynamic scales: amax / 448 of the block's finite merged values.
    if (s.mode == OutputMode::kFp8PerToken ||
        s.mode == OutputMode::kFp8PerGroup) {
      const int64_t block =
          s.mode == OutputMode::kFp8PerToken ? int64_t{s.H} * s.D : s.G;
      for (int64_t b0 = 0; b0 < int64_t{s.H} * s.D; b0 += block) {
        double amax = 0, mag = 0;
        for (int64_t e = b0; e < b0 + block; ++e) {
          const RefHead& r = heads[e / s.D];
          const double v = r.o[e % s.D];
          if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
          if (std::isfinite(r.mag[e % s.D])) {
            mag = std::max(mag, r.mag[e % s.D]);
          }
        }
        const int h = static_cast<int>(b0 / s.D);
        const int d = static_cast<int>(b0 % s.D);
        const double scale = p.Scale(t, h, d);
        const double exact = std::max(amax / 448.0, std::ldexp(1.0, -120));
        const double slack = (tol * mag + 1e-30) / 448.0;
        bool ok;
        if (amax == 0) {
          ok = scale == 1.0;
        } else if (s.pow2) {
          int e;
          ok = std::frexp(scale, &e) == 0.5 && scale >= exact - slack &&
               scale / 2 < exact + slack;
        } else {
          ok = std::fabs(scale - exact) <= slack + exact * 1e-7;
        }
        if (!ok) {
          fail(absl::StrFormat("scale t=%d block@%d: got %a want ~%a", t, b0,
                               scale, exact));
        }
      }
    }
  }
  EXPECT_EQ(failures, 0) << s.ToString();
}

// ------------------------------------------------------- random problems ---

Spec RandomSpec(std::mt19937_64& rng) {
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  Spec s;
  const int parts[] = {1, 2, 3, 4, 8, 16, 64};
  s.N = parts[pick(7)];
  s.T = 1 + pick(6);
  s.H = 1 + pick(5);
  s.dtype = static_cast<DType>(pick(3));
  s.base = static_cast<LseBase>(pick(2));
  s.layout = static_cast<LseLayout>(pick(2));
  s.mode = static_cast<OutputMode>(pick(4));
  s.G = pick(2) ? 64 : 128;
  s.pow2 = pick(2);
  if (s.mode == OutputMode::kFp8PerGroup) {
    s.D = s.G * (1 + pick(3));
  } else {
    const int sizes[] = {1, 3, 17, 64, 128, 192, 256};
    s.D = sizes[pick(7)];
  }
  if (pick(2)) s.head_pad = pick(12);
  if (pick(2)) s.token_pad = pick(40);
  s.static_scale = std::ldexp(1.0f + pick(100) / 100.0f, -pick(9));
  s.want_lse = pick(4) != 0;
  // Keep the float64 reference cheap.
  if (s.N * s.T * s.H * s.D > 400000) s.T = 1;
  return s;
}

void FillRandom(Problem& p, std::mt19937_64& rng, bool with_empties) {
  const Spec& s = p.spec();
  std::uniform_real_distribution<float> val(-4.0f, 4.0f);
  std::uniform_real_distribution<float> lse(-12.0f, 12.0f);
  const float empties[] = {-kInf, kInf, kNaN};
  for (int i = 0; i < s.N; ++i) {
    const float part_scale = std::ldexp(1.0f, static_cast<int>(rng() % 5) - 2);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        float l = lse(rng);
        if (s.base == LseBase::kTwo) l *= 1.4426950f;
        const bool empty = with_empties && rng() % 8 == 0;
        if (empty) l = empties[rng() % 3];
        p.L(i, t, h) = l;
        for (int d = 0; d < s.D; ++d) {
          // Empty parts keep their NaN garbage.
          if (!empty) p.SetX(i, t, h, d, val(rng) * part_scale);
        }
      }
    }
  }
  // Some rows with every part empty.
  if (with_empties && rng() % 3 == 0) {
    const int64_t t = rng() % s.T;
    const int h = static_cast<int>(rng() % s.H);
    for (int i = 0; i < s.N; ++i) p.L(i, t, h) = empties[rng() % 3];
  }
}

TEST(MergeOnCpuTest, RandomProblemsMatchFloat64Reference) {
  constexpr uint64_t kSeed = 0x5EED0001;
  std::mt19937_64 rng(kSeed);
  for (int c = 0; c < 1000; ++c) {
    const Spec s = RandomSpec(rng);
    SCOPED_TRACE(
        absl::StrFormat("seed=%#x case=%d %s", kSeed, c, s.ToString()));
    Problem p(s);
    FillRandom(p, rng, /*with_empties=*/c % 2 == 1);
    const int threads = 1 + static_cast<int>(rng() % 3);
    ASSERT_TRUE(p.Run(threads).ok()) << p.Run(threads);
    CheckAgainstReference(p);
    if (HasFailure()) break;
  }
}

// FP8 codes are exactly EncodeE4M3(O * (1/scale)) of the fp32 merge result
// that passthrough mode returns, and dynamic scales are exactly
// DynamicFp8Scale of that result's finite amax.
TEST(MergeOnCpuTest, Fp8IsEncodeOfTheFp32Merge) {
  constexpr uint64_t kSeed = 0x5EED0002;
  std::mt19937_64 rng(kSeed);
  for (int c = 0; c < 60; ++c) {
    Spec s = RandomSpec(rng);
    s.dtype = DType::kFloat32;
    s.D = s.G * (1 + static_cast<int>(rng() % 2));
    SCOPED_TRACE(
        absl::StrFormat("seed=%#x case=%d %s", kSeed, c, s.ToString()));
    Spec sp = s;
    sp.mode = OutputMode::kPassthrough;
    Problem ref(sp);
    FillRandom(ref, rng, true);
    ASSERT_TRUE(ref.Run().ok());
    for (OutputMode mode : {OutputMode::kFp8PerTensor, OutputMode::kFp8PerToken,
                            OutputMode::kFp8PerGroup}) {
      Spec sq = s;
      sq.mode = mode;
      Problem q(sq);
      for (int i = 0; i < s.N; ++i) {
        for (int64_t t = 0; t < s.T; ++t) {
          for (int h = 0; h < s.H; ++h) {
            q.L(i, t, h) = ref.L(i, t, h);
            for (int d = 0; d < s.D; ++d) {
              q.SetX(i, t, h, d, static_cast<float>(ref.GetX(i, t, h, d)));
            }
          }
        }
      }
      ASSERT_TRUE(q.Run(2).ok());
      for (int64_t t = 0; t < s.T; ++t) {
        float token_amax = 0;
        for (int h = 0; h < s.H; ++h) {
          for (int d = 0; d < s.D; ++d) {
            const float v = ref.Passthrough(t, h, d);
            if (std::isfinite(v))
              token_amax = std::max(token_amax, std::fabs(v));
          }
        }
        for (int h = 0; h < s.H; ++h) {
          for (int d = 0; d < s.D; ++d) {
            float scale = s.static_scale;
            if (mode == OutputMode::kFp8PerToken) {
              scale = DynamicFp8Scale(token_amax, s.pow2);
            } else if (mode == OutputMode::kFp8PerGroup) {
              float amax = 0;
              const int g0 = d / s.G * s.G;
              for (int e = g0; e < g0 + s.G; ++e) {
                const float v = ref.Passthrough(t, h, e);
                if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
              }
              scale = DynamicFp8Scale(amax, s.pow2);
            }
            ASSERT_EQ(q.Scale(t, h, d), scale) << t << " " << h << " " << d;
            ASSERT_EQ(q.Code(t, h, d),
                      EncodeE4M3(ref.Passthrough(t, h, d) * (1.0f / scale)))
                << OutputModeName(mode) << " t=" << t << " h=" << h
                << " d=" << d;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------ edge cases ---

Spec SmallSpec(OutputMode mode, DType dtype = DType::kFloat32) {
  Spec s;
  s.N = 3;
  s.T = 2;
  s.H = 2;
  s.D = 64;
  s.G = 64;
  s.mode = mode;
  s.dtype = dtype;
  return s;
}

constexpr OutputMode kAllModes[] = {
    OutputMode::kFp8PerTensor, OutputMode::kFp8PerToken,
    OutputMode::kFp8PerGroup, OutputMode::kPassthrough};

TEST(MergeOnCpuTest, AllEmptyRowGivesZeroAndMinusInf) {
  for (OutputMode mode : kAllModes) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      Spec s = SmallSpec(mode, dtype);
      SCOPED_TRACE(s.ToString());
      Problem p(s);
      std::mt19937_64 rng(1);
      FillRandom(p, rng, false);
      // (t=1, h=0): every part empty, in all three ways; payload is NaN.
      p.L(0, 1, 0) = -kInf;
      p.L(1, 1, 0) = kInf;
      p.L(2, 1, 0) = kNaN;
      for (int i = 0; i < 3; ++i) {
        for (int d = 0; d < s.D; ++d) p.SetX(i, 1, 0, d, kNaN);
      }
      ASSERT_TRUE(p.Run().ok());
      EXPECT_EQ(p.OutLse(1, 0), -kInf);
      for (int d = 0; d < s.D; ++d) {
        if (mode == OutputMode::kPassthrough) {
          EXPECT_EQ(p.Passthrough(1, 0, d), 0.0f);
          EXPECT_FALSE(std::signbit(p.Passthrough(1, 0, d)));
        } else {
          EXPECT_EQ(p.Code(1, 0, d), 0x00) << d;
        }
      }
      if (mode == OutputMode::kFp8PerGroup) {
        EXPECT_EQ(p.Scale(1, 0, 0), 1.0f);
      }
      CheckAgainstReference(p);
    }
  }
}

TEST(MergeOnCpuTest, AllTokensEmptyPerTokenScaleIsOne) {
  Spec s = SmallSpec(OutputMode::kFp8PerToken);
  Problem p(s);
  for (int i = 0; i < s.N; ++i) {
    for (int h = 0; h < s.H; ++h) {
      p.L(i, 0, h) = -kInf;
      p.L(i, 1, h) = 0.0f;
      for (int d = 0; d < s.D; ++d) p.SetX(i, 1, h, d, 1.0f);
    }
  }
  ASSERT_TRUE(p.Run().ok());
  EXPECT_EQ(p.Scale(0, 0, 0), 1.0f);
  EXPECT_EQ(p.Scale(1, 0, 0), 1.0f / 448.0f);
  EXPECT_EQ(p.Code(1, 1, 5), 0x7E);  // 1 / (1/448) = 448
}

TEST(MergeOnCpuTest, NaNPayloadInNonEmptyPartPropagates) {
  for (OutputMode mode : kAllModes) {
    Spec s = SmallSpec(mode, DType::kBFloat16);
    SCOPED_TRACE(s.ToString());
    Problem p(s);
    std::mt19937_64 rng(2);
    FillRandom(p, rng, false);
    p.SetX(1, 0, 1, 3, kNaN);
    p.SetX(2, 1, 0, 7, -kNaN);
    // Part 2 at (1, 0) has a weight that underflows to 0: NaN still shows.
    p.L(2, 1, 0) = p.L(0, 1, 0) - 1000.0f;
    ASSERT_TRUE(p.Run().ok());
    if (mode == OutputMode::kPassthrough) {
      EXPECT_TRUE(std::isnan(p.Passthrough(0, 1, 3)));
      EXPECT_TRUE(std::isnan(p.Passthrough(1, 0, 7)));
    } else {
      EXPECT_EQ(p.Code(0, 1, 3) & 0x7F, 0x7F);
      EXPECT_EQ(p.Code(1, 0, 7) & 0x7F, 0x7F);
      EXPECT_NE(p.Code(0, 1, 2) & 0x7F, 0x7F);
    }
    CheckAgainstReference(p);  // NaN left out of dynamic amax too
  }
}

// An empty part's payload is never read: removing the empty parts gives
// bit-identical results.
TEST(MergeOnCpuTest, EmptyPartGarbageDoesNotLeak) {
  constexpr uint64_t kSeed = 3;
  SCOPED_TRACE(absl::StrFormat("seed=%d", kSeed));
  for (OutputMode mode : kAllModes) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      Spec s = SmallSpec(mode, dtype);
      s.N = 4;
      SCOPED_TRACE(s.ToString());
      Problem full(s);
      std::mt19937_64 rng(kSeed);
      FillRandom(full, rng, false);
      // Parts 1 and 3 are empty everywhere, payload garbage (NaN, inf, huge).
      const float lse_empty[] = {-kInf, kInf, kNaN};
      const float garbage[] = {kNaN, kInf, -kInf, 3e38f};
      for (int i : {1, 3}) {
        for (int64_t t = 0; t < s.T; ++t) {
          for (int h = 0; h < s.H; ++h) {
            full.L(i, t, h) = lse_empty[(i + t + h) % 3];
            for (int d = 0; d < s.D; ++d) {
              full.SetX(i, t, h, d, garbage[(d + i) % 4]);
            }
          }
        }
      }
      Spec s2 = s;
      s2.N = 2;
      Problem kept(s2);
      for (int j = 0; j < 2; ++j) {
        const int i = j * 2;  // parts 0 and 2
        for (int64_t t = 0; t < s.T; ++t) {
          for (int h = 0; h < s.H; ++h) {
            kept.L(j, t, h) = full.L(i, t, h);
            for (int d = 0; d < s.D; ++d) {
              kept.SetX(j, t, h, d, static_cast<float>(full.GetX(i, t, h, d)));
            }
          }
        }
      }
      ASSERT_TRUE(full.Run().ok());
      ASSERT_TRUE(kept.Run().ok());
      EXPECT_EQ(full.Bytes(), kept.Bytes());
      CheckAgainstReference(full);
    }
  }
}

TEST(MergeOnCpuTest, StridePaddingIsNeverRead) {
  // Padding is NaN (Problem fills it so); any read would show as NaN.
  for (OutputMode mode : kAllModes) {
    Spec s = SmallSpec(mode, DType::kFloat16);
    s.head_pad = 8;
    s.token_pad = 24;
    s.T = 3;
    SCOPED_TRACE(s.ToString());
    Problem p(s);
    std::mt19937_64 rng(4);
    FillRandom(p, rng, false);
    ASSERT_TRUE(p.Run().ok());
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        for (int d = 0; d < s.D; ++d) {
          if (mode == OutputMode::kPassthrough) {
            ASSERT_FALSE(std::isnan(p.Passthrough(t, h, d)));
          } else {
            ASSERT_NE(p.Code(t, h, d) & 0x7F, 0x7F);
          }
        }
      }
    }
    CheckAgainstReference(p);
  }
}

TEST(MergeOnCpuTest, SaturatesAt448) {
  Spec s = SmallSpec(OutputMode::kFp8PerTensor);
  s.N = 2;
  s.static_scale = 0.5f;
  Problem p(s);
  for (int i = 0; i < 2; ++i) {
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        p.L(i, t, h) = 1.0f;
        for (int d = 0; d < s.D; ++d) p.SetX(i, t, h, d, 100.0f * (d - 32));
      }
    }
  }
  p.SetX(0, 0, 0, 1, kInf);  // +inf payload saturates too
  p.SetX(1, 0, 0, 2, -kInf);
  ASSERT_TRUE(p.Run().ok());
  EXPECT_EQ(p.Code(0, 0, 0), 0xFE);   // -3200 / 0.5
  EXPECT_EQ(p.Code(0, 0, 1), 0x7E);   // +inf
  EXPECT_EQ(p.Code(0, 0, 2), 0xFE);   // -inf
  EXPECT_EQ(p.Code(0, 1, 32), 0x00);  // 0
  // 200 / 0.5 = 400: tie between 384 (0x7C, even) and 416 (0x7D).
  EXPECT_EQ(p.Code(0, 1, 34), 0x7C);
  EXPECT_EQ(DecodeE4M3(p.Code(0, 1, 34)), 384.0f);
  EXPECT_EQ(p.Code(0, 1, 35), 0x7E);  // 600 -> 448
  EXPECT_EQ(p.Code(0, 1, 63), 0x7E);
  EXPECT_EQ(p.Code(1, 1, 0), 0xFE);
}

TEST(MergeOnCpuTest, InfPayloadLeftOutOfDynamicAmax) {
  for (OutputMode mode : {OutputMode::kFp8PerToken, OutputMode::kFp8PerGroup}) {
    Spec s = SmallSpec(mode);
    s.N = 1;
    Problem p(s);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        p.L(0, t, h) = 0.0f;
        for (int d = 0; d < s.D; ++d) p.SetX(0, t, h, d, 0.25f * (d % 8));
      }
    }
    p.SetX(0, 0, 0, 0, kInf);
    p.SetX(0, 0, 0, 1, kNaN);
    ASSERT_TRUE(p.Run().ok());
    EXPECT_EQ(p.Scale(0, 0, 0), 1.75f / 448.0f) << OutputModeName(mode);
    EXPECT_EQ(p.Code(0, 0, 0), 0x7E);
    EXPECT_EQ(p.Code(0, 0, 1), 0x7F);
    EXPECT_EQ(p.Code(0, 0, 7), 0x7E);  // 1.75 is the amax: 448
  }
}

TEST(MergeOnCpuTest, HugeLseDifferences) {
  Spec s = SmallSpec(OutputMode::kPassthrough);
  s.N = 4;
  s.T = 1;
  s.H = 3;
  Problem p(s);
  std::mt19937_64 rng(5);
  FillRandom(p, rng, false);
  const float big = std::numeric_limits<float>::max();
  const float lses[3][4] = {{1e30f, 0.0f, -1e30f, -kInf},
                            {-big, big, 0.0f, -big},
                            {-1e30f, -1e30f - 1e24f, -3e38f, kNaN}};
  for (int h = 0; h < 3; ++h) {
    for (int i = 0; i < 4; ++i) p.L(i, 0, h) = lses[h][i];
  }
  ASSERT_TRUE(p.Run().ok());
  for (int d = 0; d < s.D; ++d) {
    // A single dominant part comes through bit-exactly (weight 1, s = 1).
    EXPECT_EQ(p.Passthrough(0, 0, d), p.GetX(0, 0, 0, d));
    EXPECT_EQ(p.Passthrough(0, 1, d), p.GetX(1, 0, 1, d));
    EXPECT_EQ(p.Passthrough(0, 2, d), p.GetX(0, 0, 2, d));
  }
  EXPECT_EQ(p.OutLse(0, 0), 1e30f);
  EXPECT_EQ(p.OutLse(0, 1), big);
  EXPECT_EQ(p.OutLse(0, 2), -1e30f);
  CheckAgainstReference(p);
}

TEST(MergeOnCpuTest, SinglePartIsIdentity) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    Spec s = SmallSpec(OutputMode::kPassthrough, dtype);
    s.N = 1;
    Problem p(s);
    std::mt19937_64 rng(6);
    FillRandom(p, rng, false);
    p.SetX(0, 0, 0, 0, -0.0f);
    ASSERT_TRUE(p.Run().ok());
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        EXPECT_EQ(p.OutLse(t, h), p.L(0, t, h));
        for (int d = 0; d < s.D; ++d) {
          ASSERT_EQ(p.Passthrough(t, h, d), p.GetX(0, t, h, d));
        }
      }
    }
    // -0 stays -0 (the sum starts from the first live part, not from +0).
    EXPECT_TRUE(std::signbit(p.Passthrough(0, 0, 0)));
  }
}

TEST(MergeOnCpuTest, TwoEqualPartsAverage) {
  for (LseBase base : {LseBase::kNatural, LseBase::kTwo}) {
    Spec s = SmallSpec(OutputMode::kPassthrough);
    s.N = 2;
    s.base = base;
    Problem p(s);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.H; ++h) {
        p.L(0, t, h) = 3.0f;
        p.L(1, t, h) = 3.0f;
        for (int d = 0; d < s.D; ++d) {
          p.SetX(0, t, h, d, 1.0f);
          p.SetX(1, t, h, d, 2.0f);
        }
      }
    }
    ASSERT_TRUE(p.Run().ok());
    EXPECT_EQ(p.Passthrough(1, 1, 9), 1.5f);
    // log(2) in the configured base.
    EXPECT_FLOAT_EQ(p.OutLse(1, 1),
                    base == LseBase::kTwo ? 4.0f : 3.0f + std::log(2.0f));
  }
}

TEST(MergeOnCpuTest, BaseTwoMatchesNaturalOnScaledLse) {
  Spec se = SmallSpec(OutputMode::kPassthrough);
  se.N = 5;
  Spec s2 = se;
  s2.base = LseBase::kTwo;
  Problem pe(se), p2(s2);
  std::mt19937_64 rng(7);
  FillRandom(pe, rng, true);
  for (int i = 0; i < se.N; ++i) {
    for (int64_t t = 0; t < se.T; ++t) {
      for (int h = 0; h < se.H; ++h) {
        p2.L(i, t, h) = pe.L(i, t, h) * 1.44269504f;  // log2(e)
        for (int d = 0; d < se.D; ++d) {
          p2.SetX(i, t, h, d, static_cast<float>(pe.GetX(i, t, h, d)));
        }
      }
    }
  }
  ASSERT_TRUE(pe.Run().ok());
  ASSERT_TRUE(p2.Run().ok());
  for (int64_t t = 0; t < se.T; ++t) {
    for (int h = 0; h < se.H; ++h) {
      if (pe.OutLse(t, h) == -kInf) {
        EXPECT_EQ(p2.OutLse(t, h), -kInf);
      } else {
        EXPECT_NEAR(p2.OutLse(t, h) * 0.69314718f, pe.OutLse(t, h), 1e-4);
      }
      for (int d = 0; d < se.D; ++d) {
        EXPECT_NEAR(p2.Passthrough(t, h, d), pe.Passthrough(t, h, d), 1e-4);
      }
    }
  }
}

TEST(MergeOnCpuTest, LseLayoutsAgree) {
  for (OutputMode mode : kAllModes) {
    Spec a = SmallSpec(mode, DType::kBFloat16);
    a.T = 3;
    a.H = 4;
    a.N = 3;
    Spec b = a;
    b.layout = LseLayout::kTokensHeads;
    Problem pa(a), pb(b);
    std::mt19937_64 rng(8);
    FillRandom(pa, rng, true);
    for (int i = 0; i < a.N; ++i) {
      for (int64_t t = 0; t < a.T; ++t) {
        for (int h = 0; h < a.H; ++h) {
          pb.L(i, t, h) = pa.L(i, t, h);
          for (int d = 0; d < a.D; ++d) {
            pb.SetX(i, t, h, d, static_cast<float>(pa.GetX(i, t, h, d)));
          }
        }
      }
    }
    ASSERT_TRUE(pa.Run().ok());
    ASSERT_TRUE(pb.Run().ok());
    for (int64_t t = 0; t < a.T; ++t) {
      for (int h = 0; h < a.H; ++h) {
        const float la = pa.OutLse(t, h), lb = pb.OutLse(t, h);
        EXPECT_EQ(std::memcmp(&la, &lb, 4), 0);
        for (int d = 0; d < a.D; ++d) {
          if (mode == OutputMode::kPassthrough) {
            const float x = pa.Passthrough(t, h, d),
                        y = pb.Passthrough(t, h, d);
            ASSERT_EQ(std::memcmp(&x, &y, 4), 0);
          } else {
            ASSERT_EQ(pa.Code(t, h, d), pb.Code(t, h, d));
            ASSERT_EQ(pa.Scale(t, h, d), pb.Scale(t, h, d));
          }
        }
      }
    }
    CheckAgainstReference(pb);
  }
}

TEST(MergeOnCpuTest, PowerOfTwoScales) {
  for (OutputMode mode : {OutputMode::kFp8PerToken, OutputMode::kFp8PerGroup}) {
    Spec s = SmallSpec(mode);
    s.N = 2;
    s.pow2 = true;
    s.D = 128;
    Problem p(s);
    for (int i = 0; i < 2; ++i) {
      for (int64_t t = 0; t < s.T; ++t) {
        for (int h = 0; h < s.H; ++h) {
          p.L(i, t, h) = 0.5f;
          for (int d = 0; d < s.D; ++d) {
            // amax 56 in every group (d % 64 == 63): 56/448 = 2^-3 exactly;
            // token 1: amax 57 -> 2^-3 rounds up to 2^-2.
            const float v = d % 64 == 63 ? 56.0f + t : 0.5f * (d % 7);
            p.SetX(i, t, h, d, v);
          }
        }
      }
    }
    ASSERT_TRUE(p.Run().ok());
    EXPECT_EQ(p.Scale(0, 0, 0), 0.125f) << OutputModeName(mode);
    EXPECT_EQ(p.Scale(1, 1, 64), 0.25f) << OutputModeName(mode);
    EXPECT_EQ(p.Code(0, 0, 63), 0x7E);                // 56 / 2^-3
    EXPECT_EQ(DecodeE4M3(p.Code(1, 0, 63)), 224.0f);  // 57/0.25=228
    EXPECT_EQ(DecodeE4M3(p.Code(0, 1, 1)), 4.0f);     // 0.5 / 2^-3
    CheckAgainstReference(p);
  }
}

TEST(MergeOnCpuTest, ThreadCountDoesNotChangeBits) {
  for (OutputMode mode : kAllModes) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      Spec s;
      s.N = 8;
      s.T = 67;  // not a multiple of the thread count
      s.H = 8;
      s.D = 128;
      s.G = 64;
      s.mode = mode;
      s.dtype = dtype;
      s.pow2 = dtype == DType::kFloat16;
      s.static_scale = 0.01f;
      SCOPED_TRACE(s.ToString());
      Problem p(s);
      std::mt19937_64 rng(9);
      FillRandom(p, rng, true);
      ASSERT_TRUE(p.Run(1).ok());
      const std::vector<uint8_t> one = p.Bytes();
      for (int threads : {4, 3, 0}) {
        ASSERT_TRUE(p.Run(threads).ok());
        EXPECT_EQ(p.Bytes(), one) << "threads=" << threads;
      }
    }
  }
}

TEST(MergeOnCpuTest, EmptyStep) {
  for (OutputMode mode : kAllModes) {
    MergeArgs a;
    a.shape = {4, 0, 8, 128};
    a.config.output_mode = mode;
    a.token_stride = 1024;
    a.head_stride = 128;
    float scale = 1.0f;
    a.static_scale = &scale;
    EXPECT_TRUE(MergeOnCpu(a).ok()) << OutputModeName(mode);
  }
}

TEST(MergeOnCpuTest, BadStaticScaleRejected) {
  const float bad[] = {0.0f,
                       -0.0f,
                       -1.0f,
                       kNaN,
                       kInf,
                       -kInf,
                       std::numeric_limits<float>::denorm_min(),
                       std::numeric_limits<float>::max()};
  for (float scale : bad) {
    Spec s = SmallSpec(OutputMode::kFp8PerTensor);
    s.static_scale = scale;
    SCOPED_TRACE(absl::StrFormat("scale=%a", scale));
    Problem p(s);
    std::mt19937_64 rng(10);
    FillRandom(p, rng, false);
    const std::vector<uint8_t> before = p.Bytes();
    const absl::Status st = p.Run();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("static_scale"), absl::string_view::npos) << st;
    EXPECT_EQ(p.Bytes(), before) << "outputs written despite the error";
  }
  // Dynamic modes never read static_scale.
  Spec s = SmallSpec(OutputMode::kFp8PerToken);
  s.static_scale = kNaN;
  Problem p(s);
  std::mt19937_64 rng(11);
  FillRandom(p, rng, false);
  EXPECT_TRUE(p.Run().ok());
}

TEST(MergeOnCpuTest, InvalidArgsRejectedBeforeAnyWrite) {
  Spec s = SmallSpec(OutputMode::kPassthrough, DType::kFloat16);
  Problem p(s);
  MergeArgs a = p.Args();
  a.out.bytes = s.T * s.H * s.D;  // FP8-sized buffer for a 2-byte output
  const absl::Status st = MergeOnCpu(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("out.bytes"), absl::string_view::npos) << st;
}

}  // namespace
}  // namespace dcpmerge
