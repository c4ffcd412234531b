// Failed authentications: answered at once, rate-limited per peer address
// and globally (server/auth_guard.h).
#include "server/auth_guard.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;

const grpc::Status kDenied(grpc::StatusCode::PERMISSION_DENIED, "authorization: wrong");

AuthFailureGuard::Options NoRefill(double peer_burst, double global_burst) {
  AuthFailureGuard::Options o;
  o.peer_burst = peer_burst;
  o.peer_per_second = 0;
  o.global_burst = global_burst;
  o.global_per_second = 0;
  return o;
}

TEST(AuthFailureGuardTest, EachAddressHasItsBurstThenIsThrottled) {
  SetLogQuiet(true);
  AuthFailureGuard guard("test token", NoRefill(3, 100));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(guard.Fail(absl::StrCat("ipv4:10.0.0.1:", 1000 + i), kDenied).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  // Another port of the same host shares its bucket.
  const grpc::Status throttled = guard.Fail("ipv4:10.0.0.1:2000", kDenied);
  EXPECT_EQ(throttled.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(throttled.error_message(), HasSubstr("from this address"));
  EXPECT_THAT(throttled.error_message(), HasSubstr("correct credential is still accepted"));
  // Another host does not.
  EXPECT_EQ(guard.Fail("ipv6:[::1]:5000", kDenied).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(guard.failures(), 5u);
  EXPECT_EQ(guard.throttled(), 1u);
}

TEST(AuthFailureGuardTest, AllAddressesShareTheGlobalBucket) {
  SetLogQuiet(true);
  AuthFailureGuard guard("test token", NoRefill(10, 4));
  for (int host = 0; host < 4; ++host) {
    EXPECT_EQ(guard.Fail(absl::StrCat("ipv4:10.0.1.", host, ":1"), kDenied).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  const grpc::Status throttled = guard.Fail("ipv4:10.0.1.99:1", kDenied);
  EXPECT_EQ(throttled.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(throttled.error_message(), HasSubstr("from all peers"));
}

TEST(AuthFailureGuardTest, BucketsRefill) {
  SetLogQuiet(true);
  AuthFailureGuard::Options o = NoRefill(1, 100);
  o.peer_per_second = 50;  // one token each 20 ms
  AuthFailureGuard guard("test token", o);
  EXPECT_EQ(guard.Fail("ipv4:10.0.2.1:1", kDenied).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(guard.Fail("ipv4:10.0.2.1:1", kDenied).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  absl::SleepFor(absl::Milliseconds(60));
  EXPECT_EQ(guard.Fail("ipv4:10.0.2.1:1", kDenied).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

// No failure waits: 20,000 failures from 5,000 addresses (beyond max_peers,
// so the peer table is pruned) take milliseconds, not a penalty each.
TEST(AuthFailureGuardTest, FailuresAreAnsweredAtOnceAndThePeerTableIsBounded) {
  SetLogQuiet(true);
  AuthFailureGuard::Options o;
  o.max_peers = 256;
  AuthFailureGuard guard("test token", o);
  const absl::Time t0 = absl::Now();
  int denied = 0, throttled = 0;
  for (int i = 0; i < 20000; ++i) {
    const grpc::Status st = guard.Fail(absl::StrCat("ipv4:10.1.", (i % 5000) / 256, ".", i % 256, ":1"), kDenied);
    denied += st.error_code() == grpc::StatusCode::PERMISSION_DENIED;
    throttled += st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  EXPECT_EQ(denied + throttled, 20000);
  EXPECT_GE(denied, 200);  // the global burst at least
  EXPECT_EQ(guard.failures(), 20000u);
  EXPECT_EQ(guard.throttled(), static_cast<uint64_t>(throttled));
}

TEST(CheckTokenRankTest, ATokenActsForItsRankOnly) {
  EXPECT_TRUE(CheckTokenRank(2, 2).ok());
  EXPECT_TRUE(CheckTokenRank(JoinSecretCheck::kAnyRank, 7).ok());
  const absl::Status st = CheckTokenRank(1, 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(st.message()), HasSubstr("for rank 1, not rank 2"));
}

}  // namespace
}  // namespace dcpmerge
