// The real NCCL transport. Tagged "gpu": every test skips (with the reason)
// where the build has no NCCL or the host too few GPUs, so the target runs
// in CI (skipping) and on a GPU host unchanged.
//   >= 1 GPU:  send/recv to self, local copies, abort; init deadline.
//   >= 2 GPUs: one DCP rank (GPU 0) + the server (GPU 1), whole protocol
//              steps: dynamic and fixed shape, a rejected step, a timeout.
#include "transport/nccl/nccl_transport.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "transport/layout.h"
#include "transport/rank_protocol.h"
#include "transport/server_protocol.h"
#include "transport/wire.h"

#if defined(DCPMERGE_WITH_NCCL)
#include <cuda_runtime.h>
#endif

namespace dcpmerge {
namespace transport {
namespace {

int GpuCount() {
#if defined(DCPMERGE_WITH_NCCL)
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
#else
  return 0;
#endif
}

#define REQUIRE_GPUS(n)                                                    \
  do {                                                                     \
    if (!NcclTransportAvailable()) GTEST_SKIP() << "built without NCCL";  \
    const int have = GpuCount();                                           \
    if (have < (n)) {                                                      \
      GTEST_SKIP() << "needs " << (n) << " GPU(s), found " << have;        \
    }                                                                      \
  } while (0)

absl::Time In(absl::Duration d) { return absl::Now() + d; }

TEST(NcclTransportTest, WithoutNcclCreateSaysWhy) {
  if (NcclTransportAvailable()) GTEST_SKIP() << "built with NCCL";
  EXPECT_TRUE(absl::IsUnimplemented(NcclTransport::NewUniqueId().status()));
}

TEST(NcclTransportTest, RejectsABadUniqueId) {
  if (!NcclTransportAvailable()) GTEST_SKIP() << "built without NCCL";
  EXPECT_TRUE(absl::IsInvalidArgument(
      NcclTransport::Create("short", 2, 0, {}, In(absl::Seconds(1))).status()));
}

#if defined(DCPMERGE_WITH_NCCL)

TEST(NcclTransportTest, SelfLoopbackCopiesAndAbort) {
  REQUIRE_GPUS(1);
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 128u);
  absl::StatusOr<std::unique_ptr<NcclTransport>> t =
      NcclTransport::Create(*id, 1, 0, {}, In(absl::Seconds(60)));
  ASSERT_TRUE(t.ok()) << t.status();
  NcclTransport& tr = **t;
  const size_t n = 1 << 20;
  Buffer host = *tr.AllocateHost(n);
  Buffer a = *tr.AllocateDevice(n), b = *tr.AllocateDevice(n);
  for (size_t i = 0; i < n; ++i) host.as<uint8_t>()[i] = static_cast<uint8_t>(i * 7);
  ASSERT_TRUE(tr.Copy(a.data(), host.data(), n).ok());
  ASSERT_TRUE(tr.GroupStart().ok());
  ASSERT_TRUE(tr.Send(a.data(), n, 0).ok());
  ASSERT_TRUE(tr.Recv(b.data(), n, 0).ok());
  ASSERT_TRUE(tr.GroupEnd().ok());
  ASSERT_TRUE(tr.Fill(host.data(), 0, n).ok());
  ASSERT_TRUE(tr.Copy2D(host.data(), 8, b.data(), 16, 8, 4).ok());
  ASSERT_TRUE(tr.Wait(In(absl::Seconds(30))).ok());
  for (size_t row = 0; row < 4; ++row) {
    for (size_t c = 0; c < 8; ++c) {
      EXPECT_EQ(host.as<uint8_t>()[row * 8 + c],
                static_cast<uint8_t>((row * 16 + c) * 7));
    }
  }
  // A receive from self with no send in its group: NCCL refuses it (invalid
  // usage, seen on NCCL 2.28); the transport reports UNAVAILABLE and aborts
  // the communicator instead of leaving it half-failed.
  const absl::Time start = absl::Now();
  const absl::Status lone = tr.Recv(b.data(), 64, 0);
  if (lone.ok()) {
    EXPECT_FALSE(tr.Wait(In(absl::Milliseconds(300))).ok());
    tr.Abort("test");
  } else {
    EXPECT_TRUE(absl::IsUnavailable(lone)) << lone;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(tr.aborted());
  EXPECT_TRUE(absl::IsUnavailable(tr.Wait(In(absl::Seconds(1)))));
  EXPECT_TRUE(absl::IsUnavailable(tr.Send(a.data(), 8, 0)));
  tr.Abort("again");  // idempotent
}

TEST(NcclTransportTest, InitMissesItsDeadlineWhenAPeerNeverJoins) {
  REQUIRE_GPUS(1);
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<NcclTransport>> t =
      NcclTransport::Create(*id, 2, 0, {}, In(absl::Seconds(2)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(t.status())) << t.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

// One DCP rank on GPU 0, the server on GPU 1: N = 1, bf16 passthrough, so
// the merge is the identity and the callback is two device copies.
ProtocolConfig OneRankConfig(ShapeMode mode, uint64_t version) {
  ProtocolConfig c;
  c.config_version = version;
  c.num_parts = 1;
  c.num_heads = 32;
  c.head_size = 128;
  c.max_tokens = 64;
  c.input_elem_bytes = 2;
  c.output_elem_bytes = 2;
  c.scale_layout = ScaleLayout::kNone;
  c.return_lse = true;
  c.shape_mode = mode;
  c.fixed_tokens = 16;
  return c;
}

absl::Status IdentityMerge(MergeStep& step) {
  cudaStream_t stream = static_cast<cudaStream_t>(step.queue);
  if (cudaMemcpyAsync(step.out, step.partial_out[0], step.out_bytes,
                      cudaMemcpyDeviceToDevice, stream) != cudaSuccess ||
      cudaMemcpyAsync(step.out_lse, step.partial_lse[0], step.out_lse_bytes,
                      cudaMemcpyDeviceToDevice, stream) != cudaSuccess) {
    return absl::InternalError("identity merge: cudaMemcpyAsync failed");
  }
  return absl::OkStatus();
}

struct RankSide {
  RankProtocol* protocol;
  NcclTransport* transport;
  Buffer partial_out, partial_lse, out, out_lse, host;
};

// One step on the rank's side: fill inputs, enqueue, complete, read back.
absl::Status RankStepOnGpu(RankSide& r, uint64_t step_id, int64_t tokens,
                           uint64_t expect_version, std::vector<uint8_t>* sent,
                           std::vector<uint8_t>* got) {
  const PayloadSizes s = r.protocol->Sizes(tokens);
  sent->resize(s.partial_out);
  for (size_t i = 0; i < sent->size(); ++i) {
    (*sent)[i] = static_cast<uint8_t>(i * 13 + step_id);
  }
  std::memcpy(r.host.data(), sent->data(), sent->size());
  absl::Status st = r.transport->Copy(r.partial_out.data(), r.host.data(),
                                      s.partial_out);
  if (!st.ok()) return st;
  st = r.transport->Fill(r.partial_lse.data(), 0, s.partial_lse);
  if (!st.ok()) return st;
  RankStep step;
  step.step_id = step_id;
  step.num_tokens = tokens;
  step.expect_config_version = expect_version;
  step.partial_out = r.partial_out.data();
  step.partial_lse = r.partial_lse.as<float>();
  step.out = r.out.data();
  step.out_lse = r.out_lse.as<float>();
  absl::StatusOr<StepTicket> ticket = r.protocol->EnqueueStep(step);
  if (!ticket.ok()) return ticket.status();
  st = r.transport->Copy(r.host.data(), r.out.data(), s.out);
  if (!st.ok()) return st;
  absl::Status result = r.protocol->Complete(*ticket, In(absl::Seconds(30)));
  got->assign(r.host.as<uint8_t>(), r.host.as<uint8_t>() + s.out);
  return result;
}

TEST(NcclTransportTest, OneRankAndServerOnTwoGpus) {
  REQUIRE_GPUS(2);
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  std::unique_ptr<NcclTransport> server_t, rank_t;
  absl::Status server_init, rank_init;
  {
    std::thread server([&] {
      NcclTransportOptions o;
      o.device = 1;
      auto t = NcclTransport::Create(*id, 2, 1, o, In(absl::Seconds(60)));
      server_init = t.status();
      if (t.ok()) server_t = std::move(*t);
    });
    NcclTransportOptions o;
    o.device = 0;
    auto t = NcclTransport::Create(*id, 2, 0, o, In(absl::Seconds(60)));
    rank_init = t.status();
    if (t.ok()) rank_t = std::move(*t);
    server.join();
  }
  ASSERT_TRUE(server_init.ok()) << server_init;
  ASSERT_TRUE(rank_init.ok()) << rank_init;

  for (ShapeMode mode : {ShapeMode::kDynamic, ShapeMode::kFixed}) {
    SCOPED_TRACE(mode == ShapeMode::kFixed ? "fixed" : "dynamic");
    const ProtocolConfig c = OneRankConfig(mode, 3);
    auto server = ServerProtocol::Create(server_t.get(), c, IdentityMerge);
    ASSERT_TRUE(server.ok()) << server.status();
    auto rank = RankProtocol::Create(rank_t.get(), c);
    ASSERT_TRUE(rank.ok()) << rank.status();
    const PayloadSizes max = RankPayloadSizes(c, 0, c.max_tokens);
    RankSide side{rank->get(), rank_t.get(), *rank_t->AllocateDevice(max.partial_out),
                  *rank_t->AllocateDevice(max.partial_lse),
                  *rank_t->AllocateDevice(max.out), *rank_t->AllocateDevice(max.out_lse),
                  *rank_t->AllocateHost(max.partial_out)};
    const int kSteps = 200;
    // Steps: a valid one, a rejected one (wrong config version), more valid
    // ones (timed).
    std::thread serve([&] {
      for (int i = 0; i < kSteps + 2; ++i) {
        auto outcome = (*server)->ServeStep(In(absl::Seconds(30)));
        if (!outcome.ok()) {
          ADD_FAILURE() << outcome.status();
          return;
        }
      }
    });
    const int64_t t1 = mode == ShapeMode::kFixed ? 16 : 5;
    std::vector<uint8_t> sent, got;
    absl::Status s = RankStepOnGpu(side, 1, t1, 3, &sent, &got);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(got, sent);
    s = RankStepOnGpu(side, 2, t1, 4, &sent, &got);
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    EXPECT_TRUE(std::all_of(got.begin(), got.end(),
                            [](uint8_t b) { return b == kPoisonByte; }));
    const int64_t t2 = mode == ShapeMode::kFixed ? 16 : 64;
    const absl::Time start = absl::Now();
    for (int i = 0; i < kSteps; ++i) {
      s = RankStepOnGpu(side, 10 + i, t2, 0, &sent, &got);
      if (!s.ok()) {
        ADD_FAILURE() << "step " << i << ": " << s;
        server_t->Abort("test failed");  // lets the serving thread finish
        break;
      }
    }
    const absl::Duration per_step = (absl::Now() - start) / kSteps;
    EXPECT_EQ(got, sent);
    serve.join();
    std::printf("[ timing ] %s: %d steps of T=%lld H=32 D=128 bf16, "
                "%.1f us/step (host-synchronised round trips)\n",
                mode == ShapeMode::kFixed ? "fixed" : "dynamic", kSteps,
                static_cast<long long>(t2),
                absl::ToDoubleMicroseconds(per_step));
  }

  // A rank that never sends: the server gives up at its deadline.
  {
    auto server = ServerProtocol::Create(
        server_t.get(), OneRankConfig(ShapeMode::kDynamic, 3), IdentityMerge);
    ASSERT_TRUE(server.ok());
    const absl::Time start = absl::Now();
    auto outcome = (*server)->ServeStep(In(absl::Milliseconds(500)));
    EXPECT_TRUE(absl::IsUnavailable(outcome.status())) << outcome.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    EXPECT_TRUE(server_t->aborted());
    rank_t->Abort("control plane: server re-forms");
  }
}

#endif  // DCPMERGE_WITH_NCCL

}  // namespace
}  // namespace transport
}  // namespace dcpmerge
