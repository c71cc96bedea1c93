/*
 * test_end_to_end_cuda.c - the whole forward pass on the GPU against the CPU backend (float
 * activations on both, f32 KV) on synthetic models built in memory with the real shapes and
 * tensor types: tiny (q4_k_m), SmolLM2-135M (q8_0), Llama-2-7B (q4_k_m) and Llama-3-8B (f16).
 * A prompt of 8 tokens is prefilled in one batch, then 8 greedy decode steps follow; at every
 * step the GPU's logits are finite and within 1e-2 of the CPU's (relative to the largest |logit|,
 * the bound; measured values are printed), and the greedy tokens are identical.
 * TM_GPU_E2E_MODELS=tiny limits the run to the small models. Skipped without a CUDA device (77).
 */
#include <math.h>
#include <stdlib.h>

#include "backend.h"
#include "check.h"
#include "kernels.h"
#include "synth.h"

#define SKIPPED 77
#define PROMPT 8
#define STEPS 8

typedef struct run_result {
    float *logits;    /* (PROMPT + STEPS) rows */
    int32_t tokens[STEPS];
} run_result;

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static bool run(const tm_model *model, bool cuda, tm_threadpool *pool, run_result *out) {
    const tm_model_config *c = &model->config;
    tm_kv_layout layout = {c->n_layer, c->n_head_kv, c->head_dim, TM_KV_F32, TM_KV_DEFAULT_PAGE_SIZE};
    tm_kv_cache *kv;
    tm_error_t error = {0};
    if (tm_kv_create(&layout, tm_kv_pages_for_tokens(&layout, PROMPT + STEPS) * c->n_layer, 1, !cuda, &kv, &error)) {
        CHECK(0, "%s", error.message);
        return false;
    }
    tm_backend *backend = NULL;
    tm_backend_cpu_options cpu = {pool, TM_PRECISION_EXACT};
    tm_status s = cuda ? tm_backend_cuda_create(model, 0, &backend, &error) : tm_backend_cpu_create(model, &cpu, &backend, &error);
    CHECK(!s, "%s backend: %s", cuda ? "cuda" : "cpu", error.message);
    if (s) {
        tm_kv_free(kv);
        return false;
    }
    int seq = tm_kv_seq_new(kv);
    tm_kv_reserve(kv, seq, PROMPT + STEPS);
    out->logits = malloc((size_t)(PROMPT + STEPS) * c->n_vocab * sizeof(float));
    int32_t tokens[PROMPT], positions[PROMPT], seqs[PROMPT];
    uint8_t want[PROMPT];
    for (int i = 0; i < PROMPT; i++) tokens[i] = (i * 7919 + 13) % c->n_vocab, positions[i] = i, seqs[i] = seq, want[i] = 1;
    tm_batch prefill = {PROMPT, tokens, positions, seqs, want};
    s = backend->forward(backend, &prefill, kv, out->logits, &error);
    int32_t next = argmax(out->logits + (size_t)(PROMPT - 1) * c->n_vocab, c->n_vocab);
    for (int step = 0; !s && step < STEPS; step++) {
        out->tokens[step] = next;
        int32_t position = PROMPT + step;
        uint8_t one = 1;
        tm_batch decode = {1, &next, &position, &seq, &one};
        float *row = out->logits + (size_t)(PROMPT + step) * c->n_vocab;
        s = backend->forward(backend, &decode, kv, row, &error);
        next = argmax(row, c->n_vocab);
    }
    CHECK(!s, "%s forward: %s", cuda ? "cuda" : "cpu", error.message);
    backend->free(backend);
    tm_kv_free(kv);
    return !s;
}

static void compare(const char *spec, tm_threadpool *pool) {
    tm_synth_options options = {.seed = 3, .pool = pool};
    tm_error_t error = {0};
    tm_gguf *g = NULL;
    tm_model *model = NULL;
    if (tm_synth_parse_spec(spec, &options, &error) || tm_synth_open_memory(&options, &g, &error) ||
        tm_model_load(g, &model, &error)) {
        CHECK(0, "%s: %s", spec, error.message);
        return;
    }
    run_result cpu = {0}, gpu = {0};
    if (run(model, false, pool, &cpu) && run(model, true, pool, &gpu)) {
        int n_vocab = model->config.n_vocab, non_finite = 0;
        double worst = 0;
        for (int r = 0; r < PROMPT + STEPS; r++) {
            const float *a = cpu.logits + (size_t)r * n_vocab, *b = gpu.logits + (size_t)r * n_vocab;
            double largest = 0, difference = 0;
            for (int i = 0; i < n_vocab; i++) {
                non_finite += !isfinite(b[i]);
                largest = fmax(largest, fabs(a[i]));
                difference = fmax(difference, fabs(a[i] - b[i]));
            }
            worst = fmax(worst, difference / largest);
        }
        printf("%s: max relative logit difference GPU vs CPU %.2e over %d rows\n", spec, worst, PROMPT + STEPS);
        CHECK(non_finite == 0, "%s: %d non-finite GPU logits", spec, non_finite);
        CHECK(worst <= 1e-2, "%s: logits differ by %.3g (bound 1e-2)", spec, worst);
        CHECK(!memcmp(cpu.tokens, gpu.tokens, sizeof cpu.tokens), "%s: greedy tokens differ", spec);
    }
    free(cpu.logits), free(gpu.logits);
    tm_model_free(model);
}

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_end_to_end_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    tm_threadpool *pool = tm_threadpool_create(0);
    const char *limit = getenv("TM_GPU_E2E_MODELS");
    compare("tiny:q4_k_m", pool);
    compare("smollm2-135m:q8_0", pool);
    if (!limit || strcmp(limit, "tiny")) {
        compare("llama2-7b:q4_k_m", pool);
        compare("llama3-8b:f16", pool);
    }
    tm_threadpool_free(pool);
    return check_report("test_end_to_end_cuda");
}
