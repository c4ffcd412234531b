#include "transport/server_protocol.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dcpmerge {
namespace transport {

namespace {

constexpr uint64_t kAlign = 256;

uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

char* Ptr(const Buffer& b, uint64_t offset) {
  return static_cast<char*>(b.data()) + offset;
}

struct SizeField {
  const char* name;
  uint64_t StepHeader::*declared;
  uint64_t PayloadSizes::*size;
};

constexpr SizeField kSizeFields[] = {
    {"partial_out_bytes", &StepHeader::partial_out_bytes,
     &PayloadSizes::partial_out},
    {"partial_lse_bytes", &StepHeader::partial_lse_bytes,
     &PayloadSizes::partial_lse},
    {"out_bytes", &StepHeader::out_bytes, &PayloadSizes::out},
    {"out_scale_bytes", &StepHeader::out_scale_bytes,
     &PayloadSizes::out_scales},
    {"out_lse_bytes", &StepHeader::out_lse_bytes, &PayloadSizes::out_lse},
};

absl::Status Violation(int rank, const std::string& what) {
  return absl::UnavailableError(
      absl::StrCat("protocol violation by rank ", rank, ": ", what));
}

// Compares one field of every rank's header with rank 0's.
template <typename T>
absl::Status SameAcrossRanks(const char* name, const StepHeader* h, int n,
                             T StepHeader::*field) {
  for (int r = 1; r < n; ++r) {
    if (h[r].*field != h[0].*field) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": rank ", r, " sent ", h[r].*field, ", rank 0 sent ",
          h[0].*field));
    }
  }
  return absl::OkStatus();
}

bool SameConfig(const ProtocolConfig& a, const ProtocolConfig& b) {
  return a.config_version == b.config_version && a.num_parts == b.num_parts &&
         a.num_heads == b.num_heads && a.head_size == b.head_size &&
         a.max_tokens == b.max_tokens &&
         a.input_elem_bytes == b.input_elem_bytes &&
         a.output_elem_bytes == b.output_elem_bytes &&
         a.scale_layout == b.scale_layout && a.group_size == b.group_size &&
         a.return_lse == b.return_lse && a.lse_layout == b.lse_layout &&
         a.return_mode == b.return_mode && a.shape_mode == b.shape_mode &&
         a.fixed_tokens == b.fixed_tokens;
}

}  // namespace

PayloadSizes DeclaredSizes(const StepHeader& h) {
  PayloadSizes s;
  s.partial_out = h.partial_out_bytes;
  s.partial_lse = h.partial_lse_bytes;
  s.out = h.out_bytes;
  s.out_scales = h.out_scale_bytes;
  s.out_lse = h.out_lse_bytes;
  return s;
}

