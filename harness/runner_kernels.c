/*
 * runner_kernels.c - the `kernels` kind: one operation at a time on the GPU (kernels/cuda/
 * bench.h), each repetition one run timed with CUDA events after an L2 flush. The card's ceilings
 * (device copy bandwidth; 16-bit cuBLAS GEMM, the faster of f16 and bf16) are measured once per
 * suite, before its first case, as the median of 5 runs each, so every case reports its share of
 * ceilings measured in the same run on the same card; they are stored in the metrics' ceiling
 * column. Every case also measures a read of its own byte count (the read op: every byte requested
 * at once, the fastest of three request shapes, chained as the case is) and reports its share of that
 * (pct_of_same_size_read): what a launch moving that many bytes can do at most, where the copy's
 * rate is what a long stream does. A small product that trails the copy but not this ceiling loses
 * to its size (ramp, tail, latency), not to its kernel.
 *
 * Parameters: op (copy, gemm_f16, gemm_bf16, gemv, gemm, flash, decode_attention, rmsnorm,
 * rope, copy_kernel, read), type (gemv, gemm), rows, cols, tokens, head_dim, heads, kv_heads, context, batch, causal,
 * exact (flash: 1 times the float32 reference kernel instead of the tensor-core one), whole
 * (decode_attention: 1 times the kernel without key splits instead of the split path),
 * chain (gemv, read: a run is that many launches back to back, each over its own copy of the
 * weights, as a decode step's launches overlap one another; times are a launch's share), words
 * (read: 16-byte words a thread, 1, 2, 4, 8 or 16),
 * device (cuda only),
 * power_seconds (0: off; up to 10): each repetition also holds the op's chain running back to back
 * (no flushes) for that long after a 0.25 s warm-up in the case's preparation, and stores from the
 * GPU's NVML power samples over it (energy.h; only where the samples cover the window: a counter
 * stepping every 100 ms would not) the board's mean power (power_w), the joules a gigabyte the op
 * moves (joules_per_gb, at its sustained rate), the mean SM clock polled between its batches
 * (sm_clock_mhz: whether the board's power limit held the clock down) and that sustained rate
 * (sustained_gb_per_s: without the flushes, so where the chain's bytes fit in L2 it reads L2).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ceilings.h"
#include "energy.h"
#include "quant.h"
#include "runner.h"
#include "stats.h"
#ifdef TM_CUDA
#include "bench.h"
#include "kernels.h"
#endif

enum { POWER_W = 6, JOULES_PER_GB, SM_CLOCK_MHZ, SUSTAINED_GB_PER_S }; /* the sustained-load metrics' places */
static const tm_metric_spec kernel_metrics[] = {
    {"time_us", "us", TM_BETTER_LOWER},
    {"gb_per_s", "GB/s", TM_BETTER_HIGHER},
    {"tflop_per_s", "TFLOP/s", TM_BETTER_HIGHER},
    {"pct_of_copy_bandwidth", "%", TM_BETTER_HIGHER},
    {"pct_of_gemm_flops", "%", TM_BETTER_HIGHER},
    {"pct_of_same_size_read", "%", TM_BETTER_HIGHER},
    [POWER_W] = {"power_w", "W", TM_BETTER_NEITHER}, /* descriptive: a faster op may draw more */
    [JOULES_PER_GB] = {"joules_per_gb", "J/GB", TM_BETTER_LOWER},
    [SM_CLOCK_MHZ] = {"sm_clock_mhz", "MHz", TM_BETTER_NEITHER},
    [SUSTAINED_GB_PER_S] = {"sustained_gb_per_s", "GB/s", TM_BETTER_HIGHER},
};

#ifdef TM_CUDA
typedef struct kernels_state {
    tm_cuda_bench *bench;
    double copy_gb_per_s, gemm_tflop_per_s; /* this suite's ceilings (0: not measured yet) */
    double read_gb_per_s;                   /* this case's: a read of its bytes, chained as it is */
    int uncovered_warned;                   /* this case's runs timed before the host had queued them: reported */
    double power_seconds;                   /* this case's power window a repetition (0: none) */
    tm_energy_meter *energy;                /* opened at the first case that asks for power */
} kernels_state;

