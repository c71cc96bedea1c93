/*
 * quant.cuh - device-side decoding of one element of a block of every weight type, in the
 * GGUF layouts of engine/quant.h (kept in step with it; the parity tests compare against the
 * CPU's dequantization). traits<TYPE>: elements per block, bytes per block in GGUF, and `stride`,
 * the bytes a block takes in device memory: the same, except q6_k's 210-byte blocks, which
 * tm_cuda_upload_weight (weights.cu) pads to 224 so that every block and each of its fields is
 * 16-byte aligned. Every kernel addresses device weights by stride, except q8_0's, whose rows are
 * split on upload (the same 34 bytes a block: a row's int8 values in order, then its blocks' half
 * scales; row_value below is the one generic reader of it). Also the one q8_1 quantizer
 * of activations every kernel that writes the fast products' input shares, and that input's
 * layout (values, scales, and for one row the values again in pair order: q8_out).
 */
#ifndef TM_CUDA_QUANT_CUH
#define TM_CUDA_QUANT_CUH

#include <type_traits>

#include "common.cuh"

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30 };

__device__ __forceinline__ float half_at(const uint8_t *p) { return __half2float(*reinterpret_cast<const __half *>(p)); }
__device__ __forceinline__ uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* 4-bit quant j (0..31) of a 32-element block: low nibbles first, then high nibbles. */
__device__ __forceinline__ int nibble(const uint8_t *qs, int j) { return j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4); }
/* Sub-block scale and min (6 bits each) of a q4_k/q5_k block. */
__device__ __forceinline__ void k_scale_min(int j, const uint8_t *s, int *scale, int *min) {
    if (j < 4) {
        *scale = s[j] & 63;
        *min = s[j + 4] & 63;
    } else {
        *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <int TYPE> struct traits;
template <> struct traits<F32> { static constexpr int block = 1, bytes = 4, stride = 4; };
template <> struct traits<F16> { static constexpr int block = 1, bytes = 2, stride = 2; };
template <> struct traits<BF16> { static constexpr int block = 1, bytes = 2, stride = 2; };
template <> struct traits<Q4_0> { static constexpr int block = 32, bytes = 18, stride = 18; };
template <> struct traits<Q4_1> { static constexpr int block = 32, bytes = 20, stride = 20; };
template <> struct traits<Q5_0> { static constexpr int block = 32, bytes = 22, stride = 22; };
template <> struct traits<Q5_1> { static constexpr int block = 32, bytes = 24, stride = 24; };
template <> struct traits<Q8_0> { static constexpr int block = 32, bytes = 34, stride = 34; };
template <> struct traits<Q4_K> { static constexpr int block = 256, bytes = 144, stride = 144; };
template <> struct traits<Q5_K> { static constexpr int block = 256, bytes = 176, stride = 176; };
template <> struct traits<Q6_K> { static constexpr int block = 256, bytes = 210, stride = 224; };

/* Element j of block b (GGUF block layout: every type but q8_0 on the device, which has no block
 * to decode: row_value reads its split rows). */
template <int TYPE> __device__ __forceinline__ float decode(const uint8_t *b, int j);
template <> __device__ __forceinline__ float decode<F32>(const uint8_t *b, int) { return *reinterpret_cast<const float *>(b); }
template <> __device__ __forceinline__ float decode<F16>(const uint8_t *b, int) { return half_at(b); }
template <> __device__ __forceinline__ float decode<BF16>(const uint8_t *b, int) {
    return __uint_as_float((uint32_t)(b[0] | b[1] << 8) << 16);
}
template <> __device__ __forceinline__ float decode<Q4_0>(const uint8_t *b, int j) { return (nibble(b + 2, j) - 8) * half_at(b); }
template <> __device__ __forceinline__ float decode<Q4_1>(const uint8_t *b, int j) {
    return nibble(b + 4, j) * half_at(b) + half_at(b + 2);
}
template <> __device__ __forceinline__ float decode<Q5_0>(const uint8_t *b, int j) {
    int q = nibble(b + 6, j) | (int)((u32_at(b + 2) >> j) & 1) << 4;
    return (q - 16) * half_at(b);
}
template <> __device__ __forceinline__ float decode<Q5_1>(const uint8_t *b, int j) {
    int q = nibble(b + 8, j) | (int)((u32_at(b + 4) >> j) & 1) << 4;
    return q * half_at(b) + half_at(b + 2);
}
template <> __device__ __forceinline__ float decode<Q4_K>(const uint8_t *b, int j) {
    int sub = j / 32, l = j % 32, scale, min;
    k_scale_min(sub, b + 4, &scale, &min);
    uint8_t byte = b[16 + 32 * (sub / 2) + l];
    int q = (sub & 1) ? (byte >> 4) : (byte & 0xF);
    return half_at(b) * scale * q - half_at(b + 2) * min;
}
template <> __device__ __forceinline__ float decode<Q5_K>(const uint8_t *b, int j) {
    int sub = j / 32, l = j % 32, scale, min;
    k_scale_min(sub, b + 4, &scale, &min);
    uint8_t byte = b[48 + 32 * (sub / 2) + l];
    int q = ((sub & 1) ? (byte >> 4) : (byte & 0xF)) | ((b[16 + l] >> sub) & 1) << 4;
    return half_at(b) * scale * q - half_at(b + 2) * min;
}
template <> __device__ __forceinline__ float decode<Q6_K>(const uint8_t *b, int j) {
    int half = j / 128, e = j % 128, group = e / 32, k = e % 32;
    const uint8_t *ql = b + 64 * half, *qh = b + 128 + 32 * half;
    int low = (group & 1) ? ql[k + 32] : ql[k];
    low = group >= 2 ? (low >> 4) : (low & 0xF);
    int q = (low | ((qh[k] >> (2 * group)) & 3) << 4) - 32;
    return half_at(b + 208) * (float)(int8_t)b[192 + j / 16] * q;
}

/* Four q6_k quants (bytes 0..63) minus 32, as signed bytes: each byte's top bit set first, so no
 * borrow crosses a byte, then cleared (three word operations; __vsubss4 is seven on sm_90). */
__device__ __forceinline__ int q6k_minus_32(uint32_t quants) { return (int)(((quants | 0x80808080u) - 0x20202020u) ^ 0x80808080u); }

/* The 32 weights of k-quant sub-block `sub` of block b, dequantized. */
template <int TYPE> __device__ __forceinline__ void k_subblock_floats(const uint8_t *b, int sub, float *w) {
    if (TYPE == Q4_K) {
        int scale, min;
        k_scale_min(sub, b + 4, &scale, &min);
        const float d = half_at(b) * scale, m = half_at(b + 2) * min;
        const uint4 *qs = reinterpret_cast<const uint4 *>(b + 16 + 32 * (sub / 2));
        const int shift = (sub & 1) * 4;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            uint4 packed = qs[half];
            uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
            for (int k = 0; k < 16; k++) w[16 * half + k] = d * ((words[k / 4] >> (shift + 8 * (k % 4))) & 0xF) - m;
        }
    } else { /* Q6_K */
        int half = sub / 4, group = sub % 4;
        const uint8_t *ql = b + 64 * half + ((group & 1) ? 32 : 0), *qh = b + 128 + 32 * half;
        const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
        const int8_t *scales = reinterpret_cast<const int8_t *>(b + 192);
        const float d = half_at(b + 208);
#pragma unroll
        for (int k = 0; k < 32; k++) {
            int q = (((ql[k] >> low_shift) & 0xF) | ((qh[k] >> high_shift) & 3) << 4) - 32;
            w[k] = d * scales[2 * sub + k / 16] * q;
        }
    }
}

/* Element i of a device-layout row of `cols` elements (q8_0: split, weights.cu; every other type:
 * blocks `stride` bytes apart). */
template <int TYPE> __device__ __forceinline__ float row_value(const uint8_t *row, int64_t cols, int64_t i) {
    if constexpr (TYPE == Q8_0) return (float)(int8_t)row[i] * half_at(row + cols + 2 * (i / 32));
    else return decode<TYPE>(row + (i / traits<TYPE>::block) * traits<TYPE>::stride, (int)(i % traits<TYPE>::block));
}

/* The 16 bytes at p as four little-endian words: one 16-byte load where p is 16-byte aligned (every
 * field of a padded k-quant block, a 2- or 4-byte type's run of a row whose width is a multiple of
 * 16), else sixteen byte loads (a q8_0 row of a width that is not a multiple of 256). */
__device__ __forceinline__ uint4 bytes16_at(const uint8_t *p) {
    if (((uintptr_t)p & 15) == 0) return *reinterpret_cast<const uint4 *>(p);
    return make_uint4(u32_at(p), u32_at(p + 4), u32_at(p + 8), u32_at(p + 12));
}
/* Byte k (0..15) of sixteen bytes as loaded by bytes16_at. */
__device__ __forceinline__ uint32_t byte_of(const uint4 &v, int k) {
    const uint32_t word = k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w;
    return (word >> (8 * (k % 4))) & 0xFF;
}

/* Elements first..first+15 of a device-layout row of `cols` elements into v (first % 16 == 0; the
 * same values as row_value's, in as few loads as the layout allows: a run of 16 lies in one block
 * of every type and shares its scales, so a thread's loads are issued together and its run is one
 * trip to memory). */
template <int TYPE> __device__ __forceinline__ void row_run16(const uint8_t *row, int64_t cols, int64_t first, float *v) {
    if constexpr (TYPE == F32) {
        uint4 words[4];
#pragma unroll
        for (int w = 0; w < 4; w++) words[w] = bytes16_at(row + 4 * first + 16 * w);
#pragma unroll
        for (int w = 0; w < 4; w++) v[4 * w] = __uint_as_float(words[w].x), v[4 * w + 1] = __uint_as_float(words[w].y),
                                    v[4 * w + 2] = __uint_as_float(words[w].z), v[4 * w + 3] = __uint_as_float(words[w].w);
    } else if constexpr (TYPE == F16 || TYPE == BF16) {
        const uint4 lo = bytes16_at(row + 2 * first), hi = bytes16_at(row + 2 * first + 16);
        const uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const uint32_t bits = (words[k / 2] >> (16 * (k % 2))) & 0xFFFF;
            v[k] = TYPE == F16 ? __half2float(__ushort_as_half((unsigned short)bits)) : __uint_as_float(bits << 16);
        }
    } else if constexpr (TYPE == Q8_0) {
        const uint4 q = bytes16_at(row + first);
        const float d = half_at(row + cols + 2 * (first / 32));
#pragma unroll
        for (int k = 0; k < 16; k++) v[k] = (float)(int8_t)byte_of(q, k) * d;
    } else if constexpr (TYPE == Q4_K) {
        const uint8_t *b = row + (first / 256) * traits<Q4_K>::stride;
        const int j = (int)(first % 256), sub = j / 32;
        const uint4 q = bytes16_at(b + 16 + 32 * (sub / 2) + (j % 32));
        int scale, min;
        k_scale_min(sub, b + 4, &scale, &min);
        const float d = half_at(b) * scale, m = half_at(b + 2) * min;
        const int shift = 4 * (sub & 1);
#pragma unroll
        for (int k = 0; k < 16; k++) v[k] = d * (float)((byte_of(q, k) >> shift) & 0xF) - m;
    } else if constexpr (TYPE == Q6_K) {
        const uint8_t *b = row + (first / 256) * traits<Q6_K>::stride;
        const int j = (int)(first % 256), half = j / 128, group = (j % 128) / 32, at = j % 32;
        const uint4 low = bytes16_at(b + 64 * half + 32 * (group & 1) + at), high = bytes16_at(b + 128 + 32 * half + at);
        const float d = half_at(b + 208) * (float)(int8_t)b[192 + j / 16];
        const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const int q = (int)(((byte_of(low, k) >> low_shift) & 0xF) | ((byte_of(high, k) >> high_shift) & 3) << 4) - 32;
            v[k] = d * q;
        }
    } else { /* 32-value blocks of 18-24 bytes (no alignment to use) and q5_k: a block's values, its scales loaded once */
        const uint8_t *b = row + (first / traits<TYPE>::block) * traits<TYPE>::stride;
        const int j = (int)(first % traits<TYPE>::block);
#pragma unroll
        for (int k = 0; k < 16; k++) v[k] = decode<TYPE>(b, j + k);
    }
}

