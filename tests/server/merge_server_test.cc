// The server through its real gRPC listeners (in process): admin auth, the
// bad-input table, health, results equal to MergeOnCpu.
#include "server/merge_server.h"

#include <cmath>
#include <random>
#include <limits>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/log.h"
#include "tests/server/server_harness.h"
#include "tests/server/test_config.h"
#include "tests/server/test_data.h"
#include "dcpmerge/v1/data.grpc.pb.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using testing::AdminCall;

constexpr char kToken[] = "s3cret-token";
constexpr int kT = 4, kH = 2, kD = 64;

class MergeServerTest : public ::testing::Test {
 protected:
  void Start(bool configured = true, int n = 2, std::string token = kToken,
             v1::GroupConfig cfg = testing::SmallConfig(2)) {
    SetLogQuiet(true);
    MergeServerOptions o;
    o.rank_address = "127.0.0.1:0";
    o.admin_address = "127.0.0.1:0";
    o.admin_token = token;
    o.backend = "cpu";
    o.step_timeout = absl::Seconds(3);
    cfg.set_world_size(n);
    if (configured) o.initial_config = cfg;
    o.initial_default_scale = 0.05f;
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    rank_target_ = absl::StrCat("127.0.0.1:", server_->rank_port());
    admin_ = v1::Admin::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->admin_port()),
                                                    grpc::InsecureChannelCredentials()));
  }
  absl::StatusOr<std::unique_ptr<RankClient>> Connect(int rank, int n = 2) {
    RankClientOptions o;
    o.target = rank_target_;
    o.rank = rank;
    o.num_parts = n;
    o.rpc_timeout = absl::Seconds(5);
    return RankClient::Connect(o);
  }
  std::vector<std::unique_ptr<RankClient>> JoinAll(int n = 2) {
    std::vector<std::unique_ptr<RankClient>> out;
    for (int r = 0; r < n; ++r) {
      auto c = Connect(r, n);
      EXPECT_TRUE(c.ok());
      EXPECT_TRUE((*c)->Join().ok());
      out.push_back(std::move(*c));
    }
    EXPECT_TRUE(out[0]->WaitForGroupReady(absl::Seconds(10)).ok());
    return out;
  }
  // Runs one step on every rank concurrently; part r is parts[r] (with an
  // optional num_tokens override).
  std::vector<absl::StatusOr<MergeResult>> Step(std::vector<std::unique_ptr<RankClient>>& c, uint64_t step,
                                                const std::vector<testing::PartData>& parts,
                                                std::vector<int64_t> tokens = {}) {
    std::vector<absl::StatusOr<MergeResult>> res(c.size(), absl::UnknownError(""));
    std::vector<std::thread> th;
    for (size_t r = 0; r < c.size(); ++r) {
      th.emplace_back([&, r] {
        const int64_t t = tokens.empty() ? kT : tokens[r];
        res[r] = c[r]->Merge(step, 0, t, parts[r].out.data(), parts[r].out.size(), parts[r].lse.data(),
                             parts[r].lse.size());
      });
    }
    for (auto& t : th) t.join();
    return res;
  }
  std::vector<testing::PartData> Parts(uint64_t step, int n = 2) {
    std::vector<testing::PartData> p;
    for (int r = 0; r < n; ++r) p.push_back(testing::MakePart(7, step, r, kT, kH, kD));
    return p;
  }

  std::unique_ptr<MergeServer> server_;
  std::string rank_target_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(MergeServerTest, AdminTokenCheckedOnEveryCall) {
  Start();
  const std::string bearer = absl::StrCat("Bearer ", kToken);
  struct Auth {
    std::string header;
    grpc::StatusCode code;
  };
  const Auth auths[] = {{"", grpc::StatusCode::UNAUTHENTICATED},
                        {"Basic abc", grpc::StatusCode::UNAUTHENTICATED},
                        {"Bearer wrong", grpc::StatusCode::PERMISSION_DENIED},
                        {"Bearer s3cret-token-longer", grpc::StatusCode::PERMISSION_DENIED},
                        {bearer, grpc::StatusCode::OK}};
  for (const Auth& a : auths) {
    SCOPED_TRACE(a.header);
    v1::ConfigureRequest creq;
    *creq.mutable_config() = testing::SmallConfig(2);
    v1::ConfigureResponse cresp;
    EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::Configure, creq, &cresp, a.header).error_code(), a.code);
    v1::SetScalesResponse sresp;
    EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::SetScales, v1::SetScalesRequest(), &sresp, a.header)
                  .error_code(),
              a.code);
    v1::GetConfigResponse gresp;
    EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &gresp, a.header)
                  .error_code(),
              a.code);
    v1::GetStatsResponse stresp;
    EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::GetStats, v1::GetStatsRequest(), &stresp, a.header)
                  .error_code(),
              a.code);
    v1::DrainRequest dreq;
    dreq.set_timeout_ms(1);
    v1::DrainResponse dresp;
    EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::Drain, dreq, &dresp, a.header).error_code(), a.code);
  }
}

