/*
 * model.c - llama hyperparameters and weight tables from a GGUF (see model.h).
 *
 * DESIGN: read every hyperparameter through one helper that names the key on error, derive
 * and check the dependent ones (head_dim, GQA ratio), then look every tensor up by its llama.cpp
 * name and check its shape against the hyperparameters, so the forward pass can trust them.
 */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include <stdio.h>
#include <stdlib.h>

#include "synth.h"

static tm_status get_int(const tm_gguf *g, const char *key, int *out, bool required, int fallback, tm_error_t *error) {
    uint64_t value;
    tm_status status = tm_gguf_get_u64(g, key, &value, error);
    if (status == TM_ERR_NOT_FOUND && !required) {
        *out = fallback;
        return TM_OK;
    }
    if (status) return status;
    if (value == 0 || value > (1u << 30))
        return tm_error_set(error, TM_ERR_FORMAT, "%s: key '%s' = %llu is out of range", g->label, key,
                            (unsigned long long)value);
    *out = (int)value;
    return TM_OK;
}

static tm_status get_float(const tm_gguf *g, const char *key, float *out, float fallback, tm_error_t *error) {
    double value;
    tm_status status = tm_gguf_get_f64(g, key, &value, error);
    if (status == TM_ERR_NOT_FOUND) {
        *out = fallback;
        return TM_OK;
    }
    if (status) return status;
    if (!(value > 0) || value > 1e12)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: key '%s' = %g is out of range", g->label, key, value);
    *out = (float)value;
    return TM_OK;
}

/* Tensor `name` with dims {cols, rows} (rows = 1 for vectors); optional tensors may be absent. */
static tm_status find_weight(const tm_gguf *g, const char *name, int64_t cols, int64_t rows, bool required,
                             tm_weight *out, tm_error_t *error) {
    memset(out, 0, sizeof *out);
    const tm_gguf_tensor *t = tm_gguf_find_tensor(g, name);
    if (!t) {
        if (!required) return TM_OK;
        return tm_error_set(error, TM_ERR_FORMAT, "%s: tensor '%s' is missing", g->label, name);
    }
    uint64_t want_rows = (uint64_t)rows;
    bool vector = rows == 1;
    if (t->dims[0] != (uint64_t)cols || t->dims[1] != want_rows || t->dims[2] != 1 || t->dims[3] != 1 ||
        (vector && t->n_dims != 1))
        return tm_error_set(error, TM_ERR_FORMAT,
                            "%s: tensor '%s' (info at byte %llu) has shape %llu x %llu, expected %lld x %lld", g->label,
                            name, (unsigned long long)t->info_offset, (unsigned long long)t->dims[0],
                            (unsigned long long)t->dims[1], (long long)cols, (long long)rows);
    if (vector && t->type != TM_TYPE_F32)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; norm weights must be f32", g->label, name,
                            tm_type_name(t->type));
    out->data = t->data;
    out->type = t->type;
    out->rows = rows;
    out->cols = cols;
    return TM_OK;
}

static uint64_t weight_bytes(const tm_weight *w) {
    uint64_t row_bytes = 0;
    if (w->data) tm_type_row_bytes(w->type, (uint64_t)w->cols, &row_bytes);
    return row_bytes * (uint64_t)w->rows;
}

