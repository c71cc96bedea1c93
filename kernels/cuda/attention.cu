/*
 * attention.cu - attention through the paged KV cache, for decode and for prefill.
 * Decode: one block per (query token, kv head, key split) for head dims 32/64/128/256: the kv
 * head's keys and values are read once for all the query heads of its group (GQA), the block's
 * warps each taking a share of the keys, or, where a context fits a 32-key chunk a split and the
 * group is 2 or more, their own query heads; each token's keys spread evenly over the splits
 * whatever its context, keys scored a lane per key and values read in 16-byte pieces with every
 * load of a 32-key chunk in flight; other head dims (multiples of 32) take the generic kernel,
 * one block per (token, query head, split), its warps sharing the keys. Both keep an online
 * softmax per warp, merge the warps that shared keys in the block and the splits in
 * combine_kernel (flash-decoding). For steps whose every context is short, decode_whole_kernel
 * takes no splits: a block per kv head (two or four for a group of 1; at one token, one per two
 * query heads of a group of 4 or 8), 8 or 16 warps sharing the keys, merged in the block, q8_1
 * written there; no partials, no combine launch (at one token of a group of 1, on sm_90, a
 * cluster of 8 blocks a unit, each warp an 8-key slice of an f16 or 8-bit cache, the blocks' results pushed
 * into one through distributed shared memory; past 256 keys, a group
 * of 1 of an f16 cache scores and adds its chunks on tensor cores, and a group of 2 or more of an
 * f16 or 8-bit cache always does, the query and the weights split into two halves each so the products
 * keep float32's precision).
 * Prefill: flash attention over tiles of consecutive query tokens of one stream and the
 * query heads sharing one kv head (GQA), keys staged chunk by chunk in shared memory, causal.
 * Keys and values are read through the stream's page table with the same addressing as
 * engine/kv_cache.c, so nothing assumes contiguous KV. float32 math; f16, f32 or 8-bit cache (int8
 * values times the head vector's float scale: a key's int8 dot product scaled once, a value's
 * scale folded into its softmax weight; the int8 values widened through halves, not I2F).
 * What writes the cache (the rope + KV append, the append) is kv_append.cu.
 */
#include <limits.h>
#include <stddef.h>

#include <cooperative_groups.h>

#include "kernels.h"
#include "common.cuh"
#include "kv_address.cuh"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "mma.cuh"
#include "quant.cuh"
#include "stamps.cuh"

TM_STAMPS_RING(attention, 1u << 18)

#define WARPS 4
#define MAX_HEAD_DIM 256
#define EARLY_KV_CHUNKS 4 /* decode: 32-key chunks a warp prefetches into L2 before the wait */

/* Element i of a cache vector as a float (KV_Q8: the int8 value, before its vector's scale). */
template <int KV> __device__ __forceinline__ float kv_element(const uint8_t *vector, int i) {
    if (KV == KV_F16) return __half2float(reinterpret_cast<const __half *>(vector)[i]);
    if (KV == KV_Q8) return (float)reinterpret_cast<const int8_t *>(vector)[i];
    return reinterpret_cast<const float *>(vector)[i];
}

/* 8 bytes that no kernel of the launch writes (ldg_line16's half: an 8-bit value piece). */
__device__ __forceinline__ uint2 ldg_line8(const void *p) {
    uint2 v;
    asm("ld.global.nc.L2::128B.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

/* ---- decode: a block per (token, kv head, key split), every query head of the group at once -- */

/* How a warp reads the value vectors of HD elements of a cache of type KV in pieces of EPV
 * elements (16 bytes of f16 or f32, 8 of int8: the 8-bit cache keeps the f16 cache's shape and
 * registers): VECS pieces a row; LPK lanes share a row (a lane per piece, up to 32), so a warp reads
 * KPI rows per load and each lane takes VPL pieces of its row; PER_LANE output dimensions per lane
 * and query head. Keys are read a lane per key in 16-byte pieces of key_epv elements. */
template <int KV, int HD> struct decode_shape {
    static constexpr int epv = KV == KV_F32 ? 4 : 8; /* elements per value piece */
    static constexpr int piece_bytes = epv * kv_element_bytes(KV);
    static constexpr int key_epv = 16 / kv_element_bytes(KV), key_pieces = HD / key_epv;
    static constexpr int vector_bytes = HD * kv_element_bytes(KV);
    static constexpr int vecs = HD / epv;
    static constexpr int lpk = vecs < 32 ? vecs : 32;
    static constexpr int vpl = vecs / lpk;
    static constexpr int kpi = 32 / lpk;
    static constexpr int per_lane = vpl * epv;
};

/* The first N elements of a piece (16 bytes; an 8-bit value piece in .x, .y) as floats (KV_Q8: the
 * int8 values, before the scale). */
template <int KV, int N> __device__ __forceinline__ void unpack_piece(const uint4 &piece, float *x) {
    if (KV == KV_Q8) {
        const uint32_t words[4] = {piece.x, piece.y, piece.z, piece.w};
#pragma unroll
        for (int j = 0; j < N; j += 4) int8x4_to_float(words[j / 4], x + j);
    } else if (KV == KV_F16) {
        const __half2 *h = reinterpret_cast<const __half2 *>(&piece);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = __half22float2(h[j]);
            x[2 * j] = f.x, x[2 * j + 1] = f.y;
        }
    } else {
        x[0] = __uint_as_float(piece.x), x[1] = __uint_as_float(piece.y), x[2] = __uint_as_float(piece.z), x[3] = __uint_as_float(piece.w);
    }
}

/* Key range of split `split` of a token with n keys spread over `spread` splits: splits of
 * max(min_keys, ceil(n / spread)) keys, so however long the context, its keys spread over the
 * splits (the graph of a decode step is captured once, with the split count of the longest
 * context); splits past the keys are empty. */
__device__ __forceinline__ void split_range(int n, int split, int spread, int min_keys, int &begin, int &end) {
    const int64_t per = max((int64_t)min_keys, ((int64_t)n + spread - 1) / spread);
    begin = (int)min((int64_t)split * per, (int64_t)n);
    end = (int)min((int64_t)begin + per, (int64_t)n);
}

/* A value piece of a cache of type KV at p (16 bytes, or 8 of an 8-bit cache in .x, .y). */
template <int KV> __device__ __forceinline__ uint4 load_value_piece(const uint8_t *p) {
    if (KV == KV_Q8) {
        const uint2 v = ldg_line8(p);
        return make_uint4(v.x, v.y, 0, 0);
    }
    return ldg_line16(p);
}

/* The warp's part of a split: chunks chunk0, chunk0 + step, ... below end of kv head kv_head's keys,
 * scored against the NH query heads query[0..NH) (shared memory, pre-scaled) and added to the
 * warp's online softmax (running_max, running_sum, per head) and value sums acc (PER_LANE
 * dimensions a head and lane, as decode_shape says). Scores: lane j reads key j of a chunk whole
 * (16-byte loads, every load of the warp in flight at once) and scores it against each head; the
 * chunk's softmax per head; values: LPK lanes read each value row in 16-byte pieces, KPI rows per
 * load, every load of the chunk issued before the first is used, and each lane accumulates its
 * dimensions for each head, with the key's weight taken from its scoring lane. prefetch_values:
 * each key's value is prefetched into L2 while the key is scored (one of the warps sharing a
 * chunk does it). An 8-bit cache: a key's score is its int8 dot product times its scale, and the
 * weight a value is added with is the key's times the value's scale (both scales read by the
 * key's lane). */
template <int KV, int HD, int NH>
__device__ __forceinline__ void attend_chunks(const float (*query)[HD], const kv_addressing &a, const int32_t *table, int kv_head,
                                              int chunk0, int step, int end, bool prefetch_values,
                                              float (&acc)[NH][decode_shape<KV, HD>::per_lane], float (&running_max)[NH],
                                              float (&running_sum)[NH]) {
    typedef decode_shape<KV, HD> shape;
    constexpr int EPV = shape::epv, LPK = shape::lpk, VPL = shape::vpl, KPI = shape::kpi, PER_LANE = shape::per_lane;
    constexpr int STEPS = 32 / KPI, BATCH = STEPS < 8 ? STEPS : 8; /* value loads per lane per chunk, in batches */
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int g = 0; g < NH; g++) {
        running_max[g] = -INFINITY, running_sum[g] = 0;
#pragma unroll
        for (int e = 0; e < PER_LANE; e++) acc[g][e] = 0;
    }
    for (int chunk = chunk0; chunk < end; chunk += step) {
        const int p = chunk + lane;
        const bool valid = p < end;
        float score[NH];
#pragma unroll
        for (int g = 0; g < NH; g++) score[g] = 0;
        unsigned long long value_address = 0;
        float value_scale = 1.0f; /* the 8-bit cache's: this lane's key's value */
        if (valid) {
            const uint8_t *key_vector = kv_address32(a, table, p, kv_head, false);
            const uint4 *key = reinterpret_cast<const uint4 *>(key_vector);
            value_address = (unsigned long long)kv_address32(a, table, p, kv_head, true);
            float key_scale = 1.0f;
            if (KV == KV_Q8)
                key_scale = kv_scale<HD>(a, key_vector), value_scale = kv_scale<HD>(a, (const uint8_t *)value_address);
            if (prefetch_values)
#pragma unroll
                for (int line = 0; line < shape::vector_bytes; line += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(value_address + line));
            constexpr int KEPV = shape::key_epv;
#pragma unroll
            for (int c = 0; c < shape::key_pieces; c++) {
                float x[KEPV];
                unpack_piece<KV, KEPV>(ldg_line16(key + c), x);
#pragma unroll
                for (int g = 0; g < NH; g++)
#pragma unroll
                    for (int e = 0; e < KEPV; e += 4) {
                        const float4 qv = *reinterpret_cast<const float4 *>(&query[g][c * KEPV + e]);
                        score[g] += x[e] * qv.x + x[e + 1] * qv.y + x[e + 2] * qv.z + x[e + 3] * qv.w;
                    }
            }
            if (KV == KV_Q8)
#pragma unroll
                for (int g = 0; g < NH; g++) score[g] *= key_scale;
        }
        /* the chunk's online softmax, per head (lane 0's key is valid: chunk < end) */
        float weight[NH];
#pragma unroll
        for (int g = 0; g < NH; g++) {
            const float s = valid ? score[g] : -INFINITY;
            const float chunk_max = max_over_warp(s);
            const float new_max = fmaxf(running_max[g], chunk_max);
            const float correction = expf(running_max[g] - new_max);
            weight[g] = valid ? expf(s - new_max) : 0.0f;
            running_sum[g] = running_sum[g] * correction + sum_over_warp(weight[g]);
            running_max[g] = new_max;
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) acc[g][e] *= correction;
        }
        /* values: step i reads key i * KPI + lane / LPK; BATCH steps' loads in flight at once */
        const int n_valid = min(32, end - chunk);
#pragma unroll
        for (int i0 = 0; i0 < STEPS; i0 += BATCH) {
            uint4 pieces[BATCH][VPL];
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const int k = (i0 + i) * KPI + lane / LPK;
                const uint8_t *value = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, value_address, k));
#pragma unroll
                for (int u = 0; u < VPL; u++)
                    pieces[i][u] = k < n_valid ? load_value_piece<KV>(value + (lane % LPK + LPK * u) * shape::piece_bytes) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const int k = (i0 + i) * KPI + lane / LPK;
                const float scale_k = KV == KV_Q8 ? __shfl_sync(0xffffffffu, value_scale, k) : 1.0f;
#pragma unroll
                for (int g = 0; g < NH; g++) {
                    const float w = __shfl_sync(0xffffffffu, weight[g], k) * scale_k;
#pragma unroll
                    for (int u = 0; u < VPL; u++) {
                        float x[EPV];
                        unpack_piece<KV, EPV>(pieces[i][u], x);
#pragma unroll
                        for (int e = 0; e < EPV; e++) acc[g][u * EPV + e] += w * x[e];
                    }
                }
            }
        }
    }
    /* lanes holding the same dimensions (of different keys) add up */
#pragma unroll
    for (int offset = LPK; offset < 32; offset <<= 1)
#pragma unroll
        for (int g = 0; g < NH; g++)
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
}

