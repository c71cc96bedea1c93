/*
 * test_quant.c - the weight-type table on random blocks:
 *  - half and bfloat16 conversions: every half round-trips exactly; rounding is to nearest even;
 *  - each type's dot with a float row equals a float64 sum over its dequantized row;
 *  - each type's dot with a quantized activation equals a float64 sum over the dequantized
 *    weights times the dequantized activation (integer block sums make this tight);
 *  - the active (AVX2) table equals the scalar one to float rounding;
 *  - activation quantizers stay within half a step of the input.
 * Tolerances: relative to sum |w_i x_i| (the scale of the rounding error), 2e-6 for float rows,
 * 1e-5 for quantized rows (float32 scale products per block), stated at each check.
 */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "quant.h"
#include "random_blocks.h"

static const tm_type weight_types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                                       TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
#define N_WEIGHT_TYPES (int)(sizeof weight_types / sizeof weight_types[0])

static void test_half_conversions(void) {
    int mismatches = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tm_f16_to_f32((tm_f16_t)h);
        if (isnan(f)) continue;
        if (tm_f32_to_f16(f) != h) mismatches++;
    }
    CHECK(mismatches == 0, "%d halves do not round-trip", mismatches);
    /* halfway cases round to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
    CHECK(tm_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00, "1+2^-11 -> %04x", tm_f32_to_f16(1.0f + ldexpf(1, -11)));
    CHECK(tm_f32_to_f16(1.0f + 3 * ldexpf(1, -11)) == 0x3c02, "1+3*2^-11 -> %04x", tm_f32_to_f16(1.0f + 3 * ldexpf(1, -11)));
    CHECK(tm_f32_to_f16(65520.0f) == 0x7c00, "65520 must overflow to inf");
    CHECK(tm_f32_to_f16(65519.0f) == 0x7bff, "65519 must round to 65504");
    CHECK(tm_f32_to_f16(ldexpf(1, -25)) == 0, "2^-25 rounds to zero (tie to even)");
    CHECK(tm_f32_to_f16(ldexpf(3, -26)) == 1, "3*2^-26 rounds to the smallest subnormal");
    int bf_mismatches = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tm_bf16_to_f32((tm_bf16_t)h);
        if (!isnan(f) && tm_f32_to_bf16(f) != h) bf_mismatches++;
    }
    CHECK(bf_mismatches == 0, "%d bfloat16 values do not round-trip", bf_mismatches);
}

static double dot_f64(const float *a, const float *b, int64_t n, double *magnitude) {
    double sum = 0, abs_sum = 0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)a[i] * b[i];
        abs_sum += fabs((double)a[i] * b[i]);
    }
    *magnitude = abs_sum;
    return sum;
}

static void test_type(tm_type type, tm_rng_t *rng) {
    const tm_type_traits *scalar = tm_type_traits_scalar(type), *active = tm_type_traits_get(type);
    const int64_t n = 4096;
    uint64_t row_bytes;
    CHECK(tm_type_row_bytes(type, n, &row_bytes), "%s row bytes", scalar->name);
    uint8_t *w = malloc(row_bytes);
    float *x = malloc(n * sizeof *x), *w_float = malloc(n * sizeof *w_float), *x_back = malloc(n * sizeof *x_back);
    void *x_quantized = malloc(n * 2 + 4096);
    for (int trial = 0; trial < 20; trial++) {
        test_random_blocks(rng, type, w, n);
        for (int64_t i = 0; i < n; i++) x[i] = (2.0f * tm_rng_uniform(rng) - 1.0f) * (trial % 2 ? 1.0f : 30.0f);
        scalar->dequantize_row(w, w_float, n);
        int non_finite = 0;
        for (int64_t i = 0; i < n; i++) non_finite += !isfinite(w_float[i]);
        CHECK(non_finite == 0, "%s: %d non-finite dequantized values", scalar->name, non_finite);

        double magnitude, reference = dot_f64(w_float, x, n, &magnitude);
        double tolerance = 2e-6 * magnitude + 1e-30;
        float got = scalar->dot_f32(w, x, n);
        CHECK(fabs(got - reference) <= tolerance, "%s scalar dot_f32 %.9g vs float64 %.9g (tol %.3g)", scalar->name, got,
              reference, tolerance);
        got = active->dot_f32(w, x, n);
        CHECK(fabs(got - reference) <= tolerance, "%s %s dot_f32 %.9g vs float64 %.9g (tol %.3g)", scalar->name,
              tm_type_simd_name(), got, reference, tolerance);

        if (scalar->activation_type == TM_TYPE_F32) continue;
        const tm_type_traits *activation = tm_type_traits_scalar(scalar->activation_type);
        activation->quantize_row(x, x_quantized, n);
        activation->dequantize_row(x_quantized, x_back, n);
        reference = dot_f64(w_float, x_back, n, &magnitude);
        tolerance = 1e-5 * magnitude + 1e-30;
        got = scalar->dot_q8(w, x_quantized, n);
        CHECK(fabs(got - reference) <= tolerance, "%s scalar dot_q8 %.9g vs float64 %.9g (tol %.3g)", scalar->name, got,
              reference, tolerance);
        float got_active = active->dot_q8(w, x_quantized, n);
        CHECK(fabs(got_active - reference) <= tolerance, "%s %s dot_q8 %.9g vs float64 %.9g (tol %.3g)", scalar->name,
              tm_type_simd_name(), got_active, reference, tolerance);
    }
    free(w), free(x), free(w_float), free(x_back), free(x_quantized);
}

static void test_activation_quantizers(tm_rng_t *rng) {
    const int64_t n = 1024;
    float x[1024], back[1024];
    uint8_t blocks[1024 * 2];
    const tm_type activation_types[] = {TM_TYPE_Q8_0, TM_TYPE_Q8_K};
    for (int k = 0; k < 2; k++) {
        const tm_type_traits *t = tm_type_traits_scalar(activation_types[k]);
        for (int64_t i = 0; i < n; i++) x[i] = (2.0f * tm_rng_uniform(rng) - 1.0f) * (float)(1 + i % 7);
        t->quantize_row(x, blocks, n);
        t->dequantize_row(blocks, back, n);
        double worst = 0;
        for (int64_t b = 0; b < n / t->block_size; b++) {
            float amax = 0;
            for (int j = 0; j < t->block_size; j++) amax = fmaxf(amax, fabsf(x[b * t->block_size + j]));
            /* half a step, plus the f16 rounding of the Q8_0 scale (2^-11 relative, times 127) */
            double step = amax / 127.0, allowed = 0.5 * step + (k == 0 ? amax * 0x1p-11 : 1e-7 * amax);
            for (int j = 0; j < t->block_size; j++) {
                double error = fabs(back[b * t->block_size + j] - x[b * t->block_size + j]) - allowed;
                if (error > worst) worst = error;
            }
        }
        CHECK(worst <= 0, "%s quantization error exceeds half a step by %.3g", t->name, worst);
    }
    /* Q8_K group sums match the quants */
    const tm_block_q8_k *q = (const tm_block_q8_k *)blocks;
    tm_quantize_row_q8_k(x, blocks, 256);
    for (int g = 0; g < 16; g++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += q->qs[16 * g + j];
        CHECK(sum == q->bsums[g], "q8_k bsums[%d] = %d, sum of quants %d", g, q->bsums[g], sum);
    }
}

