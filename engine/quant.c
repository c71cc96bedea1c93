/*
 * quant.c - the scalar reference for every weight type: dequantize, dot with float and quantized
 * activations, activation quantizers, random-block generators, and the type table itself.
 *
 * DESIGN: each type has small static functions named <verb>_<type>; the table at the bottom
 * wires them. The integer dot products sum whole blocks exactly in int32 and scale once per
 * (sub-)block, which is the order the SIMD paths use too, so the two agree to float rounding.
 * Random generators write structurally valid blocks whose dequantized values have mean ~0 and
 * the requested standard deviation, so synthetic models keep activations finite.
 */
#include "quant.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>

/* ---- plain floats ------------------------------------------------------------------------ */

static void dequantize_row_f32(const void *blocks, float *out, int64_t n) {
    memcpy(out, blocks, (size_t)n * sizeof(float));
}
static void dequantize_row_f16(const void *blocks, float *out, int64_t n) {
    const tm_f16_t *h = blocks;
    for (int64_t i = 0; i < n; i++) out[i] = tm_f16_to_f32(h[i]);
}
static void dequantize_row_bf16(const void *blocks, float *out, int64_t n) {
    const tm_bf16_t *h = blocks;
    for (int64_t i = 0; i < n; i++) out[i] = tm_bf16_to_f32(h[i]);
}
static float dot_f32_f32(const void *blocks, const float *x, int64_t n) {
    const float *w = blocks;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)w[i] * x[i];
    return (float)sum;
}
static float dot_f32_f16(const void *blocks, const float *x, int64_t n) {
    const tm_f16_t *w = blocks;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)tm_f16_to_f32(w[i]) * x[i];
    return (float)sum;
}
static float dot_f32_bf16(const void *blocks, const float *x, int64_t n) {
    const tm_bf16_t *w = blocks;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)tm_bf16_to_f32(w[i]) * x[i];
    return (float)sum;
}
static void quantize_row_f32(const float *x, void *blocks, int64_t n) {
    memcpy(blocks, x, (size_t)n * sizeof(float));
}
static void quantize_row_f16(const float *x, void *blocks, int64_t n) {
    tm_f16_t *h = blocks;
    for (int64_t i = 0; i < n; i++) h[i] = tm_f32_to_f16(x[i]);
}
static void quantize_row_bf16(const float *x, void *blocks, int64_t n) {
    tm_bf16_t *h = blocks;
    for (int64_t i = 0; i < n; i++) h[i] = tm_f32_to_bf16(x[i]);
}

/* uniform in [-a, a) with a = stddev*sqrt(3): standard deviation stddev */
static float random_symmetric(tm_rng_t *rng, float stddev) {
    return (2.0f * tm_rng_uniform(rng) - 1.0f) * stddev * 1.7320508f;
}
static void random_blocks_f32(tm_rng_t *rng, void *blocks, int64_t n, float stddev) {
    float *w = blocks;
    for (int64_t i = 0; i < n; i++) w[i] = random_symmetric(rng, stddev);
}
static void random_blocks_f16(tm_rng_t *rng, void *blocks, int64_t n, float stddev) {
    tm_f16_t *w = blocks;
    for (int64_t i = 0; i < n; i++) w[i] = tm_f32_to_f16(random_symmetric(rng, stddev));
}
static void random_blocks_bf16(tm_rng_t *rng, void *blocks, int64_t n, float stddev) {
    tm_bf16_t *w = blocks;
    for (int64_t i = 0; i < n; i++) w[i] = tm_f32_to_bf16(random_symmetric(rng, stddev));
}

/* A per-block scale jitter in [0.75, 1.25): blocks differ as in real weights. */
static float scale_jitter(tm_rng_t *rng) { return 0.75f + 0.5f * tm_rng_uniform(rng); }
/* +1 or -1: a random sign on the scale of the formats without a min ((q-8)*d has mean -d/2)
 * makes their mean zero over many blocks. */
static float random_sign(tm_rng_t *rng) { return (tm_rng_next(rng) >> 63) ? 1.0f : -1.0f; }

/* ---- the 32-element formats -------------------------------------------------------------- */

/* Quant j (0..31) of a 4-bit block: low nibbles hold 0..15, high nibbles 16..31. */
static inline int nibble(const uint8_t *qs, int j) {
    return j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
}
/* Quant j of a 5-bit block: nibble plus bit j of the 32-bit qh field as the fifth bit. */
static inline int five_bit(const uint8_t *qs, const uint8_t *qh, int j) {
    uint32_t high;
    memcpy(&high, qh, 4);
    return nibble(qs, j) | (int)(((high >> j) & 1u) << 4);
}

