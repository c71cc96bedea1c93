/*
 * ceilings.h - the machine's measured ceilings a runner compares its figures to.
 *
 * Guarantees: each figure is measured on the machine the case runs on, in the same run, never
 * assumed: the GPU's device-to-device copy rate (bytes read + written a second, a 1 GiB copy,
 * the median of 5 timed runs after one warm-up, each after an L2 flush; the figure
 * ../shared/docs/TARGETS.md's rooflines divide by) and its 16-bit GEMM rate (cuBLAS 8192^3, the
 * faster of f16 and bf16), both on the current CUDA device; and the host's memory-read rate with
 * a given number of threads (memory_read.h). A ceiling that cannot be measured (no device, no
 * memory for the buffers) is an error naming why; nothing is cached here (the callers keep what
 * they measured).
 */
#ifndef TM_CEILINGS_H
#define TM_CEILINGS_H

#include "common.h"

/* The current CUDA device's copy rate in GB/s (TM_ERR_UNSUPPORTED without CUDA or a device). */
tm_status tm_gpu_copy_ceiling(double *gb_per_s, tm_error_t *error);
/* The current CUDA device's 16-bit GEMM rate in TFLOP/s. */
tm_status tm_gpu_gemm_ceiling(double *tflop_per_s, tm_error_t *error);
/* The host's memory-read rate in GB/s with `threads` threads (0: every CPU) over a 512 MB buffer. */
tm_status tm_host_read_ceiling(int threads, double *gb_per_s, tm_error_t *error);

#ifdef TM_CUDA
#include "bench.h"
/* The median time (ms) of `runs` runs of a benchmark after one warm-up run (up to 15 runs);
 * `what` names it in errors and in the warning about runs the host had not queued in time. */
tm_status tm_bench_median_ms(const tm_cuda_bench_spec *spec, int runs, const char *what, double *ms, tm_error_t *error);
/* Says, once per new count for `what`, that the bench returned runs the GPU had started timing
 * before the host had queued them all (bench.cu): their times may hold launch gaps. */
void tm_bench_warn_uncovered(const tm_cuda_bench *bench, const char *what, int *warned);
#endif

#endif /* TM_CEILINGS_H */
