// SplitMix64: a small, fast generator for synthetic inputs (the demo, the
// benchmarks). Deterministic for a seed; not for anything secret.
#ifndef DCPMERGE_BASE_RNG_H_
#define DCPMERGE_BASE_RNG_H_

#include <cstdint>

namespace dcpmerge {

struct SplitMix64 {
  uint64_t state;

  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  // Uniform in [lo, hi) with 24 random bits (a float's precision).
  float Uniform(float lo, float hi) {
    return lo + static_cast<float>((Next() >> 40) * (1.0 / 16777216.0)) * (hi - lo);
  }
};

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_RNG_H_
