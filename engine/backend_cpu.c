/*
 * backend_cpu.c - the reference backend: the whole llama forward pass in plain C (+ the weight
 * table's SIMD dots), threaded over matrix rows and attention heads.
 *
 * DESIGN: like llama2.c, small named blocks (rmsnorm, rope, swiglu from ops_cpu.c; attention, matmul) composed
 * top to bottom in forward(); the batch is a flat list of tokens from any number of sequences,
 * so prefill chunks and decode steps of several sequences share every weight read. Run state
 * (activations for the batch) grows to the largest batch seen and is reused.
 * Sampling in the backend (sample, sample_start/sample_finish: the engine's overlapped steps take
 * the same path on every backend): a forward given no logits buffer keeps its rows here, and the
 * sampler (sampler.c, with the engine's draw and penalty ids) picks their tokens at once; a later
 * forward's fed tokens read them. The tokens are the host sampler's.
 * Guarantees: see backend.h. Attention reads keys/values only through tm_kv_key/tm_kv_value.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gemv.h"
#include "ops_cpu.h"
#include "sampler.h"
#include "trace.h"

typedef struct run_state {
    int capacity;       /* tokens the buffers below hold */
    float *x;           /* (T, n_embd) residual stream */
    float *xb;          /* (T, n_embd) normed input of a block */
    float *q;           /* (T, n_head*head_dim) */
    float *k;           /* (T, n_head_kv*head_dim) */
    float *v;           /* (T, n_head_kv*head_dim) */
    float *att_out;     /* (T, n_head*head_dim) */
    float *delta;       /* (T, n_embd) block output added to x */
    float *gate;        /* (T, n_ff) */
    float *up;          /* (T, n_ff) */
    float *logits_in;   /* (T, n_embd) final-normed rows of the tokens that want logits */
    uint8_t *scratch;   /* quantized activation rows for matmul */
    uint64_t scratch_bytes;
    int scores_capacity;
    float *scores;      /* (threads, scores_capacity) attention weights, one row per thread */
} run_state;

typedef struct cpu_backend {
    const tm_model *model;
    tm_threadpool *pool;
    tm_precision precision;
    run_state state;
    /* sampling in the backend: the last forward's kept logits rows, and two samplings' tokens */
    float *kept;                 /* (kept_capacity, n_vocab) */
    int kept_rows, kept_capacity;
    int32_t *tokens;             /* (T) a forward's tokens with fed ones filled in */
    int tokens_capacity;
    int32_t *kept_tokens;        /* (kept_capacity) the token each kept row's forward processed (a fed one filled in) */
    int32_t *slot_tokens[2];     /* (kept_capacity) each */
    int slot_rows[2];
    int64_t samples_started, samples_finished;
    tm_sampler_candidate *candidates; /* (n_vocab) */
} cpu_backend;

/* ---- small blocks ------------------------------------------------------------------------ */

static tm_status matmul(cpu_backend *b, const tm_weight *w, const float *x, int n_tokens, float *y, tm_error_t *error) {
    return tm_matmul(b->pool, w->type, w->data, w->rows, w->cols, x, n_tokens, y, b->precision == TM_PRECISION_EXACT,
                     b->state.scratch, error);
}


/* ---- attention --------------------------------------------------------------------------- */

typedef struct attention_task {
    cpu_backend *backend;
    const tm_batch *batch;
    const tm_kv_cache *kv;
    int layer;
} attention_task;

/* Attention of one (token, head) of the batch, through the sequence's pages (ops_cpu.c). */
static void attend_one(const attention_task *t, int token, int head, float *scores) {
    const tm_model_config *c = &t->backend->model->config;
    const run_state *s = &t->backend->state;
    int64_t offset = (int64_t)token * c->n_head * c->head_dim + head * c->head_dim;
    tm_cpu_attention(s->q + offset, t->kv, t->batch->seq[token], t->layer, t->batch->positions[token] + 1,
                     head / (c->n_head / c->n_head_kv), c->head_dim, s->att_out + offset, scores);
}

static void attention_part(void *arg, int thread_index, int n_threads) {
    const attention_task *t = arg;
    const tm_model_config *c = &t->backend->model->config;
    float *scores = t->backend->state.scores + (int64_t)thread_index * t->backend->state.scores_capacity;
    long long total = (long long)t->batch->n_tokens * c->n_head, begin, end;
    tm_split_range(total, 1, thread_index, n_threads, &begin, &end);
    for (long long i = begin; i < end; i++) attend_one(t, (int)(i / c->n_head), (int)(i % c->n_head), scores);
}

/* ---- run state ----------------------------------------------------------------------------- */

