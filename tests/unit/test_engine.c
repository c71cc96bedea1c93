/*
 * test_engine.c - the request API, scheduler and sampler on the tiny synthetic model:
 *  - batched decode of 6 sequences gives exactly the tokens each gets alone (greedy);
 *  - with a KV pool too small for all of them, requests are preempted and recomputed, and the
 *    tokens are still exactly the solo ones; the pool ends empty;
 *  - chunked prefill (3 tokens a step) gives the same tokens as whole prefill;
 *  - stop strings cut the text before them; max_tokens; cancel; bad prompts are refused;
 *  - overlapped steps (each decode step launched before the host reads the tokens of the one
 *    before it, its tokens fed on the backend) give every request the tokens, text and finish
 *    reason of steps read one at a time and of host sampling, through sampled (top-k, and one
 *    without top-k: the backend samples every row now) and greedy rows, a
 *    queued request, repetition penalties (the window's last token fed on the backend), a stop
 *    string, different lengths, a cancel and a release with a new request in its slot; and they
 *    did overlap, penalized rows too;
 *  - sampler: greedy = argmax; top_k 1 = greedy; the same seed repeats, another seed differs;
 *    temperature sampling follows softmax (chi-square over 20000 draws); top-p and min-p keep
 *    only the allowed tokens; repetition penalty lowers repeated tokens;
 *  - the stats' bytes a decode step reads: the weights but the (untied) embedding table, counted
 *    here from the model's tensors, and the KV bytes a position holds over all layers for the f16
 *    and 8-bit caches, from the geometry (scales included).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model.h"
#include "quant.h"
#include "sampler.h"
#include "tensormesh.h"

static tm_engine *make_engine(int max_sequences, int64_t kv_pages, int max_batch_tokens) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "tiny:q4_k_m";
    options.n_threads = 2;
    options.max_sequences = max_sequences;
    options.kv_pages = kv_pages;
    options.kv_page_size = 512; /* one 512-byte row per page: pages run out quickly */
    options.max_batch_tokens = max_batch_tokens;
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    CHECK(!tm_engine_create(&options, &engine, &error), "engine: %s", error.message);
    return engine;
}

static const char *prompts[6] = {"hello world", "the quick brown fox", "a", "one two three four five six seven",
                                 "xyz", "tiny models say things"};

/* Run every request to the end; returns generated tokens per prompt (malloc'ed, 32 each). */
static int run_all(tm_engine *engine, const int *which, int n, int32_t out[][32], int max_tokens) {
    int preemptions = 0;
    int ids[6];
    tm_error_t error = {0};
    for (int i = 0; i < n; i++) {
        tm_request_params params;
        tm_request_params_default(&params);
        params.prompt = prompts[which[i]];
        params.max_tokens = max_tokens;
        params.ignore_eos = true;
        CHECK(!tm_engine_submit(engine, &params, &ids[i], &error), "submit: %s", error.message);
    }
    int steps = 0;
    while (tm_engine_busy(engine) && steps++ < 10000) CHECK(!tm_engine_step(engine, &error), "step: %s", error.message);
    for (int i = 0; i < n; i++) {
        const int32_t *tokens;
        int count = tm_engine_request_tokens(engine, ids[i], &tokens);
        CHECK(count == max_tokens, "request %d generated %d tokens", i, count);
        memcpy(out[which[i]], tokens, (size_t)TM_MIN(count, 32) * sizeof(int32_t));
        tm_request_info info;
        tm_engine_request_info(engine, ids[i], &info);
        preemptions += info.preemptions;
        tm_engine_release(engine, ids[i]);
    }
    return preemptions;
}

