// Benchmark: the fused N-way merge + FP8 (the service's launch, MergeOnGpu's
// defaults) next to its baselines and the hardware limits, in one run.
//
//   merge_bench [--quick] [--sweep] [--csv FILE]
//
// Baselines, per shape (bf16 grid: N = 2, 4, 8, 16; T = 1, 8, 64, 256,
// 1024, 8192; H x D = 16x512, 32x128, 128x128; plus fp16 and fp32 shapes):
//   simple    the plain single-pass fused kernel a user would write
//             (bench/simple_baseline.cuh), per tensor and per group, with
//             32-bit indices wherever T*H*D < 2^32 (every shape of the
//             grid), as vLLM's merge_attn_states; the targets are against
//             this one
//   simple64  the same per-tensor kernel with int64 indices (the previous
//             rounds' baseline), for reference
// and, to measure the launcher's choices: fused64, the fused kernel with
// 64-bit indices; token_k1 (CSV only), per token with one item per thread;
// split4 (CSV only, N > 8), four parts per thread at every grid size.
//   unfused   N-1 two-way merges in the input dtype, then quantization
//             (bench/unfused_baseline.cuh)
//   copy      a copy kernel (16-byte words, four in flight per thread) of
//             traffic/2 bytes (read + write = traffic) into rotating
//             buffers, so reads and writes reach HBM like the merge's
//   read      a streaming read of the inputs only: a floor for any kernel
//             that reads them once
//   empty     an empty kernel in the same kind of graph
// traffic = N payloads + N LSEs + FP8 out (the bytes the merge must move);
// peak = the faster of cudaMemcpyAsync and the copy kernel on 1 GiB (read +
// write bytes / time), measured first after 0.2 s of warm-up copies.
//
// Method. Inputs are hash-random on the device (~1% empty partitions,
// LSE -inf). Every shape is checked before timing: fused per tensor, per
// group and per token against the CPU reference (MergeOnCpu) where the
// inputs are <= 64 M elements, with outputs poisoned (0xFF) first; the
// simple kernels against the fused ones at every shape. Every timing is a
// CUDA graph of L launches (about 2 ms of work), replayed twice to warm
// up, then R times; cudaEvents around a replay give the per-launch time,
// the median of R is reported.
//   L2-cold: launches rotate over input sets totalling >= 3x the L2
//            (identical copies of one set), so inputs come from HBM;
//   L2-warm: one input set, as when the partials were just written by the
//            attention kernel or received over NCCL (shapes whose inputs
//            fit in half the L2; "-" otherwise).
// "fused" is the service's launch (MergeOnGpu's defaults: no programmatic
// dependent launch); "pdl" the same kernel with PDL, back to back. With
// --sweep the bench
// times the launch options instead (part groups x CTA size, and clusters
// per token) on the decode shapes, for tuning the launcher.
// A SUMMARY closes the run: each target of the kernel issue, met count.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "bench/bench_check.h"
#include "bench/simple_baseline.cuh"
#include "bench/unfused_baseline.cuh"
#include "kernels/cuda/merge_kernel_launch.h"

namespace dcpmerge {
namespace bench {
namespace {

#define CK(expr)                                                          \
  do {                                                                    \
    const cudaError_t e_ = (expr);                                        \
    if (e_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,   \
                   cudaGetErrorString(e_));                               \
      std::exit(1);                                                       \
    }                                                                     \
  } while (0)

using cuda::kKernelBF16;
using cuda::kKernelF16;
using cuda::kKernelF32;

__global__ void EmptyKernel() {}

// Reads n 16-byte words, four loads in flight per thread per iteration;
// writes only if the xor of everything hits one value (never, in practice)
// so the loads are not optimised away.
__global__ void ReadKernel(const uint4* __restrict__ p, int64_t n, uint32_t* sink) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint32_t x = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = i + u * stride < n ? __ldg(p + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (x == 0x9E3779B9u) sink[threadIdx.x] = x;
}

// Copies n 16-byte words, four in flight per thread per iteration.
__global__ void CopyKernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (i + u * stride < n) v[u] = __ldg(src + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (i + u * stride < n) dst[i + u * stride] = v[u];
  }
}

// The producer in the PDL measurement: rewrites part 0's LSE of the next
// merge's input set (same values), as an attention kernel writes the
// partials the merge then reads. kTrigger: it lets its dependents launch
// as it starts (a PDL-aware producer); else it never does.
template <bool kTrigger>
__global__ void ProducerKernel(const float* __restrict__ src, float* __restrict__ dst,
                               int64_t n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kTrigger) asm volatile("griddepcontrol.launch_dependents;");
#endif
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

__device__ __forceinline__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

template <typename T>
__global__ void FillPayload(T* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = (Hash(seed * 0x9E3779B97F4A7C15ull + i) >> 8) * (1.0f / 16777216.0f);
    const float v = 4.0f * u - 2.0f;
    if constexpr (std::is_same<T, float>::value) {
      p[i] = v;
    } else if constexpr (std::is_same<T, __half>::value) {
      p[i] = __float2half_rn(v);
    } else {
      p[i] = __float2bfloat16_rn(v);
    }
  }
}