/* Call launch(std::integral_constant<int, TYPE>{}) for a runtime type id: one switch for every
 * launcher that is templated on the weight type; an unknown id is cudaErrorInvalidValue. */
template <typename Launch> static cudaError_t dispatch_weight_type(int type, Launch &&launch) {
    switch (type) {
    case F32: return launch(std::integral_constant<int, F32>{});
    case F16: return launch(std::integral_constant<int, F16>{});
    case BF16: return launch(std::integral_constant<int, BF16>{});
    case Q4_0: return launch(std::integral_constant<int, Q4_0>{});
    case Q4_1: return launch(std::integral_constant<int, Q4_1>{});
    case Q5_0: return launch(std::integral_constant<int, Q5_0>{});
    case Q5_1: return launch(std::integral_constant<int, Q5_1>{});
    case Q8_0: return launch(std::integral_constant<int, Q8_0>{});
    case Q4_K: return launch(std::integral_constant<int, Q4_K>{});
    case Q5_K: return launch(std::integral_constant<int, Q5_K>{});
    case Q6_K: return launch(std::integral_constant<int, Q6_K>{});
    default: return cudaErrorInvalidValue;
    }
}

/* ---- activations as q8_1 (the fast decode products' input, tm_cuda_quantize_q8_1) ------------- *
 *
 * n values (n % 256 == 0) as q8_1 take tm_cuda_q8_1_bytes(n) = 2n + n / 8 bytes:
 *   qs      n int8 values in order (qs[e] is value e): q = round(x / d), d = max |x| / 127 over the
 *           value's 256-value block (one scale a block, as the CPU's q8_K: the products of 2-16 tokens
 *           sum a block's eight 32-value sub-blocks as integers and scale once, mmq_block_*);
 *   ds      n / 32 pairs of halves (d, d * sum of the 32-value sub-block's qs): a block's eight
 *           pairs hold the same d;
 *   paired  for one row (one token), the same n int8 values again in pair order (q8_pair_index),
 *           read by the one-token products of pairs_kernel (gemv_q8.cu); not written for more rows.
 * Pair order: in each group of 2048 values (eight 256-value weight blocks b = 0..7, each of eight
 * 32-value sub-blocks s, each of two 16-value chunks c), chunk (b, s, c) sits in row
 * r = 2 * family(s) + c (family(s) = bit 0 of s xor bit 1) at slot 4b + s / 2, a row being 32
 * slots of 16 bytes. A warp of pairs_kernel, lane 4b + k taking sub-blocks 2k, 2k + 1 (q4_k: the
 * pair sharing bytes in its layout), then finds its four chunks at one slot in each of the four
 * rows: each of its four 16-byte loads is 512 contiguous bytes, four 128-byte lines, where reading
 * qs directly (lane l at byte 64l) touched sixteen. A q6_k lane (chunk k % 2 of sub-blocks
 * 4(k / 2) .. + 3: q6k_block_sectors) finds its chunks in rows k % 2 and 2 + k % 2 at slots
 * 4b + 2(k / 2) and the next. A group of fewer than eight
 * blocks at the end (n % 2048 != 0) keeps the order with rows of 64 bytes a block. */
