/*
 * bench.c - `tensormesh bench gemv`: CPU GEMV throughput per weight type.
 *
 * Method: a rows x cols weight matrix of random blocks, replicated into enough copies that one
 * pass over them does not fit in the CPU caches (each repetition uses the next copy, so weights
 * come from DRAM as in decode); warm-up passes first; then repetitions until both a minimum
 * count and a minimum time are reached. Reports the median, the 10th/90th percentiles and the
 * relative spread of GB/s of weights read (bytes of the weight matrix / time of one GEMV).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gemv.h"
#include "../memory_read.h"
#include "cli.h"

static int compare_doubles(const void *a, const void *b);

static void usage(FILE *out) {
    fprintf(out,
            "usage: tensormesh bench gemv [--type T[,T...]|all] [--rows R] [--cols C] [--threads N]\n"
            "                             [--min-reps N] [--min-time SECONDS] [--working-set MB]\n\n"
            "Measures y = W x on the CPU for each weight type and prints GB/s of weights read:\n"
            "median, p10, p90 and spread ((p90-p10)/median) over the repetitions, and the median as a\n"
            "percentage of the memory-read ceiling (p90 of plain read passes) measured first with the\n"
            "same threads and working set.\n"
            "  --type         types to measure (default all: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k)\n"
            "  --rows/--cols  matrix shape (default 14336 x 4096, a llama3-8b ffn_up)\n"
            "  --threads      worker threads (default: all CPUs)\n"
            "  --min-reps     at least this many timed repetitions (default 20)\n"
            "  --min-time     and at least this long in seconds (default 1.0)\n"
            "  --working-set  replicate W to at least this many MB so it streams from DRAM (default 512)\n");
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(const double *sorted, int n, double p) {
    double position = p * (n - 1);
    int low = (int)position;
    int high = low + 1 < n ? low + 1 : low;
    return sorted[low] + (position - low) * (sorted[high] - sorted[low]);
}

static int bench_one(tm_threadpool *pool, tm_type type, long long rows, long long cols, long long min_reps,
                     double min_time, long long working_set_mb, double ceiling) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    uint64_t row_bytes;
    if (!tm_type_row_bytes(type, (uint64_t)cols, &row_bytes)) {
        fprintf(stderr, "bench gemv: %s: %lld columns is not a multiple of the block size %d\n", traits->name, cols,
                traits->block_size);
        return 1;
    }
    uint64_t matrix_bytes = row_bytes * (uint64_t)rows;
    uint64_t copies = ((uint64_t)working_set_mb * 1000000 + matrix_bytes - 1) / matrix_bytes;
    if (copies < 1) copies = 1;
    uint8_t *weights = malloc(matrix_bytes * copies);
    float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)rows * sizeof *y);
    void *scratch = malloc(tm_gemv_scratch_bytes(type, cols) + 1);
    int capacity = 4096;
    double *seconds = malloc((size_t)capacity * sizeof *seconds);
    if (!weights || !x || !y || !scratch || !seconds) {
        fprintf(stderr, "bench gemv: %s: out of memory for %llu bytes of weights\n", traits->name,
                (unsigned long long)(matrix_bytes * copies));
        free(weights), free(x), free(y), free(scratch), free(seconds);
        return 1;
    }
    tm_rng_t rng;
    tm_rng_seed(&rng, 42);
    traits->random_blocks(&rng, weights, (int64_t)(matrix_bytes * copies / (uint64_t)traits->block_bytes),
                          1.0f / sqrtf((float)cols));
    for (long long i = 0; i < cols; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
    tm_error_t error = {0};
    uint64_t copy = 0;
    for (int warm = 0; warm < 3 * (int)copies; warm++, copy++)
        tm_gemv(pool, type, weights + (copy % copies) * matrix_bytes, rows, cols, x, y, scratch, &error);
    int n = 0;
    double started = tm_time_seconds();
    while ((n < min_reps || tm_time_seconds() - started < min_time) && n < capacity) {
        double t0 = tm_time_seconds();
        tm_gemv(pool, type, weights + (copy++ % copies) * matrix_bytes, rows, cols, x, y, scratch, &error);
        seconds[n++] = tm_time_seconds() - t0;
    }
    qsort(seconds, (size_t)n, sizeof *seconds, compare_doubles);
    double median = percentile(seconds, n, 0.5);
    double gbps = (double)matrix_bytes / median / 1e9;
    double gbps_p10 = (double)matrix_bytes / percentile(seconds, n, 0.9) / 1e9; /* slow tail */
    double gbps_p90 = (double)matrix_bytes / percentile(seconds, n, 0.1) / 1e9;
    double flops = 2.0 * (double)rows * (double)cols / median;
    printf("%-6s %8lld %8lld %10.1f %10.3f %9.2f %6.0f%% %9.2f %9.2f %7.1f%% %8.2f %5d\n", traits->name, rows, cols,
           (double)matrix_bytes / 1e6, median * 1e3, gbps, ceiling > 0 ? 100.0 * gbps / ceiling : 0.0, gbps_p10, gbps_p90,
           100.0 * (gbps_p90 - gbps_p10) / gbps, flops / 1e9, n);
    fflush(stdout);
    free(weights), free(x), free(y), free(scratch), free(seconds);
    return 0;
}