__global__ void FillLse(float* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = Hash(seed * 0x632BE59BD9B4E019ull + i);
    const float u = (h >> 8) * (1.0f / 16777216.0f);
    p[i] = (h & 0xFF) < 3 ? -INFINITY : 6.0f * u - 3.0f;
  }
}

// Calls f(T{}) with the element type of dtype.
template <typename F>
void WithDType(int dtype, F&& f) {
  if (dtype == kKernelF32) f(float{});
  else if (dtype == kKernelF16) f(__half{});
  else f(__nv_bfloat16{});
}

const char* DtName(int dt) {
  return dt == kKernelF32 ? "fp32" : dt == kKernelF16 ? "fp16" : "bf16";
}
size_t DtSize(int dt) { return dt == kKernelF32 ? 4 : 2; }

struct Options {
  bool quick = false, sweep = false;
  std::string csv;
};

struct Shape {
  int dtype;
  int n;
  int64_t t;
  int h, d;
};

// Per-launch seconds; NaN where not measured.
struct Times {
  double fused = NAN, fused64 = NAN, pdl = NAN, simple = NAN, simple64 = NAN, group = NAN,
         simple_group = NAN, token = NAN, token_k1 = NAN, split4 = NAN;
};

struct Result {
  Shape s;
  double traffic = 0;
  Times cold, warm;
  double unfused = NAN, copy = NAN, read = NAN, empty = NAN;
  // Decode shapes: producer alone, producer -> merge without PDL, with PDL
  // (producer not triggering), with PDL (producer triggering).
  double prod = NAN, prod_merge = NAN, prod_merge_pdl = NAN, prod_merge_trig = NAN;
  // Checks: codes more than one step off (-1: not checked).
  long long far_tensor = -1, far_group = -1, far_token = -1, scale_diff = -1;
  long long simple_far = 0, simple_group_far = 0;
  long long one_step = 0, compared = 0;
};

double g_l2 = 50e6;
int g_sms = 132;

// Times `launch(k)` for k = 0..L-1 captured into one graph; returns the
// median per-launch seconds over `reps` replays.
double TimeGraph(cudaStream_t st, int launches, int reps, const std::function<void(int)>& launch) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int k = 0; k < launches; ++k) launch(k);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int w = 0; w < 2; ++w) CK(cudaGraphLaunch(ge, st));
  std::vector<float> ms(reps);
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    CK(cudaEventElapsedTime(&ms[r], a, b));
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  return ms[reps / 2] * 1e-3 / launches;
}

// The device buffers of one shape: `sets` identical input sets, outputs.
struct Buffers {
  Shape s;
  size_t pay = 0, lse = 0, set_bytes = 0;
  int64_t rows = 0, elems = 0, group_scales = 0;
  int sets = 1;
  char* arena = nullptr;
  uint8_t* out = nullptr;
  uint8_t* out2 = nullptr;
  float* scales = nullptr;
  float* scales2 = nullptr;
  float* scale = nullptr;
  float* lse_copy = nullptr;  // pristine part-0 LSE for the producer
  float h_scale = 0.02f;

  char* Part(int set, int i) const { return arena + set * set_bytes + i * (pay + lse); }
  const float* Lse(int set, int i) const {
    return reinterpret_cast<const float*>(Part(set, i) + pay);
  }

  cuda::MergeKernelParams Params(int set, int mode) const {
    cuda::MergeKernelParams k;
    for (int i = 0; i < s.n; ++i) {
      k.part_out[i] = Part(set, i);
      k.part_lse[i] = Lse(set, i);
    }
    cuda::MergeProblem& p = k.problem;
    p.out = out;
    p.out_scales = mode == cuda::kModeFp8PerTensor ? nullptr : scales;
    p.static_scale = scale;
    p.num_tokens = s.t;
    p.num_heads = s.h;
    p.head_size = s.d;
    p.num_parts = s.n;
    p.token_stride = int64_t{s.h} * s.d;
    p.head_stride = s.d;
    p.lse_tokens_heads = 0;
    p.lse_to_log2 = 1.4426950408889634f;
    p.log2_to_lse = 0.6931471805599453f;
    p.group_size = 128;
    return k;
  }

  SimpleParams Simple(int set) const {
    SimpleParams p = {};
    for (int i = 0; i < s.n; ++i) {
      p.out[i] = Part(set, i);
      p.lse[i] = Lse(set, i);
    }
    p.codes = out2;
    p.scales = scales2;
    p.scale = scale;
    p.num_tokens = s.t;
    p.num_heads = s.h;
    p.head_size = s.d;
    return p;
  }
};

