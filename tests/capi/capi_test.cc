#include "capi/dcpmerge_c.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "embed/embedded_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_config.h"
#include "tests/server/test_data.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
constexpr int kT = 4, kH = 2, kD = 64;
constexpr int32_t kOk = 0, kInvalidArgument = 3, kFailedPrecondition = 9, kPermissionDenied = 7;

std::string Last() { return dcpmerge_last_error_message(); }

std::string TakeString(char* s) {
  std::string out = s == nullptr ? "" : s;
  dcpmerge_free(s);
  return out;
}

dcpmerge_merge_args CpuArgs(const std::vector<testing::PartData>& parts, const void** outs, const float** lses,
                            float* scale, std::vector<uint8_t>* out) {
  dcpmerge_merge_args a{};
  a.struct_size = sizeof(a);
  a.num_parts = static_cast<int32_t>(parts.size());
  a.num_tokens = kT;
  a.num_heads = kH;
  a.head_size = kD;
  a.input_dtype = 2;  // bf16
  a.group_size = 128;
  for (size_t i = 0; i < parts.size(); ++i) {
    outs[i] = parts[i].out.data();
    lses[i] = parts[i].lse.data();
  }
  a.partial_out = outs;
  a.partial_lse = lses;
  a.partial_out_bytes = kT * kH * kD * 2;
  a.partial_lse_bytes = kT * kH * 4;
  a.token_stride = kH * kD;
  a.head_stride = kD;
  a.static_scale = scale;
  out->assign(kT * kH * kD, 0);
  a.out = out->data();
  a.out_bytes = out->size();
  return a;
}

TEST(CapiTest, Library) {
  EXPECT_EQ(dcpmerge_abi_version(), DCPMERGE_C_ABI_VERSION);
  EXPECT_STREQ(dcpmerge_version(), "0.2.0");
  EXPECT_GT(std::strlen(dcpmerge_build_commit()), 0u);
  dcpmerge_free(nullptr);
}

TEST(CapiTest, MergeCpuEqualsTheReferenceAndChecksArguments) {
  std::vector<testing::PartData> parts = {testing::MakePart(1, 0, 0, kT, kH, kD),
                                          testing::MakePart(1, 0, 1, kT, kH, kD)};
  const void* outs[2];
  const float* lses[2];
  float scale = 0.05f;
  std::vector<uint8_t> out;
  dcpmerge_merge_args a = CpuArgs(parts, outs, lses, &scale, &out);
  ASSERT_EQ(dcpmerge_merge_cpu(&a, 1), kOk) << Last();
  EXPECT_EQ(Last(), "");
  EXPECT_EQ(out, testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerTensor, scale).out);

  dcpmerge_merge_args bad = a;
  bad.struct_size = sizeof(a) - 8;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("struct_size"));
  bad = a;
  bad.num_parts = 65;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("num_parts"));
  bad = a;
  bad.output_mode = 7;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("output_mode"));
  bad = a;
  bad.enable_pdl = 2;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("enable_pdl"));
  bad = a;
  bad.enable_pdl = 1;  // a GPU launch option: the CPU reference ignores it
  ASSERT_EQ(dcpmerge_merge_cpu(&bad, 1), kOk) << Last();
  EXPECT_EQ(out, testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerTensor, scale).out);
  bad = a;
  bad.out_bytes = 3;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("out.bytes"));
  bad = a;
  bad.partial_out = nullptr;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_EQ(dcpmerge_merge_cpu(nullptr, 1), kInvalidArgument);
  float zero = 0.0f;
  bad = a;
  bad.static_scale = &zero;
  EXPECT_EQ(dcpmerge_merge_cpu(&bad, 1), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("static_scale"));
}

TEST(CapiTest, GpuEntryPointsSayWhyWithoutADevice) {
  int32_t n = -1;
  const int32_t code = dcpmerge_cuda_device_count(&n);
  if (code == kOk) GTEST_SKIP() << n << " CUDA device(s) here: the GPU path is tested by the GPU tests";
  EXPECT_FALSE(Last().empty());
  EXPECT_EQ(n, 0);
  if (!dcpmerge_built_with_cuda()) {
    EXPECT_EQ(code, 12);  // UNIMPLEMENTED
    EXPECT_THAT(Last(), HasSubstr("without CUDA"));
  }
  std::vector<testing::PartData> parts = {testing::MakePart(1, 0, 0, kT, kH, kD)};
  const void* outs[1];
  const float* lses[1];
  float scale = 1.0f;
  std::vector<uint8_t> out;
  dcpmerge_merge_args a = CpuArgs(parts, outs, lses, &scale, &out);
  EXPECT_NE(dcpmerge_merge_gpu(&a, 0, nullptr), kOk);
  EXPECT_FALSE(Last().empty());
  EXPECT_NE(dcpmerge_copy_part_gpu(&a, 0, 0, nullptr), kOk);
  EXPECT_FALSE(Last().empty());
}

class CapiServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogQuiet(true);
    EmbeddedServerOptions o;
    o.backend = "cpu";
    o.admin_token = "capi-token";
    o.initial_config = testing::SmallConfig(2);
    auto s = EmbeddedServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    target_ = absl::StrCat("127.0.0.1:", server_->rank_port());
    admin_target_ = absl::StrCat("127.0.0.1:", server_->admin_port());
  }
  dcpmerge_client* Client(int rank) {
    dcpmerge_client_options o{};
    o.struct_size = sizeof(o);
    o.target = target_.c_str();
    o.rank = rank;
    o.num_parts = 2;
    o.heartbeat = 1;
    o.join_secret = "not-sent-yet";
    dcpmerge_client* c = nullptr;
    EXPECT_EQ(dcpmerge_client_connect(&o, &c), kOk) << Last();
    return c;
  }
  dcpmerge_admin* Admin(const char* token) {
    dcpmerge_admin_options o{};
    o.struct_size = sizeof(o);
    o.target = admin_target_.c_str();
    o.token = token;
    o.deadline_ms = 5000;
    dcpmerge_admin* a = nullptr;
    EXPECT_EQ(dcpmerge_admin_open(&o, &a), kOk) << Last();
    return a;
  }
  std::unique_ptr<EmbeddedServer> server_;
  std::string target_, admin_target_;
};

TEST_F(CapiServerTest, ClientJoinsAndMerges) {
  dcpmerge_client* c[2] = {Client(0), Client(1)};
  for (dcpmerge_client* x : c) ASSERT_EQ(dcpmerge_client_join(x), kOk) << Last();
  char* json = nullptr;
  ASSERT_EQ(dcpmerge_client_session_json(c[0], &json), kOk) << Last();
  const std::string session = TakeString(json);
  EXPECT_THAT(session, HasSubstr("\"data_plane\":\"DATA_PLANE_GRPC\""));
  EXPECT_THAT(session, HasSubstr("\"world_size\":2"));
  ASSERT_EQ(dcpmerge_client_wait_ready(c[0], 5000), kOk) << Last();
  std::vector<testing::PartData> parts = {testing::MakePart(2, 9, 0, kT, kH, kD),
                                          testing::MakePart(2, 9, 1, kT, kH, kD)};
  dcpmerge_result* results[2] = {};
  int32_t codes[2] = {-1, -1};
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      codes[r] = dcpmerge_client_merge(c[r], 9, 0, kT, parts[r].out.data(), parts[r].out.size(),
                                       parts[r].lse.data(), parts[r].lse.size(), &results[r]);
    });
  }
  for (auto& t : threads) t.join();
  const testing::Expected want = testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerTensor, 1.0f);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(codes[r], kOk);
    dcpmerge_result_view v{};
    v.struct_size = sizeof(v);
    ASSERT_EQ(dcpmerge_result_view_of(results[r], &v), kOk) << Last();
    EXPECT_EQ(v.step, 9u);
    EXPECT_EQ(v.num_tokens, kT);
    EXPECT_EQ(v.head_count, kH);
    ASSERT_EQ(v.output_bytes, want.out.size());
    EXPECT_EQ(std::memcmp(v.output, want.out.data(), want.out.size()), 0);
    ASSERT_EQ(v.scale_count, 1u);
    EXPECT_EQ(v.scales[0], 1.0f);
    dcpmerge_result_free(results[r]);
  }
  uint64_t version = 0;
  EXPECT_EQ(dcpmerge_client_heartbeat_status(c[0], &version), kOk);
  // The NCCL device path refuses a gRPC-plane group.
  dcpmerge_device* d = nullptr;
  ASSERT_EQ(dcpmerge_device_create(c[0], 0, 1000, &d), kOk) << Last();
  EXPECT_EQ(dcpmerge_device_connect(d), kFailedPrecondition);
  dcpmerge_device_close(d);
  EXPECT_EQ(dcpmerge_client_leave(c[1]), kOk);
  EXPECT_EQ(dcpmerge_client_session_json(c[1], &json), kFailedPrecondition);
  for (dcpmerge_client* x : c) dcpmerge_client_close(x);
}