/* Two floats as an f16x2 fragment register: their f16 values, or (remainder) what those miss, x - f16(x). */
__device__ __forceinline__ uint32_t half_pair(float x0, float x1, bool remainder) {
    const __half h0 = __float2half_rn(x0), h1 = __float2half_rn(x1);
    const __half2 v = remainder ? __floats2half2_rn(x0 - __half2float(h0), x1 - __half2float(h1)) : __halves2half2(h0, h1);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* The pair (x0, x1) as a B-fragment register of the two-column split attend_chunks_mma uses:
 * lanes of column 0 (g == 0) the f16 values, column 1 (g == 1) their remainders x - f16(x), the
 * other columns zero. */
__device__ __forceinline__ uint32_t split_pair_fragment(float x0, float x1, int g) {
    const __half h0 = __float2half_rn(x0), h1 = __float2half_rn(x1);
    const __half2 v = g == 0 ? __halves2half2(h0, h1) : g == 1 ? __floats2half2_rn(x0 - __half2float(h0), x1 - __half2float(h1))
                                                                : __float2half2_rn(0.0f);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* attend_chunks for one query head of an f16 cache on tensor cores (mma.sync m16n8k16, f16 in,
 * float32 accumulate): a 32-key chunk in 16 + 16 mma and 32 + 64 16-byte loads and PRMTs instead
 * of the scalar path's ~1180 instructions (a chain of ~11 cycles each on the H200: 7B x1, one
 * chunk a warp, the memory pipes idle). The whole-context kernel takes it past
 * TM_CUDA_DECODE_MMA_KEYS keys, where a warp has many chunks (7B 2048 x8 +2.7 %); with one chunk a
 * warp the fragments' shuffles cost what the products save (7B 128 x8 -1.7 %, x1 +0.6 %). Same
 * contract and result layout as attend_chunks<KV_F16, HD, 1>.
 * Scores: S = K q for 16 keys an mma (A = 16 keys x 16 dims, B = 16 dims x [q_hi, q_lo, 0...]:
 * the query split into two halves, q_hi = f16(q), q_lo = f16(q - q_hi), so the products keep
 * ~22 bits of q; keys are f16 already). Thread (g, t) loads dims 32p + 8t..+8 of keys g and g + 8
 * of each 16-key tile (16-byte loads), feeding k-steps 2p and 2p + 1 (the dot product's order is
 * free, so the query's fragments take the same permutation). Values: O^T = V^T P^T (A = 16 dims x
 * 16 keys, B = 16 keys x [p_hi, p_lo, 0...]); thread (g, t) loads dims g HD/8..+HD/8 of keys 2t,
 * 2t + 1, 2t + 8, 2t + 9 and pairs the halves of two keys with PRMT; m-tile i's rows g and g + 8
 * are dims g HD/8 + 2i and + 2i + 1, so lane 4g ends with dims g HD/8.. of the result. The
 * chunk's softmax stays a lane per key (scores and weights moved by shuffles). */
template <int HD>
__device__ __forceinline__ void attend_chunks_mma(const float (*query)[HD], const kv_addressing &a, const int32_t *table, int kv_head,
                                                  int chunk0, int step, int end, bool prefetch_values,
                                                  float (&acc_out)[1][decode_shape<KV_F16, HD>::per_lane], float (&running_max)[1],
                                                  float (&running_sum)[1]) {
    typedef decode_shape<KV_F16, HD> shape;
    constexpr int KP = HD / 32;     /* 16-byte key loads a row: k-step pairs */
    constexpr int MT = HD / 16;     /* value m-tiles (16 dims each) */
    constexpr int VW = HD / 16;     /* 32-bit words of a thread's value piece (HD / 8 dims) */
    static_assert(shape::epv == 8 && shape::vpl == 1 && (HD == 64 || HD == 128), "tensor-core decode shape");
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    /* the query's B fragments: column 0 q_hi (lanes 0-3), column 1 q_lo (lanes 4-7), else zero */
    uint32_t bq[KP][4];
#pragma unroll
    for (int p = 0; p < KP; p++)
#pragma unroll
        for (int j = 0; j < 4; j++) bq[p][j] = split_pair_fragment(query[0][32 * p + 8 * t + 2 * j], query[0][32 * p + 8 * t + 2 * j + 1], g);
    float acc[MT][4];
#pragma unroll
    for (int i = 0; i < MT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;
    running_max[0] = -INFINITY, running_sum[0] = 0;
    for (int chunk = chunk0; chunk < end; chunk += step) {
        const int p_key = chunk + lane, n_valid = min(32, end - chunk);
        const bool valid = p_key < end;
        unsigned long long key_address = 0, value_address = 0;
        if (valid) {
            key_address = (unsigned long long)kv_address32(a, table, p_key, kv_head, false);
            value_address = (unsigned long long)kv_address32(a, table, p_key, kv_head, true);
            if (prefetch_values)
#pragma unroll
                for (int line = 0; line < shape::vector_bytes; line += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(value_address + line));
        }
        /* scores of the chunk's two 16-key tiles */
        float tile_score[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            const int r0 = 16 * mt + g, r1 = r0 + 8;
            const uint8_t *k0 = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, key_address, r0));
            const uint8_t *k1 = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, key_address, r1));
            uint4 row0[KP], row1[KP];
#pragma unroll
            for (int p = 0; p < KP; p++) {
                row0[p] = r0 < n_valid ? ldg_line16(k0 + (32 * p + 8 * t) * 2) : make_uint4(0, 0, 0, 0);
                row1[p] = r1 < n_valid ? ldg_line16(k1 + (32 * p + 8 * t) * 2) : make_uint4(0, 0, 0, 0);
            }
            float c[4] = {0, 0, 0, 0};
#pragma unroll
            for (int p = 0; p < KP; p++) {
                const uint32_t a0[4] = {row0[p].x, row1[p].x, row0[p].y, row1[p].y};
                const uint32_t a1[4] = {row0[p].z, row1[p].z, row0[p].w, row1[p].w};
                mma_16816(c, a0, bq[p][0], bq[p][1]);
                mma_16816(c, a1, bq[p][2], bq[p][3]);
            }
            tile_score[mt][0] = c[0] + c[1], tile_score[mt][1] = c[2] + c[3]; /* lanes 4g: keys g and g + 8 */
        }
        /* a lane per key again: key j's score from lane 4 (j % 8) */
        float score;
        {
            const int r = lane & 15, source = 4 * (r & 7);
            const float s00 = __shfl_sync(0xffffffffu, tile_score[0][0], source), s01 = __shfl_sync(0xffffffffu, tile_score[0][1], source);
            const float s10 = __shfl_sync(0xffffffffu, tile_score[1][0], source), s11 = __shfl_sync(0xffffffffu, tile_score[1][1], source);
            score = lane < 16 ? (r < 8 ? s00 : s01) : (r < 8 ? s10 : s11);
        }
        /* the chunk's online softmax */
        const float s = valid ? score : -INFINITY;
        const float new_max = fmaxf(running_max[0], max_over_warp(s));
        const float correction = expf(running_max[0] - new_max);
        const float weight = valid ? expf(s - new_max) : 0.0f;
        running_sum[0] = running_sum[0] * correction + sum_over_warp(weight);
        running_max[0] = new_max;
#pragma unroll
        for (int i = 0; i < MT; i++) acc[i][0] *= correction, acc[i][1] *= correction, acc[i][2] *= correction, acc[i][3] *= correction;
        /* values, 16 keys a k-step: thread (g, t) reads keys 2t, 2t + 1, 2t + 8, 2t + 9 */
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            const int key[4] = {16 * ks + 2 * t, 16 * ks + 2 * t + 1, 16 * ks + 2 * t + 8, 16 * ks + 2 * t + 9};
            uint32_t words[4][VW];
            float w[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint8_t *v = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, value_address, key[k])) + g * (HD / 8) * 2;
                w[k] = __shfl_sync(0xffffffffu, weight, key[k]);
#pragma unroll
                for (int h = 0; h < VW / 4; h++) {
                    const uint4 piece = key[k] < n_valid ? ldg_line16(v + 16 * h) : make_uint4(0, 0, 0, 0);
                    words[k][4 * h] = piece.x, words[k][4 * h + 1] = piece.y, words[k][4 * h + 2] = piece.z, words[k][4 * h + 3] = piece.w;
                }
            }
            /* B = P^T: column 0 the weights' high halves (lanes 0-3), column 1 their remainders (lanes 4-7) */
            const uint32_t bp[2] = {split_pair_fragment(w[0], w[1], g), split_pair_fragment(w[2], w[3], g)};
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const uint32_t av[4] = {__byte_perm(words[0][i], words[1][i], 0x5410), __byte_perm(words[0][i], words[1][i], 0x7632),
                                        __byte_perm(words[2][i], words[3][i], 0x5410), __byte_perm(words[2][i], words[3][i], 0x7632)};
                mma_16816(acc[i], av, bp[0], bp[1]);
            }
        }
    }
    /* lane 4g holds dims g HD/8 + 2i (acc[i][0] + acc[i][1]) and + 2i + 1 (acc[i][2] + acc[i][3]);
     * attend_chunks' layout has lane L (mod LPK) holding dims 8L..8L+7 */
    float o[2 * MT];
#pragma unroll
    for (int i = 0; i < MT; i++) o[2 * i] = acc[i][0] + acc[i][1], o[2 * i + 1] = acc[i][2] + acc[i][3];
    const int target = lane % shape::lpk, source = 4 * (8 * target / (HD / 8)), offset = 8 * target % (HD / 8);
#pragma unroll
    for (int e = 0; e < 8; e++) {
        float v = 0;
#pragma unroll
        for (int b = 0; b < 2 * MT / 8; b++) {
            const float x = __shfl_sync(0xffffffffu, o[8 * b + e], source);
            if (offset == 8 * b) v = x;
        }
        acc_out[0][e] = v;
    }
}

/* 8 consecutive elements of a cache vector of type KV (f16, or int8 before its scale) at p as four
 * f16x2 registers (elements 0-1, 2-3, 4-5, 6-7); valid false: zeros. */
template <int KV> __device__ __forceinline__ uint4 load_eight_as_half(const uint8_t *p, bool valid) {
    if (!valid) return make_uint4(0, 0, 0, 0);
    if constexpr (KV == KV_F16) return ldg_line16(p);
    const uint2 v = ldg_line8(p);
    uint4 h;
    int8x4_to_half2x2(v.x, h.x, h.y), int8x4_to_half2x2(v.y, h.z, h.w);
    return h;
}

/* attend_chunks for the NH (2..8) query heads of a group over an f16 or 8-bit cache, on tensor cores
 * (mma.sync m16n8k16, f16 in, float32 accumulate): a 32-key chunk in 32 + 32 mma, 32 loads and 64
 * PRMTs a lane, where the scalar path's lane scores its key against every head and adds every value
 * row to every head (a group of 8: ~5000 instructions a chunk, a straight run of code longer than
 * the instruction cache holds; ncu, 70B x8: 30 % of the warps' samples waiting for instructions).
 * The heads are the M rows: row g head g's f16 part, row g + 8 its remainder (the query q = f16(q)
 * + f16(q - f16(q)), the softmax weights the same), so the products keep ~22 bits of each and both
 * halves ride the same mma; rows of heads past NH are zero.
 * Scores: S^T = Q K^T per 8-key n-tile (B column g = key 8n + g; lane (g, t) loads dims 32p + 8t..+8
 * of it, feeding k-steps 2p and 2p + 1, the query's fragments permuted alike). Lane (g, t) then
 * holds head g's scores of keys 8n + 2t, 8n + 2t + 1 (rows g + g + 8): the chunk's softmax is a
 * lane's 8 keys and two shuffles, and the weights are already the A fragment of O^T = P V (rows g,
 * g + 8 the weights' two parts, k = the keys). Values: B column g of n-tile j = dimension HD/8 g +
 * j: lane (g, t) loads dims HD/8 g..+HD/8 of keys 2t, 2t + 1, 2t + 8, 2t + 9 of each 16-key step and
 * pairs two keys' halves with PRMT. An 8-bit cache: its int8 values widened to f16 exactly as they
 * load, a key's score times the key's scale and its weight in the values' product times the
 * value's (the lane of key j reads both scales; the running sum keeps the unscaled weights). Lane
 * (g, t) ends with head g's dims HD/4 t..+HD/4 in o (rows g, g + 8: merge_warps_mma adds them) and
 * head g's running max and sum. */
template <int KV, int HD, int NH>
__device__ __forceinline__ void attend_group_mma(const float (*query)[HD], const kv_addressing &a, const int32_t *table, int kv_head,
                                                 int chunk0, int step, int end, bool prefetch_values, float (&o)[HD / 8][4],
                                                 float &running_max, float &running_sum) {
    constexpr int KP = HD / 32;                   /* key loads of 8 elements a row: k-step pairs */
    constexpr int NT = HD / 8;                    /* value n-tiles (8 dims each) */
    constexpr int VW = HD / 16;                   /* f16x2 words of a lane's HD / 8 dims of a value row */
    constexpr int EB = kv_element_bytes(KV);      /* bytes of an element */
    static_assert(NH >= 2 && NH <= 8 && (HD == 64 || HD == 128) && (KV == KV_F16 || KV == KV_Q8), "tensor-core group decode shape");
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    /* the query's A fragments: k-step pair p, half h: k 2t, 2t + 1 <-> dims 32p + 8t + 4h + 0, 1 and
     * k 2t + 8, 2t + 9 <-> + 2, 3 */
    uint32_t aq[KP][2][4];
#pragma unroll
    for (int p = 0; p < KP; p++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float *x = query[g < NH ? g : 0] + 32 * p + 8 * t + 4 * h;
            aq[p][h][0] = g < NH ? half_pair(x[0], x[1], false) : 0u;
            aq[p][h][1] = g < NH ? half_pair(x[0], x[1], true) : 0u;
            aq[p][h][2] = g < NH ? half_pair(x[2], x[3], false) : 0u;
            aq[p][h][3] = g < NH ? half_pair(x[2], x[3], true) : 0u;
        }
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;
    running_max = -INFINITY, running_sum = 0;
    for (int chunk = chunk0; chunk < end; chunk += step) {
        const int n_valid = min(32, end - chunk);
        unsigned long long key_address = 0, value_address = 0;
        float key_scale = 1.0f, value_scale = 1.0f; /* the 8-bit cache's, of this lane's key */
        if (lane < n_valid) {
            const uint8_t *key_vector = kv_address32(a, table, chunk + lane, kv_head, false);
            const uint8_t *value_vector = kv_address32(a, table, chunk + lane, kv_head, true);
            key_address = (unsigned long long)key_vector, value_address = (unsigned long long)value_vector;
            if constexpr (KV == KV_Q8) key_scale = kv_scale<HD>(a, key_vector), value_scale = kv_scale<HD>(a, value_vector);
            if (prefetch_values)
#pragma unroll
                for (int line = 0; line < HD * EB; line += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(value_address + line));
        }
        /* scores, 8 keys an n-tile: c[n] rows g / g + 8, columns 2t, 2t + 1 = keys 8n + 2t, + 1 */
        float c[4][4];
        {
            uint4 row[4][KP];
#pragma unroll
            for (int n = 0; n < 4; n++) {
                const int r = 8 * n + g;
                const uint8_t *k = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, key_address, r));
#pragma unroll
                for (int p = 0; p < KP; p++) row[n][p] = load_eight_as_half<KV>(k + (32 * p + 8 * t) * EB, r < n_valid);
            }
#pragma unroll
            for (int n = 0; n < 4; n++) {
                c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0;
#pragma unroll
                for (int p = 0; p < KP; p++) {
                    mma_16816(c[n], aq[p][0], row[n][p].x, row[n][p].y);
                    mma_16816(c[n], aq[p][1], row[n][p].z, row[n][p].w);
                }
            }
        }
        /* the chunk's online softmax for head g: this lane's 8 keys, then the 4 lanes of the row */
        float w[4][2], chunk_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = 8 * n + 2 * t + e;
                const float scale = KV == KV_Q8 ? __shfl_sync(0xffffffffu, key_scale, key) : 1.0f;
                w[n][e] = key < n_valid ? (c[n][e] + c[n][2 + e]) * scale : -INFINITY;
                chunk_max = fmaxf(chunk_max, w[n][e]);
            }
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, 1));
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, 2));
        const float new_max = fmaxf(running_max, chunk_max), correction = expf(running_max - new_max);
        float sum = 0;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                w[n][e] = expf(w[n][e] - new_max); /* a key past the chunk: e^-inf = 0 */
                sum += w[n][e];
                if constexpr (KV == KV_Q8) w[n][e] *= __shfl_sync(0xffffffffu, value_scale, 8 * n + 2 * t + e); /* the values' product's weight */
            }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        running_sum = running_sum * correction + sum, running_max = new_max;
