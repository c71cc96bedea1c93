/*
 * test_model.c - model loading from GGUF metadata:
 *  - the synthetic presets load with the hyperparameters of the real models (GQA ratios, rope
 *    bases, tied embeddings for SmolLM2);
 *  - a model whose metadata is missing or inconsistent is refused with a message naming the key
 *    or tensor: each case copies the tiny model's GGUF with one key dropped or changed, or one
 *    tensor dropped or reshaped;
 *  - rope scaling: a linear factor becomes freq_scale = 1/factor; an unknown type is refused.
 */
#include <stdlib.h>

#include "check.h"
#include "model.h"
#include "synth.h"

static tm_gguf *synth_memory(const char *spec, bool vocab_only) {
    tm_synth_options options = {.seed = 1, .vocab_only = vocab_only};
    tm_error_t error = {0};
    tm_gguf *g = NULL;
    tm_synth_parse_spec(spec, &options, &error);
    CHECK(!tm_synth_open_memory(&options, &g, &error), "%s: %s", spec, error.message);
    return g;
}

/* A copy of `source` without key `drop_key`, with `set_key` = uint32 `set_value` (added or
 * replacing), optionally a string key, and without tensor `drop_tensor` / with `reshape_tensor`
 * declared one row shorter. */
typedef struct edit {
    const char *drop_key, *set_key, *string_key, *string_value, *drop_tensor, *reshape_tensor;
    uint32_t set_value;
} edit;

static tm_gguf *edited(const tm_gguf *source, const edit *e) {
    tm_gguf_writer *w = tm_gguf_writer_create(3, source->alignment);
    tm_error_t error = {0};
    for (uint64_t i = 0; i < source->n_kv; i++) {
        const char *key = source->kvs[i].key;
        if ((e->drop_key && !strcmp(key, e->drop_key)) || (e->set_key && !strcmp(key, e->set_key)) ||
            (e->string_key && !strcmp(key, e->string_key)))
            continue;
        tm_gguf_writer_add_kv(w, key, &source->kvs[i].value);
    }
    if (e->set_key) tm_gguf_writer_set_u32(w, e->set_key, e->set_value);
    if (e->string_key) tm_gguf_writer_set_string(w, e->string_key, e->string_value);
    for (uint64_t i = 0; i < source->n_tensors; i++) {
        const tm_gguf_tensor *t = &source->tensors[i];
        if (e->drop_tensor && !strcmp(t->name, e->drop_tensor)) continue;
        uint64_t dims[4] = {t->dims[0], t->dims[1], t->dims[2], t->dims[3]};
        if (e->reshape_tensor && !strcmp(t->name, e->reshape_tensor)) dims[t->n_dims - 1] -= 1;
        tm_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, dims, t->data, &error);
    }
    void *data;
    uint64_t size;
    tm_gguf *g = NULL;
    if (!tm_gguf_writer_to_memory(w, &data, &size, NULL, NULL, NULL, &error))
        tm_gguf_open_memory(data, size, "edited.gguf", true, &g, &error);
    tm_gguf_writer_free(w);
    return g;
}

static void expect_load_error(const tm_gguf *source, edit e, const char *fragment) {
    tm_gguf *g = edited(source, &e);
    CHECK(g != NULL, "edited copy opens");
    if (!g) return;
    tm_model *model = NULL;
    tm_error_t error = {0};
    tm_status status = tm_model_load(g, &model, &error); /* takes g */
    CHECK(status != TM_OK && model == NULL, "load must fail for '%s'", fragment);
    CHECK(strstr(error.message, fragment) != NULL, "message '%s' lacks '%s'", error.message, fragment);
    tm_model_free(model);
}

static void test_presets(void) {
    struct { const char *spec; int n_head, n_head_kv, head_dim; float rope_base; bool tied; } cases[] = {
        {"tiny:q8_0", 8, 4, 32, 10000.0f, false},
        {"smollm2-135m:q8_0", 9, 3, 64, 100000.0f, true},
    };
    for (int i = 0; i < 2; i++) {
        tm_model *m = NULL;
        tm_error_t error = {0};
        CHECK(!tm_model_load(synth_memory(cases[i].spec, false), &m, &error), "%s: %s", cases[i].spec, error.message);
        if (!m) continue;
        const tm_model_config *c = &m->config;
        CHECK(c->n_head == cases[i].n_head && c->n_head_kv == cases[i].n_head_kv && c->head_dim == cases[i].head_dim &&
                  c->rope_freq_base == cases[i].rope_base && c->tied_embeddings == cases[i].tied &&
                  c->rope_freq_scale == 1.0f,
              "%s hyperparameters", cases[i].spec);
        CHECK(!cases[i].tied || m->output.data == m->token_embd.data, "%s: tied LM head is token_embd", cases[i].spec);
        CHECK(m->weight_bytes > 0 && m->weight_bytes < m->gguf->size, "%s weight bytes %llu", cases[i].spec,
              (unsigned long long)m->weight_bytes);
        tm_model_free(m);
    }
}