static void test_batched_equals_solo(void) {
    int32_t solo[6][32], batched[6][32], preempted[6][32], chunked[6][32];
    tm_engine *engine = make_engine(8, 0, 512);
    if (!engine) return;
    for (int i = 0; i < 6; i++) run_all(engine, &i, 1, solo, 24);
    int all[6] = {0, 1, 2, 3, 4, 5};
    run_all(engine, all, 6, batched, 24);
    for (int i = 0; i < 6; i++) CHECK(!memcmp(solo[i], batched[i], 24 * sizeof(int32_t)), "prompt %d: batched differs", i);
    tm_engine_stats stats;
    tm_engine_get_stats(engine, &stats);
    CHECK(stats.kv_pages_used == 0, "finished requests return their pages");
    tm_engine_free(engine);

    /* 4 layers x ~40 tokens per sequence: 6 sequences need ~960 pages; give 400 */
    engine = make_engine(8, 400, 512);
    int preemptions = run_all(engine, all, 6, preempted, 24);
    CHECK(preemptions > 0, "the small pool forced preemptions (%d)", preemptions);
    for (int i = 0; i < 6; i++) CHECK(!memcmp(solo[i], preempted[i], 24 * sizeof(int32_t)), "prompt %d: preempted differs", i);
    tm_engine_free(engine);

    engine = make_engine(8, 0, 3);
    run_all(engine, all, 6, chunked, 24);
    for (int i = 0; i < 6; i++) CHECK(!memcmp(solo[i], chunked[i], 24 * sizeof(int32_t)), "prompt %d: chunked differs", i);
    tm_engine_free(engine);
}

static void test_requests(void) {
    tm_engine *engine = make_engine(4, 0, 512);
    if (!engine) return;
    tm_error_t error = {0};
    tm_request_params params;
    tm_request_params_default(&params);
    params.prompt = prompts[1];
    params.max_tokens = 40;
    params.ignore_eos = true;
    int id;
    tm_engine_submit(engine, &params, &id, &error);
    while (tm_engine_busy(engine)) tm_engine_step(engine, &error);
    const char *text;
    size_t length;
    tm_engine_request_text(engine, id, &text, &length);
    char full[4096];
    snprintf(full, sizeof full, "%.*s", (int)length, text);
    tm_engine_release(engine, id);
    CHECK(length > 8, "generated text (%zu bytes)", length);
    /* stop at a substring from the middle of that text */
    char stop[8];
    memcpy(stop, full + length / 2, 3);
    stop[3] = 0;
    const char *stops[1] = {stop};
    params.stop = stops;
    params.n_stop = 1;
    tm_engine_submit(engine, &params, &id, &error);
    while (tm_engine_busy(engine)) tm_engine_step(engine, &error);
    tm_request_info info;
    tm_engine_request_info(engine, id, &info);
    tm_engine_request_text(engine, id, &text, &length);
    const char *first = strstr(full, stop);
    CHECK(info.finish_reason == TM_FINISH_STOP && first && length == (size_t)(first - full) && !memcmp(text, full, length),
          "stop string '%s': reason %d, %zu bytes, expected %td", stop, info.finish_reason, length, first ? first - full : -1);
    tm_engine_release(engine, id);

    params.n_stop = 0;
    params.max_tokens = 5;
    tm_engine_submit(engine, &params, &id, &error);
    while (tm_engine_busy(engine)) tm_engine_step(engine, &error);
    tm_engine_request_info(engine, id, &info);
    CHECK(info.n_generated == 5 && info.finish_reason == TM_FINISH_LENGTH, "max_tokens: %d", info.n_generated);
    CHECK(info.first_token_at >= info.submitted_at && info.finished_at >= info.first_token_at, "timestamps ordered");
    tm_engine_release(engine, id);

    params.max_tokens = 1000;
    tm_engine_submit(engine, &params, &id, &error);
    tm_engine_step(engine, &error);
    tm_engine_step(engine, &error);
    CHECK(tm_engine_cancel(engine, id) == TM_OK, "cancel");
    tm_engine_request_info(engine, id, &info);
    CHECK(info.state == TM_REQUEST_FINISHED && info.finish_reason == TM_FINISH_CANCELLED, "cancelled");
    CHECK(!tm_engine_busy(engine), "nothing left running");
    tm_engine_release(engine, id);

    params.prompt = "";
    params.add_bos = false;
    CHECK(tm_engine_submit(engine, &params, &id, &error) == TM_ERR_INVALID_ARG && strstr(error.message, "empty"),
          "empty prompt refused: %s", error.message);
    int32_t bad_tokens[2] = {5, 99999};
    params.prompt = NULL;
    params.prompt_tokens = bad_tokens;
    params.n_prompt_tokens = 2;
    CHECK(tm_engine_submit(engine, &params, &id, &error) == TM_ERR_INVALID_ARG && strstr(error.message, "99999"),
          "out-of-range token refused: %s", error.message);
    static char long_prompt[40000];
    memset(long_prompt, 'a', sizeof long_prompt - 1);
    for (size_t i = 0; i < sizeof long_prompt - 1; i += 2) long_prompt[i] = ' ';
    params.prompt = long_prompt;
    CHECK(tm_engine_submit(engine, &params, &id, &error) == TM_ERR_INVALID_ARG && strstr(error.message, "context"),
          "over-long prompt refused: %s", error.message);
    const char invalid_utf8[] = "ok \xff\xfe \xc3";
    params.prompt = invalid_utf8;
    params.max_tokens = 3;
    CHECK(!tm_engine_submit(engine, &params, &id, &error), "invalid UTF-8 is tokenized: %s", error.message);
    while (tm_engine_busy(engine)) tm_engine_step(engine, &error);
    tm_engine_free(engine);
}