#pragma unroll
        for (int j = 0; j < NT; j++) o[j][0] *= correction, o[j][1] *= correction, o[j][2] *= correction, o[j][3] *= correction;
        /* values, 16 keys a k-step: lane (g, t) reads keys 2t, 2t + 1, 2t + 8, 2t + 9 */
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            const uint32_t ap[4] = {half_pair(w[2 * ks][0], w[2 * ks][1], false), half_pair(w[2 * ks][0], w[2 * ks][1], true),
                                    half_pair(w[2 * ks + 1][0], w[2 * ks + 1][1], false), half_pair(w[2 * ks + 1][0], w[2 * ks + 1][1], true)};
            const int key[4] = {16 * ks + 2 * t, 16 * ks + 2 * t + 1, 16 * ks + 2 * t + 8, 16 * ks + 2 * t + 9};
            uint32_t words[4][VW];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint8_t *v = reinterpret_cast<const uint8_t *>(__shfl_sync(0xffffffffu, value_address, key[k])) + g * (HD / 8) * EB;
#pragma unroll
                for (int h = 0; h < VW / 4; h++) {
                    const uint4 piece = load_eight_as_half<KV>(v + 8 * h * EB, key[k] < n_valid);
                    words[k][4 * h] = piece.x, words[k][4 * h + 1] = piece.y, words[k][4 * h + 2] = piece.z, words[k][4 * h + 3] = piece.w;
                }
            }
            /* word i: dims HD/8 g + 2i (low halves: n-tile 2i) and + 2i + 1 (high halves: n-tile 2i + 1) */
#pragma unroll
            for (int i = 0; i < VW; i++) {
                mma_16816(o[2 * i], ap, __byte_perm(words[0][i], words[1][i], 0x5410), __byte_perm(words[2][i], words[3][i], 0x5410));
                mma_16816(o[2 * i + 1], ap, __byte_perm(words[0][i], words[1][i], 0x7632), __byte_perm(words[2][i], words[3][i], 0x7632));
            }
        }
    }
}

/* Dimension d of query row `row`'s result over split `split` (rows of head_dim values): with one
 * split the normalized value into out, else (max, sum, unnormalized value) into partials for
 * combine_kernel (sum 0: the split saw no key). */
__device__ __forceinline__ void store_split_result(float *out, float *partials, int64_t row, int split, int n_splits, int head_dim, int d,
                                                   float value, float max, float sum) {
    if (n_splits == 1) {
        out[row * head_dim + d] = value / sum;
    } else {
        float *partial = partials + (row * n_splits + split) * (head_dim + 2);
        if (d == 0) partial[0] = max, partial[1] = sum;
        partial[2 + d] = value;
    }
}

/* The block's merge of warps that attended to disjoint keys of the same query heads: SETS sets of
 * W / SETS consecutive warps (a set per kv head). merge_warps puts each warp's online softmax
 * (running max and sum, its value sums as attend_chunks leaves them; merge_warps_mma: as
 * attend_group_mma leaves them) in shared memory and makes, for each (set, head g), the factor
 * e^(m_w - m) of each of its warps (0 for a warp that saw no key), the set's max m and its total
 * sum; value d of head g is then merged_value. Every thread of the block calls it; it ends with a
 * barrier. */
template <int HD, int G, int W, int SETS> struct warp_merge {
    float max[W][G], sum[W][G], factor[W][G], set_max[SETS][G], total[SETS][G];
    float acc[W][G][HD];
};

/* The merge once each warp stored its state (acc, max, sum) in m. */
template <int HD, int G, int W, int SETS> __device__ __forceinline__ void merge_stored_warps(warp_merge<HD, G, W, SETS> &m) {
    constexpr int PER_SET = W / SETS;
    __syncthreads();
    if (threadIdx.x < SETS * G) {
        const int set = threadIdx.x / G, g = threadIdx.x % G;
        float set_max = -INFINITY, t = 0;
        for (int j = 0; j < PER_SET; j++) set_max = fmaxf(set_max, m.max[set * PER_SET + j][g]);
        for (int j = 0; j < PER_SET; j++) {
            const int w = set * PER_SET + j;
            m.factor[w][g] = m.sum[w][g] > 0 ? expf(m.max[w][g] - set_max) : 0.0f;
            t += m.sum[w][g] * m.factor[w][g];
        }
        m.set_max[set][g] = set_max, m.total[set][g] = t;
    }
    __syncthreads();
}

template <int KV, int HD, int G, int W, int SETS>
__device__ __forceinline__ void merge_warps(warp_merge<HD, G, W, SETS> &m, const float (&acc)[G][decode_shape<KV, HD>::per_lane],
                                            const float (&running_max)[G], const float (&running_sum)[G]) {
    typedef decode_shape<KV, HD> shape;
    constexpr int EPV = shape::epv, LPK = shape::lpk, VPL = shape::vpl;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < LPK)
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int u = 0; u < VPL; u++)
#pragma unroll
                for (int e = 0; e < EPV; e++) m.acc[warp][g][(lane + LPK * u) * EPV + e] = acc[g][u * EPV + e];
    if (lane == 0)
#pragma unroll
        for (int g = 0; g < G; g++) m.max[warp][g] = running_max[g], m.sum[warp][g] = running_sum[g];
    merge_stored_warps(m);
}

/* merge_warps for the state attend_group_mma leaves: lane (g, t) holds head g's dims HD/4 t ..
 * HD/4 t + HD/4 - 1 as the sums of the fragment rows g (the weights' f16 parts) and g + 8 (their
 * remainders), and head g's running max and sum (rows of heads past G: padding, not stored). */
template <int HD, int G, int W, int SETS>
__device__ __forceinline__ void merge_warps_mma(warp_merge<HD, G, W, SETS> &m, const float (&o)[HD / 8][4], float running_max,
                                                float running_sum) {
    constexpr int NT = HD / 8;
    typedef warp_merge<HD, G, W, SETS> merge_type;
    static_assert(offsetof(merge_type, acc) % 16 == 0, "float4 stores into acc (the instance __align__(16))");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    if (g < G) {
        float *row = &m.acc[warp][g][HD / 4 * t];
#pragma unroll
        for (int j = 0; j < NT; j += 4) {
            *reinterpret_cast<float4 *>(row + j) = make_float4(o[j][0] + o[j][2], o[j + 1][0] + o[j + 1][2], o[j + 2][0] + o[j + 2][2],
                                                               o[j + 3][0] + o[j + 3][2]);
            *reinterpret_cast<float4 *>(row + NT + j) = make_float4(o[j][1] + o[j][3], o[j + 1][1] + o[j + 1][3],
                                                                    o[j + 2][1] + o[j + 2][3], o[j + 3][1] + o[j + 3][3]);
        }
        if (t == 0) m.max[warp][g] = running_max, m.sum[warp][g] = running_sum;
    }
    merge_stored_warps(m);
}

/* Dimension d of head g merged over set `set`'s warps (unnormalized: divide by total[set][g]). */
template <int HD, int G, int W, int SETS>
__device__ __forceinline__ float merged_value(const warp_merge<HD, G, W, SETS> &m, int set, int g, int d) {
    constexpr int PER_SET = W / SETS;
    float sum = 0;
#pragma unroll
    for (int j = 0; j < PER_SET; j++) sum += m.acc[set * PER_SET + j][g][d] * m.factor[set * PER_SET + j][g];
    return sum;
}

/* One block per (token, kv head, batch of up to G query heads of its group, key split), a token's
 * keys spread over `spread` splits. Where they fit one 32-key chunk a split and the block holds
 * G >= WARPS heads, the splits take a chunk each and each warp its own G / WARPS heads over it (the
 * warps find the chunk's keys in L1), so a short context is four warps' work a split, not one's,
 * and no merge is needed. Otherwise splits of at least min_keys keys, each of the WARPS warps taking
 * every fourth chunk for all G heads, the warps merging in the block. The keys and values of a kv
 * head are read from memory once for all its query heads (GQA). One split: normalized into out;
 * several: (max, sum, values) into partials, which combine_kernel merges. With early_kv, the first
 * chunks' keys and values are prefetched into L2 before the wait for the previous kernel. MMA (an
 * f16 or 8-bit cache, G 4 or 8, head dim 64 or 128): the warps' shared chunks on tensor cores
 * (attend_group_mma); one-chunk splits by heads stay scalar. */
template <int KV, int HD, int G, bool MMA>
__global__ void __launch_bounds__(32 * WARPS) decode_attention_kernel(const float *q, float *out, float *partials, kv_addressing a,
                                                                      const int32_t *pages, const int64_t *page_offsets,
                                                                      const int32_t *n_keys, int n_head, float scale, int min_keys,
                                                                      int spread, bool early_kv) {
    typedef decode_shape<KV, HD> shape;
    constexpr int EPV = shape::epv, LPK = shape::lpk, VPL = shape::vpl, PER_LANE = shape::per_lane;
    const int group = n_head / a.n_head_kv, batches = (group + G - 1) / G;
    const int token = blockIdx.x / (a.n_head_kv * batches), rest = blockIdx.x % (a.n_head_kv * batches);
    const int kv_head = rest / batches, head0 = kv_head * group + rest % batches * G, heads = min(G, group - rest % batches * G);
    const int split = blockIdx.y, n_splits = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* keys that fit a chunk a split: 32-key splits whose warps each take their own heads */
    const int n = n_keys[token];
    const bool by_heads = G >= WARPS && n <= 32 * spread;
    int begin, end;
    split_range(n, split, spread, by_heads ? 32 : min_keys, begin, end);
    const int32_t *table = pages + page_offsets[token];
    /* Before the wait: the key and value lines of this warp's first chunks into L2, so the first
     * trips to memory overlap the previous kernel (rope + append). The key counts and page tables
     * are step inputs, complete before the graph started; a prefetch is only a hint, and the newest
     * key, which the previous kernel writes, is read for real after the wait (L2 is coherent). */
    if (early_kv)
        for (int chunk = begin + 32 * warp, fetched = 0; chunk < end && fetched < EARLY_KV_CHUNKS; chunk += 32 * WARPS, fetched++)
            if (chunk + lane < end) {
                const uint8_t *key = kv_address32(a, table, chunk + lane, kv_head, false);
                const uint8_t *value = kv_address32(a, table, chunk + lane, kv_head, true);
#pragma unroll
                for (int line = 0; line < shape::vector_bytes; line += 128)
                    asm volatile("prefetch.global.L2 [%0];\n\tprefetch.global.L2 [%1];" ::"l"(key + line), "l"(value + line));
            }
    tm_grid_dependency();

    __shared__ __align__(16) float query[G][HD];
    for (int i = threadIdx.x; i < G * HD; i += 32 * WARPS) {
        const int g = i / HD;
        query[g][i % HD] = g < heads ? q[((int64_t)token * n_head + head0 + g) * HD + i % HD] * scale : 0.0f;
    }
    __syncthreads();

    if (by_heads) { /* a one-chunk split: the warps take the heads (block-uniform) */
        constexpr int NH = G >= WARPS ? G / WARPS : 1;
        const int first = warp * NH; /* the warp's heads: first.. of the batch */
        if (first >= heads) return; /* past a short batch's heads (a group of 12's second batch; a group of 3) */
        float acc[NH][PER_LANE], running_max[NH], running_sum[NH];
        attend_chunks<KV, HD, NH>(query + first, a, table, kv_head, begin, 32, end, warp == 0, acc, running_max, running_sum);
        if (lane < LPK)
#pragma unroll
            for (int g = 0; g < NH; g++)
                if (first + g < heads)
#pragma unroll
                    for (int u = 0; u < VPL; u++)
#pragma unroll
                        for (int e = 0; e < EPV; e++)
                            store_split_result(out, partials, (int64_t)token * n_head + head0 + first + g, split, n_splits, HD,
                                               (lane + LPK * u) * EPV + e, acc[g][u * EPV + e], running_max[g], running_sum[g]);
        return;
    }

    __shared__ alignas(MMA ? 16 : 4) warp_merge<HD, G, WARPS, 1> merge; /* MMA: merge_warps_mma's float4 stores */
    if constexpr (MMA) {
        static_assert(G > 1, "tensor-core chunks: a group's block");
        float o[HD / 8][4], running_max, running_sum;
        attend_group_mma<KV, HD, G>(query, a, table, kv_head, begin + 32 * warp, 32 * WARPS, end, true, o, running_max, running_sum);
        merge_warps_mma(merge, o, running_max, running_sum);
    } else {
        float acc[G][PER_LANE], running_max[G], running_sum[G];
        attend_chunks<KV, HD, G>(query, a, table, kv_head, begin + 32 * warp, 32 * WARPS, end, true, acc, running_max, running_sum);
        merge_warps<KV>(merge, acc, running_max, running_sum);
    }
    for (int i = threadIdx.x; i < heads * HD; i += 32 * WARPS) {
        const int g = i / HD, d = i % HD;
        store_split_result(out, partials, (int64_t)token * n_head + head0 + g, split, n_splits, HD, d, merged_value(merge, 0, g, d),
                           merge.set_max[0][g], merge.total[0][g]);
    }
}

/* decode_attention_kernel<KV, HD, G, MMA> on grid (blocks a split, splits). A token's keys go to at
 * most as many splits as one wave of resident blocks holds (the grid's x blocks for each): a long
 * context of several streams then takes fewer, longer splits in one wave rather than a wave and a
 * part (H200, 2048 keys x 8 streams: 70B 422.1 -> 432.9 tokens/s, 8B 1312 -> 1361, 7B 1222 ->
 * 1267), and one-chunk splits by heads stop where they would need a second wave (70B x 8 at 160
 * keys: 2.2 waves of them measured 1.8 % slower than the warps splitting 128-key splits). */
