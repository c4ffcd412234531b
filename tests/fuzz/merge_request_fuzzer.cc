// Ranks' MergeRequests as the server validates them: each request becomes a
// StepPart the way the gRPC data plane's stream reactor moves it
// (server/grpc_data_plane.cc) and is submitted to the real StepCollector,
// whose checks against the group configuration are the validation; complete
// steps go to a backend that checks the merge's arguments and touches every
// byte they span, as a kernel would (AddressSanitizer sees any part shorter
// than the configuration says), and every answer is serialized by
// SerializeResponse and read back, as the plane writes it and a rank reads it.
//
// Input: one byte choosing the group configuration (MergeConfigs, modulo their
// count), then MergeRequests in protobuf's delimited format (a varint
// length, then the message), in the order the ranks' streams deliver them.
// Session ids are 64 random bits per join, which no fuzzer (nor attacker)
// guesses: a request naming a rank of the group is sent with that rank's
// live session.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/log.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/data.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/util/delimited_message_util.h"
#include "kernels/merge_contract.h"
#include "server/compute_backend.h"
#include "server/config_store.h"
#include "server/grpc_response.h"
#include "server/group.h"
#include "server/stats.h"
#include "server/step_collector.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_configs.h"

namespace dcpmerge {
namespace {

constexpr int kMaxRequests = 64;

// A configured group, every rank joined.
struct Env {
  ConfigStore store;
  Group group{absl::Hours(1)};  // no watchdog runs: nobody expires
  std::vector<uint64_t> sessions;
};

std::vector<std::unique_ptr<Env>> MakeEnvs() {
  std::vector<std::unique_ptr<Env>> envs;
  for (const v1::GroupConfig& config : fuzz::MergeConfigs()) {
    auto env = std::make_unique<Env>();
    FUZZ_CHECK(env->store.Configure(config, 0.5f).ok(), config.DebugString());
    FUZZ_CHECK(env->store.SetScales({{1, 0.25f}, {3, 2.0f}}, false, 0.0f).ok(), "scales");
    for (int r = 0; r < config.world_size(); ++r) {
      JoinInfo join;
      join.rank = r;
      join.num_parts = config.world_size();
      absl::StatusOr<uint64_t> session = env->group.Join(join, *env->store.Current());
      FUZZ_CHECK(session.ok(), session.status().ToString());
      env->sessions.push_back(*session);
    }
    envs.push_back(std::move(env));
  }
  return envs;
}

// Checks what the collector asks to merge and reads and writes every byte
// of it; a real kernel's arithmetic is not what is fuzzed here.
class CheckingBackend : public ComputeBackend {
 public:
  std::string name() const override { return "fuzz"; }
  // As the CPU backend: the parts are read where they lie, and the merge
  // runs on the thread that completes the step (no merge thread to wait on).
  absl::StatusOr<std::unique_ptr<Staging>> BeginStep(int, size_t, size_t) override { return nullptr; }
  absl::Status StagePart(Staging*, int, const void*, const void*) override { return absl::OkStatus(); }
  bool MergesInline(const MergeShape&) const override { return true; }
  absl::Status MergeStaged(const MergeArgs& args, Staging*, DeviceTimes*) override {
    const absl::Status valid = ValidateMergeArgs(args);
    FUZZ_CHECK(valid.ok(), valid.ToString());
    uint8_t sum = 0;
    for (int i = 0; i < args.shape.num_parts; ++i) {
      const auto* out = static_cast<const uint8_t*>(args.partial_out[i]);
      const auto* lse = reinterpret_cast<const uint8_t*>(args.partial_lse[i]);
      for (size_t b = 0; b < args.partial_out_bytes; ++b) sum += out[b];
      for (size_t b = 0; b < args.partial_lse_bytes; ++b) sum += lse[b];
    }
    for (const OutBuffer& o : {args.out, args.out_scales, args.out_lse}) {
      if (o.data != nullptr) std::memset(o.data, sum, o.bytes);
    }
    return absl::OkStatus();
  }
};

// fp32 scales of a [T,heads,D] output (the merge contract's count).
int64_t ScaleCount(const GroupSpec& spec, int64_t t, int64_t heads) {
  switch (spec.merge.output_mode) {
    case OutputMode::kFp8PerTensor: return 1;
    case OutputMode::kFp8PerToken: return t;
    case OutputMode::kFp8PerGroup: return t * heads * (spec.head_size / spec.merge.group_size);
    default: return 0;
  }
}

// The answer the gRPC plane writes for `rank`, read back as a rank reads it.
v1::MergeResponse Answer(std::shared_ptr<const StepResult> result, int32_t rank) {
  uint64_t payload_bytes = 0;
  const grpc::ByteBuffer wire = SerializeResponse(std::move(result), rank, &payload_bytes);
  std::vector<grpc::Slice> slices;
  FUZZ_CHECK(wire.Dump(&slices).ok(), "the answer's bytes");
  std::string bytes;
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  v1::MergeResponse resp;
  FUZZ_CHECK(resp.ParseFromString(bytes), "the answer parses");
  FUZZ_CHECK(payload_bytes == resp.output().size() + resp.lse().size() + 4 * resp.scales_size(),
             "the answer's payload bytes");
  return resp;
}

// One submitted part and what became of it.
struct Sent {
  v1::MergeHeader header;
  size_t partial_out_bytes = 0;
  size_t lse_bytes = 0;
  int answers = 0;
  std::shared_ptr<const StepResult> result;
};

// A merged step's answer to the rank that sent `sent`: it fits the
// configuration the step pinned, whatever the request said.
void CheckMerged(const Sent& sent) {
  const StepResult& r = *sent.result;
  const v1::MergeHeader& h = sent.header;
  const std::string who = absl::StrCat("rank ", h.rank(), " step ", h.step());
  FUZZ_CHECK(r.config != nullptr, who);
  const GroupSpec& spec = r.config->spec;
  const int64_t t = h.num_tokens(), heads = spec.num_heads, d = spec.head_size;
  FUZZ_CHECK(r.step == h.step() && r.layer == h.layer() && r.num_tokens == t, who);
  FUZZ_CHECK(h.rank() >= 0 && h.rank() < spec.num_parts, who);
  FUZZ_CHECK(t >= 0 && t <= spec.max_tokens, absl::StrCat(who, ": num_tokens ", t));
  FUZZ_CHECK(h.layer() >= 0 && h.layer() < r.config->max_layers, absl::StrCat(who, ": layer ", h.layer()));
  FUZZ_CHECK(static_cast<int64_t>(sent.partial_out_bytes) == t * heads * d * spec.InputElementBytes() &&
                 static_cast<int64_t>(sent.lse_bytes) == t * heads * 4,
             absl::StrCat(who, ": accepted ", sent.partial_out_bytes, " + ", sent.lse_bytes, " bytes for ", t,
                          " tokens"));
  FUZZ_CHECK(static_cast<int64_t>(r.output.size()) == t * heads * d * spec.OutputElementBytes() &&
                 static_cast<int64_t>(r.scales.size()) == ScaleCount(spec, t, heads) &&
                 static_cast<int64_t>(r.lse.size()) == (spec.return_lse ? t * heads : 0),
             absl::StrCat(who, ": merged output of the wrong size"));
  if (spec.merge.output_mode == OutputMode::kFp8PerTensor) {
    FUZZ_CHECK(r.scales[0] == r.config->ScaleForLayer(h.layer()), who);
  }
  const v1::MergeResponse resp = Answer(sent.result, h.rank());
  const int64_t slice = spec.head_slice ? heads / spec.num_parts : heads;
  FUZZ_CHECK(resp.status_code() == 0 && resp.head_count() == slice &&
                 resp.head_begin() == (spec.head_slice ? h.rank() * slice : 0),
             absl::StrCat(who, ": heads ", resp.head_begin(), "+", resp.head_count()));
  FUZZ_CHECK(static_cast<int64_t>(resp.output().size()) == t * slice * d * spec.OutputElementBytes() &&
                 resp.scales_size() == ScaleCount(spec, t, slice) &&
                 static_cast<int64_t>(resp.lse().size()) == (spec.return_lse ? t * slice * 4 : 0),
             absl::StrCat(who, ": answer of the wrong size"));
}

void FuzzOne(const uint8_t* data, size_t size) {
  static const std::vector<std::unique_ptr<Env>>* const envs = [] {
    SetLogQuiet(true);  // joins and refusals would log every input
    return new std::vector<std::unique_ptr<Env>>(MakeEnvs());
  }();
  static CheckingBackend backend;
  if (size == 0) return;
  Env& env = *(*envs)[data[0] % envs->size()];
  const int32_t n = env.store.Current()->spec.num_parts;

  Stats stats;
  StepCollector::Options options;
  options.step_timeout = absl::Minutes(1);  // never: the input's end fails what is left
  options.max_pending_steps = 4;            // small limits, so the refusals are reached
  options.max_pending_bytes = 4096;
  StepCollector collector(&env.store, &env.group, &backend, &stats, options);
  collector.Start();

  absl::Mutex mu;
  std::vector<Sent> sent;
  sent.reserve(kMaxRequests);
  google::protobuf::io::CodedInputStream in(data + 1, static_cast<int>(size - 1));
  v1::MergeRequest req;
  bool clean_eof = false;
  while (sent.size() < kMaxRequests && google::protobuf::util::ParseDelimitedFromCodedStream(&req, &in, &clean_eof)) {
    StepPart part;
    part.header = req.header();
    part.partial_out = std::move(*req.mutable_partial_out());
    part.lse = std::move(*req.mutable_lse());
    const int32_t rank = part.header.rank();
    if (rank >= 0 && rank < n) part.header.set_session_id(env.sessions[rank]);
    size_t i;
    {
      absl::MutexLock lock(&mu);
      i = sent.size();
      sent.push_back(Sent{part.header, part.partial_out.size(), part.lse.size()});
    }
    collector.Submit(std::move(part), [&mu, &sent, i](std::shared_ptr<const StepResult> r) {
      absl::MutexLock lock(&mu);
      ++sent[i].answers;
      sent[i].result = std::move(r);
    });
  }
  collector.FailPending(absl::UnavailableError("input ended"));
  collector.Stop();  // joins the merge thread: every answer has been given

  absl::MutexLock lock(&mu);
  std::map<uint64_t, std::set<int32_t>> merged;  // step -> ranks answered OK
  for (const Sent& s : sent) {
    FUZZ_CHECK(s.answers == 1, absl::StrCat("step ", s.header.step(), " rank ", s.header.rank(), " answered ",
                                            s.answers, " times"));
    if (!s.result->status.ok()) {
      const v1::MergeResponse resp = Answer(s.result, s.header.rank());
      FUZZ_CHECK(resp.status_code() != 0 && resp.output().empty() && resp.scales_size() == 0 && resp.lse().empty(),
                 s.result->status.ToString());
      continue;
    }
    CheckMerged(s);
    FUZZ_CHECK(merged[s.header.step()].insert(s.header.rank()).second,
               absl::StrCat("step ", s.header.step(), " merged rank ", s.header.rank(), " twice"));
  }
  // A step merges only with every rank's part, and each gets its answer.
  for (const auto& [step, ranks] : merged) {
    FUZZ_CHECK(static_cast<int32_t>(ranks.size()) == n, absl::StrCat("step ", step, " merged ", ranks.size(),
                                                                     " of ", n, " parts"));
  }
}

}  // namespace
}  // namespace dcpmerge

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpmerge::FuzzOne(data, size);
  return 0;
}
