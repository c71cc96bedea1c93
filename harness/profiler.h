/*
 * profiler.h - opt-in CUPTI activity collection for `tmbench run --profile`: every kernel
 * (demangled name, grid, block, registers, shared memory, start/end, stream, graph id), memcpy and
 * memset, and the engine's NVTX ranges, attributed to the case and repetition during which they
 * completed and written to the kernel_records / nvtx_ranges tables (one transaction per
 * repetition). Records CUPTI had to drop are counted and stored per case (hardware_counters,
 * scope 'activity', counter 'dropped_records').
 *
 * Guarantees: without CUPTI in the build, or without a CUDA device, tm_profiler_start fails with
 * a message saying which, and nothing else changes (timing runs as before). Records are only
 * complete after the work that produced them finished; the engine synchronizes at the end of
 * every step, and tm_profiler_collect flushes CUPTI's buffers before writing.
 */
#ifndef TM_PROFILER_H
#define TM_PROFILER_H

#include <stdint.h>

#include "store.h"

typedef struct tm_profiler tm_profiler;

/* Start collecting (before the first CUDA or NVTX call of the process, so NVTX ranges reach CUPTI). */
tm_status tm_profiler_start(tm_profiler **out, tm_error_t *error);
/* Flush what completed and write it as (case_id, repetition): timed repetitions 0.., warm-ups -1, -2, ..,
 * the set-up (model load) -1000, the untimed --counters pass -2000. */
tm_status tm_profiler_collect(tm_profiler *profiler, tm_store *store, int64_t case_id, int repetition, tm_error_t *error);
/* Totals so far: kernel records, memory operations, NVTX ranges written; records dropped. */
void tm_profiler_totals(const tm_profiler *profiler, uint64_t *kernels, uint64_t *memory_operations, uint64_t *ranges,
                        uint64_t *dropped);
void tm_profiler_stop(tm_profiler *profiler);

#endif /* TM_PROFILER_H */