static tm_status read_config(const tm_gguf *g, tm_model_config *c, tm_error_t *error) {
    const char *arch;
    uint64_t length;
    tm_status s = tm_gguf_get_string(g, "general.architecture", &arch, &length, error);
    if (s) return s;
    if (length != 5 || memcmp(arch, "llama", 5) != 0)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (only llama)", g->label,
                            (int)TM_MIN(length, 64), arch);
    if ((s = get_int(g, "llama.embedding_length", &c->n_embd, true, 0, error))) return s;
    if ((s = get_int(g, "llama.block_count", &c->n_layer, true, 0, error))) return s;
    if ((s = get_int(g, "llama.feed_forward_length", &c->n_ff, true, 0, error))) return s;
    if ((s = get_int(g, "llama.attention.head_count", &c->n_head, true, 0, error))) return s;
    if ((s = get_int(g, "llama.attention.head_count_kv", &c->n_head_kv, false, c->n_head, error))) return s;
    if ((s = get_int(g, "llama.context_length", &c->n_ctx_train, false, 4096, error))) return s;
    if ((s = get_float(g, "llama.attention.layer_norm_rms_epsilon", &c->rms_norm_eps, 1e-5f, error))) return s;
    if ((s = get_float(g, "llama.rope.freq_base", &c->rope_freq_base, 10000.0f, error))) return s;
    if (c->n_embd % c->n_head)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: llama.embedding_length %d is not a multiple of head_count %d",
                            g->label, c->n_embd, c->n_head);
    if (c->n_head % c->n_head_kv)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: llama.attention.head_count %d is not a multiple of head_count_kv %d",
                            g->label, c->n_head, c->n_head_kv);
    c->head_dim = c->n_embd / c->n_head;
    if ((s = get_int(g, "llama.rope.dimension_count", &c->n_rot, false, c->head_dim, error))) return s;
    if (c->n_rot > c->head_dim || c->n_rot % 2)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: llama.rope.dimension_count %d must be even and <= head size %d",
                            g->label, c->n_rot, c->head_dim);
    /* rope scaling: linear (positions / factor) is supported; the llama3 kind comes as rope_freqs */
    c->rope_freq_scale = 1.0f;
    const char *scaling;
    if (!tm_gguf_get_string(g, "llama.rope.scaling.type", &scaling, &length, NULL)) {
        bool linear = length == 6 && !memcmp(scaling, "linear", 6), none = length == 4 && !memcmp(scaling, "none", 4);
        if (!linear && !none)
            return tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: llama.rope.scaling.type '%.*s' is not supported (linear, none)",
                                g->label, (int)TM_MIN(length, 32), scaling);
        float factor = 1.0f;
        if (linear && (s = get_float(g, "llama.rope.scaling.factor", &factor, 1.0f, error))) return s;
        c->rope_freq_scale = 1.0f / factor;
    } else {
        float factor;
        if ((s = get_float(g, "llama.rope.scale_linear", &factor, 1.0f, error))) return s;
        c->rope_freq_scale = 1.0f / factor;
    }
    const tm_gguf_tensor *embd = tm_gguf_find_tensor(g, "token_embd.weight");
    if (!embd) return tm_error_set(error, TM_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing", g->label);
    c->n_vocab = (int)embd->dims[1];
    int declared_vocab;
    if ((s = get_int(g, "llama.vocab_size", &declared_vocab, false, c->n_vocab, error))) return s;
    if (declared_vocab != c->n_vocab)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: llama.vocab_size %d disagrees with token_embd.weight's %d rows",
                            g->label, declared_vocab, c->n_vocab);
    c->tied_embeddings = tm_gguf_find_tensor(g, "output.weight") == NULL;
    return TM_OK;
}

