#include "transport/rank_protocol.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dcpmerge {
namespace transport {

RankProtocol::RankProtocol(Transport* transport, const ProtocolConfig& config,
                           int slots)
    : transport_(transport),
      config_(config),
      rank_(transport->rank()),
      slots_(slots) {}

absl::StatusOr<std::unique_ptr<RankProtocol>> RankProtocol::Create(
    Transport* transport, const ProtocolConfig& config, int slots) {
  if (transport == nullptr) {
    return absl::InvalidArgumentError("RankProtocol: null transport");
  }
  absl::Status s = ValidateProtocolConfig(config);
  if (!s.ok()) return s;
  if (transport->num_parties() != config.num_parts + 1 ||
      transport->rank() < 0 || transport->rank() >= config.num_parts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RankProtocol: transport is rank ", transport->rank(), " of ",
        transport->num_parties(), "; config needs a DCP rank < ",
        config.num_parts, " of ", config.num_parts + 1));
  }
  if (slots < 1 || slots > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("RankProtocol: slots ", slots, " outside 1..1024"));
  }
  std::unique_ptr<RankProtocol> p(new RankProtocol(transport, config, slots));
  const size_t n = static_cast<size_t>(slots);
  absl::StatusOr<Buffer> b = transport->AllocateHost(n * sizeof(StepHeader));
  if (!b.ok()) return b.status();
  p->header_host_ = std::move(*b);
  b = transport->AllocateDevice(n * sizeof(StepHeader));
  if (!b.ok()) return b.status();
  p->header_dev_ = std::move(*b);
  b = transport->AllocateHost(n * sizeof(ResponseHeader));
  if (!b.ok()) return b.status();
  p->response_host_ = std::move(*b);
  b = transport->AllocateDevice(n * sizeof(ResponseHeader));
  if (!b.ok()) return b.status();
  p->response_dev_ = std::move(*b);
  std::memset(p->response_host_.data(), 0, n * sizeof(ResponseHeader));
  return p;
}

PayloadSizes RankProtocol::Sizes(int64_t num_tokens) const {
  return RankPayloadSizes(config_, rank_, num_tokens);
}

absl::StatusOr<StepTicket> RankProtocol::EnqueueStep(const RankStep& step) {
  if (step.num_tokens < 0 || step.num_tokens > config_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_tokens: ", step.num_tokens, " is outside 0..max_tokens (",
        config_.max_tokens, ")"));
  }
  if (config_.shape_mode == ShapeMode::kFixed &&
      step.num_tokens != config_.fixed_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: ", step.num_tokens,
                     ", fixed-shape mode expects ", config_.fixed_tokens));
  }
  const PayloadSizes sizes = Sizes(step.num_tokens);
  struct Need {
    const char* name;
    const void* ptr;
    uint64_t bytes;
  };
  const Need needs[] = {
      {"partial_out", step.partial_out, sizes.partial_out},
      {"partial_lse", step.partial_lse, sizes.partial_lse},
      {"out", step.out, sizes.out},
      {"out_scales", step.out_scales, sizes.out_scales},
      {"out_lse", step.out_lse, sizes.out_lse},
  };
  for (const Need& need : needs) {
    if (need.bytes > 0 && need.ptr == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          need.name, ": null, but the step moves ", need.bytes, " bytes"));
    }
  }

  const int slot = next_slot_;
  next_slot_ = (next_slot_ + 1) % slots_;
  const size_t us = static_cast<size_t>(slot);
  StepHeader h = NewStepHeader();
  h.step_id = step.step_id;
  h.layer_id = step.layer_id;
  h.rank = rank_;
  h.num_tokens = step.num_tokens;
  h.config_version = step.expect_config_version;
  h.partial_out_bytes = sizes.partial_out;
  h.partial_lse_bytes = sizes.partial_lse;
  h.out_bytes = sizes.out;
  h.out_scale_bytes = sizes.out_scales;
  h.out_lse_bytes = sizes.out_lse;
  std::memcpy(header_host_.as<StepHeader>() + us, &h, sizeof(h));
  // A stale response in the slot must not read as this step's answer.
  std::memset(response_host_.as<ResponseHeader>() + us, 0,
              sizeof(ResponseHeader));

  StepHeader* hdr_dev = header_dev_.as<StepHeader>() + us;
  ResponseHeader* resp_dev = response_dev_.as<ResponseHeader>() + us;
  const int server = config_.num_parts;
  absl::Status s = transport_->Copy(hdr_dev, header_host_.as<StepHeader>() + us,
                                    sizeof(StepHeader));
  if (!s.ok()) return s;
  s = transport_->GroupStart();
  if (!s.ok()) return s;
  s.Update(transport_->Send(hdr_dev, sizeof(StepHeader), server));
  s.Update(transport_->Send(step.partial_out, sizes.partial_out, server));
  s.Update(transport_->Send(step.partial_lse, sizes.partial_lse, server));
  s.Update(transport_->GroupEnd());
  if (!s.ok()) return s;
  s = transport_->GroupStart();
  if (!s.ok()) return s;
  s.Update(transport_->Recv(resp_dev, sizeof(ResponseHeader), server));
  s.Update(transport_->Recv(step.out, sizes.out, server));
  s.Update(transport_->Recv(step.out_scales, sizes.out_scales, server));
  s.Update(transport_->Recv(step.out_lse, sizes.out_lse, server));
  s.Update(transport_->GroupEnd());
  if (!s.ok()) return s;
  s = transport_->Copy(response_host_.as<ResponseHeader>() + us, resp_dev,
                       sizeof(ResponseHeader));
  if (!s.ok()) return s;

  StepTicket ticket;
  ticket.step_id = step.step_id;
  ticket.slot = slot;
  ticket.sizes = sizes;
  return ticket;
}

