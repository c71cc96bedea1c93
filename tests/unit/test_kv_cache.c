/*
 * test_kv_cache.c - the paged KV cache and attention through it:
 *  - 64 sequences of random lengths grown, shrunk and freed in random order (2000 operations)
 *    keep tm_kv_sanity happy after every operation, and freeing everything returns every page;
 *  - reserve on a full pool fails with TM_ERR_NO_MEMORY and changes nothing;
 *  - pages are taken lowest id first: after two sequences grown a token at a time in turn (their
 *    pages interleaved) are freed, a new sequence's pages are 0, 1, 2, ... (a stack of freed pages
 *    would hand back the last-freed sequence's pages, every other id), and one grown again after
 *    its neighbour freed the low pages takes those first;
 *  - a key/value written through tm_kv_key/value reads back, rows never overlap;
 *  - the forward pass over pages equals the same forward with contiguous KV: a tiny synthetic
 *    model's logits are bit-identical for page sizes that put 1/4 row, 1 row, many rows per page,
 *    and one page per sequence (contiguous), with the f16 and with the 8-bit cache;
 *  - the 8-bit cache: every head vector's values and scale slot read back (no two vectors share a
 *    slot) with rows spanning pages, one and several rows a page; its bytes against f16's ((head_dim
 *    + 4) / (2 head_dim): 0.516 at head_dim 128, 0.531 at 64); pages that are not whole head
 *    vectors refused; attention over it within the bound its rounding allows of attention over
 *    an f32 cache (the bound computed from the inputs, below); the tiny model's logits through it
 *    within 15 % of the largest |logit| of the f16 cache's (a sanity bound, measured 5 % on this
 *    random model: a wrong vector or scale moves them by ~100 %; tests/python/test_model_reference.py
 *    holds the 8-bit cache to 1e-3 of a numpy emulation of it on a real model).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "kv_cache.h"
#include "ops_cpu.h"
#include "synth.h"

static void test_random_operations(void) {
    tm_kv_layout layout = {4, 2, 64, TM_KV_F16, 1024}; /* row 512 B: 2 rows per page */
    tm_kv_cache *kv;
    tm_error_t error = {0};
    CHECK(!tm_kv_create(&layout, 4000, 64, true, &kv, &error), "%s", error.message);
    tm_rng_t rng;
    tm_rng_seed(&rng, 3);
    int seqs[64], n_seqs = 0, failures = 0;
    char message[256];
    for (int op = 0; op < 2000; op++) {
        uint64_t r = tm_rng_next(&rng) % 10;
        if (r < 3 && n_seqs < 64) {
            int s = tm_kv_seq_new(kv);
            CHECK(s >= 0, "a free slot");
            seqs[n_seqs++] = s;
        } else if (r < 8 && n_seqs > 0) {
            int s = seqs[tm_rng_next(&rng) % (uint64_t)n_seqs];
            int64_t want = tm_kv_seq_capacity(kv, s) + (int64_t)(tm_rng_next(&rng) % 100);
            tm_kv_stats before, after;
            tm_kv_get_stats(kv, &before);
            if (tm_kv_reserve(kv, s, want) != TM_OK) {
                failures++;
                tm_kv_get_stats(kv, &after);
                CHECK(before.pages_free == after.pages_free, "a failed reserve changes nothing");
            } else {
                CHECK(tm_kv_seq_capacity(kv, s) >= want, "capacity grows");
            }
        } else if (r == 8 && n_seqs > 0) {
            int s = seqs[tm_rng_next(&rng) % (uint64_t)n_seqs];
            tm_kv_truncate(kv, s, tm_kv_seq_capacity(kv, s) / 2);
        } else if (n_seqs > 0) {
            int k = (int)(tm_rng_next(&rng) % (uint64_t)n_seqs);
            tm_kv_seq_free(kv, seqs[k]);
            seqs[k] = seqs[--n_seqs];
        }
        if (!tm_kv_sanity(kv, message, sizeof message)) {
            CHECK(0, "after operation %d: %s", op, message);
            break;
        }
    }
    CHECK(failures > 0, "the pool ran full at least once (%d times)", failures);
    /* waste: under one page per (sequence, layer) stream */
    tm_kv_stats stats;
    tm_kv_get_stats(kv, &stats);
    CHECK(stats.bytes_allocated - stats.bytes_used < (uint64_t)(n_seqs * layout.n_layer) * layout.page_size + 1,
          "waste %llu bytes for %d streams", (unsigned long long)(stats.bytes_allocated - stats.bytes_used),
          n_seqs * layout.n_layer);
    while (n_seqs > 0) tm_kv_seq_free(kv, seqs[--n_seqs]);
    tm_kv_get_stats(kv, &stats);
    CHECK(stats.pages_free == stats.pages_total, "all pages back: %lld of %lld", (long long)stats.pages_free,
          (long long)stats.pages_total);
    CHECK(tm_kv_sanity(kv, message, sizeof message), "%s", message);
    tm_kv_free(kv);
}