absl::Status ServerProtocol::Validate(const ProtocolConfig& config,
                                      const StepHeader* h, int n) {
  // Violations first: anything that makes the rank's sends unmatchable.
  for (int r = 0; r < n; ++r) {
    absl::Status framing = CheckStepFraming(h[r]);
    if (!framing.ok()) return Violation(r, std::string(framing.message()));
    const PayloadSizes max = RankPayloadSizes(config, r, config.max_tokens);
    for (const SizeField& f : kSizeFields) {
      if (h[r].*f.declared > max.*f.size) {
        return Violation(
            r, absl::StrCat("declared ", f.name, "=", h[r].*f.declared,
                            ", beyond the configured maximum ", max.*f.size,
                            " (max_tokens=", config.max_tokens, ")"));
      }
    }
    if (config.shape_mode == ShapeMode::kFixed) {
      // The server posted these receives before reading the header.
      const PayloadSizes fixed =
          RankPayloadSizes(config, r, config.fixed_tokens);
      for (int i = 0; i < 2; ++i) {
        const SizeField& f = kSizeFields[i];
        if (h[r].*f.declared != fixed.*f.size) {
          return Violation(
              r, absl::StrCat("declared ", f.name, "=", h[r].*f.declared,
                              " in fixed-shape mode, which receives ",
                              fixed.*f.size, " (fixed_tokens=",
                              config.fixed_tokens, ")"));
        }
      }
    }
  }
  // The step is matchable; now is it consistent?
  for (int r = 0; r < n; ++r) {
    if (h[r].rank != r) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank: peer ", r, " sent rank ", h[r].rank));
    }
    if (h[r].flags != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "flags: rank ", r, " sent 0x", absl::Hex(h[r].flags), ", wire version ",
          kWireVersion, " defines none"));
    }
  }
  for (int r = 0; r < n; ++r) {
    if (h[r].config_version != 0 &&
        h[r].config_version != config.config_version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "config_version: rank ", r, " expects ", h[r].config_version,
          ", server has ", config.config_version));
    }
  }
  absl::Status s = SameAcrossRanks("step_id", h, n, &StepHeader::step_id);
  if (!s.ok()) return s;
  s = SameAcrossRanks("layer_id", h, n, &StepHeader::layer_id);
  if (!s.ok()) return s;
  s = SameAcrossRanks("num_tokens", h, n, &StepHeader::num_tokens);
  if (!s.ok()) return s;
  const int64_t t = h[0].num_tokens;
  if (t < 0 || t > config.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_tokens: rank 0 sent ", t, ", outside 0..max_tokens (",
        config.max_tokens, ")"));
  }
  if (config.shape_mode == ShapeMode::kFixed && t != config.fixed_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: rank 0 sent ", t,
                     ", fixed-shape mode expects ", config.fixed_tokens));
  }
  for (int r = 0; r < n; ++r) {
    const PayloadSizes implied = RankPayloadSizes(config, r, t);
    for (const SizeField& f : kSizeFields) {
      if (h[r].*f.declared != implied.*f.size) {
        return absl::InvalidArgumentError(absl::StrCat(
            f.name, ": rank ", r, " declared ", h[r].*f.declared,
            ", num_tokens=", t, " implies ", implied.*f.size));
      }
    }
  }
  return absl::OkStatus();
}

ServerProtocol::ServerProtocol(Transport* transport, MergeFn merge,
                               ServerOptions options)
    : transport_(transport),
      merge_(std::move(merge)),
      options_(std::move(options)) {}

ServerProtocol::~ServerProtocol() = default;

absl::StatusOr<std::unique_ptr<ServerProtocol>> ServerProtocol::Create(
    Transport* transport, const ProtocolConfig& config, MergeFn merge,
    ServerOptions options) {
  if (transport == nullptr) {
    return absl::InvalidArgumentError("ServerProtocol: null transport");
  }
  if (!merge) {
    return absl::InvalidArgumentError("ServerProtocol: null merge callback");
  }
  std::unique_ptr<ServerProtocol> p(
      new ServerProtocol(transport, std::move(merge), std::move(options)));
  absl::Status s = p->Reconfigure(config);
  if (!s.ok()) return s;
  return p;
}

absl::Status ServerProtocol::Reconfigure(const ProtocolConfig& config) {
  absl::Status s = ValidateProtocolConfig(config);
  if (!s.ok()) return s;
  if (transport_->num_parties() != config.num_parts + 1 ||
      transport_->rank() != config.num_parts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_parts: ", config.num_parts, " ranks need a communicator of ",
        config.num_parts + 1, " with the server as rank ", config.num_parts,
        "; the transport is rank ", transport_->rank(), " of ",
        transport_->num_parties()));
  }
  ProtocolConfig same = config;
  same.config_version = config_.config_version;
  if (!max_sizes_.empty() && SameConfig(same, config_)) {
    config_ = config;  // sizes unchanged: keep the buffers
    return absl::OkStatus();
  }
  config_ = config;
  return Allocate();
}

