/*
 * kv_append.cu - what writes the paged KV cache, and the rope that goes with it: the rope angle
 * table (tm_cuda_rope_table: the same bits as computing them), the rope + KV append of a step's
 * Q/K/V (tm_cuda_rope_kv_append: queries roped in place, keys roped and stored with their values
 * in each token's slot), the step's rope targets for the products' epilogue (tm_cuda_rope_targets:
 * each token's angles and cache rows, found once a step), the plain KV append
 * (tm_cuda_kv_append), and which caches the kernels take (tm_cuda_kv_valid). f16, f32 or 8-bit
 * cache; an 8-bit vector is quantized a block a vector (store_q8_pairs, rope_append.cuh), with
 * the CPU's rounding (tm_kv_store_vector) bit for bit. The addressing is kv_address.cuh's, the
 * host cache's (engine/kv_cache.c).
 */
#include "kernels.h"
#include "common.cuh"
#include "kv_address.cuh"
#include "launch.cuh"
#include "rope_append.cuh"

/* ---- rope fused with the KV append ------------------------------------------------------ */

/* angles[p * (n_rot / 2) + i] = rope_angle(i, ..., p): a thread per (position, pair). */
__global__ void rope_table_kernel(float2 *angles, int64_t n, int n_rot, float freq_base, float freq_scale, const float *freq_factors) {
    const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) angles[k] = rope_angle((int)(k % (n_rot / 2)), n_rot, (int)(k / (n_rot / 2)), freq_base, freq_scale, freq_factors);
}

extern "C" uint64_t tm_cuda_rope_table_bytes(int n_positions, int n_rot) { return (uint64_t)n_positions * (n_rot / 2) * sizeof(float2); }