Buffers Allocate(const Shape& s, cudaStream_t st) {
  Buffers b;
  b.s = s;
  const size_t esz = DtSize(s.dtype);
  b.rows = s.t * s.h;
  b.elems = b.rows * s.d;
  b.group_scales = b.elems / 128;
  b.pay = ((b.elems * esz + 255) / 256) * 256;
  b.lse = ((b.rows * 4 + 255) / 256) * 256;
  b.set_bytes = s.n * (b.pay + b.lse);
  const double want = 3 * g_l2;
  b.sets = static_cast<int>(std::min(4096.0, std::ceil(want / b.set_bytes)));
  b.sets = std::max(b.sets, 1);
  CK(cudaMalloc(&b.arena, b.set_bytes * b.sets));
  for (int i = 0; i < s.n; ++i) {
    const uint64_t seed = 1000 + i;
    WithDType(s.dtype, [&](auto tag) {
      using T = decltype(tag);
      FillPayload<<<1024, 256, 0, st>>>(reinterpret_cast<T*>(b.Part(0, i)), b.elems, seed);
    });
    FillLse<<<256, 256, 0, st>>>(reinterpret_cast<float*>(b.Part(0, i) + b.pay), b.rows, seed);
  }
  CK(cudaGetLastError());
  for (int j = 1; j < b.sets; ++j)
    CK(cudaMemcpyAsync(b.arena + j * b.set_bytes, b.arena, b.set_bytes,
                       cudaMemcpyDeviceToDevice, st));
  CK(cudaMalloc(&b.out, b.elems + 256));
  CK(cudaMalloc(&b.out2, b.elems + 256));
  const size_t nsc = std::max<int64_t>(b.group_scales, s.t) + 64;
  CK(cudaMalloc(&b.scales, nsc * 4));
  CK(cudaMalloc(&b.scales2, nsc * 4));
  CK(cudaMalloc(&b.scale, 4));
  CK(cudaMalloc(&b.lse_copy, b.rows * 4));
  CK(cudaMemcpyAsync(b.lse_copy, b.Lse(0, 0), b.rows * 4, cudaMemcpyDeviceToDevice, st));
  CK(cudaMemcpyAsync(b.scale, &b.h_scale, 4, cudaMemcpyHostToDevice, st));
  CK(cudaStreamSynchronize(st));
  return b;
}

void Free(Buffers& b) {
  CK(cudaFree(b.arena));
  CK(cudaFree(b.out));
  CK(cudaFree(b.out2));
  CK(cudaFree(b.scales));
  CK(cudaFree(b.scales2));
  CK(cudaFree(b.scale));
  CK(cudaFree(b.lse_copy));
}

cuda::MergeLaunchOptions WithPdl(int pdl) {
  cuda::MergeLaunchOptions o;
  o.pdl = pdl;
  return o;
}

cuda::MergeLaunchOptions OneTokenItem() {
  cuda::MergeLaunchOptions o;
  o.token_items_per_thread = 1;
  return o;
}

// N > 8: four parts per thread whatever the grid (the previous schedule).
cuda::MergeLaunchOptions Split4(int n) {
  cuda::MergeLaunchOptions o;
  o.part_groups = (n + 3) / 4;
  return o;
}

cuda::MergeLaunchOptions Wide() {
  cuda::MergeLaunchOptions o;
  o.wide_index = 1;
  return o;
}

void LaunchFused(const Buffers& b, int set, int mode, cudaStream_t st,
                 const cuda::MergeLaunchOptions& o = {}) {
  CK(cuda::LaunchMergeKernel(b.Params(set, mode), b.s.dtype, mode, st, o));
}

// The simple kernel with 32-bit indices where the problem fits them, or
// with int64 indices (wide).
void LaunchSimple(const Buffers& b, int set, bool per_group, cudaStream_t st,
                  bool wide = false) {
  const SimpleParams p = b.Simple(set);
  wide = wide || !SimpleFits32(p);
  WithDType(b.s.dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t err;
    if (wide) {
      err = per_group ? LaunchSimpleMerge<T, true, int64_t>(p, b.s.n, st)
                      : LaunchSimpleMerge<T, false, int64_t>(p, b.s.n, st);
    } else {
      err = per_group ? LaunchSimpleMerge<T, true, uint32_t>(p, b.s.n, st)
                      : LaunchSimpleMerge<T, false, uint32_t>(p, b.s.n, st);
    }
    CK(err);
  });
}

template <typename V>
std::vector<V> ToHost(const V* p, size_t n) {
  std::vector<V> h(n);
  CK(cudaMemcpy(h.data(), p, n * sizeof(V), cudaMemcpyDeviceToHost));
  return h;
}