TEST_F(MergeServerTest, NoTokenConfiguredRefusesAdmin) {
  Start(true, 2, "");
  v1::GetConfigResponse r;
  EXPECT_EQ(AdminCall(admin_.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &r, "Bearer ").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(MergeServerTest, UnconfiguredThenConfigured) {
  Start(false);
  auto c = Connect(0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Join().code(), absl::StatusCode::kFailedPrecondition);
  v1::ConfigureRequest req;
  *req.mutable_config() = testing::SmallConfig(2);
  v1::ConfigureResponse resp;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::Configure, req, &resp, absl::StrCat("Bearer ", kToken)).ok());
  EXPECT_EQ(resp.config_version(), 1u);
  EXPECT_TRUE((*c)->Join().ok());
  EXPECT_EQ((*c)->join_info().config_version(), 1u);
  EXPECT_EQ((*c)->join_info().backend(), "cpu");
  EXPECT_EQ((*c)->join_info().data_plane(), v1::DATA_PLANE_GRPC);
}

TEST_F(MergeServerTest, BadAdminInputsNameTheField) {
  Start();
  const std::string auth = absl::StrCat("Bearer ", kToken);
  v1::ConfigureRequest creq;
  *creq.mutable_config() = testing::SmallConfig(2);
  creq.mutable_config()->set_num_heads(0);
  v1::ConfigureResponse cresp;
  grpc::Status st = AdminCall(admin_.get(), &v1::Admin::Stub::Configure, creq, &cresp, auth);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("config.num_heads"));
  creq.mutable_config()->set_num_heads(2);
  creq.mutable_config()->set_input_dtype(v1::DTYPE_UNSPECIFIED);
  st = AdminCall(admin_.get(), &v1::Admin::Stub::Configure, creq, &cresp, auth);
  EXPECT_THAT(st.error_message(), HasSubstr("config.input_dtype"));
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    v1::SetScalesRequest sreq;
    (*sreq.mutable_layer_scales())[3] = bad;
    v1::SetScalesResponse sresp;
    st = AdminCall(admin_.get(), &v1::Admin::Stub::SetScales, sreq, &sresp, auth);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(st.error_message(), HasSubstr("layer_scales[3]"));
  }
  v1::DrainRequest dreq;
  dreq.set_timeout_ms(-5);
  v1::DrainResponse dresp;
  st = AdminCall(admin_.get(), &v1::Admin::Stub::Drain, dreq, &dresp, auth);
  EXPECT_THAT(st.error_message(), HasSubstr("timeout_ms"));
  // Nothing changed.
  v1::GetConfigResponse g;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::GetConfig, v1::GetConfigRequest(), &g, auth).ok());
  EXPECT_EQ(g.config_version(), 1u);
  EXPECT_EQ(g.config().num_heads(), 2);
}

TEST_F(MergeServerTest, BadJoins) {
  Start();
  RankClientOptions o;
  o.target = rank_target_;
  o.rank = 0;
  o.num_parts = 3;
  auto c = RankClient::Connect(o);
  ASSERT_TRUE(c.ok());
  absl::Status st = (*c)->Join();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("world_size"));
  o.num_parts = 2;
  o.expected_config_hash = 42;
  auto h = RankClient::Connect(o);
  st = (*h)->Join();
  EXPECT_THAT(std::string(st.message()), HasSubstr("expected_config_hash"));
  auto a = Connect(1);
  auto b = Connect(1);
  ASSERT_TRUE((*a)->Join().ok());
  st = (*b)->Join();
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(st.message()), HasSubstr("rank"));
  EXPECT_EQ(RankClient::Connect([&] {
              RankClientOptions x = o;
              x.rank = 5;
              return x;
            }())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MergeServerTest, OutputsEqualMergeOnCpu) {
  Start();
  auto c = JoinAll();
  for (uint64_t step = 0; step < 5; ++step) {
    auto parts = Parts(step);
    auto res = Step(c, step, parts);
    const testing::Expected want = testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerTensor, 0.05f);
    ASSERT_FALSE(want.out.empty());
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(res[r].ok()) << res[r].status();
      EXPECT_EQ(res[r]->output, std::string(want.out.begin(), want.out.end()));
      EXPECT_EQ(res[r]->scales, want.scales);
      EXPECT_EQ(res[r]->config_version, 1u);
      EXPECT_EQ(res[r]->head_count, kH);
    }
  }
  v1::GetStatsResponse stats;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::GetStats, v1::GetStatsRequest(), &stats,
                        absl::StrCat("Bearer ", kToken)).ok());
  EXPECT_EQ(stats.steps_ok(), 5u);
  EXPECT_GT(stats.bytes_in(), 0u);
  EXPECT_EQ(stats.merge().count(), 5u);
}

