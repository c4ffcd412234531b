#include "tests/transport/harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dcpmerge {
namespace transport {
namespace testing {

namespace {

int64_t LseIndex(LseLayoutWire layout, int64_t t, int64_t h, int64_t T,
                 int64_t H) {
  return layout == LseLayoutWire::kHeadsTokens ? h * T + t : t * H + h;
}

// The merge contract's math, fp32 in and out, natural-log LSE.
void MergeF32Core(int n, int64_t T, int H, int D, LseLayoutWire layout,
                  const float* const* parts, const float* const* lses,
                  float* out, float* out_lse) {
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const int64_t li = LseIndex(layout, t, h, T, H);
      float m = kNegInf;
      for (int i = 0; i < n; ++i) {
        const float l = lses[i][li];
        if (std::isfinite(l)) m = std::max(m, l);
      }
      float* o = out + (t * H + h) * D;
      if (m == kNegInf) {
        for (int d = 0; d < D; ++d) o[d] = 0.0f;
        if (out_lse != nullptr) out_lse[li] = kNegInf;
        continue;
      }
      float s = 0.0f;
      std::vector<float> acc(static_cast<size_t>(D), 0.0f);
      for (int i = 0; i < n; ++i) {
        const float l = lses[i][li];
        if (!std::isfinite(l)) continue;
        const float w = std::exp(l - m);
        s += w;
        const float* p = parts[i] + (t * H + h) * D;
        for (int d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += w * p[d];
      }
      const float inv = 1.0f / s;
      for (int d = 0; d < D; ++d) o[d] = acc[static_cast<size_t>(d)] * inv;
      if (out_lse != nullptr) out_lse[li] = m + std::log(s);
    }
  }
}

// Deterministic stand-in for the FP8 kernel: every output byte depends on
// every rank's input at the same position, so misplaced bytes show.
void PatternCore(const ProtocolConfig& c, uint64_t step_id, int32_t layer,
                 int64_t T, int n, const uint8_t* const* parts,
                 const float* const* lses, uint8_t* out, float* scales,
                 float* out_lse) {
  const int H = c.num_heads, D = c.head_size;
  const int64_t in = c.input_elem_bytes;
  for (int64_t idx = 0; idx < T * H * D; ++idx) {
    uint32_t v = static_cast<uint32_t>(step_id * 31u) +
                 static_cast<uint32_t>(layer) * 7u;
    for (int i = 0; i < n; ++i) v += parts[i][idx * in];
    out[idx] = static_cast<uint8_t>(v);
  }
  if (c.scale_layout == ScaleLayout::kPerToken) {
    for (int64_t t = 0; t < T; ++t) {
      scales[t] = 0.5f * static_cast<float>(t + 1) + static_cast<float>(layer);
    }
  } else if (c.scale_layout == ScaleLayout::kPerGroup) {
    const int groups = D / c.group_size;
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        for (int g = 0; g < groups; ++g) {
          scales[(t * H + h) * groups + g] =
              static_cast<float>(t * 100 + h * 10 + g + layer);
        }
      }
    }
  }
  if (c.return_lse) {
    for (int64_t k = 0; k < T * H; ++k) {
      float sum = 0.0f;
      for (int i = 0; i < n; ++i) sum += lses[i][k];
      out_lse[k] = sum;
    }
  }
}

std::vector<uint8_t> Bytes(const void* p, uint64_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n);
}

