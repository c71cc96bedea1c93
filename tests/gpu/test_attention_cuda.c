/*
 * test_attention_cuda.c - paged attention on the GPU against the CPU reference
 * (tm_cpu_attention), reading the same pages: the host KV cache (random keys/values, several
 * sequences of 1 to 900 tokens, layer 1 of 2) is copied to the device with its page tables.
 * Decode attention runs as one block per kv head's query heads and split over keys (4 splits of
 * 225 keys, and 8 of 128, so the 1-token sequence has empty splits; 32 and 40 splits of any size,
 * the latter combined in two rounds), short splits and long ones taking the kernel's two ways of
 * sharing a block's work among its warps (the warps sharing keys of a group's block of 4 or 8
 * heads of an f16 or 8-bit cache at head dims 64 and 128 on tensor cores, held to the same tolerance);
 * prefill flash attention runs causal over
 * tiles of query tokens (the last 100 positions of the 900-token sequence, all 37 of the second,
 * the one of the first), each query seeing keys 0..its position, in float32 and on tensor cores,
 * and on tensor cores non-causal (check_flash states the tolerances; the tensor-core kernel refuses
 * an f32 cache and rounds an 8-bit cache's scaled values to f16 as it stages them).
 * Layouts cover several rows per page, one row per page and a row spanning several pages, f16,
 * f32 and 8-bit (the host cache's int8 values and float scales, tm_kv_store_vector, copied as they
 * are: the kernels read each vector's scale from the same slot), head dims 32..256, grouped-query ratios 1..4, 8 and 12. Outputs poisoned with NaN first; each
 * element within 2e-5 absolute (values in [-1, 1], float32 sums in another order). The decode's
 * q8_1 copy of its output equals tm_cuda_quantize_q8_1 of the output bit for bit; where a token's
 * n_head * head_dim outputs are not whole 256-value q8 blocks, asking for it is refused. Its f16
 * copy (asked for in every decode launch, with the q8_1 copy and without it) is each output value
 * rounded to nearest even (the host's tm_f32_to_f16), bit for bit; a misaligned one is refused.
 * Without a CUDA device it reports itself skipped (exit 77).
 *
 * `test_attention_cuda [--decode-only] [LAYOUT...]` runs only the layouts numbered (their index in
 * main's table, from 0) and with --decode-only leaves out the prefill flash checks: a subset small
 * enough for compute-sanitizer's racecheck (`ci/gpu --sanitize` runs the one-token cluster layouts
 * so), under which the whole test completes nothing in minutes.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"
#include "ops_cpu.h"

#define SKIPPED 77

typedef struct layout_case {
    int n_head_kv, group, head_dim;
    tm_kv_type type;
    uint32_t page_size;
} layout_case;

/* Values of got differing from expected by more than tolerance (NaN counts); the largest difference in *worst. */
static int count_differences(const float *got, const float *expected, int64_t n, double tolerance, double *worst) {
    int bad = 0;
    *worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double difference = fabs(got[i] - expected[i]);
        bad += !(difference <= tolerance);
        if (!(difference <= *worst)) *worst = difference;
    }
    return bad;
}

static const char *kv_type_name(tm_kv_type type) { return type == TM_KV_F32 ? "f32" : type == TM_KV_Q8 ? "q8" : "f16"; }

typedef enum flash_variant { FLASH_FLOAT, FLASH_MMA_CAUSAL, FLASH_MMA_ALL_KEYS } flash_variant;
static const char *const flash_names[] = {"float32 causal", "tensor-core causal", "tensor-core non-causal"};

/* Prefill flash attention over tiles of query tokens against the CPU. Causal variants: the last
 * 100 positions of the 900-token sequence, all 37 of the second and the one of the first, the
 * query at position p seeing keys 0..p. Non-causal: the 900-token sequence's last 100 queries,
 * each seeing all 900 keys. Tolerance: float32 2e-5 absolute (sums in another order); tensor
 * cores 4e-3 absolute (queries and probabilities rounded to f16, 2^-11 relative each, values in
 * [-1, 1]; an 8-bit cache's scaled values rounded to f16 too, 2^-11 relative). The tensor-core
 * kernel takes f16 and 8-bit caches and head dims 64..256 only. */