TEST_F(MergeServerTest, HeadSliceGivesEachRankItsHeads) {
  v1::GroupConfig cfg = testing::SmallConfig(2);
  cfg.set_return_mode(v1::RETURN_MODE_HEAD_SLICE);
  cfg.set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP);
  cfg.set_group_size(64);
  Start(true, 2, kToken, cfg);
  auto c = JoinAll();
  auto parts = Parts(0);
  auto res = Step(c, 0, parts);
  const testing::Expected want = testing::MergeExpected(parts, kT, kH, kD, OutputMode::kFp8PerGroup, 1.0f);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(res[r].ok()) << res[r].status();
    EXPECT_EQ(res[r]->head_begin, r);
    EXPECT_EQ(res[r]->head_count, 1);
    ASSERT_EQ(res[r]->output.size(), static_cast<size_t>(kT * kD));
    ASSERT_EQ(res[r]->scales.size(), static_cast<size_t>(kT));  // one group of 64 per (t, head)
    for (int t = 0; t < kT; ++t) {
      EXPECT_EQ(0, memcmp(res[r]->output.data() + t * kD, want.out.data() + (t * kH + r) * kD, kD)) << t;
      EXPECT_EQ(res[r]->scales[t], want.scales[t * kH + r]);
    }
  }
}

// The table of bad steps: every rank of the bad step gets the status naming
// the field; the next step succeeds for all.
TEST_F(MergeServerTest, BadStepsFailForAllRanksOnly) {
  Start();
  auto c = JoinAll();
  struct Case {
    const char* name;
    const char* field;
    std::function<void(std::vector<testing::PartData>*, std::vector<int64_t>*)> mutate;
  };
  const std::vector<Case> cases = {
      {"step mismatch (num_tokens)", "header.num_tokens",
       [](auto* p, auto* t) {
         (*t)[1] = kT - 1;
         (*p)[1] = testing::MakePart(1, 1, 1, kT - 1, kH, kD);
       }},
      {"truncated payload", "partial_out", [](auto* p, auto*) { (*p)[1].out.resize((*p)[1].out.size() - 2); }},
      {"oversize payload", "partial_out", [](auto* p, auto*) { (*p)[0].out.append(1 << 16, '\0'); }},
      {"fp32-sized payload for bf16 (dtype)", "partial_out",
       [](auto* p, auto*) { (*p)[1].out.append((*p)[1].out); }},
      {"truncated lse", "lse", [](auto* p, auto*) { (*p)[0].lse.pop_back(); }},
      {"too many tokens (shape)", "header.num_tokens",
       [](auto* p, auto* t) {
         (*t)[0] = (*t)[1] = 9;
         (*p)[0] = testing::MakePart(1, 1, 0, 9, kH, kD);
         (*p)[1] = testing::MakePart(1, 1, 1, 9, kH, kD);
       }},
  };
  uint64_t step = 10;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    auto parts = Parts(step);
    std::vector<int64_t> tokens(2, kT);
    k.mutate(&parts, &tokens);
    auto bad = Step(c, step, parts, tokens);
    for (int r = 0; r < 2; ++r) {
      ASSERT_FALSE(bad[r].ok()) << "rank " << r;
      EXPECT_EQ(bad[r].status().code(), absl::StatusCode::kInvalidArgument) << bad[r].status();
      EXPECT_THAT(std::string(bad[r].status().message()), HasSubstr(k.field)) << "rank " << r;
    }
    auto good = Step(c, step + 1, Parts(step + 1));
    for (int r = 0; r < 2; ++r) EXPECT_TRUE(good[r].ok()) << good[r].status();
    step += 2;
  }
  v1::GetStatsResponse stats;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::GetStats, v1::GetStatsRequest(), &stats,
                        absl::StrCat("Bearer ", kToken)).ok());
  EXPECT_EQ(stats.errors_by_code().at("INVALID_ARGUMENT"), 2 * cases.size());
  EXPECT_EQ(stats.steps_ok(), cases.size());
}