void InputsFor(const ProtocolConfig& c, uint64_t step_id, int32_t layer,
               int rank, int64_t T, std::vector<uint8_t>* partial_out,
               std::vector<float>* partial_lse) {
  std::mt19937 rng(static_cast<uint32_t>(step_id * 1000003u + layer * 7919u +
                                         rank * 104729u + T * 13u + 17u));
  const int64_t elems = T * c.num_heads * c.head_size;
  partial_out->assign(static_cast<size_t>(elems * c.input_elem_bytes), 0);
  if (c.input_elem_bytes == 4) {
    std::uniform_real_distribution<float> val(-2.0f, 2.0f);
    for (int64_t i = 0; i < elems; ++i) {
      const float f = val(rng);
      std::memcpy(partial_out->data() + i * 4, &f, 4);
    }
  } else {
    for (auto& b : *partial_out) b = static_cast<uint8_t>(rng());
  }
  std::uniform_real_distribution<float> lse(-3.0f, 3.0f);
  partial_lse->assign(static_cast<size_t>(T * c.num_heads), 0.0f);
  for (size_t k = 0; k < partial_lse->size(); ++k) {
    (*partial_lse)[k] = lse(rng);
    // Some empty partitions, as FA3 (-inf) and FA2 (+inf) report them.
    if (k % 13 == static_cast<size_t>(rank) % 13) {
      (*partial_lse)[k] = (rank % 2 == 0)
                              ? -std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace

namespace {

// 8 heads of 16, up to 32 tokens, LSE back.
ProtocolConfig SmallProtocolConfig(int num_parts) {
  ProtocolConfig c;
  c.config_version = 1;
  c.num_parts = num_parts;
  c.num_heads = 8;
  c.head_size = 16;
  c.max_tokens = 32;
  c.return_lse = true;
  return c;
}

}  // namespace

ProtocolConfig Fp32Config(int num_parts) {
  ProtocolConfig c = SmallProtocolConfig(num_parts);
  c.input_elem_bytes = 4;
  c.output_elem_bytes = 4;
  c.scale_layout = ScaleLayout::kNone;
  c.lse_layout = LseLayoutWire::kHeadsTokens;
  return c;
}

ProtocolConfig Fp8Config(int num_parts, ScaleLayout scales) {
  ProtocolConfig c = SmallProtocolConfig(num_parts);
  c.input_elem_bytes = 2;
  c.output_elem_bytes = 1;
  c.scale_layout = scales;
  c.group_size = 8;
  c.lse_layout = LseLayoutWire::kTokensHeads;
  return c;
}

absl::Status ExactMerge(MergeStep& step) {
  const ProtocolConfig& c = *step.config;
  if (c.input_elem_bytes != 4 || c.output_elem_bytes != 4) {
    return absl::InvalidArgumentError("ExactMerge needs fp32 in and out");
  }
  std::vector<const float*> parts, lses;
  for (int i = 0; i < step.num_parts; ++i) {
    parts.push_back(static_cast<const float*>(step.partial_out[i]));
    lses.push_back(step.partial_lse[i]);
  }
  MergeF32Core(step.num_parts, step.num_tokens, c.num_heads, c.head_size,
               c.lse_layout, parts.data(), lses.data(),
               static_cast<float*>(step.out), step.out_lse);
  return absl::OkStatus();
}

absl::Status PatternMerge(MergeStep& step) {
  const ProtocolConfig& c = *step.config;
  if (c.output_elem_bytes != 1) {
    return absl::InvalidArgumentError("PatternMerge needs 1-byte output");
  }
  std::vector<const uint8_t*> parts;
  std::vector<const float*> lses;
  for (int i = 0; i < step.num_parts; ++i) {
    parts.push_back(static_cast<const uint8_t*>(step.partial_out[i]));
    lses.push_back(step.partial_lse[i]);
  }
  PatternCore(c, step.step_id, step.layer_id, step.num_tokens, step.num_parts,
              parts.data(), lses.data(), static_cast<uint8_t*>(step.out),
              step.out_scales, step.out_lse);
  if (c.scale_layout == ScaleLayout::kPerTensor) step.static_scale_used = 0.25f;
  return absl::OkStatus();
}

Harness::Harness(const ProtocolConfig& config, MergeFn merge,
                 ServerOptions options)
    : config_(config), merge_(merge ? std::move(merge) : MergeFn(ExactMerge)) {
  const int n = config.num_parts;
  world_ = FakeWorld::Create(n + 1);
  for (int r = 0; r < n; ++r) {
    rank_transports_.push_back(*world_->Connect(r));
  }
  server_transport_ = *world_->Connect(n);
  absl::StatusOr<std::unique_ptr<ServerProtocol>> server =
      ServerProtocol::Create(server_transport_.get(), config, merge_, options);
  if (!server.ok()) {
    std::fprintf(stderr, "harness: %s\n", server.status().ToString().c_str());
    std::abort();
  }
  server_ = std::move(*server);
  buffers_.resize(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    absl::StatusOr<std::unique_ptr<RankProtocol>> rank =
        RankProtocol::Create(rank_transports_[r].get(), config);
    if (!rank.ok()) std::abort();
    ranks_.push_back(std::move(*rank));
    const PayloadSizes max = RankPayloadSizes(config, r, config.max_tokens);
    FakeTransport& t = *rank_transports_[r];
    RankBuffers& b = buffers_[static_cast<size_t>(r)];
    b.partial_out = *t.AllocateDevice(max.partial_out);
    b.partial_lse = *t.AllocateDevice(max.partial_lse);
    b.out = *t.AllocateDevice(max.out);
    b.out_scales = *t.AllocateDevice(max.out_scales);
    b.out_lse = *t.AllocateDevice(max.out_lse);
  }
}

Harness::~Harness() {
  AbortAll("test teardown");
  // Workers first (they may still touch buffers), then everything else.
  server_transport_.reset();
  rank_transports_.clear();
}

void* Harness::Scratch(int r, size_t bytes) {
  std::lock_guard<std::mutex> lock(scratch_mu_);
  scratch_.push_back(*rank_transports_[r]->AllocateDevice(bytes));
  return scratch_.back().data();
}

void Harness::AbortAll(absl::string_view reason) {
  for (auto& t : rank_transports_) {
    if (t) t->Abort(reason);
  }
  if (server_transport_) server_transport_->Abort(reason);
}

void Harness::Inputs(const StepSpec& spec, int rank,
                     std::vector<uint8_t>* partial_out,
                     std::vector<float>* partial_lse) const {
  InputsFor(config_, spec.step_id, spec.layer_id, rank, spec.num_tokens,
            partial_out, partial_lse);
}

void Harness::ExpectedFull(const StepSpec& spec, std::vector<uint8_t>* out,
                           std::vector<uint8_t>* out_scales,
                           std::vector<uint8_t>* out_lse) const {
  // The server's own callback, applied straight to the inputs: what the
  // ranks receive must be exactly this, sliced.
  const int n = config_.num_parts;
  const PayloadSizes full = FullPayloadSizes(config_, spec.num_tokens);
  std::vector<std::vector<uint8_t>> parts(static_cast<size_t>(n));
  std::vector<std::vector<float>> lses(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) Inputs(spec, r, &parts[r], &lses[r]);
  // Room for at least one element, so pointers are never null.
  out->assign(full.out + 4, 0);
  out_scales->assign(full.out_scales + 4, 0);
  out_lse->assign(full.out_lse + 4, 0);
  MergeStep step;
  step.step_id = spec.step_id;
  step.layer_id = spec.layer_id;
  step.num_tokens = spec.num_tokens;
  step.config = &config_;
  step.num_parts = n;
  for (int r = 0; r < n; ++r) {
    parts[r].resize(parts[r].size() + 4);
    lses[r].resize(lses[r].size() + 1);
    step.partial_out[r] = parts[r].data();
    step.partial_lse[r] = lses[r].data();
  }
  step.partial_out_bytes = full.partial_out;
  step.partial_lse_bytes = full.partial_lse;
  step.out = out->data();
  step.out_bytes = full.out;
  step.out_scales = full.out_scales > 0
                        ? reinterpret_cast<float*>(out_scales->data())
                        : nullptr;
  step.out_scales_bytes = full.out_scales;
  step.out_lse =
      full.out_lse > 0 ? reinterpret_cast<float*>(out_lse->data()) : nullptr;
  step.out_lse_bytes = full.out_lse;
  const absl::Status s = merge_(step);
  if (!s.ok()) {
    std::fprintf(stderr, "harness: oracle merge failed: %s\n",
                 s.ToString().c_str());
    std::abort();
  }
  out->resize(full.out);
  out_scales->resize(full.out_scales);
  out_lse->resize(full.out_lse);
}

void Harness::ExpectedForRank(const StepSpec& spec, int rank,
                              std::vector<uint8_t>* out,
                              std::vector<uint8_t>* out_scales,
                              std::vector<uint8_t>* out_lse) const {
  std::vector<uint8_t> full_out, full_scales, full_lse;
  ExpectedFull(spec, &full_out, &full_scales, &full_lse);
  if (config_.return_mode == ReturnMode::kFull) {
    *out = full_out;
    *out_scales = full_scales;
    *out_lse = full_lse;
    return;
  }
  const HeadRange hr = RankHeads(config_, rank);
  const int64_t T = spec.num_tokens, H = config_.num_heads,
                D = config_.head_size, oe = config_.output_elem_bytes;
  out->clear();
  out_scales->clear();
  out_lse->clear();
  for (int64_t t = 0; t < T; ++t) {
    const uint8_t* row = full_out.data() + (t * H + hr.begin) * D * oe;
    out->insert(out->end(), row, row + hr.count * D * oe);
  }
  if (config_.scale_layout == ScaleLayout::kPerToken) {
    *out_scales = full_scales;
  } else if (config_.scale_layout == ScaleLayout::kPerGroup) {
    const int64_t g = D / config_.group_size;
    for (int64_t t = 0; t < T; ++t) {
      const uint8_t* row = full_scales.data() + (t * H + hr.begin) * g * 4;
      out_scales->insert(out_scales->end(), row, row + hr.count * g * 4);
    }
  }
  if (config_.return_lse) {
    if (config_.lse_layout == LseLayoutWire::kHeadsTokens) {
      const uint8_t* p = full_lse.data() + hr.begin * T * 4;
      out_lse->assign(p, p + hr.count * T * 4);
    } else {
      for (int64_t t = 0; t < T; ++t) {
        const uint8_t* row = full_lse.data() + (t * H + hr.begin) * 4;
        out_lse->insert(out_lse->end(), row, row + hr.count * 4);
      }
    }
  }
}

StepRun Harness::Run(const StepSpec& spec) {
  const int n = config_.num_parts;
  StepRun run;
  run.ranks.resize(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  std::vector<absl::Duration> rank_times(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    if (std::find(spec.absent.begin(), spec.absent.end(), r) !=
        spec.absent.end()) {
      run.ranks[static_cast<size_t>(r)].status =
          absl::AbortedError("absent from this step");
      continue;
    }
    threads.emplace_back([this, &spec, &run, &rank_times, r] {
      const absl::Time start = absl::Now();
      RankResult& result = run.ranks[static_cast<size_t>(r)];
      if (std::find(spec.raw_ranks.begin(), spec.raw_ranks.end(), r) !=
          spec.raw_ranks.end()) {
        result.status = spec.raw(r, *this);
        if (result.status.ok()) {
          result.status = rank_transports_[r]->Wait(absl::Now() +
                                                    spec.rank_timeout);
        }
        if (!result.status.ok()) {
          rank_transports_[r]->Abort(result.status.message());
        }
        rank_times[static_cast<size_t>(r)] = absl::Now() - start;
        return;
      }
      RankStep step;
      step.step_id = spec.step_id;
      step.layer_id = spec.layer_id;
      step.num_tokens = spec.num_tokens;
      if (spec.tweak) spec.tweak(r, &step);
      RankBuffers& b = buffers_[static_cast<size_t>(r)];
      std::vector<uint8_t> partial_out;
      std::vector<float> partial_lse;
      const int64_t tokens =
          std::min(std::max<int64_t>(step.num_tokens, 0), config_.max_tokens);
      InputsFor(config_, step.step_id, step.layer_id, r, tokens, &partial_out,
                &partial_lse);
      if (!partial_out.empty()) {
        std::memcpy(b.partial_out.data(), partial_out.data(),
                    partial_out.size());
        std::memcpy(b.partial_lse.data(), partial_lse.data(),
                    partial_lse.size() * sizeof(float));
      }
      // Sentinel, so bytes that never arrived show.
      std::memset(b.out.data(), 0xAB, b.out.bytes());
      std::memset(b.out_scales.data(), 0xAB, b.out_scales.bytes());
      std::memset(b.out_lse.data(), 0xAB, b.out_lse.bytes());
      step.partial_out = b.partial_out.data();
      step.partial_lse = b.partial_lse.as<float>();
      step.out = b.out.data();
      step.out_scales = b.out_scales.as<float>();
      step.out_lse = b.out_lse.as<float>();
      absl::StatusOr<StepTicket> ticket = ranks_[r]->EnqueueStep(step);
      if (!ticket.ok()) {
        result.status = ticket.status();
      } else {
        result.status = ranks_[r]->Complete(
            *ticket, absl::Now() + spec.rank_timeout, &result.response);
        const PayloadSizes& s = ticket->sizes;
        result.out = Bytes(b.out.data(), s.out);
        result.out_scales = Bytes(b.out_scales.data(), s.out_scales);
        result.out_lse = Bytes(b.out_lse.data(), s.out_lse);
      }
      rank_times[static_cast<size_t>(r)] = absl::Now() - start;
    });
  }
  const absl::Time start = absl::Now();
  run.server = server_->ServeStep(absl::Now() + spec.header_timeout);
  run.server_time = absl::Now() - start;
  if (!run.server.ok() && spec.control_plane_aborts) {
    // The server tells every rank over the control plane; each aborts.
    for (auto& t : rank_transports_) t->Abort(run.server.status().message());
  }
  for (auto& t : threads) t.join();
  for (const absl::Duration d : rank_times) {
    run.rank_time = std::max(run.rank_time, d);
  }
  return run;
}

bool AllPoisoned(const std::vector<uint8_t>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(),
                     [](uint8_t b) { return b == kPoisonByte; });
}

}  // namespace testing
}  // namespace transport
}  // namespace dcpmerge
