// The NCCL data plane's wire headers (transport/wire.h) as their readers
// decode them: the server checks a step's N StepHeaders
// (ServerProtocol::Validate) before it posts any payload receive, and a rank
// reads the ResponseHeader the server sent back.
//
// Input: one byte choosing a configuration (WireConfigs, modulo their count),
// the StepHeaders of that configuration's N ranks (96 bytes each), then one
// ResponseHeader (256 bytes); bytes past the end of the input read as 0.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/head_slice.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_configs.h"
#include "transport/layout.h"
#include "transport/server_protocol.h"
#include "transport/wire.h"

namespace dcpmerge::transport {
namespace {

// What rank r's five buffers hold for t tokens, from layout.h's table (an
// oracle written apart from layout.cc).
PayloadSizes Expected(const ProtocolConfig& c, int r, int64_t t) {
  const uint64_t T = static_cast<uint64_t>(t), H = c.num_heads, D = c.head_size;
  const uint64_t h = c.return_mode == ReturnMode::kFull ? H : HeadSlice(c.num_heads, c.num_parts, r).count;
  PayloadSizes s;
  s.partial_out = T * H * D * c.input_elem_bytes;
  s.partial_lse = T * H * 4;
  s.out = T * h * D * c.output_elem_bytes;
  if (c.scale_layout == ScaleLayout::kPerToken) s.out_scales = T * 4;
  if (c.scale_layout == ScaleLayout::kPerGroup) s.out_scales = T * h * (D / c.group_size) * 4;
  s.out_lse = c.return_lse ? T * h * 4 : 0;
  return s;
}

bool Within(const PayloadSizes& a, const PayloadSizes& b) {
  return a.partial_out <= b.partial_out && a.partial_lse <= b.partial_lse && a.out <= b.out &&
         a.out_scales <= b.out_scales && a.out_lse <= b.out_lse;
}

// A header that passes the framing check is what NewStepHeader and its
// fields encode: the writer and the reader agree on every byte.
void CheckStepRoundTrip(const StepHeader& h) {
  if (!CheckStepFraming(h).ok()) return;
  StepHeader e = NewStepHeader();
  e.step_id = h.step_id;
  e.layer_id = h.layer_id;
  e.rank = h.rank;
  e.num_tokens = h.num_tokens;
  e.config_version = h.config_version;
  e.partial_out_bytes = h.partial_out_bytes;
  e.partial_lse_bytes = h.partial_lse_bytes;
  e.out_bytes = h.out_bytes;
  e.out_scale_bytes = h.out_scale_bytes;
  e.out_lse_bytes = h.out_lse_bytes;
  e.flags = h.flags;
  e.reserved0 = h.reserved0;
  e.reserved1 = h.reserved1;
  FUZZ_CHECK(std::memcmp(&e, &h, sizeof(h)) == 0, "re-encoded step header differs");
}

void CheckStep(const ProtocolConfig& c, const StepHeader* h) {
  const int n = c.num_parts;
  const absl::Status s = ServerProtocol::Validate(c, h, n);
  // Anything but a protocol violation is still received (drained) into the
  // per-rank buffers, which hold max_tokens: every declared size must fit.
  if (!absl::IsUnavailable(s)) {
    for (int r = 0; r < n; ++r) {
      FUZZ_CHECK(CheckStepFraming(h[r]).ok(), s.ToString());
      FUZZ_CHECK(Within(DeclaredSizes(h[r]), Expected(c, r, c.max_tokens)),
                 absl::StrCat("rank ", r, " declares more than max_tokens allows, yet: ", s.ToString()));
    }
  }
  if (!s.ok()) return;
  const int64_t t = h[0].num_tokens;
  FUZZ_CHECK(t >= 0 && t <= c.max_tokens, absl::StrCat("num_tokens ", t));
  if (c.shape_mode == ShapeMode::kFixed) FUZZ_CHECK(t == c.fixed_tokens, absl::StrCat("num_tokens ", t));
  for (int r = 0; r < n; ++r) {
    FUZZ_CHECK(h[r].rank == r && h[r].flags == 0, absl::StrCat("rank ", r));
    FUZZ_CHECK(h[r].step_id == h[0].step_id && h[r].layer_id == h[0].layer_id && h[r].num_tokens == t,
               absl::StrCat("rank ", r, " disagrees with rank 0"));
    FUZZ_CHECK(h[r].config_version == 0 || h[r].config_version == c.config_version, absl::StrCat("rank ", r));
    FUZZ_CHECK(DeclaredSizes(h[r]) == Expected(c, r, t), absl::StrCat("rank ", r, "'s sizes, num_tokens ", t));
  }
}

void CheckResponse(const ResponseHeader& h) {
  const absl::string_view message = ResponseMessage(h);
  FUZZ_CHECK(message.size() <= kResponseMessageBytes && message.find('\0') == absl::string_view::npos,
             "message runs past its array or holds a NUL");
  const absl::Status s = ResponseStatus(h);
  // A corrupted header must never read as OK.
  FUZZ_CHECK(s.ok() == (h.status_code == 0), absl::StrCat("status_code ", h.status_code, " reads as ", s.ToString()));
  if (h.status_code > 0 && h.status_code <= 16) {
    FUZZ_CHECK(static_cast<int>(s.code()) == h.status_code && s.message() == message, s.ToString());
  }
  // What the server writes for that status reads back as it, the message
  // cut to what the array holds.
  ResponseHeader e = NewResponseHeader();
  SetResponseStatus(s, &e);
  FUZZ_CHECK(CheckResponseFraming(e).ok(), "NewResponseHeader's framing");
  const absl::Status back = ResponseStatus(e);
  const size_t kept = std::min(s.message().size(), kResponseMessageBytes - 1);
  FUZZ_CHECK(back.code() == s.code() && back.message() == s.message().substr(0, kept),
             absl::StrCat(s.ToString(), " read back as ", back.ToString()));
}

void FuzzOne(const uint8_t* data, size_t size) {
  static const std::vector<ProtocolConfig>* const configs = new std::vector<ProtocolConfig>(fuzz::WireConfigs());
  if (size == 0) return;
  const ProtocolConfig& config = (*configs)[data[0] % configs->size()];
  FUZZ_CHECK(ValidateProtocolConfig(config).ok(), DescribeConfig(config));
  StepHeader steps[kMaxParts];
  ResponseHeader response;
  const size_t step_bytes = sizeof(StepHeader) * config.num_parts;
  uint8_t bytes[sizeof(steps) + sizeof(response)] = {};
  std::memcpy(bytes, data + 1, std::min(size - 1, step_bytes + sizeof(response)));
  std::memcpy(steps, bytes, step_bytes);
  std::memcpy(&response, bytes + step_bytes, sizeof(response));
  for (int r = 0; r < config.num_parts; ++r) CheckStepRoundTrip(steps[r]);
  CheckStep(config, steps);
  CheckResponse(response);
}

}  // namespace
}  // namespace dcpmerge::transport

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpmerge::transport::FuzzOne(data, size);
  return 0;
}
