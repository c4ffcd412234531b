#include "server/config_store.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_config.h"

namespace dcpmerge {
namespace {

using ::testing::HasSubstr;
using testing::SmallConfig;

TEST(ConfigStoreTest, StartsUnconfigured) {
  ConfigStore store;
  EXPECT_FALSE(store.Current()->configured);
  EXPECT_EQ(store.Current()->version, 0u);
}

TEST(ConfigStoreTest, ConfigureAndScalesBumpVersion) {
  ConfigStore store;
  auto v1 = store.Configure(SmallConfig(), 0.5f);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ((*v1)->version, 1u);
  EXPECT_FLOAT_EQ((*v1)->ScaleForLayer(3), 0.5f);
  auto v2 = store.SetScales({{3, 0.25f}}, false, 0.0f);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ((*v2)->version, 2u);
  EXPECT_FLOAT_EQ((*v2)->ScaleForLayer(3), 0.25f);
  EXPECT_FLOAT_EQ((*v2)->ScaleForLayer(4), 0.5f);
  // The old snapshot is unchanged (immutable).
  EXPECT_FLOAT_EQ((*v1)->ScaleForLayer(3), 0.5f);
  auto v3 = store.SetScales({{5, 2.0f}}, true, 0.0f);
  ASSERT_TRUE(v3.ok());
  EXPECT_FLOAT_EQ((*v3)->ScaleForLayer(3), 0.5f);
  EXPECT_FLOAT_EQ((*v3)->ScaleForLayer(5), 2.0f);
}

struct BadConfigCase {
  const char* field;
  void (*mutate)(v1::GroupConfig*);
};

TEST(ConfigStoreTest, BadConfigsNameTheField) {
  const BadConfigCase cases[] = {
      {"config.world_size", [](v1::GroupConfig* c) { c->set_world_size(0); }},
      {"config.world_size", [](v1::GroupConfig* c) { c->set_world_size(65); }},
      {"config.num_heads", [](v1::GroupConfig* c) { c->set_num_heads(0); }},
      {"config.head_size", [](v1::GroupConfig* c) { c->set_head_size(-1); }},
      {"config.max_tokens", [](v1::GroupConfig* c) { c->set_max_tokens(0); }},
      {"config.max_tokens", [](v1::GroupConfig* c) { c->set_max_tokens(int64_t{1} << 40); }},
      {"config.input_dtype", [](v1::GroupConfig* c) { c->set_input_dtype(v1::DTYPE_UNSPECIFIED); }},
      {"config.input_dtype", [](v1::GroupConfig* c) { c->set_input_dtype(static_cast<v1::DType>(17)); }},
      {"config.lse_base", [](v1::GroupConfig* c) { c->set_lse_base(v1::LSE_BASE_UNSPECIFIED); }},
      {"config.lse_layout", [](v1::GroupConfig* c) { c->set_lse_layout(v1::LSE_LAYOUT_UNSPECIFIED); }},
      {"config.output_mode", [](v1::GroupConfig* c) { c->set_output_mode(v1::OUTPUT_MODE_UNSPECIFIED); }},
      {"config.group_size", [](v1::GroupConfig* c) {
         c->set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP);
         c->set_group_size(32);
       }},
      {"config.group_size", [](v1::GroupConfig* c) {
         c->set_output_mode(v1::OUTPUT_MODE_FP8_PER_GROUP);
         c->set_group_size(128);  // head_size 64
       }},
      {"config.return_mode", [](v1::GroupConfig* c) { c->set_return_mode(v1::RETURN_MODE_HEAD_SLICE); }},
  };
  for (const BadConfigCase& bc : cases) {
    ConfigStore store;
    v1::GroupConfig c = SmallConfig();
    bc.mutate(&c);
    auto r = store.Configure(c, 0.0f);
    ASSERT_FALSE(r.ok()) << bc.field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bc.field;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(bc.field));
    EXPECT_FALSE(store.Current()->configured);
  }
}

TEST(ConfigStoreTest, BadScalesRejectedAtomically) {
  ConfigStore store;
  ASSERT_TRUE(store.Configure(SmallConfig(), 1.0f).ok());
  const float bad[] = {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(), 1e-40f};
  for (float s : bad) {
    auto r = store.SetScales({{1, 0.5f}, {7, s}}, false, 0.0f);
    ASSERT_FALSE(r.ok()) << s;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("layer_scales[7]"));
    EXPECT_EQ(store.Current()->version, 1u);
    EXPECT_TRUE(store.Current()->layer_scales.empty());
  }
  auto r = store.SetScales({}, false, -2.0f);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("default_scale"));
}

// Readers always see a consistent snapshot: every scale of a snapshot was
// written together with its version (scale == version as a float).
TEST(ConfigStoreTest, ConcurrentReadersSeeConsistentSnapshots) {
  ConfigStore store;
  ASSERT_TRUE(store.Configure(SmallConfig(), 1.0f).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<uint64_t> reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      uint64_t last = 0;
      while (!stop.load()) {
        auto snap = store.Current();
        if (snap->version < last) ++bad;
        last = snap->version;
        if (snap->version >= 2) {
          const float want = static_cast<float>(snap->version);
          for (int layer = 0; layer < 4; ++layer) {
            if (snap->ScaleForLayer(layer) != want) ++bad;
          }
        }
        ++reads;
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    const float next = static_cast<float>(store.Current()->version + 1);
    ASSERT_TRUE(store.SetScales({{0, next}, {1, next}, {2, next}, {3, next}}, true, 0.0f).ok());
  }
  // On a loaded machine the writer can finish before a reader ran at all.
  while (reads.load() < 3) std::this_thread::yield();
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(reads.load(), 0u);
}

}  // namespace
}  // namespace dcpmerge
