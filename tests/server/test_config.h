// Shared helpers for the server unit tests.
#ifndef DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_
#define DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_

#include "common/group_spec.h"
#include "dcpmerge/v1/config.pb.h"

namespace dcpmerge::testing {

// N ranks, 2 heads of 64, up to 8 tokens; the defaults otherwise (bf16 in,
// FP8 per tensor out, full return).
inline v1::GroupConfig SmallConfig(int num_parts = 3) { return DefaultGroupConfig(num_parts, 2, 64, 8); }

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_SERVER_TEST_CONFIG_H_
