// Checks kernels/numeric.h against independent float64 references: every
// format's values are enumerated from its definition, and rounding is done
// by searching that table (nearest, ties to the even code).
#include "kernels/numeric.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

constexpr double kInfD = std::numeric_limits<double>::infinity();

uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
float FromBits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
std::string Hex(float x) { return absl::StrFormat("%a (0x%08x)", x, Bits(x)); }

// A binary format with a sign bit, `exp_bits` exponent bits, `man_bits`
// mantissa bits, IEEE-style subnormals. Value of the non-negative code k.
double FormatValue(uint32_t k, int exp_bits, int man_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const uint32_t e = k >> man_bits;
  const uint32_t m = k & ((1u << man_bits) - 1);
  if (e == 0) return std::ldexp(static_cast<double>(m), 1 - bias - man_bits);
  return std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -man_bits),
                    static_cast<int>(e) - bias);
}

// Non-negative values of codes 0..max_code, then a virtual value one code
// step beyond the largest finite one (2^(emax+1) for IEEE-like formats; 480
// for e4m3fn, whose code 0x7F is NaN).
struct Table {
  std::vector<double> v;
  uint32_t max_code;
};

Table MakeTable(int exp_bits, int man_bits, uint32_t max_code) {
  Table t;
  t.max_code = max_code;
  for (uint32_t k = 0; k <= max_code + 1; ++k) {
    t.v.push_back(FormatValue(k, exp_bits, man_bits));
  }
  for (size_t i = 1; i < t.v.size(); ++i) {
    if (!(t.v[i] > t.v[i - 1])) ADD_FAILURE() << "table not increasing";
  }
  return t;
}

// Nearest code to ax >= 0 (ties to even code); max_code + 1 means "beyond
// the finite range".
uint32_t Nearest(const Table& t, double ax) {
  const uint32_t over = t.max_code + 1;
  if (ax >= t.v[over]) return over;
  const size_t hi = std::upper_bound(t.v.begin(), t.v.end(), ax) - t.v.begin();
  const uint32_t lo = static_cast<uint32_t>(hi - 1);
  const double mid = (t.v[lo] + t.v[lo + 1]) / 2;  // exact
  if (ax < mid) return lo;
  if (ax > mid) return lo + 1;
  return (lo % 2 == 0) ? lo : lo + 1;
}

const Table& E4M3Table() {
  static const Table* t = new Table(MakeTable(4, 3, 0x7E));
  return *t;
}
const Table& HalfTable() {
  static const Table* t = new Table(MakeTable(5, 10, 0x7BFF));
  return *t;
}
const Table& BF16Table() {
  static const Table* t = new Table(MakeTable(8, 7, 0x7F7F));
  return *t;
}

uint8_t RefE4M3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return 0x7F;  // sign dropped, like the hardware
  uint32_t k = Nearest(E4M3Table(), std::fabs(static_cast<double>(x)));
  if (k > 0x7E) k = 0x7E;  // satfinite: 480 and beyond (inf too) -> 448
  return static_cast<uint8_t>(k | sign);
}

// Non-NaN inputs only (NaN handled by the callers' own checks).
uint16_t RefFloatTo16(const Table& t, float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const uint32_t k = Nearest(t, std::fabs(static_cast<double>(x)));
  // max_code + 1 is exactly the infinity code for IEEE-like formats.
  return static_cast<uint16_t>(k | sign);
}

double RefHalfValue(uint16_t h) {
  const double mag = (h & 0x7C00) == 0x7C00
                         ? ((h & 0x3FF) ? std::nan("") : kInfD)
                         : FormatValue(h & 0x7FFF, 5, 10);
  return (h & 0x8000) ? -mag : mag;
}
double RefBF16Value(uint16_t b) {
  const double mag = (b & 0x7F80) == 0x7F80
                         ? ((b & 0x7F) ? std::nan("") : kInfD)
                         : FormatValue(b & 0x7FFF, 8, 7);
  return (b & 0x8000) ? -mag : mag;
}

// Counts mismatches, reporting the first few in detail.
class MismatchLog {
 public:
  explicit MismatchLog(const char* what) : what_(what) {}
  ~MismatchLog() { EXPECT_EQ(count_, 0) << what_ << ": total mismatches"; }
  template <typename T>
  void Check(float x, T got, T want) {
    if (got == want) return;
    if (++count_ <= 10) {
      ADD_FAILURE() << what_ << ": x=" << Hex(x) << " got 0x" << std::hex
                    << static_cast<uint32_t>(got) << " want 0x"
                    << static_cast<uint32_t>(want);
    }
  }

 private:
  const char* what_;
  int64_t count_ = 0;
};