// Correctness first: fused vs CPU (small shapes), simple vs fused (all).
void Check(const Buffers& b, cudaStream_t st, Result* r) {
  const Shape& s = b.s;
  const bool cpu = static_cast<int64_t>(s.n) * b.elems <= (int64_t{64} << 20);
  std::vector<std::vector<char>> hp(s.n);
  std::vector<std::vector<float>> hl(s.n);
  std::vector<const void*> pp(s.n);
  std::vector<const float*> pl(s.n);
  if (cpu) {
    for (int i = 0; i < s.n; ++i) {
      hp[i] = ToHost(b.Part(0, i), b.elems * DtSize(s.dtype));
      hl[i] = ToHost(b.Lse(0, i), b.rows);
      pp[i] = hp[i].data();
      pl[i] = hl[i].data();
    }
  }
  for (int mode : {cuda::kModeFp8PerTensor, cuda::kModeFp8PerGroup, cuda::kModeFp8PerToken}) {
    CK(cudaMemsetAsync(b.out, 0xFF, b.elems, st));  // 0xFF: a NaN no merge writes
    CK(cudaMemsetAsync(b.out2, 0xFF, b.elems, st));
    LaunchFused(b, 0, mode, st);
    if (mode != cuda::kModeFp8PerToken) LaunchSimple(b, 0, mode == cuda::kModeFp8PerGroup, st);
    CK(cudaStreamSynchronize(st));
    const std::vector<uint8_t> got = ToHost(b.out, b.elems);
    const int64_t nsc = mode == cuda::kModeFp8PerGroup ? b.group_scales
                        : mode == cuda::kModeFp8PerToken ? s.t : 0;
    const std::vector<float> sc = ToHost(b.scales, nsc);
    if (mode != cuda::kModeFp8PerToken) {
      const std::vector<uint8_t> simple = ToHost(b.out2, b.elems);
      long long far = 0;
      for (int64_t e = 0; e < b.elems; ++e) far += !WithinOneStep(got[e], simple[e]);
      (mode == cuda::kModeFp8PerGroup ? r->simple_group_far : r->simple_far) = far;
    }
    if (!cpu) continue;
    const CheckResult c = CheckFp8(s.dtype, mode, s.n, s.t, s.h, s.d, pp.data(), pl.data(),
                                   b.h_scale, got.data(), sc.data());
    const long long far = c.ok ? c.far : -2;
    (mode == cuda::kModeFp8PerTensor ? r->far_tensor
     : mode == cuda::kModeFp8PerGroup ? r->far_group : r->far_token) = far;
    r->scale_diff = std::max(r->scale_diff, 0LL) + c.scale_diff;
    r->one_step += c.one_step;
    r->compared += c.compared;
  }
}

Result RunShape(const Shape& s, const Options& o, cudaStream_t st) {
  Result r;
  r.s = s;
  r.traffic = static_cast<double>(s.n) * (s.t * s.h * s.d * DtSize(s.dtype) + s.t * s.h * 4) +
              s.t * s.h * s.d;
  Buffers b = Allocate(s, st);
  Check(b, st, &r);
  // Launches per graph: ~2 ms of work, at least 3, at most 1024.
  const double est = r.traffic / 3e12 + 3e-6;
  const int launches = static_cast<int>(std::min(1024.0, std::max(3.0, 2e-3 / est)));
  const int reps = o.quick ? 7 : 25;
  const int sets = b.sets;
  auto time = [&](const std::function<void(int)>& f) { return TimeGraph(st, launches, reps, f); };

  // L2-cold and (where the inputs fit in half the L2) L2-warm.
  for (int warm = 0; warm < 2; ++warm) {
    if (warm && b.set_bytes > g_l2 / 2) break;
    Times& tm = warm ? r.warm : r.cold;
    const int nsets = warm ? 1 : sets;
    tm.fused = time([&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerTensor, st); });
    tm.fused64 = time(
        [&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerTensor, st, Wide()); });
    tm.pdl = time(
        [&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerTensor, st, WithPdl(1)); });
    tm.simple = time([&](int k) { LaunchSimple(b, k % nsets, false, st); });
    tm.simple64 = time([&](int k) { LaunchSimple(b, k % nsets, false, st, true); });
    tm.group = time([&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerGroup, st); });
    tm.simple_group = time([&](int k) { LaunchSimple(b, k % nsets, true, st); });
    tm.token = time([&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerToken, st); });
    if (s.n > 8)
      tm.split4 = time([&](int k) {
        LaunchFused(b, k % nsets, cuda::kModeFp8PerTensor, st, Split4(s.n));
      });
    tm.token_k1 = time(
        [&](int k) { LaunchFused(b, k % nsets, cuda::kModeFp8PerToken, st, OneTokenItem()); });
  }

  // Unfused: N-1 two-way merges (ping-pong scratch), then quantization.
  {
    char* scratch = nullptr;
    CK(cudaMalloc(&scratch, 2 * (b.pay + b.lse)));
    const int64_t items = b.elems / (16 / DtSize(s.dtype));
    const unsigned blocks = static_cast<unsigned>((items + 255) / 256);
    const int ulaunches = std::max(3, launches / std::max(1, s.n));
    r.unfused = TimeGraph(st, ulaunches, reps, [&](int k) {
      WithDType(s.dtype, [&](auto tag) {
        using T = decltype(tag);
        const char* acc = b.Part(k % sets, 0);
        for (int i = 1; i < s.n; ++i) {
          char* dst = scratch + (i & 1) * (b.pay + b.lse);
          const char* part = b.Part(k % sets, i);
          Merge2Kernel<T><<<blocks, 256, 0, st>>>(
              reinterpret_cast<const T*>(acc), reinterpret_cast<const float*>(acc + b.pay),
              reinterpret_cast<const T*>(part), reinterpret_cast<const float*>(part + b.pay),
              reinterpret_cast<T*>(dst), reinterpret_cast<float*>(dst + b.pay), s.t, s.h, s.d);
          acc = dst;
        }
        QuantKernel<T><<<blocks, 256, 0, st>>>(reinterpret_cast<const T*>(acc), b.scale, b.out,
                                               items);
      });
      CK(cudaGetLastError());
    });
    CK(cudaFree(scratch));
  }

  // Copy of the same traffic (read + write = traffic) from the input sets
  // into the other input sets (rotating; the sets hold identical bytes).
  {
    const int64_t words = static_cast<int64_t>(r.traffic / 2) / 16;
    char* spare = nullptr;
    if (sets < 2) CK(cudaMalloc(&spare, words * 16));
    const unsigned blocks = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>(8 * g_sms, (words + 255) / 256)));
    r.copy = time([&](int k) {
      const char* src = b.arena + (k % sets) * b.set_bytes;
      char* dst = sets >= 2 ? b.arena + ((k + sets / 2) % sets) * b.set_bytes : spare;
      CopyKernel<<<blocks, 256, 0, st>>>(reinterpret_cast<const uint4*>(src),
                                         reinterpret_cast<uint4*>(dst), words);
    });
    if (spare) CK(cudaFree(spare));
  }
  {
    uint32_t* sink = nullptr;
    CK(cudaMalloc(&sink, 1024 * 4));
    const int64_t words = static_cast<int64_t>(b.set_bytes / 16);
    const unsigned blocks = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>(8 * g_sms, (words + 255) / 256)));
    r.read = time([&](int k) {
      ReadKernel<<<blocks, 256, 0, st>>>(
          reinterpret_cast<const uint4*>(b.arena + (k % sets) * b.set_bytes), words, sink);
    });
    CK(cudaFree(sink));
  }
  r.empty = time([&](int) { EmptyKernel<<<1, 32, 0, st>>>(); });

  // Decode shapes: producer -> merge, with and without PDL.
  if (s.t <= 64) {
    auto produce = [&](int set, bool trigger) {
      float* dst = const_cast<float*>(b.Lse(set, 0));
      if (trigger)
        ProducerKernel<true><<<g_sms, 256, 0, st>>>(b.lse_copy, dst, b.rows);
      else
        ProducerKernel<false><<<g_sms, 256, 0, st>>>(b.lse_copy, dst, b.rows);
    };
    const cuda::MergeLaunchOptions pdl = WithPdl(1);
    r.prod = time([&](int k) { produce(k % sets, false); });
    r.prod_merge = time([&](int k) {
      produce(k % sets, false);
      LaunchFused(b, k % sets, cuda::kModeFp8PerTensor, st);
    });
    r.prod_merge_pdl = time([&](int k) {
      produce(k % sets, false);
      LaunchFused(b, k % sets, cuda::kModeFp8PerTensor, st, pdl);
    });
    r.prod_merge_trig = time([&](int k) {
      produce(k % sets, true);
      LaunchFused(b, k % sets, cuda::kModeFp8PerTensor, st, pdl);
    });
  }
  Free(b);
  return r;
}