/* Page ids of (seq, layer 0), each checked against expected[i] (count n). */
static bool first_layer_pages_are(const tm_kv_cache *kv, int seq, const int32_t *expected, int64_t n) {
    int64_t n_pages;
    const int32_t *pages = tm_kv_page_table(kv, seq, 0, &n_pages);
    if (n_pages != n) return false;
    for (int64_t i = 0; i < n; i++)
        if (pages[i] != expected[i]) return false;
    return true;
}

static void test_lowest_pages_first(void) {
    tm_kv_layout layout = {1, 2, 64, TM_KV_F16, 512}; /* row 512 B: a row a page, one layer */
    tm_kv_cache *kv;
    tm_error_t error = {0};
    CHECK(!tm_kv_create(&layout, 64, 3, true, &kv, &error), "%s", error.message);
    int a = tm_kv_seq_new(kv), b = tm_kv_seq_new(kv);
    for (int t = 1; t <= 8; t++) CHECK(!tm_kv_reserve(kv, a, t) && !tm_kv_reserve(kv, b, t), "reserve a token each, in turn");
    const int32_t evens[8] = {0, 2, 4, 6, 8, 10, 12, 14}, ascending[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    CHECK(first_layer_pages_are(kv, a, evens, 8), "interleaved growth: a holds the even pages");
    tm_kv_seq_free(kv, b);
    tm_kv_seq_free(kv, a);
    int c = tm_kv_seq_new(kv);
    CHECK(!tm_kv_reserve(kv, c, 8) && first_layer_pages_are(kv, c, ascending, 8), "after both freed, a new sequence takes pages 0-7");
    int d = tm_kv_seq_new(kv);
    CHECK(!tm_kv_reserve(kv, d, 4), "reserve");
    tm_kv_truncate(kv, c, 2); /* pages 2-7 free again, below d's 8-11 */
    const int32_t grown[6] = {8, 9, 10, 11, 2, 3};
    CHECK(!tm_kv_reserve(kv, d, 6) && first_layer_pages_are(kv, d, grown, 6), "growing takes the lowest free pages (2, 3)");
    char message[256];
    CHECK(tm_kv_sanity(kv, message, sizeof message), "%s", message);
    tm_kv_free(kv);
}

static void test_addresses(void) {
    const uint32_t page_sizes[] = {128, 512, 4096};
    for (int p = 0; p < 3; p++) {
        tm_kv_layout layout = {2, 2, 32, TM_KV_F32, page_sizes[p]}; /* row 512 B */
        tm_kv_cache *kv;
        tm_error_t error = {0};
        CHECK(!tm_kv_create(&layout, 400, 2, true, &kv, &error), "%s", error.message);
        int a = tm_kv_seq_new(kv), b = tm_kv_seq_new(kv);
        CHECK(!tm_kv_reserve(kv, a, 37) && !tm_kv_reserve(kv, b, 11), "reserve");
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < 2; l++)
                for (int t = 0; t < (s ? 11 : 37); t++)
                    for (int h = 0; h < 2; h++) {
                        float *k = tm_kv_key(kv, s ? b : a, l, t, h), *v = tm_kv_value(kv, s ? b : a, l, t, h);
                        for (int i = 0; i < 32; i++) {
                            k[i] = (float)(s * 100000 + l * 10000 + t * 100 + h * 10) + i * 0.001f;
                            v[i] = -k[i];
                        }
                    }
        int wrong = 0;
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < 2; l++)
                for (int t = 0; t < (s ? 11 : 37); t++)
                    for (int h = 0; h < 2; h++) {
                        const float *k = tm_kv_key(kv, s ? b : a, l, t, h), *v = tm_kv_value(kv, s ? b : a, l, t, h);
                        for (int i = 0; i < 32; i++)
                            wrong += k[i] != (float)(s * 100000 + l * 10000 + t * 100 + h * 10) + i * 0.001f || v[i] != -k[i];
                    }
        CHECK(wrong == 0, "page size %u: %d values overwritten", page_sizes[p], wrong);
        tm_kv_layout bad = {2, 2, 48, TM_KV_F32, 128}; /* a head (192 B) would straddle 128 B pages */
        tm_kv_cache *rejected;
        CHECK(tm_kv_create(&bad, 10, 1, true, &rejected, &error) == TM_ERR_INVALID_ARG, "straddling layout refused");
        tm_kv_free(kv);
    }
}