/* The filters without top-k as the sampler defines them, by a full sort (the sampler takes the
 * candidates from a heap as far as it needs them): the reference for the test below. */
static int by_logit_then_id(const void *a, const void *b) {
    const tm_sampler_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}
static int32_t reference_unbounded(const tm_sampling *p, const float *logits, int n, double uniform, tm_sampler_candidate *c) {
    for (int i = 0; i < n; i++) c[i] = (tm_sampler_candidate){i, logits[i]};
    qsort(c, (size_t)n, sizeof *c, by_logit_then_id);
    int keep = n;
    double sum = 0, best = c[0].logit;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].logit - best);
    if (p->top_p > 0 && p->top_p < 1) {
        double cumulative = 0;
        for (int i = 0; i < n; i++)
            if ((cumulative += exp((double)c[i].logit - best) / sum) >= p->top_p) {
                keep = i + 1;
                break;
            }
    }
    if (p->min_p > 0) {
        int kept = 1;
        while (kept < keep && c[kept].logit >= c[0].logit + logf(p->min_p)) kept++;
        keep = kept;
    }
    double total = 0, acc = 0;
    for (int i = 0; i < keep; i++) total += (float)exp(((double)c[i].logit - best) / p->temperature);
    for (int i = 0; i < keep; i++)
        if (uniform * total < (acc += (float)exp(((double)c[i].logit - best) / p->temperature))) return c[i].id;
    return c[keep - 1].id;
}

/* Without top-k (the heap taken as far as needed, the rest sorted past an eighth): the token of a
 * full sort for every draw, on peaked and flat logits of 50 and 5000 ids with ties, under top-p,
 * min-p, both and neither. */
static void test_sampler_without_top_k(void) {
    enum { N = 5000 };
    static float logits[N], scratch_logits[N];
    static tm_sampler_candidate c[N], reference[N];
    tm_rng_t rng;
    tm_rng_seed(&rng, 77);
    const float top_ps[4] = {1.0f, 0.9f, 0.5f, 1.0f}, min_ps[4] = {0, 0, 0.05f, 0.2f};
    int differ = 0, trials = 0;
    for (int shape = 0; shape < 4; shape++) {
        const int n = shape % 2 ? 50 : N;
        const float spread = shape < 2 ? 12.0f : 1.0f; /* peaked / flat */
        for (int i = 0; i < n; i++) logits[i] = roundf(spread * (tm_rng_uniform(&rng) + tm_rng_uniform(&rng) - 1.0f) * 4) / 4;
        for (int f = 0; f < 4; f++)
            for (int d = 0; d < 50; d++) {
                tm_sampling p;
                tm_sampling_default(&p);
                p.temperature = 0.5f + 0.25f * (float)(d % 4);
                p.top_p = top_ps[f], p.min_p = min_ps[f];
                const double uniform = tm_rng_uniform(&rng);
                memcpy(scratch_logits, logits, (size_t)n * sizeof *logits);
                differ += tm_sample_drawn(&p, scratch_logits, n, NULL, 0, -1, uniform, c) != reference_unbounded(&p, logits, n, uniform, reference);
                trials++;
            }
    }
    CHECK(differ == 0, "sampling without top-k: %d of %d draws differ from a full sort's", differ, trials);
}

