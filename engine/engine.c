/*
 * engine.c - the public engine API (tensormesh.h): requests, the first-come-first-served
 * scheduler, sampling and incremental detokenization, on top of a backend and the paged KV cache.
 *
 * DESIGN: a request owns its token list (prompt, then generated tokens) and, while running, a
 * KV sequence slot; n_processed counts the tokens whose keys/values are in the cache. Each step:
 *   1. admit queued requests in submission order while a slot and KV pages for the whole token
 *      list are available (stop at the first that does not fit: no overtaking);
 *   2. build one batch: every decoding request's newest token first, then prefill chunks of
 *      admitted prompts within max_batch_tokens; a decoding request that cannot grow its KV is
 *      handled by preempting the most recently admitted request (its pages are freed, it is
 *      queued again at the front and recomputed later: nothing is lost);
 *   3. one forward pass; sample for every request whose last prompt token or decode token was in
 *      the batch; append text; check end-of-generation, stop strings, max_tokens, n_ctx.
 * Overlapped steps (backends with sample_start/sample_finish, unless no_step_overlap): step 3's
 * sampling is started and left in flight; the next call first launches the decode step after
 * it where that batch is already known (build_following: every running request decoding, none
 * queued that a free slot could admit), its tokens read on the device from the sampling in
 * flight (a repetition penalty's window ends with such a token: the backend adds it to the ids
 * the host lists), and then reads the earlier step. Each call reads exactly one step,
 * so the tokens, and the order of each request's random draws, are those of steps read one at a
 * time; a row whose request ended while its step was in flight is dropped.
 * Text shown to callers is held back while it could still become a stop string or ends inside
 * a UTF-8 sequence.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "kv_cache.h"
#ifdef TM_CUDA
#include "kernels.h"
#endif
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"
#include "trace.h"
#include "unicode.h"

typedef struct request {
    bool in_use;
    tm_request_state state;
    tm_finish_reason finish_reason;
    int32_t *tokens;        /* prompt then generated */
    int n_tokens, capacity;
    int n_prompt;           /* tokens of the original prompt */
    int n_processed;        /* tokens whose K/V are in the cache */
    int max_tokens;
    tm_sampling sampling;
    bool ignore_eos;
    char **stop;
    int n_stop, longest_stop;
    int seq;                /* KV sequence slot, -1 when not running */
    tm_rng_t rng;
    char *text;             /* generated text (stop string excluded once finished) */
    size_t text_length, text_capacity, stable_length;
    int64_t submit_order, admit_order;
    double submitted_at, first_token_at, finished_at;
    int preemptions;
} request;

/* A step whose sampling was started on the backend (sample_start) and whose tokens the host has not
 * read yet; with overlapped steps the next one is launched before they are read, its tokens fed on
 * the device from these rows (tm_batch.fed). What each sampled row stood for when launched: */
typedef struct flight {
    int n_rows;
    int *request;            /* (max_sequences) the row's request */
    int64_t *submit_order;   /* (max_sequences) that request's submit_order then: a row whose request has since
                              * finished, been cancelled or released is dropped when the tokens come */
    int32_t *position;       /* (max_sequences) the position whose logits the row sampled */
    int prompt_tokens;       /* prompt tokens the step processed */
    double t0;               /* when the host started it */
} flight;

struct tm_engine {
    tm_engine_options options;
    char device[32];         /* options.device resolved ("cpu", "cuda", "cuda:N"), owned here */
    tm_model *model;
    tm_tokenizer *tokenizer;
    tm_threadpool *pool;
    tm_backend *backend;
    tm_kv_cache *kv;
    request *requests;
    int n_requests;          /* slots in use or released */
    int64_t next_submit, next_admit;
    /* per-step scratch */
    int32_t *batch_tokens, *batch_positions, *batch_seq;
    uint8_t *batch_want;
    int *batch_request;      /* request of each batch token */
    float *logits;           /* (max_sequences, n_vocab) */
    tm_sampler_candidate *candidates;
    /* device sampling scratch */
    tm_sample_row *sample_rows;   /* (max_sequences) */
    int32_t *sampled;             /* (max_sequences) */
    int32_t *penalized;           /* distinct ids of every row's penalty window */
    int penalized_capacity;
    uint8_t *penalty_mark;        /* (n_vocab) */
    /* overlapped steps: up to two steps started and not read, flights[oldest] the older */
    int32_t *batch_fed;           /* (batch capacity) the fed rows of a step launched after one in flight */
    flight flights[2];
    int in_flight, oldest;
    double last_read;             /* when the host last read a step's tokens: an overlapped step's time starts there */
    tm_engine_stats stats;
};

/* ---- defaults ---------------------------------------------------------------------------- */

int tm_kv_type_from_name(const char *name) {
    static const char *const names[] = {"f16", "f32", "q8"}; /* tm_kv_type's order */
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

void tm_engine_options_default(tm_engine_options *o) {
    memset(o, 0, sizeof *o);
    o->device = "auto";
    o->max_sequences = 16;
    o->kv_page_size = TM_KV_DEFAULT_PAGE_SIZE;
    o->max_batch_tokens = 512;
}

void tm_sampling_default(tm_sampling *s) {
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
    s->repetition_penalty = 1.0f;
    s->penalty_last_n = 64;
}

void tm_request_params_default(tm_request_params *p) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 128;
    p->add_bos = true;
    p->parse_special = true;
    tm_sampling_default(&p->sampling);
}

/* ---- create / free ----------------------------------------------------------------------- */

