/*
 * test_ops_cuda.c - the CUDA small ops against the CPU reference on random inputs, outputs
 * poisoned with NaN before each run:
 *  - embedding lookup, every weight type: within 1e-6 of the row's largest |value| (the GPU may
 *    fuse the scale multiply-add);
 *  - RMSNorm (rows of 576 and 4096): within 1e-6 relative;
 *  - rope (head dims 64 and 128, positions up to 8000, with and without llama3 freq factors,
 *    linear scaling): within 2e-6 absolute on unit-range inputs (float64 angle on both sides);
 *  - SwiGLU and residual add: within 1e-6 relative.
 * Without a CUDA device it reports itself skipped (exit 77).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "kernels.h"
#include "ops_cpu.h"
#include "random_blocks.h"

#define SKIPPED 77

static void *to_device(const void *host, size_t bytes) {
    void *device = NULL;
    cudaMalloc(&device, bytes);
    if (host) cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice);
    else cudaMemset(device, 0xff, bytes); /* NaN poison */
    return device;
}

static void from_device(void *host, const void *device, size_t bytes) {
    cudaDeviceSynchronize();
    cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost);
}

static void fill(tm_rng_t *rng, float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = (2.0f * tm_rng_uniform(rng) - 1.0f) * scale;
}

static void test_embed(tm_rng_t *rng) {
    const tm_type types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                             TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    const int vocab = 300, n_embd = 512, n_tokens = 7;
    int32_t tokens[7] = {0, 299, 17, 17, 150, 3, 298};
    float *expected = malloc((size_t)n_embd * sizeof(float)), *got = malloc((size_t)n_tokens * n_embd * sizeof(float));
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
        uint64_t row_bytes;
        tm_type_row_bytes(types[k], n_embd, &row_bytes);
        uint8_t *table = malloc(row_bytes * vocab);
        test_random_blocks(rng, types[k], table, (int64_t)vocab * n_embd);
        void *d_table = to_device(table, row_bytes * vocab), *d_tokens = to_device(tokens, sizeof tokens);
        float *d_out = to_device(NULL, (size_t)n_tokens * n_embd * sizeof(float));
        CHECK(tm_cuda_embed((int)types[k], d_table, n_embd, d_tokens, n_tokens, d_out, NULL) == 0, "%s embed", traits->name);
        from_device(got, d_out, (size_t)n_tokens * n_embd * sizeof(float));
        int bad = 0;
        for (int t = 0; t < n_tokens; t++) {
            traits->dequantize_row(table + (uint64_t)tokens[t] * row_bytes, expected, n_embd);
            float largest = 0;
            for (int i = 0; i < n_embd; i++) largest = fmaxf(largest, fabsf(expected[i]));
            for (int i = 0; i < n_embd; i++) bad += !(fabsf(got[t * n_embd + i] - expected[i]) <= 1e-6f * largest);
        }
        CHECK(bad == 0, "%s embedding: %d values differ", traits->name, bad);
        cudaFree(d_table), cudaFree(d_tokens), cudaFree(d_out);
        free(table);
    }
    free(expected), free(got);
}

static void test_rmsnorm(tm_rng_t *rng) {
    const int widths[2] = {576, 4096}, rows = 5;
    for (int w = 0; w < 2; w++) {
        int n = widths[w];
        float *x = malloc((size_t)rows * n * sizeof(float)), *weight = malloc((size_t)n * sizeof(float));
        float *expected = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)rows * n * sizeof(float));
        fill(rng, x, (int64_t)rows * n, 3.0f);
        fill(rng, weight, n, 1.0f);
        float *d_x = to_device(x, (size_t)rows * n * 4), *d_w = to_device(weight, (size_t)n * 4), *d_out = to_device(NULL, (size_t)rows * n * 4);
        CHECK(tm_cuda_rmsnorm(d_out, d_x, d_w, rows, n, 1e-5f, NULL) == 0, "rmsnorm launch");
        from_device(got, d_out, (size_t)rows * n * 4);
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            tm_cpu_rmsnorm(expected, x + (int64_t)r * n, weight, n, 1e-5f);
            for (int i = 0; i < n; i++) bad += !(fabsf(got[r * n + i] - expected[i]) <= 1e-6f * fabsf(expected[i]) + 1e-7f);
        }
        CHECK(bad == 0, "rmsnorm width %d: %d values differ", n, bad);
        cudaFree(d_x), cudaFree(d_w), cudaFree(d_out);
        free(x), free(weight), free(expected), free(got);
    }
}