// Every interesting float around a sorted table of finite values: each
// value, the midpoints to the next, and the float neighbours of both.
std::vector<float> BoundaryFloats(const Table& t) {
  std::vector<float> out;
  auto add_around = [&](float f) {
    out.push_back(f);
    out.push_back(std::nextafter(f, 0.0f));
    out.push_back(std::nextafter(f, std::numeric_limits<float>::infinity()));
  };
  for (size_t k = 0; k + 1 < t.v.size(); ++k) {
    add_around(static_cast<float>(t.v[k]));
    const double mid = (t.v[k] + t.v[k + 1]) / 2;
    const float fmid = static_cast<float>(mid);
    EXPECT_EQ(static_cast<double>(fmid), mid) << "midpoint not a float";
    add_around(fmid);
  }
  add_around(static_cast<float>(t.v.back()));
  const float special[] = {0.0f,
                           std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::min(),
                           std::numeric_limits<float>::max(),
                           std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(),
                           FromBits(0x7F800001u),  // signaling NaN
                           FromBits(0x7FFFFFFFu)};
  for (float f : special) add_around(f);
  const size_t n = out.size();
  for (size_t i = 0; i < n; ++i) out.push_back(-out[i]);
  return out;
}

// ------------------------------------------------------------------ E4M3 ---

TEST(EncodeE4M3Test, ReferenceTableIsTheE4M3Grid) {
  const Table& t = E4M3Table();
  ASSERT_EQ(t.v.size(), 128u);
  EXPECT_EQ(t.v[1], std::ldexp(1.0, -9));  // smallest subnormal
  EXPECT_EQ(t.v[8], std::ldexp(1.0, -6));  // smallest normal
  EXPECT_EQ(t.v[0x7E], 448.0);             // largest finite
  EXPECT_EQ(t.v[0x7F], 480.0);             // virtual next step
}

TEST(EncodeE4M3Test, NamedCases) {
  struct Case {
    float x;
    uint8_t code;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const Case cases[] = {
      {0.0f, 0x00},
      {-0.0f, 0x80},
      {1.0f, 0x38},
      {-1.0f, 0xB8},
      {448.0f, 0x7E},
      {-448.0f, 0xFE},
      {450.0f, 0x7E},
      {463.99997f, 0x7E},
      {464.0f, 0x7E},      // tie between 448 (even) and 480 (odd): 448
      {464.00003f, 0x7E},  // rounds to 480 -> saturates
      {480.0f, 0x7E},
      {1e30f, 0x7E},
      {-1e30f, 0xFE},
      {inf, 0x7E},
      {-inf, 0xFE},
      {std::ldexp(1.0f, -9), 0x01},
      {std::ldexp(1.0f, -10), 0x00},  // tie between 0 and 2^-9: 0 (even)
      {std::nextafter(std::ldexp(1.0f, -10), 1.0f), 0x01},
      {-std::ldexp(1.0f, -10), 0x80},      // sign kept on underflow
      {3 * std::ldexp(1.0f, -10), 0x02},   // tie 1 vs 2 (even): 2
      {5 * std::ldexp(1.0f, -10), 0x02},   // tie 2 vs 3: 2
      {15 * std::ldexp(1.0f, -10), 0x08},  // tie 7 vs 8 -> 2^-6, a normal
      {std::ldexp(1.0f, -6), 0x08},
      {1.0625f, 0x38},  // tie 1.0 vs 1.125: 1.0
      {1.1875f, 0x3A},  // tie 1.125 vs 1.25: 1.25
      {std::numeric_limits<float>::denorm_min(), 0x00},
      {-std::numeric_limits<float>::denorm_min(), 0x80},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(Hex(c.x));
    EXPECT_EQ(EncodeE4M3(c.x), c.code);
    EXPECT_EQ(RefE4M3(c.x), c.code) << "test reference disagrees";
  }
  EXPECT_EQ(EncodeE4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(EncodeE4M3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(EncodeE4M3(FromBits(0x7F800001u)), 0x7F);  // signaling NaN
  EXPECT_EQ(EncodeE4M3(FromBits(0xFFFFFFFFu)), 0x7F);
}

TEST(EncodeE4M3Test, AllBoundaries) {
  MismatchLog log("EncodeE4M3 boundary");
  for (float x : BoundaryFloats(E4M3Table())) {
    log.Check(x, EncodeE4M3(x), RefE4M3(x));
  }
}

TEST(EncodeE4M3Test, AllHalfPatterns) {
  MismatchLog log("EncodeE4M3 of fp16");
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const double d = RefHalfValue(static_cast<uint16_t>(h));
    float x = static_cast<float>(d);  // exact
    if (std::isnan(d)) {
      x = FromBits(((h & 0x8000u) << 16) | 0x7FC00000u);
    }
    log.Check(x, EncodeE4M3(x), RefE4M3(x));
  }
}

TEST(EncodeE4M3Test, AllBFloat16Patterns) {
  MismatchLog log("EncodeE4M3 of bf16");
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float x = FromBits(b << 16);
    log.Check(x, EncodeE4M3(x), RefE4M3(x));
  }
}

TEST(EncodeE4M3Test, RandomFloatPatterns) {
  constexpr uint32_t kSeed = 20240601;
  SCOPED_TRACE(absl::StrFormat("seed=%u", kSeed));
  std::mt19937 rng(kSeed);
  MismatchLog log("EncodeE4M3 random");
  // 2^23 uniform bit patterns, 2^23 with the exponent near e4m3's range.
  for (int i = 0; i < (1 << 23); ++i) {
    const float x = FromBits(rng());
    log.Check(x, EncodeE4M3(x), RefE4M3(x));
  }
  for (int i = 0; i < (1 << 23); ++i) {
    const uint32_t r = rng();
    const uint32_t exp = 127 - 14 + (r >> 24) % 26;  // 2^-14 .. 2^11
    const float x = FromBits((r & 0x807FFFFFu) | (exp << 23));
    log.Check(x, EncodeE4M3(x), RefE4M3(x));
  }
}

TEST(DecodeE4M3Test, AllCodes) {
  for (uint32_t c = 0; c < 256; ++c) {
    SCOPED_TRACE(absl::StrFormat("code=0x%02x", c));
    const float f = DecodeE4M3(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(f));
      EXPECT_EQ(std::signbit(f), (c & 0x80) != 0);
      continue;
    }
    const double mag = FormatValue(c & 0x7F, 4, 3);
    EXPECT_EQ(static_cast<double>(f), (c & 0x80) ? -mag : mag);
    EXPECT_EQ(std::signbit(f), (c & 0x80) != 0);  // -0 for 0x80
    EXPECT_EQ(EncodeE4M3(f), c) << "round trip";
  }
}

