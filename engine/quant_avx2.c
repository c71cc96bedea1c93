/*
 * quant_avx2.c - AVX2/FMA entry points of the weight-type table, installed at run time by
 * quant.c when the CPU reports avx2 and fma.
 *
 * DESIGN: every quantized dot unpacks 32 weights into 32 unsigned bytes, multiplies them with
 * the signed activation bytes through maddubs (u8 x i8 -> i16 pairs, no saturation is possible
 * for quants <= 63 and activations in [-127, 127]), widens to int32 and scales once per
 * (sub-)block, exactly like the scalar reference; only the final float sums differ in order.
 * Offsets (q-8, q-16, q-32) are applied through the activation sums, not per element.
 * The functions carry target attributes, so this file builds without -mavx2 and is only called
 * after the CPU check.
 */
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TM_AVX2 __attribute__((target("avx2,fma,f16c")))

TM_AVX2 static inline float hsum_f32x8(__m256 v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}
/* Half to float with the F16C instruction (the scalar helper branches; this is one op). */
TM_AVX2 static inline float half(tm_f16_t h) { return _cvtsh_ss(h); }

TM_AVX2 static inline float hsum_f32x4(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* u8 x i8 products, summed in groups of four into int32 lanes. */
TM_AVX2 static inline __m256i dot_u8_i8(__m256i unsigned_bytes, __m256i signed_bytes) {
    __m256i pairs = _mm256_maddubs_epi16(unsigned_bytes, signed_bytes);
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31). */
TM_AVX2 static inline __m256i unpack_nibbles_32(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}
/* Bit j of a 32-bit field -> byte j as 0x10 (the fifth bit of a 5-bit quant) or 0. */
TM_AVX2 static inline __m256i fifth_bits_32(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i byte_index = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                 0x0101010101010101, 0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), byte_index);
    const __m256i bit_of_byte = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit_of_byte), bit_of_byte);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* ---- plain floats ------------------------------------------------------------------------ */

TM_AVX2 static float dot_f32_f32(const void *blocks, const float *x, int64_t n) {
    const float *w = blocks;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float sum = hsum_f32x8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += w[i] * x[i];
    return sum;
}
TM_AVX2 static float dot_f32_f16(const void *blocks, const float *x, int64_t n) {
    const tm_f16_t *w = blocks;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8)));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
    }
    float sum = hsum_f32x8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += tm_f16_to_f32(w[i]) * x[i];
    return sum;
}
TM_AVX2 static float dot_f32_bf16(const void *blocks, const float *x, int64_t n) {
    const tm_bf16_t *w = blocks;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i)));
        __m256i h1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i + 8)));
        __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(h0, 16));
        __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(h1, 16));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
    }
    float sum = hsum_f32x8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += tm_bf16_to_f32(w[i]) * x[i];
    return sum;
}

/* ---- the 32-element formats x Q8_0 ------------------------------------------------------- */

/* sum(q*x) and sum(x) of one block, as int32 vectors. */
TM_AVX2 static inline void block_sums(__m256i q, const int8_t *xq, __m256i *qx, __m256i *x_sum) {
    __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    *qx = dot_u8_i8(q, x);
    *x_sum = dot_u8_i8(_mm256_set1_epi8(1), x);
}

