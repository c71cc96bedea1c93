/*
 * mmvq.cuh - the pieces the q8_1 decode products share (gemv_q8.cu's dp4a and tensor-core kernels,
 * gemv_stream.cu's streamed one-token kernel): one 32-element weight sub-block decoded into eight
 * words of int8 values for dp4a, read from global memory (past L1) or from shared memory, its dot
 * with a q8_1 activation sub-block, and the description of several matrices sharing one input.
 */
#ifndef TM_CUDA_MMVQ_CUH
#define TM_CUDA_MMVQ_CUH

#include "kernels.h"
#include "quant.cuh"

/* ---- weights: one 32-element sub-block, decoded for dp4a ---------------------------------- */

/* 16 bytes of weights from global memory (ldg_stream16, common.cuh) or, SHARED, from shared memory (the
 * streamed kernel's stages; inlined there, the compiler sees the pointer is shared). */
template <bool SHARED> __device__ __forceinline__ uint4 load16(const void *p) {
    if constexpr (SHARED) {
        return *reinterpret_cast<const uint4 *>(p); /* a plain load: ordered after the stage's barrier wait */
    } else {
        return ldg_stream16(p);
    }
}

/* The sub-block as eight words of four int8 values, and how a dp4a sum becomes a float:
 * q4_k, q5_k: dot = dx * scale[0] * isum - sx * scale[1] (scale[1] = dmin * min; sx = dx * sum(x));
 * q6_k: dot = dx * (scale[0] * isum(first 16) + scale[1] * isum(last 16)). */
template <int TYPE> struct packed_subblock {
    int q[8];
    float scale[2];
};

template <int TYPE, bool SHARED = false>
__device__ __forceinline__ void load_subblock(const uint8_t *b, int sub, packed_subblock<TYPE> &w);

/* q4_k and q5_k (144/176-byte blocks: 16-byte aligned): the sub-block's scale and min, its 32
 * nibbles (q5_k's start at byte 48), and q5_k's fifth bit per element from qh (byte 16: bit `sub`
 * of byte l) */
template <int TYPE, bool SHARED> __device__ __forceinline__ void load_subblock_q4k_q5k(const uint8_t *b, int sub, packed_subblock<TYPE> &w) {
    int scale, min;
    k_scale_min(sub, b + 4, &scale, &min);
    w.scale[0] = half_at(b) * scale;
    w.scale[1] = half_at(b + 2) * min;
    const uint4 *qs = reinterpret_cast<const uint4 *>(b + (TYPE == Q5_K ? 48 : 16) + 32 * (sub / 2));
    const int shift = (sub & 1) * 4;
    uint4 lo = load16<SHARED>(qs), hi = load16<SHARED>(qs + 1);
    uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int i = 0; i < 8; i++) w.q[i] = (int)((words[i] >> shift) & 0x0F0F0F0Fu);
    if constexpr (TYPE == Q5_K) {
        const uint4 *qh = reinterpret_cast<const uint4 *>(b + 16);
        uint4 high_lo = load16<SHARED>(qh), high_hi = load16<SHARED>(qh + 1);
        uint32_t high[8] = {high_lo.x, high_lo.y, high_lo.z, high_lo.w, high_hi.x, high_hi.y, high_hi.z, high_hi.w};
#pragma unroll
        for (int i = 0; i < 8; i++) w.q[i] |= (int)(((high[i] >> sub) & 0x01010101u) << 4);
    }
}
template <> __device__ __forceinline__ void load_subblock<Q4_K, false>(const uint8_t *b, int sub, packed_subblock<Q4_K> &w) {
    load_subblock_q4k_q5k<Q4_K, false>(b, sub, w);
}
template <> __device__ __forceinline__ void load_subblock<Q5_K, false>(const uint8_t *b, int sub, packed_subblock<Q5_K> &w) {
    load_subblock_q4k_q5k<Q5_K, false>(b, sub, w);
}
template <> __device__ __forceinline__ void load_subblock<Q4_K, true>(const uint8_t *b, int sub, packed_subblock<Q4_K> &w) {
    load_subblock_q4k_q5k<Q4_K, true>(b, sub, w);
}
template <> __device__ __forceinline__ void load_subblock<Q5_K, true>(const uint8_t *b, int sub, packed_subblock<Q5_K> &w) {
    load_subblock_q4k_q5k<Q5_K, true>(b, sub, w);
}

/* q6_k (224-byte blocks in device memory: 16-byte aligned, weights.cu): the sub-block's low four
 * bits (32 bytes of ql, nibble `group >= 2`), its high two bits (32 bytes of qh, bits 2 * group)
 * and its two 16-element scales, in four 16-byte loads and one 2-byte load (GGUF's 210-byte
 * blocks allowed only 2-byte loads: sixteen instead of the four). */