// ------------------------------------------------------------ fp16/bf16 ---

TEST(HalfTest, AllPatternsToFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    const double want = RefHalfValue(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
      ASSERT_NE(Bits(f) & 0x00400000u, 0u) << "not quiet: " << std::hex << h;
      ASSERT_EQ((Bits(f) >> 13) & 0x1FFu, h & 0x1FFu) << "payload " << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
  }
}

TEST(HalfTest, AllPatternsRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    const uint16_t back = FloatToHalfBits(f);
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) {  // NaN: quiet NaN back
      ASSERT_EQ(back & 0x7C00, 0x7C00) << std::hex << h;
      ASSERT_NE(back & 0x0200, 0) << "not quiet " << std::hex << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
      continue;
    }
    ASSERT_EQ(back, h) << std::hex << h;
  }
}

TEST(HalfTest, FromFloatBoundaries) {
  MismatchLog log("FloatToHalfBits boundary");
  for (float x : BoundaryFloats(HalfTable())) {
    if (std::isnan(x)) continue;
    log.Check(x, FloatToHalfBits(x), RefFloatTo16(HalfTable(), x));
  }
  EXPECT_EQ(FloatToHalfBits(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalfBits(65519.996f), 0x7BFF);
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7C00);  // tie -> even -> inf
  EXPECT_EQ(FloatToHalfBits(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -25)), 0x0000);  // tie -> 0
  EXPECT_EQ(FloatToHalfBits(std::ldexp(3.0f, -25)), 0x0002);  // tie -> 2
  EXPECT_EQ(FloatToHalfBits(-0.0f), 0x8000);
  const uint16_t nan = FloatToHalfBits(FromBits(0xFF800001u));  // -sNaN
  EXPECT_EQ(nan & 0xFE00, 0xFE00);
}

TEST(HalfTest, FromFloatRandom) {
  constexpr uint32_t kSeed = 7;
  SCOPED_TRACE(absl::StrFormat("seed=%u", kSeed));
  std::mt19937 rng(kSeed);
  MismatchLog log("FloatToHalfBits random");
  for (int i = 0; i < (1 << 22); ++i) {
    uint32_t r = rng();
    if (i & 1) {  // exponent near half's range
      r = (r & 0x807FFFFFu) | ((127 - 26 + (r >> 23) % 44) << 23);
    }
    const float x = FromBits(r);
    if (std::isnan(x)) {
      const uint16_t h = FloatToHalfBits(x);
      if ((h & 0x7E00) != 0x7E00 || (h >> 15) != (r >> 31)) {
        log.Check(x, h, static_cast<uint16_t>(0x7E00 | ((r >> 16) & 0x8000)));
      }
      continue;
    }
    log.Check(x, FloatToHalfBits(x), RefFloatTo16(HalfTable(), x));
  }
}

