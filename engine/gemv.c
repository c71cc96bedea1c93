/*
 * gemv.c - see gemv.h. The activation row is quantized on the calling thread (O(cols)), then
 * each thread runs the table's dot over its share of rows (O(rows * cols), memory bound).
 */
#include "gemv.h"

#include <stdlib.h>

typedef struct gemv_task {
    const tm_type_traits *traits;
    const uint8_t *weights;
    uint64_t row_bytes;
    int64_t rows, cols;
    const float *x;
    const void *x_quantized;
    float *y;
} gemv_task;

static void gemv_part(void *arg, int thread_index, int n_threads) {
    const gemv_task *t = arg;
    long long begin, end;
    tm_split_range(t->rows, 4, thread_index, n_threads, &begin, &end);
    const uint8_t *row = t->weights + (uint64_t)begin * t->row_bytes;
    if (t->x_quantized)
        for (long long r = begin; r < end; r++, row += t->row_bytes) t->y[r] = t->traits->dot_q8(row, t->x_quantized, t->cols);
    else
        for (long long r = begin; r < end; r++, row += t->row_bytes) t->y[r] = t->traits->dot_f32(row, t->x, t->cols);
}

uint64_t tm_gemv_scratch_bytes(tm_type type, int64_t cols) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    uint64_t bytes = 0;
    if (traits && traits->activation_type != TM_TYPE_F32) tm_type_row_bytes(traits->activation_type, (uint64_t)cols, &bytes);
    return bytes;
}

tm_status tm_gemv(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols, const float *x,
                  float *y, void *scratch, tm_error_t *error) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    if (!traits || !traits->random_blocks)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "gemv: weight type %s is not supported", tm_type_name(type));
    gemv_task task = {traits, weights, 0, rows, cols, x, NULL, y};
    if (!tm_type_row_bytes(type, (uint64_t)cols, &task.row_bytes))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "gemv: %lld columns is not a multiple of the %s block size %d",
                            (long long)cols, traits->name, traits->block_size);
    void *owned = NULL;
    if (traits->activation_type != TM_TYPE_F32) {
        if (!scratch && !(scratch = owned = malloc(tm_gemv_scratch_bytes(type, cols))))
            return tm_error_set(error, TM_ERR_NO_MEMORY, "gemv: out of memory for the activation row");
        tm_type_traits_get(traits->activation_type)->quantize_row(x, scratch, cols);
        task.x_quantized = scratch;
    }
    if (pool)
        tm_threadpool_run(pool, gemv_part, &task);
    else
        gemv_part(&task, 0, 1);
    free(owned);
    return TM_OK;
}
