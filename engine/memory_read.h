/*
 * memory_read.h - the host's memory-read ceiling: how fast a pool of threads streams memory.
 *
 * Guarantees: the figure is GB/s (1e9 bytes) of plain reads of a buffer of the given size by
 * every thread of the pool (each its contiguous share, four independent vector sums so the loop
 * waits on memory, not on adds), the 90th percentile of the passes after one warm-up pass: a
 * ceiling is what the memory sustains, not a typical rate on a shared host. 0 when the buffer
 * cannot be allocated. Used by `tensormesh bench gemv` (its %ceil column) and by tmbench's
 * throughput runner (the CPU rows' roofline).
 */
#ifndef TM_MEMORY_READ_H
#define TM_MEMORY_READ_H

#include "threadpool.h"

/* GB/s of reading `megabytes` (1e6 bytes) with pool's threads: passes until at least 10 and
 * `min_seconds` have gone by (at most 256). */
double tm_memory_read_gb_per_s(tm_threadpool *pool, long long megabytes, double min_seconds);

#endif /* TM_MEMORY_READ_H */
