// Steps that go wrong: rejected steps leave nothing unmatched and the next
// step works; protocol violations and dead ranks abort without hanging.
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/transport/harness.h"

namespace dcpmerge {
namespace transport {
namespace testing {
namespace {

using ::testing::HasSubstr;

// The rejected step: every rank told `code` with `message`, payload
// poisoned, nothing unmatched.
void ExpectRejected(Harness& h, const StepRun& run, absl::StatusCode code,
                    const std::string& message) {
  ASSERT_TRUE(run.server.ok()) << run.server.status();
  EXPECT_EQ(run.server->step_status.code(), code) << run.server->step_status;
  EXPECT_EQ(run.server->step_status.message(), message);
  for (int r = 0; r < h.config().num_parts; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    const RankResult& got = run.ranks[static_cast<size_t>(r)];
    EXPECT_EQ(got.status.code(), code) << got.status;
    EXPECT_EQ(got.status.message(), message);
    EXPECT_TRUE(AllPoisoned(got.out));
    EXPECT_TRUE(AllPoisoned(got.out_scales));
    EXPECT_TRUE(AllPoisoned(got.out_lse));
    EXPECT_FALSE(got.out.empty());
  }
  EXPECT_EQ(h.world().UnmatchedTransfers(), 0);
  for (int r = 0; r <= h.config().num_parts; ++r) EXPECT_TRUE(h.world().Idle(r));
}

void ExpectNextStepWorks(Harness& h, uint64_t step_id) {
  StepSpec spec;
  spec.step_id = step_id;
  spec.num_tokens = 6;
  StepRun run = h.Run(spec);
  ASSERT_TRUE(run.server.ok()) << run.server.status();
  ASSERT_TRUE(run.server->step_status.ok()) << run.server->step_status;
  for (int r = 0; r < h.config().num_parts; ++r) {
    ASSERT_TRUE(run.ranks[static_cast<size_t>(r)].status.ok());
    std::vector<uint8_t> out, scales, lse;
    h.ExpectedForRank(spec, r, &out, &scales, &lse);
    EXPECT_EQ(run.ranks[static_cast<size_t>(r)].out, out);
    EXPECT_EQ(run.ranks[static_cast<size_t>(r)].out_lse, lse);
  }
}

struct Mismatch {
  const char* name;
  ShapeMode mode;
  int num_parts;
  void (*tweak)(int rank, RankStep* step);
  const char* message;
};

class MismatchTest : public ::testing::TestWithParam<Mismatch> {};

TEST_P(MismatchTest, EveryRankGetsInvalidArgumentAndTheNextStepWorks) {
  const Mismatch& m = GetParam();
  ProtocolConfig c = Fp32Config(m.num_parts);
  c.shape_mode = m.mode;
  c.fixed_tokens = 16;
  Harness h(c);
  StepSpec spec;
  spec.step_id = 40;
  spec.layer_id = 3;
  spec.num_tokens = 16;
  spec.tweak = [&m](int r, RankStep* s) {
    if (r == 2) m.tweak(r, s);
  };
  ExpectRejected(h, h.Run(spec), absl::StatusCode::kInvalidArgument,
                 m.message);
  EXPECT_TRUE(h.Run(spec).server.ok());  // the same mistake again: no harm
  if (m.mode == ShapeMode::kDynamic) ExpectNextStepWorks(h, 41);
  if (m.mode == ShapeMode::kFixed) {
    StepSpec ok;
    ok.step_id = 41;
    ok.num_tokens = 16;
    StepRun run = h.Run(ok);
    ASSERT_TRUE(run.server.ok());
    EXPECT_TRUE(run.server->step_status.ok()) << run.server->step_status;
    for (const RankResult& r : run.ranks) EXPECT_TRUE(r.status.ok()) << r.status;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fields, MismatchTest,
    ::testing::Values(
        Mismatch{"num_tokens", ShapeMode::kDynamic, 3,
                 [](int, RankStep* s) { s->num_tokens = 17; },
                 "num_tokens: rank 2 sent 17, rank 0 sent 16"},
        Mismatch{"num_tokens_n8", ShapeMode::kDynamic, 8,
                 [](int, RankStep* s) { s->num_tokens = 17; },
                 "num_tokens: rank 2 sent 17, rank 0 sent 16"},
        Mismatch{"step_id", ShapeMode::kDynamic, 3,
                 [](int, RankStep* s) { s->step_id = 39; },
                 "step_id: rank 2 sent 39, rank 0 sent 40"},
        Mismatch{"layer_id", ShapeMode::kDynamic, 3,
                 [](int, RankStep* s) { s->layer_id = 4; },
                 "layer_id: rank 2 sent 4, rank 0 sent 3"},
        Mismatch{"fixed_step_id", ShapeMode::kFixed, 3,
                 [](int, RankStep* s) { s->step_id = 7; },
                 "step_id: rank 2 sent 7, rank 0 sent 40"},
        Mismatch{"fixed_layer_id", ShapeMode::kFixed, 8,
                 [](int, RankStep* s) { s->layer_id = 0; },
                 "layer_id: rank 2 sent 0, rank 0 sent 3"}),
    [](const ::testing::TestParamInfo<Mismatch>& info) {
      return std::string(info.param.name);
    });

TEST(ProtocolFailureTest, MergeFailureReachesEveryRank) {
  Harness h(Fp32Config(3), [](MergeStep& step) -> absl::Status {
    if (step.layer_id == 13) {
      return absl::InvalidArgumentError("scale: layer 13 has no valid scale");
    }
    return ExactMerge(step);
  });
  StepSpec spec;
  spec.layer_id = 13;
  ExpectRejected(h, h.Run(spec), absl::StatusCode::kInvalidArgument,
                 "scale: layer 13 has no valid scale");
  ExpectNextStepWorks(h, 2);
}

TEST(ProtocolFailureTest, HeadSliceRejectionPoisonsEachRanksSlice) {
  ProtocolConfig c = Fp8Config(3, ScaleLayout::kPerGroup);
  c.return_mode = ReturnMode::kHeadSlice;
  Harness h(c, PatternMerge);
  StepSpec spec;
  spec.num_tokens = 5;
  spec.tweak = [](int r, RankStep* s) {
    if (r == 1) s->layer_id = 9;
  };
  StepRun run = h.Run(spec);
  ExpectRejected(h, run, absl::StatusCode::kInvalidArgument,
                 "layer_id: rank 1 sent 9, rank 0 sent 0");
  EXPECT_EQ(run.ranks[2].out.size(), RankPayloadSizes(c, 2, 5).out);
}

// A rank that bypasses RankProtocol: sends `header` and then payloads of the
// sizes it declares, and posts the receives it declares.
absl::Status SendRawStep(Harness& h, int r, const StepHeader& header) {
  FakeTransport& t = h.rank_transport(r);
  const int server = h.config().num_parts;
  void* hdr = h.Scratch(r, sizeof(StepHeader));
  std::memcpy(hdr, &header, sizeof(header));
  const uint64_t sizes[] = {header.partial_out_bytes, header.partial_lse_bytes,
                            header.out_bytes, header.out_scale_bytes,
                            header.out_lse_bytes};
  absl::Status s = t.GroupStart();
  s.Update(t.Send(hdr, sizeof(StepHeader), server));
  for (int i = 0; i < 2; ++i) {
    s.Update(t.Send(h.Scratch(r, sizes[i]), sizes[i], server));
  }
  s.Update(t.GroupEnd());
  s.Update(t.GroupStart());
  s.Update(t.Recv(h.Scratch(r, sizeof(ResponseHeader)), sizeof(ResponseHeader),
                  server));
  for (int i = 2; i < 5; ++i) {
    s.Update(t.Recv(h.Scratch(r, sizes[i]), sizes[i], server));
  }
  s.Update(t.GroupEnd());
  return s;
}

StepHeader ValidHeader(const ProtocolConfig& c, int r, const StepSpec& spec) {
  StepHeader h = NewStepHeader();
  h.step_id = spec.step_id;
  h.layer_id = spec.layer_id;
  h.rank = r;
  h.num_tokens = spec.num_tokens;
  const PayloadSizes s = RankPayloadSizes(c, r, spec.num_tokens);
  h.partial_out_bytes = s.partial_out;
  h.partial_lse_bytes = s.partial_lse;
  h.out_bytes = s.out;
  h.out_scale_bytes = s.out_scales;
  h.out_lse_bytes = s.out_lse;
  return h;
}

TEST(ProtocolFailureTest, OversizeDeclarationIsAProtocolViolation) {
  for (ShapeMode mode : {ShapeMode::kDynamic, ShapeMode::kFixed}) {
    SCOPED_TRACE(mode == ShapeMode::kFixed ? "fixed" : "dynamic");
    ProtocolConfig c = Fp32Config(3);
    c.shape_mode = mode;
    c.fixed_tokens = 8;
    Harness h(c);
    StepSpec spec;
    spec.num_tokens = 8;
    spec.control_plane_aborts = true;
    spec.raw_ranks = {1};
    spec.raw = [&](int r, Harness& hh) {
      StepHeader header = ValidHeader(hh.config(), r, spec);
      header.out_bytes = RankPayloadSizes(hh.config(), r, 32).out + 1;
      return SendRawStep(hh, r, header);
    };
    StepRun run = h.Run(spec);
    ASSERT_FALSE(run.server.ok());
    EXPECT_TRUE(absl::IsUnavailable(run.server.status()));
    EXPECT_THAT(std::string(run.server.status().message()),
                HasSubstr("protocol violation by rank 1: declared out_bytes="));
    EXPECT_TRUE(h.server_transport().aborted());
    EXPECT_LT(run.server_time, absl::Seconds(2));
    // Told over the control plane, the ranks give up at once.
    for (int r = 0; r < 3; ++r) {
      EXPECT_TRUE(absl::IsUnavailable(run.ranks[static_cast<size_t>(r)].status))
          << r << ": " << run.ranks[static_cast<size_t>(r)].status;
    }
    EXPECT_LT(run.rank_time, absl::Seconds(2));
    // The aborted communicator serves no more steps: re-form it.
    EXPECT_TRUE(absl::IsFailedPrecondition(
        h.server().ServeStep(absl::Now() + absl::Seconds(1)).status()));
  }
}

TEST(ProtocolFailureTest, GarbageHeaderIsAProtocolViolation) {
  Harness h(Fp32Config(3));
  StepSpec spec;
  spec.raw_ranks = {2};
  spec.rank_timeout = absl::Milliseconds(300);  // no control plane here
  spec.raw = [&](int r, Harness& hh) {
    StepHeader header = ValidHeader(hh.config(), r, spec);
    header.magic = 0xDEADBEEF;
    return SendRawStep(hh, r, header);
  };
  StepRun run = h.Run(spec);
  ASSERT_FALSE(run.server.ok());
  EXPECT_THAT(std::string(run.server.status().message()),
              HasSubstr("protocol violation by rank 2: step header magic"));
  // Without the control plane the ranks find out by their own deadline.
  for (const RankResult& r : run.ranks) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(r.status)) << r.status;
  }
  EXPECT_LT(run.rank_time, absl::Seconds(2));
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(h.rank_transport(r).aborted());
}

TEST(ProtocolFailureTest, FixedModeSizeOtherThanFixedIsAViolation) {
  ProtocolConfig c = Fp32Config(3);
  c.shape_mode = ShapeMode::kFixed;
  c.fixed_tokens = 8;
  Harness h(c);
  StepSpec spec;
  spec.num_tokens = 8;
  spec.control_plane_aborts = true;
  spec.raw_ranks = {0};
  spec.raw = [&](int r, Harness& hh) {
    StepSpec other = spec;
    other.num_tokens = 4;  // within max_tokens, but not the fixed shape
    // Its payload cannot match the fixed-size receives: the fake fails both
    // sides (NCCL would corrupt or hang).
    return SendRawStep(hh, r, ValidHeader(hh.config(), r, other));
  };
  StepRun run = h.Run(spec);
  ASSERT_FALSE(run.server.ok());
  EXPECT_TRUE(absl::IsUnavailable(run.server.status())) << run.server.status();
  EXPECT_LT(run.server_time, absl::Seconds(2));
  EXPECT_LT(run.rank_time, absl::Seconds(2));
}

TEST(ProtocolFailureTest, ConsistentButWrongFieldsAreDrained) {
  // Sizes are fine but the rank field lies: a rejected step, not a
  // violation.
  Harness h(Fp32Config(3));
  StepSpec spec;
  spec.raw_ranks = {1};
  spec.raw = [&](int r, Harness& hh) {
    StepHeader header = ValidHeader(hh.config(), r, spec);
    header.rank = 0;
    return SendRawStep(hh, r, header);
  };
  StepRun run = h.Run(spec);
  ASSERT_TRUE(run.server.ok()) << run.server.status();
  EXPECT_EQ(run.server->step_status,
            absl::InvalidArgumentError("rank: peer 1 sent rank 0"));
  EXPECT_TRUE(run.server->drained);
  EXPECT_TRUE(run.ranks[1].status.ok());  // raw rank: its transfers matched
  EXPECT_EQ(run.ranks[0].status,
            absl::InvalidArgumentError("rank: peer 1 sent rank 0"));
  EXPECT_EQ(h.world().UnmatchedTransfers(), 0);
  ExpectNextStepWorks(h, 2);
}

TEST(ProtocolFailureTest, DeadRankFromTheStartTimesOut) {
  Harness h(Fp32Config(3));
  StepSpec spec;
  spec.absent = {1};
  spec.header_timeout = absl::Milliseconds(300);
  spec.rank_timeout = absl::Milliseconds(500);
  StepRun run = h.Run(spec);
  ASSERT_FALSE(run.server.ok());
  EXPECT_TRUE(absl::IsUnavailable(run.server.status())) << run.server.status();
  EXPECT_THAT(std::string(run.server.status().message()),
              HasSubstr("waiting for the step headers: DEADLINE_EXCEEDED"));
  EXPECT_GE(run.server_time, absl::Milliseconds(300));
  EXPECT_LT(run.server_time, absl::Seconds(2));
  EXPECT_TRUE(h.server_transport().aborted());
  for (int r : {0, 2}) {
    const absl::Status& s = run.ranks[static_cast<size_t>(r)].status;
    EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) << s;
    EXPECT_TRUE(h.rank_transport(r).aborted());
  }
  EXPECT_LT(run.rank_time, absl::Seconds(2));
}

TEST(ProtocolFailureTest, RankDyingMidStepTimesOut) {
  ServerOptions options;
  options.step_timeout = absl::Milliseconds(300);
  Harness h(Fp32Config(3), nullptr, options);
  StepSpec spec;
  spec.rank_timeout = absl::Milliseconds(600);
  spec.raw_ranks = {1};
  spec.raw = [&](int r, Harness& hh) {
    // The header gets through, then the process dies before its payload.
    FakeTransport& t = hh.rank_transport(r);
    void* hdr = hh.Scratch(r, sizeof(StepHeader));
    const StepHeader header = ValidHeader(hh.config(), r, spec);
    std::memcpy(hdr, &header, sizeof(header));
    absl::Status s = t.Send(hdr, sizeof(StepHeader), hh.config().num_parts);
    if (s.ok()) s = t.Wait(absl::Now() + absl::Seconds(5));
    if (!s.ok()) return s;
    hh.world().Kill(r);
    const uint64_t bytes = header.partial_out_bytes;
    return t.Send(hh.Scratch(r, bytes), bytes, hh.config().num_parts);
  };
  StepRun run = h.Run(spec);
  ASSERT_FALSE(run.server.ok());
  EXPECT_TRUE(absl::IsUnavailable(run.server.status()));
  EXPECT_THAT(std::string(run.server.status().message()),
              HasSubstr("receiving the payloads: DEADLINE_EXCEEDED"));
  EXPECT_LT(run.server_time, absl::Seconds(2));
  for (int r : {0, 2}) {
    EXPECT_TRUE(
        absl::IsDeadlineExceeded(run.ranks[static_cast<size_t>(r)].status));
  }
  EXPECT_LT(run.rank_time, absl::Seconds(2));
}

TEST(ProtocolFailureTest, AbortFromAnotherThreadStopsAnIdleServer) {
  Harness h(Fp32Config(2));
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(50));
    h.server_transport().Abort("server shutting down");
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<StepOutcome> r = h.server().ServeStep(absl::InfiniteFuture());
  stopper.join();
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("server shutting down"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// Validate on its own: every check and its message.
TEST(ValidateTest, ChecksInOrder) {
  ProtocolConfig c = Fp32Config(2);
  StepSpec spec;
  spec.step_id = 5;
  spec.num_tokens = 4;
  auto headers = [&] {
    return std::vector<StepHeader>{ValidHeader(c, 0, spec),
                                   ValidHeader(c, 1, spec)};
  };
  auto check = [&](const std::vector<StepHeader>& h) {
    return ServerProtocol::Validate(c, h.data(), 2);
  };
  EXPECT_TRUE(check(headers()).ok());

  std::vector<StepHeader> h = headers();
  h[1].version = 7;
  EXPECT_TRUE(absl::IsUnavailable(check(h)));
  h = headers();
  h[0].partial_lse_bytes = ~uint64_t{0};
  EXPECT_THAT(std::string(check(h).message()),
              HasSubstr("declared partial_lse_bytes=18446744073709551615"));
  h = headers();
  h[1].flags = 1;
  EXPECT_EQ(check(h).message(), "flags: rank 1 sent 0x1, wire version 1 defines none");
  h = headers();
  h[1].config_version = 3;
  EXPECT_EQ(check(h), absl::FailedPreconditionError(
                          "config_version: rank 1 expects 3, server has 1"));
  h = headers();
  h[0].num_tokens = h[1].num_tokens = 40;
  EXPECT_EQ(check(h), absl::InvalidArgumentError(
                          "num_tokens: rank 0 sent 40, outside 0..max_tokens (32)"));
  h = headers();
  h[0].num_tokens = h[1].num_tokens = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(check(h)));
  h = headers();
  h[1].partial_out_bytes -= 4;
  EXPECT_EQ(check(h), absl::InvalidArgumentError(
                          "partial_out_bytes: rank 1 declared 2044, "
                          "num_tokens=4 implies 2048"));
}

}  // namespace
}  // namespace testing
}  // namespace transport
}  // namespace dcpmerge
