// The server's compute backends: the choice at start-up, and the CUDA
// backend (host buffers staged through the GPU) against the CPU reference.
// The CUDA cases skip, with the reason, where no GPU is usable.
#include "server/compute_backend.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
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

// The arguments of a merge of `parts` into `o`'s buffers (poisoned first).
MergeArgs ArgsFor(const std::vector<PartData>& parts, int64_t T, int H, int D, OutputMode mode,
                  const float* scale, Outputs* o) {
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
  a.static_scale = scale;
  o->out.assign(OutputBytes(a.shape, a.config), 0xA5);  // poison
  a.out = {o->out.data(), o->out.size()};
  o->scales.assign(std::max<int64_t>(OutputScaleCount(a.shape, a.config), 1), -1.0f);
  if (mode != OutputMode::kFp8PerTensor && mode != OutputMode::kPassthrough) {
    a.out_scales = {o->scales.data(), o->scales.size() * sizeof(float)};
  }
  o->lse.assign(T * H, 12345.0f);
  a.out_lse = {o->lse.data(), o->lse.size() * sizeof(float)};
  return a;
}

Outputs MergeWith(ComputeBackend& backend, const std::vector<PartData>& parts, int64_t T, int H,
            int D, OutputMode mode, float scale) {
  Outputs o;
  o.status = backend.Merge(ArgsFor(parts, T, H, D, mode, &scale, &o));
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

  // Growing then shrinking shapes also exercise the backend's buffer reuse;
  // T = 0 is a valid empty step.
  struct Shape {
    int n;
    int64_t t;
    int h, d;
  };
  const Shape shapes[] = {{4, 64, 16, 512}, {2, 1, 128, 128}, {8, 256, 8, 128}, {3, 17, 4, 256}, {2, 0, 16, 128}};
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

// Issue 20: the gRPC plane's path. Two steps open at once, their parts
// staged from one thread per rank in reverse rank order, after a step that
// was given up half staged (its buffers are reused): both merge to the same
// bytes as Merge() of the same parts, and the device times are measured.
TEST(ComputeBackendTest, CudaStagesPartsAsTheyArriveFromManyThreads) {
  std::string why;
  auto made = MakeComputeBackend("cuda", 0, &why);
  if (!made.ok()) GTEST_SKIP() << "no CUDA backend here: " << made.status();
  ComputeBackend& cuda = **made;
  constexpr int kN = 4;
  constexpr int64_t kT = 64;
  constexpr int kH = 16, kD = 512;
  const float scale = 0.0125f;
  std::vector<PartData> steps[2];
  for (int s = 0; s < 2; ++s) {
    for (int r = 0; r < kN; ++r) steps[s].push_back(MakePart(40 + s, 1, r, kT, kH, kD));
  }
  const size_t out_bytes = steps[0][0].out.size(), lse_bytes = steps[0][0].lse.size() * sizeof(float);
  {
    auto abandoned = cuda.BeginStep(kN, out_bytes, lse_bytes);
    ASSERT_TRUE(abandoned.ok()) << abandoned.status();
    ASSERT_TRUE(cuda.StagePart(abandoned->get(), 2, steps[1][0].out.data(), steps[1][0].lse.data()).ok());
  }
  std::unique_ptr<ComputeBackend::Staging> staging[2];
  for (int s = 0; s < 2; ++s) {
    auto b = cuda.BeginStep(kN, out_bytes, lse_bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    staging[s] = std::move(*b);
  }
  std::vector<std::thread> ranks;
  std::atomic<int> failures{0};
  for (int r = kN - 1; r >= 0; --r) {
    ranks.emplace_back([&, r] {
      for (int s = 0; s < 2; ++s) {
        failures += !cuda.StagePart(staging[s].get(), r, steps[s][r].out.data(), steps[s][r].lse.data()).ok();
      }
    });
  }
  for (auto& t : ranks) t.join();
  ASSERT_EQ(failures.load(), 0);
  for (int s = 1; s >= 0; --s) {
    SCOPED_TRACE(absl::StrCat("step ", s));
    Outputs staged;
    ComputeBackend::DeviceTimes times;
    staged.status = cuda.MergeStaged(ArgsFor(steps[s], kT, kH, kD, OutputMode::kFp8PerTensor, &scale, &staged),
                                     staging[s].get(), &times);
    ASSERT_TRUE(staged.status.ok()) << staged.status;
    const Outputs whole = MergeWith(cuda, steps[s], kT, kH, kD, OutputMode::kFp8PerTensor, scale);
    ASSERT_TRUE(whole.status.ok()) << whole.status;
    EXPECT_EQ(staged.out, whole.out);
    EXPECT_EQ(staged.lse, whole.lse);
    EXPECT_TRUE(times.measured);
    EXPECT_GT(times.last_copy_in, absl::ZeroDuration());
    EXPECT_GT(times.kernel, absl::ZeroDuration());
    EXPECT_GT(times.copy_out, absl::ZeroDuration());
    std::printf("staged step %d: H2D last part %.1f us, kernel %.1f us, D2H %.1f us\n", s,
                absl::ToDoubleMicroseconds(times.last_copy_in), absl::ToDoubleMicroseconds(times.kernel),
                absl::ToDoubleMicroseconds(times.copy_out));
  }
}

}  // namespace
}  // namespace dcpmerge