template <int KV, int HD, int G, bool MMA>
static cudaError_t launch_decode_blocks(dim3 grid, const float *q, float *out, float *partials, const kv_addressing &a,
                                        const int32_t *pages, const int64_t *page_offsets, const int32_t *n_keys, int n_head, float scale,
                                        int min_keys, bool early_kv, cudaStream_t s) {
    const auto kernel = decode_attention_kernel<KV, HD, G, MMA>;
    int resident = 0;
    cudaError_t status = tm_resident_blocks((const void *)kernel, 32 * WARPS, 0, &resident);
    if (status != cudaSuccess) return status;
    const int spread = (int)max(1u, min(grid.y, (unsigned)resident / grid.x));
    TM_CUDA_CHECK(tm_attention_carveout((const void *)kernel));
    return tm_launch_dependent(kernel, grid, dim3(32 * WARPS), 0, s, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale,
                               min_keys, spread, early_kv);
}

/* Whether the decode kernels' blocks of 2 or more query heads of an f16 or 8-bit cache score and add
 * their chunks on tensor cores (attend_group_mma; the split kernel's blocks of 4 and 8 at head dims
 * 64 and 128 where its warps share the chunks, and the whole-context kernel's; the callers check the
 * cache and shape): yes unless TM_ATTENTION_GROUP_MMA=0 (a measuring aid). H200, decode tokens/s,
 * scalar / tensor-core chunks: in the whole-context kernel (one call) 70B x8 (64 blocks of the group of 8, a chunk a
 * warp: the launch 19.0 -> 9.9 us) 492.4 / 506.5, x1 (blocks of 2 heads) 72.24 / 72.52, 8B x8
 * (groups of 4) 1723 / 1726, x1 241.9 / 241.7; with the split kernel's too (the next call) 70B
 * 2048 x8 433.9 / 466.9, 512 x4 260.7 / 265.8, 8B 2048 x8 1482 / 1519, 512 x4 859.6 / 871.3; the
 * 8-bit cache (a third call) 70B x8 491.8 / 523.2, 2048 x8 446.5 / 486.2, 8B x8 1727 / 1750, 2048
 * x8 1533 / 1556. */
static bool group_tensor_cores() {
    static const bool allowed = tm_env_int("TM_ATTENTION_GROUP_MMA", 1) != 0;
    return allowed;
}

/* Query heads a decode block takes for a group of `group` query heads a kv head: 1, 4 or 8 (groups
 * of 2-4 take 4 slots, of 5-8 eight; larger groups take several blocks); three instantiations per
 * head dim keep the build short. */
static int decode_block_heads(int group) { return group >= 5 ? 8 : group >= 2 ? 4 : 1; }

template <int KV, int HD>
static cudaError_t launch_decode(dim3 block_grid_xy, int group, const float *q, float *out, float *partials, const kv_addressing &a,
                          const int32_t *pages, const int64_t *page_offsets, const int32_t *n_keys, int n_head, float scale, int min_keys,
                          cudaStream_t s) {
    static const bool early_kv = tm_env_int("TM_ATTENTION_EARLY_KV", 1) != 0; /* a measuring aid: 0 prefetches nothing before the wait */
    const int G = decode_block_heads(group);
    dim3 grid(block_grid_xy.x * (unsigned)((group + G - 1) / G), block_grid_xy.y);
    auto launch = G == 8 ? launch_decode_blocks<KV, HD, 8, false> : G == 4 ? launch_decode_blocks<KV, HD, 4, false> : launch_decode_blocks<KV, HD, 1, false>;
    if constexpr ((KV == KV_F16 || KV == KV_Q8) && (HD == 64 || HD == 128))
        if (G > 1 && group_tensor_cores()) launch = G == 8 ? launch_decode_blocks<KV, HD, 8, true> : launch_decode_blocks<KV, HD, 4, true>;
    return launch(grid, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys, early_kv, s);
}

/* launch_decode for head dims 32, 64, 128 and 256 (its launch status); NOT_THIS_KERNEL (nothing
 * launched) for the others. */
#define NOT_THIS_KERNEL (-1)
template <int KV>
static int launch_decode_any(int head_dim, dim3 block_grid_xy, int group, const float *q, float *out, float *partials,
                              const kv_addressing &a, const int32_t *pages, const int64_t *page_offsets, const int32_t *n_keys,
                              int n_head, float scale, int min_keys, cudaStream_t s) {
    switch (head_dim) {
    case 32: return launch_decode<KV, 32>(block_grid_xy, group, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys, s);
    case 64: return launch_decode<KV, 64>(block_grid_xy, group, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys, s);
    case 128: return launch_decode<KV, 128>(block_grid_xy, group, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys, s);
    case 256: return launch_decode<KV, 256>(block_grid_xy, group, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys, s);
    default: return NOT_THIS_KERNEL;
    }
}

/* ---- decode, one token, a short context: 8-key slices a warp (decode_whole_kernel's SLICES) ---- */

/* decode_whole_kernel's FORM bits: 8-key slices a warp (a group of 1 of an f16 or 8-bit cache)
 * instead of 32-key chunks; in clusters, the blocks' results pushed into block 0 instead of read by
 * it; and pushed by st.async counted on block 0's mbarrier instead of by plain stores behind a
 * release cluster barrier. */
enum { WHOLE_SLICES = 1, WHOLE_PUSH = 2, WHOLE_ASYNC = 4 };

/* How a lane reads one 8-key slice of a cache of type KV (f16 or 8-bit): lanes 4k..4k+3 hold key
 * k's HD / 4 dims in pieces of 8 dims (16 bytes of f16, 8 of int8), lane 4k + j pieces j, j + 4, ...
 * (so each load instruction reads whole runs of each key: 64 bytes of f16, 32 of int8), and every
 * lane dims lane HD/32 .. + HD/32 of each of the 8 values (so the weighted sum needs no
 * transpose). An 8-bit cache's lane also holds its key's scale and that key's value's scale. */
template <int KV, int HD> struct slice_shape {
    static_assert(KV == KV_F16 || KV == KV_Q8, "slices: an f16 or 8-bit cache");
    static_assert(HD == 64 || HD == 128, "slices: head dim 64 or 128");
    static constexpr int piece_bytes = 8 * kv_element_bytes(KV);             /* a key piece: 8 dims */
    static constexpr int value_bytes = HD / 32 * kv_element_bytes(KV);       /* a lane's part of a value: 2..8 bytes */
    static constexpr int value_words = value_bytes < 4 ? 1 : value_bytes / 4; /* its 32-bit words (an 8-bit cache's 2 bytes in one) */
};

template <int KV, int HD> struct slice_regs {
    uint32_t key[HD / 32][slice_shape<KV, HD>::piece_bytes / 4];
    uint32_t value[8][slice_shape<KV, HD>::value_words];
    float key_scale, value_scale; /* an 8-bit cache's: the lane's key's and its value's */
};

/* Where a lane's pieces of one slice lie: its key's and the 8 values'; an 8-bit cache's two scales. */
struct slice_places {
    const uint8_t *key, *value[8];
    const float *key_scale, *value_scale;
};

/* The places of slice `first` (keys first..first+7) of kv head kv_head for a context of n keys
 * (first < n): positions past n take the last key's (finite, masked by slice_attend). Nine page
 * table entries (an 8-bit cache's lane one more: its key's value, for the scale), read without a
 * branch between them so their loads go out together: the page tables are the step's inputs,
 * written before the graph runs, so the decode kernel reads them before its wait. (Read one value
 * at a time under `position < n`, each entry's load waited for before the next was asked: ~2.9 us
 * from the wait to the slice in the 7B x1 step, H200 stamps.) */
template <int KV, int HD>
__device__ __forceinline__ slice_places slice_find(const kv_addressing &a, const int32_t *table, int kv_head, int first, int n) {
    using shape = slice_shape<KV, HD>;
    const int lane = threadIdx.x & 31, last = n - 1, mine = min(first + (lane >> 2), last);
    slice_places s;
    const uint8_t *key = kv_address32(a, table, mine, kv_head, false);
    s.key = key + shape::piece_bytes * (lane & 3);
#pragma unroll
    for (int j = 0; j < 8; j++) s.value[j] = kv_address32(a, table, min(first + j, last), kv_head, true) + lane * shape::value_bytes;
    if constexpr (KV == KV_Q8) {
        s.key_scale = kv_scale_slot(a, key);
        s.value_scale = kv_scale_slot(a, kv_address32(a, table, mine, kv_head, true));
    } else {
        s.key_scale = s.value_scale = nullptr;
    }
    return s;
}

/* Loads a slice's pieces from its places, every load unconditional. */
template <int KV, int HD> __device__ __forceinline__ void slice_load(const slice_places &s, slice_regs<KV, HD> &r) {
    using shape = slice_shape<KV, HD>;
#pragma unroll
    for (int c = 0; c < HD / 32; c++) {
        if constexpr (shape::piece_bytes == 16) {
            const uint4 v = ldg_line16(s.key + 64 * c);
            r.key[c][0] = v.x, r.key[c][1] = v.y, r.key[c][2] = v.z, r.key[c][3] = v.w;
        } else {
            const uint2 v = ldg_line8(s.key + 32 * c);
            r.key[c][0] = v.x, r.key[c][1] = v.y;
        }
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if constexpr (shape::value_bytes == 8) {
            const uint2 v = ldg_line8(s.value[j]);
            r.value[j][0] = v.x, r.value[j][1] = v.y;
        } else if constexpr (shape::value_bytes == 4) {
            r.value[j][0] = __ldg(reinterpret_cast<const unsigned int *>(s.value[j]));
        } else {
            r.value[j][0] = __ldg(reinterpret_cast<const unsigned short *>(s.value[j]));
        }
    }
    if constexpr (KV == KV_Q8) r.key_scale = __ldg(s.key_scale), r.value_scale = __ldg(s.value_scale);
}

/* Slice `first`'s keys scored against the lane's dims of the (pre-scaled) query (query[8c + e]:
 * dim 8 (4c + lane % 4) + e), added to the warp's online softmax and to acc, the lane's HD / 32
 * dims of the weighted values. Positions past n are masked (first < n; their pieces are finite:
 * slice_find). An 8-bit cache: a key's score is its int8 dot product times its scale; its value
 * is added with its weight times the value's scale (the softmax's total takes the weight alone). */
template <int KV, int HD>
__device__ __forceinline__ void slice_attend(const slice_regs<KV, HD> &r, const float (&query)[HD / 4], int first, int n, float &running_max,
                                             float &running_sum, float (&acc)[HD / 32]) {
    const int lane = threadIdx.x & 31;
    float score = 0;
#pragma unroll
    for (int c = 0; c < HD / 32; c++) {
        float x[8];
        if constexpr (KV == KV_Q8) int8x4_to_float(r.key[c][0], x), int8x4_to_float(r.key[c][1], x + 4);
        else unpack_piece<KV_F16, 8>(make_uint4(r.key[c][0], r.key[c][1], r.key[c][2], r.key[c][3]), x);
#pragma unroll
        for (int e = 0; e < 8; e++) score = fmaf(x[e], query[8 * c + e], score);
    }
    score += __shfl_xor_sync(0xffffffffu, score, 1);
    score += __shfl_xor_sync(0xffffffffu, score, 2);
    if constexpr (KV == KV_Q8) score *= r.key_scale;
    const bool valid = first + (lane >> 2) < n;
    const float s = valid ? score : -INFINITY;
    float slice_max = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, 4));
    slice_max = fmaxf(slice_max, __shfl_xor_sync(0xffffffffu, slice_max, 8));
    slice_max = fmaxf(slice_max, __shfl_xor_sync(0xffffffffu, slice_max, 16));
    const float new_max = fmaxf(running_max, slice_max), correction = expf(running_max - new_max);
    const float weight = valid ? expf(s - new_max) : 0.0f;
    float total = weight + __shfl_xor_sync(0xffffffffu, weight, 4);
    total += __shfl_xor_sync(0xffffffffu, total, 8);
    total += __shfl_xor_sync(0xffffffffu, total, 16);
    running_sum = running_sum * correction + total, running_max = new_max;
    const float value_weight = KV == KV_Q8 ? weight * r.value_scale : weight;
#pragma unroll
    for (int e = 0; e < HD / 32; e++) acc[e] *= correction;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float w = __shfl_sync(0xffffffffu, value_weight, 4 * j);
        if constexpr (KV == KV_Q8) {
            float v[4];
            int8x4_to_float(r.value[j][0], v); /* HD 64: the low 2 bytes are the lane's */
#pragma unroll
            for (int e = 0; e < HD / 32; e++) acc[e] = fmaf(w, v[e], acc[e]);
        } else {
#pragma unroll
            for (int h = 0; h < HD / 64; h++) {
                const float2 v = __half22float2(*reinterpret_cast<const __half2 *>(&r.value[j][h]));
                acc[2 * h] = fmaf(w, v.x, acc[2 * h]), acc[2 * h + 1] = fmaf(w, v.y, acc[2 * h + 1]);
            }
        }
    }
}

/* merge_warps for the slices' state: lane l holds dims l HD/32 .. + HD/32 of the warp's one head. */
template <int HD, int W, int SETS>
__device__ __forceinline__ void merge_slices(warp_merge<HD, 1, W, SETS> &m, const float (&acc)[HD / 32], float running_max,
                                             float running_sum) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int e = 0; e < HD / 32; e++) m.acc[warp][0][lane * (HD / 32) + e] = acc[e];
    if (lane == 0) m.max[warp][0] = running_max, m.sum[warp][0] = running_sum;
    merge_stored_warps(m);
}

/* The one-token kernel's mbarrier in block 0 (decode_whole_kernel's WHOLE_ASYNC): the bytes the other
 * blocks push. A shared address; a function so that only the kernels using it hold it. */
__device__ __forceinline__ uint32_t push_barrier() {
    __shared__ alignas(8) uint64_t barrier;
    return shared_address(&barrier);
}

/* The copies of a decode attention's output that its writer (decode_whole_kernel, combine_kernel)
 * stores beside out for the output product, so it needs no launch of its own to make them: q8.qs,
 * the q8_1 form the 8-bit products read (tm_cuda_quantize_q8_1's bytes); f16, each value as f16,
 * rounded to nearest even as the 16-bit products round their float input (their HALF_X form). */
struct out_copies {
    q8_out q8;
    __half *f16;
};

/* ---- decode without splits: a block per (token, kv head[, heads]), its warps sharing the keys -- */

