/*
 * gemv.h - matrix-vector product for every weight type, split across a thread pool.
 *
 * Guarantees: y[r] = dot(W[r, :], x) for r in [0, rows), using the type's activation path
 * (x quantized once to Q8_0/Q8_K for quantized weights, float for F32/F16/BF16). Rows are split
 * into contiguous ranges, one per thread; the result does not depend on the thread count.
 */
#ifndef TM_GEMV_H
#define TM_GEMV_H

#include "quant.h"
#include "threadpool.h"

/* Bytes of scratch tm_gemv needs for the quantized activation row. */
uint64_t tm_gemv_scratch_bytes(tm_type type, int64_t cols);

/* pool may be NULL (single thread); scratch may be NULL (allocated per call). */
tm_status tm_gemv(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols,
                  const float *x, float *y, void *scratch, tm_error_t *error);

#endif /* TM_GEMV_H */