/* Buffers sized by the batch's token count (everything but the attention scores). */
static void free_token_buffers(run_state *s) {
    free(s->x), free(s->xb), free(s->q), free(s->k), free(s->v), free(s->att_out), free(s->delta);
    free(s->gate), free(s->up), free(s->logits_in), free(s->scratch);
    s->x = s->xb = s->q = s->k = s->v = s->att_out = s->delta = s->gate = s->up = s->logits_in = NULL;
    s->scratch = NULL;
    s->capacity = 0;
}

static tm_status ensure_state(cpu_backend *b, const tm_batch *batch, tm_error_t *error) {
    const tm_model_config *c = &b->model->config;
    run_state *s = &b->state;
    if (batch->n_tokens > s->capacity) {
        free_token_buffers(s);
        size_t T = (size_t)batch->n_tokens, q_dim = (size_t)c->n_head * c->head_dim, kv_dim = (size_t)c->n_head_kv * c->head_dim;
        s->x = malloc(T * c->n_embd * sizeof(float));
        s->xb = malloc(T * c->n_embd * sizeof(float));
        s->q = malloc(T * q_dim * sizeof(float));
        s->k = malloc(T * kv_dim * sizeof(float));
        s->v = malloc(T * kv_dim * sizeof(float));
        s->att_out = malloc(T * q_dim * sizeof(float));
        s->delta = malloc(T * c->n_embd * sizeof(float));
        s->gate = malloc(T * c->n_ff * sizeof(float));
        s->up = malloc(T * c->n_ff * sizeof(float));
        s->logits_in = malloc(T * c->n_embd * sizeof(float));
        int64_t widest = TM_MAX(TM_MAX(c->n_embd, c->n_ff), (int64_t)q_dim);
        /* the larger of the two activation formats (Q8_K rows are bigger than Q8_0 rows) */
        s->scratch_bytes = TM_MAX(tm_matmul_scratch_bytes(TM_TYPE_Q4_K, widest, (int64_t)T),
                                  tm_matmul_scratch_bytes(TM_TYPE_Q8_0, widest, (int64_t)T));
        s->scratch = malloc(s->scratch_bytes + 64);
        if (!s->x || !s->xb || !s->q || !s->k || !s->v || !s->att_out || !s->delta || !s->gate || !s->up ||
            !s->logits_in || !s->scratch) {
            free_token_buffers(s);
            return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory for a batch of %d tokens",
                                batch->n_tokens);
        }
        s->capacity = batch->n_tokens;
    }
    int max_position = 0;
    for (int i = 0; i < batch->n_tokens; i++) max_position = TM_MAX(max_position, batch->positions[i]);
    if (max_position + 1 > s->scores_capacity) {
        int threads = b->pool ? tm_threadpool_size(b->pool) : 1;
        int capacity = TM_MAX(max_position + 1, 2 * s->scores_capacity);
        float *grown = realloc(s->scores, (size_t)threads * (size_t)capacity * sizeof *grown);
        if (!grown) return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory for attention scores");
        s->scores = grown;
        s->scores_capacity = capacity;
    }
    return TM_OK;
}

/* ---- the forward pass ---------------------------------------------------------------------- */

