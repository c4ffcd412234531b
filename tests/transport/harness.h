// Test harness: N DCP rank threads and a server thread over one FakeWorld,
// running whole protocol steps (transport/rank_protocol.h,
// transport/server_protocol.h) with deterministic inputs.
#ifndef DCPMERGE_TESTS_TRANSPORT_HARNESS_H_
#define DCPMERGE_TESTS_TRANSPORT_HARNESS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/fake_transport.h"
#include "transport/layout.h"
#include "transport/rank_protocol.h"
#include "transport/server_protocol.h"
#include "transport/wire.h"

namespace dcpmerge {
namespace transport {
namespace testing {

// fp32 input, fp32 passthrough output, merged LSE returned: the real merge
// math, so outputs can be checked against an independent host computation.
ProtocolConfig Fp32Config(int num_parts);
// FP8-style output (1-byte codes) with the given scale layout and a
// deterministic "merge" (see PatternMerge) for checking byte placement.
ProtocolConfig Fp8Config(int num_parts, ScaleLayout scales);

// Merge callbacks operating on host memory (the fake transport's).
//   ExactMerge: the contract's math for fp32 in/out, any LSE layout, base e.
//   PatternMerge: out/scales/lse as deterministic functions of the inputs,
//   so misplaced bytes show.
absl::Status ExactMerge(MergeStep& step);
absl::Status PatternMerge(MergeStep& step);

// One rank's inputs and output buffers (host memory of its transport).
struct RankBuffers {
  Buffer partial_out, partial_lse, out, out_scales, out_lse;
};

// Everything the ranks received for one step.
struct RankResult {
  absl::Status status;
  ResponseHeader response{};
  std::vector<uint8_t> out, out_scales, out_lse;  // as received
};

struct StepRun {
  absl::StatusOr<StepOutcome> server = absl::UnknownError("not run");
  std::vector<RankResult> ranks;
  absl::Duration server_time;
  absl::Duration rank_time;  // slowest rank
};

struct StepSpec {
  uint64_t step_id = 1;
  int32_t layer_id = 0;
  int64_t num_tokens = 4;
  // Per-rank changes to what the rank enqueues (e.g. a wrong layer id).
  std::function<void(int rank, RankStep* step)> tweak;
  // Ranks that take no part (dead from the start).
  std::vector<int> absent;
  // Ranks that bypass RankProtocol (a misbehaving rank): `raw` enqueues
  // whatever it likes on harness.rank_transport(rank); the harness then waits
  // for that transport until rank_timeout and aborts it on failure.
  std::vector<int> raw_ranks;
  std::function<absl::Status(int rank, class Harness& harness)> raw;
  // If the server fails the step, abort every rank's transport right away,
  // as the control plane would; otherwise ranks find out by their deadline.
  bool control_plane_aborts = false;
  absl::Duration header_timeout = absl::Seconds(5);
  absl::Duration rank_timeout = absl::Seconds(5);
};

class Harness {
 public:
  // merge: the server's callback (ExactMerge if null).
  explicit Harness(const ProtocolConfig& config, MergeFn merge = nullptr,
                   ServerOptions options = ServerOptions());
  ~Harness();

  // Runs one step: every non-absent rank fills its inputs (seeded by step id,
  // layer and rank), enqueues and completes; the server serves concurrently.
  StepRun Run(const StepSpec& spec);

  // The inputs rank r sent for `spec` (recomputed from the same seed).
  void Inputs(const StepSpec& spec, int rank, std::vector<uint8_t>* partial_out,
              std::vector<float>* partial_lse) const;

  // What the merge callback produces for all heads when applied directly to
  // the inputs (no transport).
  void ExpectedFull(const StepSpec& spec, std::vector<uint8_t>* out,
                    std::vector<uint8_t>* out_scales,
                    std::vector<uint8_t>* out_lse) const;
  // Rank r's part of it (all of it, or its head slice).
  void ExpectedForRank(const StepSpec& spec, int rank,
                       std::vector<uint8_t>* out,
                       std::vector<uint8_t>* out_scales,
                       std::vector<uint8_t>* out_lse) const;

  const ProtocolConfig& config() const { return config_; }
  FakeWorld& world() { return *world_; }
  FakeTransport& rank_transport(int r) { return *rank_transports_[r]; }
  FakeTransport& server_transport() { return *server_transport_; }
  RankProtocol& rank(int r) { return *ranks_[r]; }
  ServerProtocol& server() { return *server_; }
  RankBuffers& buffers(int r) { return buffers_[r]; }

  // Host memory of rank r's transport that lives as long as the harness
  // (for raw ranks, whose transfers may stay pending until teardown).
  void* Scratch(int r, size_t bytes);

  // What the control plane does after a protocol violation or timeout:
  // abort every party.
  void AbortAll(absl::string_view reason);

 private:
  ProtocolConfig config_;
  MergeFn merge_;
  std::shared_ptr<FakeWorld> world_;
  std::vector<std::unique_ptr<FakeTransport>> rank_transports_;
  std::unique_ptr<FakeTransport> server_transport_;
  std::vector<std::unique_ptr<RankProtocol>> ranks_;
  std::unique_ptr<ServerProtocol> server_;
  std::vector<RankBuffers> buffers_;
  std::mutex scratch_mu_;
  std::vector<Buffer> scratch_;
};

bool AllPoisoned(const std::vector<uint8_t>& bytes);

}  // namespace testing
}  // namespace transport
}  // namespace dcpmerge

#endif  // DCPMERGE_TESTS_TRANSPORT_HARNESS_H_