// --sweep: launch options on decode and mid shapes.
void Sweep(const std::vector<Shape>& grid, cudaStream_t st) {
  std::printf("# sweep: per-launch us, L2-cold, PDL off; rows: per tensor with P part groups x "
              "CTA threads; per token with C CTAs per token\n");
  std::printf("%-5s %3s %5s %4s %4s |", "dtype", "N", "T", "H", "D");
  const int pgs[] = {1, 2, 4, 8, 16};
  const int thr[] = {128, 256};
  for (int pg : pgs)
    for (int t : thr) std::printf(" P%-2d/%3d", pg, t);
  std::printf(" | auto    |");
  const int cs[] = {1, 2, 4, 8, 16};
  for (int c : cs) std::printf(" tokC%-2d ", c);
  std::printf(" tokauto\n");
  for (const Shape& s : grid) {
    if (s.t > 1024 || s.dtype != kKernelBF16 || s.n < 4) continue;
    Buffers b = Allocate(s, st);
    const int sets = b.sets;
    const int launches = s.t >= 1024 ? 64 : 256;
    std::printf("%-5s %3d %5lld %4d %4d |", DtName(s.dtype), s.n, static_cast<long long>(s.t),
                s.h, s.d);
    for (int pg : pgs) {
      for (int t : thr) {
        cuda::MergeLaunchOptions o = WithPdl(0);
        o.part_groups = pg;
        o.threads_per_cta = t;
        const double us = 1e6 * TimeGraph(st, launches, 9, [&](int k) {
          LaunchFused(b, k % sets, cuda::kModeFp8PerTensor, st, o);
        });
        std::printf(" %7.2f", us);
      }
    }
    std::printf(" | %7.2f |", 1e6 * TimeGraph(st, launches, 9, [&](int k) {
                  LaunchFused(b, k % sets, cuda::kModeFp8PerTensor, st, WithPdl(0));
                }));
    for (int c : cs) {
      if (s.t > 64) {
        std::printf(" %7s", "-");
        continue;
      }
      cuda::MergeLaunchOptions o = WithPdl(0);
      o.ctas_per_token = c;
      std::printf(" %7.2f", 1e6 * TimeGraph(st, launches, 9, [&](int k) {
                    LaunchFused(b, k % sets, cuda::kModeFp8PerToken, st, o);
                  }));
    }
    std::printf(" %7.2f\n", 1e6 * TimeGraph(st, launches, 9, [&](int k) {
                  LaunchFused(b, k % sets, cuda::kModeFp8PerToken, st, WithPdl(0));
                }));
    std::fflush(stdout);
    Free(b);
  }
}

