/*
 * memory_read.c - the host's memory-read ceiling (see memory_read.h).
 */
#include "memory_read.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct read_task {
    const uint64_t *data;
    long long n_words;
    uint64_t sums[64]; /* kept so the compiler cannot drop the reads */
} read_task;

typedef uint64_t u64x4 __attribute__((vector_size(32)));

/* Each thread sums its contiguous share, 64 bytes a step in four independent accumulators. */
static void read_part(void *arg, int thread_index, int n_threads) {
    read_task *t = arg;
    long long begin, end;
    tm_split_range(t->n_words, 16, thread_index, n_threads, &begin, &end);
    u64x4 a = {0}, b = {0}, c = {0}, d = {0}, v;
    for (long long i = begin; i + 16 <= end; i += 16) {
        memcpy(&v, t->data + i, 32), a += v;
        memcpy(&v, t->data + i + 4, 32), b += v;
        memcpy(&v, t->data + i + 8, 32), c += v;
        memcpy(&v, t->data + i + 12, 32), d += v;
    }
    a += b + c + d;
    if (thread_index < 64) t->sums[thread_index] = a[0] + a[1] + a[2] + a[3];
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double tm_memory_read_gb_per_s(tm_threadpool *pool, long long megabytes, double min_seconds) {
    long long n_words = megabytes * 1000000 / 8;
    uint64_t *data = malloc((size_t)n_words * 8);
    if (!data) return 0;
    for (long long i = 0; i < n_words; i++) data[i] = (uint64_t)i;
    read_task task = {data, n_words, {0}};
    double samples[256];
    int n = 0;
    tm_threadpool_run(pool, read_part, &task); /* warm-up: page faults, frequency ramp */
    double started = tm_time_seconds();
    while (n < 256 && (n < 10 || tm_time_seconds() - started < min_seconds)) {
        double t0 = tm_time_seconds();
        tm_threadpool_run(pool, read_part, &task);
        samples[n++] = (double)n_words * 8 / (tm_time_seconds() - t0) / 1e9;
    }
    qsort(samples, (size_t)n, sizeof *samples, ascending);
    free(data);
    return samples[(n * 9) / 10];
}