static void check_flash(const layout_case *lc, flash_variant variant, tm_kv_cache *kv, const int *seqs, const int *lengths, int n_seq,
                        int layer, const int64_t *offsets, const tm_cuda_kv *d_kv, void *d_tables, float *scores, tm_rng_t *rng) {
    const int n_head = lc->n_head_kv * lc->group;
    const bool mma = variant != FLASH_FLOAT, all_keys = variant == FLASH_MMA_ALL_KEYS;
    const int tile_tokens = mma ? tm_cuda_flash_mma_tile_tokens(lc->head_dim, n_head, lc->n_head_kv)
                                : tm_cuda_flash_tile_tokens(lc->head_dim, n_head, lc->n_head_kv);
    const bool power_of_two_dim = lc->head_dim == 32 || lc->head_dim == 64 || lc->head_dim == 128 || lc->head_dim == 256;
    if (mma && lc->type == TM_KV_F32 && tile_tokens > 0) {
        const int32_t none = 0;
        CHECK(tm_cuda_flash_attention_mma(NULL, NULL, n_head, lc->n_head_kv, lc->head_dim, d_kv, &none, NULL, &none, &none, 1, 0, NULL) ==
                  cudaErrorNotSupported,
              "tensor-core flash refuses an f32 cache (nothing launched)");
        return;
    }
    if (mma && (lc->head_dim < 64 || !power_of_two_dim)) {
        CHECK(tile_tokens == 0, "tensor-core flash should refuse head_dim %d", lc->head_dim);
        return;
    }
    if (!power_of_two_dim) { /* the float kernel takes head dims 32, 64, 128 and 256 */
        CHECK(tile_tokens == 0, "float32 flash should refuse head_dim %d", lc->head_dim);
        return;
    }
    CHECK(tile_tokens >= 1, "%s flash tiles for head_dim %d group %d", flash_names[variant], lc->head_dim, lc->group);
    if (tile_tokens < 1) return;
    const double tolerance = mma ? 4e-3 : 2e-5;
    const char *kv_name = kv_type_name(lc->type);
    const int first_position[3] = {all_keys ? lengths[0] : 0, all_keys ? lengths[1] : 0, 800};
    int n_queries = 0;
    for (int s = 0; s < n_seq; s++) n_queries += lengths[s] - first_position[s];
    int32_t *positions = malloc((size_t)n_queries * 4), *tiles = malloc((size_t)n_queries * 8);
    int64_t *query_offsets = malloc((size_t)n_queries * 8);
    int64_t pq_floats = (int64_t)n_queries * n_head * lc->head_dim;
    float *pq = malloc(pq_floats * 4), *p_expected = malloc(pq_floats * 4), *p_got = malloc(pq_floats * 4);
    for (int64_t i = 0; i < pq_floats; i++) pq[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
    int t = 0, n_tiles = 0;
    for (int s = 0; s < n_seq; s++)
        for (int p = first_position[s]; p < lengths[s]; p++, t++) {
            positions[t] = p;
            query_offsets[t] = offsets[s];
            if (p == first_position[s] || tiles[2 * n_tiles - 1] == tile_tokens) tiles[2 * n_tiles] = t, tiles[2 * n_tiles + 1] = 0, n_tiles++;
            tiles[2 * n_tiles - 1]++;
            for (int h = 0; h < n_head; h++) {
                int64_t at = ((int64_t)t * n_head + h) * lc->head_dim;
                tm_cpu_attention(pq + at, kv, seqs[s], layer, all_keys ? lengths[s] : p + 1, h / lc->group, lc->head_dim, p_expected + at, scores);
            }
        }
    void *d_pq, *d_pout, *d_positions, *d_tiles, *d_query_offsets;
    cudaMalloc(&d_pq, pq_floats * 4), cudaMalloc(&d_pout, pq_floats * 4), cudaMalloc(&d_positions, (size_t)n_queries * 4);
    cudaMalloc(&d_tiles, (size_t)n_tiles * 8), cudaMalloc(&d_query_offsets, (size_t)n_queries * 8);
    cudaMemcpy(d_pq, pq, pq_floats * 4, cudaMemcpyHostToDevice);
    cudaMemset(d_pout, 0xff, pq_floats * 4);
    cudaMemcpy(d_positions, positions, (size_t)n_queries * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_tiles, tiles, (size_t)n_tiles * 8, cudaMemcpyHostToDevice);
    cudaMemcpy(d_query_offsets, query_offsets, (size_t)n_queries * 8, cudaMemcpyHostToDevice);
    int launched = mma ? tm_cuda_flash_attention_mma(d_pq, d_pout, n_head, lc->n_head_kv, lc->head_dim, d_kv, d_tables, d_query_offsets,
                                                     d_positions, d_tiles, n_tiles, all_keys ? lengths[2] : 0, NULL)
                       : tm_cuda_flash_attention(d_pq, d_pout, n_head, lc->n_head_kv, lc->head_dim, d_kv, d_tables, d_query_offsets,
                                                 d_positions, d_tiles, n_tiles, NULL);
    CHECK(launched == 0, "%s flash launch", flash_names[variant]);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "flash kernel");
    cudaMemcpy(p_got, d_pout, pq_floats * 4, cudaMemcpyDeviceToHost);
    double worst;
    int bad = count_differences(p_got, p_expected, pq_floats, tolerance, &worst);
    CHECK(bad == 0, "%s flash prefill (%d tiles of <= %d tokens): kv heads %d x group %d, head_dim %d, %s, page %u: %d of %lld values differ (worst %.3g)",
          flash_names[variant], n_tiles, tile_tokens, lc->n_head_kv, lc->group, lc->head_dim, kv_name, lc->page_size, bad, (long long)pq_floats, worst);
    cudaFree(d_pq), cudaFree(d_pout), cudaFree(d_positions), cudaFree(d_tiles), cudaFree(d_query_offsets);
    free(positions), free(tiles), free(query_offsets), free(pq), free(p_expected), free(p_got);
}