static void dequantize_row_q4_0(const void *blocks, float *out, int64_t n) {
    const tm_block_q4_0 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        float d = tm_f16_to_f32(b[i].d);
        for (int j = 0; j < TM_QK; j++) out[i * TM_QK + j] = (float)(nibble(b[i].qs, j) - 8) * d;
    }
}
static void dequantize_row_q4_1(const void *blocks, float *out, int64_t n) {
    const tm_block_q4_1 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        float d = tm_f16_to_f32(b[i].d), m = tm_f16_to_f32(b[i].m);
        for (int j = 0; j < TM_QK; j++) out[i * TM_QK + j] = (float)nibble(b[i].qs, j) * d + m;
    }
}
static void dequantize_row_q5_0(const void *blocks, float *out, int64_t n) {
    const tm_block_q5_0 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        float d = tm_f16_to_f32(b[i].d);
        for (int j = 0; j < TM_QK; j++)
            out[i * TM_QK + j] = (float)(five_bit(b[i].qs, b[i].qh, j) - 16) * d;
    }
}
static void dequantize_row_q5_1(const void *blocks, float *out, int64_t n) {
    const tm_block_q5_1 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        float d = tm_f16_to_f32(b[i].d), m = tm_f16_to_f32(b[i].m);
        for (int j = 0; j < TM_QK; j++)
            out[i * TM_QK + j] = (float)five_bit(b[i].qs, b[i].qh, j) * d + m;
    }
}
static void dequantize_row_q8_0(const void *blocks, float *out, int64_t n) {
    const tm_block_q8_0 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        float d = tm_f16_to_f32(b[i].d);
        for (int j = 0; j < TM_QK; j++) out[i * TM_QK + j] = (float)b[i].qs[j] * d;
    }
}

void tm_quantize_row_q8_0(const float *x, void *blocks, int64_t n) {
    tm_block_q8_0 *b = blocks;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        const float *xb = x + i * TM_QK;
        float amax = 0;
        for (int j = 0; j < TM_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float inverse = d > 0 ? 1.0f / d : 0.0f;
        b[i].d = tm_f32_to_f16(d);
        for (int j = 0; j < TM_QK; j++) b[i].qs[j] = (int8_t)lrintf(xb[j] * inverse);
    }
}

static float dot_q8_q4_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < TM_QK; j++) sumi += (nibble(b[i].qs, j) - 8) * a[i].qs[j];
        sum += (float)sumi * tm_f16_to_f32(b[i].d) * tm_f16_to_f32(a[i].d);
    }
    return sum;
}
static float dot_q8_q4_1(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_1 *b = blocks;
    const tm_block_q8_0 *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        int sumi = 0, sumx = 0;
        for (int j = 0; j < TM_QK; j++) {
            sumi += nibble(b[i].qs, j) * a[i].qs[j];
            sumx += a[i].qs[j];
        }
        float da = tm_f16_to_f32(a[i].d);
        sum += (float)sumi * tm_f16_to_f32(b[i].d) * da + (float)sumx * tm_f16_to_f32(b[i].m) * da;
    }
    return sum;
}
static float dot_q8_q5_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < TM_QK; j++) sumi += (five_bit(b[i].qs, b[i].qh, j) - 16) * a[i].qs[j];
        sum += (float)sumi * tm_f16_to_f32(b[i].d) * tm_f16_to_f32(a[i].d);
    }
    return sum;
}
static float dot_q8_q5_1(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_1 *b = blocks;
    const tm_block_q8_0 *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        int sumi = 0, sumx = 0;
        for (int j = 0; j < TM_QK; j++) {
            sumi += five_bit(b[i].qs, b[i].qh, j) * a[i].qs[j];
            sumx += a[i].qs[j];
        }
        float da = tm_f16_to_f32(a[i].d);
        sum += (float)sumi * tm_f16_to_f32(b[i].d) * da + (float)sumx * tm_f16_to_f32(b[i].m) * da;
    }
    return sum;
}
static float dot_q8_q8_0(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q8_0 *b = blocks;
    const tm_block_q8_0 *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < TM_QK; j++) sumi += b[i].qs[j] * a[i].qs[j];
        sum += (float)sumi * tm_f16_to_f32(b[i].d) * tm_f16_to_f32(a[i].d);
    }
    return sum;
}