__device__ __forceinline__ int64_t q8_pair_index(int64_t element, int64_t n) {
    const int64_t base = element / 2048 * 2048;
    const int64_t group = n - base < 2048 ? n - base : 2048; /* whole blocks: n % 256 == 0 */
    const int within = (int)(element - base), block = within / 256, sub = within / 32 % 8, chunk = within / 16 % 2;
    const int row = 2 * ((sub ^ (sub >> 1)) & 1) + chunk, slot = 4 * block + sub / 2;
    return base + row * (group / 4) + slot * 16 + within % 16;
}

/* Where a kernel writes its output as q8_1: qs == NULL writes nothing; paired == NULL skips the
 * pair order (written only for one row: only one-token products read it). */
struct q8_out {
    int8_t *qs;
    half2 *ds;
    int8_t *paired;
    int64_t n;
};

/* The q8_1 layout above for n_rows rows of n values at q8 (NULL: none); the one place its parts'
 * addresses are computed, for the kernels that write it and the products that read it. */
static inline q8_out q8_out_at(const void *q8, int64_t n_rows, int64_t n) {
    int8_t *qs = (int8_t *)const_cast<void *>(q8);
    const int64_t total = n_rows * n;
    if (!qs) return q8_out{nullptr, nullptr, nullptr, 0};
    return q8_out{qs, reinterpret_cast<half2 *>(qs + total), n_rows == 1 ? qs + total + total / 8 : nullptr, total};
}