int tm_cli_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "gemv") != 0) {
        fprintf(stderr, "tensormesh bench: unknown benchmark '%s' (available: gemv)\n", argv[1]);
        return 2;
    }
    const char *types = "all";
    long long rows = 14336, cols = 4096, threads = 0, min_reps = 20, working_set = 512;
    double min_time = 1.0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!(v = tm_cli_flag_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--type")) types = v;
        else if (!strcmp(a, "--rows")) { if (!tm_cli_parse_int("bench", a, v, 1, 1 << 24, &rows)) return 2; }
        else if (!strcmp(a, "--cols")) { if (!tm_cli_parse_int("bench", a, v, 1, 1 << 24, &cols)) return 2; }
        else if (!strcmp(a, "--threads")) { if (!tm_cli_parse_int("bench", a, v, 1, 1024, &threads)) return 2; }
        else if (!strcmp(a, "--min-reps")) { if (!tm_cli_parse_int("bench", a, v, 1, 4096, &min_reps)) return 2; }
        else if (!strcmp(a, "--working-set")) { if (!tm_cli_parse_int("bench", a, v, 0, 1 << 20, &working_set)) return 2; }
        else if (!strcmp(a, "--min-time")) {
            char *end;
            min_time = strtod(v, &end);
            if (*end || min_time < 0 || min_time > 3600) {
                fprintf(stderr, "tensormesh bench: --min-time: '%s' is not a number of seconds in [0, 3600]\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "tensormesh bench: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    static const tm_type all_types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                                        TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    tm_type selected[16];
    int n_selected = 0;
    if (!strcmp(types, "all")) {
        for (size_t i = 0; i < sizeof all_types / sizeof all_types[0]; i++) selected[n_selected++] = all_types[i];
    } else {
        char list[256];
        snprintf(list, sizeof list, "%s", types);
        for (char *name = strtok(list, ","); name && n_selected < 16; name = strtok(NULL, ",")) {
            tm_type t;
            if (!tm_type_from_name(name, &t) || !tm_type_traits_get(t)->random_blocks) {
                fprintf(stderr, "tensormesh bench: --type: unknown weight type '%s'\n", name);
                return 2;
            }
            selected[n_selected++] = t;
        }
    }
    tm_threadpool *pool = tm_threadpool_create((int)threads);
    if (!pool) {
        fprintf(stderr, "tensormesh bench: cannot create threads\n");
        return 1;
    }
    double ceiling = tm_memory_read_gb_per_s(pool, working_set > 0 ? working_set : 512, min_time);
    printf("# gemv on the CPU: %d threads, %s kernels, working set >= %lld MB\n", tm_threadpool_size(pool),
           tm_type_simd_name(), working_set);
    printf("# ceiling: reading memory with %d threads: %.2f GB/s (p90 of the passes); %%ceil = GB/s of weights / that\n",
           tm_threadpool_size(pool), ceiling);
    printf("%-6s %8s %8s %10s %10s %9s %7s %9s %9s %8s %8s %5s\n", "type", "rows", "cols", "MB", "ms(med)", "GB/s", "%ceil",
           "p10", "p90", "spread", "GFLOP/s", "reps");
    int status = 0;
    for (int i = 0; i < n_selected && !status; i++)
        status = bench_one(pool, selected[i], rows, cols, min_reps, min_time, working_set, ceiling);
    tm_threadpool_free(pool);
    return status;
}