absl::Status ServerProtocol::Allocate() {
  const int n = config_.num_parts;
  max_sizes_.clear();
  for (int r = 0; r < n; ++r) {
    max_sizes_.push_back(RankPayloadSizes(config_, r, config_.max_tokens));
  }
  full_max_ = FullPayloadSizes(config_, config_.max_tokens);
  part_out_stride_ = RoundUp(full_max_.partial_out);
  part_lse_stride_ = RoundUp(full_max_.partial_lse);
  slice_out_stride_ = slice_scales_stride_ = slice_lse_stride_ = 0;
  for (const PayloadSizes& m : max_sizes_) {
    slice_out_stride_ = std::max(slice_out_stride_, RoundUp(m.out));
    slice_scales_stride_ = std::max(slice_scales_stride_, RoundUp(m.out_scales));
    slice_lse_stride_ = std::max(slice_lse_stride_, RoundUp(m.out_lse));
  }
  const bool slices = config_.return_mode == ReturnMode::kHeadSlice;
  const uint64_t un = static_cast<uint64_t>(n);
  const uint64_t poison_bytes =
      std::max({full_max_.out, full_max_.out_scales, full_max_.out_lse,
                uint64_t{1}});

  struct Want {
    Buffer* buffer;
    uint64_t bytes;
    bool host;
  };
  const Want wants[] = {
      {&headers_dev_, un * sizeof(StepHeader), false},
      {&headers_host_, un * sizeof(StepHeader), true},
      {&responses_dev_, un * sizeof(ResponseHeader), false},
      {&responses_host_, un * sizeof(ResponseHeader), true},
      {&partial_out_, un * part_out_stride_, false},
      {&partial_lse_, un * part_lse_stride_, false},
      {&out_, full_max_.out, false},
      {&out_scales_, full_max_.out_scales, false},
      {&out_lse_, full_max_.out_lse, false},
      {&slice_out_, slices ? un * slice_out_stride_ : 0, false},
      {&slice_scales_, slices ? un * slice_scales_stride_ : 0, false},
      {&slice_lse_, slices ? un * slice_lse_stride_ : 0, false},
      {&poison_, poison_bytes, false},
  };
  for (const Want& w : wants) {
    w.buffer->Reset();
    absl::StatusOr<Buffer> b = w.host ? transport_->AllocateHost(w.bytes)
                                      : transport_->AllocateDevice(w.bytes);
    if (!b.ok()) return b.status();
    *w.buffer = std::move(*b);
  }
  absl::Status s = transport_->Fill(poison_.data(), kPoisonByte, poison_bytes);
  if (s.ok()) s = transport_->Wait(absl::Now() + absl::Seconds(30));
  return s;
}

absl::Status ServerProtocol::Fail(const absl::Status& cause,
                                  absl::string_view phase) {
  const std::string why =
      absl::StrCat("step failed ", phase, ": ",
                   absl::StatusCodeToString(cause.code()), ": ",
                   cause.message());
  transport_->Abort(why);
  return absl::UnavailableError(absl::StrCat(why, "; communicator aborted"));
}

absl::Status ServerProtocol::PostPayloadRecvs(
    const std::vector<PayloadSizes>& sizes) {
  absl::Status s = transport_->GroupStart();
  if (!s.ok()) return s;
  for (int r = 0; r < config_.num_parts; ++r) {
    const uint64_t ur = static_cast<uint64_t>(r);
    s.Update(transport_->Recv(Ptr(partial_out_, ur * part_out_stride_),
                              sizes[ur].partial_out, r));
    s.Update(transport_->Recv(Ptr(partial_lse_, ur * part_lse_stride_),
                              sizes[ur].partial_lse, r));
  }
  s.Update(transport_->GroupEnd());
  return s;
}