static void random_blocks_q4_0(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q4_0 *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        b[i].d = tm_f32_to_f16(random_sign(rng) * stddev / 4.61f * scale_jitter(rng)); /* std of U{0..15} */
    }
}
static void random_blocks_q4_1(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q4_1 *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        float d = stddev / 4.61f * scale_jitter(rng);
        b[i].d = tm_f32_to_f16(d);
        b[i].m = tm_f32_to_f16(-7.5f * d);
    }
}
static void random_blocks_q5_0(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q5_0 *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        tm_rng_fill(rng, b[i].qh, sizeof b[i].qh);
        b[i].d = tm_f32_to_f16(random_sign(rng) * stddev / 9.23f * scale_jitter(rng)); /* std of U{0..31} */
    }
}
static void random_blocks_q5_1(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q5_1 *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        tm_rng_fill(rng, b[i].qh, sizeof b[i].qh);
        float d = stddev / 9.23f * scale_jitter(rng);
        b[i].d = tm_f32_to_f16(d);
        b[i].m = tm_f32_to_f16(-15.5f * d);
    }
}
static void random_blocks_q8_0(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q8_0 *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        b[i].d = tm_f32_to_f16(random_sign(rng) * stddev / 73.9f * scale_jitter(rng)); /* std of U{-128..127} */
    }
}

/* ---- k-quants ---------------------------------------------------------------------------- */

static void dequantize_row_q4_k(const void *blocks, float *out, int64_t n) {
    const tm_block_q4_k *b = blocks;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        float d = tm_f16_to_f32(b[i].d), dmin = tm_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        float *y = out + i * TM_QK_K;
        for (int chunk = 0; chunk < 4; chunk++) { /* 64 elements: two sub-blocks share 32 bytes */
            uint8_t sc1, m1, sc2, m2;
            tm_q4k_scale_min(2 * chunk, b[i].scales, &sc1, &m1);
            tm_q4k_scale_min(2 * chunk + 1, b[i].scales, &sc2, &m2);
            for (int l = 0; l < 32; l++) y[l] = d * sc1 * (q[l] & 0xF) - dmin * m1;
            for (int l = 0; l < 32; l++) y[32 + l] = d * sc2 * (q[l] >> 4) - dmin * m2;
            q += 32;
            y += 64;
        }
    }
}
static void dequantize_row_q5_k(const void *blocks, float *out, int64_t n) {
    const tm_block_q5_k *b = blocks;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        float d = tm_f16_to_f32(b[i].d), dmin = tm_f16_to_f32(b[i].dmin);
        const uint8_t *ql = b[i].qs, *qh = b[i].qh;
        float *y = out + i * TM_QK_K;
        for (int chunk = 0; chunk < 4; chunk++) {
            uint8_t sc1, m1, sc2, m2;
            tm_q4k_scale_min(2 * chunk, b[i].scales, &sc1, &m1);
            tm_q4k_scale_min(2 * chunk + 1, b[i].scales, &sc2, &m2);
            uint8_t bit_low = (uint8_t)(1u << (2 * chunk)), bit_high = (uint8_t)(2u << (2 * chunk));
            for (int l = 0; l < 32; l++)
                y[l] = d * sc1 * ((ql[l] & 0xF) + (qh[l] & bit_low ? 16 : 0)) - dmin * m1;
            for (int l = 0; l < 32; l++)
                y[32 + l] = d * sc2 * ((ql[l] >> 4) + (qh[l] & bit_high ? 16 : 0)) - dmin * m2;
            ql += 32;
            y += 64;
        }
    }
}
/* The 6-bit quant of element l (0..127) of half h (0..1) of a q6_k block, minus 32. */
static inline int q6k_quant(const tm_block_q6_k *b, int half, int l) {
    const uint8_t *ql = b->ql + 64 * half, *qh = b->qh + 32 * half;
    int group = l / 32, k = l % 32; /* four 32-element groups per half */
    int low_nibble;
    switch (group) {
    case 0: low_nibble = ql[k] & 0xF; break;
    case 1: low_nibble = ql[k + 32] & 0xF; break;
    case 2: low_nibble = ql[k] >> 4; break;
    default: low_nibble = ql[k + 32] >> 4; break;
    }
    int high = (qh[k] >> (2 * group)) & 3;
    return (low_nibble | (high << 4)) - 32;
}
static void dequantize_row_q6_k(const void *blocks, float *out, int64_t n) {
    const tm_block_q6_k *b = blocks;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        float d = tm_f16_to_f32(b[i].d);
        for (int half = 0; half < 2; half++)
            for (int l = 0; l < 128; l++) {
                int element = 128 * half + l;
                out[i * TM_QK_K + element] = d * b[i].scales[element / 16] * q6k_quant(&b[i], half, l);
            }
    }
}