TEST_F(CapiServerTest, ClientOptionsAreChecked) {
  dcpmerge_client_options o{};
  o.struct_size = sizeof(o);
  o.target = target_.c_str();
  o.rank = 3;
  o.num_parts = 2;
  dcpmerge_client* c = nullptr;
  EXPECT_EQ(dcpmerge_client_connect(&o, &c), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("rank"));
  EXPECT_EQ(c, nullptr);
  o.rank = 0;
  o.tls_client_cert_file = "/nonexistent";
  EXPECT_EQ(dcpmerge_client_connect(&o, &c), kInvalidArgument);
  o.struct_size = 8;
  EXPECT_EQ(dcpmerge_client_connect(&o, &c), kInvalidArgument);
  EXPECT_EQ(dcpmerge_client_join(nullptr), kInvalidArgument);
  EXPECT_EQ(dcpmerge_client_merge(nullptr, 0, 0, 0, nullptr, 0, nullptr, 0, nullptr), kInvalidArgument);
  dcpmerge_client_close(nullptr);
}

TEST_F(CapiServerTest, Admin) {
  dcpmerge_admin* a = Admin("capi-token");
  char* json = nullptr;
  ASSERT_EQ(dcpmerge_admin_get_config_json(a, &json), kOk) << Last();
  const std::string config = TakeString(json);
  EXPECT_THAT(config, HasSubstr("\"configured\":true"));
  EXPECT_THAT(config, HasSubstr("\"backend\":\"cpu\""));
  const int32_t layers[] = {0, 7};
  const float scales[] = {0.5f, 0.25f};
  uint64_t version = 0;
  ASSERT_EQ(dcpmerge_admin_set_scales(a, layers, scales, 2, 0, 0.0f, &version), kOk) << Last();
  EXPECT_GT(version, 0u);
  ASSERT_EQ(dcpmerge_admin_get_config_json(a, &json), kOk);
  EXPECT_THAT(TakeString(json), HasSubstr("\"7\":0.25"));
  ASSERT_EQ(dcpmerge_admin_get_stats_json(a, &json), kOk);
  EXPECT_THAT(TakeString(json), HasSubstr("\"steps_ok\":\"0\""));
  uint64_t hash = 0;
  EXPECT_EQ(dcpmerge_admin_configure_json(a, "{not json", 0.0f, &version, &hash), kInvalidArgument);
  EXPECT_THAT(Last(), HasSubstr("config"));
  ASSERT_EQ(dcpmerge_admin_configure_json(a,
                                          "{\"world_size\":2,\"num_heads\":2,\"head_size\":64,\"max_tokens\":\"8\","
                                          "\"input_dtype\":\"DTYPE_BFLOAT16\",\"lse_base\":\"LSE_BASE_E\","
                                          "\"lse_layout\":\"LSE_LAYOUT_HEADS_TOKENS\",\"output_mode\":"
                                          "\"OUTPUT_MODE_FP8_PER_TOKEN\",\"group_size\":128,\"return_mode\":"
                                          "\"RETURN_MODE_FULL\"}",
                                          0.0f, &version, &hash),
            kOk)
      << Last();
  EXPECT_NE(hash, 0u);
  int32_t drained = 0;
  uint64_t in_flight = 1;
  ASSERT_EQ(dcpmerge_admin_drain(a, 1000, &drained, &in_flight), kOk) << Last();
  EXPECT_EQ(drained, 1);
  EXPECT_EQ(in_flight, 0u);
  EXPECT_EQ(dcpmerge_admin_drain(a, -1, &drained, &in_flight), kInvalidArgument);
  dcpmerge_admin_close(a);

  dcpmerge_admin* wrong = Admin("wrong");
  EXPECT_EQ(dcpmerge_admin_get_config_json(wrong, &json), kPermissionDenied);
  EXPECT_EQ(json, nullptr);
  dcpmerge_admin_close(wrong);
  EXPECT_EQ(dcpmerge_admin_get_config_json(nullptr, &json), kInvalidArgument);
}

}  // namespace
}  // namespace dcpmerge
