#include "server/config_store.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
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


// Issue 11, finding 5: SetScales takes the layer range MergeData takes.
TEST(ConfigStoreLimitsTest, ScaleLayersOutsideTheRangeAreRefused) {
  ConfigStore::Options o;
  o.max_layers = 128;
  ConfigStore store(o);
  ASSERT_TRUE(store.Configure(SmallConfig(), 0.5f).ok());
  for (int32_t layer : {-7, -1, 128, 1 << 30}) {
    auto r = store.SetScales({{layer, 0.25f}}, false, 0.0f);
    ASSERT_FALSE(r.ok()) << layer;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(absl::StrCat("layer_scales[", layer, "]")));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("max_layers"));
  }
  EXPECT_EQ(store.Current()->version, 1u);
  std::map<int32_t, float> all;
  for (int32_t l = 0; l < 128; ++l) all[l] = 0.5f;
  ASSERT_TRUE(store.SetScales(all, true, 0.0f).ok());
  EXPECT_EQ(store.Current()->layer_scales.size(), 128u);
}

TEST(ConfigStoreLimitsTest, ShapesBeyondTheMessageOrPendingLimitsAreRefused) {
  ConfigStore::Options o;
  o.max_part_bytes = 4096;
  ConfigStore store(o);
  // SmallConfig: 8 tokens x 2 heads x 64 x bf16 + LSE = 2112 bytes per part.
  ASSERT_TRUE(store.Configure(SmallConfig(), 0.0f).ok());
  v1::GroupConfig big = SmallConfig();
  big.set_max_tokens(64);
  auto r = store.Configure(big, 0.0f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("config.max_tokens"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("max_message_bytes"));
  ConfigStore::Options p;
  p.max_step_bytes = 3 * 2112 - 1;
  ConfigStore pending(p);
  auto q = pending.Configure(SmallConfig(3), 0.0f);
  ASSERT_FALSE(q.ok());
  EXPECT_THAT(std::string(q.status().message()), HasSubstr("max_pending_bytes"));
}

// A persist function sees every new snapshot first; when it fails nothing
// changes. Restore continues the version.
TEST(ConfigStoreLimitsTest, PersistFailureChangesNothingAndRestoreContinuesVersions) {
  ConfigStore store;
  int calls = 0;
  bool fail = false;
  store.SetPersist([&](const ConfigSnapshot& s) {
    ++calls;
    return fail ? absl::UnavailableError("disk full") : absl::OkStatus();
  });
  ASSERT_TRUE(store.Configure(SmallConfig(), 0.5f).ok());
  fail = true;
  auto r = store.SetScales({{1, 0.25f}}, false, 0.0f);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store.Current()->version, 1u);
  EXPECT_TRUE(store.Current()->layer_scales.empty());
  EXPECT_EQ(calls, 2);

  ConfigStore again;
  ConfigSnapshot s = *store.Current();
  s.version = 41;
  s.layer_scales[3] = 0.125f;
  ASSERT_TRUE(again.Restore(s).ok());
  EXPECT_EQ(again.Current()->version, 41u);
  auto next = again.SetScales({{4, 0.5f}}, false, 0.0f);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ((*next)->version, 42u);
  EXPECT_FLOAT_EQ((*next)->ScaleForLayer(3), 0.125f);
  ConfigSnapshot bad = s;
  bad.layer_scales[-2] = 1.0f;
  EXPECT_THAT(std::string(ConfigStore().Restore(bad).message()), HasSubstr("layer_scales[-2]"));
}

}  // namespace
}  // namespace dcpmerge