void tm_engine_free(tm_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->n_requests; i++) {
        request *r = &e->requests[i];
        free(r->tokens);
        free(r->text);
        for (int k = 0; k < r->n_stop; k++) free(r->stop[k]);
        free(r->stop);
    }
    free(e->requests);
    if (e->backend) e->backend->free(e->backend);
    tm_kv_free(e->kv);
    tm_tokenizer_free(e->tokenizer);
    tm_model_free(e->model);
    tm_threadpool_free(e->pool);
    free(e->batch_tokens), free(e->batch_positions), free(e->batch_seq), free(e->batch_want), free(e->batch_request);
    free(e->logits);
    free(e->sample_rows), free(e->sampled), free(e->penalized), free(e->penalty_mark);
    free(e->batch_fed);
    for (int i = 0; i < 2; i++) free(e->flights[i].request), free(e->flights[i].submit_order), free(e->flights[i].position);
    free(e->candidates);
    free(e);
}

tm_status tm_engine_create(const tm_engine_options *options, tm_engine **out, tm_error_t *error) {
    *out = NULL;
    tm_engine *e = calloc(1, sizeof *e);
    if (!e) return tm_error_set(error, TM_ERR_NO_MEMORY, "engine: out of memory");
    tm_engine_options_default(&e->options);
    if (options) e->options = *options;
    tm_engine_options *o = &e->options;
    if (!o->device) o->device = "auto";
    if (o->max_sequences <= 0) o->max_sequences = 16;
    if (o->max_sequences > 1024) o->max_sequences = 1024; /* the scheduler's per-step arrays */
    if (!o->kv_page_size) o->kv_page_size = TM_KV_DEFAULT_PAGE_SIZE;
    if (o->max_batch_tokens <= 0) o->max_batch_tokens = 512;
    tm_status s = TM_OK;
    int cuda_device = -1;
#ifdef TM_CUDA
    char gpu_name[256];
    if (!strcmp(o->device, "auto")) o->device = tm_cuda_device_name(gpu_name, sizeof gpu_name) ? "cuda" : "cpu";
#else
    if (!strcmp(o->device, "auto")) o->device = "cpu";
#endif
    if (!strncmp(o->device, "cuda", 4) && (o->device[4] == 0 || o->device[4] == ':')) {
        cuda_device = o->device[4] == ':' ? atoi(o->device + 5) : 0;
#ifndef TM_CUDA
        s = tm_error_set(error, TM_ERR_UNSUPPORTED, "engine: device '%s': this build has no CUDA backend (cpu)", o->device);
        goto fail;
#endif
    } else if (strcmp(o->device, "cpu") != 0) {
        s = tm_error_set(error, TM_ERR_INVALID_ARG, "engine: unknown device '%s' (auto, cpu, cuda, cuda:N)", o->device);
        goto fail;
    }
    snprintf(e->device, sizeof e->device, "%s", o->device);
    o->device = e->device; /* the caller's string need not outlive the engine */
    double started = tm_time_seconds();
    e->pool = tm_threadpool_create(o->n_threads);
    if (!e->pool) {
        s = tm_error_set(error, TM_ERR_NO_MEMORY, "engine: cannot start %d threads", o->n_threads);
        goto fail;
    }
    tm_trace_set_detail(o->nvtx_detail);
    tm_trace_push("model load");
    s = tm_model_open(o->model_path, o->synthetic, o->n_threads, &e->model, error);
    tm_trace_pop();
    if (s) goto fail;
    if ((s = tm_tokenizer_load(e->model->gguf, &e->tokenizer, error))) goto fail;
    const tm_model_config *c = &e->model->config;
    if (tm_tokenizer_vocab_size(e->tokenizer) != c->n_vocab) {
        s = tm_error_set(error, TM_ERR_FORMAT, "%s: the tokenizer has %d tokens but the model %d", e->model->gguf->label,
                         tm_tokenizer_vocab_size(e->tokenizer), c->n_vocab);
        goto fail;
    }
    if (o->n_ctx <= 0) o->n_ctx = TM_MIN(c->n_ctx_train, 4096);
    if (o->kv_type < 0 || o->kv_type > 2) {
        s = tm_error_set(error, TM_ERR_INVALID_ARG, "engine: kv_type %d (0 f16, 1 f32, 2 q8)", o->kv_type);
        goto fail;
    }
    tm_kv_layout layout = {c->n_layer, c->n_head_kv, c->head_dim, (tm_kv_type)o->kv_type, o->kv_page_size}; /* 0 f16, 1 f32, 2 q8 */
    int64_t pages = o->kv_pages;
    if (pages <= 0) {
        uint64_t cap = o->kv_bytes ? o->kv_bytes : (2ull << 30);
        pages = tm_kv_pages_for_tokens(&layout, o->n_ctx) * c->n_layer * o->max_sequences;
        pages = TM_MIN(pages, (int64_t)(cap / (o->kv_page_size + tm_kv_scale_bytes_per_page(&layout))));
        pages = TM_MAX(pages, tm_kv_pages_for_tokens(&layout, TM_MIN(o->n_ctx, 64)) * c->n_layer);
    }
    if ((s = tm_kv_create(&layout, pages, o->max_sequences, cuda_device < 0, &e->kv, error))) goto fail;
    if (cuda_device >= 0) {
#ifdef TM_CUDA
        tm_backend_cuda_options cuda;
        tm_backend_cuda_options_default(&cuda);
        cuda.device = cuda_device;
        cuda.max_context = o->n_ctx;
        cuda.graphs = !o->no_cuda_graphs;
        cuda.precision = o->precision == 1 ? TM_PRECISION_EXACT : TM_PRECISION_FAST;
        cuda.graphs = cuda.graphs && !o->nvtx_detail; /* per-op ranges need the kernels launched inside them */
        cuda.time_steps = o->time_device_steps;
        tm_trace_push("weight upload");
        s = tm_backend_cuda_create(e->model, &cuda, &e->backend, error);
        tm_trace_pop();
        if (s) goto fail;
#endif
    } else {
        tm_backend_cpu_options cpu = {e->pool, o->precision == 1 ? TM_PRECISION_EXACT : TM_PRECISION_FAST};
        if ((s = tm_backend_cpu_create(e->model, &cpu, &e->backend, error))) goto fail;
    }
    int batch_capacity = o->max_batch_tokens + o->max_sequences;
    e->batch_tokens = malloc((size_t)batch_capacity * sizeof(int32_t));
    e->batch_positions = malloc((size_t)batch_capacity * sizeof(int32_t));
    e->batch_seq = malloc((size_t)batch_capacity * sizeof(int32_t));
    e->batch_want = malloc((size_t)batch_capacity);
    e->batch_request = malloc((size_t)batch_capacity * sizeof(int));
    e->logits = malloc((size_t)o->max_sequences * (size_t)c->n_vocab * sizeof(float));
    e->candidates = malloc((size_t)c->n_vocab * sizeof *e->candidates);
    e->sample_rows = malloc((size_t)o->max_sequences * sizeof *e->sample_rows);
    e->sampled = malloc((size_t)o->max_sequences * sizeof *e->sampled);
    e->penalty_mark = calloc((size_t)c->n_vocab, 1);
    e->batch_fed = malloc((size_t)batch_capacity * sizeof(int32_t));
    bool flights = true;
    for (int i = 0; i < 2; i++) {
        flight *f = &e->flights[i];
        f->request = malloc((size_t)o->max_sequences * sizeof *f->request);
        f->submit_order = malloc((size_t)o->max_sequences * sizeof *f->submit_order);
        f->position = malloc((size_t)o->max_sequences * sizeof *f->position);
        flights = flights && f->request && f->submit_order && f->position;
    }
    if (!e->batch_tokens || !e->batch_positions || !e->batch_seq || !e->batch_want || !e->batch_request || !e->logits ||
        !e->candidates || !e->sample_rows || !e->sampled || !e->penalty_mark || !e->batch_fed || !flights) {
        s = tm_error_set(error, TM_ERR_NO_MEMORY, "engine: out of memory for batch buffers");
        goto fail;
    }
    e->stats.weight_bytes = e->model->weight_bytes;
    e->stats.step_weight_bytes = e->model->step_weight_bytes;
    e->stats.kv_bytes_per_position = (uint64_t)c->n_layer * tm_kv_position_bytes(&layout);
    e->stats.load_seconds = tm_time_seconds() - started;
    *out = e;
    return TM_OK;
fail:
    tm_engine_free(e);
    return s;
}