static const char *const op_names[] = {"copy", "gemm_f16", "gemm_bf16", "gemv", "gemm", "flash", "decode_attention", "rmsnorm", "rope",
                                       "copy_kernel", "read"};

static bool int_param(const tm_suite_case *c, const char *name, long long fallback, long long *out, tm_error_t *error) {
    const char *text = tm_case_param(c, name, NULL);
    if (!text) {
        *out = fallback;
        return true;
    }
    char *end;
    *out = strtoll(text, &end, 10);
    if (end == text || *end || *out < 0) {
        tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: %s = '%s' is not a non-negative integer", c->name, name, text);
        return false;
    }
    return true;
}

static tm_status measure_ceilings(kernels_state *s, tm_error_t *error) {
    if (s->copy_gb_per_s > 0) return TM_OK;
    tm_status status = tm_gpu_copy_ceiling(&s->copy_gb_per_s, error);
    if (!status) status = tm_gpu_gemm_ceiling(&s->gemm_tflop_per_s, error);
    if (status) {
        s->copy_gb_per_s = 0;
        return status;
    }
    printf("      ceilings: device copy %.0f GB/s, 16-bit GEMM 8192^3 %.0f TFLOP/s\n", s->copy_gb_per_s, s->gemm_tflop_per_s);
    return TM_OK;
}

/* The case's own ceiling: a read of the bytes one launch of s->bench moves (rounded up to whole
 * 16-byte words), chained as the case is; the fastest of three request shapes (2, 4 and 8 words a
 * thread), each the median of 5 runs. */
static tm_status measure_same_size_read(kernels_state *s, int chain, tm_error_t *error) {
    double bytes, flops;
    tm_cuda_bench_cost(s->bench, &bytes, &flops);
    s->read_gb_per_s = 0;
    if (bytes < 16) return TM_OK;
    for (int words = 2; words <= 8; words *= 2) {
        tm_cuda_bench_spec read = {.op = TM_BENCH_READ, .rows = ((long long)bytes + 15) / 16 * 16, .chain = chain, .read_words = words};
        double ms;
        tm_status status = tm_bench_median_ms(&read, 5, "same-size read", &ms, error);
        if (status) return status;
        const double gb_per_s = (double)read.rows / (ms * 1e-3) / 1e9;
        if (gb_per_s > s->read_gb_per_s) s->read_gb_per_s = gb_per_s;
    }
    return TM_OK;
}