absl::Status ServerProtocol::SendResponses(
    const std::vector<PayloadSizes>& sizes, const absl::Status& step_status,
    const MergeStep& merged) {
  const int n = config_.num_parts;
  const bool ok = step_status.ok();
  const bool slices = config_.return_mode == ReturnMode::kHeadSlice;
  const StepHeader* req = headers_host_.as<StepHeader>();
  ResponseHeader* resp = responses_host_.as<ResponseHeader>();
  for (int r = 0; r < n; ++r) {
    const HeadRange heads = RankHeads(config_, r);
    ResponseHeader h = NewResponseHeader();
    h.step_id = req[r].step_id;
    h.layer_id = req[r].layer_id;
    h.config_version = config_.config_version;
    h.num_tokens = req[r].num_tokens;
    h.out_bytes = sizes[static_cast<size_t>(r)].out;
    h.out_scale_bytes = sizes[static_cast<size_t>(r)].out_scales;
    h.out_lse_bytes = sizes[static_cast<size_t>(r)].out_lse;
    h.head_begin = heads.begin;
    h.head_count = heads.count;
    if (ok) {
      h.scale_count = static_cast<uint32_t>(
          RankScaleCount(config_, r, merged.num_tokens));
      h.static_scale = merged.static_scale_used;
    }
    SetResponseStatus(step_status, &h);
    std::memcpy(&resp[r], &h, sizeof(h));
  }
  absl::Status s = transport_->Copy(responses_dev_.data(),
                                    responses_host_.data(),
                                    static_cast<size_t>(n) * sizeof(ResponseHeader));
  if (!s.ok()) return s;

  // Where each rank's payload comes from.
  std::vector<const void*> src_out(static_cast<size_t>(n), out_.data());
  std::vector<const void*> src_scales(static_cast<size_t>(n), out_scales_.data());
  std::vector<const void*> src_lse(static_cast<size_t>(n), out_lse_.data());
  if (!ok) {
    std::fill(src_out.begin(), src_out.end(), poison_.data());
    std::fill(src_scales.begin(), src_scales.end(), poison_.data());
    std::fill(src_lse.begin(), src_lse.end(), poison_.data());
  } else if (slices) {
    const uint64_t t = static_cast<uint64_t>(merged.num_tokens);
    const uint64_t d = static_cast<uint64_t>(config_.head_size);
    const uint64_t hh = static_cast<uint64_t>(config_.num_heads);
    const uint64_t oe = static_cast<uint64_t>(config_.output_elem_bytes);
    for (int r = 0; r < n; ++r) {
      const uint64_t ur = static_cast<uint64_t>(r);
      const HeadRange heads = RankHeads(config_, r);
      const uint64_t h0 = static_cast<uint64_t>(heads.begin);
      const uint64_t hr = static_cast<uint64_t>(heads.count);
      char* dst_out = Ptr(slice_out_, ur * slice_out_stride_);
      s.Update(transport_->Copy2D(dst_out, hr * d * oe,
                                  Ptr(out_, h0 * d * oe), hh * d * oe,
                                  hr * d * oe, t));
      src_out[ur] = dst_out;
      if (config_.scale_layout == ScaleLayout::kPerGroup) {
        const uint64_t g = static_cast<uint64_t>(config_.head_size /
                                                 config_.group_size);
        char* dst = Ptr(slice_scales_, ur * slice_scales_stride_);
        s.Update(transport_->Copy2D(dst, hr * g * 4,
                                    Ptr(out_scales_, h0 * g * 4), hh * g * 4,
                                    hr * g * 4, t));
        src_scales[ur] = dst;
      }  // kPerToken: every rank gets all T scales, straight from out_scales_
      if (config_.return_lse) {
        char* dst = Ptr(slice_lse_, ur * slice_lse_stride_);
        if (config_.lse_layout == LseLayoutWire::kHeadsTokens) {
          s.Update(transport_->Copy(dst, Ptr(out_lse_, h0 * t * 4), hr * t * 4));
        } else {
          s.Update(transport_->Copy2D(dst, hr * 4, Ptr(out_lse_, h0 * 4),
                                      hh * 4, hr * 4, t));
        }
        src_lse[ur] = dst;
      }
    }
    if (!s.ok()) return s;
  }

  s = transport_->GroupStart();
  if (!s.ok()) return s;
  for (int r = 0; r < n; ++r) {
    const size_t ur = static_cast<size_t>(r);
    s.Update(transport_->Send(Ptr(responses_dev_, ur * sizeof(ResponseHeader)),
                              sizeof(ResponseHeader), r));
    s.Update(transport_->Send(src_out[ur], sizes[ur].out, r));
    s.Update(transport_->Send(src_scales[ur], sizes[ur].out_scales, r));
    s.Update(transport_->Send(src_lse[ur], sizes[ur].out_lse, r));
  }
  s.Update(transport_->GroupEnd());
  return s;
}