/* ---- requests ---------------------------------------------------------------------------- */

static request *get_request(const tm_engine *e, int id) {
    if (id < 0 || id >= e->n_requests || !e->requests[id].in_use) return NULL;
    return &e->requests[id];
}

static bool append_token(request *r, int32_t token) {
    if (r->n_tokens == r->capacity) {
        int capacity = r->capacity ? 2 * r->capacity : 256;
        int32_t *grown = realloc(r->tokens, (size_t)capacity * sizeof *grown);
        if (!grown) return false;
        r->tokens = grown;
        r->capacity = capacity;
    }
    r->tokens[r->n_tokens++] = token;
    return true;
}

tm_status tm_engine_submit(tm_engine *e, const tm_request_params *params, int *request_id, tm_error_t *error) {
    *request_id = -1;
    int id = 0;
    while (id < e->n_requests && e->requests[id].in_use) id++;
    if (id == e->n_requests) {
        request *grown = realloc(e->requests, (size_t)(e->n_requests + 1) * sizeof *grown);
        if (!grown) return tm_error_set(error, TM_ERR_NO_MEMORY, "submit: out of memory");
        e->requests = grown;
        memset(&e->requests[e->n_requests++], 0, sizeof *grown);
    }
    request *r = &e->requests[id];
    memset(r, 0, sizeof *r);
    r->seq = -1;
    tm_status s = TM_OK;
    if (params->prompt) {
        int32_t *ids;
        int n;
        size_t length = params->prompt_length ? params->prompt_length : strlen(params->prompt);
        if ((s = tm_tokenizer_encode(e->tokenizer, params->prompt, length, params->add_bos, params->parse_special, &ids, &n,
                                     error)))
            return s;
        r->tokens = ids;
        r->n_tokens = r->capacity = n;
    } else {
        for (int i = 0; i < params->n_prompt_tokens; i++) {
            if (params->prompt_tokens[i] < 0 || params->prompt_tokens[i] >= e->model->config.n_vocab) {
                free(r->tokens);
                return tm_error_set(error, TM_ERR_INVALID_ARG, "submit: prompt token %d (id %d) is out of range [0, %d)", i,
                                    params->prompt_tokens[i], e->model->config.n_vocab);
            }
            if (!append_token(r, params->prompt_tokens[i])) {
                free(r->tokens);
                return tm_error_set(error, TM_ERR_NO_MEMORY, "submit: out of memory");
            }
        }
    }
    const tm_kv_layout *layout = tm_kv_get_layout(e->kv);
    tm_kv_stats kv_stats;
    tm_kv_get_stats(e->kv, &kv_stats);
    if (r->n_tokens == 0) s = tm_error_set(error, TM_ERR_INVALID_ARG, "submit: the prompt is empty");
    else if (r->n_tokens >= e->options.n_ctx)
        s = tm_error_set(error, TM_ERR_INVALID_ARG, "submit: the prompt has %d tokens; the context holds %d", r->n_tokens,
                         e->options.n_ctx);
    else if (tm_kv_pages_for_tokens(layout, r->n_tokens + 1) * layout->n_layer > kv_stats.pages_total)
        s = tm_error_set(error, TM_ERR_INVALID_ARG, "submit: the prompt's %d tokens need more KV pages than the cache has (%lld)",
                         r->n_tokens, (long long)kv_stats.pages_total);
    else if (params->max_tokens < 0)
        s = tm_error_set(error, TM_ERR_INVALID_ARG, "submit: max_tokens %d is negative", params->max_tokens);
    if (s) {
        free(r->tokens);
        r->tokens = NULL;
        return s;
    }
    r->n_prompt = r->n_tokens;
    r->max_tokens = params->max_tokens;
    r->sampling = params->sampling;
    r->ignore_eos = params->ignore_eos;
    tm_rng_seed(&r->rng, params->sampling.seed);
    if (params->n_stop > 0) {
        r->stop = calloc((size_t)params->n_stop, sizeof *r->stop);
        for (int k = 0; r->stop && k < params->n_stop; k++) {
            if (!params->stop[k] || !params->stop[k][0]) continue;
            char *copy = strdup(params->stop[k]);
            if (!copy) continue;
            r->stop[r->n_stop++] = copy;
            int length = (int)strlen(copy);
            if (length > r->longest_stop) r->longest_stop = length;
        }
    }
    r->in_use = true;
    r->state = TM_REQUEST_QUEUED;
    r->submit_order = e->next_submit++;
    r->submitted_at = tm_time_seconds();
    *request_id = id;
    return TM_OK;
}