static void test_sampler(void) {
    enum { V = 8 };
    const float base[V] = {1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 3.0f, 0.0f, 2.0f};
    float logits[V];
    tm_sampler_candidate scratch[V];
    tm_rng_t rng;
    tm_sampling p;
    tm_sampling_default(&p);
    memcpy(logits, base, sizeof logits);
    tm_rng_seed(&rng, 1);
    CHECK(tm_sample(&p, logits, V, NULL, 0, &rng, scratch) == 1, "greedy picks the first maximum");
    p.temperature = 1.0f;
    p.top_k = 1;
    memcpy(logits, base, sizeof logits);
    CHECK(tm_sample(&p, logits, V, NULL, 0, &rng, scratch) == 1, "top_k 1 is greedy");

    /* temperature 1, no filters: frequencies follow softmax */
    tm_sampling_default(&p);
    p.temperature = 1.0f;
    int counts[V] = {0};
    const int draws = 20000;
    tm_rng_seed(&rng, 42);
    for (int i = 0; i < draws; i++) {
        memcpy(logits, base, sizeof logits);
        counts[tm_sample(&p, logits, V, NULL, 0, &rng, scratch)]++;
    }
    double z = 0, chi2 = 0;
    for (int i = 0; i < V; i++) z += exp(base[i]);
    for (int i = 0; i < V; i++) {
        double expected = draws * exp(base[i]) / z;
        chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
    }
    CHECK(chi2 < 24.3, "chi-square %.2f over 7 degrees of freedom (p = 0.001 threshold 24.3)", chi2);

    /* the same seed repeats; another differs somewhere */
    int first[50], second[50], other[50], differ = 0;
    for (int run = 0; run < 3; run++) {
        tm_rng_seed(&rng, run == 2 ? 8 : 7);
        for (int i = 0; i < 50; i++) {
            memcpy(logits, base, sizeof logits);
            int token = tm_sample(&p, logits, V, NULL, 0, &rng, scratch);
            (run == 0 ? first : run == 1 ? second : other)[i] = token;
        }
    }
    for (int i = 0; i < 50; i++) differ += first[i] != other[i];
    CHECK(!memcmp(first, second, sizeof first) && differ > 0, "seeded draws repeat (and differ across seeds: %d)", differ);

    /* top-p 0.5: tokens 1 and 5 (equal best, about 0.27 each) cover it; nothing else appears */
    p.top_p = 0.5f;
    int outside = 0;
    for (int i = 0; i < 2000; i++) {
        memcpy(logits, base, sizeof logits);
        int token = tm_sample(&p, logits, V, NULL, 0, &rng, scratch);
        outside += token != 1 && token != 5;
    }
    CHECK(outside == 0, "top-p: %d draws outside the nucleus", outside);
    /* min-p 0.5: keeps tokens with p >= 0.5 p_max: logits >= 3 - ln 2 = 2.31 -> 1, 5, 2 */
    tm_sampling_default(&p);
    p.temperature = 1.0f;
    p.min_p = 0.5f;
    outside = 0;
    for (int i = 0; i < 2000; i++) {
        memcpy(logits, base, sizeof logits);
        int token = tm_sample(&p, logits, V, NULL, 0, &rng, scratch);
        outside += token != 1 && token != 5 && token != 2;
    }
    CHECK(outside == 0, "min-p: %d draws below the threshold", outside);
    /* repetition penalty: token 1 seen, penalty 2 -> 1.5 < 2.5, so greedy picks 5 then 2 */
    tm_sampling_default(&p);
    p.repetition_penalty = 2.0f;
    int32_t history[2] = {1, 5};
    memcpy(logits, base, sizeof logits);
    CHECK(tm_sample(&p, logits, V, history, 1, &rng, scratch) == 5, "penalised token 1 loses to 5");
    memcpy(logits, base, sizeof logits);
    CHECK(tm_sample(&p, logits, V, history, 2, &rng, scratch) == 2, "penalised 1 and 5 lose to 2");
    /* the window as ids plus a last token the caller has not seen (tm_sample_drawn's `last`):
     * penalized once, whether or not the ids list it (penalty 1.1: token 1's 3 -> 2.73 still beats
     * token 2's 2.6, twice 2.48 would not) */
    const float close[V] = {1.0f, 3.0f, 2.6f, -1.0f, 0.5f, 2.0f, 0.0f, 2.0f};
    p.repetition_penalty = 1.1f;
    const int32_t listed[2] = {7, 1};
    memcpy(logits, close, sizeof logits);
    CHECK(tm_sample_drawn(&p, logits, V, NULL, 0, 1, 0, scratch) == 1 && fabsf(logits[1] - 3.0f / 1.1f) < 1e-6f,
          "an unseen last token is penalized once");
    memcpy(logits, close, sizeof logits);
    CHECK(tm_sample_drawn(&p, logits, V, listed, 2, 1, 0, scratch) == 1 && fabsf(logits[1] - 3.0f / 1.1f) < 1e-6f,
          "a last token the ids list is not penalized again");
    p.repetition_penalty = 1.3f;
    memcpy(logits, close, sizeof logits);
    CHECK(tm_sample_drawn(&p, logits, V, listed, 1, 1, 0, scratch) == 2, "the unseen last token 1 penalized loses to 2");
}