std::vector<Shape> Grid(const Options& o) {
  std::vector<Shape> g;
  const std::vector<int64_t> tokens =
      o.quick ? std::vector<int64_t>{1, 64, 8192} : std::vector<int64_t>{1, 8, 64, 256, 1024, 8192};
  const std::vector<int> parts = o.quick ? std::vector<int>{2, 16} : std::vector<int>{2, 4, 8, 16};
  const int hd[][2] = {{16, 512}, {32, 128}, {128, 128}};
  for (int n : parts)
    for (const auto& x : hd)
      for (int64_t t : tokens) g.push_back({kKernelBF16, n, t, x[0], x[1]});
  for (int dt : {kKernelF16, kKernelF32})
    for (int n : {2, 8})
      for (int64_t t : {int64_t{1}, int64_t{64}, int64_t{1024}}) g.push_back({dt, n, t, 32, 128});
  return g;
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// "met/total, median x, worst x (shape)" for a ratio over results.
void RatioLine(const char* what, const std::vector<Result>& all, double goal,
               const std::function<bool(const Result&)>& include,
               const std::function<double(const Result&)>& ratio) {
  std::vector<double> v;
  int met = 0;
  double worst = -1;
  const Result* wr = nullptr;
  for (const Result& r : all) {
    if (!include(r)) continue;
    const double x = ratio(r);
    if (std::isnan(x)) continue;
    v.push_back(x);
    met += x <= goal;
    if (x > worst) worst = x, wr = &r;
  }
  if (v.empty()) return;
  std::printf("%s (<= %.2f): %d/%zu met; median %.3f, worst %.3f (%s N=%d T=%lld H=%d D=%d)\n",
              what, goal, met, v.size(), Median(v), worst, DtName(wr->s.dtype), wr->s.n,
              static_cast<long long>(wr->s.t), wr->s.h, wr->s.d);
}

void PrintRow(FILE* f, const Result& r, bool csv) {
  const Shape& s = r.s;
  const double u = 1e6;
  const double v[] = {r.cold.fused,        r.cold.pdl,   r.cold.simple, r.cold.group,
                      r.cold.simple_group, r.cold.token, r.warm.fused,  r.warm.pdl,
                      r.warm.simple,       r.warm.group, r.warm.simple_group, r.warm.token,
                      r.unfused,           r.copy,       r.read,        r.empty,
                      r.prod,              r.prod_merge, r.prod_merge_pdl, r.prod_merge_trig,
                      r.cold.simple64,     r.warm.simple64, r.cold.fused64, r.warm.fused64,
                      r.cold.token_k1,     r.warm.token_k1, r.cold.split4, r.warm.split4};
  if (csv) {
    std::fprintf(f, "%s,%d,%lld,%d,%d,%.0f", DtName(s.dtype), s.n, static_cast<long long>(s.t),
                 s.h, s.d, r.traffic);
    for (double x : v) std::fprintf(f, ",%.3f", x * u);
    std::fprintf(f, ",%lld,%lld,%lld,%lld,%lld\n", r.far_tensor, r.far_group, r.far_token,
                 r.simple_far, r.simple_group_far);
    return;
  }
  std::fprintf(f,
               "%-4s %2d %5lld %3d %3d %8.2f | %7.2f %7.2f %7.2f %7.2f %5.2f %7.2f | "
               "%7.2f %7.2f %5.2f | %7.2f %7.2f %5.2f | %7.2f %7.2f %5.2f | %7.2f %5.2f | "
               "%7.2f %7.2f %7.2f %5.1f%% %5.2f | %7.2f %7.2f %7.2f %7.2f | "
               "%lld/%lld/%lld %lld/%lld\n",
               DtName(s.dtype), s.n, static_cast<long long>(s.t), s.h, s.d, r.traffic / 1e6,
               r.cold.fused * u, r.cold.fused64 * u, r.cold.pdl * u, r.cold.simple * u,
               r.cold.fused / r.cold.simple, r.cold.simple64 * u,
               r.warm.fused * u, r.warm.simple * u, r.warm.fused / r.warm.simple,
               r.cold.group * u, r.cold.simple_group * u, r.cold.group / r.cold.simple_group,
               r.warm.group * u, r.warm.simple_group * u, r.warm.group / r.warm.simple_group,
               r.cold.token * u, r.cold.token / r.cold.fused, r.copy * u, r.read * u,
               r.empty * u, 100 * r.copy / r.cold.fused, r.unfused / r.cold.fused, r.prod * u,
               r.prod_merge * u, r.prod_merge_pdl * u, r.prod_merge_trig * u, r.far_tensor,
               r.far_group, r.far_token, r.simple_far, r.simple_group_far);
}

}  // namespace
}  // namespace bench
}  // namespace dcpmerge

