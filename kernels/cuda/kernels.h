/*
 * kernels.h - C-linkage launchers of the CUDA kernels (no CUDA types: pointers are device
 * pointers passed as void *, the stream as void *; NULL is the default stream).
 * Every launcher returns 0 on success or the cudaError_t value, after printing the failing
 * call with file and line.
 */
#ifndef TM_CUDA_KERNELS_H
#define TM_CUDA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[r] = dot(W[r, :], x) for rows of `cols` elements of ggml type `type` (float activations,
 * float32 accumulation). Types: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k. */
int tm_cuda_gemv(int type, const void *weights, int64_t rows, int64_t cols, const float *x, float *y, void *stream);

/* Whether a CUDA device is usable here; writes its name. */
int tm_cuda_device_name(char *name, int capacity);

#ifdef __cplusplus
}
#endif

#endif /* TM_CUDA_KERNELS_H */