absl::StatusOr<StepOutcome> ServerProtocol::ServeStep(
    absl::Time header_deadline) {
  if (transport_->aborted()) {
    return absl::FailedPreconditionError(
        "ServeStep: the communicator was aborted; re-form it");
  }
  const int n = config_.num_parts;
  const size_t un = static_cast<size_t>(n);
  const bool fixed = config_.shape_mode == ShapeMode::kFixed;
  const absl::Time t0 = absl::Now();

  // 1. Headers (and, in fixed-shape mode, the payloads with them).
  std::vector<PayloadSizes> fixed_sizes;
  if (fixed) {
    for (int r = 0; r < n; ++r) {
      fixed_sizes.push_back(RankPayloadSizes(config_, r, config_.fixed_tokens));
    }
  }
  absl::Status s = transport_->GroupStart();
  if (s.ok()) {
    for (int r = 0; r < n; ++r) {
      s.Update(transport_->Recv(
          Ptr(headers_dev_, static_cast<uint64_t>(r) * sizeof(StepHeader)),
          sizeof(StepHeader), r));
    }
    if (fixed) {
      for (int r = 0; r < n; ++r) {
        const uint64_t ur = static_cast<uint64_t>(r);
        s.Update(transport_->Recv(Ptr(partial_out_, ur * part_out_stride_),
                                  fixed_sizes[ur].partial_out, r));
        s.Update(transport_->Recv(Ptr(partial_lse_, ur * part_lse_stride_),
                                  fixed_sizes[ur].partial_lse, r));
      }
    }
    s.Update(transport_->GroupEnd());
  }
  if (s.ok()) {
    s = transport_->Copy(headers_host_.data(), headers_dev_.data(),
                         un * sizeof(StepHeader));
  }
  if (s.ok()) s = transport_->Wait(header_deadline);
  if (!s.ok()) return Fail(s, "waiting for the step headers");

  const absl::Time t1 = absl::Now();
  const absl::Time step_deadline = t1 + options_.step_timeout;
  const StepHeader* headers = headers_host_.as<StepHeader>();
  if (options_.step_version) {
    const uint64_t version = options_.step_version();
    if (version != 0) config_.config_version = version;
  }

  // 2. Check them.
  absl::Status step_status = Validate(config_, headers, n);
  if (absl::IsUnavailable(step_status)) {
    transport_->Abort(step_status.message());
    return absl::UnavailableError(
        absl::StrCat(step_status.message(), "; communicator aborted"));
  }
  StepOutcome outcome;
  outcome.step_id = headers[0].step_id;
  outcome.layer_id = headers[0].layer_id;
  outcome.num_tokens = headers[0].num_tokens;
  outcome.header_wait = t1 - t0;
  std::vector<PayloadSizes> declared;
  for (int r = 0; r < n; ++r) declared.push_back(DeclaredSizes(headers[r]));

  // 3. Payloads: received, or drained if the step is rejected.
  if (!fixed) {
    s = PostPayloadRecvs(declared);
    if (!s.ok()) return Fail(s, "posting the payload receives");
  }
  outcome.drained = !step_status.ok();

  // 4. Merge.
  MergeStep step;
  step.step_id = headers[0].step_id;
  step.layer_id = headers[0].layer_id;
  step.num_tokens = headers[0].num_tokens;
  if (step_status.ok()) {
    if (options_.sync_before_merge && !fixed) {
      s = transport_->Wait(step_deadline);
      if (!s.ok()) return Fail(s, "receiving the payloads");
    }
    const PayloadSizes full = FullPayloadSizes(config_, step.num_tokens);
    step.config = &config_;
    step.num_parts = n;
    for (int r = 0; r < n; ++r) {
      const uint64_t ur = static_cast<uint64_t>(r);
      step.partial_out[r] = Ptr(partial_out_, ur * part_out_stride_);
      step.partial_lse[r] = reinterpret_cast<const float*>(
          Ptr(partial_lse_, ur * part_lse_stride_));
    }
    step.partial_out_bytes = full.partial_out;
    step.partial_lse_bytes = full.partial_lse;
    step.out = out_.data();
    step.out_bytes = full.out;
    step.out_scales = full.out_scales > 0 ? out_scales_.as<float>() : nullptr;
    step.out_scales_bytes = full.out_scales;
    step.out_lse = full.out_lse > 0 ? out_lse_.as<float>() : nullptr;
    step.out_lse_bytes = full.out_lse;
    step.queue = transport_->native_queue();
    step_status = merge_(step);
    if (absl::IsUnavailable(step_status) && transport_->aborted()) {
      return Fail(step_status, "in the merge");
    }
  }

  // 5. Answer every rank, 6. and wait until they all have it.
  s = SendResponses(declared, step_status, step);
  if (s.ok()) s = transport_->Wait(step_deadline);
  if (!s.ok()) return Fail(s, "delivering the responses");

  outcome.step_status = step_status;
  outcome.step_time = absl::Now() - t1;
  ++steps_served_;
  return outcome;
}

}  // namespace transport
}  // namespace dcpmerge
