// The C ABI's library functions: versions, the error channel, dcpmerge_free.
#include <cstdlib>
#include <string>

#include "base/version.h"
#include "capi/dcpmerge_c.h"
#include "capi/status.h"

extern "C" {

int32_t dcpmerge_abi_version(void) { return DCPMERGE_C_ABI_VERSION; }

const char* dcpmerge_version(void) { return dcpmerge::kVersion; }

const char* dcpmerge_build_commit(void) {
  static const std::string commit(dcpmerge::BuildCommit());
  return commit.c_str();
}

const char* dcpmerge_last_error_message(void) { return dcpmerge::capi::LastMessage(); }

void dcpmerge_free(void* p) { std::free(p); }

}  // extern "C"
