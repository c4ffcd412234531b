// dcpmerge_demo: the merge service end to end on one machine.
//
// Starts a merge server in this process (rank and admin listeners on
// loopback), then N simulated DCP ranks as threads, each with its own
// RankClient and gRPC stream. Every step each rank makes a random partial
// attention output (bf16 by default; ~10% of its (token, head) partitions
// empty: LSE -inf/+inf/NaN with garbage O), the server merges and quantizes
// to FP8, and rank 0 checks the result against a float64 merge
// (decode(FP8) * scale vs exact). Half way through, the admin service
// changes the static FP8 scales (SetScales); steps report which config
// version they used. Prints a summary at the end.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/barrier.h"
#include "base/heap.h"
#include "base/log.h"
#include "base/percentile.h"
#include "base/rng.h"
#include "base/version_flag.h"
#include "client/rank_client.h"
#include "common/group_spec.h"
#include "common/join_secret.h"
#include "common/names.h"
#include "dcpmerge/v1/admin.grpc.pb.h"
#include "embed/embedded_server.h"
#include "grpcpp/create_channel.h"
#include "kernels/merge_contract.h"
#include "kernels/numeric.h"

ABSL_FLAG(int32_t, ranks, 4, "DCP ranks (simulated, one thread each)");
ABSL_FLAG(int32_t, tokens, 64, "Tokens per step");
ABSL_FLAG(int32_t, heads, 16, "Attention heads");
ABSL_FLAG(int32_t, head_size, 512, "Head size");
ABSL_FLAG(std::string, dtype, "bf16", "Partial output dtype: bf16 | fp16 | fp32");
ABSL_FLAG(std::string, output_mode, "fp8_per_tensor",
          "fp8_per_tensor | fp8_per_token | fp8_per_group");
ABSL_FLAG(int32_t, steps, 300, "Merge steps");
ABSL_FLAG(int32_t, layers, 4, "Layers cycled through (each has its own static scale)");
ABSL_FLAG(double, empty_fraction, 0.10, "Fraction of empty (token, head) partitions per rank");
ABSL_FLAG(std::string, backend, "auto", "Server compute backend: auto | cpu | cuda");
ABSL_FLAG(uint64_t, seed, 1, "Random seed");
ABSL_FLAG(bool, verbose, false, "Server log lines on stderr");
ABSL_FLAG(std::string, join_secret_file, "",
          "The group's join secret (else env DCPMERGE_JOIN_SECRET, else a random one for this run): the server "
          "requires it and every rank sends it");

namespace dcpmerge {
namespace {

struct RankInput {
  std::vector<uint8_t> out;   // [T,H,D] in dtype
  std::vector<float> lse;     // [H,T]
  std::vector<double> value;  // [T,H,D] the exact values the bytes encode
};

int Run() {
  const int N = absl::GetFlag(FLAGS_ranks), T = absl::GetFlag(FLAGS_tokens);
  const int H = absl::GetFlag(FLAGS_heads), D = absl::GetFlag(FLAGS_head_size);
  const int steps = absl::GetFlag(FLAGS_steps), layers = std::max(1, absl::GetFlag(FLAGS_layers));
  const double empty = absl::GetFlag(FLAGS_empty_fraction);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  const std::string mode = absl::GetFlag(FLAGS_output_mode);
  if (N < 1 || T < 1 || H < 1 || D < 1 || steps < 1) {
    std::fprintf(stderr, "ranks, tokens, heads, head_size and steps must be >= 1\n");
    return 2;
  }
  SetLogQuiet(!absl::GetFlag(FLAGS_verbose));

  // LSE base e in [H,T], full return (DefaultGroupConfig), with the flags'
  // shape, dtype and FP8 mode.
  v1::GroupConfig cfg = DefaultGroupConfig(N, H, D, T);
  v1::DType dt;
  v1::OutputMode om;
  if (absl::Status st = ParseName(kDTypeNames, "dtype", dtype, &dt); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  absl::Status mode_ok = ParseName(kOutputModeNames, "output_mode", mode, &om);
  if (mode_ok.ok() && om == v1::OUTPUT_MODE_PASSTHROUGH) {
    mode_ok = absl::InvalidArgumentError("--output_mode: the demo checks FP8 outputs; passthrough is not one");
  }
  if (!mode_ok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mode_ok.message()).c_str());
    return 2;
  }
  cfg.set_input_dtype(dt);
  cfg.set_output_mode(om);
  cfg.set_group_size(D % 128 == 0 ? 128 : 64);
  const absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(cfg);
  if (!spec.ok()) {
    std::fprintf(stderr, "%s\n", spec.status().ToString().c_str());
    return 2;
  }