static void finish(tm_engine *e, request *r, tm_finish_reason reason) {
    if (r->seq >= 0) tm_kv_seq_free(e->kv, r->seq);
    r->seq = -1;
    r->state = TM_REQUEST_FINISHED;
    r->finish_reason = reason;
    r->finished_at = tm_time_seconds();
    r->stable_length = r->text_length;
}

tm_status tm_engine_cancel(tm_engine *e, int id) {
    request *r = get_request(e, id);
    if (!r) return TM_ERR_NOT_FOUND;
    if (r->state != TM_REQUEST_FINISHED) finish(e, r, TM_FINISH_CANCELLED);
    return TM_OK;
}

void tm_engine_release(tm_engine *e, int id) {
    request *r = get_request(e, id);
    if (!r) return;
    if (r->state != TM_REQUEST_FINISHED) finish(e, r, TM_FINISH_CANCELLED);
    free(r->tokens);
    free(r->text);
    for (int k = 0; k < r->n_stop; k++) free(r->stop[k]);
    free(r->stop);
    memset(r, 0, sizeof *r);
}

bool tm_engine_busy(const tm_engine *e) {
    for (int i = 0; i < e->n_requests; i++)
        if (e->requests[i].in_use && e->requests[i].state != TM_REQUEST_FINISHED) return true;
    return false;
}

/* ---- text -------------------------------------------------------------------------------- */

/* Bytes at the end of text that may not be shown yet: an incomplete UTF-8 sequence, or a
 * suffix that is the start of a stop string. */
static size_t held_back(const request *r) {
    size_t hold = 0;
    for (size_t back = 1; back <= 3 && back <= r->text_length; back++) {
        uint8_t byte = (uint8_t)r->text[r->text_length - back];
        if ((byte & 0xc0) == 0x80) continue;
        if (byte >= 0xc0 && (size_t)tm_utf8_sequence_length(byte) > back) hold = back;
        break;
    }
    for (int k = 0; k < r->n_stop; k++) {
        size_t stop_length = strlen(r->stop[k]);
        for (size_t n = TM_MIN(stop_length - 1, r->text_length); n > hold; n--)
            if (!memcmp(r->text + r->text_length - n, r->stop[k], n)) {
                hold = n;
                break;
            }
    }
    return hold;
}

/* Append a token's text; returns false when a stop string now appears (text cut before it). */
static bool append_text(tm_engine *e, request *r, int32_t token, bool *stopped) {
    char piece[8192];
    int n = tm_tokenizer_token_text(e->tokenizer, token, false, piece, sizeof piece);
    n = TM_MIN(n, (int)sizeof piece);
    if (r->text_length + (size_t)n + 1 > r->text_capacity) {
        size_t capacity = TM_MAX(2 * r->text_capacity, r->text_length + (size_t)n + 256);
        char *grown = realloc(r->text, capacity);
        if (!grown) return false;
        r->text = grown;
        r->text_capacity = capacity;
    }
    size_t search_from = r->text_length > (size_t)r->longest_stop ? r->text_length - (size_t)r->longest_stop : 0;
    memcpy(r->text + r->text_length, piece, (size_t)n);
    r->text_length += (size_t)n;
    r->text[r->text_length] = 0;
    *stopped = false;
    for (int k = 0; k < r->n_stop; k++) {
        size_t stop_length = strlen(r->stop[k]);
        for (size_t i = search_from; i + stop_length <= r->text_length; i++)
            if (!memcmp(r->text + i, r->stop[k], stop_length)) {
                r->text_length = i;
                r->text[i] = 0;
                *stopped = true;
                return true;
            }
    }
    r->stable_length = r->text_length - held_back(r);
    return true;
}

tm_status tm_engine_request_text(tm_engine *e, int id, const char **text, size_t *length) {
    request *r = get_request(e, id);
    if (!r) return TM_ERR_NOT_FOUND;
    *text = r->text ? r->text : "";
    *length = r->stable_length;
    return TM_OK;
}

int tm_engine_request_tokens(const tm_engine *e, int id, const int32_t **tokens) {
    request *r = get_request(e, id);
    if (!r) return 0;
    *tokens = r->tokens + r->n_prompt;
    return r->n_tokens - r->n_prompt;
}

