/*
 * test_ops_cuda.c - the CUDA small ops against the CPU reference on random inputs, outputs
 * poisoned with NaN before each run:
 *  - embedding lookup, every weight type, rows 512, 8448, 96 and 40 wide (where its blocks divide
 *    them: the launch's run and value forms): within 1e-6 of the row's largest |value| (the GPU may
 *    fuse the scale multiply-add);
 *  - RMSNorm (rows of 576 and 4096): within 1e-6 relative;
 *  - rope (head dims 64 and 128, positions up to 8000, with and without llama3 freq factors,
 *    linear scaling): within 2e-6 absolute on unit-range inputs (float64 angle on both sides);
 *  - SwiGLU and residual add: within 1e-6 relative.
 *  - the q8_1 quantizer's values and scales (one d a 256-value block) against its description,
 *    bit for bit;
 *  - the fused kernels of the decode step, each against the separate kernels it replaces,
 *    bit for bit: residual add + RMSNorm (+ q8_1 quantization) against add, RMSNorm and
 *    tm_cuda_quantize_q8_1 (one row, with the values again in pair order, and several);
 *    SwiGLU + quantization against SwiGLU and tm_cuda_quantize_q8_1 (one row and three), SwiGLU with
 *    its f16 copy (the copy its output rounded to nearest even, bit for bit); the pair
 *    order itself against its description, restated in the test;
 *    rope + KV append (f16 and f32 pages, a shuffled page table) against two ropes and the
 *    append (queries and the whole page pool compared); into an 8-bit cache, the int8 values and
 *    scales equal tm_kv_store_vector (the CPU's rounding) of the keys and values the same kernel
 *    wrote into an f32 cache, and tm_cuda_kv_append of the separately roped keys writes the same
 *    bytes. The residual add + RMSNorm is also held
 *    to the CPU reference (1e-6 relative), and its f16 copy (tm_cuda_add_rmsnorm_half, up to 16
 *    rows out of place) is its float output rounded to nearest even, bit for bit; more rows are declined. On
 *    sm_90 the rows of 4096 and 8192 take the clusters that share a row's sum of squares, which
 *    find each q8_1 block's largest value before the sum (ci/gpu runs this test again under
 *    TM_NORM_CLUSTER=0 for the sliced kernel alone and under TM_NORM_EARLY_MAX=0 for the
 *    clusters' maximum after the sum).
 * Without a CUDA device it reports itself skipped (exit 77).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "device_weights.h"
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

/* Rows n_embd wide of every type whose blocks divide it. The widths (test_embed) take each of the
 * launch's forms: a multiple of 16 takes a run of 16 values a thread (4096 a block: 512 one partial
 * block, 8448 three blocks, the last partial; a q8_0 row of 96 values is 102 bytes, so its runs
 * are not 16-byte aligned), 40 a value a thread. */
