/*
 * kv_address.cuh - where a key or value vector of the paged KV cache lives, from device code:
 * the geometry of engine/kv_cache.c (a row is one token's [K heads][V heads]; whole rows per
 * page when a row fits, else whole pages per row), read through a stream's page table, and where
 * an 8-bit vector's scale lives. Shared by every attention kernel so they all agree with the host
 * cache.
 */
#ifndef TM_CUDA_KV_ADDRESS_CUH
#define TM_CUDA_KV_ADDRESS_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels.h"

/* The cache's element types (tm_cuda_kv's, as template arguments). */
enum { KV_F16 = TM_CUDA_KV_F16, KV_F32 = TM_CUDA_KV_F32, KV_Q8 = TM_CUDA_KV_Q8 };
__host__ __device__ constexpr int kv_element_bytes(int type) { return type == KV_F32 ? 4 : type == KV_Q8 ? 1 : 2; }

struct kv_addressing {
    const uint8_t *pool;
    const float *scales; /* KV_Q8: a vector's scale at scales[(its byte offset in the pool) / head_bytes] */
    int64_t row_bytes, head_bytes, page_size, rows_per_page, pages_per_row;
    int n_head_kv;
};

/* The cache geometry of kv_cache.c: a row is [K heads][V heads]; whole rows per page when a row
 * fits, else whole pages per row. */
static inline kv_addressing make_addressing(const tm_cuda_kv &kv, int n_head_kv, int head_dim) {
    const int64_t element = kv_element_bytes(kv.type);
    kv_addressing a = {(const uint8_t *)kv.pool, kv.scales, 2 * (int64_t)n_head_kv * head_dim * element, (int64_t)head_dim * element,
                       (int64_t)kv.page_size, 0, 0, n_head_kv};
    if (a.row_bytes <= a.page_size) a.rows_per_page = a.page_size / a.row_bytes;
    else a.pages_per_row = (a.row_bytes + a.page_size - 1) / a.page_size;
    return a;
}

/* The scale slot of the 8-bit head vector at `vector` (any head dim), and the scale itself read
 * through the non-coherent path for a compile-time head dim HD (scales, pool: a kv_addressing's, or
 * copies of them). */
__device__ __forceinline__ float *kv_scale_slot(const kv_addressing &a, const uint8_t *vector) {
    return const_cast<float *>(a.scales) + (uint64_t)(vector - a.pool) / (uint64_t)a.head_bytes;
}
template <int HD> __device__ __forceinline__ float kv_scale(const float *scales, const uint8_t *pool, const uint8_t *vector) {
    return __ldg(scales + (uint64_t)(vector - pool) / (uint64_t)HD);
}
template <int HD> __device__ __forceinline__ float kv_scale(const kv_addressing &a, const uint8_t *vector) {
    return kv_scale<HD>(a.scales, a.pool, vector);
}

/* Four signed bytes as two f16x2 words, exactly, without I2F (a quarter-rate conversion on
 * sm_80/sm_90: with it the 8-bit decode attention was bound by conversions, 7B 2048 x8 1686 tokens/s
 * against the f16 cache's 1731): each byte biased to unsigned, a pair placed in the low bytes of two
 * halves of exponent 0x64 (1024 + u, exact), 1152 taken off in half precision (exact: -128..127).
 * lo = (x0, x1), hi = (x2, x3): the tensor-core attention's fragment registers. */
__device__ __forceinline__ void int8x4_to_half2x2(uint32_t word, uint32_t &lo, uint32_t &hi) {
    const uint32_t biased = word ^ 0x80808080u;
    const uint32_t l = __byte_perm(biased, 0x64646464u, 0x4140), h = __byte_perm(biased, 0x64646464u, 0x4342);
    const __half2 offset = __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480)); /* 1152 */
    const __half2 x01 = __hsub2(*reinterpret_cast<const __half2 *>(&l), offset), x23 = __hsub2(*reinterpret_cast<const __half2 *>(&h), offset);
    lo = *reinterpret_cast<const uint32_t *>(&x01), hi = *reinterpret_cast<const uint32_t *>(&x23);
}

/* Four signed bytes as floats, exactly: int8x4_to_half2x2, widened to float as the f16 cache's halves are. */
__device__ __forceinline__ void int8x4_to_float(uint32_t word, float *x) {
    uint32_t lo, hi;
    int8x4_to_half2x2(word, lo, hi);
    const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&lo)), b = __half22float2(*reinterpret_cast<const __half2 *>(&hi));
    x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
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

/* A row that spans pages (pages_per_row > 0) is split into page-sized chunks, each on a page of its
 * own; a row that shares a page is one chunk. The chunks of a row, the chunk holding byte `in_row`
 * of a row and that byte's offset in it, and where chunk `chunk` of token p's row starts: kv_address
 * is kv_row_chunk(.., kv_chunk_of(in_row)) + kv_offset_in_chunk(in_row) for in_row =
 * kv_head_in_row(head, is_value). */
static inline __host__ __device__ int kv_chunks_per_row(const kv_addressing &a) { return a.pages_per_row ? (int)a.pages_per_row : 1; }
__device__ __forceinline__ int kv_head_in_row(const kv_addressing &a, int head, bool is_value) {
    return ((is_value ? a.n_head_kv : 0) + head) * (int)a.head_bytes;
}
__device__ __forceinline__ int kv_chunk_of(const kv_addressing &a, int in_row) { return a.pages_per_row ? in_row / (int)a.page_size : 0; }
__device__ __forceinline__ int kv_offset_in_chunk(const kv_addressing &a, int in_row) {
    return a.pages_per_row ? in_row % (int)a.page_size : in_row;
}
__device__ __forceinline__ const uint8_t *kv_row_chunk(const kv_addressing &a, const int32_t *pages, int64_t p, int chunk) {
    if (a.rows_per_page) return a.pool + (int64_t)pages[p / a.rows_per_page] * a.page_size + (p % a.rows_per_page) * a.row_bytes;
    return a.pool + (int64_t)pages[p * a.pages_per_row + chunk] * a.page_size;
}

/* The same with 32-bit index math (positions and page-table indices below 2^31), cheaper where
 * every thread computes many addresses. */
__device__ __forceinline__ const uint8_t *kv_address32(const kv_addressing &a, const int32_t *pages, int p, int head, bool is_value) {
    const int offset_in_row = ((is_value ? a.n_head_kv : 0) + head) * (int)a.head_bytes;
    if (a.rows_per_page) {
        const int rows_per_page = (int)a.rows_per_page;
        return a.pool + (int64_t)pages[p / rows_per_page] * a.page_size + (p % rows_per_page) * (int)a.row_bytes + offset_in_row;
    }
    const int page_size = (int)a.page_size;
    return a.pool + (int64_t)pages[p * (int)a.pages_per_row + offset_in_row / page_size] * a.page_size + offset_in_row % page_size;
}

#endif /* TM_CUDA_KV_ADDRESS_CUH */