/* Kv heads a block of the whole-context kernel takes: enough that its outputs (kv heads x G x HD)
 * fill whole 256-value q8_1 blocks, which it then writes itself. */
__host__ __device__ constexpr int whole_kv_heads(int G, int HD) { return G * HD >= 256 ? 1 : 256 / (G * HD); }

/* Blocks of G query heads a kv head's group of `group` takes (1 where G is the padded group). */
__host__ __device__ constexpr int whole_head_batches(int group, int G) { return group > G ? group / G : 1; }

/* One block per (token, KVH kv heads, batch of G query heads of the group), W warps, W / KVH of them
 * a kv head: warp j of a kv head takes its chunks j, j + W / KVH, ... of all the token's keys for
 * the block's G query heads (the group padded to 1, 4 or 8, or, at one token, 2 of a group of 4 or
 * 8: whole_block_heads), the warps of a kv head merge in the block, and the normalized result goes
 * to out, and, with q8 (the group a multiple of G: the block's values are consecutive outputs), to
 * q8 as tm_cuda_quantize_q8_1 writes it: no split partials, no combine launch. Any context is
 * exact; it pays where a token's keys are a chunk or two a warp (the graph of a short-context
 * step), where the splits' partial writes and the combine's dependent launch cost more than the
 * few SMs' reads save. Keys and values of the first chunks are prefetched into L2 before the wait.
 * In clusters of C > 1 blocks (sm_90; one_token_clusters): the C blocks of a unit share its
 * chunks (warp j of block r takes chunks j C + r, ...), each merges its warps, and block 0 merges
 * the blocks through distributed shared memory and writes the unit: it reads the others' results
 * (FORM without WHOLE_PUSH), or they store them into its shared memory and leave (WHOLE_PUSH).
 * FORM with WHOLE_SLICES (a group of 1 of an f16 or 8-bit cache): 8-key slices instead of 32-key chunks, 4
 * lanes a key (slice_attend). MMA (no clusters): the chunks
 * scored and added on tensor cores, for a group of 1 of an f16 cache by attend_chunks_mma, for
 * blocks of 2..8 heads of an f16 or 8-bit cache by attend_group_mma. */
template <int KV, int HD, int G, int W, int C, bool MMA, int FORM = 0>
__global__ void __launch_bounds__(32 * W) decode_whole_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages,
                                                              const int64_t *page_offsets, const int32_t *n_keys, int n_head,
                                                              float scale, out_copies copies) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if (C > 1) __trap(); /* clusters need sm_90; the host never launches C > 1 there */
#endif
    const tm_stamper stamper = tm_stamp_begin();
    constexpr int PER_LANE = decode_shape<KV, HD>::per_lane;
    constexpr int KVH = whole_kv_heads(G, HD), WPH = W / KVH, VALUES = KVH * G * HD, THREADS = 32 * W;
    static_assert(W % KVH == 0 && (VALUES % THREADS == 0 || THREADS % VALUES == 0), "whole-context decode shape");
    constexpr int PER_THREAD = VALUES >= THREADS ? VALUES / THREADS : 1;
    const int group = n_head / a.n_head_kv, heads = min(G, group), batches = whole_head_batches(group, G);
    const int blocks_a_token = a.n_head_kv / KVH * batches;
    const int unit_index = blockIdx.x / C, rank = blockIdx.x % C; /* a cluster of C blocks shares a unit's keys */
    const int token = unit_index / blocks_a_token, unit = unit_index % blocks_a_token;
    const int first_kv_head = unit / batches * KVH, head0 = unit % batches * G; /* the block's first query head in its group */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, mine = warp / WPH, rank_in_head = warp % WPH;
    const int kv_head = first_kv_head + mine;
    const int n = n_keys[token];
    const int32_t *table = pages + page_offsets[token];
    constexpr bool SLICES = FORM & WHOLE_SLICES, PUSH = C > 1 && (FORM & WHOLE_PUSH), ASYNC = PUSH && (FORM & WHOLE_ASYNC);
    (void)PUSH, (void)ASYNC; /* read by sm_90's code only */
    static_assert(!SLICES || ((KV == KV_F16 || KV == KV_Q8) && G == 1 && !MMA), "slices: one head a kv head of an f16 or 8-bit cache");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (ASYNC)
        if (rank == 0 && threadIdx.x == 0) mbarrier_init(push_barrier(), 1), fence_mbarrier_init();
    if constexpr (PUSH) cluster_arrive_relaxed(); /* started: see the merge */
#endif
    /* warp j of cluster block r takes 32-key chunks j C + r, j C + r + W C / KVH, ... (SLICES: 8-key
     * slices): the first chunks of a short context land on different blocks (SMs) */
    constexpr int SPAN = SLICES ? 8 : 32;
    const int first_chunk = SPAN * (rank_in_head * C + rank), chunk_step = SPAN * WPH * C;
    {
        /* the warp's first chunks (slices: 8 keys) into L2 before the wait, as decode_attention_kernel does */
        for (int chunk = first_chunk, fetched = 0; chunk < n && fetched < EARLY_KV_CHUNKS; chunk += chunk_step, fetched++)
            if (SLICES ? lane < 8 && chunk + lane < n : chunk + lane < n) {
                const uint8_t *key = kv_address32(a, table, chunk + lane, kv_head, false);
                const uint8_t *value = kv_address32(a, table, chunk + lane, kv_head, true);
#pragma unroll
                for (int line = 0; line < decode_shape<KV, HD>::vector_bytes; line += 128)
                    asm volatile("prefetch.global.L2 [%0];\n\tprefetch.global.L2 [%1];" ::"l"(key + line), "l"(value + line));
            }
    }
    /* slices: the first slice's places before the wait (page tables are the step's inputs) */
    slice_places first_places = {};
    if constexpr (SLICES)
        if (first_chunk < n) first_places = slice_find<KV, HD>(a, table, kv_head, first_chunk, n);
    tm_grid_dependency();
    tm_stamp(TM_STAMP_WAITED);

    __shared__ __align__(16) float query[SLICES ? 1 : KVH][G][SLICES ? 1 : HD];
    if constexpr (!SLICES) {
        for (int i = threadIdx.x; i < KVH * G * HD; i += THREADS) {
            const int k = i / (G * HD), g = i / HD % G;
            query[k][g][i % HD] = g < heads ? q[((int64_t)token * n_head + (first_kv_head + k) * group + head0 + g) * HD + i % HD] * scale : 0.0f;
        }
        __syncthreads();
        tm_stamp(TM_STAMP_A); /* the query in shared memory */
    }

    __shared__ alignas(MMA && G > 1 ? 16 : 4) warp_merge<HD, G, W, KVH> merge; /* merge_warps_mma's float4 stores */
    if constexpr (SLICES) {
        /* the first slice's loads go out at once, from places found before the wait, and then the
         * query's (the query's scaling multiplies wait for its loads, so with the query first the
         * slice's loads left a whole trip later; 7B x1 step, H200 block stamps: the slice arrived
         * 3.0 us after the wait, the query's trip and nine page-table entries read one by one) */
        slice_regs<KV, HD> r;
        if (first_chunk < n) slice_load<KV, HD>(first_places, r);
        /* the lane's dims of its key's query (a group of 1: query head = kv head), pre-scaled */
        float query_part[HD / 4];
        const float *from = q + ((int64_t)token * n_head + kv_head) * HD + 8 * (lane & 3);
#pragma unroll
        for (int c = 0; c < HD / 32; c++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float4 v = *reinterpret_cast<const float4 *>(from + 32 * c + 4 * h);
                query_part[8 * c + 4 * h] = v.x * scale, query_part[8 * c + 4 * h + 1] = v.y * scale;
                query_part[8 * c + 4 * h + 2] = v.z * scale, query_part[8 * c + 4 * h + 3] = v.w * scale;
            }
        float acc[HD / 32], running_max = -INFINITY, running_sum = 0;
#pragma unroll
        for (int e = 0; e < HD / 32; e++) acc[e] = 0;
        /* one slice a warp up to 256 keys in clusters of 8; past that, each further slice's places
         * and loads after the one before. (The first slice's old keys and values loaded into
         * registers before the wait, only this step's key after, measured slower: 7B x1 572 -> 558
         * tokens/s; the L2 prefetch above gains.) */
        for (int slice = first_chunk; slice < n; slice += chunk_step) {
            if (slice != first_chunk) slice_load<KV, HD>(slice_find<KV, HD>(a, table, kv_head, slice, n), r);
            if (slice == first_chunk) {
                tm_stamp_after(TM_STAMP_A, __float_as_uint(query_part[HD / 4 - 1])); /* warp 0's query arrived */
                tm_stamp_after(TM_STAMP_B, r.value[7][0] ^ r.key[HD / 32 - 1][0]); /* ... its slice */
            }
            slice_attend<KV, HD>(r, query_part, slice, n, running_max, running_sum, acc);
        }
        tm_stamp_after(TM_STAMP_C, __float_as_uint(acc[0])); /* warp 0's slices attended */
        merge_slices(merge, acc, running_max, running_sum);
        tm_stamp(TM_STAMP_D); /* the block's warps merged */
    } else if constexpr (MMA && G > 1) {
        float o[HD / 8][4], running_max, running_sum;
        attend_group_mma<KV, HD, G>(query[mine], a, table, kv_head, first_chunk, chunk_step, n, true, o, running_max, running_sum);
        tm_stamp_after(TM_STAMP_B, __float_as_uint(o[0][0])); /* warp 0's chunks attended */
        merge_warps_mma(merge, o, running_max, running_sum);
        tm_stamp(TM_STAMP_C); /* the block's warps merged */
    } else {
        float acc[G][PER_LANE], running_max[G], running_sum[G];
        if constexpr (MMA)
            attend_chunks_mma<HD>(query[mine], a, table, kv_head, first_chunk, chunk_step, n, true, acc, running_max, running_sum);
        else
            attend_chunks<KV, HD, G>(query[mine], a, table, kv_head, first_chunk, chunk_step, n, true, acc, running_max, running_sum);
        merge_warps<KV>(merge, acc, running_max, running_sum);
    }
    /* value i of the block: kv head i / (G HD), query head i / HD % G, dimension i % HD; consecutive
     * outputs of the token when the group is G */
    float value[PER_THREAD];
    bool writer = true;
    if constexpr (C == 1) {
#pragma unroll
        for (int v = 0; v < PER_THREAD; v++) {
            const int i = threadIdx.x + v * THREADS;
            value[v] = i < VALUES ? merged_value(merge, i / (G * HD), i / HD % G, i % HD) / merge.total[i / (G * HD)][i / HD % G] : 0.0f;
        }
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if constexpr (PUSH) {
        /* the cluster's merge, pushed: each block stores its (max, total, unnormalized values) into
         * block 0's shared memory through distributed shared memory and arrives; only block 0 waits,
         * then merges and writes the unit (no block reads another's memory, so the others leave at
         * once). The first phase (arrived at the kernel's start) makes sure block 0 has started.
         * Its combine is the read form's below written again: one helper for both changed every
         * cluster kernel's sm_90a SASS (the 8-bit chunks' read form +64 instructions), unmeasured. */
        __shared__ float pushed[C][VALUES], pushed_max[C][KVH][G], pushed_total[C][KVH][G];
        cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
        cluster_wait();
        if constexpr (ASYNC) {
            /* each other block's values go into block 0's shared memory by st.async, which counts
             * their bytes on block 0's mbarrier (initialized before the first phase's arrive, so the
             * wait above also orders its init before any push), and the block leaves; block 0 writes
             * its own, expects the others' bytes and waits for them. The plain stores' release
             * arrive is a GPU-scope MEMBAR in sm_90a SASS and the acquire an L1 invalidation; this
             * form has neither. H200, 7B decode x1 at 128 / 192-key prompts, one binary, two rounds:
             * 598.8, 590.5 / 588.5, 588.8 -> 601.3, 597.7 / 596.5, 589.9 tokens/s */
            const uint32_t bar = push_barrier();
            auto push = [&](const float *local, float v) {
                st_async_u32(cluster_map(shared_address(local), 0), __float_as_uint(v), cluster_map(bar, 0));
            };
            if (rank != 0) {
#pragma unroll
                for (int v = 0; v < PER_THREAD; v++) {
                    const int i = threadIdx.x + v * THREADS;
                    if (i < VALUES) push(&pushed[rank][i], merged_value(merge, i / (G * HD), i / HD % G, i % HD));
                }
                if (threadIdx.x < KVH * G) {
                    const int k = threadIdx.x / G, g = threadIdx.x % G;
                    push(&pushed_max[rank][k][g], merge.set_max[k][g]);
                    push(&pushed_total[rank][k][g], merge.total[k][g]);
                }
                tm_stamp(TM_STAMP_E);
                tm_stamp_end(stamper, SLICES ? TM_STAMP_ATTENTION : TM_STAMP_ATTENTION_CHUNKS, pages);
                return;
            }
#pragma unroll
            for (int v = 0; v < PER_THREAD; v++) {
                const int i = threadIdx.x + v * THREADS;
                if (i < VALUES) pushed[0][i] = merged_value(merge, i / (G * HD), i / HD % G, i % HD);
            }
            if (threadIdx.x < KVH * G) {
                const int k = threadIdx.x / G, g = threadIdx.x % G;
                pushed_max[0][k][g] = merge.set_max[k][g], pushed_total[0][k][g] = merge.total[k][g];
            }
            if (threadIdx.x == 0) mbarrier_expect(bar, (C - 1) * (VALUES + 2 * KVH * G) * 4);
            __syncthreads(); /* block 0's own part */
            mbarrier_wait(bar, 0);
            tm_stamp(TM_STAMP_E); /* block 0: every block's results pushed */
        } else {
        float *to_values = cluster.map_shared_rank(&pushed[rank][0], 0);
#pragma unroll
        for (int v = 0; v < PER_THREAD; v++) {
            const int i = threadIdx.x + v * THREADS;
            if (i < VALUES) to_values[i] = merged_value(merge, i / (G * HD), i / HD % G, i % HD);
        }
        if (threadIdx.x < KVH * G) {
            const int k = threadIdx.x / G, g = threadIdx.x % G;
            *cluster.map_shared_rank(&pushed_max[rank][k][g], 0) = merge.set_max[k][g];
            *cluster.map_shared_rank(&pushed_total[rank][k][g], 0) = merge.total[k][g];
        }
        asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
        writer = rank == 0;
        if (!writer) {
            tm_stamp(TM_STAMP_E);
            tm_stamp_end(stamper, SLICES ? TM_STAMP_ATTENTION : TM_STAMP_ATTENTION_CHUNKS, pages);
            return;
        }
        asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
        tm_stamp(TM_STAMP_E); /* block 0: every block's results pushed */
        }
#pragma unroll
        for (int v = 0; v < PER_THREAD; v++) {
            const int i = threadIdx.x + v * THREADS, k = i / (G * HD), g = i / HD % G;
            float m = -INFINITY;
#pragma unroll
            for (int r = 0; r < C; r++) m = fmaxf(m, pushed_max[r][k][g]);
            float sum = 0, total = 0;
#pragma unroll
            for (int r = 0; r < C; r++) {
                const float f = pushed_total[r][k][g] > 0 ? expf(pushed_max[r][k][g] - m) : 0.0f;
                sum += (i < VALUES ? pushed[r][i] : 0.0f) * f, total += pushed_total[r][k][g] * f;
            }
            value[v] = i < VALUES ? sum / total : 0.0f;
        }
      } else {
        /* the cluster's merge: each block's (max, total, unnormalized values) stay in its shared
         * memory; block 0 reads the others' through distributed shared memory and writes the unit */
        __shared__ float part[VALUES];
#pragma unroll
        for (int v = 0; v < PER_THREAD; v++) {
            const int i = threadIdx.x + v * THREADS;
            if (i < VALUES) part[i] = merged_value(merge, i / (G * HD), i / HD % G, i % HD);
        }
        cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
        cluster.sync();
        writer = rank == 0;
        if (writer) {
#pragma unroll
            for (int v = 0; v < PER_THREAD; v++) {
                const int i = threadIdx.x + v * THREADS, k = i / (G * HD), g = i / HD % G;
                float block_max[C], block_total[C], block_value[C], m = -INFINITY;
#pragma unroll
                for (int r = 0; r < C; r++) {
                    block_max[r] = *cluster.map_shared_rank(&merge.set_max[k][g], r);
                    block_total[r] = *cluster.map_shared_rank(&merge.total[k][g], r);
                    block_value[r] = i < VALUES ? *cluster.map_shared_rank(&part[i], r) : 0.0f;
                    m = fmaxf(m, block_max[r]);
                }
                float sum = 0, total = 0;
#pragma unroll
                for (int r = 0; r < C; r++) {
                    const float f = block_total[r] > 0 ? expf(block_max[r] - m) : 0.0f;
                    sum += block_value[r] * f, total += block_total[r] * f;
                }
                value[v] = i < VALUES ? sum / total : 0.0f;
            }
        }
        cluster.sync(); /* no block leaves while block 0 may still read its shared memory */
      }
#endif
    }
    if (writer) {
#pragma unroll
        for (int v = 0; v < PER_THREAD; v++) {
            const int i = threadIdx.x + v * THREADS, k = i / (G * HD), g = i / HD % G, d = i % HD;
            const int64_t at = ((int64_t)token * n_head + (first_kv_head + k) * group + head0 + g) * HD + d;
            if (i < VALUES && g < heads) {
                out[at] = value[v];
                if (copies.f16) copies.f16[at] = __float2half_rn(value[v]);
            }
        }
        if (copies.q8.qs && group % G == 0 && (VALUES >= THREADS || threadIdx.x < VALUES)) /* whole 8-warp runs of values */
            quantize_q8_1_blocks<PER_THREAD>(value, ((int64_t)token * n_head + (int64_t)first_kv_head * group + head0) * HD + threadIdx.x,
                                             THREADS, INT64_MAX, copies.q8);
    }
    tm_stamp_end(stamper, SLICES ? TM_STAMP_ATTENTION : TM_STAMP_ATTENTION_CHUNKS, pages);
}

