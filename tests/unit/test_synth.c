/*
 * test_synth.c - synthetic models:
 *  - the Q4_K_M recipe picks llama.cpp's types (output Q6_K; attn_v/ffn_down Q6_K exactly on the
 *    layers use_more_bits selects, listed here by hand for 32 layers; Q5_K attn_v on 80 layers;
 *    32-element fallbacks when a row is not whole 256-blocks);
 *  - file sizes: llama2-7b Q4_K_M within 0.5 % of the real 4.08 GB file, llama2-70b within 0.5 %
 *    of the real 41.38 GB file (computed, not written);
 *  - the tiny model built in memory opens, has the llama metadata and tensors, and its bytes do
 *    not depend on the thread count; a different seed gives different weights;
 *  - bad specs are refused with a message naming the part that is wrong.
 */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "synth.h"

static void test_recipe(void) {
    const tm_synth_preset *p7 = tm_synth_find_preset("llama2-7b"), *p70 = tm_synth_find_preset("llama2-70b");
    const tm_synth_preset *smol = tm_synth_find_preset("smollm2-135m");
    CHECK(p7 && p70 && smol, "presets exist");
    CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, "output.weight", 2, 4096) == TM_TYPE_Q6_K, "output Q6_K");
    CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, "token_embd.weight", 2, 4096) == TM_TYPE_Q4_K, "embd Q4_K");
    CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, "blk.0.attn_norm.weight", 1, 4096) == TM_TYPE_F32, "norm F32");
    /* use_more_bits for 32 layers: 0-3, 28-31, and 6, 9, ..., 27 */
    const int more_bits[] = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
    for (int layer = 0; layer < 32; layer++) {
        bool expect = false;
        for (size_t k = 0; k < sizeof more_bits / sizeof more_bits[0]; k++) expect |= more_bits[k] == layer;
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", layer);
        tm_type want = expect ? TM_TYPE_Q6_K : TM_TYPE_Q4_K;
        CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, name, 2, 11008) == want, "%s", name);
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", layer);
        CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, name, 2, 4096) == want, "%s", name);
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", layer);
        CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q4_K_M, name, 2, 4096) == TM_TYPE_Q4_K, "%s", name);
    }
    CHECK(tm_synth_tensor_type(p70, TM_SYNTH_Q4_K_M, "blk.20.attn_v.weight", 2, 8192) == TM_TYPE_Q5_K, "70B attn_v Q5_K");
    CHECK(tm_synth_tensor_type(p70, TM_SYNTH_Q4_K_M, "blk.0.attn_v.weight", 2, 8192) == TM_TYPE_Q6_K, "70B first attn_v Q6_K");
    CHECK(tm_synth_tensor_type(smol, TM_SYNTH_Q4_K_M, "blk.5.attn_q.weight", 2, 576) == TM_TYPE_Q5_0, "576 cols -> Q5_0");
    CHECK(tm_synth_tensor_type(smol, TM_SYNTH_Q4_K_M, "blk.0.ffn_down.weight", 2, 1536) == TM_TYPE_Q6_K, "1536 cols keep Q6_K");
    CHECK(tm_synth_tensor_type(p7, TM_SYNTH_Q8_0, "output.weight", 2, 4096) == TM_TYPE_Q8_0, "q8_0 recipe");
    CHECK(tm_synth_tensor_type(p7, TM_SYNTH_F16, "blk.0.ffn_up.weight", 2, 4096) == TM_TYPE_F16, "f16 recipe");
}

static void test_sizes(void) {
    struct { const char *spec; double real_bytes; } cases[] = {{"llama2-7b:q4_k_m", 4.08e9}, {"llama2-70b:q4_k_m", 41.38e9}};
    for (int i = 0; i < 2; i++) {
        tm_synth_options options = {.seed = 1};
        tm_error_t error = {0};
        uint64_t size = 0;
        CHECK(!tm_synth_parse_spec(cases[i].spec, &options, &error), "%s", error.message);
        CHECK(!tm_synth_file_size(&options, &size, &error), "%s", error.message);
        double ratio = (double)size / cases[i].real_bytes;
        printf("%s: %llu bytes (%.4f of the real file)\n", cases[i].spec, (unsigned long long)size, ratio);
        CHECK(fabs(ratio - 1.0) <= 0.005, "%s: %llu bytes is not within 0.5 %% of %.0f", cases[i].spec,
              (unsigned long long)size, cases[i].real_bytes);
    }
}