static void test_table(void) {
    tm_type t;
    CHECK(tm_type_from_name("Q4_K", &t) && t == TM_TYPE_Q4_K, "name lookup is case-insensitive");
    CHECK(!tm_type_from_name("q4_k_m", &t), "q4_k_m is a recipe, not a tensor type");
    CHECK(!tm_type_from_name("q8_k", &t), "q8_k is an activation format only");
    uint64_t bytes;
    CHECK(tm_type_row_bytes(TM_TYPE_Q4_K, 4096, &bytes) && bytes == 16 * 144, "q4_k row of 4096 is 2304 bytes");
    CHECK(!tm_type_row_bytes(TM_TYPE_Q4_K, 4000, &bytes), "a partial block is rejected");
    CHECK(!tm_type_row_bytes(TM_TYPE_F32, UINT64_MAX / 2, &bytes), "overflow is rejected");
    CHECK(tm_type_traits_get((tm_type)17) == NULL, "iq2_xs has no traits");
    CHECK(strcmp(tm_type_name(17), "iq2_xs") == 0, "names of unsupported types are known");
    const int expected_sizes[][3] = {{TM_TYPE_Q4_0, 32, 18}, {TM_TYPE_Q4_1, 32, 20}, {TM_TYPE_Q5_0, 32, 22},
                                     {TM_TYPE_Q5_1, 32, 24}, {TM_TYPE_Q8_0, 32, 34}, {TM_TYPE_Q4_K, 256, 144},
                                     {TM_TYPE_Q5_K, 256, 176}, {TM_TYPE_Q6_K, 256, 210}, {TM_TYPE_Q8_K, 256, 292}};
    for (size_t i = 0; i < sizeof expected_sizes / sizeof expected_sizes[0]; i++) {
        const tm_type_traits *traits = tm_type_traits_scalar((tm_type)expected_sizes[i][0]);
        CHECK(traits->block_size == expected_sizes[i][1] && traits->block_bytes == expected_sizes[i][2],
              "%s: block %d/%d bytes, expected %d/%d (ggml's layout)", traits->name, traits->block_size,
              traits->block_bytes, expected_sizes[i][1], expected_sizes[i][2]);
    }
}

static void test_random_generators(tm_rng_t *rng) {
    /* the synthetic-weight generators hit the requested standard deviation within 15 % */
    const int64_t n = 65536;
    float *values = malloc(n * sizeof *values);
    uint8_t *blocks = malloc(n * 4);
    for (int k = 0; k < N_WEIGHT_TYPES; k++) {
        const tm_type_traits *t = tm_type_traits_scalar(weight_types[k]);
        t->random_blocks(rng, blocks, n / t->block_size, 0.02f);
        t->dequantize_row(blocks, values, n);
        double sum = 0, sum_sq = 0;
        for (int64_t i = 0; i < n; i++) {
            sum += values[i];
            sum_sq += (double)values[i] * values[i];
        }
        double mean = sum / n, stddev = sqrt(sum_sq / n - mean * mean);
        CHECK(fabs(stddev - 0.02) < 0.003 && fabs(mean) < 0.002, "%s random blocks: mean %.4g stddev %.4g, want 0 and 0.02",
              t->name, mean, stddev);
    }
    free(values);
    free(blocks);
}

int main(void) {
    tm_rng_t rng;
    tm_rng_seed(&rng, 1234);
    test_half_conversions();
    test_table();
    for (int k = 0; k < N_WEIGHT_TYPES; k++) test_type(weight_types[k], &rng);
    test_activation_quantizers(&rng);
    test_random_generators(&rng);
    printf("simd path: %s\n", tm_type_simd_name());
    return check_report("test_quant");
}