/* Whether the whole-context kernel of a group of 1 runs a step of n_tokens tokens in clusters of 8
 * blocks: at one token, on devices that launch clusters (sm_90); TM_ATTENTION_CLUSTER=1 (a
 * measuring aid) never. A one-token step of the 7B is 16 blocks
 * (two kv heads each) on 16 SMs, each warp's 32-key chunk a chain of ~1200 instructions and three
 * trips to memory with 10 busy warps sharing an SM's schedulers; in clusters of 8 the chunks of a
 * kv head land on 8 SMs (a busy warp ~8000 cycles instead of ~12000, clock64 in the graph) and
 * block 0 merges the others' results through distributed shared memory. H200, tokens/s, without /
 * with: 7B x1 533.3-534.1 / 545.5-546.2 (three calls); 7B 128 x8 (1024 blocks of 8 warps, 4 waves)
 * 3062 / 2424, 2048 x8 1723 / 1496; clusters of 2 and 4 in between; 8B x1 (groups of 8 in blocks
 * of 2 heads) 241.5 / 240.3. */
static bool one_token_clusters(int n_tokens) {
    static const int allowed = tm_env_int("TM_ATTENTION_CLUSTER", 8);
    return n_tokens == 1 && allowed > 1 && tm_cluster_launch_available();
}

/* decode_whole_kernel for a padded group of G in clusters of C blocks: 16 warps a block for groups
 * of 1 without clusters (two or four kv heads a block; with 8, a 192-key context left some warps two
 * chunks: H200, 7B decode x1 518.6 on the split path, 502.4 at 8 warps, 530.9 at 16; 128 x8 2581 /
 * 2542 / 2823), else 8 (at 16 the group of 8's registers, 212 a thread, would not fit an SM). */
template <int KV, int HD, int G, int C, bool MMA, int FORM = 0>
static cudaError_t launch_whole_c(int n_tokens, const float *q, float *out, const kv_addressing &a, const int32_t *pages,
                                  const int64_t *page_offsets, const int32_t *n_keys, int n_head, float scale, out_copies copies, cudaStream_t s) {
    constexpr int KVH = whole_kv_heads(G, HD), W = G == 1 && C == 1 ? 16 : 8;
    const dim3 grid((unsigned)(n_tokens * (a.n_head_kv / KVH) * whole_head_batches(n_head / a.n_head_kv, G) * C));
    const auto kernel = decode_whole_kernel<KV, HD, G, W, C, MMA, FORM>;
    TM_CUDA_CHECK(tm_attention_carveout((const void *)kernel));
    return tm_launch_dependent_cluster(kernel, grid, dim3(32 * W), 0, s, C, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies);
}

/* Whether a one-token step in clusters (launch_one_token) takes 8-key slices: unless
 * TM_ATTENTION_SLICES=0 (a measuring aid: the 32-key chunks). */
static bool one_token_slices() {
    static const bool slices = tm_env_int("TM_ATTENTION_SLICES", 1) != 0;
    return slices;
}

/* A one-token step of a group of 1 in clusters of 8 (one_token_clusters): an f16 or 8-bit cache in
 * 8-key slices a warp (one_token_slices), the blocks pushing their results into block 0 by st.async
 * on block 0's mbarrier (decode_whole_kernel's FORM; TM_ATTENTION_SLICES=0,
 * TM_ATTENTION_PUSH=0 and TM_ATTENTION_ASYNC_PUSH=0, measuring aids, take the 32-key chunks, block 0
 * reading the others, and the plain stores behind a cluster barrier). Up to 256 keys each slice is one warp's, so the
 * chain a warp runs is ~4x shorter than a chunk's. H200, 7B decode x1 at 128 / 192-key prompts,
 * tokens/s, one binary, three rounds: chunks, read 563.1, 572.5, 573.1 / 569.1, 569.4, 568.9;
 * slices, pushed 573.4, 581.1, 576.2 / 570.2, 576.8, 572.4; the launch's exposed time in a step
 * 6.87 -> 6.05 us. A build of this form that spilled 8 bytes measured in between: chunks pushed
 * 575.5, 578.3 against 572.2, 572.8 read; slices in clusters of 4 560.8, 564.2, of 1 (16 warps a
 * block) 556.6, 556.8. The 8-bit cache (chunks), read / pushed: 540.0, 540.4 / 536.7, 546.3; its
 * slices (session 51; pushed by st.async, head dim 128 only: at 64 they spilled) against the chunks
 * pushed by plain stores, 7B x1 after a 512-key prompt, two binaries, two rounds: 529.9, 530.6 ->
 * 538.4, 538.2 (past 768 keys the split path stays the faster: tm_cuda_decode_attention_whole_keys). */
