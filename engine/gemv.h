/*
 * gemv.h - matrix-vector and matrix-matrix products for every weight type, split across a
 * thread pool: Y[t][r] = dot(W[r, :], X[t, :]).
 *
 * Guarantees: with quantized activations (the default) each activation row is quantized once
 * to the type's activation format (Q8_0/Q8_K) and multiplied with integer dots; with
 * float_activations (or F32/F16/BF16 weights) the float row meets the weights directly. Rows
 * are split into contiguous ranges, one per thread, and each thread walks its rows in small
 * tiles across all tokens so a weight tile is read from memory once per call; results do not
 * depend on the thread count.
 */
#ifndef TM_GEMV_H
#define TM_GEMV_H

#include <stdbool.h>

#include "quant.h"
#include "threadpool.h"

/* Bytes of scratch tm_matmul needs for n_tokens quantized activation rows. */
uint64_t tm_matmul_scratch_bytes(tm_type type, int64_t cols, int64_t n_tokens);
static inline uint64_t tm_gemv_scratch_bytes(tm_type type, int64_t cols) { return tm_matmul_scratch_bytes(type, cols, 1); }

/* X: n_tokens rows of cols floats; Y: n_tokens rows of `rows` floats. pool may be NULL (one
 * thread); scratch may be NULL (allocated per call). */
tm_status tm_matmul(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols, const float *x,
                    int64_t n_tokens, float *y, bool float_activations, void *scratch, tm_error_t *error);

static inline tm_status tm_gemv(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols,
                                const float *x, float *y, void *scratch, tm_error_t *error) {
    return tm_matmul(pool, type, weights, rows, cols, x, 1, y, false, scratch, error);
}

#endif /* TM_GEMV_H */