static void test_q8_layout(void) {
    const uint32_t page_sizes[] = {64, 128, 512, 4096}; /* row 128 B: half a row, one, four, 32 a page */
    for (int p = 0; p < 4; p++) {
        tm_kv_layout layout = {2, 2, 32, TM_KV_Q8, page_sizes[p]};
        CHECK(tm_kv_row_bytes(&layout) == 128 && tm_kv_scale_bytes_per_page(&layout) == page_sizes[p] / 32 * 4,
              "q8 sizes: a 128-byte row, a float scale a 32-byte slot of the page");
        tm_kv_cache *kv;
        tm_error_t error = {0};
        CHECK(!tm_kv_create(&layout, 400, 2, true, &kv, &error), "%s", error.message);
        int a = tm_kv_seq_new(kv), b = tm_kv_seq_new(kv);
        CHECK(!tm_kv_reserve(kv, a, 37) && !tm_kv_reserve(kv, b, 11), "reserve");
        for (int pass = 0; pass < 2; pass++) {
            int wrong = 0;
            for (int s = 0; s < 2; s++)
                for (int l = 0; l < 2; l++)
                    for (int t = 0; t < (s ? 11 : 37); t++)
                        for (int h = 0; h < 2; h++)
                            for (int is_value = 0; is_value < 2; is_value++) {
                                const int seq = s ? b : a, id = ((s * 2 + l) * 37 + t) * 4 + h * 2 + is_value;
                                int8_t *q = is_value ? tm_kv_value(kv, seq, l, t, h) : tm_kv_key(kv, seq, l, t, h);
                                float *scale = is_value ? tm_kv_value_scale(kv, seq, l, t, h) : tm_kv_key_scale(kv, seq, l, t, h);
                                if (pass == 0) {
                                    for (int i = 0; i < 32; i++) q[i] = (int8_t)((id + i) % 255 - 127);
                                    *scale = (float)id;
                                } else {
                                    for (int i = 0; i < 32; i++) wrong += q[i] != (int8_t)((id + i) % 255 - 127);
                                    wrong += *scale != (float)id;
                                }
                            }
            if (pass) CHECK(wrong == 0, "q8, page size %u: %d values or scales overwritten", page_sizes[p], wrong);
        }
        tm_kv_stats stats;
        tm_kv_get_stats(kv, &stats);
        CHECK(stats.bytes_used == (37 + 11) * 2 * (128 + 4 * 4), "q8 bytes used count the scales: %llu",
              (unsigned long long)stats.bytes_used);
        tm_kv_free(kv);
    }
    tm_kv_layout f16 = {32, 32, 128, TM_KV_F16, 4096}, q8 = f16;
    q8.type = TM_KV_Q8;
    for (int shape = 0; shape < 2; shape++) { /* head_dim 128 (the Llama models) and 64 (SmolLM2) */
        f16.head_dim = q8.head_dim = shape ? 64 : 128;
        const double ratio = (double)(tm_kv_row_bytes(&q8) + 2 * 32 * 4) / (double)tm_kv_row_bytes(&f16);
        CHECK(ratio == (shape ? 68.0 / 128 : 132.0 / 256), "head_dim %d: a q8 token takes %.4f of the f16 cache's bytes", q8.head_dim,
              ratio);
    }
    tm_kv_cache *made;
    tm_error_t error = {0};
    CHECK(tm_kv_create(&q8, 10, 1, false, &made, &error) == TM_OK, "q8 without host storage (a device backend's): %s", error.message);
    if (made) tm_kv_free(made);
    tm_kv_layout odd = q8;
    odd.page_size = 40 * (uint32_t)q8.head_dim + q8.head_dim / 2;
    CHECK(tm_kv_create(&odd, 10, 1, true, &made, &error) == TM_ERR_INVALID_ARG && strstr(error.message, "whole head vectors"),
          "q8 pages of %u bytes (not whole vectors of %d) refused: %s", odd.page_size, q8.head_dim, error.message);
}

