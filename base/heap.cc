#include "base/heap.h"

#include <malloc.h>

namespace dcpmerge {

void KeepFreedBuffersInHeap() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

size_t BoundHeapRetention(size_t retain_bytes, bool* trimmed) {
  *trimmed = false;
  const struct mallinfo2 mi = mallinfo2();
  const size_t free_bytes = mi.fordblks;
  if (free_bytes > retain_bytes) {
    malloc_trim(0);
    *trimmed = true;
  }
  return free_bytes;
}

}  // namespace dcpmerge