TEST_F(MergeServerTest, HealthFollowsGroupReadiness) {
  Start();
  EXPECT_EQ(testing::HealthStatus(rank_target_, ""), 1);
  EXPECT_EQ(testing::HealthStatus(rank_target_, kMergeHealthService), 2);
  {
    auto c = JoinAll();
    EXPECT_EQ(testing::HealthStatus(rank_target_, kMergeHealthService), 1);
    ASSERT_TRUE(c[1]->Leave().ok());
    EXPECT_EQ(testing::HealthStatus(rank_target_, kMergeHealthService), 2);
  }
  EXPECT_EQ(testing::HealthStatus(rank_target_, ""), 1);
}

TEST_F(MergeServerTest, ScaleUpdateAppliesAtStepBoundary) {
  Start();
  auto c = JoinAll();
  auto r1 = Step(c, 1, Parts(1));
  ASSERT_TRUE(r1[0].ok());
  EXPECT_EQ(r1[0]->scales, std::vector<float>{0.05f});
  v1::SetScalesRequest req;
  (*req.mutable_layer_scales())[0] = 0.02f;
  v1::SetScalesResponse resp;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::SetScales, req, &resp, absl::StrCat("Bearer ", kToken)).ok());
  auto r2 = Step(c, 2, Parts(2));
  ASSERT_TRUE(r2[0].ok() && r2[1].ok());
  EXPECT_EQ(r2[0]->scales, std::vector<float>{0.02f});
  EXPECT_EQ(r2[0]->config_version, resp.config_version());
  const testing::Expected want = testing::MergeExpected(Parts(2), kT, kH, kD, OutputMode::kFp8PerTensor, 0.02f);
  EXPECT_EQ(r2[1]->output, std::string(want.out.begin(), want.out.end()));
}

TEST_F(MergeServerTest, DrainRefusesNewSteps) {
  Start();
  auto c = JoinAll();
  v1::DrainRequest req;
  req.set_timeout_ms(500);
  v1::DrainResponse resp;
  ASSERT_TRUE(AdminCall(admin_.get(), &v1::Admin::Stub::Drain, req, &resp, absl::StrCat("Bearer ", kToken)).ok());
  EXPECT_TRUE(resp.drained());
  auto r = Step(c, 1, Parts(1));
  EXPECT_EQ(r[0].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r[0].status().message()), HasSubstr("draining"));
  EXPECT_EQ(testing::HealthStatus(rank_target_, kMergeHealthService), 2);
}

// Random headers and payload sizes on a raw stream: every request gets
// exactly one response, none crashes the server, real steps still work.
TEST_F(MergeServerTest, GarbageNeverCrashesAndEveryRequestIsAnswered) {
  Start();
  auto c = JoinAll();
  const uint64_t session0 = c[0]->join_info().session_id();
  auto stub = v1::MergeData::NewStub(grpc::CreateChannel(rank_target_, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->MergeStream(&ctx);
  std::mt19937_64 rng(5);
  constexpr int kRequests = 200;
  for (int i = 0; i < kRequests; ++i) {
    v1::MergeRequest req;
    if (rng() % 10 != 0) {  // sometimes no header at all
      v1::MergeHeader* h = req.mutable_header();
      h->set_step(1000 + rng() % 50);
      h->set_layer(static_cast<int32_t>(rng() % 5) - 1);
      const int64_t tokens[] = {-1, 0, 1, kT, 9, int64_t{1} << 40, -(int64_t{1} << 62)};
      h->set_num_tokens(tokens[rng() % 7]);
      h->set_rank(static_cast<int32_t>(rng() % 6) - 2);
      h->set_session_id(rng() % 2 ? session0 : rng());
    }
    const size_t sizes[] = {0, 1, kT * kH * kD * 2, kT * kH * kD * 2 + 1, 4096};
    req.set_partial_out(std::string(sizes[rng() % 5], 'x'));
    req.set_lse(std::string(rng() % 3 == 0 ? kT * kH * 4 : rng() % 100, '\x7f'));
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  int answered = 0;
  v1::MergeResponse resp;
  while (stream->Read(&resp)) ++answered;
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered, kRequests);
  // The group and the service are intact.
  auto good = Step(c, 1, Parts(1));
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(good[r].ok()) << good[r].status();
}

}  // namespace
}  // namespace dcpmerge