/* signed weights (-16..15) x signed activations through |w| and sign(w)*x: one maddubs */
TM_AVX2 static inline __m256i dot_signed(__m256i w, const int8_t *xq) {
    __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    return dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

TM_AVX2 static float dot_q8_q4_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK; i++) {
        __m256i centred = dot_signed(_mm256_sub_epi8(unpack_nibbles_32(b[i].qs), _mm256_set1_epi8(8)), a[i].qs);
        __m256 scale = _mm256_set1_ps(half(b[i].d) * half(a[i].d));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(centred), acc);
    }
    return hsum_f32x8(acc);
}
TM_AVX2 static float dot_q8_q5_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK; i++) {
        __m256i q = _mm256_or_si256(unpack_nibbles_32(b[i].qs), fifth_bits_32(b[i].qh));
        __m256i centred = dot_signed(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), a[i].qs);
        __m256 scale = _mm256_set1_ps(half(b[i].d) * half(a[i].d));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(centred), acc);
    }
    return hsum_f32x8(acc);
}
TM_AVX2 static float dot_q8_q4_1(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_1 *b = blocks;
    const tm_block_q8_0 *a = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK; i++) {
        __m256i qx, x_sum;
        block_sums(unpack_nibbles_32(b[i].qs), a[i].qs, &qx, &x_sum);
        float da = half(a[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].d) * da), _mm256_cvtepi32_ps(qx), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].m) * da), _mm256_cvtepi32_ps(x_sum), acc);
    }
    return hsum_f32x8(acc);
}
TM_AVX2 static float dot_q8_q5_1(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_1 *b = blocks;
    const tm_block_q8_0 *a = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK; i++) {
        __m256i q = _mm256_or_si256(unpack_nibbles_32(b[i].qs), fifth_bits_32(b[i].qh));
        __m256i qx, x_sum;
        block_sums(q, a[i].qs, &qx, &x_sum);
        float da = half(a[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].d) * da), _mm256_cvtepi32_ps(qx), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].m) * da), _mm256_cvtepi32_ps(x_sum), acc);
    }
    return hsum_f32x8(acc);
}
TM_AVX2 static float dot_q8_q8_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q8_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK; i++) {
        __m256i products = dot_signed(_mm256_loadu_si256((const __m256i *)b[i].qs), a[i].qs);
        __m256 scale = _mm256_set1_ps(half(b[i].d) * half(a[i].d));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), acc);
    }
    return hsum_f32x8(acc);
}

/* ---- k-quants x Q8_K --------------------------------------------------------------------- */

/* The eight 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a q4_k/q5_k block, unpacked
 * with 32-bit operations: the same mapping as tm_q4k_scale_min, without a branch per value. */
static inline void unpack_k_scales(const uint8_t packed[12], uint32_t out[4]) {
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    uint32_t word[3];
    memcpy(word, packed, 12);
    out[0] = word[0] & low6;                                         /* scales 0..3 */
    out[1] = (word[2] & low4) | (((word[0] >> 6) & low2) << 4);      /* scales 4..7 */
    out[2] = word[1] & low6;                                         /* mins 0..3 */
    out[3] = ((word[2] >> 4) & low4) | (((word[1] >> 6) & low2) << 4); /* mins 4..7 */
}

/* Shuffle masks that broadcast 16-bit lane s of a vector to all 16 lanes. */
static const uint8_t broadcast_lane[8][32] = {
#define LANE(s) {2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, \
                 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, \
                 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1}
    LANE(0), LANE(1), LANE(2), LANE(3), LANE(4), LANE(5), LANE(6), LANE(7),
#undef LANE
};

/* Scales as 16-bit lanes (both 128-bit halves), and sum_j min_j * (activation sum of sub-block j). */
TM_AVX2 static inline __m128i pair_sums(const int16_t *bsums) {
    return _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums), _mm_loadu_si128((const __m128i *)(bsums + 8)));
}
TM_AVX2 static inline __m256i k_scales_and_mins(const uint8_t packed[12], __m128i sums, __m128i *min_products) {
    uint32_t unpacked[4];
    unpack_k_scales(packed, unpacked);
    /* built from registers: a vector load of the four just-stored words would stall on store forwarding */
    __m128i scales_mins = _mm_set_epi32((int)unpacked[3], (int)unpacked[2], (int)unpacked[1], (int)unpacked[0]);
    __m128i mins16 = _mm_cvtepu8_epi16(_mm_srli_si128(scales_mins, 8));
    *min_products = _mm_madd_epi16(mins16, sums); /* 4 int32 partial sums */
    __m128i scales16 = _mm_cvtepu8_epi16(scales_mins);
    return _mm256_set_m128i(scales16, scales16);
}

TM_AVX2 static float dot_q8_q4_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_k *b = blocks;
    const tm_block_q8_k *a = xq;
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_min = _mm_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        /* the next blocks' 144 bytes, a few blocks ahead (measured +10-20 % single-threaded) */
        const char *ahead = (const char *)(b + i + 8);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(ahead + 128, _MM_HINT_T0);
        __m128i min_products;
        __m256i scales = k_scales_and_mins(b[i].scales, pair_sums(a[i].bsums), &min_products);
        __m256i sumi = _mm256_setzero_si256();
        for (int chunk = 0; chunk < 4; chunk++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * chunk));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * chunk));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * chunk + 32));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(q, low_mask), x1);
            __m256i p2 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low_mask), x2);
            __m256i s1 = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * chunk]));
            __m256i s2 = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * chunk + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p1, s1), _mm256_madd_epi16(p2, s2)));
        }
        float d = a[i].d * half(b[i].d), dmin = a[i].d * half(b[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_min = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(min_products), acc_min);
    }
    return hsum_f32x8(acc) - hsum_f32x4(acc_min);
}