/* bar.sync on barrier `id` (1..15; 0 is __syncthreads') for `threads` threads (whole warps). */
__device__ __forceinline__ void named_barrier_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory"); }

/* One value into q8 with the arithmetic of tm_cuda_quantize_q8_1, its 256-value block's largest
 * |value| already known (amax, the same in every lane): d = amax / 127, q = round(value / d), the
 * sub-block's (d, d * sum q) pair from lane 0. The whole warp calls it for 32 consecutive elements
 * (element: this lane's). */
__device__ __forceinline__ void quantize_q8_1_known_max(float value, float amax, int64_t element, const q8_out &q8) {
    const float d = amax / 127.0f;
    int q = amax > 0 ? __float2int_rn(value / d) : 0, qsum = q;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) qsum += __shfl_xor_sync(0xffffffffu, qsum, offset);
    q8.qs[element] = (int8_t)q;
    if (q8.paired) q8.paired[q8_pair_index(element, q8.n)] = (int8_t)q;
    if (threadIdx.x % 32 == 0) q8.ds[element / 32] = make_half2(__float2half_rn(d), __float2half_rn(d * (float)qsum));
}

/* K values a thread into q8 with the arithmetic of tm_cuda_quantize_q8_1: value k is element
 * first + k * stride, written when that is below `end`; per 256-value block
 * d = max |x| / 127, q = round(x / d), the sub-block pairs (d, d * sum q); with one row the values
 * also go to their places in pair order. Every caller's thread block is one-dimensional with a
 * multiple of 256 threads, for each k warps 8j..8j+7 hold one block's 256 values in order (a
 * multiple of 256 starts each 8 warps' run; n % 256 == 0, so a block is wholly below `end` or
 * not), and all its threads call this together: the blocks' maxima meet in shared memory between
 * two syncs of barrier 1 + j (so at most 1024 threads), one pair for all K values (with a pair a
 * value, 16 syncs a thread in the norm of 8 values, the writers together gave back ~1.5 % of 70B
 * decode x8, H200). */