/* Whether the q8_1 copy at d_q8 equals, byte for byte, tm_cuda_quantize_q8_1 of the n_rows rows of
 * the n_values floats at d_out (made into d_q8_reference; q8 and q8_reference: host room for both). */
static bool q8_matches_quantizer(const float *d_out, int n_rows, int64_t n_values, const void *d_q8, void *d_q8_reference, uint8_t *q8,
                                 uint8_t *q8_reference, size_t q8_bytes) {
    if (tm_cuda_quantize_q8_1(d_out, n_rows, n_values / n_rows, d_q8_reference, NULL) != 0 || cudaDeviceSynchronize() != cudaSuccess)
        return false;
    cudaMemcpy(q8, d_q8, q8_bytes, cudaMemcpyDeviceToHost), cudaMemcpy(q8_reference, d_q8_reference, q8_bytes, cudaMemcpyDeviceToHost);
    return !memcmp(q8, q8_reference, q8_bytes);
}

/* Whether the f16 copy of n output values at d_out16 is each float output at d_out rounded to
 * nearest even (tm_f32_to_f16), bit for bit. */
static bool f16_matches_output(const float *d_out, const void *d_out16, int64_t n) {
    float *out = malloc((size_t)n * 4);
    tm_f16_t *got16 = malloc((size_t)n * 2);
    cudaMemcpy(out, d_out, (size_t)n * 4, cudaMemcpyDeviceToHost), cudaMemcpy(got16, d_out16, (size_t)n * 2, cudaMemcpyDeviceToHost);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += got16[i] != tm_f32_to_f16(out[i]);
    free(out), free(got16);
    return bad == 0;
}