int main(int argc, char** argv) {
  using namespace dcpmerge::bench;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") o.quick = true;
    else if (a == "--sweep") o.sweep = true;
    else if (a == "--csv" && i + 1 < argc) o.csv = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--sweep] [--csv FILE]\n", argv[0]);
      return 2;
    }
  }
  int dev = 0;
  cudaDeviceProp prop;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&prop, dev));
  g_l2 = prop.l2CacheSize;
  g_sms = prop.multiProcessorCount;
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  // The hardware limit: a 1 GiB copy, after warm-up (clocks ramp up).
  double peak_bw = 0;
  {
    const size_t bytes = size_t{1} << 30;
    char *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    const int64_t words = static_cast<int64_t>(bytes / 16);
    auto kernel_copy = [&](int) {
      CopyKernel<<<8 * g_sms, 256, 0, st>>>(reinterpret_cast<const uint4*>(a),
                                            reinterpret_cast<uint4*>(b), words);
    };
    TimeGraph(st, 50, 3, kernel_copy);  // ~0.2 s of warm-up
    const double t_ce = TimeGraph(st, 5, 9, [&](int) {
      CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st));
    });
    const double t_kernel = TimeGraph(st, 5, 9, kernel_copy);
    peak_bw = 2.0 * bytes / std::min(t_ce, t_kernel);
    std::printf("# 1 GiB copy, read+write: cudaMemcpyAsync %.0f GB/s, copy kernel %.0f GB/s\n",
                2.0 * bytes / t_ce / 1e9, 2.0 * bytes / t_kernel / 1e9);
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  std::printf("# device: %s (sm_%d%d), %d SMs, L2 %.0f MB; D2D copy peak (1 GiB, read+write): "
              "%.0f GB/s\n",
              prop.name, prop.major, prop.minor, g_sms, g_l2 / 1e6, peak_bw / 1e9);
  const std::vector<Shape> grid = Grid(o);
  if (o.sweep) {
    Sweep(grid, st);
    return 0;
  }
  FILE* csv = o.csv.empty() ? nullptr : std::fopen(o.csv.c_str(), "w");
  if (csv)
    std::fprintf(csv,
                 "dtype,N,T,H,D,traffic_bytes,fused_us,pdl_us,simple_us,group_us,"
                 "simple_group_us,token_us,warm_fused_us,warm_pdl_us,warm_simple_us,"
                 "warm_group_us,warm_simple_group_us,warm_token_us,unfused_us,copy_us,read_us,"
                 "empty_us,producer_us,producer_merge_us,producer_merge_pdl_us,"
                 "producer_trigger_merge_pdl_us,simple64_us,warm_simple64_us,fused64_us,"
                 "warm_fused64_us,token_k1_us,warm_token_k1_us,split4_us,warm_split4_us,"
                 "far_tensor,far_group,far_token,"
                 "simple_far,"
                 "simple_group_far\n");
  std::printf("# per-launch us in CUDA graphs, L2-cold unless w_; f/s = fused / simple (< 1: "
              "fused faster; simple: 32-bit indices where T*H*D < 2^32, simpl64: int64 "
              "indices; fused64: the fused kernel with 64-bit indices); pdl = fused with PDL "
              "back to back; %%copy = copy time / fused time; unf/f = unfused / fused; decode "
              "shapes: producer (prod), producer -> merge (p+m), with PDL (p+m_pdl), with PDL "
              "and a triggering producer (p+m_trg); check = codes >1 step off vs CPU "
              "(tensor/group/token; -1: not checked) and vs simple (tensor/group)\n");
  std::printf("%-4s %2s %5s %3s %3s %8s | %7s %7s %7s %7s %5s %7s | %7s %7s %5s | %7s %7s "
              "%5s | %7s %7s %5s | %7s %5s | %7s %7s %7s %6s %5s | %7s %7s %7s %7s | %s\n",
              "dt", "N", "T", "H", "D", "MB", "fused", "fused64", "pdl", "simple", "f/s", "simpl64",
              "w_fused", "w_simpl", "f/s", "group", "s_group", "f/s", "w_group", "w_sgrp", "f/s",
              "token", "t/f", "copy", "read", "empty", "%copy", "unf/f", "prod", "p+m", "p+m_pdl",
              "p+m_trg", "check");
  std::vector<Result> all;
  for (const Shape& s : grid) {
    const Result r = RunShape(s, o, st);
    all.push_back(r);
    PrintRow(stdout, r, false);
    if (csv) PrintRow(csv, r, true);
    std::fflush(stdout);
  }
  if (csv) std::fclose(csv);

  int narrow = 0;
  for (const Result& r : all) narrow += r.s.t * r.s.h * r.s.d <= int64_t{0xFFFFFFFF};
  std::printf("\n# SUMMARY (%s, %d SMs; per-launch times in CUDA graphs; peak copy %.0f GB/s; "
              "simple kernel with 32-bit (uint32) indices at %d of %zu shapes, int64 at the "
              "rest)\n",
              prop.name, g_sms, peak_bw / 1e9, narrow, all.size());
  long long checked = 0, bad = 0, simple_bad = 0, one = 0, cmp = 0;
  for (const Result& r : all) {
    if (r.far_tensor >= 0 || r.far_tensor == -2) {
      ++checked;
      bad += r.far_tensor != 0 || r.far_group != 0 || r.far_token != 0 || r.scale_diff > 0;
    }
    simple_bad += r.simple_far != 0 || r.simple_group_far != 0;
    one += r.one_step;
    cmp += r.compared;
  }
  std::printf("correctness: %lld shapes checked vs CPU in 3 FP8 modes, %lld with a code > 1 step "
              "off or a scale off (%lld of %lld codes one step off); simple vs fused: %lld of "
              "%zu shapes with a code > 1 step apart\n",
              checked, bad, one, cmp, simple_bad, all.size());
  auto any = [](const Result&) { return true; };
  auto bf16 = [](const Result& r) { return r.s.dtype == kKernelBF16; };
  // Goal per shape 1.02, median 0.97 (the median is on each line).
  RatioLine("per tensor fused/simple, L2-cold", all, 1.02, any,
            [](const Result& r) { return r.cold.fused / r.cold.simple; });
  RatioLine("per tensor fused/simple, L2-warm", all, 1.02, any,
            [](const Result& r) { return r.warm.fused / r.warm.simple; });
  RatioLine("per tensor fused with PDL/simple, L2-cold", all, 1.02, any,
            [](const Result& r) { return r.cold.pdl / r.cold.simple; });
  RatioLine("per tensor simple int64/simple 32-bit, L2-cold (reference)", all, 1.02, any,
            [](const Result& r) { return r.cold.simple64 / r.cold.simple; });
  RatioLine("per tensor fused 64-bit/fused 32-bit, L2-cold (reference)", all, 1.02, any,
            [](const Result& r) { return r.cold.fused64 / r.cold.fused; });
  RatioLine("per tensor N>8 four parts per thread/fused, L2-cold (reference)", all, 1.02, any,
            [](const Result& r) { return r.cold.split4 / r.cold.fused; });
  RatioLine("per group fused/simple, L2-cold", all, 1.02, any,
            [](const Result& r) { return r.cold.group / r.cold.simple_group; });
  RatioLine("per group fused/simple, L2-warm", all, 1.02, any,
            [](const Result& r) { return r.warm.group / r.warm.simple_group; });
  RatioLine("large (>=256MB) per tensor fused/simple, L2-cold", all, 1.01,
            [](const Result& r) { return r.traffic >= 256e6; },
            [](const Result& r) { return r.cold.fused / r.cold.simple; });
  RatioLine("per token / per tensor (fused), L2-cold", all, 1.15, bf16,
            [](const Result& r) { return r.cold.token / r.cold.fused; });
  RatioLine("per token / per tensor (fused), L2-warm", all, 1.15, bf16,
            [](const Result& r) { return r.warm.token / r.warm.fused; });
  RatioLine("per token, one item per thread / per tensor, L2-cold (reference)", all, 1.15, bf16,
            [](const Result& r) { return r.cold.token_k1 / r.cold.fused; });
  {
    std::vector<double> ex, ex_pdl;
    int met = 0, met_pdl = 0, cnt = 0;
    for (const Result& r : all) {
      if (r.s.t > 64 || r.s.n > 16) continue;
      const double bound = r.empty + r.traffic / peak_bw + 0.8e-6;
      ++cnt;
      met += r.cold.fused <= bound;
      met_pdl += r.cold.pdl <= bound;
      ex.push_back((r.cold.fused - bound) * 1e6);
      ex_pdl.push_back((r.cold.pdl - bound) * 1e6);
    }
    if (cnt) {
      std::printf("decode (T<=64) L2-cold per launch <= empty + traffic/peak + 0.8us: %d/%d met "
                  "(with PDL: %d/%d); excess over the bound median %+.2f us, worst %+.2f us "
                  "(with PDL: median %+.2f, worst %+.2f)\n",
                  met, cnt, met_pdl, cnt, Median(ex), *std::max_element(ex.begin(), ex.end()),
                  Median(ex_pdl), *std::max_element(ex_pdl.begin(), ex_pdl.end()));
    }
  }
  RatioLine("large (>=256MB) L2-cold copy time / fused time, as 1/x", all, 1 / 0.95,
            [](const Result& r) { return r.traffic >= 256e6; },
            [](const Result& r) { return r.cold.fused / r.copy; });
  for (int n : {2, 4, 8}) {
    const double goal = n == 2 ? 1.8 : n == 4 ? 2.3 : 2.6;
    char what[96];
    std::snprintf(what, sizeof(what), "large (>=256MB) N=%d fused/unfused, as 1/speedup", n);
    RatioLine(what, all, 1 / goal,
              [n](const Result& r) { return r.s.n == n && r.traffic >= 256e6; },
              [](const Result& r) { return r.cold.fused / r.unfused; });
  }
  {
    std::vector<double> plain, trig;
    for (const Result& r : all) {
      if (std::isnan(r.prod_merge_pdl)) continue;
      plain.push_back((r.prod_merge - r.prod_merge_pdl) * 1e6);
      trig.push_back((r.prod_merge - r.prod_merge_trig) * 1e6);
    }
    if (!plain.empty())
      std::printf("PDL, producer -> merge (T<=64, %zu shapes), time saved per step: producer not "
                  "triggering median %+.2f us (min %+.2f, max %+.2f); producer triggering median "
                  "%+.2f us (min %+.2f, max %+.2f)\n",
                  plain.size(), Median(plain), *std::min_element(plain.begin(), plain.end()),
                  *std::max_element(plain.begin(), plain.end()), Median(trig),
                  *std::min_element(trig.begin(), trig.end()),
                  *std::max_element(trig.begin(), trig.end()));
  }
  return 0;
}
