/*
 * ops_cpu.h - the CPU reference of the small per-token operations of the llama forward pass
 * (the CUDA kernels of the same ops are tested against these).
 */
#ifndef TM_OPS_CPU_H
#define TM_OPS_CPU_H

#include <stdint.h>

#include "kv_cache.h"

/* out = x / sqrt(mean(x^2) + eps) * weight, over n elements (float64 sum of squares). */
void tm_cpu_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);

typedef struct tm_rope_params {
    int head_dim;
    int n_rot;                  /* rotated dimensions per head (even, <= head_dim) */
    float freq_base;
    float freq_scale;           /* 1 / linear scaling factor */
    const float *freq_factors;  /* (n_rot/2) llama3 per-pair divisors, or NULL */
} tm_rope_params;

/* llama.cpp's "normal" rope on n_heads heads of one token: pairs (2i, 2i+1) of the first n_rot
 * dims rotate by theta = position * freq_scale * base^(-2i/n_rot) / freq_factors[i]
 * (theta in float64). */
void tm_cpu_rope(float *vec, int n_heads, const tm_rope_params *p, int position);

/* gate[i] = silu(gate[i]) * up[i]. */
void tm_cpu_swiglu(float *gate, const float *up, int64_t n);

/* out (head_dim) = softmax(q . K[0..n_keys) / sqrt(head_dim)) V[0..n_keys) for one query head,
 * reading keys and values of kv head `kv_head` through the pages of stream (seq, layer).
 * scores: n_keys floats of scratch. Softmax in float with a float64 normaliser. */
void tm_cpu_attention(const float *q, const tm_kv_cache *kv, int seq, int layer, int n_keys, int kv_head, int head_dim,
                      float *out, float *scores);

#endif /* TM_OPS_CPU_H */