tm_status tm_engine_request_info(const tm_engine *e, int id, tm_request_info *info) {
    request *r = get_request(e, id);
    if (!r) return TM_ERR_NOT_FOUND;
    info->state = r->state;
    info->finish_reason = r->finish_reason;
    info->n_prompt_tokens = r->n_prompt;
    info->n_generated = r->n_tokens - r->n_prompt;
    info->submitted_at = r->submitted_at;
    info->first_token_at = r->first_token_at;
    info->finished_at = r->finished_at;
    info->preemptions = r->preemptions;
    return TM_OK;
}

/* ---- the scheduler ----------------------------------------------------------------------- */

/* The running request admitted last (the one to preempt), or NULL. */
static request *latest_admitted(tm_engine *e) {
    request *latest = NULL;
    for (int i = 0; i < e->n_requests; i++) {
        request *r = &e->requests[i];
        if (r->in_use && (r->state == TM_REQUEST_PREFILL || r->state == TM_REQUEST_DECODING) &&
            (!latest || r->admit_order > latest->admit_order))
            latest = r;
    }
    return latest;
}

/* Free its pages and queue it again ahead of everything else; it recomputes its tokens later. */
static void preempt(tm_engine *e, request *r) {
    tm_kv_seq_free(e->kv, r->seq);
    r->seq = -1;
    r->n_processed = 0;
    r->state = TM_REQUEST_QUEUED;
    r->submit_order = -1 - r->preemptions; /* before every ordinary submission */
    r->preemptions++;
}

static void admit(tm_engine *e) {
    for (;;) {
        request *next = NULL;
        for (int i = 0; i < e->n_requests; i++) {
            request *r = &e->requests[i];
            if (r->in_use && r->state == TM_REQUEST_QUEUED && (!next || r->submit_order < next->submit_order)) next = r;
        }
        if (!next) return;
        int seq = tm_kv_seq_new(e->kv);
        if (seq < 0) return;
        if (tm_kv_reserve(e->kv, seq, next->n_tokens + 1) != TM_OK) {
            tm_kv_seq_free(e->kv, seq);
            return; /* first come, first served: nobody overtakes the head of the queue */
        }
        next->seq = seq;
        next->n_processed = 0;
        next->state = TM_REQUEST_PREFILL;
        next->admit_order = e->next_admit++;
    }
}

/* Append the sampled token to r; finish r on end of generation, a stop string, its length
 * limit or the context limit. */
static tm_status accept_token(tm_engine *e, request *r, int32_t token, tm_error_t *error) {
    if (!r->first_token_at) r->first_token_at = tm_time_seconds();
    r->state = TM_REQUEST_DECODING;
    if (!r->ignore_eos && tm_tokenizer_is_end_of_generation(e->tokenizer, token)) {
        if (!append_token(r, token)) return tm_error_set(error, TM_ERR_NO_MEMORY, "engine: out of memory");
        finish(e, r, TM_FINISH_END);
        return TM_OK;
    }
    bool stopped = false;
    if (!append_token(r, token) || !append_text(e, r, token, &stopped))
        return tm_error_set(error, TM_ERR_NO_MEMORY, "engine: out of memory");
    e->stats.generated_tokens++;
    int generated = r->n_tokens - r->n_prompt;
    if (stopped) finish(e, r, TM_FINISH_STOP);
    else if (generated >= r->max_tokens) finish(e, r, TM_FINISH_LENGTH);
    else if (r->n_tokens >= e->options.n_ctx) finish(e, r, TM_FINISH_CONTEXT);
    return TM_OK;
}

/* Whether this step's rows are sampled on the backend's device (any parameters can be). */
static bool device_sampling_possible(const tm_engine *e) { return e->backend->sample && !e->options.host_sampling; }

/* The distinct ids of r's repetition-penalty window (sampler.c's window), appended at *used. With
 * `unseen`, the window ends one token past r's tokens, with the token a step in flight samples (fed
 * to the step being sampled on the device, where the backend adds it: tm_sample_row.window_fed). */
static bool collect_penalized(tm_engine *e, const request *r, bool unseen, int *used, int *count) {
    *count = 0;
    const tm_sampling *p = &r->sampling;
    if (p->repetition_penalty == 1.0f || p->repetition_penalty <= 0) return true;
    const int history = r->n_tokens + unseen;
    int start = p->penalty_last_n > 0 && history > p->penalty_last_n ? history - p->penalty_last_n : 0;
    int need = *used + (r->n_tokens - start);
    if (need > e->penalized_capacity) {
        int32_t *grown = realloc(e->penalized, (size_t)need * 2 * sizeof *grown);
        if (!grown) return false;
        e->penalized = grown;
        e->penalized_capacity = need * 2;
    }
    const int n_vocab = e->model->config.n_vocab;
    for (int i = start; i < r->n_tokens; i++) {
        int32_t id = r->tokens[i];
        if (id < 0 || id >= n_vocab || e->penalty_mark[id]) continue;
        e->penalty_mark[id] = 1;
        e->penalized[*used + (*count)++] = id;
    }
    for (int i = 0; i < *count; i++) e->penalty_mark[e->penalized[*used + i]] = 0;
    *used += *count;
    return true;
}

static tm_status step_compute(tm_engine *e, const tm_batch *batch, int n, bool on_device, int prompt_tokens, double t0,
                              tm_error_t *error);
static tm_status step_start(tm_engine *e, tm_error_t *error);
static tm_status launch_following(tm_engine *e, bool *launched, tm_error_t *error);
static tm_status read_flight(tm_engine *e, tm_error_t *error);
static bool flight_alive(const tm_engine *e, const flight *f);

/* Whether row `row` of f still belongs to the request it was launched for, and that request runs
 * (not finished, cancelled, released or its slot taken by a newer request). */