void tm_quantize_row_q8_k(const float *x, void *blocks, int64_t n) {
    tm_block_q8_k *b = blocks;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        const float *xb = x + i * TM_QK_K;
        float amax = 0;
        for (int j = 0; j < TM_QK_K; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float inverse = d > 0 ? 1.0f / d : 0.0f;
        b[i].d = d;
        for (int j = 0; j < TM_QK_K; j++) b[i].qs[j] = (int8_t)lrintf(xb[j] * inverse);
        for (int g = 0; g < TM_QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += b[i].qs[16 * g + j];
            b[i].bsums[g] = (int16_t)sum;
        }
    }
}
static void dequantize_row_q8_k(const void *blocks, float *out, int64_t n) {
    const tm_block_q8_k *b = blocks;
    for (int64_t i = 0; i < n / TM_QK_K; i++)
        for (int j = 0; j < TM_QK_K; j++) out[i * TM_QK_K + j] = b[i].d * b[i].qs[j];
}

static float dot_q8_q4_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q4_k *b = blocks;
    const tm_block_q8_k *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        int32_t scaled = 0, mins = 0;
        for (int sub = 0; sub < 8; sub++) {
            uint8_t sc, m;
            tm_q4k_scale_min(sub, b[i].scales, &sc, &m);
            const uint8_t *q = b[i].qs + 32 * (sub / 2);
            const int8_t *x = a[i].qs + 32 * sub;
            int32_t sumi = 0;
            for (int l = 0; l < 32; l++) sumi += ((sub & 1) ? (q[l] >> 4) : (q[l] & 0xF)) * x[l];
            scaled += sc * sumi;
            mins += m * (a[i].bsums[2 * sub] + a[i].bsums[2 * sub + 1]);
        }
        sum += a[i].d * (tm_f16_to_f32(b[i].d) * (float)scaled - tm_f16_to_f32(b[i].dmin) * (float)mins);
    }
    return sum;
}
static float dot_q8_q5_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q5_k *b = blocks;
    const tm_block_q8_k *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        int32_t scaled = 0, mins = 0;
        for (int sub = 0; sub < 8; sub++) {
            uint8_t sc, m;
            tm_q4k_scale_min(sub, b[i].scales, &sc, &m);
            const uint8_t *q = b[i].qs + 32 * (sub / 2);
            const int8_t *x = a[i].qs + 32 * sub;
            int32_t sumi = 0;
            for (int l = 0; l < 32; l++) {
                int low = (sub & 1) ? (q[l] >> 4) : (q[l] & 0xF);
                int high = (b[i].qh[l] >> sub) & 1;
                sumi += (low | (high << 4)) * x[l];
            }
            scaled += sc * sumi;
            mins += m * (a[i].bsums[2 * sub] + a[i].bsums[2 * sub + 1]);
        }
        sum += a[i].d * (tm_f16_to_f32(b[i].d) * (float)scaled - tm_f16_to_f32(b[i].dmin) * (float)mins);
    }
    return sum;
}
static float dot_q8_q6_k(const void *blocks, const void *xq, int64_t n) {
    const tm_block_q6_k *b = blocks;
    const tm_block_q8_k *a = xq;
    float sum = 0;
    for (int64_t i = 0; i < n / TM_QK_K; i++) {
        int32_t scaled = 0;
        for (int group = 0; group < 16; group++) {
            int32_t sumi = 0;
            for (int l = 0; l < 16; l++) {
                int element = 16 * group + l;
                sumi += q6k_quant(&b[i], element / 128, element % 128) * a[i].qs[element];
            }
            scaled += b[i].scales[group] * sumi;
        }
        sum += a[i].d * tm_f16_to_f32(b[i].d) * (float)scaled;
    }
    return sum;
}

