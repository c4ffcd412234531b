// Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/):
// small valid inputs, and a few the decoders reject for a reason, made with
// the project's own encoders so they stay valid as the formats change.
//
//   bazel run //tests/fuzz:make_corpus -- "$PWD/tests/fuzz/corpus"
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "capi/json.h"
#include "common/group_spec.h"
#include "dcpmerge/v1/admin.pb.h"
#include "dcpmerge/v1/data.pb.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/delimited_message_util.h"
#include "server/config_store.h"
#include "server/state_file.h"
#include "tests/fuzz/fuzz_configs.h"
#include "transport/layout.h"
#include "transport/wire.h"

namespace dcpmerge::fuzz {
namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "make_corpus: %s\n", what.c_str());
  std::exit(1);
}

class Corpus {
 public:
  explicit Corpus(std::string root) : root_(std::move(root)) {}

  void Add(const std::string& target, const std::string& name, const std::string& bytes) const {
    const std::string dir = absl::StrCat(root_, "/", target);
    mkdir(root_.c_str(), 0755);
    mkdir(dir.c_str(), 0755);
    std::ofstream out(absl::StrCat(dir, "/", name), std::ios::binary | std::ios::trunc);
    out << bytes;
    if (!out.flush()) Die(absl::StrCat("cannot write ", dir, "/", name));
  }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

template <typename T>
std::string Raw(const T& value) {
  return std::string(reinterpret_cast<const char*>(&value), sizeof(value));
}

// The wire target: config selector, the N step headers, a response header.
void WireSeeds(const Corpus& corpus) {
  using transport::ProtocolConfig;
  const std::vector<ProtocolConfig> configs = WireConfigs();
  for (size_t v = 0; v < configs.size(); ++v) {
    const ProtocolConfig& c = configs[v];
    const int64_t t = c.shape_mode == transport::ShapeMode::kFixed ? c.fixed_tokens : 3;
    std::string ok(1, static_cast<char>(v)), rejected = ok;
    for (int r = 0; r < c.num_parts; ++r) {
      transport::StepHeader h = transport::NewStepHeader();
      h.step_id = 41;
      h.layer_id = 3;
      h.rank = r;
      h.num_tokens = t;
      h.config_version = r == 0 ? c.config_version : 0;
      const transport::PayloadSizes s = transport::RankPayloadSizes(c, r, t);
      h.partial_out_bytes = s.partial_out;
      h.partial_lse_bytes = s.partial_lse;
      h.out_bytes = s.out;
      h.out_scale_bytes = s.out_scales;
      h.out_lse_bytes = s.out_lse;
      ok += Raw(h);
      if (r == c.num_parts - 1) h.flags = 1;  // version 1 defines none: rejected, drained
      rejected += Raw(h);
    }
    transport::ResponseHeader response = transport::NewResponseHeader();
    response.step_id = 41;
    response.layer_id = 3;
    response.num_tokens = t;
    response.config_version = c.config_version;
    response.head_count = c.num_heads;
    corpus.Add("wire_fuzzer", absl::StrCat("config", v, "_ok"), ok + Raw(response));
    transport::SetResponseStatus(absl::InvalidArgumentError("flags: rank 0 sent 0x1, wire version 1 defines none"), &response);
    corpus.Add("wire_fuzzer", absl::StrCat("config", v, "_rejected"), rejected + Raw(response));
  }
}

// The merge request target: config selector, then delimited MergeRequests.
void MergeRequestSeeds(const Corpus& corpus) {
  const std::vector<v1::GroupConfig> configs = MergeConfigs();
  for (size_t v = 0; v < configs.size(); ++v) {
    const absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(configs[v]);
    if (!spec.ok()) Die(spec.status().ToString());
    std::string step, mismatch;
    google::protobuf::io::StringOutputStream step_out(&step), mismatch_out(&mismatch);
    for (int r = 0; r < spec->num_parts; ++r) {
      v1::MergeRequest req;
      req.mutable_header()->set_step(1);
      req.mutable_header()->set_layer(3);
      req.mutable_header()->set_num_tokens(1);
      req.mutable_header()->set_rank(r);
      req.set_partial_out(std::string(spec->PartialOutBytes(1), '\0'));
      req.set_lse(std::string(spec->LseBytes(1), '\0'));
      google::protobuf::util::SerializeDelimitedToZeroCopyStream(req, &step_out);
      // The last rank sends no tokens where the others sent one.
      if (r == spec->num_parts - 1) {
        req.mutable_header()->set_num_tokens(0);
        req.clear_partial_out();
        req.clear_lse();
      }
      google::protobuf::util::SerializeDelimitedToZeroCopyStream(req, &mismatch_out);
    }
    const std::string selector(1, static_cast<char>(v));
    corpus.Add("merge_request_fuzzer", absl::StrCat("config", v, "_step"), selector + step);
    corpus.Add("merge_request_fuzzer", absl::StrCat("config", v, "_mismatch"), selector + mismatch);
  }
}

ConfigSnapshot Snapshot(const v1::GroupConfig& config, uint64_t version) {
  ConfigSnapshot s;
  const absl::StatusOr<GroupSpec> spec = GroupSpecFromProto(config);
  if (!spec.ok()) Die(spec.status().ToString());
  s.configured = true;
  s.spec = *spec;
  s.hash = GroupSpecHash(s.spec);
  s.version = version;
  s.layer_scales = {{0, 0.0125f}, {1, 0.5f}, {4095, 2.0f}};
  s.default_scale = 0.25f;
  return s;
}

// The state file and the C ABI's JSON: what the server writes and answers.
void StateAndJsonSeeds(const Corpus& corpus) {
  v1::GroupConfig sliced = DefaultGroupConfig(4, 16, 128, 64);
  sliced.set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP);
  sliced.set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  sliced.set_return_lse(true);
  const std::vector<std::pair<std::string, ConfigSnapshot>> states = {
      {"unconfigured", ConfigSnapshot{}},
      {"configured", Snapshot(DefaultGroupConfig(4, 16, 512, 64), 3)},
      {"head_slice", Snapshot(sliced, 12)},
  };
  const std::string path = absl::StrCat(corpus.root(), "/state.tmp");
  for (const auto& [name, state] : states) {
    if (absl::Status st = WriteStateFile(path, state, /*sync=*/false); !st.ok()) Die(st.ToString());
    std::ifstream in(path, std::ios::binary);
    corpus.Add("state_file_fuzzer", name, std::string(std::istreambuf_iterator<char>(in), {}));
    std::remove(path.c_str());

    v1::GetConfigResponse response;
    response.set_configured(state.configured);
    if (state.configured) *response.mutable_config() = GroupSpecToProto(state.spec);
    response.set_config_version(state.version);
    response.set_config_hash(state.hash);
    for (const auto& [layer, scale] : state.layer_scales) (*response.mutable_layer_scales())[layer] = scale;
    response.set_default_scale(state.default_scale);
    char* json = nullptr;
    if (absl::Status st = capi::ToJson(response, &json); !st.ok()) Die(st.ToString());
    corpus.Add("capi_json_fuzzer", absl::StrCat("get_config_", name), json);
    std::free(json);
    if (state.configured) {
      if (absl::Status st = capi::ToJson(response.config(), &json); !st.ok()) Die(st.ToString());
      corpus.Add("capi_json_fuzzer", absl::StrCat("group_config_", name), json);
      std::free(json);
    }
  }
  // Refused: its parts would exceed kMaxPayloadBytes.
  v1::GroupConfig huge = DefaultGroupConfig(8, 64, 512, int64_t{1} << 40);
  char* json = nullptr;
  if (absl::Status st = capi::ToJson(huge, &json); !st.ok()) Die(st.ToString());
  corpus.Add("capi_json_fuzzer", "group_config_too_large", json);
  std::free(json);
  // A binding's own hand-written config: JSON names, enum numbers.
  corpus.Add("capi_json_fuzzer", "group_config_by_hand",
             "{\"worldSize\": 2, \"numHeads\": 8, \"headSize\": 128, \"maxTokens\": 256,\n"
             " \"inputDtype\": 3, \"lseBase\": \"LSE_BASE_2\", \"lseLayout\": 1, \"outputMode\": 2}\n");
}

