// A DCP rank in ~60 lines: join a merge group, merge a few steps, read the
// FP8 result back.
//
// Try it with a one-rank group (the server's command is one line):
//   bazel run //server:dcpmerge_server -- --world_size=1 --num_heads=8
//       --head_size=128 --max_tokens=16 --rank_address=127.0.0.1:50051 &
//   bazel run //client/examples:merge_example -- --target=127.0.0.1:50051
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "base/version_flag.h"
#include "client/rank_client.h"
#include "kernels/numeric.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Merge server rank address");
ABSL_FLAG(int32_t, rank, 0, "This rank");
ABSL_FLAG(int32_t, world_size, 1, "Ranks in the group (N)");

int main(int argc, char** argv) {
  dcpmerge::UseVersionFlag("merge_example");
  absl::ParseCommandLine(argc, argv);
  dcpmerge::RankClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.rank = absl::GetFlag(FLAGS_rank);
  options.num_parts = absl::GetFlag(FLAGS_world_size);

  // 1. Connect and join; the join reply carries the group's shape.
  auto client = dcpmerge::RankClient::Connect(options);
  if (!client.ok()) return std::printf("connect: %s\n", client.status().ToString().c_str()), 1;
  if (absl::Status st = (*client)->Join(); !st.ok()) return std::printf("join: %s\n", st.ToString().c_str()), 1;
  if (absl::Status st = (*client)->WaitForGroupReady(absl::Seconds(30)); !st.ok()) {
    return std::printf("group: %s\n", st.ToString().c_str()), 1;
  }
  const dcpmerge::v1::GroupConfig cfg = (*client)->join_info().config();
  const int T = static_cast<int>(cfg.max_tokens()), H = cfg.num_heads(), D = cfg.head_size();
  std::printf("joined: %d ranks, %d heads x %d, backend %s\n", cfg.world_size(), H, D,
              (*client)->join_info().backend().c_str());
  if (cfg.input_dtype() != dcpmerge::v1::DTYPE_BFLOAT16) return std::printf("this example sends bf16\n"), 1;

  // 2. This rank's partial attention output [T,H,D] (bf16) and LSE [H,T].
  std::vector<uint16_t> out(static_cast<size_t>(T) * H * D);
  std::vector<float> lse(static_cast<size_t>(T) * H);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = dcpmerge::FloatToBFloat16Bits(std::sin(0.01f * (i + step)));
    for (size_t i = 0; i < lse.size(); ++i) lse[i] = 1.0f + options.rank;

    // 3. Merge: every rank sends the same step id; all get the result.
    auto r = (*client)->Merge(step, /*layer=*/0, T, out.data(), out.size() * 2, lse.data(), lse.size());
    if (!r.ok()) {
      std::printf("step %d: %s\n", step, r.status().ToString().c_str());
      continue;
    }
    // 4. FP8 E4M3 codes; value = decode(code) * scale (per-tensor mode).
    const float scale = r->scales.empty() ? 1.0f : r->scales[0];
    std::printf("step %d: %zu FP8 bytes, scale %g, config v%llu, first value %.4f\n", step, r->output.size(),
                scale, static_cast<unsigned long long>(r->config_version),
                dcpmerge::DecodeE4M3(static_cast<uint8_t>(r->output[1])) * scale);
  }
  return 0;  // ~RankClient leaves the group
}