static tm_status forward(tm_backend *backend, const tm_batch *batch, tm_kv_cache *kv, float *logits, tm_error_t *error) {
    cpu_backend *b = backend->context;
    const tm_model *m = b->model;
    const tm_model_config *c = &m->config;
    run_state *s = &b->state;
    const int T = batch->n_tokens, D = c->n_embd;
    const int q_dim = c->n_head * c->head_dim, kv_dim = c->n_head_kv * c->head_dim;
    const tm_kv_type kv_type = tm_kv_get_layout(kv)->type;
    const tm_rope_params rope = {c->head_dim, c->n_rot, c->rope_freq_base, c->rope_freq_scale, m->rope_freqs};
    tm_status status;
    const int32_t *tokens = batch->tokens;
    if (batch->fed) { /* fed tokens: the last sampling's (already drawn: sample_start samples at once) */
        if (T > b->tokens_capacity) {
            int32_t *grown = realloc(b->tokens, (size_t)T * sizeof *grown);
            if (!grown) return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory");
            b->tokens = grown, b->tokens_capacity = T;
        }
        const int last = (int)((b->samples_started + 1) % 2);
        for (int t = 0; t < T; t++) {
            const int row = batch->fed[t];
            if (row >= 0 && (b->samples_started == 0 || row >= b->slot_rows[last]))
                return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token %d is fed from row %d of a sampling of %d rows", t, row,
                                    b->samples_started ? b->slot_rows[last] : 0);
            b->tokens[t] = row >= 0 ? b->slot_tokens[last][row] : batch->tokens[t];
        }
        tokens = b->tokens;
    }
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->n_vocab)
            return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token id %d out of range [0, %d)", tokens[t], c->n_vocab);
        if (!tm_kv_seq_active(kv, batch->seq[t]) || batch->positions[t] < 0 ||
            batch->positions[t] >= tm_kv_seq_capacity(kv, batch->seq[t]))
            return tm_error_set(error, TM_ERR_INTERNAL, "forward: position %d of sequence %d has no KV room", batch->positions[t],
                                batch->seq[t]);
    }
    if ((status = ensure_state(b, batch, error))) return status;

    /* token embeddings */
    uint64_t embd_row_bytes;
    tm_type_row_bytes(m->token_embd.type, (uint64_t)D, &embd_row_bytes);
    const tm_type_traits *embd = tm_type_traits_get(m->token_embd.type);
    for (int t = 0; t < T; t++)
        embd->dequantize_row((const uint8_t *)m->token_embd.data + (uint64_t)tokens[t] * embd_row_bytes,
                             s->x + (int64_t)t * D, D);

    const bool detail = tm_trace_detail();
    for (int l = 0; l < c->n_layer; l++) {
        const tm_layer_weights *w = &m->layers[l];
        char layer_name[32];
        if (detail) tm_trace_layer_name(layer_name, sizeof layer_name, l);
        TM_DETAIL_BEGIN(layer_name);

        /* attention block: x += wo . attention(rope(wq . norm(x)), rope(wk . norm(x)), wv . norm(x)) */
        TM_DETAIL_BEGIN("attention norm");
        for (int t = 0; t < T; t++) tm_cpu_rmsnorm(s->xb + (int64_t)t * D, s->x + (int64_t)t * D, w->attn_norm.data, D, c->rms_norm_eps);
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("q/k/v");
        if ((status = matmul(b, &w->wq, s->xb, T, s->q, error))) return status;
        if ((status = matmul(b, &w->wk, s->xb, T, s->k, error))) return status;
        if ((status = matmul(b, &w->wv, s->xb, T, s->v, error))) return status;
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("rope + kv append");
        for (int t = 0; t < T; t++) {
            tm_cpu_rope(s->q + (int64_t)t * q_dim, c->n_head, &rope, batch->positions[t]);
            tm_cpu_rope(s->k + (int64_t)t * kv_dim, c->n_head_kv, &rope, batch->positions[t]);
            for (int h = 0; h < c->n_head_kv; h++) {
                const int seq = batch->seq[t], position = batch->positions[t];
                tm_kv_store_vector(tm_kv_key(kv, seq, l, position, h), tm_kv_key_scale(kv, seq, l, position, h),
                             s->k + (int64_t)t * kv_dim + h * c->head_dim, c->head_dim, kv_type);
                tm_kv_store_vector(tm_kv_value(kv, seq, l, position, h), tm_kv_value_scale(kv, seq, l, position, h),
                             s->v + (int64_t)t * kv_dim + h * c->head_dim, c->head_dim, kv_type);
            }
        }
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("attention");
        attention_task attention = {b, batch, kv, l};
        if (b->pool) tm_threadpool_run(b->pool, attention_part, &attention);
        else attention_part(&attention, 0, 1);
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("attention output");
        if ((status = matmul(b, &w->wo, s->att_out, T, s->delta, error))) return status;
        for (int64_t i = 0; i < (int64_t)T * D; i++) s->x[i] += s->delta[i];
        TM_DETAIL_END();

        /* feed-forward block: x += w_down . (silu(w_gate . norm(x)) * (w_up . norm(x))) */
        TM_DETAIL_BEGIN("ffn norm");
        for (int t = 0; t < T; t++) tm_cpu_rmsnorm(s->xb + (int64_t)t * D, s->x + (int64_t)t * D, w->ffn_norm.data, D, c->rms_norm_eps);
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("gate/up");
        if ((status = matmul(b, &w->w_gate, s->xb, T, s->gate, error))) return status;
        if ((status = matmul(b, &w->w_up, s->xb, T, s->up, error))) return status;
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("swiglu");
        tm_cpu_swiglu(s->gate, s->up, (int64_t)T * c->n_ff);
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("down");
        if ((status = matmul(b, &w->w_down, s->gate, T, s->delta, error))) return status;
        for (int64_t i = 0; i < (int64_t)T * D; i++) s->x[i] += s->delta[i];
        TM_DETAIL_END();
        TM_DETAIL_END(); /* the layer */
    }

    /* final norm and LM head, only for the tokens that want logits (kept here for `sample` when
     * the caller gives no buffer) */
    int n_out = 0;
    TM_DETAIL_BEGIN("lm head");
    for (int t = 0; t < T; t++)
        if (batch->want_logits[t])
            tm_cpu_rmsnorm(s->logits_in + (int64_t)n_out++ * D, s->x + (int64_t)t * D, m->output_norm.data, D, c->rms_norm_eps);
    b->kept_rows = 0;
    if (!logits && n_out > b->kept_capacity) {
        if (b->samples_started != b->samples_finished)
            return tm_error_set(error, TM_ERR_INVALID_ARG, "cpu backend: a forward keeps %d rows while a sampling is not finished", n_out);
        free(b->kept), free(b->kept_tokens), free(b->slot_tokens[0]), free(b->slot_tokens[1]);
        b->kept = malloc((size_t)n_out * (size_t)c->n_vocab * sizeof(float));
        b->kept_tokens = malloc((size_t)n_out * sizeof(int32_t));
        b->slot_tokens[0] = malloc((size_t)n_out * sizeof(int32_t)), b->slot_tokens[1] = malloc((size_t)n_out * sizeof(int32_t));
        b->kept_capacity = b->kept && b->kept_tokens && b->slot_tokens[0] && b->slot_tokens[1] ? n_out : 0;
        if (!b->kept_capacity) return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory for %d logits rows", n_out);
    }
    if (!logits)
        for (int t = 0, row = 0; t < T; t++)
            if (batch->want_logits[t]) b->kept_tokens[row++] = tokens[t];
    status = n_out ? matmul(b, &m->output, s->logits_in, n_out, logits ? logits : b->kept, error) : TM_OK;
    if (!logits && !status) b->kept_rows = n_out;
    TM_DETAIL_END();
    return status;
}

