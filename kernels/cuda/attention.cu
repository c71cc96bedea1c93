/*
 * attention.cu - decode attention through the paged KV cache: one block per (query token, query
 * head), four warps splitting the keys; each warp keeps an online softmax (running max, sum and
 * weighted value sum), and the warps' partial results are merged at the end (flash-decoding's
 * combine). Keys and values are read through the stream's page table with the same addressing as
 * engine/kv_cache.c, so nothing assumes contiguous KV. float32 math; f16 or f32 cache.
 */
#include "kernels.h"
#include "common.cuh"

#define WARPS 4
#define MAX_HEAD_DIM 256

struct kv_addressing {
    const uint8_t *pool;
    int64_t row_bytes, head_bytes, page_size, rows_per_page, pages_per_row;
    int n_head_kv;
};

/* The cache geometry of kv_cache.c: a row is [K heads][V heads]; whole rows per page when a row
 * fits, else whole pages per row. */
static kv_addressing make_addressing(const void *pool, int kv_is_f32, uint32_t page_size, int n_head_kv, int head_dim) {
    int64_t element = kv_is_f32 ? 4 : 2;
    kv_addressing a = {(const uint8_t *)pool, 2 * (int64_t)n_head_kv * head_dim * element, (int64_t)head_dim * element,
                       (int64_t)page_size, 0, 0, n_head_kv};
    if (a.row_bytes <= a.page_size) a.rows_per_page = a.page_size / a.row_bytes;
    else a.pages_per_row = (a.row_bytes + a.page_size - 1) / a.page_size;
    return a;
}

/* Address of the key (value: is_value) vector of kv head `head` of token p in a stream. */
__device__ __forceinline__ const uint8_t *kv_address(const kv_addressing &a, const int32_t *pages, int64_t p, int head,
                                                     bool is_value) {
    int64_t offset_in_row = (int64_t)((is_value ? a.n_head_kv : 0) + head) * a.head_bytes;
    if (a.rows_per_page) {
        int64_t page = pages[p / a.rows_per_page];
        return a.pool + page * a.page_size + (p % a.rows_per_page) * a.row_bytes + offset_in_row;
    }
    int64_t page = pages[p * a.pages_per_row + offset_in_row / a.page_size];
    return a.pool + page * a.page_size + offset_in_row % a.page_size;
}

template <bool HALF> __device__ __forceinline__ float kv_element(const uint8_t *vector, int i) {
    if (HALF) return __half2float(reinterpret_cast<const __half *>(vector)[i]);
    return reinterpret_cast<const float *>(vector)[i];
}

template <bool HALF>
__global__ void paged_attention_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages,
                                       const int64_t *page_offsets, const int32_t *n_keys, int n_head, int head_dim, float scale) {
    const int token = blockIdx.x / n_head, head = blockIdx.x % n_head;
    const int kv_head = head / (n_head / a.n_head_kv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int per_lane = (head_dim + 31) / 32;
    const int32_t *table = pages + page_offsets[token];
    const float *query = q + ((int64_t)token * n_head + head) * head_dim;
    float q_lane[MAX_HEAD_DIM / 32], acc[MAX_HEAD_DIM / 32];
    for (int i = 0; i < per_lane; i++) {
        int d = lane + 32 * i;
        q_lane[i] = d < head_dim ? query[d] : 0.0f;
        acc[i] = 0;
    }
    float running_max = -INFINITY, running_sum = 0;
    for (int p = warp; p < n_keys[token]; p += WARPS) {
        const uint8_t *key = kv_address(a, table, p, kv_head, false);
        float dot = 0;
        for (int i = 0; i < per_lane; i++) {
            int d = lane + 32 * i;
            if (d < head_dim) dot += q_lane[i] * kv_element<HALF>(key, d);
        }
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        float score = dot * scale, new_max = fmaxf(running_max, score);
        float correction = expf(running_max - new_max), weight = expf(score - new_max);
        running_sum = running_sum * correction + weight;
        const uint8_t *value = kv_address(a, table, p, kv_head, true);
        for (int i = 0; i < per_lane; i++) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * correction + (d < head_dim ? weight * kv_element<HALF>(value, d) : 0.0f);
        }
        running_max = new_max;
    }
    __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][MAX_HEAD_DIM];
    if (lane == 0) {
        warp_max[warp] = running_max;
        warp_sum[warp] = running_sum;
    }
    for (int i = 0; i < per_lane; i++) {
        int d = lane + 32 * i;
        if (d < head_dim) warp_acc[warp][d] = acc[i];
    }
    __syncthreads();
    float global_max = -INFINITY;
    for (int w = 0; w < WARPS; w++) global_max = fmaxf(global_max, warp_max[w]);
    float total = 0, factor[WARPS];
    for (int w = 0; w < WARPS; w++) {
        factor[w] = warp_sum[w] > 0 ? expf(warp_max[w] - global_max) : 0.0f; /* a warp that saw no key adds nothing */
        total += warp_sum[w] * factor[w];
    }
    float *result = out + ((int64_t)token * n_head + head) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0;
        for (int w = 0; w < WARPS; w++) sum += warp_acc[w][d] * factor[w];
        result[d] = sum / total;
    }
}