static tm_status prepare(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, tm_error_t *error) {
    (void)suite;
    char device_name[256];
    if (!tm_cuda_device_name(device_name, sizeof device_name))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "case %s: the kernels kind needs a CUDA device; none is present", c->name);
    const char *device = tm_case_param(c, "device", "cuda");
    if (strcmp(device, "cuda"))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "case %s: kernels run on device cuda only (got '%s')", c->name, device);
    kernels_state *s = (kernels_state *)*state;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
        *state = (tm_runner_state *)s;
    }
    tm_cuda_bench_free(s->bench);
    s->bench = NULL;
    s->uncovered_warned = 0;
    tm_status status = measure_ceilings(s, error);
    if (status) return status;
    const char *op = tm_case_param(c, "op", NULL);
    tm_cuda_bench_spec spec = {0};
    size_t k = 0;
    while (op && k < sizeof op_names / sizeof op_names[0] && strcmp(op, op_names[k])) k++;
    if (!op || k == sizeof op_names / sizeof op_names[0])
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: op '%s' is not one of copy, gemm_f16, gemm_bf16, gemv, gemm, flash, "
                            "decode_attention, rmsnorm, rope, copy_kernel, read", c->name, op ? op : "(missing)");
    spec.op = (tm_bench_op)k;
    const char *type_name = tm_case_param(c, "type", "f16");
    tm_type type;
    if (!tm_type_from_name(type_name, &type))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: type '%s' is not a weight type", c->name, type_name);
    spec.type = (int)type;
    long long rows, cols, tokens, head_dim, heads, kv_heads, context, batch, causal, exact, whole, chain, words;
    long long default_rows = spec.op == TM_BENCH_COPY || spec.op == TM_BENCH_COPY_KERNEL || spec.op == TM_BENCH_READ ? (1ll << 30)
                             : spec.op <= TM_BENCH_GEMM_BF16                                                       ? 8192
                                                                                                                   : 4096;
    if (!int_param(c, "rows", default_rows, &rows, error) || !int_param(c, "cols", 4096, &cols, error) ||
        !int_param(c, "tokens", 1, &tokens, error) || !int_param(c, "head_dim", 128, &head_dim, error) ||
        !int_param(c, "heads", 32, &heads, error) || !int_param(c, "kv_heads", heads, &kv_heads, error) ||
        !int_param(c, "context", 4096, &context, error) || !int_param(c, "batch", 1, &batch, error) ||
        !int_param(c, "causal", 1, &causal, error) || !int_param(c, "exact", 0, &exact, error) || !int_param(c, "whole", 0, &whole, error) ||
        !int_param(c, "chain", 1, &chain, error) || !int_param(c, "words", 4, &words, error))
        return TM_ERR_INVALID_ARG;
    if (chain < 1 || chain > 4096) return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: chain = %lld is not 1..4096", c->name, chain);
    if (words != 1 && words != 2 && words != 4 && words != 8 && words != 16)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: words = %lld is not 1, 2, 4, 8 or 16", c->name, words);
    spec.rows = rows, spec.cols = cols, spec.tokens = (int)tokens, spec.head_dim = (int)head_dim, spec.heads = (int)heads;
    spec.kv_heads = (int)kv_heads, spec.context = (int)context, spec.batch = (int)batch, spec.causal = (int)causal;
    spec.exact = (int)exact, spec.whole = (int)whole, spec.chain = (int)chain, spec.read_words = (int)words;
    const char *power_text = tm_case_param(c, "power_seconds", "0");
    char *end;
    s->power_seconds = strtod(power_text, &end);
    if (end == power_text || *end || !(s->power_seconds >= 0 && s->power_seconds <= 10))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: power_seconds = '%s' is not a number of seconds in [0, 10]", c->name,
                            power_text);
    char message[256];
    if (tm_cuda_bench_create(&spec, &s->bench, message, sizeof message))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "case %s: %s", c->name, message);
    status = measure_same_size_read(s, spec.chain, error);
    if (status || s->power_seconds <= 0) return status;
    if (!s->energy) {
        if (!(s->energy = tm_energy_open("cuda"))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
        printf("      power: %s\n", tm_energy_source(s->energy));
    }
    long long launches;
    double gpu_ms;
    if (tm_cuda_bench_sustain(s->bench, 0.25, &launches, &gpu_ms, NULL, NULL, message, sizeof message)) /* the warm-up: power and clock settle */
        return tm_error_set(error, TM_ERR_INTERNAL, "case %s: %s", c->name, message);
    return TM_OK;
}

/* The SM clock polled while a held op runs (between its batches). */
typedef struct {
    tm_energy_meter *meter;
    double sum;
    int n;
} clock_poll;

static void poll_clock(void *context) {
    clock_poll *poll = context;
    const double mhz = tm_energy_sm_clock_mhz(poll->meter);
    if (mhz > 0) poll->sum += mhz, poll->n++;
}

/* values[POWER_W..]: the op held running for s->power_seconds, measured by the power samples (NaN
 * where they do not cover the window) and the SM clock polled meanwhile. */
