/*
 * ceilings.c - the machine's measured ceilings (see ceilings.h).
 */
#include "ceilings.h"

#include <stdio.h>

#include "memory_read.h"
#include "stats.h"
#include "threadpool.h"

tm_status tm_host_read_ceiling(int threads, double *gb_per_s, tm_error_t *error) {
    *gb_per_s = 0;
    tm_threadpool *pool = tm_threadpool_create(threads);
    if (!pool) return tm_error_set(error, TM_ERR_NO_MEMORY, "host read ceiling: cannot start %d threads", threads);
    *gb_per_s = tm_memory_read_gb_per_s(pool, 512, 0.5);
    tm_threadpool_free(pool);
    if (*gb_per_s <= 0) return tm_error_set(error, TM_ERR_NO_MEMORY, "host read ceiling: no memory for its 512 MB buffer");
    return TM_OK;
}

#ifdef TM_CUDA

void tm_bench_warn_uncovered(const tm_cuda_bench *bench, const char *what, int *warned) {
    const int runs = tm_cuda_bench_uncovered_runs(bench);
    if (runs <= *warned) return;
    if (*warned == 0)
        fprintf(stderr, "      warning: %s: the GPU started timing a run before the host had queued all of it (%d so far), "
                        "even behind the most L2 flushes; its time may include launch gaps\n",
                what, runs);
    *warned = runs;
}

tm_status tm_bench_median_ms(const tm_cuda_bench_spec *spec, int runs, const char *what, double *ms, tm_error_t *error) {
    char message[256];
    tm_cuda_bench *bench;
    *ms = 0;
    if (tm_cuda_bench_create(spec, &bench, message, sizeof message))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: %s", what, message);
    double times[16];
    int n = 0;
    for (int i = 0; i < runs + 1 && i < 16; i++) {
        double run_ms;
        if (tm_cuda_bench_run(bench, &run_ms, message, sizeof message)) {
            tm_cuda_bench_free(bench);
            return tm_error_set(error, TM_ERR_INTERNAL, "%s: %s", what, message);
        }
        if (i > 0) times[n++] = run_ms; /* the first run warms up */
    }
    int warned = 0;
    tm_bench_warn_uncovered(bench, what, &warned);
    tm_cuda_bench_free(bench);
    tm_sort_doubles(times, (size_t)n);
    *ms = tm_percentile_sorted(times, (size_t)n, 0.5);
    return *ms > 0 ? TM_OK : tm_error_set(error, TM_ERR_INTERNAL, "%s: a run took no time", what);
}

tm_status tm_gpu_copy_ceiling(double *gb_per_s, tm_error_t *error) {
    *gb_per_s = 0;
    const tm_cuda_bench_spec copy = {.op = TM_BENCH_COPY, .rows = 1ll << 30};
    double ms;
    tm_status status = tm_bench_median_ms(&copy, 5, "ceiling: device copy", &ms, error);
    if (!status) *gb_per_s = 2.0 * (double)(1ll << 30) / (ms * 1e-3) / 1e9;
    return status;
}

tm_status tm_gpu_gemm_ceiling(double *tflop_per_s, tm_error_t *error) {
    *tflop_per_s = 0;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        const tm_cuda_bench_spec gemm = {.op = bf16 ? TM_BENCH_GEMM_BF16 : TM_BENCH_GEMM_F16, .rows = 8192};
        double ms;
        tm_status status = tm_bench_median_ms(&gemm, 5, "ceiling: 16-bit GEMM", &ms, error);
        if (status) return status;
        const double tflops = 2.0 * 8192.0 * 8192.0 * 8192.0 / (ms * 1e-3) / 1e12;
        if (tflops > *tflop_per_s) *tflop_per_s = tflops;
    }
    return TM_OK;
}

#else /* no CUDA in this build */

tm_status tm_gpu_copy_ceiling(double *gb_per_s, tm_error_t *error) {
    *gb_per_s = 0;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "ceiling: device copy: this build has no CUDA");
}
tm_status tm_gpu_gemm_ceiling(double *tflop_per_s, tm_error_t *error) {
    *tflop_per_s = 0;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "ceiling: 16-bit GEMM: this build has no CUDA");
}

#endif