/* Pack eight 6-bit (scale, min) pairs the way tm_q4k_scale_min unpacks them. */
static void pack_q4k_scales(const uint8_t scale[8], const uint8_t min[8], uint8_t packed[12]) {
    memset(packed, 0, 12);
    for (int j = 0; j < 4; j++) {
        packed[j] = scale[j] & 63;
        packed[j + 4] = min[j] & 63;
    }
    for (int j = 4; j < 8; j++) {
        packed[j + 4] = (uint8_t)((scale[j] & 0xF) | ((min[j] & 0xF) << 4));
        packed[j - 4] |= (uint8_t)((scale[j] >> 4) << 6);
        packed[j] |= (uint8_t)((min[j] >> 4) << 6);
    }
}
/* Sub-block scales in 32..63 and min = scale, so dmin = mean_quant * d centres every sub-block. */
static void random_k_scales(tm_rng_t *rng, uint8_t packed[12]) {
    uint8_t scale[8];
    for (int j = 0; j < 8; j++) scale[j] = (uint8_t)(32 + (tm_rng_next(rng) >> 59));
    pack_q4k_scales(scale, scale, packed);
}
static void random_blocks_q4_k(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q4_k *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        random_k_scales(rng, b[i].scales);
        float d = stddev / (47.5f * 4.61f) * scale_jitter(rng);
        b[i].d = tm_f32_to_f16(d);
        b[i].dmin = tm_f32_to_f16(7.5f * d);
    }
}
static void random_blocks_q5_k(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q5_k *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].qs, sizeof b[i].qs);
        tm_rng_fill(rng, b[i].qh, sizeof b[i].qh);
        random_k_scales(rng, b[i].scales);
        float d = stddev / (47.5f * 9.23f) * scale_jitter(rng);
        b[i].d = tm_f32_to_f16(d);
        b[i].dmin = tm_f32_to_f16(15.5f * d);
    }
}
static void random_blocks_q6_k(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev) {
    tm_block_q6_k *b = blocks;
    for (int64_t i = 0; i < n_blocks; i++) {
        tm_rng_fill(rng, b[i].ql, sizeof b[i].ql);
        tm_rng_fill(rng, b[i].qh, sizeof b[i].qh);
        for (int g = 0; g < 16; g++) {
            int scale = 32 + (int)(tm_rng_next(rng) >> 59);
            b[i].scales[g] = (int8_t)((tm_rng_next(rng) & 1) ? scale : -scale);
        }
        b[i].d = tm_f32_to_f16(stddev / (47.5f * 18.5f) * scale_jitter(rng));
    }
}

/* ---- generic float dot for quantized types: dequantize a block at a time ------------------ */

#define DEFINE_DOT_F32_BY_DEQUANT(type_name, block_type, block_elems)                          \
    static float dot_f32_##type_name(const void *blocks, const float *x, int64_t n) {           \
        const block_type *b = blocks;                                                          \
        float tmp[block_elems];                                                                \
        double sum = 0;                                                                        \
        for (int64_t i = 0; i < n / (block_elems); i++) {                                      \
            dequantize_row_##type_name(&b[i], tmp, block_elems);                              \
            for (int j = 0; j < (block_elems); j++) sum += (double)tmp[j] * x[i * (block_elems) + j]; \
        }                                                                                      \
        return (float)sum;                                                                     \
    }
DEFINE_DOT_F32_BY_DEQUANT(q4_0, tm_block_q4_0, TM_QK)
DEFINE_DOT_F32_BY_DEQUANT(q4_1, tm_block_q4_1, TM_QK)
DEFINE_DOT_F32_BY_DEQUANT(q5_0, tm_block_q5_0, TM_QK)
DEFINE_DOT_F32_BY_DEQUANT(q5_1, tm_block_q5_1, TM_QK)
DEFINE_DOT_F32_BY_DEQUANT(q8_0, tm_block_q8_0, TM_QK)
DEFINE_DOT_F32_BY_DEQUANT(q4_k, tm_block_q4_k, TM_QK_K)
DEFINE_DOT_F32_BY_DEQUANT(q5_k, tm_block_q5_k, TM_QK_K)
DEFINE_DOT_F32_BY_DEQUANT(q6_k, tm_block_q6_k, TM_QK_K)

/* ---- the table ---------------------------------------------------------------------------- */