static uint64_t tensor_bytes(const tm_weight *w) {
    uint64_t row_bytes = 0;
    tm_type_row_bytes(w->type, (uint64_t)w->cols, &row_bytes);
    return row_bytes * (uint64_t)w->rows;
}

static void test_stats_count_what_a_step_reads(void) {
    tm_model *model = NULL;
    tm_error_t error = {0};
    CHECK(!tm_model_open(NULL, "tiny:q4_k_m", 1, &model, &error), "model: %s", error.message);
    if (!model) return;
    const tm_model_config *c = &model->config;
    uint64_t expected = tensor_bytes(&model->output) + tensor_bytes(&model->output_norm);
    for (int l = 0; l < c->n_layer; l++) {
        const tm_layer_weights *w = &model->layers[l];
        const tm_weight *all[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->wo, &w->ffn_norm, &w->w_gate, &w->w_up, &w->w_down};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) expected += tensor_bytes(all[i]);
    }
    CHECK(!c->tied_embeddings, "the tiny preset has its own output head");
    for (int kv_type = 0; kv_type <= 2; kv_type += 2) { /* f16, q8 */
        tm_engine_options options;
        tm_engine_options_default(&options);
        options.synthetic = "tiny:q4_k_m";
        options.n_threads = 1;
        options.max_sequences = 1;
        options.kv_type = kv_type;
        tm_engine *engine = NULL;
        CHECK(!tm_engine_create(&options, &engine, &error), "engine: %s", error.message);
        if (!engine) continue;
        tm_engine_stats stats;
        tm_engine_get_stats(engine, &stats);
        CHECK(stats.step_weight_bytes == expected, "step weight bytes %llu, counted %llu", (unsigned long long)stats.step_weight_bytes,
              (unsigned long long)expected);
        CHECK(stats.weight_bytes == expected + tensor_bytes(&model->token_embd), "the embedding table is the difference");
        const uint64_t head_dim = (uint64_t)c->head_dim;
        const uint64_t per_head = kv_type == 0 ? 2 * head_dim : head_dim + 4; /* f16 elements; int8 and a float scale */
        const uint64_t position = (uint64_t)c->n_layer * 2 * (uint64_t)c->n_head_kv * per_head;
        CHECK(stats.kv_bytes_per_position == position, "kv bytes a position (%s): %llu, expected %llu", kv_type ? "q8" : "f16",
              (unsigned long long)stats.kv_bytes_per_position, (unsigned long long)position);
        const char *device = tm_engine_device(engine); /* "auto" resolved */
        CHECK(!strcmp(device, "cpu") || !strcmp(device, "cuda"), "device resolved to cpu or cuda, got %s", device);
        tm_engine_free(engine);
    }
    tm_model_free(model);
}


