#include "base/heap.h"

#include <malloc.h>

namespace dcpmerge {

void KeepFreedBuffersInHeap() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace dcpmerge
