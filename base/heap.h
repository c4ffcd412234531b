// Process-wide heap tuning for binaries that move MB-sized buffers per step
// (the server, and everything that runs one in process).
#ifndef DCPMERGE_BASE_HEAP_H_
#define DCPMERGE_BASE_HEAP_H_

#include <cstddef>

namespace dcpmerge {

// Call once at process start, before threads: per-step buffers are MBs, and
// glibc would return each freed one to the kernel, so every step would fault
// in fresh pages. This keeps freed memory in the heap for reuse.
void KeepFreedBuffersInHeap();

// The heap kept is bounded: when more than `retain_bytes` of freed memory
// is held (glibc's mallinfo2), it is returned to the kernel (malloc_trim),
// so RSS comes down after a burst instead of staying at its peak. Returns
// the free bytes held before the call; *trimmed tells whether it trimmed.
// Cheap enough to call about once a second.
size_t BoundHeapRetention(size_t retain_bytes, bool* trimmed);

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_HEAP_H_