/* ---- sampling (backend.h): at once, on this thread --------------------------------------- */

static tm_status sample_start(tm_backend *backend, int n_rows, const tm_sample_row *rows, tm_error_t *error) {
    cpu_backend *b = backend->context;
    const int n_vocab = b->model->config.n_vocab;
    if (n_rows != b->kept_rows)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cpu backend: %d rows to sample but the last forward kept %d", n_rows, b->kept_rows);
    if (b->samples_started - b->samples_finished >= 2)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cpu backend: a third sampling started before the first finished");
    if (!b->candidates && !(b->candidates = malloc((size_t)n_vocab * sizeof *b->candidates)))
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory");
    const int slot = (int)(b->samples_started % 2);
    for (int r = 0; r < n_rows; r++)
        b->slot_tokens[slot][r] = tm_sample_drawn(rows[r].params, b->kept + (size_t)r * n_vocab, n_vocab, rows[r].penalized,
                                                  rows[r].n_penalized, rows[r].window_fed ? b->kept_tokens[r] : -1, rows[r].uniform,
                                                  b->candidates);
    b->slot_rows[slot] = n_rows;
    b->samples_started++;
    b->kept_rows = 0; /* penalties changed the rows: sample each forward once */
    return TM_OK;
}

static tm_status sample_finish(tm_backend *backend, int32_t *tokens, tm_error_t *error) {
    cpu_backend *b = backend->context;
    if (b->samples_finished == b->samples_started)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cpu backend: sample_finish without a sampling started");
    const int slot = (int)(b->samples_finished % 2);
    if (b->slot_rows[slot]) memcpy(tokens, b->slot_tokens[slot], (size_t)b->slot_rows[slot] * sizeof *tokens); /* a prefill chunk samples none */
    b->samples_finished++;
    return TM_OK;
}

static tm_status sample(tm_backend *backend, int n_rows, const tm_sample_row *rows, int32_t *tokens, tm_error_t *error) {
    tm_status s = sample_start(backend, n_rows, rows, error);
    return s ? s : sample_finish(backend, tokens, error);
}

static void backend_free(tm_backend *backend) {
    if (!backend) return;
    cpu_backend *b = backend->context;
    if (b) {
        free_token_buffers(&b->state);
        free(b->state.scores);
        free(b->kept), free(b->kept_tokens), free(b->tokens), free(b->slot_tokens[0]), free(b->slot_tokens[1]), free(b->candidates);
    }
    free(b);
    free(backend);
}

tm_status tm_backend_cpu_create(const tm_model *model, const tm_backend_cpu_options *options, tm_backend **out,
                                tm_error_t *error) {
    *out = NULL;
    tm_backend *backend = calloc(1, sizeof *backend);
    cpu_backend *b = calloc(1, sizeof *b);
    if (!backend || !b) {
        free(backend);
        free(b);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cpu backend: out of memory");
    }
    b->model = model;
    b->pool = options ? options->pool : NULL;
    b->precision = options ? options->precision : TM_PRECISION_FAST;
    backend->name = "cpu";
    backend->context = b;
    backend->forward = forward;
    backend->free = backend_free;
    backend->sample = sample;
    backend->sample_start = sample_start;
    backend->sample_finish = sample_finish;
    *out = backend;
    return TM_OK;
}
