/*
 * test_gemv.c - the threaded GEMV and the thread pool:
 *  - every thread index runs exactly once per task, for pools of 1..4 threads;
 *  - tm_split_range covers [0, total) exactly, in granule-aligned parts;
 *  - gemv gives the same bits for 1, 2 and 3 threads, and each row is within tolerance
 *    (1e-5 relative to sum |w x|) of a float64 product of the dequantized weights and the
 *    (dequantized) activation, for every weight type, with an odd row count.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "check.h"
#include "gemv.h"
#include "random_blocks.h"

typedef struct count_task {
    atomic_int calls[8];
    int n_seen;
} count_task;

static void count_calls(void *arg, int thread_index, int n_threads) {
    count_task *t = arg;
    t->n_seen = n_threads;
    atomic_fetch_add(&t->calls[thread_index], 1);
}

static void test_pool(void) {
    for (int threads = 1; threads <= 4; threads++) {
        tm_threadpool *pool = tm_threadpool_create(threads);
        CHECK(pool && tm_threadpool_size(pool) == threads, "pool of %d", threads);
        for (int round = 0; round < 200; round++) {
            count_task t = {0};
            tm_threadpool_run(pool, count_calls, &t);
            int bad = 0;
            for (int i = 0; i < threads; i++) bad += atomic_load(&t.calls[i]) != 1;
            for (int i = threads; i < 8; i++) bad += atomic_load(&t.calls[i]) != 0;
            if (bad || t.n_seen != threads) {
                CHECK(0, "round %d with %d threads: %d indexes ran other than once", round, threads, bad);
                break;
            }
        }
        tm_threadpool_free(pool);
    }
    for (long long total = 0; total < 50; total += 7)
        for (int n = 1; n <= 5; n++) {
            long long covered = 0, previous_end = 0;
            for (int i = 0; i < n; i++) {
                long long begin, end;
                tm_split_range(total, 4, i, n, &begin, &end);
                CHECK(begin == previous_end && end >= begin && (begin % 4 == 0 || begin == total), "split %lld/%d part %d",
                      total, n, i);
                covered += end - begin;
                previous_end = end;
            }
            CHECK(covered == total, "split of %lld into %d covers %lld", total, n, covered);
        }
}

static void test_gemv_types(void) {
    const tm_type types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                             TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    const int64_t rows = 37, cols = 1024;
    tm_rng_t rng;
    tm_rng_seed(&rng, 77);
    tm_threadpool *pools[3] = {tm_threadpool_create(1), tm_threadpool_create(2), tm_threadpool_create(3)};
    float *x = malloc(cols * sizeof *x), *x_back = malloc(cols * sizeof *x_back), *w_row = malloc(cols * sizeof *w_row);
    float *y[3];
    for (int p = 0; p < 3; p++) y[p] = malloc(rows * sizeof(float));
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const tm_type_traits *traits = tm_type_traits_get(types[k]);
        uint64_t row_bytes;
        tm_type_row_bytes(types[k], cols, &row_bytes);
        uint8_t *w = malloc(row_bytes * rows);
        test_random_blocks(&rng, types[k], w, rows * cols);
        for (int64_t i = 0; i < cols; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
        tm_error_t error = {0};
        for (int p = 0; p < 3; p++)
            CHECK(!tm_gemv(pools[p], types[k], w, rows, cols, x, y[p], NULL, &error), "%s gemv: %s", traits->name,
                  error.message);
        CHECK(!memcmp(y[0], y[1], rows * sizeof(float)) && !memcmp(y[0], y[2], rows * sizeof(float)),
              "%s: results depend on the thread count", traits->name);
        /* reference: float64 over dequantized weights and the activation as the kernel sees it */
        if (traits->activation_type != TM_TYPE_F32) {
            const tm_type_traits *activation = tm_type_traits_scalar(traits->activation_type);
            uint8_t *xq = malloc(tm_gemv_scratch_bytes(types[k], cols));
            activation->quantize_row(x, xq, cols);
            activation->dequantize_row(xq, x_back, cols);
            free(xq);
        } else {
            memcpy(x_back, x, cols * sizeof *x);
        }
        int bad = 0;
        for (int64_t r = 0; r < rows; r++) {
            traits->dequantize_row(w + r * row_bytes, w_row, cols);
            double sum = 0, magnitude = 0;
            for (int64_t i = 0; i < cols; i++) {
                sum += (double)w_row[i] * x_back[i];
                magnitude += fabs((double)w_row[i] * x_back[i]);
            }
            if (fabs(y[0][r] - sum) > 1e-5 * magnitude + 1e-30) bad++;
        }
        CHECK(bad == 0, "%s: %d of %lld rows outside tolerance", traits->name, bad, (long long)rows);
        if (traits->block_size > 1)
            CHECK(tm_gemv(pools[0], types[k], w, rows, traits->block_size / 2, x, y[0], NULL, &error) == TM_ERR_INVALID_ARG,
                  "%s: a column count that is not whole blocks is refused", traits->name);
        free(w);
    }
    for (int p = 0; p < 3; p++) {
        tm_threadpool_free(pools[p]);
        free(y[p]);
    }
    free(x), free(x_back), free(w_row);
}

int main(void) {
    test_pool();
    test_gemv_types();
    return check_report("test_gemv");
}