/* One run of the overlap scenario: 5 requests on 4 sequences (one waits in the queue while every
 * slot is taken: steps overlap then), sampled and greedy, all but one with a repetition penalty
 * (windows of 3 tokens, of the whole history and of 64; an overlapped step's window ends with the
 * token fed on the backend, which the host has not seen), one ending on a stop string (a step
 * after it is in flight then: its row is dropped); after call 6 request 1 is cancelled, after
 * call 9 request 4 released and a new one submitted (it may take its slot). */
#define OVERLAP_REQUESTS 6
typedef struct overlap_run {
    int32_t tokens[OVERLAP_REQUESTS][40];
    int counts[OVERLAP_REQUESTS];
    tm_finish_reason reasons[OVERLAP_REQUESTS];
    char text[OVERLAP_REQUESTS][512];
    tm_engine_stats stats;
} overlap_run;

static void run_overlap_scenario(int mode, const char *stop, overlap_run *out) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "tiny:q4_k_m";
    options.n_threads = 2;
    options.max_sequences = 4;
    options.max_batch_tokens = 512;
    options.no_step_overlap = mode == 1;
    options.host_sampling = mode == 2;
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    memset(out, 0, sizeof *out);
    if (tm_engine_create(&options, &engine, &error)) {
        CHECK(0, "engine: %s", error.message);
        return;
    }
    int ids[OVERLAP_REQUESTS];
    const int max_tokens[OVERLAP_REQUESTS] = {12, 30, 24, 8, 25, 18};
    for (int i = 0; i < 5; i++) {
        tm_request_params params;
        tm_request_params_default(&params);
        params.prompt = prompts[i];
        params.max_tokens = max_tokens[i];
        params.ignore_eos = true;
        params.sampling.seed = 7 + i;
        if (i == 1 || i == 2 || i == 4) {
            params.sampling.temperature = 0.7f + 0.1f * i;
            params.sampling.top_k = i == 4 ? 0 : 20 + 10 * i; /* 4: no top-k (every id a candidate) */
            params.sampling.top_p = i == 2 ? 0.9f : i == 4 ? 0.95f : 1.0f;
        }
        const float penalties[5] = {1.5f, 1.2f, 1.3f, 1.0f, 1.3f};
        const int windows[5] = {3, 0, 64, 64, 64}; /* 0: the whole history */
        params.sampling.repetition_penalty = penalties[i];
        params.sampling.penalty_last_n = windows[i];
        const char *stops[1] = {stop};
        if (i == 2 && stop) params.stop = stops, params.n_stop = 1;
        CHECK(!tm_engine_submit(engine, &params, &ids[i], &error), "submit: %s", error.message);
    }
    for (int call = 1; tm_engine_busy(engine) && call < 1000; call++) {
        CHECK(!tm_engine_step(engine, &error), "step: %s", error.message);
        for (int i = 0; i < 5; i++) { /* the tokens so far, before a release forgets them */
            const int32_t *tokens;
            int count = tm_engine_request_tokens(engine, ids[i], &tokens);
            if (count <= 0 || (i == 4 && call > 9)) continue;
            out->counts[i] = TM_MIN(count, 40);
            memcpy(out->tokens[i], tokens, (size_t)out->counts[i] * sizeof(int32_t));
            tm_request_info info;
            tm_engine_request_info(engine, ids[i], &info);
            out->reasons[i] = info.finish_reason;
            const char *text;
            size_t length;
            if (!tm_engine_request_text(engine, ids[i], &text, &length))
                snprintf(out->text[i], sizeof out->text[i], "%.*s", (int)TM_MIN(length, 500), text);
        }
        if (call == 6) tm_engine_cancel(engine, ids[1]);
        if (call == 9) {
            tm_engine_release(engine, ids[4]);
            tm_request_params params;
            tm_request_params_default(&params);
            params.prompt = prompts[5];
            params.max_tokens = max_tokens[5];
            params.ignore_eos = true;
            params.sampling.temperature = 0.9f, params.sampling.top_k = 30, params.sampling.seed = 99;
            params.sampling.repetition_penalty = 1.4f, params.sampling.penalty_last_n = 5;
            CHECK(!tm_engine_submit(engine, &params, &ids[5], &error), "submit: %s", error.message);
        }
    }
    CHECK(!tm_engine_busy(engine), "the scenario ran to its end");
    const int32_t *tokens;
    out->counts[5] = TM_MIN(tm_engine_request_tokens(engine, ids[5], &tokens), 40);
    if (out->counts[5] > 0) memcpy(out->tokens[5], tokens, (size_t)out->counts[5] * sizeof(int32_t));
    tm_request_info info;
    tm_engine_request_info(engine, ids[5], &info);
    out->reasons[5] = info.finish_reason;
    tm_engine_get_stats(engine, &out->stats);
    tm_engine_free(engine);
}

