/*
 * quant.h - the weight-type table: every tensor type TensorMesh can store, dequantize and multiply.
 *
 * A type is a row of one table (tm_type_traits): elements per block, bytes per block, and the
 * entry points for one row of blocks: dequantize, dot with a float row, dot with an activation row
 * quantized to the type's activation type (Q8_0 for the 32-element formats, Q8_K for the k-quants),
 * and a generator of random blocks with a chosen standard deviation (synthetic models, tests).
 * Type ids are ggml's, so they are the numbers stored in GGUF files.
 *
 * Guarantees: the scalar table (tm_type_traits_scalar) is the reference; the active table
 * (tm_type_traits_get) may swap in AVX2/FMA entry points chosen once at run time, which agree with
 * the scalar ones within float rounding (the integer block sums are exact in both). Rows are whole
 * blocks: n must be a multiple of the block size.
 */
#ifndef TM_QUANT_H
#define TM_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"

typedef enum tm_type {
    TM_TYPE_F32 = 0,
    TM_TYPE_F16 = 1,
    TM_TYPE_Q4_0 = 2,
    TM_TYPE_Q4_1 = 3,
    TM_TYPE_Q5_0 = 6,
    TM_TYPE_Q5_1 = 7,
    TM_TYPE_Q8_0 = 8,
    TM_TYPE_Q4_K = 12,
    TM_TYPE_Q5_K = 13,
    TM_TYPE_Q6_K = 14,
    TM_TYPE_Q8_K = 15,
    TM_TYPE_BF16 = 30,
    TM_TYPE_COUNT = 40, /* ids below this may appear in files; unsupported ones have no traits */
} tm_type;

#define TM_QK 32   /* elements per block of the 32-element formats */
#define TM_QK_K 256 /* elements per super-block of the k-quants */

/* Block layouts, byte for byte as in GGUF files. Comments give each field's meaning. */
typedef struct { tm_f16_t d; uint8_t qs[TM_QK / 2]; } tm_block_q4_0;                 /* x = (q-8)*d */
typedef struct { tm_f16_t d, m; uint8_t qs[TM_QK / 2]; } tm_block_q4_1;              /* x = q*d + m */
typedef struct { tm_f16_t d; uint8_t qh[4]; uint8_t qs[TM_QK / 2]; } tm_block_q5_0;  /* x = (q-16)*d */
typedef struct { tm_f16_t d, m; uint8_t qh[4]; uint8_t qs[TM_QK / 2]; } tm_block_q5_1; /* q*d + m */
typedef struct { tm_f16_t d; int8_t qs[TM_QK]; } tm_block_q8_0;                      /* x = q*d */
typedef struct {
    tm_f16_t d, dmin;          /* super-block scales for the 6-bit sub-block scales and mins */
    uint8_t scales[12];        /* 8 x (6-bit scale, 6-bit min), packed */
    uint8_t qs[TM_QK_K / 2];   /* 4-bit quants: x = d*scale*q - dmin*min */
} tm_block_q4_k;
typedef struct {
    tm_f16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[TM_QK_K / 8];   /* fifth bit of each quant */
    uint8_t qs[TM_QK_K / 2];   /* low 4 bits */
} tm_block_q5_k;
typedef struct {
    uint8_t ql[TM_QK_K / 2];   /* low 4 bits of the 6-bit quants */
    uint8_t qh[TM_QK_K / 4];   /* high 2 bits */
    int8_t scales[TM_QK_K / 16]; /* one signed 8-bit scale per 16 elements */
    tm_f16_t d;                /* x = d*scale*(q-32) */
} tm_block_q6_k;
typedef struct {
    float d;                   /* x = q*d */
    int8_t qs[TM_QK_K];
    int16_t bsums[TM_QK_K / 16]; /* sum of each group of 16 quants */
} tm_block_q8_k;

typedef void (*tm_dequantize_row_fn)(const void *blocks, float *out, int64_t n);
typedef float (*tm_dot_f32_fn)(const void *blocks, const float *x, int64_t n);
typedef float (*tm_dot_q8_fn)(const void *blocks, const void *x_quantized, int64_t n);
typedef void (*tm_quantize_row_fn)(const float *x, void *blocks, int64_t n);
typedef void (*tm_random_blocks_fn)(tm_rng_t *rng, void *blocks, int64_t n_blocks, float stddev);

/* One row of the weight-type table. Entry points that a type lacks are NULL. */
typedef struct tm_type_traits {
    const char *name;               /* "q4_k": lower case, as users type it */
    int block_size;                 /* elements per block */
    int block_bytes;                /* bytes per block */
    tm_type activation_type;        /* what dot_q8 expects x quantized to; TM_TYPE_F32 = use dot_f32 */
    tm_dequantize_row_fn dequantize_row;
    tm_dot_f32_fn dot_f32;          /* weight row . float row */
    tm_dot_q8_fn dot_q8;            /* weight row . activation row quantized to activation_type */
    tm_quantize_row_fn quantize_row; /* float row -> blocks (activation types and plain floats) */
    tm_random_blocks_fn random_blocks;
} tm_type_traits;

/* Active table (SIMD where the CPU has it). NULL for an id that is not a supported type. */
const tm_type_traits *tm_type_traits_get(tm_type type);
/* Scalar reference table. */
const tm_type_traits *tm_type_traits_scalar(tm_type type);
/* Name of the SIMD path in use: "avx2+fma" or "scalar". */
const char *tm_type_simd_name(void);
/* Force the scalar table (tests, comparisons). Call before any tm_type_traits_get. */
void tm_type_force_scalar(bool force);

/* Type by name ("q4_k", "F16", case-insensitive); returns false when unknown. */
bool tm_type_from_name(const char *name, tm_type *out);
/* Name of any ggml type id, including ones we cannot compute with ("iq2_xs"); "unknown" else. */
const char *tm_type_name(uint32_t type);

/* Bytes of a row of n elements; false when n is not a multiple of the block size or overflows. */
bool tm_type_row_bytes(tm_type type, uint64_t n, uint64_t *out_bytes);

/* The AVX2/FMA entry points (quant_avx2.c); fills the table when the CPU supports them. */
void tm_quant_install_avx2(tm_type_traits *table);

/* Shared scalar helpers used by both paths. */
void tm_quantize_row_q8_0(const float *x, void *blocks, int64_t n);
void tm_quantize_row_q8_k(const float *x, void *blocks, int64_t n);
/* The 6-bit scale and min of sub-block j (0..7) of a q4_k/q5_k block. */
static inline void tm_q4k_scale_min(int j, const uint8_t *scales, uint8_t *scale, uint8_t *min) {
    if (j < 4) {
        *scale = scales[j] & 63;
        *min = scales[j + 4] & 63;
    } else {
        *scale = (uint8_t)((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
        *min = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
    }
}

#endif /* TM_QUANT_H */