TEST(BFloat16Test, AllPatternsToFloatAndBack) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = BFloat16BitsToFloat(static_cast<uint16_t>(b));
    const double want = RefBF16Value(static_cast<uint16_t>(b));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_NE(Bits(f) & 0x00400000u, 0u) << "not quiet " << std::hex << b;
      ASSERT_EQ(Bits(f) >> 31, b >> 15) << std::hex << b;
      const uint16_t back = FloatToBFloat16Bits(f);
      ASSERT_EQ(back & 0xFFC0, (b & 0x8000) | 0x7FC0) << std::hex << b;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << b;
    ASSERT_EQ(std::signbit(f), (b & 0x8000) != 0) << std::hex << b;
    ASSERT_EQ(FloatToBFloat16Bits(f), b) << std::hex << b;
  }
}

TEST(BFloat16Test, FromFloatBoundaries) {
  MismatchLog log("FloatToBFloat16Bits boundary");
  for (float x : BoundaryFloats(BF16Table())) {
    if (std::isnan(x)) continue;
    log.Check(x, FloatToBFloat16Bits(x), RefFloatTo16(BF16Table(), x));
  }
  EXPECT_EQ(FloatToBFloat16Bits(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(FloatToBFloat16Bits(-std::numeric_limits<float>::infinity()),
            0xFF80);
  EXPECT_EQ(FloatToBFloat16Bits(FromBits(0x3F808000u)), 0x3F80);  // tie even
  EXPECT_EQ(FloatToBFloat16Bits(FromBits(0x3F818000u)), 0x3F82);  // tie even
  EXPECT_EQ(FloatToBFloat16Bits(FromBits(0x7F800001u)) & 0xFFC0, 0x7FC0);
}

TEST(BFloat16Test, FromFloatRandom) {
  constexpr uint32_t kSeed = 11;
  SCOPED_TRACE(absl::StrFormat("seed=%u", kSeed));
  std::mt19937 rng(kSeed);
  MismatchLog log("FloatToBFloat16Bits random");
  for (int i = 0; i < (1 << 22); ++i) {
    const float x = FromBits(rng());
    if (std::isnan(x)) continue;
    log.Check(x, FloatToBFloat16Bits(x), RefFloatTo16(BF16Table(), x));
  }
}

// --------------------------------------------------------- dynamic scale ---

TEST(DynamicFp8ScaleTest, Cases) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (bool p2 : {false, true}) {
    SCOPED_TRACE(p2 ? "power_of_two" : "exact");
    EXPECT_EQ(DynamicFp8Scale(0.0f, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(-0.0f, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(-5.0f, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(nan, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(inf, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(448.0f, p2), 1.0f);
    EXPECT_EQ(DynamicFp8Scale(896.0f, p2), 2.0f);
    EXPECT_EQ(DynamicFp8Scale(3.5f, p2), 0.0078125f);  // 448 * 2^-7 / 448
    // Tiny: clamped to 2^-120.
    EXPECT_EQ(DynamicFp8Scale(1e-40f, p2), std::ldexp(1.0f, -120));
    EXPECT_EQ(DynamicFp8Scale(std::numeric_limits<float>::denorm_min(), p2),
              std::ldexp(1.0f, -120));
    EXPECT_EQ(1.0f / DynamicFp8Scale(1e-40f, p2), std::ldexp(1.0f, 120));
  }
  EXPECT_EQ(DynamicFp8Scale(500.0f, false), 500.0f / 448.0f);
  EXPECT_EQ(DynamicFp8Scale(500.0f, true), 2.0f);
  EXPECT_EQ(DynamicFp8Scale(449.0f, true), 2.0f);
  EXPECT_EQ(DynamicFp8Scale(447.0f, true), 1.0f);
  EXPECT_EQ(DynamicFp8Scale(1.0f, true), 0.00390625f);  // 1/448 -> 2^-8
  const float big = std::numeric_limits<float>::max();
  EXPECT_EQ(DynamicFp8Scale(big, false), big / 448.0f);
  EXPECT_EQ(DynamicFp8Scale(big, true), std::ldexp(1.0f, 120));
  EXPECT_TRUE(std::isfinite(1.0f / DynamicFp8Scale(big, false)));
  // Power-of-two scales are powers of two and cover amax.
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const float amax = FromBits(rng() & 0x7F7FFFFFu);
    const float s = DynamicFp8Scale(amax, true);
    int e;
    ASSERT_EQ(std::frexp(s, &e), 0.5f) << Hex(amax);
    ASSERT_GE(static_cast<double>(s) * 448.0,
              static_cast<double>(amax) * (1 - 1e-7))
        << Hex(amax);
    ASSERT_LE(EncodeE4M3(amax * (1.0f / s)), 0x7E) << Hex(amax);
  }
}

}  // namespace
}  // namespace dcpmerge