static tm_status measure_power(kernels_state *s, double bytes, double *values, tm_error_t *error) {
    char message[256];
    long long launches;
    double gpu_ms;
    clock_poll clock = {s->energy, 0, 0};
    const tm_energy_mark from = tm_energy_mark_now(s->energy);
    if (tm_cuda_bench_sustain(s->bench, s->power_seconds, &launches, &gpu_ms, poll_clock, &clock, message, sizeof message))
        return tm_error_set(error, TM_ERR_INTERNAL, "kernels: %s", message);
    const tm_energy_mark to = tm_energy_mark_now(s->energy);
    tm_energy_method method;
    double counter_joules;
    const double joules = tm_energy_between(s->energy, from, to, &method, &counter_joules);
    if (tm_energy_compare_requested())
        printf("      power: held %.3f s: %s %.3f J, counter %.3f J\n", to.wall_s - from.wall_after_s,
               tm_energy_method_name(method), joules, counter_joules);
    if (method != TM_ENERGY_SAMPLES || launches <= 0 || gpu_ms <= 0 || bytes <= 0) return TM_OK;
    const double gigabytes = (double)launches * bytes / 1e9;
    values[POWER_W] = joules / (to.wall_s - from.wall_after_s);
    values[JOULES_PER_GB] = joules / gigabytes;
    values[SM_CLOCK_MHZ] = clock.n ? clock.sum / clock.n : NAN;
    values[SUSTAINED_GB_PER_S] = gigabytes / (gpu_ms * 1e-3);
    return TM_OK;
}

static tm_status repeat(tm_runner_state *state, double *values, tm_error_t *error) {
    kernels_state *s = (kernels_state *)state;
    char message[256];
    double ms, bytes, flops;
    if (tm_cuda_bench_run(s->bench, &ms, message, sizeof message)) return tm_error_set(error, TM_ERR_INTERNAL, "kernels: %s", message);
    tm_bench_warn_uncovered(s->bench, "this case", &s->uncovered_warned);
    tm_cuda_bench_cost(s->bench, &bytes, &flops);
    const double seconds = ms * 1e-3;
    values[0] = ms * 1e3;
    values[1] = bytes / seconds / 1e9;
    values[2] = flops / seconds / 1e12;
    values[3] = 100.0 * values[1] / s->copy_gb_per_s;
    values[4] = 100.0 * values[2] / s->gemm_tflop_per_s;
    values[5] = s->read_gb_per_s > 0 ? 100.0 * values[1] / s->read_gb_per_s : 0;
    values[POWER_W] = values[JOULES_PER_GB] = values[SM_CLOCK_MHZ] = values[SUSTAINED_GB_PER_S] = NAN; /* not stored */
    return s->power_seconds > 0 ? measure_power(s, bytes, values, error) : TM_OK;
}

static double ceiling(tm_runner_state *state, int metric) {
    const kernels_state *s = (const kernels_state *)state;
    return !s ? 0 : metric == 1 ? s->copy_gb_per_s : metric == 2 ? s->gemm_tflop_per_s : metric == 5 ? s->read_gb_per_s : 0;
}

static void release(tm_runner_state *state) {
    kernels_state *s = (kernels_state *)state;
    if (!s) return;
    tm_cuda_bench_free(s->bench);
    tm_energy_close(s->energy);
    free(s);
}

#else /* no CUDA in this build */

static tm_status prepare(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, tm_error_t *error) {
    (void)state, (void)suite;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "case %s: the kernels kind needs a CUDA build (configured without CUDA)", c->name);
}
static tm_status repeat(tm_runner_state *state, double *values, tm_error_t *error) {
    (void)state, (void)values;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "kernels: no CUDA in this build");
}
static double ceiling(tm_runner_state *state, int metric) {
    (void)state, (void)metric;
    return 0;
}
static void release(tm_runner_state *state) { (void)state; }
#endif

const tm_runner tm_kernels_runner = {"kernels", kernel_metrics, (int)(sizeof kernel_metrics / sizeof kernel_metrics[0]), prepare, repeat,
                                     release, ceiling};