static tm_gguf *open_tiny(int threads, uint64_t seed, const char *type) {
    tm_synth_options options = {.seed = seed};
    tm_error_t error = {0};
    char spec[64];
    snprintf(spec, sizeof spec, "tiny:%s", type);
    tm_synth_parse_spec(spec, &options, &error);
    options.pool = threads > 1 ? tm_threadpool_create(threads) : NULL;
    tm_gguf *g = NULL;
    CHECK(!tm_synth_open_memory(&options, &g, &error), "open tiny: %s", error.message);
    tm_threadpool_free(options.pool);
    return g;
}

static void test_tiny(void) {
    tm_gguf *one = open_tiny(1, 5, "q4_k_m"), *two = open_tiny(2, 5, "q4_k_m"), *other = open_tiny(2, 6, "q4_k_m");
    if (!one || !two || !other) return;
    CHECK(one->size == two->size && !memcmp(one->base, two->base, one->size), "bytes independent of thread count");
    CHECK(one->size == other->size && memcmp(one->base, other->base, one->size) != 0, "the seed changes the weights");
    tm_error_t error = {0};
    const char *arch;
    uint64_t length, n_layer = 0, n_vocab = 0;
    CHECK(!tm_gguf_get_string(one, "general.architecture", &arch, &length, &error) && length == 5 && !memcmp(arch, "llama", 5),
          "architecture");
    CHECK(!tm_gguf_get_u64(one, "llama.block_count", &n_layer, &error) && n_layer == 4, "block count");
    const tm_gguf_kv *tokens = tm_gguf_find_kv(one, "tokenizer.ggml.tokens");
    CHECK(tokens && tokens->value.array.count == 1024, "vocabulary of 1024 tokens");
    CHECK(!tm_gguf_get_u64(one, "llama.vocab_size", &n_vocab, &error) && n_vocab == 1024, "vocab size");
    CHECK(one->n_tensors == 3 + 9 * 4, "%llu tensors", (unsigned long long)one->n_tensors);
    const tm_gguf_tensor *down = tm_gguf_find_tensor(one, "blk.1.ffn_down.weight");
    CHECK(down && down->dims[0] == 768 && down->dims[1] == 256, "ffn_down shape");
    /* weights have standard deviation near 1/sqrt(fan_in), norms near 1 */
    const tm_gguf_tensor *q = tm_gguf_find_tensor(one, "blk.0.attn_q.weight");
    float *values = malloc(q->n_elements * sizeof *values);
    tm_type_traits_scalar(q->type)->dequantize_row(q->data, values, (int64_t)q->n_elements);
    double sum_sq = 0;
    for (uint64_t i = 0; i < q->n_elements; i++) sum_sq += (double)values[i] * values[i];
    double stddev = sqrt(sum_sq / (double)q->n_elements), want = 1.0 / sqrt(256.0);
    CHECK(fabs(stddev / want - 1) < 0.15, "attn_q stddev %.4f, want %.4f", stddev, want);
    free(values);
    const tm_gguf_tensor *norm = tm_gguf_find_tensor(one, "output_norm.weight");
    const float *n = norm->data;
    CHECK(norm->type == TM_TYPE_F32 && fabsf(n[0] - 1) < 0.1f && fabsf(n[255] - 1) < 0.1f, "norm weights near 1");
    tm_gguf_close(one);
    tm_gguf_close(two);
    tm_gguf_close(other);
}

static void test_specs(void) {
    tm_synth_options options;
    tm_error_t error = {0};
    CHECK(tm_synth_parse_spec("llama9-1b:q4_k_m", &options, &error) == TM_ERR_INVALID_ARG &&
              strstr(error.message, "unknown preset 'llama9-1b'"), "unknown preset: %s", error.message);
    CHECK(tm_synth_parse_spec("tiny:q3_k", &options, &error) == TM_ERR_INVALID_ARG && strstr(error.message, "unknown type 'q3_k'"),
          "unknown type: %s", error.message);
    CHECK(!tm_synth_parse_spec("llama3-8b:f16", &options, &error) && options.recipe == TM_SYNTH_F16, "valid spec");
}

int main(void) {
    test_recipe();
    test_sizes();
    test_tiny();
    test_specs();
    return check_report("test_synth");
}