/* tm_cpu_attention over an 8-bit cache against the same over an f32 cache. Bound: a key element
 * moves by at most d / 2 = max|k| / 254, so a score by at most ds = scale * sum|q| * max|k| / 254;
 * each softmax weight then stays within a factor e^(+-2 ds), so the weights move by at most
 * e^(2 ds) - 1 in total; a value element moves by at most max|v| / 254 and stays within max|v|:
 * |out_q8 - out_f32| <= (e^(2 ds) - 1) max|v| + max|v| / 254, plus 1e-5 for float rounding. */
static void test_q8_attention(void) {
    enum { head_dim = 64, n_keys = 100 };
    tm_rng_t rng;
    tm_rng_seed(&rng, 9);
    tm_kv_cache *caches[2];
    tm_error_t error = {0};
    for (int c = 0; c < 2; c++) {
        tm_kv_layout layout = {1, 1, head_dim, c ? TM_KV_Q8 : TM_KV_F32, 4096};
        CHECK(!tm_kv_create(&layout, 64, 1, true, &caches[c], &error), "%s", error.message);
        CHECK(tm_kv_seq_new(caches[c]) == 0 && !tm_kv_reserve(caches[c], 0, n_keys), "reserve");
    }
    float q[head_dim], k[head_dim], v[head_dim], k_max = 0, v_max = 0, q_sum = 0;
    for (int i = 0; i < head_dim; i++) q[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f, q_sum += fabsf(q[i]);
    for (int p = 0; p < n_keys; p++) {
        for (int i = 0; i < head_dim; i++) {
            k[i] = 4.0f * tm_rng_uniform(&rng) - 2.0f, v[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
            k_max = fmaxf(k_max, fabsf(k[i])), v_max = fmaxf(v_max, fabsf(v[i]));
        }
        memcpy(tm_kv_key(caches[0], 0, 0, p, 0), k, sizeof k), memcpy(tm_kv_value(caches[0], 0, 0, p, 0), v, sizeof v);
        for (int which = 0; which < 2; which++) { /* the CPU backend's rounding (store_vector) */
            const float *x = which ? v : k;
            float largest = 0;
            for (int i = 0; i < head_dim; i++) largest = fmaxf(largest, fabsf(x[i]));
            const float d = largest / 127.0f;
            int8_t *to = which ? tm_kv_value(caches[1], 0, 0, p, 0) : tm_kv_key(caches[1], 0, 0, p, 0);
            for (int i = 0; i < head_dim; i++) to[i] = (int8_t)lrintf(x[i] / d);
            *(which ? tm_kv_value_scale(caches[1], 0, 0, p, 0) : tm_kv_key_scale(caches[1], 0, 0, p, 0)) = d;
        }
    }
    float out[2][head_dim], scores[n_keys];
    for (int c = 0; c < 2; c++) tm_cpu_attention(q, caches[c], 0, 0, n_keys, 0, head_dim, out[c], scores);
    const double ds = q_sum * k_max / 254.0 / sqrt((double)head_dim), bound = (exp(2 * ds) - 1) * v_max + v_max / 254.0 + 1e-5;
    double worst = 0;
    for (int i = 0; i < head_dim; i++) worst = fmax(worst, fabs((double)out[1][i] - out[0][i]));
    printf("q8 attention: worst %.3g against f32 (bound %.3g)\n", worst, bound);
    CHECK(worst <= bound && worst > 0, "q8 attention within %.3g of f32 (worst %.3g) and not identical", bound, worst);
    for (int c = 0; c < 2; c++) tm_kv_free(caches[c]);
}

static float *logits_with_page_size(const tm_model *model, uint32_t page_size, int n_tokens, tm_threadpool *pool, tm_kv_type type) {
    const tm_model_config *c = &model->config;
    tm_kv_layout layout = {c->n_layer, c->n_head_kv, c->head_dim, type, page_size};
    tm_kv_cache *kv;
    tm_error_t error = {0};
    int64_t pages = tm_kv_pages_for_tokens(&layout, n_tokens) * c->n_layer * 2;
    CHECK(!tm_kv_create(&layout, pages, 2, true, &kv, &error), "%s", error.message);
    tm_backend *backend;
    tm_backend_cpu_options options = {pool, TM_PRECISION_FAST};
    tm_backend_cpu_create(model, &options, &backend, &error);
    int32_t tokens[64], positions[64], seqs[64];
    uint8_t want[64];
    /* two sequences interleaved in one batch, then a decode step each */
    int a = tm_kv_seq_new(kv), b = tm_kv_seq_new(kv);
    tm_kv_reserve(kv, a, n_tokens);
    tm_kv_reserve(kv, b, n_tokens);
    int half = n_tokens / 2;
    for (int i = 0; i < 2 * (half - 1); i++) {
        tokens[i] = 5 + (i * 37) % 900;
        positions[i] = i / 2;
        seqs[i] = i % 2 ? b : a;
        want[i] = 1;
    }
    float *logits = malloc((size_t)(2 * half) * (size_t)c->n_vocab * sizeof *logits);
    tm_batch batch = {2 * (half - 1), tokens, positions, seqs, want};
    CHECK(!backend->forward(backend, &batch, kv, logits, &error), "%s", error.message);
    int32_t next_tokens[2] = {11, 12}, next_positions[2] = {half - 1, half - 1}, next_seqs[2] = {a, b};
    uint8_t next_want[2] = {1, 1};
    tm_batch step = {2, next_tokens, next_positions, next_seqs, next_want};
    CHECK(!backend->forward(backend, &step, kv, logits + (size_t)(2 * (half - 1)) * (size_t)c->n_vocab, &error), "%s",
          error.message);
    backend->free(backend);
    tm_kv_free(kv);
    return logits;
}

static void test_paged_forward_equals_contiguous(void) {
    tm_synth_options options = {.seed = 11};
    tm_error_t error = {0};
    tm_synth_parse_spec("tiny:q4_k_m", &options, &error);
    tm_gguf *g = NULL;
    tm_model *model = NULL;
    CHECK(!tm_synth_open_memory(&options, &g, &error) && !tm_model_load(g, &model, &error), "%s", error.message);
    if (!model) return;
    tm_threadpool *pool = tm_threadpool_create(2);
    const int n_tokens = 40;
    /* tiny: 4 kv heads x 32 dims x f16 x (K+V) = 512-byte rows */
    const uint32_t page_sizes[] = {128, 512, 4096, 1u << 20};
    float *reference = logits_with_page_size(model, 1u << 20, n_tokens, pool, TM_KV_F16);
    size_t n_values = (size_t)n_tokens * (size_t)model->config.n_vocab;
    for (int p = 0; p < 3; p++) {
        float *paged = logits_with_page_size(model, page_sizes[p], n_tokens, pool, TM_KV_F16);
        CHECK(!memcmp(paged, reference, n_values * sizeof(float)), "page size %u: logits differ from contiguous KV",
              page_sizes[p]);
        free(paged);
    }
    /* the 8-bit cache (256-byte rows): paged equals contiguous, and near the f16 cache's logits */
    float *contiguous_q8 = logits_with_page_size(model, 1u << 20, n_tokens, pool, TM_KV_Q8);
    for (int p = 0; p < 3; p++) {
        float *paged = logits_with_page_size(model, page_sizes[p], n_tokens, pool, TM_KV_Q8);
        CHECK(!memcmp(paged, contiguous_q8, n_values * sizeof(float)), "q8, page size %u: logits differ from contiguous KV",
              page_sizes[p]);
        free(paged);
    }
    const int vocab = model->config.n_vocab;
    double worst = 0;
    for (int t = 0; t < n_tokens; t++) { /* the rows the forward wrote: 2 (half - 1) + 2 */
        double largest = 0, moved = 0;
        for (int i = 0; i < vocab; i++) {
            largest = fmax(largest, fabs(reference[(size_t)t * vocab + i]));
            moved = fmax(moved, fabs((double)contiguous_q8[(size_t)t * vocab + i] - reference[(size_t)t * vocab + i]));
        }
        worst = fmax(worst, moved / largest);
    }
    printf("q8 KV: logits within %.3g of the largest |logit| of the f16 cache's\n", worst);
    CHECK(worst <= 0.15 && worst > 0, "q8 KV logits within 15 %% of the f16 cache's (worst %.3g) and not identical", worst);
    free(contiguous_q8);
    int finite = 1;
    for (size_t i = 0; i < n_values; i++) finite &= reference[i] == reference[i] && reference[i] < 1e30f && reference[i] > -1e30f;
    CHECK(finite, "logits are finite");
    free(reference);
    tm_threadpool_free(pool);
    tm_model_free(model);
}

int main(void) {
    test_random_operations();
    test_lowest_pages_first();
    test_addresses();
    test_q8_layout();
    test_q8_attention();
    test_paged_forward_equals_contiguous();
    return check_report("test_kv_cache");
}
