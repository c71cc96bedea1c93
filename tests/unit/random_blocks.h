/*
 * random_blocks.h - random blocks for tests: every byte random, except the half-precision scale
 * fields, which get random finite values (scales of either sign, tiny to large), so no block
 * decodes to inf/NaN and every quant bit pattern is exercised.
 */
#ifndef TM_TEST_RANDOM_BLOCKS_H
#define TM_TEST_RANDOM_BLOCKS_H

#include <math.h>

#include "quant.h"

/* Byte offsets of the f16 fields inside one block of `type` (-1 terminated). */
static inline const int *test_half_fields(tm_type type) {
    static const int none[] = {-1}, first[] = {0, -1}, first_two[] = {0, 2, -1}, q6k[] = {208, -1};
    switch (type) {
    case TM_TYPE_Q4_0: case TM_TYPE_Q5_0: case TM_TYPE_Q8_0: return first;
    case TM_TYPE_Q4_1: case TM_TYPE_Q5_1: case TM_TYPE_Q4_K: case TM_TYPE_Q5_K: return first_two;
    case TM_TYPE_Q6_K: return q6k;
    default: return none;
    }
}

static inline float test_random_scale(tm_rng_t *rng) {
    float magnitude = ldexpf(1.0f + tm_rng_uniform(rng), -(int)(tm_rng_next(rng) % 14)); /* 2^-13 .. 2 */
    return (tm_rng_next(rng) & 1) ? magnitude : -magnitude;
}

static inline void test_random_blocks(tm_rng_t *rng, tm_type type, void *blocks, int64_t n_elements) {
    const tm_type_traits *traits = tm_type_traits_scalar(type);
    int64_t n_blocks = n_elements / traits->block_size;
    uint8_t *bytes = blocks;
    if (type == TM_TYPE_F32 || type == TM_TYPE_F16 || type == TM_TYPE_BF16) {
        traits->random_blocks(rng, blocks, n_elements, 1.0f);
        return;
    }
    tm_rng_fill(rng, bytes, (size_t)(n_blocks * traits->block_bytes));
    for (int64_t b = 0; b < n_blocks; b++)
        for (const int *field = test_half_fields(type); *field >= 0; field++) {
            tm_f16_t h = tm_f32_to_f16(test_random_scale(rng));
            memcpy(bytes + b * traits->block_bytes + *field, &h, 2);
        }
}

#endif
