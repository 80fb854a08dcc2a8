// Copyright regserve authors.
//
// The process's malloc policy for large buffers. glibc serves allocations
// above M_MMAP_THRESHOLD with mmap and returns them to the kernel on free,
// but by default it raises that threshold to the size of each mmapped block
// freed (up to 32 MiB): from then on tile-, band- and chunk-sized buffers
// come from the per-thread arenas, and what the warp's, the writer's and
// the decoder's threads free there stays resident. The 500 MP job under a
// 512 MiB budget grew by 977 MB in its warp stage against 529 MB planned;
// with the threshold fixed at 1 MiB, by 436 MB (docs/benchmarks.md, "The
// memory plan against malloc's caching"). The planner's memory model
// assumes that a freed buffer is gone.
#ifndef REGSERVE_CORE_COMMON_MALLOC_POLICY_H_
#define REGSERVE_CORE_COMMON_MALLOC_POLICY_H_

namespace regserve {

// Fixes glibc's mmap threshold at 1 MiB (which also stops its dynamic
// adjustment) unless the environment sets MALLOC_MMAP_THRESHOLD_ (glibc's
// own tunable, which then wins). Call once at start, before other threads.
// Returns false where it has no effect (not glibc).
bool BoundMallocCaching();

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_MALLOC_POLICY_H_