tm_status tm_model_load(tm_gguf *gguf, tm_model **out, tm_error_t *error) {
    *out = NULL;
    tm_model *m = calloc(1, sizeof *m);
    if (!m) {
        tm_gguf_close(gguf);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory loading a model");
    }
    m->gguf = gguf;
    tm_model_config *c = &m->config;
    tm_status s = read_config(gguf, c, error);
    if (s) goto fail;
    const char *name;
    uint64_t length;
    if (!tm_gguf_get_string(gguf, "general.name", &name, &length, NULL))
        snprintf(m->name, sizeof m->name, "%.*s", (int)TM_MIN(length, 120), name);
    else
        snprintf(m->name, sizeof m->name, "%s", gguf->label);

    int64_t q_dim = (int64_t)c->n_head * c->head_dim, kv_dim = (int64_t)c->n_head_kv * c->head_dim;
    if ((s = find_weight(gguf, "token_embd.weight", c->n_embd, c->n_vocab, true, &m->token_embd, error))) goto fail;
    if ((s = find_weight(gguf, "output_norm.weight", c->n_embd, 1, true, &m->output_norm, error))) goto fail;
    if (c->tied_embeddings) m->output = m->token_embd;
    else if ((s = find_weight(gguf, "output.weight", c->n_embd, c->n_vocab, true, &m->output, error))) goto fail;
    tm_weight rope_freqs;
    if ((s = find_weight(gguf, "rope_freqs.weight", c->n_rot / 2, 1, false, &rope_freqs, error))) goto fail;
    m->rope_freqs = rope_freqs.data;

    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers) {
        s = tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory for %d layers", c->n_layer);
        goto fail;
    }
    m->weight_bytes = weight_bytes(&m->token_embd) + weight_bytes(&m->output_norm) +
                      (c->tied_embeddings ? 0 : weight_bytes(&m->output));
    for (int l = 0; l < c->n_layer; l++) {
        tm_layer_weights *w = &m->layers[l];
        char key[64];
#define LAYER_WEIGHT(field, suffix, cols, rows)                                               \
    snprintf(key, sizeof key, "blk.%d." suffix, l);                                           \
    if ((s = find_weight(gguf, key, cols, rows, true, &w->field, error))) goto fail;          \
    m->weight_bytes += weight_bytes(&w->field);
        LAYER_WEIGHT(attn_norm, "attn_norm.weight", c->n_embd, 1)
        LAYER_WEIGHT(wq, "attn_q.weight", c->n_embd, q_dim)
        LAYER_WEIGHT(wk, "attn_k.weight", c->n_embd, kv_dim)
        LAYER_WEIGHT(wv, "attn_v.weight", c->n_embd, kv_dim)
        LAYER_WEIGHT(wo, "attn_output.weight", q_dim, c->n_embd)
        LAYER_WEIGHT(ffn_norm, "ffn_norm.weight", c->n_embd, 1)
        LAYER_WEIGHT(w_gate, "ffn_gate.weight", c->n_embd, c->n_ff)
        LAYER_WEIGHT(w_up, "ffn_up.weight", c->n_embd, c->n_ff)
        LAYER_WEIGHT(w_down, "ffn_down.weight", c->n_ff, c->n_embd)
#undef LAYER_WEIGHT
    }
    m->step_weight_bytes = m->weight_bytes - (c->tied_embeddings ? 0 : weight_bytes(&m->token_embd));
    *out = m;
    return TM_OK;
fail:
    tm_model_free(m);
    return s;
}

tm_status tm_model_open(const char *path, const char *synthetic_spec, int n_threads, tm_model **out, tm_error_t *error) {
    *out = NULL;
    tm_gguf *g = NULL;
    tm_status s;
    if (path && strncmp(path, "synthetic:", 10) == 0 && !synthetic_spec) {
        synthetic_spec = path + 10;
        path = NULL;
    }
    if (path && synthetic_spec) return tm_error_set(error, TM_ERR_INVALID_ARG, "give a model path or a synthetic model, not both");
    if (path) {
        s = tm_gguf_open(path, &g, error);
    } else if (synthetic_spec) {
        tm_synth_options options = {.seed = 1, .progress = true};
        if ((s = tm_synth_parse_spec(synthetic_spec, &options, error))) return s;
        options.pool = tm_threadpool_create(n_threads);
        s = tm_synth_open_memory(&options, &g, error);
        tm_threadpool_free(options.pool);
    } else {
        return tm_error_set(error, TM_ERR_INVALID_ARG, "no model given (a GGUF path or a synthetic PRESET:TYPE)");
    }
    if (s) return s;
    return tm_model_load(g, out, error);
}

void tm_model_free(tm_model *model) {
    if (!model) return;
    tm_gguf_close(model->gguf);
    free(model->layers);
    free(model);
}
