/*
 * rope_append.cuh - where a Q/K/V product's outputs go when the rope and the KV append are applied
 * to them: a pair of adjacent rows (elements 2i, 2i + 1 of one head) of one token, rotated by the
 * rope angle of the token's position (queries and keys), stored as queries (float, in place of the
 * product's output) or into the token's slot of the paged KV cache (keys, values; f16 or f32).
 * Two users, the same bits: the separate rope + append kernel (kv_append.cu) finds each pair's
 * angle and slot itself (rope_append_pair); the decode products' epilogue (gemv_q8.cu,
 * tm_cuda_gemv_q8_qkv_rope) reads them from the step's targets, written once a step by
 * tm_cuda_rope_targets (kv_append.cu) with the same functions, and stores through the same
 * rope_append_write. An 8-bit cache's vector needs the whole vector for its scale: only the
 * separate kernel writes it, a block a vector (store_q8_pairs).
 */
#ifndef TM_CUDA_ROPE_APPEND_CUH
#define TM_CUDA_ROPE_APPEND_CUH

#include "common.cuh"
#include "kernels.h"
#include "kv_address.cuh"
#include "launch.cuh"

/* The device-side copy of tm_cuda_rope_kv (kernels.h), with the cache geometry resolved; with
 * TM_ROPE_TABLE=0 in the environment (a measuring aid) every angle is computed. */
struct rope_append {
    kv_addressing kv;
    const int32_t *pages;
    const int64_t *page_offsets;
    const int32_t *positions;
    const float2 *angles; /* tm_cuda_rope_table of n_angles positions, or NULL */
    const float *freq_factors;
    float freq_base, freq_scale;
    int n_angles, n_head, head_dim, n_rot, kv_type;
    const uint8_t *targets; /* the step's (tm_cuda_rope_targets), for the products' epilogue */
    int layer;
};

static inline rope_append make_rope_append(const tm_cuda_rope_kv &r) {
    rope_append e;
    e.kv = make_addressing(r.kv, r.n_head_kv, r.head_dim);
    e.pages = r.pages, e.page_offsets = r.page_offsets, e.positions = r.positions;
    static const int tabled = tm_env_int("TM_ROPE_TABLE", 1);
    e.angles = (const float2 *)r.angles, e.n_angles = r.angles && tabled ? r.n_angles : 0;
    e.freq_factors = r.freq_factors, e.freq_base = r.freq_base, e.freq_scale = r.freq_scale;
    e.n_head = r.n_head, e.head_dim = r.head_dim, e.n_rot = r.n_rot, e.kv_type = r.kv.type;
    e.targets = (const uint8_t *)r.targets, e.layer = r.layer;
    return e;
}

/* The parameters the kernels assume: an even head dim, n_rot even and at most head_dim, heads and
 * pointers present, a table wherever n_angles says there is one, a cache the kernels take. */
static inline bool rope_append_valid(const tm_cuda_rope_kv &r) {
    return tm_cuda_kv_valid(&r.kv, r.head_dim) && r.head_dim > 0 && r.head_dim % 2 == 0 && r.n_rot >= 0 && r.n_rot % 2 == 0 &&
           r.n_rot <= r.head_dim && r.n_head > 0 && r.n_head_kv > 0 && r.n_angles >= 0 && (r.n_angles == 0 || r.angles) && r.pages && r.page_offsets && r.positions;
}

/* The angle of pair i at `position`: the table's below n_angles, else computed (same values). */
__device__ __forceinline__ float2 rope_append_angle(const rope_append &e, int position, int i) {
    if (position >= 0 && position < e.n_angles) return e.angles[(int64_t)position * (e.n_rot / 2) + i];
    return rope_angle(i, e.n_rot, position, e.freq_base, e.freq_scale, e.freq_factors);
}

/* Where part `part`'s head `head` (0 queries: n_head heads; 1 keys, 2 values: n_head_kv heads) of
 * token `token` at `position` goes: q[token][head * head_dim ..] (q: n_head * head_dim floats a
 * token), else the token's cache slot (page_offset: page_offsets[token], its stream's page table). */
__device__ __forceinline__ uint8_t *rope_append_head(const rope_append &e, int part, int head, int token, int position, int64_t page_offset,
                                                     float *q) {
    if (part == 0) return reinterpret_cast<uint8_t *>(q + ((int64_t)token * e.n_head + head) * e.head_dim);
    return const_cast<uint8_t *>(kv_address32(e.kv, e.pages + page_offset, position, head, part == 2));
}

/* Elements d, d + 1 (d even) of that head: v0, v1, rotated by `angle` for queries and keys below
 * n_rot, stored as floats (queries, an f32 cache) or f16 (never an 8-bit cache: store_q8_pairs). */