static void test_embed_width(tm_rng_t *rng, int n_embd) {
    const tm_type all[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                           TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    const int vocab = 300, n_tokens = 7;
    int32_t tokens[7] = {0, 299, 17, 17, 150, 3, 298};
    float *expected = malloc((size_t)n_embd * sizeof(float)), *got = malloc((size_t)n_tokens * n_embd * sizeof(float));
    tm_type types[sizeof all / sizeof all[0]];
    int n_types = 0;
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        if (n_embd % tm_type_traits_scalar(all[k])->block_size == 0) types[n_types++] = all[k];
    for (int k = 0; k < n_types; k++) {
        const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
        uint64_t row_bytes;
        tm_type_row_bytes(types[k], n_embd, &row_bytes);
        uint8_t *table = malloc(row_bytes * vocab);
        test_random_blocks(rng, types[k], table, (int64_t)vocab * n_embd);
        void *d_table = weights_to_device(types[k], table, vocab, n_embd), *d_tokens = to_device(tokens, sizeof tokens);
        CHECK(d_table != NULL, "%s table upload", traits->name);
        float *d_out = to_device(NULL, (size_t)n_tokens * n_embd * sizeof(float));
        /* the same rows again as the engine's step launches it: through a feed map (tokens 1, 4 and
         * 6 from a sampling's rows, the others, whose tokens[] are spoiled with -1 where fed, from
         * tokens[]), the tokens, feed map and table entries read from mapped pinned host memory;
         * that launch also writes the 4500 entries counted of a buffer of 5000 (a random index
         * each, drawn without repeats; 3584 threads, so some take a second pass) into a
         * 12000-entry table, which must hold them and nothing else (the 500 uncounted may be read,
         * never written), and copies four runs of random words (one empty) from host to device memory,
         * around which the device words must stay as they were */
        int32_t fed[7] = {-1, 2, -1, -1, 0, -1, 1}, sampled[3] = {tokens[4], tokens[6], tokens[1]}, spoiled[7];
        for (int t = 0; t < n_tokens; t++) spoiled[t] = fed[t] >= 0 ? -1 : tokens[t];
        void *d_sampled = to_device(sampled, sizeof sampled);
        int32_t *h_fed = NULL, *h_spoiled = NULL, *h_count = NULL;
        uint32_t *h_entries = NULL, *h_words = NULL;
        enum { WORDS = 80 };
        CHECK(cudaHostAlloc((void **)&h_fed, sizeof fed, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostAlloc((void **)&h_spoiled, sizeof spoiled, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostAlloc((void **)&h_count, 8, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostAlloc((void **)&h_words, WORDS * 4, cudaHostAllocMapped) == cudaSuccess,
              "mapped host memory");
        memcpy(h_fed, fed, sizeof fed), memcpy(h_spoiled, spoiled, sizeof spoiled);
        uint32_t words_before[WORDS], words_expected[WORDS], words_got[WORDS];
        for (int i = 0; i < WORDS; i++) h_words[i] = (uint32_t)tm_rng_next(rng), words_before[i] = (uint32_t)tm_rng_next(rng);
        uint32_t *d_words = to_device(words_before, sizeof words_before);
        const tm_cuda_inputs_copy no_copy = {0}, copy = {h_words, d_words, 4, {0, 9, 9, 41}, {5, 0, 30, 39}};
        memcpy(words_expected, words_before, sizeof words_before);
        for (int r = 0; r < copy.n; r++)
            for (int i = 0; i < copy.words[r]; i++) words_expected[copy.at[r] + i] = h_words[copy.at[r] + i];
        enum { TABLE = 12000, UPDATES = 5000 };
        static int32_t table_host[TABLE], table_got[TABLE], order[TABLE];
        static uint32_t entries[2 * UPDATES];
        for (int i = 0; i < TABLE; i++) table_host[i] = -7 - i, order[i] = i;
        for (int i = 0; i < UPDATES; i++) { /* a partial Fisher-Yates shuffle: distinct indices */
            int j = i + (int)(tm_rng_next(rng) % (uint64_t)(TABLE - i)), swap = order[i];
            order[i] = order[j], order[j] = swap;
            entries[2 * i] = (uint32_t)order[i], entries[2 * i + 1] = (uint32_t)(tm_rng_next(rng) % 100000);
        }
        const int32_t count = UPDATES - 500; /* the last 500 pairs are in the buffer but not counted: never written */
        if (n_embd == 512) /* (7 tokens x 256 threads in either form) */
            CHECK(count > n_tokens * 256, "the launch's threads take some entries in a second pass");
        void *d_table_entries = to_device(table_host, sizeof table_host);
        CHECK(cudaHostAlloc((void **)&h_entries, sizeof entries, cudaHostAllocMapped) == cudaSuccess, "mapped host memory");
        *h_count = count, memcpy(h_entries, entries, sizeof entries);
        int32_t step_spoiled[7], step_got[7];
        for (int t = 0; t < n_tokens; t++) step_spoiled[t] = -100 - t;
        int32_t *d_step_tokens = to_device(step_spoiled, sizeof step_spoiled);
        for (int form = 0; form < 2; form++) {
            const tm_cuda_table_updates updates = {form ? h_count : NULL, form ? h_entries : NULL, form ? d_table_entries : NULL, UPDATES};
            /* the fed launch also writes the step's tokens as embedded (fed ones filled in) */
            CHECK(tm_cuda_embed((int)types[k], d_table, n_embd, form ? h_spoiled : d_tokens, form ? h_fed : NULL, form ? d_sampled : NULL,
                                n_tokens, d_out, form ? d_step_tokens : NULL, updates, form ? copy : no_copy, NULL) == 0,
                  "%s embed%s", traits->name, form ? " (fed)" : "");
            from_device(step_got, d_step_tokens, sizeof step_got);
            CHECK(!memcmp(step_got, form ? tokens : step_spoiled, sizeof step_got), "%s embed%s: the step's tokens %s", traits->name,
                  form ? " (fed)" : "", form ? "written, fed ones filled in" : "not written without a buffer");
            from_device(got, d_out, (size_t)n_tokens * n_embd * sizeof(float));
            int bad = 0;
            for (int t = 0; t < n_tokens; t++) {
                traits->dequantize_row(table + (uint64_t)tokens[t] * row_bytes, expected, n_embd);
                float largest = 0;
                for (int i = 0; i < n_embd; i++) largest = fmaxf(largest, fabsf(expected[i]));
                for (int i = 0; i < n_embd; i++) bad += !(fabsf(got[t * n_embd + i] - expected[i]) <= 1e-6f * largest);
            }
            CHECK(bad == 0, "%s embedding%s, %d wide: %d values differ", traits->name, form ? " (fed)" : "", n_embd, bad);
        }
        from_device(table_got, d_table_entries, sizeof table_got);
        for (int i = 0; i < count; i++) table_host[entries[2 * i]] = (int32_t)entries[2 * i + 1];
        CHECK(!memcmp(table_got, table_host, sizeof table_got), "%s embed: the table holds its %d updates and nothing else", traits->name,
              (int)count);
        from_device(words_got, d_words, sizeof words_got);
        CHECK(!memcmp(words_got, words_expected, sizeof words_got), "%s embed: the copied runs and nothing else", traits->name);
        cudaFree(d_table), cudaFree(d_tokens), cudaFree(d_out), cudaFree(d_sampled), cudaFree(d_words), cudaFree(d_table_entries);
        cudaFree(d_step_tokens);
        cudaFreeHost(h_fed), cudaFreeHost(h_spoiled), cudaFreeHost(h_count), cudaFreeHost(h_entries), cudaFreeHost(h_words);
        free(table);
    }
    free(expected), free(got);
}

static void test_embed(tm_rng_t *rng) {
    const int widths[] = {512, 8448, 96, 40};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) test_embed_width(rng, widths[w]);
}

static void test_rmsnorm(tm_rng_t *rng) {
    /* 576 and 4096 (SmolLM2, llama 7B) and 8192 (70B); 2 rows: the sliced kernel (576: a last slice
     * of 64 elements); 20 rows: the register kernel, or at 12288 the looping one; 100 (not a multiple
     * of 32): the register kernel also at 2 rows */
    const int widths[5] = {100, 576, 4096, 8192, 12288};
    for (int c = 0; c < 10; c++) {
        const int n = widths[c / 2], rows = c % 2 ? 20 : 2;
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
        CHECK(bad == 0, "rmsnorm width %d, %d rows: %d values differ", n, rows, bad);
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

static int differing_bytes(const void *a, const void *b, size_t n) {
    int count = 0;
    for (size_t i = 0; i < n; i++) count += ((const uint8_t *)a)[i] != ((const uint8_t *)b)[i];
    return count;
}

/* Residual add + norm + quantize, as the decode path calls it: 1, 2, 8 and 16 rows out of place (the
 * sliced kernel) and 2 in place (the register kernel), 20 rows both ways (the register kernel), n = 4096;
 * 8 rows of 8192 out of place (the sliced kernel at the 70B's decode, 32 slices a row; on sm_90 in clusters); and rows of 5120 (the register kernel's 640 threads rounded up to 768 for the q8 blocks of 8
 * warps; 20 slices) and 16384 (the looping kernel). Checked against the CPU (out), bit for bit: the
 * sum written to x_out, the q8_1 blocks against tm_cuda_quantize_q8_1 of out, and, at 4096, out
 * against tm_cuda_add + tm_cuda_rmsnorm where both take the same kernel (the sliced and the
 * register kernel add the squares in different orders). */
static void test_add_rmsnorm(tm_rng_t *rng, int rows, int in_place, int n) {
    const int64_t total = (int64_t)rows * n;
    const size_t q8_bytes = (size_t)tm_cuda_q8_1_bytes(total);
    float *x = malloc(total * 4), *delta = malloc(total * 4), *w = malloc(n * 4), *expected = malloc(total * 4), *got = malloc(total * 4),
          *sum = malloc(total * 4), *got_x = malloc(total * 4), *separate = malloc(total * 4);
    uint8_t *q8_fused = malloc(q8_bytes), *q8_separate = malloc(q8_bytes);
    fill(rng, x, total, 3.0f), fill(rng, delta, total, 1.0f), fill(rng, w, n, 1.5f);
    for (int64_t i = 0; i < total; i++) sum[i] = x[i] + delta[i];
    for (int r = 0; r < rows; r++) tm_cpu_rmsnorm(expected + (int64_t)r * n, sum + (int64_t)r * n, w, n, 1e-5f);
    float *d_x = to_device(x, total * 4), *d_delta = to_device(delta, total * 4), *d_w = to_device(w, n * 4);
    float *d_x_out = in_place ? d_x : to_device(NULL, total * 4);
    float *d_out = to_device(NULL, total * 4), *d_sum = to_device(x, total * 4), *d_out2 = to_device(NULL, total * 4);
    void *d_q8 = to_device(NULL, q8_bytes), *d_q8b = to_device(NULL, q8_bytes);
    CHECK(tm_cuda_add_rmsnorm(d_out, d_x_out, d_x, d_delta, d_w, rows, n, 1e-5f, d_q8, NULL) == 0, "add_rmsnorm launch");
    CHECK(tm_cuda_quantize_q8_1(d_out, rows, n, d_q8b, NULL) == 0, "quantize launch");
    from_device(got, d_out, total * 4);
    from_device(got_x, d_x_out, total * 4);
    int bad = 0;
    for (int64_t i = 0; i < total; i++) bad += !(fabsf(got[i] - expected[i]) <= 1e-6f * fabsf(expected[i]) + 1e-7f);
    CHECK(bad == 0, "add_rmsnorm vs CPU (%d rows of %d, %s): %d values differ", rows, n, in_place ? "in place" : "out of place", bad);
    CHECK(differing_bytes(got_x, sum, total * 4) == 0, "add_rmsnorm wrote x + delta (%d rows, %s)", rows, in_place ? "in place" : "out of place");
    from_device(q8_fused, d_q8, q8_bytes), from_device(q8_separate, d_q8b, q8_bytes);
    CHECK(differing_bytes(q8_fused, q8_separate, q8_bytes) == 0,
          "fused q8_1 equals tm_cuda_quantize_q8_1 of the output bit for bit (%d rows of %d)", rows, n);
    /* the f16 copy (tm_cuda_add_rmsnorm_half): the same float output, and each value rounded to
     * nearest even (the host's tm_f32_to_f16), where its kernel applies (a few rows, out of place) */
    void *d_out16 = to_device(NULL, total * 2);
    float *d_half_x = to_device(x, total * 4); /* x again: an in-place run above left the sum in d_x */
    float *d_half_x_out = to_device(NULL, total * 4), *d_out3 = to_device(NULL, total * 4);
    const int half_status = tm_cuda_add_rmsnorm_half(d_out3, d_out16, d_half_x_out, d_half_x, d_delta, d_w, rows, n, 1e-5f, NULL);
    if (rows <= 16 && n % 32 == 0) {
        CHECK(half_status == 0, "add_rmsnorm_half launch (%d rows of %d)", rows, n);
        float *got3 = malloc(total * 4);
        tm_f16_t *got16 = malloc(total * 2), *want16 = malloc(total * 2);
        from_device(got3, d_out3, total * 4), from_device(got16, d_out16, total * 2);
        for (int64_t i = 0; i < total; i++) want16[i] = tm_f32_to_f16(got3[i]);
        int bad_float = 0;
        for (int64_t i = 0; i < total; i++) bad_float += !(fabsf(got3[i] - expected[i]) <= 1e-6f * fabsf(expected[i]) + 1e-7f);
        CHECK(bad_float == 0, "add_rmsnorm_half's float output vs CPU (%d rows of %d): %d differ", rows, n, bad_float);
        CHECK(differing_bytes(got16, want16, total * 2) == 0, "add_rmsnorm_half's f16 copy is its output rounded to nearest even (%d rows of %d)",
              rows, n);
        free(got3), free(got16), free(want16);
    } else {
        CHECK(half_status == cudaErrorNotSupported, "add_rmsnorm_half declines %d rows of %d (not the sliced kernel's)", rows, n);
    }
    cudaFree(d_out16), cudaFree(d_half_x), cudaFree(d_half_x_out), cudaFree(d_out3);
    if (n == 4096 && (!in_place || rows > 16)) {
        CHECK(tm_cuda_add(d_sum, d_delta, total, NULL) == 0 && tm_cuda_rmsnorm(d_out2, d_sum, d_w, rows, n, 1e-5f, NULL) == 0,
              "separate launches");
        from_device(separate, d_out2, total * 4);
        CHECK(differing_bytes(got, separate, total * 4) == 0, "add_rmsnorm output equals add + rmsnorm bit for bit (%d rows)", rows);
    }
    if (!in_place) cudaFree(d_x_out);
    cudaFree(d_x), cudaFree(d_delta), cudaFree(d_w), cudaFree(d_out), cudaFree(d_sum), cudaFree(d_out2), cudaFree(d_q8), cudaFree(d_q8b);
    free(x), free(delta), free(w), free(expected), free(got), free(sum), free(got_x), free(q8_fused), free(q8_separate), free(separate);
}

static void test_swiglu_q8(tm_rng_t *rng, int rows);
static void test_rope_append(tm_rng_t *rng);
static void test_rope_append_q8(tm_rng_t *rng, int hd);
static void test_quantize_values(tm_rng_t *rng);

/* The q8_1 pair order (kernels/cuda/quant.cuh), restated here from its description: value e of
 * a row of n (n % 256 == 0) in group g = e / 2048 (of `size` = min(2048, n - 2048g) values),
 * block b, sub-block s, chunk c sits at 2048g + (2 * (bit 0 of s xor bit 1) + c) * size / 4 +
 * (4b + s / 2) * 16 + e % 16. One row quantized by tm_cuda_quantize_q8_1 must hold every value
 * there: 2816 (a group of eight blocks, then three) and 4096 wide. */
static void test_pair_order(tm_rng_t *rng) {
    const int64_t widths[2] = {2816, 4096};
    for (int k = 0; k < 2; k++) {
        const int64_t n = widths[k];
        const size_t q8_bytes = (size_t)tm_cuda_q8_1_bytes(n);
        float *x = malloc(n * 4);
        int8_t *q8 = malloc(q8_bytes);
        fill(rng, x, n, 2.0f);
        float *d_x = to_device(x, n * 4);
        void *d_q8 = to_device(NULL, q8_bytes);
        CHECK(tm_cuda_quantize_q8_1(d_x, 1, n, d_q8, NULL) == 0, "quantize launch");
        from_device(q8, d_q8, q8_bytes);
        const int8_t *qs = q8, *paired = q8 + n + n / 8;
        int misplaced = 0, distinct = 0;
        for (int64_t e = 0; e < n; e++) {
            const int64_t group = e / 2048 * 2048, size = n - group < 2048 ? n - group : 2048;
            const int within = (int)(e - group), b = within / 256, s = within / 32 % 8, c = within / 16 % 2;
            const int64_t at = group + (2 * ((s ^ (s >> 1)) & 1) + c) * (size / 4) + (4 * b + s / 2) * 16 + within % 16;
            misplaced += paired[at] != qs[e];
            distinct += e > 0 && qs[e] != qs[e - 1];
        }
        CHECK(misplaced == 0 && distinct > n / 2, "q8_1 pair order, %lld wide: %d values misplaced (%d of neighbours distinct)", (long long)n,
              misplaced, distinct);
        cudaFree(d_x), cudaFree(d_q8);
        free(x), free(q8);
    }
}

/* tm_cuda_quantize_q8_1's values against its description, computed here: per 256-value block
 * d = max |x| / 127, q = round(x / d) (to nearest even, as lrintf), and per 32-value sub-block the
 * halves (d, d * sum q) (round to nearest even). Bit for bit, on 3 rows of 1024 whose sub-blocks
 * differ in magnitude by up to 1000x (so a per-32 scale would differ) and one all-zero block (d = 0,
 * q = 0). Rows not whole blocks are refused. */
static void test_quantize_values(tm_rng_t *rng) {
    const int rows = 3, n = 1024;
    const int64_t total = (int64_t)rows * n;
    const size_t q8_bytes = (size_t)tm_cuda_q8_1_bytes(total);
    float *x = malloc(total * 4);
    uint8_t *q8 = malloc(q8_bytes);
    fill(rng, x, total, 1.0f);
    for (int64_t sub = 0; sub < total / 32; sub++) {
        const float magnitude = powf(10.0f, 3.0f * tm_rng_uniform(rng) - 1.0f); /* 0.1 .. 100 */
        for (int i = 0; i < 32; i++) x[sub * 32 + i] *= magnitude;
    }
    for (int i = 256; i < 512; i++) x[i] = 0.0f; /* row 0's second block */
    float *d_x = to_device(x, total * 4);
    void *d_q8 = to_device(NULL, q8_bytes);
    CHECK(tm_cuda_quantize_q8_1(d_x, rows, n, d_q8, NULL) == 0 && cudaDeviceSynchronize() == cudaSuccess, "quantize launch");
    from_device(q8, d_q8, q8_bytes);
    const int8_t *qs = (const int8_t *)q8;
    const uint16_t *pairs = (const uint16_t *)(q8 + total);
    int bad_values = 0, bad_pairs = 0;
    for (int64_t block = 0; block < total / 256; block++) {
        float amax = 0;
        for (int i = 0; i < 256; i++) amax = fmaxf(amax, fabsf(x[block * 256 + i]));
        const float d = amax / 127.0f;
        for (int s = 0; s < 8; s++) {
            int sum = 0;
            for (int i = 0; i < 32; i++) {
                const int64_t e = block * 256 + s * 32 + i;
                const int q = amax > 0 ? (int)lrintf(x[e] / d) : 0;
                bad_values += qs[e] != q;
                sum += q;
            }
            const int64_t p = block * 8 + s;
            bad_pairs += pairs[2 * p] != tm_f32_to_f16(d) || pairs[2 * p + 1] != tm_f32_to_f16(d * (float)sum);
        }
    }
    CHECK(bad_values == 0 && bad_pairs == 0, "q8_1 of %d x %d: one scale a 256-value block (%d values, %d (d, d * sum) pairs differ)", rows,
          n, bad_values, bad_pairs);
    CHECK(tm_cuda_quantize_q8_1(d_x, 4, 768 - 32, d_q8, NULL) == cudaErrorInvalidValue, "q8_1 of rows of 736 (not whole blocks) refused");
    cudaFree(d_x), cudaFree(d_q8);
    free(x), free(q8);
}

static void test_fused(tm_rng_t *rng) {
    test_pair_order(rng);
    test_quantize_values(rng);
    test_add_rmsnorm(rng, 1, 0, 4096); /* one row: the q8_1 pair order written too */
    for (int c = 0; c < 4; c++) test_add_rmsnorm(rng, c < 2 ? 2 : 20, c % 2, 4096);
    test_add_rmsnorm(rng, 8, 0, 4096); /* the sliced kernel's most rows */
    test_add_rmsnorm(rng, 16, 0, 4096); /* the sliced kernel's most rows (TM_NORM_SLICED_ROWS unset), its f16 copy's always */
    test_add_rmsnorm(rng, 8, 0, 8192);
    test_add_rmsnorm(rng, 1, 0, 5120);
    test_add_rmsnorm(rng, 20, 1, 5120);
    test_add_rmsnorm(rng, 3, 1, 16384);
    for (int rows = 1; rows <= 3; rows += 2) test_swiglu_q8(rng, rows);
    test_rope_append(rng);
    for (int hd = 32; hd <= 128; hd *= 2) test_rope_append_q8(rng, hd);
}

/* SwiGLU + quantize against SwiGLU and tm_cuda_quantize_q8_1, bit for bit (with one row the pair
 * order too, with more the bytes after the scales untouched by both). */
static void test_swiglu_q8(tm_rng_t *rng, int rows) {
    const int n = 4096;
    const int64_t total = (int64_t)rows * n;
    const size_t q8_bytes = (size_t)tm_cuda_q8_1_bytes(total);
    float *x = malloc(total * 4), *delta = malloc(total * 4), *got = malloc(total * 4), *separate = malloc(total * 4);
    uint8_t *q8_fused = malloc(q8_bytes), *q8_separate = malloc(q8_bytes);
    fill(rng, x, total, 3.0f), fill(rng, delta, total, 1.0f);
    float *d_delta = to_device(delta, total * 4);
    void *d_q8 = to_device(NULL, q8_bytes), *d_q8b = to_device(NULL, q8_bytes);
    /* SwiGLU + quantize */
    float *d_gate = to_device(x, total * 4), *d_gate2 = to_device(x, total * 4);
    cudaMemset(d_q8, 0xff, q8_bytes), cudaMemset(d_q8b, 0xff, q8_bytes);
    CHECK(tm_cuda_swiglu_q8(d_gate, d_delta, rows, n, d_q8, NULL) == 0, "swiglu_q8 launch");
    CHECK(tm_cuda_swiglu(d_gate2, d_delta, total, NULL) == 0 && tm_cuda_quantize_q8_1(d_gate2, rows, n, d_q8b, NULL) == 0, "separate");
    from_device(got, d_gate, total * 4), from_device(separate, d_gate2, total * 4);
    from_device(q8_fused, d_q8, q8_bytes), from_device(q8_separate, d_q8b, q8_bytes);
    CHECK(differing_bytes(got, separate, total * 4) == 0, "swiglu_q8 output equals swiglu bit for bit (%d rows)", rows);
    CHECK(differing_bytes(q8_fused, q8_separate, q8_bytes) == 0, "swiglu_q8 quantization equals tm_cuda_quantize_q8_1 (%d rows)", rows);
    /* SwiGLU with its f16 copy: the same floats, and each rounded to nearest even (the host's tm_f32_to_f16) */
    float *d_gate3 = to_device(x, total * 4);
    void *d_half = to_device(NULL, total * 2);
    CHECK(tm_cuda_swiglu_half(d_gate3, d_delta, total, d_half, NULL) == 0, "swiglu_half launch");
    float *got3 = malloc(total * 4);
    tm_f16_t *got16 = malloc(total * 2), *want16 = malloc(total * 2);
    from_device(got3, d_gate3, total * 4), from_device(got16, d_half, total * 2);
    for (int64_t i = 0; i < total; i++) want16[i] = tm_f32_to_f16(got3[i]);
    CHECK(differing_bytes(got3, separate, total * 4) == 0, "swiglu_half output equals swiglu bit for bit (%d rows)", rows);
    CHECK(differing_bytes(got16, want16, total * 2) == 0, "swiglu_half's f16 copy is its output rounded to nearest even (%d rows)", rows);
    cudaFree(d_gate3), cudaFree(d_half), free(got3), free(got16), free(want16);
    cudaFree(d_delta), cudaFree(d_q8), cudaFree(d_q8b), cudaFree(d_gate), cudaFree(d_gate2);
    free(x), free(delta), free(got), free(q8_fused), free(q8_separate), free(separate);
}

static void test_rope_append(tm_rng_t *rng) {
    /* rope + KV append: 20 tokens at positions 5..24 of one stream, 4 query heads, 2 kv heads; with
     * angles computed, then with a table of positions 0..14 (tokens past it computed): the same bits */
    for (int run = 0; run < 4; run++) {
        const int f32 = run % 2, tabled = run / 2, table_positions = 15;
        const int T = 20, n_head = 4, n_kv = 2, hd = 64, page_size = 4096, n_pages = 8;
        const int32_t table[8] = {6, 2, 7, 0, 5, 1, 3, 4};
        int32_t positions[20];
        int64_t offsets[20];
        for (int t = 0; t < T; t++) positions[t] = 5 + t, offsets[t] = 0;
        const int64_t nq = (int64_t)T * n_head * hd, nk = (int64_t)T * n_kv * hd;
        float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *factors = malloc(hd / 2 * 4);
        fill(rng, q, nq, 1.0f), fill(rng, k, nk, 1.0f), fill(rng, v, nk, 1.0f);
        for (int i = 0; i < hd / 2; i++) factors[i] = 1.0f + i * 0.25f;
        float *d_q = to_device(q, nq * 4), *d_q2 = to_device(q, nq * 4), *d_k = to_device(k, nk * 4), *d_k2 = to_device(k, nk * 4);
        float *d_v = to_device(v, nk * 4), *d_factors = to_device(factors, hd / 2 * 4);
        void *d_table = to_device(table, sizeof table), *d_offsets = to_device(offsets, sizeof offsets), *d_pos = to_device(positions, sizeof positions);
        void *pool = to_device(NULL, (size_t)n_pages * page_size), *pool2 = to_device(NULL, (size_t)n_pages * page_size);
        cudaMemset(pool, 0, (size_t)n_pages * page_size), cudaMemset(pool2, 0, (size_t)n_pages * page_size);
        void *d_angles = NULL;
        if (tabled) {
            CHECK(cudaMalloc(&d_angles, tm_cuda_rope_table_bytes(table_positions, hd)) == cudaSuccess &&
                      tm_cuda_rope_table(d_angles, table_positions, hd, 500000.0f, 1.0f, d_factors, NULL) == 0,
                  "rope table");
        }
        const tm_cuda_rope_kv rope = {n_head, n_kv, hd, hd, 500000.0f, 1.0f, d_factors, d_angles, tabled ? table_positions : 0,
                                      {pool, NULL, f32 ? TM_CUDA_KV_F32 : TM_CUDA_KV_F16, page_size}, d_table, d_offsets, d_pos};
        CHECK(tm_cuda_rope_kv_append(d_q, d_k, d_v, T, &rope, NULL) == 0, "rope_kv_append launch");
        CHECK(tm_cuda_rope(d_q2, T, n_head, hd, hd, 500000.0f, 1.0f, d_factors, d_pos, NULL) == 0 &&
                  tm_cuda_rope(d_k2, T, n_kv, hd, hd, 500000.0f, 1.0f, d_factors, d_pos, NULL) == 0 &&
                  tm_cuda_kv_append(d_k2, d_v, T, n_kv, hd, &(tm_cuda_kv){pool2, NULL, f32 ? TM_CUDA_KV_F32 : TM_CUDA_KV_F16, page_size},
                                    d_table, d_offsets, d_pos, NULL) == 0,
              "separate launches");
        float *got_q = malloc(nq * 4), *want_q = malloc(nq * 4);
        uint8_t *got_pool = malloc((size_t)n_pages * page_size), *want_pool = malloc((size_t)n_pages * page_size);
        from_device(got_q, d_q, nq * 4), from_device(want_q, d_q2, nq * 4);
        from_device(got_pool, pool, (size_t)n_pages * page_size), from_device(want_pool, pool2, (size_t)n_pages * page_size);
        CHECK(differing_bytes(got_q, want_q, nq * 4) == 0, "rope_kv_append queries (%s%s) equal rope bit for bit", f32 ? "f32" : "f16",
              tabled ? ", angle table" : "");
        CHECK(differing_bytes(got_pool, want_pool, (size_t)n_pages * page_size) == 0, "rope_kv_append pages (%s%s) equal rope + append",
              f32 ? "f32" : "f16", tabled ? ", angle table" : "");
        CHECK(differing_bytes(got_q, q, nq * 4) > 0, "the queries were rotated");
        int nonzero = 0;
        for (size_t i = 0; i < (size_t)n_pages * page_size; i++) nonzero += got_pool[i] != 0;
        CHECK(nonzero > 0, "keys and values were written");
        cudaFree(d_q), cudaFree(d_q2), cudaFree(d_k), cudaFree(d_k2), cudaFree(d_v), cudaFree(d_factors), cudaFree(d_table);
        cudaFree(d_offsets), cudaFree(d_pos), cudaFree(pool), cudaFree(pool2), cudaFree(d_angles);
        free(q), free(k), free(v), free(factors), free(got_q), free(want_q), free(got_pool), free(want_pool);
    }
}

/* Byte offset in a pool of kv head h's key (value: is_value) at position p of a stream whose rows
 * (2 n_kv vectors of head_bytes) fit a page of page_size bytes, through table. */
static size_t vector_offset(const int32_t *table, int p, int h, bool is_value, int n_kv, int head_bytes, int page_size) {
    const int row_bytes = 2 * n_kv * head_bytes, rows_per_page = page_size / row_bytes;
    return (size_t)table[p / rows_per_page] * page_size + (size_t)(p % rows_per_page) * row_bytes + (size_t)((is_value ? n_kv : 0) + h) * head_bytes;
}

/* Rope + KV append into an 8-bit cache: 20 tokens at positions 5..24, 4 query heads, 2 kv heads of
 * head_dim (64: 16 rows a page, 128: 8, 32: 32; the pairs of a vector are all of the block's
 * threads at 64 and 128, half at 32), angles computed. The same kernel into an f32 cache gives the
 * roped keys and values as floats; tm_kv_store_vector of those is the expected int8 and scale of
 * every vector, bit for bit; tm_cuda_kv_append (no rope) of keys roped by tm_cuda_rope writes the
 * same pool and scales. Values are scaled by up to 40 so the scales vary. */
static void test_rope_append_q8(tm_rng_t *rng, int hd) {
    const int T = 20, n_head = 4, n_kv = 2, page_size = 4096, n_pages = 8;
    const int32_t table[8] = {6, 2, 7, 0, 5, 1, 3, 4};
    int32_t positions[20];
    int64_t offsets[20];
    for (int t = 0; t < T; t++) positions[t] = 5 + t, offsets[t] = 0;
    const int64_t nq = (int64_t)T * n_head * hd, nk = (int64_t)T * n_kv * hd;
    const size_t pool_bytes = (size_t)n_pages * page_size, f32_pool_bytes = 4 * pool_bytes, scale_bytes = pool_bytes / hd * 4;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    fill(rng, q, nq, 1.0f), fill(rng, k, nk, 1.0f), fill(rng, v, nk, 1.0f);
    for (int64_t i = 0; i < nk; i++) k[i] *= 1.0f + (float)(i / hd % 40), v[i] *= 1.0f + (float)((i / hd + 7) % 40);
    float *d_q = to_device(q, nq * 4), *d_q2 = to_device(q, nq * 4), *d_k = to_device(k, nk * 4), *d_k2 = to_device(k, nk * 4);
    float *d_v = to_device(v, nk * 4);
    void *d_table = to_device(table, sizeof table), *d_offsets = to_device(offsets, sizeof offsets), *d_pos = to_device(positions, sizeof positions);
    void *pool = to_device(NULL, pool_bytes), *pool2 = to_device(NULL, pool_bytes), *pool_f32 = to_device(NULL, f32_pool_bytes);
    float *scales = to_device(NULL, scale_bytes), *scales2 = to_device(NULL, scale_bytes);
    cudaMemset(pool, 0x55, pool_bytes), cudaMemset(pool2, 0x55, pool_bytes), cudaMemset(pool_f32, 0, f32_pool_bytes);
    cudaMemset(scales, 0x55, scale_bytes), cudaMemset(scales2, 0x55, scale_bytes);
    tm_cuda_rope_kv rope = {n_head, n_kv, hd, hd, 10000.0f, 1.0f, NULL, NULL, 0, {pool, scales, TM_CUDA_KV_Q8, page_size}, d_table, d_offsets, d_pos};
    CHECK(tm_cuda_rope_kv_append(d_q, d_k, d_v, T, &rope, NULL) == 0, "rope_kv_append launch (8-bit cache, head_dim %d)", hd);
    rope.kv = (tm_cuda_kv){pool_f32, NULL, TM_CUDA_KV_F32, 4 * page_size}; /* the same rows a page as the 8-bit pool */
    CHECK(tm_cuda_rope_kv_append(d_q2, d_k2, d_v, T, &rope, NULL) == 0, "rope_kv_append launch (f32 cache)");
    CHECK(tm_cuda_rope(d_k2, T, n_kv, hd, hd, 10000.0f, 1.0f, NULL, d_pos, NULL) == 0 &&
              tm_cuda_kv_append(d_k2, d_v, T, n_kv, hd, &(tm_cuda_kv){pool2, scales2, TM_CUDA_KV_Q8, page_size}, d_table, d_offsets, d_pos,
                                NULL) == 0,
          "rope then kv_append (8-bit cache)");
    uint8_t *got = malloc(pool_bytes), *got2 = malloc(pool_bytes), *want = malloc(pool_bytes);
    float *got_scales = malloc(scale_bytes), *got_scales2 = malloc(scale_bytes), *want_scales = malloc(scale_bytes);
    float *roped = malloc(f32_pool_bytes);
    from_device(got, pool, pool_bytes), from_device(got2, pool2, pool_bytes), from_device(roped, pool_f32, f32_pool_bytes);
    from_device(got_scales, scales, scale_bytes), from_device(got_scales2, scales2, scale_bytes);
    memcpy(want, got, pool_bytes), memcpy(want_scales, got_scales, scale_bytes); /* bytes outside the written vectors: as found */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_kv; h++)
            for (int kind = 0; kind < 2; kind++) {
                const size_t at = vector_offset(table, positions[t], h, kind, n_kv, hd, page_size);
                const size_t at_f32 = vector_offset(table, positions[t], h, kind, n_kv, 4 * hd, 4 * page_size);
                tm_kv_store_vector(want + at, want_scales + at / hd, roped + at_f32 / 4, hd, TM_KV_Q8);
            }
    int differing_scales = 0;
    for (size_t i = 0; i < scale_bytes / 4; i++) differing_scales += memcmp(&got_scales[i], &want_scales[i], 4) != 0;
    CHECK(differing_bytes(got, want, pool_bytes) == 0 && differing_scales == 0,
          "rope_kv_append into an 8-bit cache (head_dim %d): int8 values and scales equal tm_kv_store_vector of the roped vectors "
          "(%d bytes, %d scales differ)", hd, differing_bytes(got, want, pool_bytes), differing_scales);
    CHECK(differing_bytes(got, got2, pool_bytes) == 0 && differing_bytes(got_scales, got_scales2, scale_bytes) == 0,
          "rope then kv_append writes the same 8-bit pool and scales (head_dim %d)", hd);
    int written = 0;
    for (size_t i = 0; i < scale_bytes / 4; i++) written += got_scales[i] > 0 && got_scales[i] < 1.0f;
    CHECK(written == 2 * T * n_kv, "every appended vector has a scale (%d of %d)", written, 2 * T * n_kv);
    cudaFree(d_q), cudaFree(d_q2), cudaFree(d_k), cudaFree(d_k2), cudaFree(d_v), cudaFree(d_table), cudaFree(d_offsets), cudaFree(d_pos);
    cudaFree(pool), cudaFree(pool2), cudaFree(pool_f32), cudaFree(scales), cudaFree(scales2);
    free(q), free(k), free(v), free(got), free(got2), free(want), free(got_scales), free(got_scales2), free(want_scales), free(roped);
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
    test_fused(&rng);
    CHECK(cudaGetLastError() == cudaSuccess, "no CUDA error pending");
    return check_report("test_ops_cuda");
}
