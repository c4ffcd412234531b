// merge_bench when the build has no CUDA toolkit.
#include <cstdio>

int main() {
  std::fprintf(stderr, "merge_bench: built without CUDA (nvcc not found)\n");
  return 1;
}