__device__ __forceinline__ void rope_append_write(const rope_append &e, int part, uint8_t *head, int d, float2 angle, float v0, float v1) {
    float pair[2] = {v0, v1};
    if (part < 2 && d < e.n_rot) rope_rotate(pair, angle);
    if (part == 0 || e.kv_type == KV_F32) {
        reinterpret_cast<float *>(head)[d] = pair[0];
        reinterpret_cast<float *>(head)[d + 1] = pair[1];
    } else {
        reinterpret_cast<__half2 *>(head)[d / 2] = __halves2half2(__float2half_rn(pair[0]), __float2half_rn(pair[1]));
    }
}

/* One 8-bit head vector stored by a block: thread i holds its pair (x0, x1) at elements d = 2i,
 * d + 1 (valid: i < head_dim / 2; blockDim.x >= head_dim / 2), the block finds m = max |x| over
 * the vector, and `vector` gets q = round(x / s), s = m / 127 (0 where m is 0), s its scale slot:
 * engine/kv_cache.c's tm_kv_store_vector, the same bits. Every thread of the block calls it (it
 * holds barriers); reduce: blockDim.x / 32 floats of shared memory. */
__device__ __forceinline__ void store_q8_pairs(const kv_addressing &a, uint8_t *vector, int d, bool valid, float x0, float x1, float *reduce) {
    const float largest_here = max_over_warp(valid ? fmaxf(fabsf(x0), fabsf(x1)) : 0.0f);
    __syncthreads(); /* reduce is free (an earlier call's reads are done) */
    if ((threadIdx.x & 31) == 0) reduce[threadIdx.x >> 5] = largest_here;
    __syncthreads();
    float largest = 0;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) largest = fmaxf(largest, reduce[w]);
    const float scale = largest / 127.0f;
    if (valid) {
        const int q0 = scale > 0 ? __float2int_rn(x0 / scale) : 0, q1 = scale > 0 ? __float2int_rn(x1 / scale) : 0;
        *reinterpret_cast<char2 *>(vector + d) = make_char2((signed char)q0, (signed char)q1);
    }
    if (threadIdx.x == 0) *kv_scale_slot(a, vector) = scale;
}

/* The angle a pair at element d of part `part` needs ((1, 0), unused, where it is not rotated). */
__device__ __forceinline__ float2 rope_append_pair_angle(const rope_append &e, int part, int d, int position) {
    return part < 2 && d < e.n_rot ? rope_append_angle(e, position, d / 2) : make_float2(1.0f, 0.0f);
}

/* Rows row, row + 1 (row even) of part `part` for token `token`, values v0, v1, in one go. */
__device__ __forceinline__ void rope_append_pair(const rope_append &e, int part, int row, int token, float v0, float v1, float *q) {
    const int head = row / e.head_dim, d = row % e.head_dim, position = e.positions[token];
    uint8_t *to = rope_append_head(e, part, head, token, position, part ? e.page_offsets[token] : 0, q);
    rope_append_write(e, part, to, d, rope_append_pair_angle(e, part, d, position), v0, v1);
}

/* ---- the step's targets (tm_cuda_rope_targets) ---------------------------------------------
 * Angles first, [token][n_rot / 2] float2 (rope_append_angle's values), then from byte
 * rope_targets_rows_at the cache rows, [layer][token][chunk] pointers (kv_row_chunk of every chunk
 * of the token's row, kv_address.cuh). A product's epilogue copies the ones it needs into shared
 * memory by cp.async right after its wait. */
static inline __host__ __device__ int64_t rope_targets_rows_at(int n_tokens, int n_rot) {
    return ((int64_t)n_tokens * (n_rot / 2) * 8 + 15) / 16 * 16;
}

/* Token `token`'s angle of pair i. */
__device__ __forceinline__ const float2 *rope_target_angle(const rope_append &e, int token, int i) {
    return reinterpret_cast<const float2 *>(e.targets) + (int64_t)token * (e.n_rot / 2) + i;
}

/* The pointer to the chunk holding head `head` of part `part` (1 keys, 2 values) of token `token`
 * (of the step's n_tokens) in the epilogue's layer; the head is kv_offset_in_chunk(kv_head_in_row)
 * bytes into it (rope_target_offset). */
__device__ __forceinline__ uint8_t *const *rope_target_chunk(const rope_append &e, int n_tokens, int part, int head, int token) {
    const int chunk = kv_chunk_of(e.kv, kv_head_in_row(e.kv, head, part == 2));
    uint8_t *const *rows = reinterpret_cast<uint8_t *const *>(e.targets + rope_targets_rows_at(n_tokens, e.n_rot));
    return rows + ((int64_t)e.layer * n_tokens + token) * kv_chunks_per_row(e.kv) + chunk;
}
__device__ __forceinline__ int rope_target_offset(const rope_append &e, int part, int head) {
    return kv_offset_in_chunk(e.kv, kv_head_in_row(e.kv, head, part == 2));
}

#endif /* TM_CUDA_ROPE_APPEND_CUH */
