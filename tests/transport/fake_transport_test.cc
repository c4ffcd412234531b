// The fake transport keeps NCCL's semantics (transport/transport.h).
#include "transport/fake_transport.h"

#include <cstring>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace transport {
namespace {

absl::Time Soon(int ms = 100) { return absl::Now() + absl::Milliseconds(ms); }
absl::Time Later() { return absl::Now() + absl::Seconds(5); }

struct Pair {
  std::shared_ptr<FakeWorld> world = FakeWorld::Create(2);
  std::unique_ptr<FakeTransport> a = *world->Connect(0);
  std::unique_ptr<FakeTransport> b = *world->Connect(1);
};

TEST(FakeTransportTest, ConnectOncePerRank) {
  auto world = FakeWorld::Create(2);
  auto t = world->Connect(0);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->rank(), 0);
  EXPECT_EQ((*t)->num_parties(), 2);
  EXPECT_TRUE(absl::IsAlreadyExists(world->Connect(0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(world->Connect(2).status()));
}

TEST(FakeTransportTest, SendCompletesOnlyOnceTheReceiveIsPosted) {
  Pair p;
  Buffer src = *p.a->AllocateDevice(64);
  Buffer dst = *p.b->AllocateDevice(64);
  std::iota(src.as<uint8_t>(), src.as<uint8_t>() + 64, 0);
  ASSERT_TRUE(p.a->Send(src.data(), 64, 1).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.a->Wait(Soon())));
  EXPECT_EQ(p.world->UnmatchedTransfers(), 1);
  ASSERT_TRUE(p.b->Recv(dst.data(), 64, 0).ok());
  EXPECT_TRUE(p.a->Wait(Later()).ok());
  EXPECT_TRUE(p.b->Wait(Later()).ok());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 64), 0);
  EXPECT_EQ(p.world->UnmatchedTransfers(), 0);
}

TEST(FakeTransportTest, MatchesInIssueOrderAcrossGroups) {
  Pair p;
  Buffer src = *p.a->AllocateDevice(3 * 8);
  Buffer dst = *p.b->AllocateDevice(3 * 8);
  for (int i = 0; i < 24; ++i) src.as<uint8_t>()[i] = static_cast<uint8_t>(i);
  // One group of three sends; three separate receives.
  ASSERT_TRUE(p.a->GroupStart().ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.a->Send(src.at(8 * i), 8, 1).ok());
  ASSERT_TRUE(p.a->GroupEnd().ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.b->Recv(dst.at(8 * i), 8, 0).ok());
  EXPECT_TRUE(p.a->Wait(Later()).ok());
  EXPECT_TRUE(p.b->Wait(Later()).ok());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 24), 0);
}

TEST(FakeTransportTest, UngroupedExchangeDeadlocksLikeNccl) {
  Pair p;
  Buffer a_out = *p.a->AllocateDevice(8), a_in = *p.a->AllocateDevice(8);
  Buffer b_out = *p.b->AllocateDevice(8), b_in = *p.b->AllocateDevice(8);
  // Both send first: each send waits for a receive queued behind the
  // other's send.
  ASSERT_TRUE(p.a->Send(a_out.data(), 8, 1).ok());
  ASSERT_TRUE(p.a->Recv(a_in.data(), 8, 1).ok());
  ASSERT_TRUE(p.b->Send(b_out.data(), 8, 0).ok());
  ASSERT_TRUE(p.b->Recv(b_in.data(), 8, 0).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.a->Wait(Soon())));
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.b->Wait(Soon())));
  p.a->Abort("test");
  p.b->Abort("test");
}

TEST(FakeTransportTest, GroupedExchangeProgresses) {
  Pair p;
  Buffer a_out = *p.a->AllocateDevice(8), a_in = *p.a->AllocateDevice(8);
  Buffer b_out = *p.b->AllocateDevice(8), b_in = *p.b->AllocateDevice(8);
  std::memset(a_out.data(), 1, 8);
  std::memset(b_out.data(), 2, 8);
  for (auto* t : {p.a.get(), p.b.get()}) {
    const bool is_a = t == p.a.get();
    ASSERT_TRUE(t->GroupStart().ok());
    ASSERT_TRUE(t->Send(is_a ? a_out.data() : b_out.data(), 8, is_a ? 1 : 0).ok());
    ASSERT_TRUE(t->Recv(is_a ? a_in.data() : b_in.data(), 8, is_a ? 1 : 0).ok());
    ASSERT_TRUE(t->GroupEnd().ok());
  }
  EXPECT_TRUE(p.a->Wait(Later()).ok());
  EXPECT_TRUE(p.b->Wait(Later()).ok());
  EXPECT_EQ(a_in.as<uint8_t>()[7], 2);
  EXPECT_EQ(b_in.as<uint8_t>()[7], 1);
}

TEST(FakeTransportTest, SizeMismatchFailsBothParties) {
  Pair p;
  Buffer src = *p.a->AllocateDevice(16), dst = *p.b->AllocateDevice(16);
  ASSERT_TRUE(p.a->Send(src.data(), 16, 1).ok());
  ASSERT_TRUE(p.b->Recv(dst.data(), 8, 0).ok());
  const absl::Status a = p.a->Wait(Later());
  const absl::Status b = p.b->Wait(Later());
  EXPECT_TRUE(absl::IsUnavailable(a)) << a;
  EXPECT_TRUE(absl::IsUnavailable(b)) << b;
  EXPECT_NE(a.message().find("size mismatch"), std::string::npos) << a;
  // A failed communicator refuses new work.
  EXPECT_TRUE(absl::IsUnavailable(p.a->Send(src.data(), 16, 1)));
}

