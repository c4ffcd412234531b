// The server's compute backends: the choice at start-up, and the CUDA
// backend (host buffers staged through the GPU) against the CPU reference.
// The CUDA cases skip, with the reason, where no GPU is usable.
#include "server/compute_backend.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/merge_contract.h"
#include "kernels/numeric.h"
#include "tests/server/test_data.h"

namespace dcpmerge {
namespace {

using testing::MakePart;
using testing::PartData;

// Position of an e4m3 code on the number line (codes are sign-magnitude).
int CodeOrdinal(uint8_t c) { return (c & 0x80) ? -(c & 0x7F) : (c & 0x7F); }
bool IsNanCode(uint8_t c) { return (c & 0x7F) == 0x7F; }

struct Outputs {
  absl::Status status;
  std::vector<uint8_t> out;
  std::vector<float> scales;
  std::vector<float> lse;
};

Outputs MergeWith(ComputeBackend& backend, const std::vector<PartData>& parts, int64_t T, int H,
            int D, OutputMode mode, float scale) {
  MergeArgs a;
  a.shape = {static_cast<int32_t>(parts.size()), T, H, D};
  a.config.input_dtype = DType::kBFloat16;
  a.config.output_mode = mode;
  a.config.group_size = 128;
  for (size_t i = 0; i < parts.size(); ++i) {
    a.partial_out[i] = parts[i].out.data();
    a.partial_lse[i] = parts[i].lse.data();
  }
  a.partial_out_bytes = parts[0].out.size();
  a.partial_lse_bytes = parts[0].lse.size() * sizeof(float);
  a.token_stride = int64_t{H} * D;
  a.head_stride = D;
  a.static_scale = &scale;
  Outputs o;
  o.out.assign(OutputBytes(a.shape, a.config), 0xA5);  // poison
  a.out = {o.out.data(), o.out.size()};
  o.scales.assign(std::max<int64_t>(OutputScaleCount(a.shape, a.config), 1), -1.0f);
  if (mode != OutputMode::kFp8PerTensor && mode != OutputMode::kPassthrough) {
    a.out_scales = {o.scales.data(), o.scales.size() * sizeof(float)};
  }
  o.lse.assign(T * H, 12345.0f);
  a.out_lse = {o.lse.data(), o.lse.size() * sizeof(float)};
  o.status = backend.Merge(a);
  return o;
}

TEST(ComputeBackendTest, CpuIsAlwaysAvailable) {
  std::string why;
  auto cpu = MakeComputeBackend("cpu", 2, &why);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->name(), "cpu");
  EXPECT_EQ(why, "cpu: requested with --backend=cpu");
}

TEST(ComputeBackendTest, AutoExplainsItsChoice) {
  std::string why;
  auto backend = MakeComputeBackend("auto", 2, &why);
  ASSERT_TRUE(backend.ok()) << backend.status();
  // The reason starts with the backend chosen, then says why.
  EXPECT_EQ(why.rfind(absl::StrCat((*backend)->name(), ": "), 0), 0u) << why;
}

TEST(ComputeBackendTest, UnknownKindIsRejected) {
  std::string why;
  auto backend = MakeComputeBackend("tpu", 0, &why);
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << backend.status();
}

// Every output mode, random data with 10% empty partitions: the CUDA backend
// writes every byte and agrees with the CPU backend to one FP8 code step.
TEST(ComputeBackendTest, CudaMatchesCpuWithinOneCodeStep) {
  std::string why;
  auto cuda = MakeComputeBackend("cuda", 0, &why);
  if (!cuda.ok()) GTEST_SKIP() << "no CUDA backend here: " << cuda.status();
  auto cpu = MakeComputeBackend("cpu", 0, &why);
  ASSERT_TRUE(cpu.ok());

  // Growing then shrinking shapes also exercise the backend's buffer reuse.
  struct Shape {
    int n;
    int64_t t;
    int h, d;
  };
  const Shape shapes[] = {{4, 64, 16, 512}, {2, 1, 128, 128}, {8, 256, 8, 128}, {3, 17, 4, 256}};
  const OutputMode modes[] = {OutputMode::kFp8PerTensor, OutputMode::kFp8PerToken,
                              OutputMode::kFp8PerGroup, OutputMode::kPassthrough};
  int64_t codes = 0, off_by_one = 0;
  uint64_t seed = 0;
  for (const Shape& s : shapes) {
    std::vector<PartData> parts;
    for (int r = 0; r < s.n; ++r) parts.push_back(MakePart(++seed, 1, r, s.t, s.h, s.d));
    for (OutputMode mode : modes) {
      SCOPED_TRACE(absl::StrCat("N=", s.n, " T=", s.t, " H=", s.h, " D=", s.d,
                                " mode=", OutputModeName(mode), " seed=", seed));
      const Outputs g = MergeWith(**cuda, parts, s.t, s.h, s.d, mode, 0.0125f);
      const Outputs c = MergeWith(**cpu, parts, s.t, s.h, s.d, mode, 0.0125f);
      ASSERT_TRUE(g.status.ok()) << g.status;
      ASSERT_TRUE(c.status.ok()) << c.status;
      ASSERT_EQ(g.out.size(), c.out.size());
      if (mode == OutputMode::kPassthrough) {
        for (size_t i = 0; i < g.out.size(); i += 2) {
          uint16_t gb, cb;
          memcpy(&gb, &g.out[i], 2);
          memcpy(&cb, &c.out[i], 2);
          const float gv = BFloat16BitsToFloat(gb), cv = BFloat16BitsToFloat(cb);
          ASSERT_NEAR(gv, cv, 1e-2f * (1.0f + std::fabs(cv))) << "element " << i / 2;
        }
      } else {
        for (size_t i = 0; i < g.out.size(); ++i) {
          ++codes;
          if (g.out[i] == c.out[i]) continue;
          ASSERT_FALSE(IsNanCode(g.out[i]) || IsNanCode(c.out[i])) << "code " << i;
          ASSERT_LE(std::abs(CodeOrdinal(g.out[i]) - CodeOrdinal(c.out[i])), 1)
              << "code " << i << " gpu=" << int{g.out[i]} << " cpu=" << int{c.out[i]};
          ++off_by_one;
        }
      }
      for (size_t i = 0; i < g.scales.size(); ++i) {
        ASSERT_NEAR(g.scales[i], c.scales[i], 2e-6f * std::fabs(c.scales[i])) << "scale " << i;
      }
      for (size_t i = 0; i < g.lse.size(); ++i) {
        if (std::isinf(c.lse[i])) {
          ASSERT_EQ(g.lse[i], c.lse[i]) << "lse " << i;
        } else {
          ASSERT_NEAR(g.lse[i], c.lse[i], 2e-5f * (1.0f + std::fabs(c.lse[i]))) << "lse " << i;
        }
      }
    }
  }
  std::printf("CUDA backend vs CPU: %lld FP8 codes, %lld one step off (%.2e)\n",
              static_cast<long long>(codes), static_cast<long long>(off_by_one),
              codes ? static_cast<double>(off_by_one) / codes : 0.0);
}

// Invalid arguments come back as the contract's INVALID_ARGUMENT from either
// backend, never a crash.
TEST(ComputeBackendTest, InvalidArgumentsAreRejectedByEveryBackend) {
  for (const char* kind : {"cpu", "cuda"}) {
    std::string why;
    auto backend = MakeComputeBackend(kind, 0, &why);
    if (!backend.ok()) continue;  // no GPU here
    SCOPED_TRACE(kind);
    std::vector<PartData> parts = {MakePart(1, 1, 0, 4, 2, 128), MakePart(1, 1, 1, 4, 2, 128)};
    Outputs o = MergeWith(**backend, parts, 4, 2, 128, OutputMode::kFp8PerTensor, -1.0f);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument) << o.status;
    EXPECT_NE(o.status.message().find("static_scale"), std::string::npos) << o.status;
  }
}

}  // namespace
}  // namespace dcpmerge