static bool row_alive(const tm_engine *e, const flight *f, int row) {
    const request *r = &e->requests[f->request[row]];
    return r->in_use && r->submit_order == f->submit_order[row] && (r->state == TM_REQUEST_PREFILL || r->state == TM_REQUEST_DECODING);
}

/* Whether steps may overlap: the backend can start a sampling without waiting for it, and the
 * caller did not ask each step's tokens to be read before the next is launched. */
static bool overlap_enabled(const tm_engine *e) {
    return e->backend->sample_start && e->backend->sample_finish && !e->options.no_step_overlap;
}

/* The sampled rows of the step just launched (the batch scratch) into a flight record. */
static void record_flight(tm_engine *e, flight *f, const tm_batch *batch, int prompt_tokens, double t0) {
    f->n_rows = 0;
    for (int k = 0; k < batch->n_tokens; k++) {
        if (!batch->want_logits[k]) continue;
        f->request[f->n_rows] = e->batch_request[k];
        f->submit_order[f->n_rows] = e->requests[e->batch_request[k]].submit_order;
        f->position[f->n_rows++] = batch->positions[k];
    }
    f->prompt_tokens = prompt_tokens;
    f->t0 = t0;
}

/* The rows of a device-sampled step (want rows, batch order) for the backend's sampler; a
 * request's uniform draw is taken here, one per step, as the CPU sampler takes it. A row whose
 * token was fed on the device (batch->fed) has a penalty window ending with that token, which the
 * host has not seen: the backend adds it (window_fed). */
static tm_status device_sample_rows(tm_engine *e, const tm_batch *batch, int *n_rows, tm_error_t *error) {
    int rows = 0, penalized_used = 0;
    for (int k = 0; k < batch->n_tokens; k++) {
        if (!batch->want_logits[k]) continue;
        request *r = &e->requests[e->batch_request[k]];
        tm_sample_row *row = &e->sample_rows[rows++];
        row->params = &r->sampling;
        row->uniform = r->sampling.temperature > 0 ? tm_rng_uniform(&r->rng) : 0; /* the CPU sampler's one draw */
        int start = penalized_used;
        row->window_fed = batch->fed && batch->fed[k] >= 0;
        if (!collect_penalized(e, r, row->window_fed, &penalized_used, &row->n_penalized))
            return tm_error_set(error, TM_ERR_NO_MEMORY, "engine: out of memory");
        row->penalized = NULL;
        row->penalized_start = start;
    }
    for (int i = 0; i < rows; i++) e->sample_rows[i].penalized = e->penalized + e->sample_rows[i].penalized_start;
    *n_rows = rows;
    return TM_OK;
}

/* A step's time: from when the host started it, or, for a step launched while the one before it was
 * in flight, from when that one was read: overlapped steps add up to the wall clock between reads
 * (the caller's own time between calls included, during which the device keeps working). Steps
 * read one at a time count from their start, after the scheduling, as before. */
static void account_step(tm_engine *e, int prompt_tokens, double t0, double sampling_started, double done) {
    const double start = TM_MAX(t0, e->last_read);
    e->stats.sample_seconds += done - sampling_started;
    e->stats.steps++;
    e->stats.prompt_tokens += prompt_tokens;
    if (prompt_tokens) e->stats.prefill_seconds += done - start;
    else e->stats.decode_seconds += done - start;
    e->last_read = done;
}

/* One range a call: the step it reads ("prefill step" or "decode step"). */
tm_status tm_engine_step(tm_engine *e, tm_error_t *error) {
    const int depth = tm_trace_depth();
    tm_status s = TM_OK;
    if (!e->in_flight) s = step_start(e, error); /* its range stays open while it is read below */
    else tm_trace_push("decode step");          /* launched by the call before, after the one it read */
    /* a step in flight: launch the one after it where its batch is already known, then read it */
    bool launched = false;
    if (!s && e->in_flight) s = launch_following(e, &launched, error);
    if (!s && e->in_flight) s = read_flight(e, error);
    if (!s && launched && !flight_alive(e, &e->flights[e->oldest])) s = read_flight(e, error); /* every row's request ended */
    tm_trace_unwind(depth); /* closes whatever an error left open inside */
    return s;
}

/* The batch of the step that follows `f` when it can be built before f's tokens are read: f is a
 * decode step (after a step with prompt tokens the next one starts when it has been read: a
 * caller's work at the end of prefill, such as tmbench's energy reading, then does not hide a
 * decode step's time), every running request has its last sampled row in f, nothing queued could
 * be admitted (none queued, or every sequence slot taken: a saturated server keeps overlapping;
 * a slot freed by f's tokens admits at the step after the next), and each grows its KV by one
 * token without preempting (a repetition penalty's window ends with f's token: the backend adds
 * it, device_sample_rows). A request whose row in f ends it by length
 * or context is left out; rows whose requests end otherwise (an end token, a stop string) are
 * computed and dropped when their tokens come. Its tokens are fed from f's rows. Returns the
 * batch's tokens (0: not possible now). */
