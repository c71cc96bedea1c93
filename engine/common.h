/*
 * common.h - small pieces every engine module uses: error reporting, overflow-checked size
 * arithmetic, half/bfloat16 conversion and a seeded random generator.
 *
 * Guarantees: the checked arithmetic helpers return false (and leave *out unspecified) instead of
 * wrapping; the half conversions are exact for every finite half and round-to-nearest-even the
 * other way; the random generator is deterministic for a given seed on every platform.
 */
#ifndef TM_COMMON_H
#define TM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tensormesh.h"

#if defined(__GNUC__)
#define TM_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define TM_PRINTF(fmt_index, first_arg)
#endif

#define TM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Fill *error (when not NULL) with status and a formatted message; returns status. */
tm_status tm_error_set(tm_error_t *error, tm_status status, const char *format, ...) TM_PRINTF(3, 4);

/* Prefix an existing message with more context ("file.gguf: " + old message); returns its status. */
tm_status tm_error_prefix(tm_error_t *error, const char *format, ...) TM_PRINTF(2, 3);

static inline bool tm_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline bool tm_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* ---- half precision ---------------------------------------------------------------------- */

typedef uint16_t tm_f16_t;  /* IEEE 754 binary16 bits */
typedef uint16_t tm_bf16_t; /* bfloat16 bits: the upper half of a float */

static inline float tm_bits_to_f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline uint32_t tm_f32_to_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

/* Exact conversion of a binary16 to float (normals, subnormals, inf, NaN). */
static inline float tm_f16_to_f32(tm_f16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return tm_bits_to_f32(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24 is exact in float */
        float value = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -value : value;
    }
    return tm_bits_to_f32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* Float to binary16, round to nearest even; overflow gives inf, NaN stays NaN. */
static inline tm_f16_t tm_f32_to_f16(float f) {
    uint32_t x = tm_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t abs_bits = x & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) return (tm_f16_t)(sign | 0x7e00u);
    if (abs_bits >= 0x477ff000u) return (tm_f16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (abs_bits < 0x38800000u) {
        /* result is subnormal or zero: add a magic number so the FPU rounds for us */
        float magic = tm_bits_to_f32(abs_bits) + 0.5f;
        return (tm_f16_t)(sign | (tm_f32_to_bits(magic) - 0x3f000000u));
    }
    uint32_t mantissa_odd = (abs_bits >> 13) & 1u;
    abs_bits += 0xc8000fffu + mantissa_odd; /* rebias exponent (-112 << 23) and round */
    return (tm_f16_t)(sign | (abs_bits >> 13));
}

static inline float tm_bf16_to_f32(tm_bf16_t b) { return tm_bits_to_f32((uint32_t)b << 16); }

static inline tm_bf16_t tm_f32_to_bf16(float f) {
    uint32_t x = tm_f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (tm_bf16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (tm_bf16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- random numbers ---------------------------------------------------------------------- */

/* xoshiro256** seeded through splitmix64: fast, deterministic, good enough for test data. */
typedef struct tm_rng {
    uint64_t state[4];
} tm_rng_t;

void tm_rng_seed(tm_rng_t *rng, uint64_t seed);

static inline uint64_t tm_rng_next(tm_rng_t *rng) {
    uint64_t *s = rng->state;
    uint64_t r = s[1] * 5;
    r = ((r << 7) | (r >> 57)) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return r;
}

/* Uniform float in [0, 1). */
static inline float tm_rng_uniform(tm_rng_t *rng) {
    return (float)(tm_rng_next(rng) >> 40) * (1.0f / 16777216.0f);
}

/* Fill n bytes with random bits. */
void tm_rng_fill(tm_rng_t *rng, void *buffer, size_t n);

/* Monotonic wall clock in seconds. */
double tm_time_seconds(void);

#endif /* TM_COMMON_H */
