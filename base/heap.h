// Process-wide heap tuning for binaries that move MB-sized buffers per step
// (the server, and everything that runs one in process).
#ifndef DCPMERGE_BASE_HEAP_H_
#define DCPMERGE_BASE_HEAP_H_

namespace dcpmerge {

// Call once at process start, before threads: per-step buffers are MBs, and
// glibc would return each freed one to the kernel, so every step would fault
// in fresh pages. This keeps freed memory in the heap for reuse.
void KeepFreedBuffersInHeap();

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_HEAP_H_