static void test_overlapped_steps(void) {
    static overlap_run first, runs[3];
    run_overlap_scenario(1, NULL, &first);
    /* request 2's stop string: 3 bytes from the middle of its text, not found earlier in it */
    char stop[4] = {0};
    const char *text = first.text[2];
    const size_t length = strlen(text);
    for (size_t at = length / 2; at + 3 <= length && !stop[0]; at++) {
        memcpy(stop, text + at, 3);
        if (strstr(text, stop) != text + at) stop[0] = 0;
    }
    CHECK(stop[0] != 0, "a stop string from request 2's text (%zu bytes)", length);
    const char *names[3] = {"overlapped", "one at a time", "host sampling"};
    for (int mode = 0; mode < 3; mode++) run_overlap_scenario(mode, stop, &runs[mode]);
    CHECK(runs[0].reasons[2] == TM_FINISH_STOP && runs[0].counts[2] < 24, "request 2 stopped on '%s' (reason %d, %d tokens)", stop,
          runs[0].reasons[2], runs[0].counts[2]);
    CHECK(runs[0].reasons[1] == TM_FINISH_CANCELLED && runs[0].reasons[0] == TM_FINISH_LENGTH && runs[0].counts[5] == 18,
          "cancelled, finished by length, the late request complete");
    /* Request 4 waits for a slot; with overlapped steps a slot freed by a step's tokens admits at the
     * step after the next (the next was already launched), so at its release (after call 9) it may
     * have one token fewer: its tokens must agree as far as both went. Every other request's must
     * agree whole. */
    for (int mode = 1; mode < 3; mode++)
        for (int i = 0; i < OVERLAP_REQUESTS; i++) {
            const int common = TM_MIN(runs[0].counts[i], runs[mode].counts[i]);
            const bool whole = i == 4 || (runs[0].counts[i] == runs[mode].counts[i] && runs[0].reasons[i] == runs[mode].reasons[i] &&
                                          !strcmp(runs[0].text[i], runs[mode].text[i]));
            CHECK(whole && common > 0 && !memcmp(runs[0].tokens[i], runs[mode].tokens[i], (size_t)common * 4),
                  "request %d: overlapped steps (%d tokens, reason %d) against %s (%d, %d)", i, runs[0].counts[i], runs[0].reasons[i],
                  names[mode], runs[mode].counts[i], runs[mode].reasons[i]);
        }
    printf("overlapped steps: %lld of %lld (stop string '%s')\n", (long long)runs[0].stats.overlapped_steps, (long long)runs[0].stats.steps, stop);
    /* every request but one applies a penalty from the first step to the last: at least half the
     * steps overlap only if penalized rows do (before session 55 none did) */
    CHECK(2 * runs[0].stats.overlapped_steps >= runs[0].stats.steps && runs[1].stats.overlapped_steps == 0 &&
              runs[2].stats.overlapped_steps == 0,
          "steps overlapped only where allowed, penalized rows too: %lld of %lld / %lld / %lld", (long long)runs[0].stats.overlapped_steps,
          (long long)runs[0].stats.steps, (long long)runs[1].stats.overlapped_steps, (long long)runs[2].stats.overlapped_steps);
    CHECK(runs[0].stats.device_sampled_tokens > 0 && runs[2].stats.device_sampled_tokens == 0, "backend sampling / host sampling");
}

int main(void) {
    test_overlapped_steps();
    test_stats_count_what_a_step_reads();
    test_sampler();
    test_sampler_without_top_k();
    test_batched_equals_solo();
    test_requests();
    return check_report("test_engine");
}