static int build_following(tm_engine *e, const flight *f) {
    if (f->prompt_tokens) return 0;
    int active = 0, queued = 0;
    for (int i = 0; i < e->n_requests; i++) {
        const request *r = &e->requests[i];
        if (!r->in_use) continue;
        queued += r->state == TM_REQUEST_QUEUED;
        active += r->state == TM_REQUEST_PREFILL || r->state == TM_REQUEST_DECODING;
    }
    if (queued) {
        tm_kv_stats kv;
        tm_kv_get_stats(e->kv, &kv);
        if (kv.sequences_active < kv.max_sequences) return 0; /* admission could take a free slot now */
    }
    int n = 0, alive = 0;
    for (int row = 0; row < f->n_rows; row++) {
        if (!row_alive(e, f, row)) continue;
        request *r = &e->requests[f->request[row]];
        alive++;
        const int position = f->position[row] + 1; /* the token f samples, processed by the next step */
        if (r->n_tokens != position || r->n_processed != position) return 0; /* f's token is not its next */
        if (position + 1 - r->n_prompt >= r->max_tokens || position + 1 >= e->options.n_ctx) continue; /* ends with f's token */
        if (tm_kv_reserve(e->kv, r->seq, position + 1) != TM_OK) return 0;
        e->batch_tokens[n] = 0;
        e->batch_fed[n] = row;
        e->batch_positions[n] = position;
        e->batch_seq[n] = r->seq;
        e->batch_want[n] = 1;
        e->batch_request[n++] = f->request[row];
    }
    return alive == active ? n : 0;
}

/* Whether any row of f still belongs to a running request. */
static bool flight_alive(const tm_engine *e, const flight *f) {
    for (int row = 0; row < f->n_rows; row++)
        if (row_alive(e, f, row)) return true;
    return false;
}

/* Launch the step after the one in flight where build_following allows: forward with its tokens
 * fed on the device, then its sampling started; it becomes the newer flight. */
static tm_status launch_following(tm_engine *e, bool *launched, tm_error_t *error) {
    *launched = false;
    if (e->in_flight != 1) return TM_OK;
    const double t0 = tm_time_seconds();
    const int n = build_following(e, &e->flights[e->oldest]);
    if (n == 0) return TM_OK;
    tm_batch batch = {n, e->batch_tokens, e->batch_positions, e->batch_seq, e->batch_want, e->batch_fed};
    tm_status s = e->backend->forward(e->backend, &batch, e->kv, NULL, error);
    if (s) return s;
    for (int k = 0; k < n; k++) e->requests[e->batch_request[k]].n_processed = e->batch_positions[k] + 1;
    int rows = 0;
    if ((s = device_sample_rows(e, &batch, &rows, error)) || (s = e->backend->sample_start(e->backend, rows, e->sample_rows, error))) return s;
    record_flight(e, &e->flights[!e->oldest], &batch, 0, t0);
    e->in_flight = 2;
    e->stats.overlapped_steps++;
    *launched = true;
    return TM_OK;
}

/* Read the oldest step in flight: its tokens, accepted for the rows whose requests still run. */
static tm_status read_flight(tm_engine *e, tm_error_t *error) {
    flight *f = &e->flights[e->oldest];
    const double sampling_started = tm_time_seconds();
    tm_trace_push("sampling");
    tm_status s = e->backend->sample_finish(e->backend, e->sampled, error);
    e->in_flight--;
    e->oldest = !e->oldest;
    if (s) return s;
    e->stats.device_sampled_tokens += f->n_rows;
    for (int row = 0; row < f->n_rows; row++) {
        if (!row_alive(e, f, row)) continue; /* ended while this step was in flight: its token is dropped */
        request *r = &e->requests[f->request[row]];
        if ((s = accept_token(e, r, e->sampled[row], error))) return s;
    }
    tm_trace_pop();
    account_step(e, f->prompt_tokens, f->t0, sampling_started, tm_time_seconds());
    return TM_OK;
}

/* Schedule a step (tm_engine_step's first half when nothing is in flight): admit, build the
 * batch, then run it: read to the end here, or, with overlapped steps on a device-sampled batch,
 * left in flight after its sampling started. */
static tm_status step_start(tm_engine *e, tm_error_t *error) {
    /* requests that want nothing generated finish without a forward pass */
    for (int i = 0; i < e->n_requests; i++)
        if (e->requests[i].in_use && e->requests[i].state == TM_REQUEST_QUEUED && e->requests[i].max_tokens == 0)
            finish(e, &e->requests[i], TM_FINISH_LENGTH);
    admit(e);
    int n = 0, budget = e->options.max_batch_tokens, prompt_tokens = 0;
    /* decode tokens first: one per decoding request, growing its KV (preempting if full) */
    for (int i = 0; i < e->n_requests; i++) {
        request *r = &e->requests[i];
        if (!r->in_use || r->state != TM_REQUEST_DECODING) continue;
        while (tm_kv_reserve(e->kv, r->seq, r->n_processed + 1) != TM_OK) {
            request *victim = latest_admitted(e);
            preempt(e, victim);
            for (int k = 0; k < n; k++) /* drop the victim's tokens from the batch */
                if (&e->requests[e->batch_request[k]] == victim) {
                    memmove(e->batch_tokens + k, e->batch_tokens + k + 1, (size_t)(n - k - 1) * sizeof(int32_t));
                    memmove(e->batch_positions + k, e->batch_positions + k + 1, (size_t)(n - k - 1) * sizeof(int32_t));
                    memmove(e->batch_seq + k, e->batch_seq + k + 1, (size_t)(n - k - 1) * sizeof(int32_t));
                    memmove(e->batch_want + k, e->batch_want + k + 1, (size_t)(n - k - 1));
                    memmove(e->batch_request + k, e->batch_request + k + 1, (size_t)(n - k - 1) * sizeof(int));
                    n--;
                    k--;
                }
            if (victim == r) break;
        }
        if (r->state != TM_REQUEST_DECODING) continue;
        e->batch_tokens[n] = r->tokens[r->n_processed];
        e->batch_positions[n] = r->n_processed;
        e->batch_seq[n] = r->seq;
        e->batch_want[n] = 1;
        e->batch_request[n++] = i;
    }
    /* then prefill chunks in admission order (insertion sort: at most max_sequences) */
    int prefill[1024], n_prefill = 0;
    for (int i = 0; i < e->n_requests && n_prefill < 1024; i++) {
        const request *r = &e->requests[i];
        if (!r->in_use || r->state != TM_REQUEST_PREFILL) continue;
        int j = n_prefill++;
        while (j > 0 && e->requests[prefill[j - 1]].admit_order > r->admit_order) {
            prefill[j] = prefill[j - 1];
            j--;
        }
        prefill[j] = i;
    }
    for (int p = 0; p < n_prefill && budget > n; p++) {
        request *r = &e->requests[prefill[p]];
        int chunk = TM_MIN(r->n_tokens - r->n_processed, budget - n);
        for (int k = 0; k < chunk; k++) {
            int position = r->n_processed + k;
            e->batch_tokens[n] = r->tokens[position];
            e->batch_positions[n] = position;
            e->batch_seq[n] = r->seq;
            e->batch_want[n] = position == r->n_tokens - 1;
            e->batch_request[n++] = prefill[p];
        }
        prompt_tokens += chunk;
    }
    if (n == 0) return TM_OK;

    tm_batch batch = {n, e->batch_tokens, e->batch_positions, e->batch_seq, e->batch_want, NULL};
    const bool on_device = device_sampling_possible(e);
    double t0 = tm_time_seconds();
    tm_trace_push(prompt_tokens ? "prefill step" : "decode step");
    return step_compute(e, &batch, n, on_device, prompt_tokens, t0, error);
}