// The scale files of dcpmergectl, as an operator writes them.
void ScalesJsonSeeds(const Corpus& corpus) {
  corpus.Add("scales_json_fuzzer", "empty", "{}\n");
  corpus.Add("scales_json_fuzzer", "layers", "{\n  \"0\": 0.0125,\n  \"1\": 0.011,\n  \"17\": 2.5e-2\n}\n");
  corpus.Add("scales_json_fuzzer", "extremes", "{\"2147483647\": 3.4028234e38, \"4095\": 1.4e-45,\r\n\t\"9\": 1E+2}");
  corpus.Add("scales_json_fuzzer", "duplicate", "{\"3\": 0.5, \"3\": 0.25}");
}

}  // namespace
}  // namespace dcpmerge::fuzz

int main(int argc, char** argv) {
  if (argc != 2) dcpmerge::fuzz::Die("usage: make_corpus DIR (tests/fuzz/corpus, absolute)");
  const dcpmerge::fuzz::Corpus corpus(argv[1]);
  dcpmerge::fuzz::WireSeeds(corpus);
  dcpmerge::fuzz::MergeRequestSeeds(corpus);
  dcpmerge::fuzz::StateAndJsonSeeds(corpus);
  dcpmerge::fuzz::ScalesJsonSeeds(corpus);
  return 0;
}