template <int KV, int HD>
static cudaError_t launch_one_token(const float *q, float *out, const kv_addressing &a, const int32_t *pages, const int64_t *page_offsets,
                                    const int32_t *n_keys, int n_head, float scale, out_copies copies, cudaStream_t s) {
    static const bool push = tm_env_int("TM_ATTENTION_PUSH", 1) != 0, async_push = tm_env_int("TM_ATTENTION_ASYNC_PUSH", 1) != 0;
    auto launch = push ? launch_whole_c<KV, HD, 1, 8, false, WHOLE_PUSH> : launch_whole_c<KV, HD, 1, 8, false, 0>;
    if constexpr (KV == KV_F16 || HD == 128) /* an 8-bit cache's slices at head dim 64 spilled (8-12 bytes): chunks there */
        if (one_token_slices())
            launch = push ? async_push ? launch_whole_c<KV, HD, 1, 8, false, WHOLE_SLICES | WHOLE_PUSH | WHOLE_ASYNC>
                                       : launch_whole_c<KV, HD, 1, 8, false, WHOLE_SLICES | WHOLE_PUSH>
                          : launch_whole_c<KV, HD, 1, 8, false, WHOLE_SLICES>;
#ifdef TM_BLOCK_STAMPS
    /* a measuring aid of stamp builds: the same launch twice (it is idempotent), the second on warm caches */
    static const bool twice = tm_env_int("TM_STAMPS_TWICE", 0) != 0;
    if (twice) TM_CUDA_CHECK(launch(1, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s));
#endif
    return launch(1, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
}

/* The one-token blocks of 2 query heads (whole_block_heads: groups of 4 and 8 at head dim 128, the
 * 70B's and the 8B's) in clusters of TM_ATTENTION_GROUP_SPLIT = 2 (the default) or 4 blocks (sm_90;
 * 1, a measuring aid: alone) that split the kv head's chunks between them and merge by the st.async
 * push into block 0, so each SM reads a half or a quarter of the kv head's keys and values (session
 * 45: the loads' part of the chain followed the bytes an SM reads). test_attention_cuda passed
 * under 2 and 4 (756), test_engine_cuda and test_end_to_end_cuda under 2. H200, one binary, 1 / 2 /
 * 4, decode tokens/s after 128-token prompts (4: one round): 70B x1 83.51, 83.53 / 84.06, 83.89 /
 * 81.54; 8B x1 246.6, 247.0 / 247.8, 246.0 / 247.1 (session 46); 1 / 2, session 47, another
 * machine: 70B x1 79.98, 79.85 / 80.19, 80.29; 8B x1 243.6, 242.2 / 243.6, 243.2. */
static int group_split() {
    static const int split = tm_env_int("TM_ATTENTION_GROUP_SPLIT", 2);
    return split == 2 || split == 4 ? split : 1;
}

/* The whole-context kernel's form for a step: clusters of 8 at one token of a group of 1
 * (one_token_clusters); tensor-core chunks for a larger group of an f16 cache (group_tensor_cores)
 * and for a group of 1 of an f16 cache past
 * TM_CUDA_DECODE_MMA_KEYS keys in the longest context (H200, 7B, tokens/s, scalar / tensor-core
 * chunks at every context: 2048 x8 1722, 1719 / 1765, 1757, the f16 kernel there moving ~3.5 TB/s;
 * 128 x8 3059, 3065 / 3009, 3007: a warp's one chunk, where the fragments' shuffles cost more than
 * the products save; both forms in one kernel by a branch on the context spilled and cost 128 x8
 * 2.3 %), else the scalar chunks. */
template <int KV, int HD, int G>
static cudaError_t launch_whole(int n_tokens, int longest_keys, const float *q, float *out, const kv_addressing &a, const int32_t *pages,
                                const int64_t *page_offsets, const int32_t *n_keys, int n_head, float scale, out_copies copies, cudaStream_t s) {
    if constexpr (G == 1) {
        if (one_token_clusters(n_tokens)) return launch_one_token<KV, HD>(q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
        if constexpr (KV == KV_F16)
            if (longest_keys > TM_CUDA_DECODE_MMA_KEYS)
                return launch_whole_c<KV, HD, G, 1, true>(n_tokens, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
    } else if (group_tensor_cores()) { /* the whole-context kernel reads an f16 or 8-bit cache */
        auto launch = launch_whole_c<KV, HD, G, 1, true>;
        if constexpr (G == 2)
            if (n_tokens == 1 && group_split() > 1 && tm_cluster_launch_available())
                launch = group_split() == 2 ? launch_whole_c<KV, HD, G, 2, true, WHOLE_PUSH | WHOLE_ASYNC>
                                            : launch_whole_c<KV, HD, G, 4, true, WHOLE_PUSH | WHOLE_ASYNC>;
        return launch(n_tokens, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
    }
    return launch_whole_c<KV, HD, G, 1, false>(n_tokens, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
}

/* launch_whole for the padded group G (1, 4 or 8). */
template <int KV, int HD>
static cudaError_t launch_whole_group(int G, int n_tokens, int longest_keys, const float *q, float *out, const kv_addressing &a,
                                      const int32_t *pages, const int64_t *page_offsets, const int32_t *n_keys, int n_head, float scale,
                                      out_copies copies, cudaStream_t s) {
    const auto launch = G == 1 ? launch_whole<KV, HD, 1> : G == 2 ? launch_whole<KV, HD, 2> : G == 4 ? launch_whole<KV, HD, 4> : launch_whole<KV, HD, 8>;
    return launch(n_tokens, longest_keys, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s);
}

/* The padded group (1, 4 or 8) a block of the whole-context kernel takes for a layout, or 0 where
 * it takes none (f32 cache, head dims other than 64 and 128, groups above 8, kv heads not whole
 * blocks of it). */
static int whole_group(int n_head, int n_head_kv, int head_dim, int kv_type) {
    if ((kv_type != KV_F16 && kv_type != KV_Q8) || (head_dim != 64 && head_dim != 128) || n_head_kv < 1 || n_head % n_head_kv) return 0;
    const int group = n_head / n_head_kv;
    if (group > 8) return 0;
    const int G = decode_block_heads(group);
    return n_head_kv % whole_kv_heads(G, head_dim) ? 0 : G;
}

/* Query heads a block of the whole-context kernel takes, for a padded group of G: G, but at one
 * token blocks of 2 where the group is exactly 4 or 8 and 2 heads fill a q8_1 block (head dim 128):
 * there a token has only its kv heads' blocks, and a warp taking all 8 heads is the longer chain
 * (H200, tokens/s, split path / blocks of the group / of 4 / of 2: 70B x1 72.49 / 71.83 / 73.26 /
 * 73.51, 8B x1 192.5 / 192.4 / - / 194.2); from 2 tokens the group's blocks are the faster (70B x8
 * 500.2 / 499.5 / 497.4 for 8 / 4 / 2 heads; 8B x8 1575 / - / 1564). With the chunks on tensor cores
 * (attend_group_mma, whose rows are 8 heads whatever the block takes) blocks of 2 still measured no
 * slower at one token: 70B x1 72.52 / 72.13 / 72.48 for 2 / 8 / 4 heads, 8B x1 241.7 / - / 241.0. */
static int whole_block_heads(int n_tokens, int n_head, int n_head_kv, int head_dim, int G) {
    return n_tokens == 1 && G >= 4 && n_head / n_head_kv == G && head_dim == 128 ? 2 : G;
}

/* Whether a step of n_tokens tokens gives the whole-context kernel of a group of 1 (16 warps a
 * block, one block an SM) at least TM_ATTENTION_WHOLE_WAVE percent (75 unless set: a measuring aid;
 * above 100, never) of a wave of resident blocks: then it is the faster at any context. H200, 7B
 * layout, one launch (split path with its combine / whole): 2080 keys, 1 token 26.0 / 69.2 us, 4
 * 63.9 / 75.2, 5 76.6 / 77.6, 6 88.0 / 81.5, 8 111.8 / 92.0; 576 keys, 4 25.2 / 29.8, 6 32.4 / 32.4,
 * 7 40.6 / 34.1. End to end, 7B 2048 x8 (steps of 1-8 tokens): never 1283 / 1285 tokens/s, 75 %
 * (7 tokens and up) 1341 / 1341, 40 % (4 and up) 1334 / 1340; 7B 512 x4: never 1429 / 1430, 40 %
 * 1347 / 1339. */
template <int HD> static bool whole_fills_wave(int n_tokens, int n_head_kv) {
    static const int percent = tm_env_int("TM_ATTENTION_WHOLE_WAVE", 75);
    int resident = 0;
    if (tm_resident_blocks((const void *)decode_whole_kernel<KV_F16, HD, 1, 16, 1, false>, 32 * 16, 0, &resident) != cudaSuccess) return false;
    return (int64_t)n_tokens * (n_head_kv / whole_kv_heads(1, HD)) * 100 >= (int64_t)resident * percent;
}

/* Where the whole-context kernel beats the split path (H200, decode tokens/s at 129-192 keys,
 * split / whole): groups of 1 up to 256 keys (one 32-key chunk for each of a kv head's 8 warps;
 * 7B x1 518.6 / 530.9, x8 2581 / 2823; at 513-576 keys, 7B 512 x4 with 4 warps a head, 1431 / 1050
 * and 1429 / 1334 at 16 warps; at 2080 keys, 7B 2048 x8 at every token count, 1282 / 1140, but see
 * whole_fills_wave); larger groups up to 256 keys
 * for several tokens (70B x8 484.2 / 495.8) and at one token in blocks of 2 heads (whole_block_heads);
 * at one token in blocks of the whole group they lose (70B x1 71.55 / 70.91: 8 blocks of 212
 * registers a thread against the split path's 32-key splits of two heads a warp), so the layouts
 * that cannot take blocks of 2 (head dim 64, groups padded to 4 or 8) keep the split path there. */
extern "C" int tm_cuda_decode_attention_whole_keys(int n_tokens, int n_head, int n_head_kv, int head_dim, int kv_type) {
    const int G = whole_group(n_head, n_head_kv, head_dim, kv_type);
    const bool one_token_whole_group = n_tokens < 2 && G > 1 && whole_block_heads(n_tokens, n_head, n_head_kv, head_dim, G) == G;
    if (!G || one_token_whole_group) return 0;
    /* one token of a group of 1 of an f16 cache in clusters of 8 (launch_one_token: 8-key slices,
     * 256 keys a pass of a cluster's warps) at any context: H200, 7B decode x1, one binary, two
     * rounds, split path / clusters: 512-key prompt 519.6, 521.4 / 550.1, 550.0 tokens/s; 2048-key
     * prompt 432.2, 435.5 / 451.9, 454.7 (session 47; the 8-bit cache's chunks there unmeasured) */
    if (G == 1 && kv_type == KV_F16 && one_token_clusters(n_tokens)) return INT_MAX;
    if (G == 1 && (head_dim == 64 ? whole_fills_wave<64>(n_tokens, n_head_kv) : whole_fills_wave<128>(n_tokens, n_head_kv))) return INT_MAX;
    /* one or four tokens of a group of 1 of an 8-bit cache without splits up to 768 keys: H200, 7B,
     * one binary, two rounds, split path past 256 keys / no splits at any context (session 48),
     * decode tokens/s after a 512-key prompt (513-576 keys) x1 503.3, 504.3 / 530.3, 526.4, x4 1516,
     * 1522 / 1583, 1579; after 1024 x1 480.2, 483.3 / 483.5, 484.7, x4 1425, 1426 / 1360, 1364; 1536 x1
     * 448.8, 452.6 / 463.0, 461.0, x4 1320, 1320 / 1224, 1217; 2048 x1 443.1, 439.7 / 430.1, 429.3, x4
     * 1238, 1236 / 1122, 1114. 768 lies between the measured gain (576) and loss (1024 at x4); the x1
     * steps from 1024 to 1536 keys, even or a little faster without splits, stay split. Session 51:
     * the one-token steps in 8-key slices (launch_one_token) at every context against this rule
     * (chunks up to 768 keys, split past), H200, two binaries, two rounds: after 512 keys 529.9, 530.6
     * -> 538.4, 538.2; after 2048 444.9, 445.4 -> 431.9, 431.3 (the f16 cache's slices there 457.8,
     * 457.6): so the slices take the one-token steps up to 768 keys and the split path the rest. Two tokens
     * lose without splits (after 512: 868.4, 866.4 -> 836.6, 833.2; why was not measured), three were
     * not measured: both keep 256. This rule against the old, after 512: x1 507.8, 507.7 -> 528.3,
     * 530.6, x4 1511.7, 1512.8 -> 1585.7, 1580.0. (The f16 cache's 4-token steps without splits: 512 -2.2 %, 1024
     * -4.4 %, 1536 -1.4 %, 2048 +1.4 %: kept at 256.) */
    if (G == 1 && kv_type == KV_Q8 && (n_tokens == 1 || n_tokens == 4)) return 768;
    return 256;
}

extern "C" int tm_cuda_decode_attention_whole_supported(int n_head, int n_head_kv, int head_dim, int kv_type) {
    return whole_group(n_head, n_head_kv, head_dim, kv_type) != 0;
}

extern "C" int tm_cuda_decode_attention_whole(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                              const tm_cuda_kv *kv, const int32_t *pages, const int64_t *page_offsets,
                                              const int32_t *n_keys, int longest_keys, void *q8, void *out16, void *stream) {
    if (!kv || !tm_cuda_kv_valid(kv, head_dim)) return cudaErrorInvalidValue;
    const int group_padded = whole_group(n_head, n_head_kv, head_dim, kv->type);
    if (!group_padded) return cudaErrorNotSupported;
    if ((q8 && (int64_t)n_head * head_dim % 256) || (uintptr_t)out16 % 16) return cudaErrorInvalidValue;
    const int G = whole_block_heads(n_tokens, n_head, n_head_kv, head_dim, group_padded);
    if (n_tokens == 0) return cudaSuccess;
    const kv_addressing a = make_addressing(*kv, n_head_kv, head_dim);
    const float scale = 1.0f / sqrtf((float)head_dim);
    cudaStream_t s = (cudaStream_t)stream;
    const int64_t n_out = (int64_t)n_tokens * n_head * head_dim;
    const bool in_kernel = q8 && n_head / n_head_kv % G == 0; /* else quantized after, by its own launch */
    const out_copies copies = {in_kernel ? q8_out_at(q8, n_tokens, n_out / n_tokens) : q8_out_at(NULL, 0, 0), (__half *)out16};
    const auto launch = kv->type == KV_Q8 ? (head_dim == 64 ? launch_whole_group<KV_Q8, 64> : launch_whole_group<KV_Q8, 128>)
                                          : (head_dim == 64 ? launch_whole_group<KV_F16, 64> : launch_whole_group<KV_F16, 128>);
    TM_CUDA_CHECK(launch(G, n_tokens, longest_keys, q, out, a, pages, page_offsets, n_keys, n_head, scale, copies, s));
    if (q8 && !in_kernel) return tm_cuda_quantize_q8_1(out, n_tokens, n_out / n_tokens, q8, stream);
    return cudaSuccess;
}

/* ---- decode, any head dim (a multiple of 32): a block per (token, query head, key split) ---- */

/* Score of one key against the query (in shared memory, pre-scaled): 16-byte loads of the key
 * (an 8-bit key: the int8 dot product times the key's scale). */
template <int KV>
__device__ __forceinline__ float key_score(const kv_addressing &a, const uint8_t *key, const float *query, int head_dim) {
    float dot = 0;
    if (KV == KV_Q8) {
        const uint4 *k16 = reinterpret_cast<const uint4 *>(key);
        for (int c = 0; c < head_dim / 16; c++) {
            float x[16];
            unpack_piece<KV_Q8, 16>(k16[c], x);
#pragma unroll
            for (int j = 0; j < 16; j++) dot += x[j] * query[16 * c + j];
        }
        dot *= __ldg(kv_scale_slot(a, key));
    } else if (KV == KV_F16) {
        const uint4 *k8 = reinterpret_cast<const uint4 *>(key);
        for (int c = 0; c < head_dim / 8; c++) {
            uint4 packed = k8[c];
            const __half2 *h = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float2 k = __half22float2(h[j]);
                dot += k.x * query[8 * c + 2 * j] + k.y * query[8 * c + 2 * j + 1];
            }
        }
    } else {
        const float4 *k4 = reinterpret_cast<const float4 *>(key);
        for (int c = 0; c < head_dim / 4; c++) {
            float4 k = k4[c];
            dot += k.x * query[4 * c] + k.y * query[4 * c + 1] + k.z * query[4 * c + 2] + k.w * query[4 * c + 3];
        }
    }
    return dot;
}

/* One block per (query token, query head, key split). The four warps take the split's keys 32 at
 * a time: lane j scores key j of the warp's chunk on its own (the whole key vector in 16-byte
 * loads, so many loads are in flight), the chunk updates the warp's online softmax, and the
 * lanes, each owning head_dim / 32 output dimensions, accumulate the chunk's values. The warps
 * merge in the block. One split: the normalized result goes straight to out. Several: the block
 * writes its (max, sum, unnormalized values) to partials and combine_kernel merges the splits. */
template <int KV>
__global__ void __launch_bounds__(32 * WARPS) paged_attention_kernel(const float *q, float *out, float *partials, kv_addressing a,
                                                                     const int32_t *pages, const int64_t *page_offsets,
                                                                     const int32_t *n_keys, int n_head, int head_dim, float scale,
                                                                     int min_keys_per_split) {
    tm_grid_dependency();
    const int token = blockIdx.x / n_head, head = blockIdx.x % n_head, split = blockIdx.y, n_splits = gridDim.y;
    const int kv_head = head / (n_head / a.n_head_kv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int per_lane = head_dim / 32;
    const int32_t *table = pages + page_offsets[token];
    int begin, end;
    split_range(n_keys[token], split, n_splits, min_keys_per_split, begin, end);
    __shared__ float query[MAX_HEAD_DIM];
    __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][MAX_HEAD_DIM];
    const float *q_row = q + ((int64_t)token * n_head + head) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) query[d] = q_row[d] * scale;
    __syncthreads();
    float acc[MAX_HEAD_DIM / 32]; /* fixed-bound loops with a guard keep it in registers */
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; i++) acc[i] = 0;
    float running_max = -INFINITY, running_sum = 0;
    for (int chunk = begin + 32 * warp; chunk < end; chunk += 32 * WARPS) {
        const int p = chunk + lane;
        /* lane j finds key j's vectors once; the value loop below takes key k's address from lane k */
        float score = -INFINITY;
        unsigned long long value_address = 0;
        float value_scale = 1.0f; /* the 8-bit cache's */
        if (p < end) {
            score = key_score<KV>(a, kv_address32(a, table, p, kv_head, false), query, head_dim);
            value_address = (unsigned long long)kv_address32(a, table, p, kv_head, true);
            if (KV == KV_Q8) value_scale = __ldg(kv_scale_slot(a, (const uint8_t *)value_address));
        }
        const float new_max = fmaxf(running_max, max_over_warp(score)); /* finite: key `chunk` is valid */
        const float correction = expf(running_max - new_max), weight = expf(score - new_max);
        running_sum = running_sum * correction + sum_over_warp(weight);
        running_max = new_max;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / 32; i++) acc[i] *= correction;
        const int n_valid = min(32, end - chunk);
#pragma unroll 4
        for (int k = 0; k < n_valid; k++) {
            const float w = __shfl_sync(0xffffffffu, weight, k) * (KV == KV_Q8 ? __shfl_sync(0xffffffffu, value_scale, k) : 1.0f);
            const uint8_t *value = (const uint8_t *)__shfl_sync(0xffffffffu, value_address, k);
#pragma unroll
            for (int i = 0; i < MAX_HEAD_DIM / 32; i++)
                if (i < per_lane) acc[i] += w * kv_element<KV>(value, lane + 32 * i);
        }
    }
    if (lane == 0) {
        warp_max[warp] = running_max;
        warp_sum[warp] = running_sum;
    }
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; i++)
        if (i < per_lane) warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float block_max = -INFINITY;
    for (int w = 0; w < WARPS; w++) block_max = fmaxf(block_max, warp_max[w]);
    float total = 0, factor[WARPS];
    for (int w = 0; w < WARPS; w++) {
        factor[w] = warp_sum[w] > 0 ? expf(warp_max[w] - block_max) : 0.0f; /* a warp that saw no key adds nothing */
        total += warp_sum[w] * factor[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0;
        for (int w = 0; w < WARPS; w++) sum += warp_acc[w][d] * factor[w];
        store_split_result(out, partials, blockIdx.x, split, n_splits, head_dim, d, sum, block_max, total);
    }
}

/* out = sum_s acc_s e^(m_s - m) / sum_s l_s e^(m_s - m) for each (token, head) row of head_dim
 * values; block b takes values 256b .. 256b + 255 of the n_values (rows back to back), a warp 32
 * of one row (head_dim % 32 == 0); with copies.q8.qs also out as q8_1 (quant.cuh's layout,
 * n_values % 256 == 0: a block is one 256-value q8 block), with copies.f16 as f16.
 * Splits are taken 32 at a time, a lane per split: each warp loads the (max, sum) pairs of 32 splits
 * of its row in one trip, reduces them with shuffles, and each thread then adds its dimension's 32
 * values with every load in flight (weights e^(m_s - m) shuffled from the split's lane). A loop over
 * the splits one after another, each iteration's loads waiting for the last, measured 4.5-5 us at 9
 * splits (H200, 7B decode). Empty splits (sum 0) add nothing. */
__global__ void __launch_bounds__(256) combine_kernel(const float *partials, float *out, int64_t n_values, int n_splits, int head_dim,
                                                      out_copies copies) {
    tm_grid_dependency();
    const int64_t stride = head_dim + 2;
    const int lane = threadIdx.x % 32;
    const int64_t base = (int64_t)blockIdx.x * 256 + threadIdx.x - lane; /* the warp's first value */
    if (base >= n_values) return; /* a last block's idle warps: never with copies.q8 */
    const float *first = partials + base / head_dim * n_splits * stride;
    const int d = (int)(base % head_dim) + lane;
    float global_max = -INFINITY;
    for (int s0 = 0; s0 < n_splits; s0 += 32) {
        const int s = s0 + lane;
        if (s < n_splits && first[s * stride + 1] > 0) global_max = fmaxf(global_max, first[s * stride]);
    }
    global_max = max_over_warp(global_max);
    float total = 0;
    for (int s0 = 0; s0 < n_splits; s0 += 32) {
        const int s = s0 + lane;
        const float sum = s < n_splits ? first[s * stride + 1] : 0.0f;
        if (sum > 0) total += sum * expf(first[s * stride] - global_max);
    }
    total = sum_over_warp(total);
    float value = 0;
    for (int s0 = 0; s0 < n_splits; s0 += 32) {
        const int s = s0 + lane, count = min(32, n_splits - s0);
        const float sum = s < n_splits ? first[s * stride + 1] : 0.0f;
        const float weight = sum > 0 ? expf(first[s * stride] - global_max) : 0.0f; /* split s's factor, on its lane */
#pragma unroll 8
        for (int j = 0; j < count; j++) {
            const float w = __shfl_sync(0xffffffffu, weight, j);
            if (w > 0) value += first[(s0 + j) * stride + 2 + d] * w;
        }
    }
    out[base + lane] = value / total;
    if (copies.f16) copies.f16[base + lane] = __float2half_rn(value / total);
    if (copies.q8.qs) quantize_q8_1_block(value / total, base + lane, copies.q8);
}

extern "C" int tm_cuda_paged_attention(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                       const tm_cuda_kv *kv, const int32_t *pages, const int64_t *page_offsets,
                                       const int32_t *n_keys, int n_splits, int min_keys_per_split, float *partials, void *q8,
                                       void *out16, void *stream) {
    if (!kv || !tm_cuda_kv_valid(kv, head_dim) || head_dim > MAX_HEAD_DIM || head_dim % 32 || n_head % n_head_kv || n_splits < 1 || n_splits > 65535 || min_keys_per_split < 1 ||
        (n_splits > 1 && !partials) || (q8 && (int64_t)n_head * head_dim % 256) || (uintptr_t)out16 % 16)
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    kv_addressing a = make_addressing(*kv, n_head_kv, head_dim);
    float scale = 1.0f / sqrtf((float)head_dim);
    cudaStream_t s = (cudaStream_t)stream;
    const int group = n_head / n_head_kv;
    const dim3 kv_grid((unsigned)(n_tokens * n_head_kv), (unsigned)n_splits);
    const auto decode = kv->type == KV_F32 ? launch_decode_any<KV_F32> : kv->type == KV_Q8 ? launch_decode_any<KV_Q8> : launch_decode_any<KV_F16>;
    int status = decode(head_dim, kv_grid, group, q, out, partials, a, pages, page_offsets, n_keys, n_head, scale, min_keys_per_split, s);
    if (status == NOT_THIS_KERNEL) { /* other head dims: the generic kernel, a block per query head, its warps splitting the keys */
        const dim3 grid((unsigned)(n_tokens * n_head), (unsigned)n_splits), block(32 * WARPS);
        const auto kernel = kv->type == KV_F32 ? paged_attention_kernel<KV_F32> : kv->type == KV_Q8 ? paged_attention_kernel<KV_Q8>
                                                                                                   : paged_attention_kernel<KV_F16>;
        status = tm_launch_dependent(kernel, grid, block, 0, s, q, out, partials, a, pages, page_offsets, n_keys, n_head, head_dim, scale,
                                     min_keys_per_split);
    }
    TM_CUDA_CHECK((cudaError_t)status);
    const int64_t n_out = (int64_t)n_tokens * n_head * head_dim;
    if (n_splits > 1)
        TM_LAUNCH_DEPENDENT(combine_kernel, dim3((unsigned)((n_out + 255) / 256)), dim3(256), 0, s, partials, out, n_out, n_splits,
                            head_dim, out_copies{q8_out_at(q8, n_tokens, n_out / n_tokens), (__half *)out16});
    else { /* one split: out is final, its copies made by launches of their own */
        if (q8) TM_CUDA_CHECK((cudaError_t)tm_cuda_quantize_q8_1(out, n_tokens, n_out / n_tokens, q8, stream));
        if (out16) TM_CUDA_CHECK((cudaError_t)tm_cuda_float_to_half(out, n_out, out16, stream));
    }
    return cudaSuccess;
}

/* ---- prefill: flash attention over query tiles ------------------------------------------- */

/* Rows of a tile: (token, query head of one kv head's group) pairs; CHUNK keys per pass. */
template <int HD> struct flash_shape {
    static constexpr int rows = HD <= 128 ? 64 : 32, chunk = 32, rows_per_warp = rows / WARPS, per_lane = HD / 32;
    static constexpr size_t shared_bytes = sizeof(float) * ((size_t)rows * HD + (size_t)chunk * (HD + 1) + (size_t)chunk * HD);
};

/* One block per (tile, kv head). A tile is up to rows / group consecutive batch tokens of one
 * stream; every query row of the tile and the group's heads is scored against chunks of keys
 * 0..max position, staged in shared memory, with the causal mask key <= row's position and an
 * online softmax per row (lane j scores key j of the chunk; each lane accumulates head_dim / 32
 * output dimensions of every row its warp owns). */
template <int HD, int KV>
__global__ void __launch_bounds__(32 * WARPS) flash_attention_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages,
                                                                     const int64_t *page_offsets, const int32_t *positions,
                                                                     const int32_t *tiles, int n_head, float scale) {
    typedef flash_shape<HD> shape;
    extern __shared__ float shared[];
    float *q_tile = shared, *k_chunk = q_tile + shape::rows * HD, *v_chunk = k_chunk + shape::chunk * (HD + 1);
    const int first = tiles[2 * blockIdx.x], n_tokens = tiles[2 * blockIdx.x + 1], kv_head = blockIdx.y;
    const int group = n_head / a.n_head_kv, n_rows = n_tokens * group;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int32_t *table = pages + page_offsets[first];
    int max_position = 0;
    for (int t = 0; t < n_tokens; t++) max_position = max(max_position, positions[first + t]);
    /* the tile's queries, pre-scaled */
    for (int i = threadIdx.x; i < n_rows * HD; i += blockDim.x) {
        int row = i / HD, d = i % HD, token = first + row / group, head = kv_head * group + row % group;
        q_tile[i] = q[((int64_t)token * n_head + head) * HD + d] * scale;
    }
    float row_max[shape::rows_per_warp], row_sum[shape::rows_per_warp], acc[shape::rows_per_warp][shape::per_lane];
    int row_position[shape::rows_per_warp];
#pragma unroll
    for (int r = 0; r < shape::rows_per_warp; r++) {
        int row = warp * shape::rows_per_warp + r;
        row_position[r] = row < n_rows ? positions[first + row / group] : -1;
        row_max[r] = -INFINITY, row_sum[r] = 0;
#pragma unroll
        for (int i = 0; i < shape::per_lane; i++) acc[r][i] = 0;
    }
    for (int chunk_start = 0; chunk_start <= max_position; chunk_start += shape::chunk) {
        __syncthreads(); /* the previous chunk is consumed (and the queries are in) */
        for (int i = threadIdx.x; i < shape::chunk * HD; i += blockDim.x) {
            int key = i / HD, d = i % HD, p = chunk_start + key;
            float k_value = 0, v_value = 0;
            if (p <= max_position) {
                const uint8_t *key = kv_address(a, table, p, kv_head, false), *value = kv_address(a, table, p, kv_head, true);
                k_value = kv_element<KV>(key, d), v_value = kv_element<KV>(value, d);
                if (KV == KV_Q8) k_value *= kv_scale<HD>(a, key), v_value *= kv_scale<HD>(a, value);
            }
            k_chunk[key * (HD + 1) + d] = k_value;
            v_chunk[key * HD + d] = v_value;
        }
        __syncthreads();
        const int key_position = chunk_start + lane;
#pragma unroll
        for (int r = 0; r < shape::rows_per_warp; r++) {
            if (row_position[r] < chunk_start) continue; /* masked out entirely (or an empty row); warp-uniform */
            const float *query = q_tile + (warp * shape::rows_per_warp + r) * HD, *key = k_chunk + lane * (HD + 1);
            float score = 0;
#pragma unroll 8
            for (int d = 0; d < HD; d++) score += query[d] * key[d];
            if (key_position > row_position[r]) score = -INFINITY;
            const float new_max = fmaxf(row_max[r], max_over_warp(score)); /* finite: key chunk_start is visible */
            const float correction = expf(row_max[r] - new_max), weight = expf(score - new_max);
            row_sum[r] = row_sum[r] * correction + sum_over_warp(weight);
            row_max[r] = new_max;
#pragma unroll
            for (int i = 0; i < shape::per_lane; i++) acc[r][i] *= correction;
            for (int k = 0; k < shape::chunk; k++) {
                float w = __shfl_sync(0xffffffffu, weight, k);
#pragma unroll
                for (int i = 0; i < shape::per_lane; i++) acc[r][i] += w * v_chunk[k * HD + lane + 32 * i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < shape::rows_per_warp; r++) {
        int row = warp * shape::rows_per_warp + r;
        if (row >= n_rows) continue;
        int token = first + row / group, head = kv_head * group + row % group;
        float *result = out + ((int64_t)token * n_head + head) * HD;
#pragma unroll
        for (int i = 0; i < shape::per_lane; i++) result[lane + 32 * i] = acc[r][i] / row_sum[r];
    }
}

template <int HD, int KV>
static cudaError_t launch_flash(const float *q, float *out, int n_head, kv_addressing a, const int32_t *pages, const int64_t *page_offsets,
                                const int32_t *positions, const int32_t *tiles, int n_tiles, cudaStream_t stream) {
    typedef flash_shape<HD> shape;
    dim3 grid((unsigned)n_tiles, (unsigned)a.n_head_kv);
    float scale = 1.0f / sqrtf((float)HD);
    TM_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shape::shared_bytes));
    flash_attention_kernel<HD, KV><<<grid, 32 * WARPS, shape::shared_bytes, stream>>>(q, out, a, pages, page_offsets, positions, tiles,
                                                                                     n_head, scale);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* launch_flash for the cache's type. */
template <int HD>
static cudaError_t launch_flash_any(int kv_type, const float *q, float *out, int n_head, kv_addressing a, const int32_t *pages,
                                    const int64_t *page_offsets, const int32_t *positions, const int32_t *tiles, int n_tiles,
                                    cudaStream_t stream) {
    const auto launch = kv_type == KV_F32 ? launch_flash<HD, KV_F32> : kv_type == KV_Q8 ? launch_flash<HD, KV_Q8> : launch_flash<HD, KV_F16>;
    return launch(q, out, n_head, a, pages, page_offsets, positions, tiles, n_tiles, stream);
}

extern "C" int tm_cuda_flash_tile_tokens(int head_dim, int n_head, int n_head_kv) {
    if (n_head_kv < 1 || n_head % n_head_kv) return 0;
    int rows = head_dim == 256 ? flash_shape<256>::rows
               : head_dim == 128 ? flash_shape<128>::rows
               : head_dim == 64  ? flash_shape<64>::rows
               : head_dim == 32  ? flash_shape<32>::rows
                                 : 0;
    return rows / (n_head / n_head_kv);
}

extern "C" int tm_cuda_flash_attention(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                                       const int32_t *pages, const int64_t *page_offsets, const int32_t *positions, const int32_t *tiles,
                                       int n_tiles, void *stream) {
    if (!kv || !tm_cuda_kv_valid(kv, head_dim) || tm_cuda_flash_tile_tokens(head_dim, n_head, n_head_kv) < 1) return cudaErrorInvalidValue;
    if (n_tiles == 0) return cudaSuccess;
    kv_addressing a = make_addressing(*kv, n_head_kv, head_dim);
    cudaStream_t s = (cudaStream_t)stream;
    const auto launch = head_dim == 32 ? launch_flash_any<32> : head_dim == 64 ? launch_flash_any<64> : head_dim == 128 ? launch_flash_any<128>
                                                                                                                       : launch_flash_any<256>;
    return launch(kv->type, q, out, n_head, a, pages, page_offsets, positions, tiles, n_tiles, s);
}
