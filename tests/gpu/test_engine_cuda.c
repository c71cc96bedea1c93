/*
 * test_engine_cuda.c - the engine on the GPU, end to end through its public API, on the
 * synthetic SmolLM2-135M shape (q8_0 weights, f16 KV): six requests with different prompts,
 * seeds and sampling (temperature, top-k, none, top-p, min-p, repetition penalties; one greedy) run
 * with continuous batching: at most 4 sequences, prefill chunks of 48 tokens mixed with decode
 * tokens, and a KV pool small enough that requests are preempted and recomputed.
 * Run A samples on the GPU and replays decode steps as CUDA graphs; run B copies logits back,
 * samples on the CPU and launches kernel by kernel. Both compute the same logits bit for bit
 * (same kernels, same order), and GPU sampling follows the CPU sampler exactly, so every
 * request's tokens must be identical; A must have sampled on the GPU and B not, and the device
 * memory accounting must be filled in (weights = the model's bytes, KV, activations, workspace).
 * Every request applies a repetition penalty (windows of 3, 16, 64 tokens and the whole history).
 * Run A overlaps its steps (each decode step launched before the host reads the tokens of the one
 * before it, where the batch allows: the default; a penalty's window then ends with the token fed
 * on the GPU, which the sampling kernel adds); run A again with no_step_overlap must give the
 * same tokens, and only A may have overlapped.
 * Run A again with time_device_steps (events around each replayed decode step) must give the
 * same tokens and time its decode steps: some timed, none more than the steps taken, the device's
 * idle between steps and busy in them both positive, the idle the smaller.
 * The same pair of runs again with the 8-bit KV cache (half the pages: the same tokens fit, so
 * requests are still preempted): identical tokens, and the device's KV bytes hold the scales. Last, a KV pool twice the device's memory (in 4 KiB
 * pages) must fail the first step with TM_ERR_NO_MEMORY naming the KV pages and the bytes, not crash.
 * Skipped without a CUDA device (exit 77).
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"
#include "tensormesh.h"

#define SKIPPED 77
#define REQUESTS 6
#define MAX_TOKENS 40

typedef struct run_output {
    int32_t tokens[REQUESTS][MAX_TOKENS];
    int counts[REQUESTS];
    int preemptions;
    tm_engine_stats stats;
} run_output;

static bool time_device_steps; /* the next run() times its decode steps */
static bool no_step_overlap;   /* the next run() reads each step's tokens before launching the next */

