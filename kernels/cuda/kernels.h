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

/* out[t] = row tokens[t] of an embedding table (n_embd columns of ggml type `type`), as floats. */
int tm_cuda_embed(int type, const void *table, int n_embd, const int32_t *tokens, int n_tokens, float *out, void *stream);
/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for n_rows rows of n floats (out may be x). */
int tm_cuda_rmsnorm(float *out, const float *x, const float *weight, int n_rows, int n, float eps, void *stream);
/* Rope (llama.cpp's "normal", as engine/ops_cpu.c) in place on n_tokens x n_heads x head_dim floats;
 * positions: one per token (device); freq_factors: n_rot/2 floats (device) or NULL. */
int tm_cuda_rope(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                 const float *freq_factors, const int32_t *positions, void *stream);
/* gate[i] = silu(gate[i]) * up[i]. */
int tm_cuda_swiglu(float *gate, const float *up, int64_t n, void *stream);
/* x[i] += delta[i]. */
int tm_cuda_add(float *x, const float *delta, int64_t n, void *stream);

/* Decode attention through the paged KV cache (layout of engine/kv_cache.h: rows [K heads][V heads],
 * page_size bytes per page, f16 or f32): for query token t and head h,
 * out[t][h] = softmax(q[t][h] . K[0..n_keys[t]) / sqrt(head_dim)) V[0..n_keys[t]) of kv head
 * h / (n_head / n_head_kv), reading token t's stream through pages[page_offsets[t]...].
 * All pointers are device pointers; head_dim <= 256. */
int tm_cuda_paged_attention(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                            const void *pool, int kv_is_f32, uint32_t page_size, const int32_t *pages,
                            const int64_t *page_offsets, const int32_t *n_keys, void *stream);

/* Write the keys and values of n_tokens tokens (n_head_kv x head_dim floats each, from k and v)
 * at positions[t] of token t's stream (pages[page_offsets[t]...]), converted to the cache type. */
int tm_cuda_kv_append(const float *k, const float *v, int n_tokens, int n_head_kv, int head_dim, void *pool, int kv_is_f32,
                      uint32_t page_size, const int32_t *pages, const int64_t *page_offsets, const int32_t *positions,
                      void *stream);

/* Whether a CUDA device is usable here; writes its name. */
int tm_cuda_device_name(char *name, int capacity);

#ifdef __cplusplus
}
#endif

#endif /* TM_CUDA_KERNELS_H */