absl::Status RankProtocol::CheckResponse(const StepTicket& ticket,
                                         ResponseHeader* response) const {
  if (ticket.slot < 0 || ticket.slot >= slots_) {
    return absl::InvalidArgumentError("CheckResponse: invalid ticket");
  }
  ResponseHeader h;
  std::memcpy(&h, response_host_.as<ResponseHeader>() + ticket.slot,
              sizeof(h));
  if (response != nullptr) *response = h;
  absl::Status framing = CheckResponseFraming(h);
  if (!framing.ok()) {
    return absl::InternalError(absl::StrCat(
        "no valid response for step ", ticket.step_id,
        " (has the step completed?): ", framing.message()));
  }
  if (h.step_id != ticket.step_id) {
    return absl::InternalError(absl::StrCat("response is for step ", h.step_id,
                                            ", expected step ",
                                            ticket.step_id));
  }
  absl::Status status = ResponseStatus(h);
  if (!status.ok()) return status;
  if (h.out_bytes != ticket.sizes.out ||
      h.out_scale_bytes != ticket.sizes.out_scales ||
      h.out_lse_bytes != ticket.sizes.out_lse) {
    return absl::InternalError(absl::StrCat(
        "response sizes (", h.out_bytes, ", ", h.out_scale_bytes, ", ",
        h.out_lse_bytes, ") differ from the step's (", ticket.sizes.out, ", ",
        ticket.sizes.out_scales, ", ", ticket.sizes.out_lse, ")"));
  }
  return absl::OkStatus();
}

absl::Status RankProtocol::Complete(const StepTicket& ticket,
                                    absl::Time deadline,
                                    ResponseHeader* response) {
  absl::Status s = transport_->Wait(deadline);
  if (!s.ok()) {
    transport_->Abort(absl::StrCat("rank ", rank_, " step ", ticket.step_id,
                                   ": ", s.ToString()));
    return s;
  }
  return CheckResponse(ticket, response);
}

absl::Status RankProtocol::RewriteHeader(StepTicket* ticket, uint64_t step_id,
                                         int32_t layer_id) {
  if (ticket == nullptr || ticket->slot < 0 || ticket->slot >= slots_) {
    return absl::InvalidArgumentError("RewriteHeader: invalid ticket");
  }
  StepHeader* h = header_host_.as<StepHeader>() + ticket->slot;
  h->step_id = step_id;
  h->layer_id = layer_id;
  std::memset(response_host_.as<ResponseHeader>() + ticket->slot, 0,
              sizeof(ResponseHeader));
  ticket->step_id = step_id;
  return absl::OkStatus();
}

}  // namespace transport
}  // namespace dcpmerge