#define QUANT_ENTRY(type_name, elems, block_type, act)                                         \
    {#type_name, elems, (int)sizeof(block_type), act, dequantize_row_##type_name,              \
     dot_f32_##type_name, dot_q8_##type_name, NULL, random_blocks_##type_name}

static const tm_type_traits scalar_table[TM_TYPE_COUNT] = {
    [TM_TYPE_F32] = {"f32", 1, 4, TM_TYPE_F32, dequantize_row_f32, dot_f32_f32, NULL,
                     quantize_row_f32, random_blocks_f32},
    [TM_TYPE_F16] = {"f16", 1, 2, TM_TYPE_F32, dequantize_row_f16, dot_f32_f16, NULL,
                     quantize_row_f16, random_blocks_f16},
    [TM_TYPE_BF16] = {"bf16", 1, 2, TM_TYPE_F32, dequantize_row_bf16, dot_f32_bf16, NULL,
                      quantize_row_bf16, random_blocks_bf16},
    [TM_TYPE_Q4_0] = QUANT_ENTRY(q4_0, TM_QK, tm_block_q4_0, TM_TYPE_Q8_0),
    [TM_TYPE_Q4_1] = QUANT_ENTRY(q4_1, TM_QK, tm_block_q4_1, TM_TYPE_Q8_0),
    [TM_TYPE_Q5_0] = QUANT_ENTRY(q5_0, TM_QK, tm_block_q5_0, TM_TYPE_Q8_0),
    [TM_TYPE_Q5_1] = QUANT_ENTRY(q5_1, TM_QK, tm_block_q5_1, TM_TYPE_Q8_0),
    [TM_TYPE_Q8_0] = {"q8_0", TM_QK, (int)sizeof(tm_block_q8_0), TM_TYPE_Q8_0, dequantize_row_q8_0,
                      dot_f32_q8_0, dot_q8_q8_0, tm_quantize_row_q8_0, random_blocks_q8_0},
    [TM_TYPE_Q4_K] = QUANT_ENTRY(q4_k, TM_QK_K, tm_block_q4_k, TM_TYPE_Q8_K),
    [TM_TYPE_Q5_K] = QUANT_ENTRY(q5_k, TM_QK_K, tm_block_q5_k, TM_TYPE_Q8_K),
    [TM_TYPE_Q6_K] = QUANT_ENTRY(q6_k, TM_QK_K, tm_block_q6_k, TM_TYPE_Q8_K),
    /* Q8_K is an activation format only: no weights are stored in it */
    [TM_TYPE_Q8_K] = {"q8_k", TM_QK_K, (int)sizeof(tm_block_q8_k), TM_TYPE_Q8_K, dequantize_row_q8_k,
                      NULL, NULL, tm_quantize_row_q8_k, NULL},
};

static tm_type_traits active_table[TM_TYPE_COUNT];
static const char *active_simd = "scalar";
static bool force_scalar;
static pthread_once_t active_once = PTHREAD_ONCE_INIT;

static void build_active_table(void) {
    memcpy(active_table, scalar_table, sizeof active_table);
    if (force_scalar) return;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        tm_quant_install_avx2(active_table);
        active_simd = "avx2+fma";
    }
#endif
}

void tm_type_force_scalar(bool force) { force_scalar = force; }

const tm_type_traits *tm_type_traits_get(tm_type type) {
    pthread_once(&active_once, build_active_table);
    if ((unsigned)type >= TM_TYPE_COUNT || !active_table[type].name) return NULL;
    return &active_table[type];
}

const tm_type_traits *tm_type_traits_scalar(tm_type type) {
    if ((unsigned)type >= TM_TYPE_COUNT || !scalar_table[type].name) return NULL;
    return &scalar_table[type];
}

const char *tm_type_simd_name(void) {
    pthread_once(&active_once, build_active_table);
    return active_simd;
}

static const char *const ggml_type_names[] = {
    "f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0", "q8_1",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s",
    "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m",
    "bf16", "q4_0_4_4", "q4_0_4_8", "q4_0_8_8", "tq1_0", "tq2_0", "iq4_nl_4_4", "iq4_nl_4_8",
    "iq4_nl_8_8", "mxfp4",
};

const char *tm_type_name(uint32_t type) {
    if (type < sizeof ggml_type_names / sizeof ggml_type_names[0]) return ggml_type_names[type];
    return "unknown";
}

bool tm_type_from_name(const char *name, tm_type *out) {
    for (int t = 0; t < TM_TYPE_COUNT; t++) {
        const char *candidate = scalar_table[t].name;
        if (!candidate || t == TM_TYPE_Q8_K) continue;
        size_t i = 0;
        while (name[i] && candidate[i] && tolower((unsigned char)name[i]) == candidate[i]) i++;
        if (!name[i] && !candidate[i]) {
            *out = (tm_type)t;
            return true;
        }
    }
    return false;
}

bool tm_type_row_bytes(tm_type type, uint64_t n, uint64_t *out_bytes) {
    const tm_type_traits *traits = tm_type_traits_scalar(type);
    if (!traits || n % (uint64_t)traits->block_size) return false;
    return tm_mul_u64(n / (uint64_t)traits->block_size, (uint64_t)traits->block_bytes, out_bytes);
}