extern "C" int tm_cuda_paged_attention(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                       const void *pool, int kv_is_f32, uint32_t page_size, const int32_t *pages,
                                       const int64_t *page_offsets, const int32_t *n_keys, void *stream) {
    if (head_dim > MAX_HEAD_DIM || n_head % n_head_kv) return cudaErrorInvalidValue;
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    float scale = 1.0f / sqrtf((float)head_dim);
    dim3 grid((unsigned)(n_tokens * n_head)), block(32 * WARPS);
    if (kv_is_f32)
        paged_attention_kernel<false><<<grid, block, 0, (cudaStream_t)stream>>>(q, out, a, pages, page_offsets, n_keys, n_head,
                                                                                head_dim, scale);
    else
        paged_attention_kernel<true><<<grid, block, 0, (cudaStream_t)stream>>>(q, out, a, pages, page_offsets, n_keys, n_head,
                                                                               head_dim, scale);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* One thread per element: key and value of each (token, kv head, dim) into its page. */
template <bool HALF>
__global__ void kv_append_kernel(const float *k, const float *v, int n_tokens, kv_addressing a, int head_dim,
                                 const int32_t *pages, const int64_t *page_offsets, const int32_t *positions) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t per_token = (int64_t)a.n_head_kv * head_dim;
    if (index >= n_tokens * per_token) return;
    int token = (int)(index / per_token), head = (int)(index % per_token / head_dim), d = (int)(index % head_dim);
    const int32_t *table = pages + page_offsets[token];
    uint8_t *key = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, false));
    uint8_t *value = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, true));
    if (HALF) {
        reinterpret_cast<__half *>(key)[d] = __float2half_rn(k[index]);
        reinterpret_cast<__half *>(value)[d] = __float2half_rn(v[index]);
    } else {
        reinterpret_cast<float *>(key)[d] = k[index];
        reinterpret_cast<float *>(value)[d] = v[index];
    }
}

extern "C" int tm_cuda_kv_append(const float *k, const float *v, int n_tokens, int n_head_kv, int head_dim, void *pool,
                                 int kv_is_f32, uint32_t page_size, const int32_t *pages, const int64_t *page_offsets,
                                 const int32_t *positions, void *stream) {
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    int64_t total = (int64_t)n_tokens * n_head_kv * head_dim;
    if (total == 0) return cudaSuccess;
    unsigned blocks = (unsigned)((total + 255) / 256);
    if (kv_is_f32)
        kv_append_kernel<false><<<blocks, 256, 0, (cudaStream_t)stream>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    else
        kv_append_kernel<true><<<blocks, 256, 0, (cudaStream_t)stream>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}