extern "C" int tm_cuda_rope_table(void *angles, int n_positions, int n_rot, float freq_base, float freq_scale, const float *freq_factors,
                                  void *stream) {
    if (n_positions < 0 || n_rot < 2 || n_rot % 2) return cudaErrorInvalidValue;
    const int64_t n = (int64_t)n_positions * (n_rot / 2);
    if (n == 0) return cudaSuccess;
    rope_table_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>((float2 *)angles, n, n_rot, freq_base, freq_scale,
                                                                                       freq_factors);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* One block per (token, head slot): slots 0..n_head-1 rope the query heads in place; slots
 * n_head.. rope kv head h's key and write it and the value into the cache. A thread per pair. The
 * angle comes from `angles` for positions below n_angles (the float64 cos and sin bound the kernel:
 * ncu saw 5.3 us at 0.10 issues a cycle for 7B decode x1), else is computed: the same bits. The
 * decode products can do the same as they make Q/K/V (tm_cuda_gemv_q8_qkv_rope); both store
 * through rope_append_write. An 8-bit cache's key and value vectors go through store_q8_pairs
 * instead (the block holds the whole vector: blockDim.x >= head_dim / 2, whole warps). */
__global__ void rope_kv_append_kernel(float *q, const float *k, const float *v, rope_append e) {
    tm_grid_dependency();
    const int n_head_kv = e.kv.n_head_kv, token = blockIdx.x / (e.n_head + n_head_kv), slot = blockIdx.x % (e.n_head + n_head_kv);
    if (e.kv_type == KV_Q8 && slot >= e.n_head) { /* block-uniform */
        __shared__ float reduce[32];
        const int head = slot - e.n_head, i = threadIdx.x, d = 2 * i, position = e.positions[token];
        const bool valid = i < e.head_dim / 2;
        float key[2] = {0, 0}, value[2] = {0, 0};
        if (valid) {
            const int64_t at = ((int64_t)token * n_head_kv + head) * e.head_dim + d;
            key[0] = k[at], key[1] = k[at + 1], value[0] = v[at], value[1] = v[at + 1];
            if (d < e.n_rot) rope_rotate(key, rope_append_angle(e, position, i));
        }
        const int32_t *table = e.pages + e.page_offsets[token];
        store_q8_pairs(e.kv, const_cast<uint8_t *>(kv_address32(e.kv, table, position, head, false)), d, valid, key[0], key[1], reduce);
        store_q8_pairs(e.kv, const_cast<uint8_t *>(kv_address32(e.kv, table, position, head, true)), d, valid, value[0], value[1], reduce);
        return;
    }
    for (int i = threadIdx.x; i < e.head_dim / 2; i += blockDim.x) {
        if (slot < e.n_head) {
            float *pair = q + ((int64_t)token * e.n_head + slot) * e.head_dim + 2 * i;
            rope_append_pair(e, 0, slot * e.head_dim + 2 * i, token, pair[0], pair[1], q);
            continue;
        }
        const int head = slot - e.n_head;
        const int64_t at = ((int64_t)token * n_head_kv + head) * e.head_dim + 2 * i;
        rope_append_pair(e, 1, head * e.head_dim + 2 * i, token, k[at], k[at + 1], q);
        rope_append_pair(e, 2, head * e.head_dim + 2 * i, token, v[at], v[at + 1], q);
    }
}

extern "C" int tm_cuda_rope_kv_append(float *q, const float *k, const float *v, int n_tokens, const tm_cuda_rope_kv *rope, void *stream) {
    if (!rope || !rope_append_valid(*rope)) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const rope_append e = make_rope_append(*rope);
    const unsigned blocks = (unsigned)(n_tokens * (rope->n_head + rope->n_head_kv));
    const unsigned threads = (unsigned)(rope->head_dim / 2 + 31) / 32 * 32; /* whole warps (store_q8_pairs' reductions) */
    if (rope->head_dim > 2048) return cudaErrorInvalidValue;
    TM_LAUNCH_DEPENDENT(rope_kv_append_kernel, dim3(blocks), dim3(threads), 0, (cudaStream_t)stream, q, k, v, e);
    return cudaSuccess;
}

/* The step's rope targets (rope_append.cuh's layout): a block per token; its threads write the
 * token's angles, then the addresses of its cache row's chunks in every layer. */
__global__ void rope_targets_kernel(uint8_t *targets, int n_tokens, int n_layer, int64_t layer_pages, rope_append e) {
    tm_grid_dependency();
    const int token = blockIdx.x, position = e.positions[token];
    float2 *angles = reinterpret_cast<float2 *>(targets) + (int64_t)token * (e.n_rot / 2);
    for (int i = threadIdx.x; i < e.n_rot / 2; i += blockDim.x) angles[i] = rope_append_angle(e, position, i);
    uint8_t **rows = reinterpret_cast<uint8_t **>(targets + rope_targets_rows_at(n_tokens, e.n_rot));
    const int chunks = kv_chunks_per_row(e.kv);
    for (int k = threadIdx.x; k < n_layer * chunks; k += blockDim.x) {
        const int layer = k / chunks, chunk = k % chunks;
        const int32_t *table = e.pages + layer * layer_pages + e.page_offsets[token];
        rows[((int64_t)layer * n_tokens + token) * chunks + chunk] = const_cast<uint8_t *>(kv_row_chunk(e.kv, table, position, chunk));
    }
}

extern "C" uint64_t tm_cuda_rope_targets_bytes(int n_tokens, int n_layer, const tm_cuda_rope_kv *rope) {
    const kv_addressing kv = make_addressing(rope->kv, rope->n_head_kv, rope->head_dim);
    return (uint64_t)rope_targets_rows_at(n_tokens, rope->n_rot) + (uint64_t)n_layer * n_tokens * kv_chunks_per_row(kv) * sizeof(void *);
}

extern "C" int tm_cuda_rope_targets(void *targets, int n_tokens, int n_layer, int64_t layer_pages, const tm_cuda_rope_kv *rope, void *stream) {
    if (!targets || !rope || !rope_append_valid(*rope) || n_tokens < 0 || n_layer < 1 || layer_pages < 0)
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(rope_targets_kernel, dim3((unsigned)n_tokens), dim3(128), 0, (cudaStream_t)stream, (uint8_t *)targets, n_tokens,
                        n_layer, layer_pages, make_rope_append(*rope));
    return cudaSuccess;
}

/* One thread per element: key and value of each (token, kv head, dim) into its page (f16, f32). */
template <int KV>
__global__ void kv_append_kernel(const float *k, const float *v, int n_tokens, kv_addressing a, int head_dim,
                                 const int32_t *pages, const int64_t *page_offsets, const int32_t *positions) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t per_token = (int64_t)a.n_head_kv * head_dim;
    if (index >= n_tokens * per_token) return;
    int token = (int)(index / per_token), head = (int)(index % per_token / head_dim), d = (int)(index % head_dim);
    const int32_t *table = pages + page_offsets[token];
    uint8_t *key = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, false));
    uint8_t *value = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, true));
    if (KV == KV_F16) {
        reinterpret_cast<__half *>(key)[d] = __float2half_rn(k[index]);
        reinterpret_cast<__half *>(value)[d] = __float2half_rn(v[index]);
    } else {
        reinterpret_cast<float *>(key)[d] = k[index];
        reinterpret_cast<float *>(value)[d] = v[index];
    }
}