/* The forward pass and sampling of one step's batch (step_start's second half). */
static tm_status step_compute(tm_engine *e, const tm_batch *batch, int n, bool on_device, int prompt_tokens, double t0,
                              tm_error_t *error) {
    tm_status s = e->backend->forward(e->backend, batch, e->kv, on_device ? NULL : e->logits, error);
    if (s) return s;
    for (int k = 0; k < n; k++) {
        request *r = &e->requests[e->batch_request[k]];
        r->n_processed = TM_MAX(r->n_processed, e->batch_positions[k] + 1);
    }
    /* sample every row that wants it: on the device (one call, or started and left in flight) or here */
    int rows = 0;
    if (on_device) {
        if ((s = device_sample_rows(e, batch, &rows, error))) return s;
        if (overlap_enabled(e)) {
            if ((s = e->backend->sample_start(e->backend, rows, e->sample_rows, error))) return s;
            record_flight(e, &e->flights[e->oldest], batch, prompt_tokens, t0);
            e->in_flight = 1;
            return TM_OK;
        }
    }
    double t1 = tm_time_seconds();
    tm_trace_push("sampling");
    if (on_device) {
        if ((s = e->backend->sample(e->backend, rows, e->sample_rows, e->sampled, error))) return s;
        e->stats.device_sampled_tokens += rows;
    }
    int row = 0;
    for (int k = 0; k < n; k++) {
        if (!e->batch_want[k]) continue;
        request *r = &e->requests[e->batch_request[k]];
        int32_t token;
        if (on_device) token = e->sampled[row++];
        else
            token = tm_sample(&r->sampling, e->logits + (size_t)row++ * (size_t)e->model->config.n_vocab, e->model->config.n_vocab,
                              r->tokens, r->n_tokens, &r->rng, e->candidates);
        if ((s = accept_token(e, r, token, error))) return s;
    }
    tm_trace_pop();
    /* the step's time: the forward pass and sampling (a device forward may return before the
     * device is done; sampling waits for it) */
    account_step(e, prompt_tokens, t0, t1, tm_time_seconds());
    return TM_OK;
}

/* ---- stats and model facts --------------------------------------------------------------- */

void tm_engine_get_stats(const tm_engine *e, tm_engine_stats *stats) {
    *stats = e->stats;
    tm_kv_stats kv;
    tm_kv_get_stats(e->kv, &kv);
    stats->kv_pages_total = kv.pages_total;
    stats->kv_pages_used = kv.pages_used;
    stats->kv_pages_free = kv.pages_free;
    stats->kv_page_size = kv.page_size;
    stats->kv_bytes_used = kv.bytes_used;
    stats->kv_bytes_allocated = kv.bytes_allocated;
    if (e->backend->memory) {
        tm_backend_memory memory;
        e->backend->memory(e->backend, &memory);
        stats->device_weight_bytes = memory.weights;
        stats->device_kv_bytes = memory.kv;
        stats->device_activation_bytes = memory.activations;
        stats->device_workspace_bytes = memory.workspace;
    }
    if (e->backend->step_timing) {
        tm_backend_step_timing timing;
        e->backend->step_timing(e->backend, &timing);
        stats->device_timed_steps = timing.steps;
        stats->device_idle_seconds = timing.idle_seconds;
        stats->device_busy_seconds = timing.busy_seconds;
    }
    stats->requests_queued = stats->requests_running = 0;
    for (int i = 0; i < e->n_requests; i++) {
        const request *r = &e->requests[i];
        if (!r->in_use) continue;
        if (r->state == TM_REQUEST_QUEUED) stats->requests_queued++;
        else if (r->state != TM_REQUEST_FINISHED) stats->requests_running++;
    }
}

const char *tm_engine_model_name(const tm_engine *e) { return e->model->name; }
const char *tm_engine_device(const tm_engine *e) { return e->device; }
int tm_engine_vocab_size(const tm_engine *e) { return e->model->config.n_vocab; }

tm_status tm_engine_tokenize(const tm_engine *e, const char *text, size_t length, bool add_bos, int32_t **ids, int *n_ids,
                             tm_error_t *error) {
    return tm_tokenizer_encode(e->tokenizer, text, length, add_bos, true, ids, n_ids, error);
}

tm_status tm_engine_chat_prompt(const tm_engine *e, const char *system, const char *user, char **prompt, tm_error_t *error) {
    return tm_tokenizer_apply_chat(e->tokenizer, system, user, prompt, error);
}