template <bool SHARED> __device__ __forceinline__ void load_subblock_q6k(const uint8_t *b, int sub, packed_subblock<Q6_K> &w) {
    const int half = sub / 4, group = sub % 4;
    const uint4 *ql = reinterpret_cast<const uint4 *>(b + 64 * half + ((group & 1) ? 32 : 0));
    const uint4 *qh = reinterpret_cast<const uint4 *>(b + 128 + 32 * half);
    const uint4 low_lo = load16<SHARED>(ql), low_hi = load16<SHARED>(ql + 1), high_lo = load16<SHARED>(qh), high_hi = load16<SHARED>(qh + 1);
    const uint32_t low[8] = {low_lo.x, low_lo.y, low_lo.z, low_lo.w, low_hi.x, low_hi.y, low_hi.z, low_hi.w};
    const uint32_t high[8] = {high_lo.x, high_lo.y, high_lo.z, high_lo.w, high_hi.x, high_hi.y, high_hi.z, high_hi.w};
    const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint32_t bits = ((low[i] >> low_shift) & 0x0F0F0F0Fu) | (((high[i] >> high_shift) & 0x03030303u) << 4);
        w.q[i] = q6k_minus_32(bits);
    }
    const char2 scales = *reinterpret_cast<const char2 *>(b + 192 + 2 * sub);
    const float d = half_at(b + 208);
    w.scale[0] = d * scales.x;
    w.scale[1] = d * scales.y;
}

template <> __device__ __forceinline__ void load_subblock<Q6_K, false>(const uint8_t *b, int sub, packed_subblock<Q6_K> &w) {
    load_subblock_q6k<false>(b, sub, w);
}
template <> __device__ __forceinline__ void load_subblock<Q6_K, true>(const uint8_t *b, int sub, packed_subblock<Q6_K> &w) {
    load_subblock_q6k<true>(b, sub, w);
}

/* The eight 6-bit scales and mins of a q4_k/q5_k block (k_scale_min's layout) from its 12 scale
 * bytes, as words w0..w2, decoded four at a time, a value a byte: scales[0] / mins[0] for
 * sub-blocks 0-3, [1] for 4-7 (their two high bits are the top bits of w0's / w1's bytes). The
 * same values as k_scale_min, in 8 word operations instead of ~6 a sub-block. */
__device__ __forceinline__ void k_scales_min_packed(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t (&scales)[2], uint32_t (&mins)[2]) {
    scales[0] = w0 & 0x3F3F3F3Fu;
    mins[0] = w1 & 0x3F3F3F3Fu;
    scales[1] = (w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u);
    mins[1] = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u);
}

template <int TYPE> __device__ __forceinline__ float subblock_dot(const packed_subblock<TYPE> &w, const int *x, float2 xd) {
    if (TYPE == Q4_K || TYPE == Q5_K) {
        int isum = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) isum = __dp4a(w.q[i], x[i], isum);
        return xd.x * w.scale[0] * (float)isum - xd.y * w.scale[1];
    } else {
        int first = 0, second = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) first = __dp4a(w.q[i], x[i], first);
#pragma unroll
        for (int i = 4; i < 8; i++) second = __dp4a(w.q[i], x[i], second);
        return xd.x * (w.scale[0] * (float)first + w.scale[1] * (float)second);
    }
}

/* Device bytes of a q4_k, q5_k or q6_k block (traits<TYPE>::stride for a runtime type). */
__host__ __device__ constexpr int k_block_stride(int type) {
    return type == Q4_K ? traits<Q4_K>::stride : type == Q5_K ? traits<Q5_K>::stride : traits<Q6_K>::stride;
}

/* Several matrices with the same input in one launch (Q/K/V, gate/up): the warps run over the
 * concatenated rows; each part's row count is a multiple of R, so a warp stays in one part. */
struct mmvq_parts {
    const uint8_t *weights[TM_CUDA_GEMV_MAX_PARTS];
    float *y[TM_CUDA_GEMV_MAX_PARTS];
    int64_t rows[TM_CUDA_GEMV_MAX_PARTS];
    int type[TM_CUDA_GEMV_MAX_PARTS];
    int n;
};

/* The part holding concatenated row *row (made relative to it): false past the last part. The parts
 * are walked with constant indices: indexing the kernel parameter with a runtime index made the
 * compiler copy all 88 bytes of it to the stack in every thread. */
struct mmvq_part {
    const uint8_t *weights;
    float *y;
    int64_t rows;
    int type;
    int index; /* which of the parts */
};
__device__ __forceinline__ bool find_part(const mmvq_parts &parts, int64_t *row, mmvq_part *part) {
    bool found = false;
#pragma unroll
    for (int i = 0; i < TM_CUDA_GEMV_MAX_PARTS; i++) {
        if (i >= parts.n || found) continue;
        if (*row < parts.rows[i]) {
            part->weights = parts.weights[i], part->y = parts.y[i], part->rows = parts.rows[i], part->type = parts.type[i];
            part->index = i;
            found = true;
        } else {
            *row -= parts.rows[i];
        }
    }
    return found;
}

/* The one-token product of `parts` through the streamed kernel (gemv_stream.cu; q8: one token's
 * q8_1 activations): cudaErrorNotSupported when it does not apply (the caller then uses dp4a). */
cudaError_t mmvq_stream(const mmvq_parts &parts, int64_t cols, const void *q8, cudaStream_t s);

#endif /* TM_CUDA_MMVQ_CUH */