TEST(FakeTransportTest, AbortWithdrawsAndPeersTimeOut) {
  Pair p;
  Buffer buf_a = *p.a->AllocateDevice(8), buf_b = *p.b->AllocateDevice(8);
  ASSERT_TRUE(p.a->Recv(buf_a.data(), 8, 1).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.a->Wait(Soon(20))));
  p.a->Abort("control plane said so");
  EXPECT_TRUE(p.a->aborted());
  const absl::Status s = p.a->Wait(Later());
  EXPECT_TRUE(absl::IsUnavailable(s));
  EXPECT_NE(s.message().find("control plane said so"), std::string::npos);
  EXPECT_TRUE(absl::IsUnavailable(p.a->Recv(buf_a.data(), 8, 1)));
  // The peer's send finds no receive any more: it hangs until its deadline,
  // as with NCCL.
  ASSERT_TRUE(p.b->Send(buf_b.data(), 8, 0).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.b->Wait(Soon())));
  EXPECT_EQ(p.world->UnmatchedTransfers(), 1);
  p.b->Abort("done");
  EXPECT_EQ(p.world->UnmatchedTransfers(), 0);
}

TEST(FakeTransportTest, AbortFromAnotherThreadInterruptsWait) {
  Pair p;
  Buffer buf = *p.a->AllocateDevice(8);
  ASSERT_TRUE(p.a->Recv(buf.data(), 8, 1).ok());
  std::thread aborter([&] {
    absl::SleepFor(absl::Milliseconds(50));
    p.a->Abort("shutdown");
  });
  const absl::Time start = absl::Now();
  EXPECT_TRUE(absl::IsUnavailable(p.a->Wait(absl::InfiniteFuture())));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  aborter.join();
}

TEST(FakeTransportTest, KilledPartyNeverProgresses) {
  Pair p;
  Buffer src = *p.a->AllocateDevice(8), dst = *p.b->AllocateDevice(8);
  p.world->Kill(1);
  ASSERT_TRUE(p.a->Send(src.data(), 8, 1).ok());
  ASSERT_TRUE(p.b->Recv(dst.data(), 8, 0).ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.a->Wait(Soon())));
  EXPECT_TRUE(absl::IsDeadlineExceeded(p.b->Wait(Soon(10))));
  p.a->Abort("peer dead");
  p.b->Abort("killed");
}

TEST(FakeTransportTest, LocalCopiesRunInQueueOrder) {
  Pair p;
  Buffer x = *p.a->AllocateHost(16), y = *p.a->AllocateDevice(16);
  Buffer z = *p.a->AllocateDevice(4 * 8);
  std::memset(x.data(), 7, 16);
  ASSERT_TRUE(p.a->Fill(y.data(), 0xFF, 16).ok());
  ASSERT_TRUE(p.a->Copy(y.data(), x.data(), 8).ok());  // after the fill
  ASSERT_TRUE(p.a->Fill(z.data(), 0, 32).ok());
  // Rows of 2 bytes from a pitch of 4 to a pitch of 8.
  ASSERT_TRUE(p.a->Copy2D(z.data(), 8, y.at(6), 4, 2, 2).ok());
  ASSERT_TRUE(p.a->Wait(Later()).ok());
  EXPECT_EQ(y.as<uint8_t>()[7], 7);
  EXPECT_EQ(y.as<uint8_t>()[8], 0xFF);
  EXPECT_EQ(z.as<uint8_t>()[0], 7);     // y[6]
  EXPECT_EQ(z.as<uint8_t>()[1], 7);     // y[7]
  EXPECT_EQ(z.as<uint8_t>()[2], 0);
  EXPECT_EQ(z.as<uint8_t>()[8], 0xFF);  // y[10]
  EXPECT_EQ(z.as<uint8_t>()[9], 0xFF);  // y[11]
  EXPECT_TRUE(absl::IsInvalidArgument(p.a->Copy2D(z.data(), 1, y.data(), 4, 2, 1)));
}

TEST(FakeTransportTest, ZeroByteTransfersAreSkipped) {
  Pair p;
  ASSERT_TRUE(p.a->Send(nullptr, 0, 1).ok());
  ASSERT_TRUE(p.a->GroupStart().ok());
  ASSERT_TRUE(p.a->Recv(nullptr, 0, 1).ok());
  ASSERT_TRUE(p.a->GroupEnd().ok());
  EXPECT_TRUE(p.a->Wait(Soon()).ok());
  EXPECT_EQ(p.world->UnmatchedTransfers(), 0);
}

TEST(FakeTransportTest, GroupMisuse) {
  Pair p;
  EXPECT_TRUE(absl::IsFailedPrecondition(p.a->GroupEnd()));
  ASSERT_TRUE(p.a->GroupStart().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(p.a->GroupStart()));
  EXPECT_TRUE(absl::IsFailedPrecondition(p.a->Wait(Soon())));
  EXPECT_TRUE(absl::IsInvalidArgument(p.a->Send(nullptr, 8, 1)));
  EXPECT_TRUE(absl::IsInvalidArgument(p.a->Send(nullptr, 0, 5)));
  ASSERT_TRUE(p.a->GroupEnd().ok());
}

}  // namespace
}  // namespace transport
}  // namespace dcpmerge
