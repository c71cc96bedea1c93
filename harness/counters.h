/*
 * counters.h - opt-in hardware counters for `tmbench run --counters`, through the CUPTI Range
 * Profiler of CUDA 13 (cupti_range_profiler.h + cupti_profiler_host.h): after a case's timed
 * repetitions, one more repetition runs as a separate counter pass (never timed) with one range
 * per kernel (auto range, kernel replay: CUPTI replays each kernel as many passes as the metrics
 * need, restoring memory between passes). Per kernel it stores, in hardware_counters with scope
 * "kernel NNN <name>": GPU time, DRAM bytes read and written, FP32 and FP16 flops, tensor-core
 * ops, SM and tensor-pipe utilization, and the derived achieved GB/s and TFLOP/s; the pass's
 * totals go to scope "pass". Metrics the chip does not have are left out and named once.
 *
 * Guarantees: without CUPTI in the build, without a device, or where the driver does not let this
 * user read counters (CUPTI_ERROR_INSUFFICIENT_PRIVILEGES), tm_counters_start / the first pass
 * fail with a message saying which, and the caller keeps every timing result.
 */
#ifndef TM_COUNTERS_H
#define TM_COUNTERS_H

#include <stdint.h>

#include "store.h"

typedef struct tm_counters tm_counters;

/* Check that counters can be collected here (CUPTI, a device) and build the metric configuration. */
tm_status tm_counters_start(tm_counters **out, tm_error_t *error);
/* Begin a counter pass on the calling thread's current CUDA context (the runner's, after prepare). */
tm_status tm_counters_begin_pass(tm_counters *counters, tm_error_t *error);
/* End the pass: decode it and store every kernel's counters for case_id; the number of kernels in *n_kernels. */
tm_status tm_counters_end_pass(tm_counters *counters, tm_store *store, int64_t case_id, int *n_kernels, tm_error_t *error);
/* Metrics the chip does not have (comma-separated; "" when all are there). */
const char *tm_counters_missing(const tm_counters *counters);
void tm_counters_stop(tm_counters *counters);

#endif /* TM_COUNTERS_H */
