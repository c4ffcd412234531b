// The properties a fuzz target asserts. A failed one prints what failed and
// aborts, which libFuzzer reports as a crash and saves the input that did it.
#ifndef DCPMERGE_TESTS_FUZZ_FUZZ_CHECK_H_
#define DCPMERGE_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

// `detail` (anything convertible to std::string) is evaluated only on
// failure, so building it costs nothing on the fuzzer's hot path.
#define FUZZ_CHECK(cond, detail)                                             \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: property failed: %s\n  %s\n", __FILE__,  \
                   __LINE__, #cond, std::string(detail).c_str());            \
      std::abort();                                                          \
    }                                                                        \
  } while (0)

#endif  // DCPMERGE_TESTS_FUZZ_FUZZ_CHECK_H_