  // The server, in process, on loopback ports picked by the kernel.
  EmbeddedServerOptions so;
  so.rank_address = "127.0.0.1:0";
  so.admin_address = "127.0.0.1:0";
  so.admin_token = absl::StrCat("demo-", std::random_device{}());
  so.initial_config = cfg;
  so.backend = absl::GetFlag(FLAGS_backend);
  so.step_timeout = absl::Seconds(10);
  // The rank plane's credential, as a deployment has it (docs/server.md,
  // "Limits and security"): a file or the environment, else random.
  absl::StatusOr<std::string> secret = LoadJoinSecret(absl::GetFlag(FLAGS_join_secret_file));
  if (!secret.ok()) {
    std::fprintf(stderr, "%s\n", std::string(secret.status().message()).c_str());
    return 2;
  }
  so.join_secret = secret->empty() ? absl::StrCat("demo-join-", std::random_device{}(), std::random_device{}())
                                   : *secret;
  auto server = EmbeddedServer::Start(so);
  if (!server.ok()) {
    std::fprintf(stderr, "server failed to start: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string target = absl::StrCat("127.0.0.1:", (*server)->rank_port());

  // Admin client (bearer token) for scales and stats.
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->admin_port()), grpc::InsecureChannelCredentials()));
  auto admin_call = [&](auto method, const auto& req, auto* resp) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + so.admin_token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return ((*admin).*method)(&ctx, req, resp);
  };
  // Merged values are weighted means of values in [-4, 4): scale 4/448 fits
  // them; the mid-run update tightens it to 3.5/448 (some saturation shows).
  auto set_scales = [&](double amax) -> uint64_t {
    v1::SetScalesRequest req;
    for (int l = 0; l < layers; ++l) (*req.mutable_layer_scales())[l] = static_cast<float>(amax / 448.0);
    v1::SetScalesResponse resp;
    grpc::Status st = admin_call(&v1::Admin::Stub::SetScales, req, &resp);
    if (!st.ok()) {
      std::fprintf(stderr, "SetScales failed: %s\n", st.error_message().c_str());
      return 0;
    }
    return resp.config_version();
  };
  if (om == v1::OUTPUT_MODE_FP8_PER_TENSOR && set_scales(4.0) == 0) return 1;

  std::vector<std::unique_ptr<RankClient>> clients(N);
  for (int r = 0; r < N; ++r) {
    RankClientOptions co;
    co.target = target;
    co.rank = r;
    co.num_parts = N;
    co.join_secret = so.join_secret;
    auto c = RankClient::Connect(co);
    if (!c.ok() || !(*c)->Join().ok()) {
      std::fprintf(stderr, "rank %d could not join\n", r);
      return 1;
    }
    clients[r] = std::move(*c);
  }
  if (absl::Status st = clients[0]->WaitForGroupReady(absl::Seconds(10)); !st.ok()) {
    std::fprintf(stderr, "group not ready: %s\n", st.ToString().c_str());
    return 1;
  }
  const v1::JoinResponse info = clients[0]->join_info();

  const int64_t elems = int64_t{T} * H * D;
  const size_t es = static_cast<size_t>(spec->InputElementBytes());
  std::vector<RankInput> inputs(N);
  std::vector<absl::StatusOr<MergeResult>> results(N, absl::UnknownError("none"));
  std::vector<std::vector<double>> latency_ms(N);
  Barrier barrier(N);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  // Rank 0's checks.
  double max_abs_err = 0, max_tol_ratio = 0;
  uint64_t saturated = 0, failed = 0, empty_parts = 0, all_empty = 0, nan_out = 0;
  std::map<uint64_t, int> versions;
  uint64_t update_version = 0;

  auto make_input = [&](int r, int step, RankInput* in) {
    SplitMix64 rng{seed * 1000003ull + step * 7919ull + r};
    in->out.resize(elems * es);
    in->value.resize(elems);
    in->lse.resize(int64_t{T} * H);
    for (int h = 0; h < H; ++h) {
      for (int t = 0; t < T; ++t) {
        float l = static_cast<float>(rng.Uniform() * 8.0 - 4.0);
        const double u = rng.Uniform();
        if (u < empty) {
          const int kind = static_cast<int>(u / empty * 3);  // -inf, +inf, NaN
          l = kind == 0 ? -std::numeric_limits<float>::infinity()
              : kind == 1 ? std::numeric_limits<float>::infinity()
                          : std::numeric_limits<float>::quiet_NaN();
        }
        in->lse[int64_t{h} * T + t] = l;
      }
    }
    for (int64_t i = 0; i < elems; ++i) {
      const float x = static_cast<float>(rng.Uniform() * 8.0 - 4.0);
      uint8_t* p = in->out.data() + i * es;
      if (dt == v1::DTYPE_FLOAT32) {
        memcpy(p, &x, 4);
        in->value[i] = x;
      } else {
        const uint16_t b = dt == v1::DTYPE_BFLOAT16 ? FloatToBFloat16Bits(x) : FloatToHalfBits(x);
        memcpy(p, &b, 2);
        in->value[i] = dt == v1::DTYPE_BFLOAT16 ? BFloat16BitsToFloat(b) : HalfBitsToFloat(b);
      }
    }
    // An empty partition's O must never be read: fill it with NaN.
    const uint16_t nan16 = 0x7FC0;
    const float nan32 = std::numeric_limits<float>::quiet_NaN();
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        if (std::isfinite(in->lse[int64_t{h} * T + t])) continue;
        for (int d = 0; d < D; ++d) {
          uint8_t* p = in->out.data() + ((int64_t{t} * H + h) * D + d) * es;
          if (es == 4) {
            memcpy(p, &nan32, 4);
          } else {
            memcpy(p, &nan16, 2);
          }
        }
      }
    }
  };

  auto check = [&](int step) {
    const absl::StatusOr<MergeResult>& res = results[0];
    if (!res.ok()) {
      ++failed;
      if (failed <= 3) std::fprintf(stderr, "step %d failed: %s\n", step, res.status().ToString().c_str());
      return;
    }
    for (int r = 1; r < N; ++r) {
      if (!results[r].ok() || results[r]->output != res->output) {
        ++failed;
        std::fprintf(stderr, "step %d: rank %d got a different result\n", step, r);
        return;
      }
    }
    ++versions[res->config_version];
    const int G = cfg.group_size();
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        double m = -std::numeric_limits<double>::infinity();
        int live = 0;
        for (int r = 0; r < N; ++r) {
          const double l = inputs[r].lse[int64_t{h} * T + t];
          if (std::isfinite(l)) {
            m = std::max(m, l);
            ++live;
          } else {
            ++empty_parts;
          }
        }
        if (live == 0) ++all_empty;
        double w[kMaxParts];
        double s = 0;
        for (int r = 0; r < N; ++r) {
          const double l = inputs[r].lse[int64_t{h} * T + t];
          w[r] = std::isfinite(l) ? std::exp(l - m) : 0.0;
          s += w[r];
        }
        for (int d = 0; d < D; ++d) {
          const int64_t i = (int64_t{t} * H + h) * D + d;
          double ref = 0;
          if (live > 0) {
            for (int r = 0; r < N; ++r) {
              if (w[r] > 0) ref += w[r] * inputs[r].value[i];
            }
            ref /= s;
          }
          const float scale = om == v1::OUTPUT_MODE_FP8_PER_TENSOR ? res->scales[0]
                              : om == v1::OUTPUT_MODE_FP8_PER_TOKEN
                                  ? res->scales[t]
                                  : res->scales[(int64_t{t} * H + h) * (D / G) + d / G];
          const uint8_t code = static_cast<uint8_t>(res->output[i]);
          const double got = static_cast<double>(DecodeE4M3(code)) * scale;
          if (std::isnan(got)) {
            ++nan_out;
            continue;
          }
          // Clipped: the value would have rounded above 448 (464 is the
          // midpoint to the next binade's first step). By design, not an error.
          if (IsSaturatedFp8Code(code) && std::fabs(ref) > 464.0 * scale) {
            ++saturated;
            continue;
          }
          const double err = std::fabs(got - ref);
          max_abs_err = std::max(max_abs_err, err);
          // vLLM's FP8 test tolerance after multiplying back: rtol = atol = 0.1.
          max_tol_ratio = std::max(max_tol_ratio, err / (0.1 + 0.1 * std::fabs(ref)));
        }
      }
    }
  };

  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int r = 0; r < N; ++r) {
    threads.emplace_back([&, r] {
      for (int step = 0; step < steps; ++step) {
        make_input(r, step, &inputs[r]);
        barrier.Wait();  // all ranks send at once: latency is the service's
        const absl::Time t0 = absl::Now();
        results[r] = clients[r]->Merge(step, step % layers, T, inputs[r].out.data(),
                                       inputs[r].out.size(), inputs[r].lse.data(), inputs[r].lse.size());
        latency_ms[r].push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        barrier.Wait();
        if (r == 0) {
          check(step);
          if (step == steps / 2 && om == v1::OUTPUT_MODE_FP8_PER_TENSOR) update_version = set_scales(3.5);
        }
        barrier.Wait();
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall_s = absl::ToDoubleSeconds(absl::Now() - start);

  v1::GetStatsResponse stats;
  admin_call(&v1::Admin::Stub::GetStats, v1::GetStatsRequest(), &stats);
  std::vector<double> all;
  for (const auto& v : latency_ms) all.insert(all.end(), v.begin(), v.end());
  const double in_bytes = static_cast<double>(steps) * N * (elems * es + int64_t{T} * H * 4);

  std::printf("dcpmerge demo: %d ranks x %d tokens x %d heads x %d head size, %s in, %s out\n", N, T, H, D,
              dtype.c_str(), mode.c_str());
  std::printf("  server      backend %s (%s), data plane grpc on %s\n", info.backend().c_str(),
              (*server)->backend_reason().c_str(), target.c_str());
  std::printf("  steps       %d run, %llu failed, %.1f s wall, %.1f steps/s, %.1f MB/s of partials in (end to end, incl. data generation and checks)\n", steps,
              static_cast<unsigned long long>(failed), wall_s, steps / wall_s, in_bytes / wall_s / 1e6);
  std::printf("  latency     Merge() per rank: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms (%zu calls)\n",
              Percentile(all, 0.5), Percentile(all, 0.9), Percentile(all, 0.99), all.size());
  std::printf("  server      receive p50 %.2f ms, merge p50 %.2f ms / p99 %.2f ms, send p50 %.3f ms\n",
              stats.receive().p50_us() / 1e3, stats.merge().p50_us() / 1e3, stats.merge().p99_us() / 1e3,
              stats.send().p50_us() / 1e3);
  if (stats.device_kernel().count() > 0) {
    // The merge phase (last part in to results ready) next to the device
    // work it is made of, from the device's clock over the same steps.
    const double need =
        stats.device_copy_in().p50_us() + stats.device_kernel().p50_us() + stats.device_copy_out().p50_us();
    std::printf("  device      p50: H2D of the last part %.1f us, kernel %.1f us, D2H of the output %.1f us; "
                "merge phase %.1f us = %.2fx their sum (%.1f us)\n",
                stats.device_copy_in().p50_us(), stats.device_kernel().p50_us(), stats.device_copy_out().p50_us(),
                stats.merge().p50_us(), need > 0 ? stats.merge().p50_us() / need : 0.0, need);
  }
  std::printf("  accuracy    max |decode(FP8)*scale - float64 merge| = %.4g (%.2f of the rtol=atol=0.1 bound)\n",
              max_abs_err, max_tol_ratio);
  std::printf("  edge cases  %llu empty partitions (-inf/+inf/NaN LSE, NaN O), %llu all-empty (token,head), "
              "%llu NaN outputs\n",
              static_cast<unsigned long long>(empty_parts), static_cast<unsigned long long>(all_empty),
              static_cast<unsigned long long>(nan_out));
  const double checked = static_cast<double>(steps - failed) * elems;
  std::printf("  saturation  %llu FP8 codes clipped to +-448 (%.2f%% of outputs; server: %llu codes at +-448)\n",
              static_cast<unsigned long long>(saturated), checked > 0 ? 100.0 * saturated / checked : 0.0,
              static_cast<unsigned long long>(stats.fp8_saturated()));
  std::string seen;
  for (const auto& [v, n] : versions) absl::StrAppend(&seen, seen.empty() ? "" : ", ", "v", v, ": ", n, " steps");
  std::printf("  config      versions seen {%s}%s\n", seen.c_str(),
              update_version ? absl::StrCat("; SetScales after step ", steps / 2, " made v", update_version).c_str()
                             : "");
  const bool pass = failed == 0 && nan_out == 0 && max_tol_ratio <= 1.0;
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  clients.clear();
  (*server)->Shutdown();
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace dcpmerge

int main(int argc, char** argv) {
  dcpmerge::UseVersionFlag("dcpmerge_demo");
  absl::SetProgramUsageMessage("dcpmerge_demo: server + simulated DCP ranks on loopback");
  absl::ParseCommandLine(argc, argv);
  dcpmerge::KeepFreedBuffersInHeap();
  return dcpmerge::Run();
}