static void run_case(const layout_case *lc, bool with_flash, tm_rng_t *rng) {
    const int lengths[3] = {1, 37, 900}, n_seq = 3, layer = 1;
    const int n_head = lc->n_head_kv * lc->group;
    tm_kv_layout layout = {2, lc->n_head_kv, lc->head_dim, lc->type, lc->page_size};
    int64_t pages = 0;
    for (int s = 0; s < n_seq; s++) pages += tm_kv_pages_for_tokens(&layout, lengths[s]) * 2;
    tm_kv_cache *kv;
    tm_error_t error = {0};
    if (tm_kv_create(&layout, pages, n_seq, true, &kv, &error)) {
        CHECK(0, "%s", error.message);
        return;
    }
    int seqs[3];
    for (int s = 0; s < n_seq; s++) {
        seqs[s] = tm_kv_seq_new(kv);
        tm_kv_reserve(kv, seqs[s], lengths[s]);
        for (int l = 0; l < 2; l++)
            for (int p = 0; p < lengths[s]; p++)
                for (int h = 0; h < lc->n_head_kv; h++)
                    for (int kind = 0; kind < 2; kind++) {
                        float values[256];
                        for (int i = 0; i < lc->head_dim; i++) values[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
                        tm_kv_store_vector(kind ? tm_kv_value(kv, seqs[s], l, p, h) : tm_kv_key(kv, seqs[s], l, p, h),
                                           kind ? tm_kv_value_scale(kv, seqs[s], l, p, h) : tm_kv_key_scale(kv, seqs[s], l, p, h), values,
                                           lc->head_dim, lc->type);
                    }
    }
    /* one query token per sequence, at its last position */
    int64_t q_floats = (int64_t)n_seq * n_head * lc->head_dim;
    float *q = malloc(q_floats * sizeof(float)), *expected = malloc(q_floats * sizeof(float)), *got = malloc(q_floats * sizeof(float));
    float *scores = malloc(1024 * sizeof(float));
    for (int64_t i = 0; i < q_floats; i++) q[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
    int32_t *tables = malloc((size_t)pages * sizeof(int32_t)), n_keys[3];
    int64_t offsets[3], used = 0;
    for (int s = 0; s < n_seq; s++) {
        int64_t n;
        const int32_t *table = tm_kv_page_table(kv, seqs[s], layer, &n);
        offsets[s] = used;
        memcpy(tables + used, table, (size_t)n * sizeof(int32_t));
        used += n;
        n_keys[s] = lengths[s];
        for (int h = 0; h < n_head; h++) {
            int64_t at = ((int64_t)s * n_head + h) * lc->head_dim;
            tm_cpu_attention(q + at, kv, seqs[s], layer, lengths[s], h / lc->group, lc->head_dim, expected + at, scores);
        }
    }
    void *d_pool, *d_q, *d_out, *d_tables, *d_offsets, *d_keys, *d_scales = NULL;
    cudaMalloc(&d_pool, (size_t)pages * lc->page_size);
    const size_t scale_bytes = (size_t)pages * tm_kv_scale_bytes_per_page(&layout);
    if (scale_bytes) {
        cudaMalloc(&d_scales, scale_bytes);
        cudaMemcpy(d_scales, tm_kv_scale_storage(kv), scale_bytes, cudaMemcpyHostToDevice);
    }
    const tm_cuda_kv d_kv = {d_pool, d_scales, (int)lc->type, lc->page_size}, *dkv = &d_kv;
    cudaMalloc(&d_q, q_floats * 4), cudaMalloc(&d_out, q_floats * 4);
    cudaMalloc(&d_tables, (size_t)used * 4), cudaMalloc(&d_offsets, sizeof offsets), cudaMalloc(&d_keys, sizeof n_keys);
    cudaMemcpy(d_pool, tm_kv_storage(kv), (size_t)pages * lc->page_size, cudaMemcpyHostToDevice);
    cudaMemcpy(d_q, q, q_floats * 4, cudaMemcpyHostToDevice);
    cudaMemset(d_out, 0xff, q_floats * 4);
    cudaMemcpy(d_tables, tables, (size_t)used * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_offsets, offsets, sizeof offsets, cudaMemcpyHostToDevice);
    cudaMemcpy(d_keys, n_keys, sizeof n_keys, cudaMemcpyHostToDevice);
    const char *kv_name = kv_type_name(lc->type);
    /* (splits, at least this many keys a split): one block; 900 keys in 4 x 225 and 8 x 128 (the
     * 1-token stream leaves splits empty); 32 splits of >= 1 key: every stream's keys spread evenly
     * (900 -> 29 a split, 37 -> 2, the last splits short or empty); 40 splits: the combine takes
     * them in two rounds of 32 lanes (900 -> 23 a split: the group of 1 and the head dim 96 layouts).
     * The kernel spreads keys over fewer splits where fewer fill a wave of resident blocks (layouts
     * of several kv heads). In blocks of 4 or 8 query heads, a stream whose keys fit a 32-key chunk
     * a split takes 32-key splits, each warp its own heads (the 1-key stream always, 37 keys at 2+
     * splits, 900 at 32 and 40 where all are kept); the rest, splits whose warps share the keys. */
    const int split_cases[5][2] = {{1, 1}, {4, 225}, {8, 128}, {32, 1}, {40, 1}};
    void *d_partials, *d_q8, *d_q8_reference, *d_out16;
    cudaMalloc(&d_out16, (size_t)q_floats * 2);
    const size_t q8_bytes = (size_t)tm_cuda_q8_1_bytes((int64_t)q_floats);
    uint8_t *q8 = malloc(q8_bytes), *q8_reference = malloc(q8_bytes);
    cudaMalloc(&d_partials, (size_t)n_seq * n_head * 40 * (lc->head_dim + 2) * 4);
    cudaMalloc(&d_q8, q8_bytes), cudaMalloc(&d_q8_reference, q8_bytes);
    /* q8_1 comes in 256-value blocks: a token's n_head * head_dim outputs must be whole blocks */
    const bool whole_q8_blocks = (int64_t)n_head * lc->head_dim % 256 == 0;
    for (int c = 0; c < 5; c++) {
        /* the f16 copy with the q8_1 copy in even cases, alone in odd ones */
        const bool with_q8 = whole_q8_blocks && c % 2 == 0;
        cudaMemset(d_out, 0xff, q_floats * 4), cudaMemset(d_out16, 0xff, (size_t)q_floats * 2);
        cudaMemset(d_q8, 0x55, q8_bytes), cudaMemset(d_q8_reference, 0x55, q8_bytes); /* pair order: one row only */
        if (!whole_q8_blocks)
            CHECK(tm_cuda_paged_attention(d_q, d_out, n_seq, n_head, lc->n_head_kv, lc->head_dim, dkv, d_tables, d_offsets, d_keys, split_cases[c][0], split_cases[c][1],
                                          d_partials, d_q8, NULL, NULL) == cudaErrorInvalidValue,
                  "decode, %d x %d outputs a token: q8 output refused (not whole 256-value blocks)", n_head, lc->head_dim);
        CHECK(tm_cuda_paged_attention(d_q, d_out, n_seq, n_head, lc->n_head_kv, lc->head_dim, dkv, d_tables, d_offsets, d_keys, split_cases[c][0], split_cases[c][1],
                                      d_partials, NULL, (char *)d_out16 + 2, NULL) == cudaErrorInvalidValue,
              "decode: a misaligned f16 copy refused");
        CHECK(tm_cuda_paged_attention(d_q, d_out, n_seq, n_head, lc->n_head_kv, lc->head_dim, dkv, d_tables, d_offsets, d_keys, split_cases[c][0], split_cases[c][1],
                                      d_partials, with_q8 ? d_q8 : NULL, d_out16, NULL) == 0,
              "launch");
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernel");
        cudaMemcpy(got, d_out, q_floats * 4, cudaMemcpyDeviceToHost);
        CHECK(f16_matches_output(d_out, d_out16, q_floats), "decode, %d splits, head_dim %d%s: the f16 output is out rounded to nearest even",
              split_cases[c][0], lc->head_dim, with_q8 ? ", with q8_1" : "");
        if (with_q8) /* the q8_1 copy written alongside (by the combine, or after one split) */
            CHECK(q8_matches_quantizer(d_out, n_seq, q_floats, d_q8, d_q8_reference, q8, q8_reference, q8_bytes),
                  "decode, %d splits, head_dim %d: the q8_1 output equals tm_cuda_quantize_q8_1 of out", split_cases[c][0], lc->head_dim);
        double worst;
        int bad = count_differences(got, expected, q_floats, 2e-5, &worst);
        CHECK(bad == 0, "decode, %d splits: kv heads %d x group %d, head_dim %d, %s, page %u: %d of %lld values differ (worst %.3g)",
              split_cases[c][0], lc->n_head_kv, lc->group, lc->head_dim, kv_name, lc->page_size, bad, (long long)q_floats, worst);
    }
    /* without splits (tm_cuda_decode_attention_whole): f16 and 8-bit, head dims 64 and 128, groups up to 8;
     * the same tolerance against the CPU, and its q8_1 (written in the kernel where the group is 1,
     * 4 or 8, else by a quantize launch) equals the quantizer's of out, byte for byte. A group of 2
     * or more of an f16 or 8-bit cache takes the tensor-core chunks in every launch (the heads as mma
     * rows, the query and weights split into two halves, held to the same 2e-5: groups of 4 and 8 at
     * head dim 128, 3 padded to 4 at 64, blocks of 2 heads at one token; ci/gpu runs this test again
     * under TM_ATTENTION_GROUP_MMA=0 for the scalar chunks, and under TM_ATTENTION_GROUP_SPLIT=1 for
     * the one-token blocks of 2 heads each alone: on sm_90 they run in clusters of 2 that split the
     * keys by default). For a group of
     * 1 of an f16 cache the several-token launch told the true longest context (900 keys) takes the
     * tensor-core chunks (the query and weights split into two halves, held to the same 2e-5), and
     * on sm_90 the one-token launches below of a group of 1 (f16 and, at head dim 128, 8-bit: 8-key
     * slices a warp) run in clusters of 8 blocks merged through distributed shared memory (1, 37 and
     * 900 keys: most blocks of a cluster see no key) */
    const int n_head_kv = lc->n_head_kv, head_dim = lc->head_dim;
    if (tm_cuda_decode_attention_whole_supported(n_head, n_head_kv, head_dim, (int)lc->type)) {
        /* the several-token launch told a longest context of 0 (the scalar chunks) and the true one
         * (past TM_CUDA_DECODE_MMA_KEYS: the tensor-core chunks for a group of 1 of an f16 cache) */
        int longest = 0;
        for (int s = 0; s < n_seq; s++) longest = lengths[s] > longest ? lengths[s] : longest;
        for (int form = 0; form < 2; form++) {
            const int longest_keys = form ? longest : 0;
            cudaMemset(d_out, 0xff, q_floats * 4), cudaMemset(d_out16, 0xff, (size_t)q_floats * 2);
            cudaMemset(d_q8, 0x55, q8_bytes), cudaMemset(d_q8_reference, 0x55, q8_bytes);
            CHECK(tm_cuda_decode_attention_whole(d_q, d_out, n_seq, n_head, n_head_kv, head_dim, dkv, d_tables, d_offsets, d_keys,
                                                 longest_keys, whole_q8_blocks ? d_q8 : NULL, d_out16, NULL) == 0 &&
                      cudaDeviceSynchronize() == cudaSuccess,
                  "decode without splits: launch");
            CHECK(f16_matches_output(d_out, d_out16, q_floats), "decode without splits, told %d keys, group %d, head_dim %d: the f16 output is out rounded",
                  longest_keys, lc->group, head_dim);
            cudaMemcpy(got, d_out, q_floats * 4, cudaMemcpyDeviceToHost);
            double worst;
            int bad = count_differences(got, expected, q_floats, 2e-5, &worst);
            CHECK(bad == 0,
                  "decode without splits, told %d keys: kv heads %d x group %d, head_dim %d, %s, page %u: %d of %lld values differ (worst %.3g)",
                  longest_keys, n_head_kv, lc->group, head_dim, kv_name, lc->page_size, bad, (long long)q_floats, worst);
            if (whole_q8_blocks)
                CHECK(q8_matches_quantizer(d_out, n_seq, q_floats, d_q8, d_q8_reference, q8, q8_reference, q8_bytes),
                      "decode without splits, told %d keys, group %d, head_dim %d: the q8_1 output equals tm_cuda_quantize_q8_1 of out",
                      longest_keys, lc->group, head_dim);
        }
        /* one token a launch, each stream in turn: the form of a one-token step (groups of 4 and 8 at
         * head dim 128 in blocks of two query heads) */
        const int64_t token_floats = (int64_t)n_head * head_dim;
        const size_t token_q8_bytes = (size_t)tm_cuda_q8_1_bytes(token_floats);
        for (int s = 0; s < n_seq; s++) {
            float *d_out_s = (float *)d_out + s * token_floats;
            /* the f16 copy alone in the first stream's launch, with the q8_1 copy after it */
            const bool with_q8 = whole_q8_blocks && s > 0;
            cudaMemset(d_out, 0xff, q_floats * 4), cudaMemset(d_out16, 0xff, (size_t)q_floats * 2);
            cudaMemset(d_q8, 0x55, q8_bytes), cudaMemset(d_q8_reference, 0x55, q8_bytes);
            CHECK(tm_cuda_decode_attention_whole((const float *)d_q + s * token_floats, d_out_s, 1, n_head, n_head_kv, head_dim, dkv,
                                                 d_tables, (const int64_t *)d_offsets + s, (const int32_t *)d_keys + s, lengths[s],
                                                 with_q8 ? d_q8 : NULL, d_out16, NULL) == 0 &&
                      cudaDeviceSynchronize() == cudaSuccess,
                  "decode without splits, one token: launch");
            CHECK(f16_matches_output(d_out_s, d_out16, token_floats), "decode without splits, one token, group %d, head_dim %d%s: the f16 output is out rounded",
                  lc->group, head_dim, with_q8 ? ", with q8_1" : "");
            cudaMemcpy(got, d_out_s, token_floats * 4, cudaMemcpyDeviceToHost);
            double worst;
            int bad = count_differences(got, expected + s * token_floats, token_floats, 2e-5, &worst);
            CHECK(bad == 0, "decode without splits, one token of %d keys: kv heads %d x group %d, head_dim %d: %d of %lld values differ (worst %.3g)",
                  lengths[s], n_head_kv, lc->group, head_dim, bad, (long long)token_floats, worst);
            if (with_q8)
                CHECK(q8_matches_quantizer(d_out_s, 1, token_floats, d_q8, d_q8_reference, q8, q8_reference, token_q8_bytes),
                      "decode without splits, one token, group %d, head_dim %d: the q8_1 output equals tm_cuda_quantize_q8_1 of out",
                      lc->group, head_dim);
        }
    } else {
        CHECK(tm_cuda_decode_attention_whole(d_q, d_out, n_seq, n_head, n_head_kv, head_dim, dkv, d_tables,
                                             d_offsets, d_keys, 0, NULL, NULL, NULL) == cudaErrorNotSupported,
              "decode without splits: kv heads %d x group %d, head_dim %d, %s: not supported, nothing launched", n_head_kv, lc->group,
              head_dim, kv_name);
    }
    cudaFree(d_partials), cudaFree(d_q8), cudaFree(d_q8_reference), cudaFree(d_out16);
    free(q8), free(q8_reference);

    for (int variant = 0; with_flash && variant < 3; variant++)
        check_flash(lc, (flash_variant)variant, kv, seqs, lengths, n_seq, layer, offsets, dkv, d_tables, scores, rng);
    cudaFree(d_scales), cudaFree(d_pool), cudaFree(d_q), cudaFree(d_out), cudaFree(d_tables), cudaFree(d_offsets), cudaFree(d_keys);
    free(q), free(expected), free(got), free(scores), free(tables);
    tm_kv_free(kv);
}

int main(int argc, char **argv) {
    const layout_case cases[] = {
        {4, 2, 32, TM_KV_F16, 512},   /* 512-byte rows: one row per page */
        {2, 1, 64, TM_KV_F32, 4096},  /* 1 KiB rows: four rows per page */
        {8, 4, 128, TM_KV_F16, 4096}, /* 4 KiB rows: llama 70B's layout */
        {8, 4, 128, TM_KV_F16, 1024}, /* a row spans four pages */
        {2, 2, 256, TM_KV_F16, 4096}, /* head dim 256 */
        {3, 3, 64, TM_KV_F32, 4096},  /* SmolLM2's group of 3 (tiles of 64 / 3 tokens) */
        {3, 3, 64, TM_KV_F16, 4096},  /* the same in f16: tensor-core flash at head dim 64 */
        {2, 3, 96, TM_KV_F16, 4096},  /* head dim 96: the generic decode kernel (no flash kernel takes it) */
        {1, 8, 128, TM_KV_F16, 4096}, /* llama 70B's group of 8: one decode block serves 8 query heads */
        {2, 1, 128, TM_KV_F16, 4096}, /* llama 7B's group of 1 at head dim 128: two kv heads make one q8 block */
        {1, 12, 64, TM_KV_F32, 4096}, /* a group of 12: decode blocks of 8 + 4 query heads */
        /* the 8-bit cache: int8 values, a float scale a vector */
        {4, 2, 32, TM_KV_Q8, 256},    /* 256-byte rows: one row per page, head dim 32 */
        {8, 4, 128, TM_KV_Q8, 4096},  /* llama 70B's layout: two rows a page */
        {8, 4, 128, TM_KV_Q8, 1024},  /* a row spans two pages */
        {32, 1, 128, TM_KV_Q8, 4096}, /* llama 7B's: K on one page, V on the next */
        {2, 1, 128, TM_KV_Q8, 4096},  /* a group of 1: two kv heads make one q8 block (one token: 8-key slices in clusters) */
        {3, 3, 64, TM_KV_Q8, 4096},   /* SmolLM2's group of 3 */
        {1, 8, 128, TM_KV_Q8, 4096},  /* a group of 8 */
        {2, 2, 256, TM_KV_Q8, 4096},  /* head dim 256 */
        {2, 3, 96, TM_KV_Q8, 3072},   /* head dim 96: the generic decode kernel (pages of whole vectors) */
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    bool chosen[sizeof cases / sizeof cases[0]] = {0}, any_chosen = false, with_flash = true;
    for (int a = 1; a < argc; a++) {
        char *end;
        long index = strtol(argv[a], &end, 10);
        if (strcmp(argv[a], "--decode-only") == 0) {
            with_flash = false;
        } else if (end != argv[a] && *end == '\0' && index >= 0 && index < n_cases) {
            chosen[index] = any_chosen = true;
        } else {
            fprintf(stderr, "test_attention_cuda: '%s': expected --decode-only or a layout number 0..%d\n"
                            "usage: test_attention_cuda [--decode-only] [LAYOUT...]\n", argv[a], n_cases - 1);
            return 2;
        }
    }
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_attention_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    for (int i = 0; i < n_cases; i++) {
        if (any_chosen && !chosen[i]) continue;
        tm_rng_t rng; /* a layout's own seed: chosen alone, it sees the values of a whole run */
        tm_rng_seed(&rng, 21 + (uint64_t)i);
        printf("layout %d: kv heads %d x group %d, head dim %d, %s, page %u%s\n", i, cases[i].n_head_kv, cases[i].group,
               cases[i].head_dim, kv_type_name(cases[i].type), cases[i].page_size, with_flash ? "" : " (decode only)");
        run_case(&cases[i], with_flash, &rng);
    }
    return check_report("test_attention_cuda");
}