template <int K>
__device__ __forceinline__ void quantize_q8_1_blocks(const float (&value)[K], int64_t first, int64_t stride, int64_t end, const q8_out &q8) {
    __shared__ float warp_max[K][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, group = warp / 8;
    float amax[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        amax[k] = max_over_warp(fabsf(value[k]));
        if (lane == 0) warp_max[k][warp] = amax[k];
    }
    named_barrier_sync(1 + group, 256);
#pragma unroll
    for (int k = 0; k < K; k++) amax[k] = warp_max[k][8 * group + lane % 8];
    named_barrier_sync(1 + group, 256); /* every warp has read the maxima before any writes its next */
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t element = first + k * stride;
        if (element - lane >= end) continue; /* the whole warp */
#pragma unroll
        for (int offset = 4; offset > 0; offset /= 2) amax[k] = fmaxf(amax[k], __shfl_xor_sync(0xffffffffu, amax[k], offset));
        quantize_q8_1_known_max(value[k], amax[k], element, q8);
    }
}

/* One value a thread: quantize_q8_1_blocks with K = 1 (every value written). */
__device__ __forceinline__ void quantize_q8_1_block(float value, int64_t element, const q8_out &q8) {
    const float values[1] = {value};
    quantize_q8_1_blocks<1>(values, element, 0, INT64_MAX, q8);
}

#endif /* TM_CUDA_QUANT_CUH */