static void test_bad_metadata(void) {
    tm_gguf *tiny = synth_memory("tiny:q8_0", false);
    if (!tiny) return;
    expect_load_error(tiny, (edit){.drop_key = "llama.block_count"}, "'llama.block_count' is missing");
    expect_load_error(tiny, (edit){.drop_key = "llama.embedding_length"}, "'llama.embedding_length' is missing");
    expect_load_error(tiny, (edit){.set_key = "llama.attention.head_count", .set_value = 7}, "not a multiple of head_count 7");
    expect_load_error(tiny, (edit){.set_key = "llama.attention.head_count_kv", .set_value = 3},
                      "not a multiple of head_count_kv 3");
    expect_load_error(tiny, (edit){.set_key = "llama.vocab_size", .set_value = 1000}, "llama.vocab_size 1000 disagrees");
    expect_load_error(tiny, (edit){.set_key = "llama.rope.dimension_count", .set_value = 33}, "must be even");
    expect_load_error(tiny, (edit){.set_key = "llama.block_count", .set_value = 5}, "tensor 'blk.4.attn_norm.weight' is missing");
    expect_load_error(tiny, (edit){.string_key = "general.architecture", .string_value = "gpt2"}, "architecture 'gpt2'");
    expect_load_error(tiny, (edit){.string_key = "llama.rope.scaling.type", .string_value = "yarn"}, "'yarn' is not supported");
    expect_load_error(tiny, (edit){.drop_tensor = "blk.2.ffn_up.weight"}, "tensor 'blk.2.ffn_up.weight' is missing");
    expect_load_error(tiny, (edit){.drop_tensor = "output_norm.weight"}, "tensor 'output_norm.weight' is missing");
    expect_load_error(tiny, (edit){.reshape_tensor = "blk.1.attn_k.weight"}, "tensor 'blk.1.attn_k.weight'");

    /* linear rope scaling: factor 4 -> freq_scale 0.25 */
    tm_gguf_writer *w = tm_gguf_writer_create(3, tiny->alignment);
    tm_error_t error = {0};
    for (uint64_t i = 0; i < tiny->n_kv; i++) tm_gguf_writer_add_kv(w, tiny->kvs[i].key, &tiny->kvs[i].value);
    tm_gguf_writer_set_string(w, "llama.rope.scaling.type", "linear");
    tm_gguf_writer_set_f32(w, "llama.rope.scaling.factor", 4.0f);
    for (uint64_t i = 0; i < tiny->n_tensors; i++)
        tm_gguf_writer_add_tensor(w, tiny->tensors[i].name, tiny->tensors[i].type, tiny->tensors[i].n_dims,
                                  tiny->tensors[i].dims, tiny->tensors[i].data, &error);
    void *data;
    uint64_t size;
    tm_gguf *scaled = NULL;
    tm_model *m = NULL;
    CHECK(!tm_gguf_writer_to_memory(w, &data, &size, NULL, NULL, NULL, &error) &&
              !tm_gguf_open_memory(data, size, "scaled", true, &scaled, &error) && !tm_model_load(scaled, &m, &error),
          "linear scaling loads: %s", error.message);
    CHECK(m && m->config.rope_freq_scale == 0.25f, "freq scale 1/4");
    tm_model_free(m);
    tm_gguf_writer_free(w);
    tm_gguf_close(tiny);

    tm_model *vocab_only = NULL;
    CHECK(tm_model_load(synth_memory("tiny:q8_0", true), &vocab_only, &error) == TM_ERR_FORMAT &&
              strstr(error.message, "token_embd.weight"),
          "a vocab-only file is not a model: %s", error.message);
}

int main(void) {
    test_presets();
    test_bad_metadata();
    return check_report("test_model");
}
