#include "server/grpc_response.h"

#include <cstring>
#include <string>
#include <utility>

#include "dcpmerge/v1/data.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/slice.h"

namespace dcpmerge {
namespace {

// The rank's answer but for a whole output: returns true when the rank gets
// r.output as it is (left out of *out); a head slice is filled in.
bool Fill(const StepResult& r, int32_t rank, v1::MergeResponse* out) {
  out->Clear();
  out->set_step(r.step);
  out->set_layer(r.layer);
  out->set_num_tokens(r.num_tokens);
  out->set_config_version(r.config_version);
  out->set_status_code(static_cast<int32_t>(r.status.code()));
  if (!r.status.ok() || r.config == nullptr) {
    out->set_status_message(std::string(r.status.message()));
    return false;
  }
  const GroupSpec& spec = r.config->spec;
  const int64_t T = r.num_tokens;
  const int64_t H = spec.num_heads;
  const int64_t D = spec.head_size;
  if (spec.head_slice && (rank < 0 || rank >= spec.num_parts)) {
    out->set_status_code(static_cast<int32_t>(absl::StatusCode::kInvalidArgument));
    out->set_status_message("header.rank: the stream is not bound to a rank of the group");
    return false;
  }
  const HeadRange heads = spec.Heads(rank);
  const int64_t hb = heads.begin, hc = heads.count;
  out->set_head_begin(heads.begin);
  out->set_head_count(heads.count);
  const int64_t es = spec.OutputElementBytes();
  if (hc == H) {
    for (float s : r.scales) out->add_scales(s);
    if (!r.lse.empty()) out->set_lse(r.lse.data(), r.lse.size() * sizeof(float));
    return true;
  }
  // Head slice: rows [hb, hb+hc) of every token.
  std::string* o = out->mutable_output();
  o->resize(T * hc * D * es);
  for (int64_t t = 0; t < T; ++t) {
    memcpy(o->data() + t * hc * D * es, r.output.data() + (t * H + hb) * D * es, hc * D * es);
  }
  if (spec.merge.output_mode == OutputMode::kFp8PerGroup) {
    const int64_t g = D / spec.merge.group_size;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < hc * g; ++i) out->add_scales(r.scales[(t * H + hb) * g + i]);
    }
  } else {
    for (float s : r.scales) out->add_scales(s);
  }
  if (!r.lse.empty()) {
    std::string* l = out->mutable_lse();
    l->resize(T * hc * sizeof(float));
    float* dst = reinterpret_cast<float*>(l->data());
    if (spec.merge.lse_layout == LseLayout::kHeadsTokens) {
      memcpy(dst, r.lse.data() + hb * T, hc * T * sizeof(float));
    } else {
      for (int64_t t = 0; t < T; ++t) memcpy(dst + t * hc, r.lse.data() + t * H + hb, hc * sizeof(float));
    }
  }
  return false;
}

}  // namespace

grpc::ByteBuffer SerializeResponse(std::shared_ptr<const StepResult> r, int32_t rank, uint64_t* payload_bytes) {
  v1::MergeResponse msg;
  const bool whole = Fill(*r, rank, &msg);
  *payload_bytes =
      (whole ? r->output.size() : msg.output().size()) + msg.lse().size() + msg.scales_size() * sizeof(float);
  std::string head = msg.SerializeAsString();
  if (!whole) {
    grpc::Slice slice(head);
    return grpc::ByteBuffer(&slice, 1);
  }
  // The output field after the others: parsers take fields in any order.
  {
    using google::protobuf::internal::WireFormatLite;
    google::protobuf::io::StringOutputStream stream(&head);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.WriteTag(WireFormatLite::MakeTag(v1::MergeResponse::kOutputFieldNumber,
                                           WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    coded.WriteVarint64(r->output.size());
  }
  const StepResult* raw = r.get();
  grpc::Slice slices[2] = {
      grpc::Slice(head),
      grpc::Slice(const_cast<uint8_t*>(raw->output.data()), raw->output.size(),
                  [](void* keep) { delete static_cast<std::shared_ptr<const StepResult>*>(keep); },
                  new std::shared_ptr<const StepResult>(std::move(r))),
  };
  return grpc::ByteBuffer(slices, 2);
}

}  // namespace dcpmerge