TM_AVX2 static float dot_q8_q5_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_k *b = blocks;
    const tm_block_q8_k *a = xq;
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_min = _mm_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        __m128i min_products;
        __m256i scales = k_scales_and_mins(b[i].scales, pair_sums(a[i].bsums), &min_products);
        __m256i qh = _mm256_loadu_si256((const __m256i *)b[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int chunk = 0; chunk < 4; chunk++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * chunk));
            /* bits 2*chunk and 2*chunk+1 of each qh byte are the fifth bits; the 16-bit shifts
             * cannot move a bit across bytes into position 0 of a byte */
            __m256i high1 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * chunk)), one);
            __m256i high2 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * chunk + 1)), one);
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(q, low_mask), _mm256_slli_epi16(high1, 4));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low_mask), _mm256_slli_epi16(high2, 4));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * chunk));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * chunk + 32));
            __m256i s1 = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * chunk]));
            __m256i s2 = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * chunk + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q1, x1), s1));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q2, x2), s2));
        }
        float d = a[i].d * half(b[i].d), dmin = a[i].d * half(b[i].dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_min = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(min_products), acc_min);
    }
    return hsum_f32x8(acc) - hsum_f32x4(acc_min);
}

TM_AVX2 static float dot_q8_q6_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q6_k *b = blocks;
    const tm_block_q8_k *a = xq;
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    const __m256i two_bits = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        /* 16 signed scales as 16-bit lanes; the q-32 offset: 32 * sum_g scale_g * bsum_g */
        __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b[i].scales));
        __m256i offset = _mm256_madd_epi16(scales16, _mm256_loadu_si256((const __m256i *)a[i].bsums));
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
        for (int half_index = 0; half_index < 2; half_index++) {
            const uint8_t *ql = b[i].ql + 64 * half_index;
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b[i].qh + 32 * half_index));
            __m256i ql0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i ql1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low_mask), _mm256_slli_epi16(_mm256_and_si256(qh, two_bits), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low_mask),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two_bits), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low_mask),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two_bits), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low_mask),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two_bits), 4));
            /* the scales of this half: lanes 8*half .. 8*half+7 of scales16, in both 128-bit halves */
            __m128i half_scales = half_index ? _mm256_extracti128_si256(scales16, 1) : _mm256_castsi256_si128(scales16);
            __m256i scales = _mm256_set_m128i(half_scales, half_scales);
            for (int group = 0; group < 4; group++) {
                const int8_t *x = a[i].qs + 128 * half_index + 32 * group;
                __m256i pairs = _mm256_maddubs_epi16(q[group], _mm256_loadu_si256((const __m256i *)x));
                /* elements 0..15 take scale 2*group, 16..31 take 2*group+1 */
                __m256i first = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * group]));
                __m256i second = _mm256_shuffle_epi8(scales, _mm256_loadu_si256((const __m256i *)broadcast_lane[2 * group + 1]));
                __m256i group_scales = _mm256_blend_epi32(first, second, 0xF0);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, group_scales));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * half(b[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_f32x8(acc);
}

void tm_quant_install_avx2(tm_type_traits *table) {
    table[TM_TYPE_F32].dot_f32 = dot_f32_f32;
    table[TM_TYPE_F16].dot_f32 = dot_f32_f16;
    table[TM_TYPE_BF16].dot_f32 = dot_f32_bf16;
    table[TM_TYPE_Q4_0].dot_q8 = dot_q8_q4_0;
    table[TM_TYPE_Q4_1].dot_q8 = dot_q8_q4_1;
    table[TM_TYPE_Q5_0].dot_q8 = dot_q8_q5_0;
    table[TM_TYPE_Q5_1].dot_q8 = dot_q8_q5_1;
    table[TM_TYPE_Q8_0].dot_q8 = dot_q8_q8_0;
    table[TM_TYPE_Q4_K].dot_q8 = dot_q8_q4_k;
    table[TM_TYPE_Q5_K].dot_q8 = dot_q8_q5_k;
    table[TM_TYPE_Q6_K].dot_q8 = dot_q8_q6_k;
}

#else
void tm_quant_install_avx2(tm_type_traits *table) { (void)table; }
#endif
