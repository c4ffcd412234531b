// The configurations the fuzz targets of structured inputs choose from with
// their first byte (modulo the count), shared with make_corpus so the seeds
// fit them.
#ifndef DCPMERGE_TESTS_FUZZ_FUZZ_CONFIGS_H_
#define DCPMERGE_TESTS_FUZZ_FUZZ_CONFIGS_H_

#include <cstdint>
#include <vector>

#include "dcpmerge/v1/config.pb.h"
#include "transport/layout.h"

namespace dcpmerge::fuzz {

// wire_fuzzer: one of each shape the NCCL payload sizes depend on.
std::vector<transport::ProtocolConfig> WireConfigs();

// merge_request_fuzzer: one of each shape the validation and the answers
// depend on.
std::vector<v1::GroupConfig> MergeConfigs();

}  // namespace dcpmerge::fuzz

#endif  // DCPMERGE_TESTS_FUZZ_FUZZ_CONFIGS_H_