static void test_rope(tm_rng_t *rng) {
    const int head_dims[2] = {64, 128}, n_heads = 4, n_tokens = 6;
    int32_t positions[6] = {0, 1, 7, 511, 4096, 8000};
    for (int h = 0; h < 2; h++)
        for (int variant = 0; variant < 2; variant++) {
            int head_dim = head_dims[h], n = n_tokens * n_heads * head_dim;
            float factors[64];
            for (int i = 0; i < head_dim / 2; i++) factors[i] = 1.0f + (float)i / 8;
            tm_rope_params params = {head_dim, head_dim, variant ? 500000.0f : 10000.0f, variant ? 0.25f : 1.0f,
                                     variant ? factors : NULL};
            float *x = malloc((size_t)n * sizeof(float)), *expected = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
            fill(rng, x, n, 1.0f);
            memcpy(expected, x, (size_t)n * sizeof(float));
            for (int t = 0; t < n_tokens; t++) tm_cpu_rope(expected + t * n_heads * head_dim, n_heads, &params, positions[t]);
            float *d_x = to_device(x, (size_t)n * 4), *d_factors = variant ? to_device(factors, sizeof factors) : NULL;
            int32_t *d_positions = to_device(positions, sizeof positions);
            CHECK(tm_cuda_rope(d_x, n_tokens, n_heads, head_dim, head_dim, params.freq_base, params.freq_scale, d_factors,
                               d_positions, NULL) == 0, "rope launch");
            from_device(got, d_x, (size_t)n * 4);
            int bad = 0;
            for (int i = 0; i < n; i++) bad += !(fabsf(got[i] - expected[i]) <= 2e-6f);
            CHECK(bad == 0, "rope head_dim %d variant %d: %d values differ", head_dim, variant, bad);
            cudaFree(d_x), cudaFree(d_factors), cudaFree(d_positions);
            free(x), free(expected), free(got);
        }
}

static void test_swiglu_add(tm_rng_t *rng) {
    const int64_t n = 100003;
    float *gate = malloc(n * sizeof(float)), *up = malloc(n * sizeof(float)), *expected = malloc(n * sizeof(float)),
          *got = malloc(n * sizeof(float));
    fill(rng, gate, n, 8.0f);
    fill(rng, up, n, 2.0f);
    float *d_gate = to_device(gate, n * 4), *d_up = to_device(up, n * 4);
    memcpy(expected, gate, n * sizeof(float));
    tm_cpu_swiglu(expected, up, n);
    CHECK(tm_cuda_swiglu(d_gate, d_up, n, NULL) == 0, "swiglu launch");
    from_device(got, d_gate, n * 4);
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !(fabsf(got[i] - expected[i]) <= 1e-6f * fabsf(expected[i]) + 1e-7f);
    CHECK(bad == 0, "swiglu: %d values differ", bad);
    for (int64_t i = 0; i < n; i++) expected[i] = got[i] + up[i];
    CHECK(tm_cuda_add(d_gate, d_up, n, NULL) == 0, "add launch");
    from_device(got, d_gate, n * 4);
    bad = 0;
    for (int64_t i = 0; i < n; i++) bad += got[i] != expected[i];
    CHECK(bad == 0, "add: %d values differ", bad);
    cudaFree(d_gate), cudaFree(d_up);
    free(gate), free(up), free(expected), free(got);
}

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_ops_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    tm_rng_t rng;
    tm_rng_seed(&rng, 11);
    test_embed(&rng);
    test_rmsnorm(&rng);
    test_rope(&rng);
    test_swiglu_add(&rng);
    CHECK(cudaGetLastError() == cudaSuccess, "no CUDA error pending");
    return check_report("test_ops_cuda");
}
