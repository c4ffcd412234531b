#include "tools/dcpmergectl/scales_json.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dcpmerge::ctl {
namespace {

using ::testing::HasSubstr;

TEST(ScalesJsonTest, ParsesLayerToScale) {
  auto r = ParseScalesJson("{\n  \"0\": 0.0125,\n  \"3\": 2.5e-2,\n\t\"2147483647\": 1E0 }\n");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_FLOAT_EQ(r->at(0), 0.0125f);
  EXPECT_FLOAT_EQ(r->at(3), 0.025f);
  EXPECT_FLOAT_EQ(r->at(2147483647), 1.0f);
}

TEST(ScalesJsonTest, EmptyObjectIsValid) {
  auto r = ParseScalesJson(" { } ");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->empty());
}

struct BadCase {
  const char* text;
  const char* message;  // substring of the error
};

class ScalesJsonBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ScalesJsonBadTest, RejectsWithAClearMessage) {
  auto r = ParseScalesJson(GetParam().text);
  ASSERT_FALSE(r.ok()) << GetParam().text;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(GetParam().message)) << GetParam().text;
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("line ")) << "position missing";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ScalesJsonBadTest,
    ::testing::Values(BadCase{"", "empty file"}, BadCase{"   \n", "empty file"},
                      BadCase{"[1, 2]", "expected '{'"}, BadCase{"{\"1\": 0.5", "missing '}'"},
                      BadCase{"{\"1\": 0.5,}", "trailing ','"}, BadCase{"{\"1\": 0.5} x", "after the closing"},
                      BadCase{"{1: 0.5}", "double quotes"}, BadCase{"{\"a\": 0.5}", "not a non-negative decimal"},
                      BadCase{"{\"-1\": 0.5}", "not a non-negative decimal"},
                      BadCase{"{\"01\": 0.5}", "leading zero"}, BadCase{"{\"\": 0.5}", "empty layer id"},
                      BadCase{"{\"2147483648\": 0.5}", "beyond 2147483647"},
                      BadCase{"{\"1\": 0.5, \"1\": 0.6}", "duplicate layer 1 (first given at line 1, column 2)"},
                      BadCase{"{\"1\" 0.5}", "expected ':'"}, BadCase{"{\"1\": \"0.5\"}", "not a string"},
                      BadCase{"{\"1\": null}", "true/false/null"}, BadCase{"{\"1\": [0.5]}", "object or array"},
                      BadCase{"{\"1\": 0}", "must be > 0"}, BadCase{"{\"1\": -0.5}", "must be > 0"},
                      BadCase{"{\"1\": 1e39}", "overflows"}, BadCase{"{\"1\": 1e-50}", "underflows"},
                      BadCase{"{\"1\": .5}", "not a JSON number"}, BadCase{"{\"1\": 05}", "leading zero"},
                      BadCase{"{\"1\": 1.}", "digits after '.'"}, BadCase{"{\"1\": 1e}", "exponent"},
                      BadCase{"{\"1\": NaN}", "not a JSON number"}, BadCase{"{\"1\": 0.5 \"2\": 1}", "expected ','"},
                      BadCase{"{\"1\": 0.5}\n// comment", "line 2, column 1: unexpected text"}));

}  // namespace
}  // namespace dcpmerge::ctl