/* An 8-bit cache: a block per (token, kv head), a thread per pair of elements (store_q8_pairs). */
__global__ void kv_append_q8_kernel(const float *k, const float *v, kv_addressing a, int head_dim, const int32_t *pages,
                                    const int64_t *page_offsets, const int32_t *positions) {
    __shared__ float reduce[32];
    const int token = blockIdx.x / a.n_head_kv, head = blockIdx.x % a.n_head_kv, d = 2 * threadIdx.x;
    const bool valid = d < head_dim;
    const int64_t at = ((int64_t)token * a.n_head_kv + head) * head_dim + d;
    const int32_t *table = pages + page_offsets[token];
    store_q8_pairs(a, const_cast<uint8_t *>(kv_address(a, table, positions[token], head, false)), d, valid, valid ? k[at] : 0.0f,
                   valid ? k[at + 1] : 0.0f, reduce);
    store_q8_pairs(a, const_cast<uint8_t *>(kv_address(a, table, positions[token], head, true)), d, valid, valid ? v[at] : 0.0f,
                   valid ? v[at + 1] : 0.0f, reduce);
}

extern "C" int tm_cuda_kv_append(const float *k, const float *v, int n_tokens, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                                 const int32_t *pages, const int64_t *page_offsets, const int32_t *positions, void *stream) {
    if (!kv || !tm_cuda_kv_valid(kv, head_dim) || head_dim % 2 || head_dim > 2048) return cudaErrorInvalidValue;
    kv_addressing a = make_addressing(*kv, n_head_kv, head_dim);
    int64_t total = (int64_t)n_tokens * n_head_kv * head_dim;
    if (total == 0) return cudaSuccess;
    cudaStream_t s = (cudaStream_t)stream;
    unsigned blocks = (unsigned)((total + 255) / 256);
    if (kv->type == KV_Q8)
        kv_append_q8_kernel<<<(unsigned)(n_tokens * n_head_kv), (unsigned)(head_dim / 2 + 31) / 32 * 32, 0, s>>>(
            k, v, a, head_dim, pages, page_offsets, positions);
    else if (kv->type == KV_F32)
        kv_append_kernel<KV_F32><<<blocks, 256, 0, s>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    else
        kv_append_kernel<KV_F16><<<blocks, 256, 0, s>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_kv_valid(const tm_cuda_kv *kv, int head_dim) {
    if (!kv || !kv->pool || head_dim <= 0 || kv->page_size == 0) return 0;
    if (kv->type == KV_F16 || kv->type == KV_F32) return 1;
    return kv->type == KV_Q8 && kv->scales && kv->page_size % (uint32_t)head_dim == 0;
}
