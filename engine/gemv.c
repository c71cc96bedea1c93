/*
 * gemv.c - see gemv.h. Activation rows are quantized on the calling thread (O(tokens * cols));
 * each thread then runs the table's dot over its share of rows for every token
 * (O(rows * cols * tokens), memory bound at one token, compute bound at many).
 */
#include "gemv.h"

#include <stdlib.h>

#define ROW_TILE 8 /* weight rows kept hot in L1/L2 while every token passes over them */

typedef struct matmul_task {
    const tm_type_traits *traits;
    const uint8_t *weights;
    uint64_t row_bytes;
    int64_t rows, cols, n_tokens;
    const float *x;
    const uint8_t *x_quantized; /* NULL: float activations */
    uint64_t x_row_bytes;
    float *y;
} matmul_task;

static void matmul_part(void *arg, int thread_index, int n_threads) {
    const matmul_task *t = arg;
    /* one contiguous range per thread: each thread streams its weights in order, which the
     * hardware prefetcher follows (handing out interleaved tiles measured 30 % slower) */
    long long begin, end;
    tm_split_range(t->rows, ROW_TILE, thread_index, n_threads, &begin, &end);
    for (long long tile = begin; tile < end; tile += ROW_TILE) {
        long long tile_end = TM_MIN(tile + ROW_TILE, end);
        for (int64_t token = 0; token < t->n_tokens; token++) {
            float *y = t->y + token * t->rows;
            const uint8_t *row = t->weights + (uint64_t)tile * t->row_bytes;
            if (t->x_quantized) {
                const uint8_t *xq = t->x_quantized + (uint64_t)token * t->x_row_bytes;
                for (long long r = tile; r < tile_end; r++, row += t->row_bytes) y[r] = t->traits->dot_q8(row, xq, t->cols);
            } else {
                const float *x = t->x + token * t->cols;
                for (long long r = tile; r < tile_end; r++, row += t->row_bytes) y[r] = t->traits->dot_f32(row, x, t->cols);
            }
        }
    }
}

uint64_t tm_matmul_scratch_bytes(tm_type type, int64_t cols, int64_t n_tokens) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    uint64_t bytes = 0;
    if (traits && traits->activation_type != TM_TYPE_F32) tm_type_row_bytes(traits->activation_type, (uint64_t)cols, &bytes);
    return bytes * (uint64_t)n_tokens;
}

tm_status tm_matmul(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols, const float *x,
                    int64_t n_tokens, float *y, bool float_activations, void *scratch, tm_error_t *error) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    if (!traits || !traits->random_blocks)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "matmul: weight type %s is not supported", tm_type_name(type));
    matmul_task task = {traits, weights, 0, rows, cols, n_tokens, x, NULL, 0, y};
    if (!tm_type_row_bytes(type, (uint64_t)cols, &task.row_bytes))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "matmul: %lld columns is not a multiple of the %s block size %d",
                            (long long)cols, traits->name, traits->block_size);
    void *owned = NULL;
    if (traits->activation_type != TM_TYPE_F32 && !float_activations) {
        if (!scratch && !(scratch = owned = malloc(tm_matmul_scratch_bytes(type, cols, n_tokens))))
            return tm_error_set(error, TM_ERR_NO_MEMORY, "matmul: out of memory for the activation rows");
        const tm_type_traits *activation = tm_type_traits_get(traits->activation_type);
        tm_type_row_bytes(traits->activation_type, (uint64_t)cols, &task.x_row_bytes);
        for (int64_t t = 0; t < n_tokens; t++)
            activation->quantize_row(x + t * cols, (uint8_t *)scratch + (uint64_t)t * task.x_row_bytes, cols);
        task.x_quantized = scratch;
    }
    if (pool)
        tm_threadpool_run(pool, matmul_part, &task);
    else
        matmul_part(&task, 0, 1);
    free(owned);
    return TM_OK;
}