/* kv_type 0: f16 in 1400 pages; 2: the 8-bit cache in 700 (rows of half the bytes). */
static bool run(bool device_sampling_and_graphs, int kv_type, run_output *out) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "smollm2-135m:q8_0";
    options.device = "cuda";
    options.max_sequences = 4;
    options.max_batch_tokens = 48;
    options.n_ctx = 256;
    /* SmolLM2 f16 rows: 5 per page, 30 layers; requests of 50..145 tokens */
    options.kv_page_size = 4096;
    options.kv_pages = kv_type == 2 ? 700 : 1400; /* the four longest-running requests would need 1920 (f16) */
    options.kv_type = kv_type;
    options.host_sampling = !device_sampling_and_graphs;
    options.no_cuda_graphs = !device_sampling_and_graphs;
    options.time_device_steps = time_device_steps;
    options.no_step_overlap = no_step_overlap;
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    if (tm_engine_create(&options, &engine, &error)) {
        CHECK(0, "engine: %s", error.message);
        return false;
    }
    int ids[REQUESTS];
    for (int i = 0; i < REQUESTS; i++) {
        tm_request_params params;
        tm_request_params_default(&params);
        int32_t prompt[120];
        int n_prompt = 10 + 19 * i;
        for (int k = 0; k < n_prompt; k++) prompt[k] = (int32_t)((k * 131 + i * 977 + 7) % 49152);
        params.prompt = NULL;
        params.prompt_tokens = prompt;
        params.n_prompt_tokens = n_prompt;
        params.max_tokens = MAX_TOKENS;
        params.ignore_eos = true;
        params.sampling.seed = 100 + i;
        if (i > 0) {
            params.sampling.temperature = 0.6f + 0.2f * i;
            params.sampling.top_k = i == 5 ? 0 : 20 + 10 * i; /* 5: no top-k (the kernel's histogram selection) */
            params.sampling.top_p = i % 2 ? 0.9f : 1.0f;
            params.sampling.min_p = i == 4 ? 0.05f : 0;
        }
        /* every request with a repetition penalty (windows of 3, 16, 64 and the whole history): every
         * overlapped step samples penalized rows whose window ends with the token fed on the GPU */
        const float penalties[REQUESTS] = {1.5f, 1.1f, 1.2f, 1.3f, 1.15f, 1.25f};
        const int windows[REQUESTS] = {3, 0, 64, 64, 16, 64};
        params.sampling.repetition_penalty = penalties[i];
        params.sampling.penalty_last_n = windows[i];
        CHECK(!tm_engine_submit(engine, &params, &ids[i], &error), "submit: %s", error.message);
    }
    int steps = 0;
    tm_status s = TM_OK;
    while (!s && tm_engine_busy(engine) && steps++ < 5000) s = tm_engine_step(engine, &error);
    CHECK(!s, "step: %s", error.message);
    out->preemptions = 0;
    for (int i = 0; i < REQUESTS; i++) {
        const int32_t *tokens;
        out->counts[i] = tm_engine_request_tokens(engine, ids[i], &tokens);
        memcpy(out->tokens[i], tokens, (size_t)(out->counts[i] < MAX_TOKENS ? out->counts[i] : MAX_TOKENS) * 4);
        tm_request_info info;
        tm_engine_request_info(engine, ids[i], &info);
        out->preemptions += info.preemptions;
    }
    tm_engine_get_stats(engine, &out->stats);
    tm_engine_free(engine);
    return !s;
}

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_engine_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    static run_output a, b;
    if (run(true, 0, &a) && run(false, 0, &b)) {
        for (int i = 0; i < REQUESTS; i++) {
            CHECK(a.counts[i] == MAX_TOKENS && b.counts[i] == MAX_TOKENS, "request %d: %d and %d tokens", i, a.counts[i], b.counts[i]);
            int same = 0;
            while (same < MAX_TOKENS && a.tokens[i][same] == b.tokens[i][same]) same++;
            CHECK(same == MAX_TOKENS, "request %d: GPU sampling + graphs depart from CPU sampling at token %d", i, same);
        }
        printf("preemptions: %d (GPU sampling) and %d (host sampling); GPU-sampled tokens %lld and %lld\n", a.preemptions,
               b.preemptions, (long long)a.stats.device_sampled_tokens, (long long)b.stats.device_sampled_tokens);
        CHECK(a.preemptions > 0, "the KV pool is small enough to preempt");
        CHECK(a.stats.device_sampled_tokens == REQUESTS * MAX_TOKENS, "run A sampled every token on the GPU");
        CHECK(b.stats.device_sampled_tokens == 0, "run B sampled on the CPU");
        printf("device memory: weights %llu, KV %llu, activations %llu, workspace %llu bytes\n",
               (unsigned long long)a.stats.device_weight_bytes, (unsigned long long)a.stats.device_kv_bytes,
               (unsigned long long)a.stats.device_activation_bytes, (unsigned long long)a.stats.device_workspace_bytes);
        CHECK(a.stats.device_weight_bytes >= a.stats.weight_bytes, "weights on the device (%llu) hold the model's %llu bytes",
              (unsigned long long)a.stats.device_weight_bytes, (unsigned long long)a.stats.weight_bytes);
        CHECK(a.stats.device_kv_bytes >= (uint64_t)1400 * 4096, "KV accounted");
        CHECK(a.stats.device_activation_bytes > 0 && a.stats.device_workspace_bytes > 0, "activations and workspace accounted");
        CHECK(a.stats.device_timed_steps == 0 && a.stats.device_idle_seconds == 0, "untimed unless asked");
        static run_output serial;
        no_step_overlap = true;
        const bool ran_serial = run(true, 0, &serial);
        no_step_overlap = false;
        if (ran_serial) {
            for (int i = 0; i < REQUESTS; i++) {
                int same = 0;
                while (same < MAX_TOKENS && same < serial.counts[i] && serial.tokens[i][same] == a.tokens[i][same]) same++;
                CHECK(same == MAX_TOKENS, "steps one at a time, request %d: departs from the overlapped run at token %d", i, same);
            }
            printf("overlapped steps: %lld of %lld (one at a time: %lld of %lld)\n", (long long)a.stats.overlapped_steps, (long long)a.stats.steps,
                   (long long)serial.stats.overlapped_steps, (long long)serial.stats.steps);
            CHECK(a.stats.overlapped_steps > 0 && serial.stats.overlapped_steps == 0, "only the default run overlapped");
        }
        static run_output timed;
        time_device_steps = true;
        const bool ran = run(true, 0, &timed);
        time_device_steps = false;
        if (ran) {
            for (int i = 0; i < REQUESTS; i++) {
                int same = 0;
                while (same < MAX_TOKENS && same < timed.counts[i] && timed.tokens[i][same] == a.tokens[i][same]) same++;
                CHECK(same == MAX_TOKENS, "timed steps, request %d: departs from the untimed run at token %d", i, same);
            }
            const tm_engine_stats *t = &timed.stats;
            printf("timed decode steps: %lld of %lld steps; device idle %.1f us, busy %.1f us a step\n", (long long)t->device_timed_steps,
                   (long long)t->steps, t->device_timed_steps ? t->device_idle_seconds * 1e6 / (double)t->device_timed_steps : 0.0,
                   t->device_timed_steps ? t->device_busy_seconds * 1e6 / (double)t->device_timed_steps : 0.0);
            CHECK(t->device_timed_steps > 0 && t->device_timed_steps < t->steps, "some decode steps timed (%lld of %lld)",
                  (long long)t->device_timed_steps, (long long)t->steps);
            CHECK(t->device_idle_seconds > 0 && t->device_busy_seconds > t->device_idle_seconds,
                  "idle (%g s) and busy (%g s) positive, the idle the smaller", t->device_idle_seconds, t->device_busy_seconds);
        }
    }
    if (run(true, 2, &a) && run(false, 2, &b)) { /* the 8-bit KV cache */
        for (int i = 0; i < REQUESTS; i++) {
            CHECK(a.counts[i] == MAX_TOKENS && b.counts[i] == MAX_TOKENS, "8-bit KV, request %d: %d and %d tokens", i, a.counts[i],
                  b.counts[i]);
            int same = 0;
            while (same < MAX_TOKENS && a.tokens[i][same] == b.tokens[i][same]) same++;
            CHECK(same == MAX_TOKENS, "8-bit KV, request %d: GPU sampling + graphs depart from CPU sampling at token %d", i, same);
        }
        printf("8-bit KV: preemptions %d and %d; device KV bytes %llu\n", a.preemptions, b.preemptions,
               (unsigned long long)a.stats.device_kv_bytes);
        CHECK(a.preemptions > 0, "8-bit KV: the pool is small enough to preempt");
        CHECK(a.stats.device_kv_bytes >= (uint64_t)700 * 4096 + (uint64_t)700 * (4096 / 64) * 4, "8-bit KV: pages and scales accounted");
    }
    /* out of device memory: a clear status at the first step (not under compute-sanitizer,
     * which counts the refused cudaMalloc as an error; ci/gpu sets TM_UNDER_SANITIZER) */
    if (getenv("TM_UNDER_SANITIZER")) return check_report("test_engine_cuda");
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "smollm2-135m:q8_0";
    options.device = "cuda";
    /* twice the device's memory in 4 KiB pages (an 80 GB H100 and a 141 GB H200 alike) */
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    options.kv_pages = (int64_t)(2 * (total_bytes / 4096));
    char pool_bytes[32];
    snprintf(pool_bytes, sizeof pool_bytes, "%lld", (long long)options.kv_pages * 4096);
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    tm_status s = tm_engine_create(&options, &engine, &error);
    if (!s) {
        tm_request_params params;
        tm_request_params_default(&params);
        int32_t prompt[4] = {1, 2, 3, 4};
        params.prompt_tokens = prompt;
        params.n_prompt_tokens = 4;
        int id;
        s = tm_engine_submit(engine, &params, &id, &error);
        if (!s) s = tm_engine_step(engine, &error);
        tm_engine_free(engine);
    }
    printf("oversized KV pool: %s: %s\n", tm_status_name(s), error.message);
    CHECK(s == TM_ERR_NO_MEMORY && strstr(error.message, "KV pages") && strstr(error.message, pool_bytes),
          "an oversized KV pool (%s bytes) is TM_ERR_NO_MEMORY naming what and how much", pool_bytes);
    return check_report("test_engine_cuda");
}
