// base/: the head-slicing rule, file reading, percentiles, the RNG and the
// version line.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/file.h"
#include "base/head_slice.h"
#include "base/percentile.h"
#include "base/rng.h"
#include "base/version.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(HeadSliceTest, ContiguousNearlyEvenFirstRanksGetTheRemainder) {
  for (int h = 1; h <= 20; ++h) {
    for (int n = 1; n <= h; ++n) {
      int next = 0;
      for (int r = 0; r < n; ++r) {
        const HeadRange s = HeadSlice(h, n, r);
        EXPECT_EQ(s.begin, next) << h << " heads, " << n << " parts, rank " << r;
        EXPECT_EQ(s.count, h / n + (r < h % n ? 1 : 0));
        next += s.count;
      }
      EXPECT_EQ(next, h);
    }
  }
}

TEST(FileTest, ReadsBytesAndNamesWhatFailed) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/base_test_file";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite("a\0b\n", 1, 4, f);
  std::fclose(f);
  absl::StatusOr<std::string> got = ReadFile(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, std::string("a\0b\n", 4));
  absl::StatusOr<std::string> missing = ReadFile("/nonexistent/x.pem", "tls_cert_file");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("tls_cert_file: cannot read /nonexistent/x.pem"));
}

TEST(PercentileTest, NearestRank) {
  EXPECT_EQ(Percentile({}, 0.5), 0.0);
  EXPECT_EQ(Percentile({3, 1, 2}, 0.5), 2.0);
  EXPECT_EQ(Percentile({3, 1, 2}, 0.0), 1.0);
  EXPECT_EQ(Percentile({3, 1, 2}, 1.0), 3.0);
  std::vector<double> sorted;
  for (int i = 1; i <= 100; ++i) sorted.push_back(i);
  EXPECT_EQ(PercentileOfSorted(sorted, 0.99), 99.0);
}

TEST(RngTest, DeterministicAndInRange) {
  SplitMix64 a{42}, b{42};
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(a.Next(), b.Next());
    const double u = a.Uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    const float f = b.Uniform(-4.0f, 4.0f);
    EXPECT_GE(f, -4.0f);
    EXPECT_LT(f, 4.0f);
    b.Uniform();  // keep a and b in step
    a.Uniform(0.0f, 1.0f);
  }
}

TEST(VersionTest, LineHasVersionAndCommit) {
  EXPECT_STREQ(kVersion, "0.2.0");
  EXPECT_FALSE(BuildCommit().empty());
  EXPECT_THAT(std::string(BuildCommit()), MatchesRegex("unknown|[0-9a-f]+(-dirty)?"));
  EXPECT_EQ(VersionLine("prog"), "prog 0.2.0 (commit " + std::string(BuildCommit()) + ")");
}

}  // namespace
}  // namespace dcpmerge
