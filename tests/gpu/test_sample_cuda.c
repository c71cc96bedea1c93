/*
 * test_sample_cuda.c - GPU sampling against the CPU sampler (engine/sampler.c) on random logits:
 * for each parameter set (greedy; top-k 1, 40, 200, 1024 and above the vocabulary; top-p;
 * min-p; temperatures 0.7 to 1.5; repetition penalty over a history with repeats) and 64 rows
 * each, the GPU is given the same uniform draw the CPU sampler takes from its generator, and the
 * chosen tokens must be identical. The bound is exact equality: both sides rank candidates by
 * the same total order and run the same float64 loops, so they could differ only where a draw
 * or the top-p threshold falls within a few ulps of a cumulative boundary (probability ~1e-15
 * per row here). One set quantizes logits to steps of 0.5, so ties are many and the id
 * tie-break is exercised. Each set runs twice: parameters and tokens on the device; then as the
 * engine launches it (parameters in the launch's arguments for 16 rows, read from mapped host memory
 * for the other 48, tokens also written to mapped host memory). Greedy
 * rows at vocabularies of 100, 32000, 49152 and 128256, and mixed with top-k rows in one launch.
 * Top-k rows whose best tokens all lie in one thread's stride of the row (ids multiple of 1024 or
 * 256 raised by 10), where the threads' own largest keys bound the k-th loosely (the kernel's
 * bound-then-compact path and its bisection fallback: k 1024 at 128256 takes the fallback).
 * Penalty windows whose last token is fed on the device (fed_at: the engine's overlapped steps):
 * that token is each row's best, penalized once whether or not the host's list also holds it.
 * Rows with no top-k (0) or one above 1024 (the kernel's histogram selection: top-p, min-p and the
 * draw over every id): flat and peaked logits, ties (bins of thousands of equal logits, split by
 * key range), top-k 2000 and 5000. There the weights are float exponentials (~2e-7 from the CPU's
 * float64), so a draw or top-p threshold that close to a cumulative boundary takes the
 * neighbouring candidate: at most 2 of the 64 rows of such a set may differ, and each only by
 * one place in the CPU's ranking (expected: ~1e-4 of rows). A vocabulary above
 * TM_CUDA_SAMPLE_MAX_VOCAB is refused at launch.
 * Skipped without a CUDA device (exit 77).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"
#include "sampler.h"

#define SKIPPED 77
#define ROWS 64

typedef struct sample_case {
    const char *name;
    int n_vocab;
    tm_sampling params;
    bool ties;
    int history; /* tokens of history (penalty) */
    bool mixed;  /* odd rows take top-k 40 at temperature 1 instead */
    int boost_every; /* > 0: ids that are multiples of it get +10 (the best tokens all in one thread's stride) */
    bool fed;    /* the history's last token is fed (fed_at): not in the host's list; the row's best token,
                  * on odd rows also earlier in the history (listed: penalized once) and raised to 1.5x
                  * the second best, so that it stays the best under one penalty of 1.3, not under two */
} sample_case;

/* The kernel's histogram selection samples the row (no top-k the block can hold). */
static bool by_selection(const tm_sampling *p, int n_vocab) {
    return p->temperature > 0 && (p->top_k < 1 || (p->top_k > TM_CUDA_SAMPLE_MAX_TOP_K && p->top_k < n_vocab));
}

/* token's place in the ranking of row (logit descending, id ascending) */
static int rank_of(const float *row, int n_vocab, int token) {
    int rank = 0;
    for (int i = 0; i < n_vocab; i++) rank += row[i] > row[token] || (row[i] == row[token] && i < token);
    return rank;
}

/* Rows of got that differ from expected: 0 if none; else, where the set samples by selection and
 * at most 2 differ, each by one place in the CPU's ranking (penalized: the rows the CPU ranked),
 * their count as a tolerated rounding; else -1 (and *first the first differing row). */
static int compare_rows(const sample_case *sc, const int32_t *got, const int32_t *expected, const float *penalized, int *first) {
    int differ = 0;
    bool neighbours = true;
    *first = -1;
    for (int r = 0; r < ROWS; r++) {
        if (got[r] == expected[r]) continue;
        differ++, *first = *first < 0 ? r : *first;
        const float *row = penalized + (size_t)r * sc->n_vocab;
        neighbours &= got[r] >= 0 && got[r] < sc->n_vocab &&
                      abs(rank_of(row, sc->n_vocab, got[r]) - rank_of(row, sc->n_vocab, expected[r])) == 1;
    }
    if (differ == 0) return 0;
    return by_selection(&sc->params, sc->n_vocab) && !sc->mixed && differ <= 2 && neighbours ? differ : -1;
}

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_sample_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    /* temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n, seed */
    const sample_case cases[] = {
        {"greedy", 32000, {0, 0, 1, 0, 1, 0, 0}, false, 0},
        {"greedy, ties", 32000, {0, 0, 1, 0, 1, 0, 0}, true, 0},
        {"top-k 1", 32000, {1.0f, 1, 1, 0, 1, 0, 0}, false, 0},
        {"top-k 40", 49152, {1.0f, 40, 1, 0, 1, 0, 0}, false, 0},
        {"top-k 40, ties", 49152, {1.0f, 40, 1, 0, 1, 0, 0}, true, 0},
        {"top-k 1024 top-p 0.9 t 0.7", 128256, {0.7f, 1024, 0.9f, 0, 1, 0, 0}, false, 0},
        {"top-k 200 min-p 0.05 t 1.5", 32000, {1.5f, 200, 1, 0.05f, 1, 0, 0}, false, 0},
        {"top-k 50 top-p 0.95 penalty 1.3", 32000, {0.8f, 50, 0.95f, 0, 1.3f, 0, 0}, false, 64},
        {"greedy penalty 1.3", 32000, {0, 0, 1, 0, 1.3f, 0, 0}, false, 64},
        {"greedy, ties, 128256", 128256, {0, 0, 1, 0, 1, 0, 0}, true, 0},
        {"greedy penalty 1.3, 49152", 49152, {0, 0, 1, 0, 1.3f, 0, 0}, false, 64},
        {"greedy, ties, 100", 100, {0, 0, 1, 0, 1, 0, 0}, true, 0},
        {"greedy mixed with top-k 40", 128256, {0, 0, 1, 0, 1, 0, 0}, false, 0, true},
        {"top-k 40, the best in one stride", 32000, {1.0f, 40, 1, 0, 1, 0, 0}, false, 0, false, 1024},
        {"top-k 300, the best in one stride", 128256, {1.0f, 300, 1, 0, 1, 0, 0}, false, 0, false, 256},
        {"top-k above vocabulary", 100, {1.0f, 1024, 0.8f, 0, 1, 0, 0}, false, 0},
        {"greedy penalty 1.3, last token fed", 32000, {0, 0, 1, 0, 1.3f, 0, 0}, false, 64, false, 0, true},
        {"top-k 40 penalty 1.2, last token fed", 49152, {1.0f, 40, 1, 0, 1.2f, 0, 0}, false, 64, false, 0, true},
        {"no top-k, top-p 0.95 t 0.8", 128256, {0.8f, 0, 0.95f, 0, 1, 0, 0}, false, 0},
        {"no top-k, t 1", 32000, {1.0f, 0, 1, 0, 1, 0, 0}, false, 0},
        {"no top-k, min-p 0.05 t 1.2", 49152, {1.2f, 0, 1, 0.05f, 1, 0, 0}, false, 0},
        {"no top-k, top-p 0.9 min-p 0.01, ties", 49152, {0.9f, 0, 0.9f, 0.01f, 1, 0, 0}, true, 0},
        {"no top-k, top-p 0.9, peaked", 128256, {1.0f, 0, 0.9f, 0, 1, 0, 0}, false, 0, false, 1024},
        {"no top-k, t 0.5, penalty 1.3, fed", 32000, {0.5f, 0, 0.95f, 0, 1.3f, 0, 0}, false, 64, false, 0, true},
        {"top-k 2000 top-p 0.9 t 0.7", 128256, {0.7f, 2000, 0.9f, 0, 1, 0, 0}, false, 0},
        {"top-k 5000, ties", 32000, {1.0f, 5000, 1, 0, 1, 0, 0}, true, 0},
        {"top-k 100000 (above vocabulary)", 32000, {1.0f, 100000, 0.8f, 0, 1, 0, 0}, false, 0},
    };
    const tm_sampling mixed_top_k = {1.0f, 40, 1, 0, 1, 0, 0};
    tm_rng_t rng;
    tm_rng_seed(&rng, 33);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const sample_case *sc = &cases[c];
        const int V = sc->n_vocab;
        float *logits = malloc((size_t)ROWS * V * 4), *penalized = malloc((size_t)ROWS * V * 4);
        tm_sampler_candidate *candidates = malloc((size_t)V * sizeof *candidates);
        tm_cuda_sampling rows[ROWS];
        int32_t histories[ROWS][64], distinct[ROWS * 64], expected[ROWS], got[ROWS], step_tokens[ROWS];
        int n_distinct = 0;
        for (int r = 0; r < ROWS; r++) {
            float *row = logits + (size_t)r * V;
            int best = 0, second = -1;
            for (int i = 0; i < V; i++) {
                /* a sum of uniforms: roughly normal, spread like real logits */
                float value = 4.0f * (tm_rng_uniform(&rng) + tm_rng_uniform(&rng) + tm_rng_uniform(&rng) - 1.5f);
                row[i] = (sc->ties ? roundf(value * 2) / 2 : value) + (sc->boost_every && i % sc->boost_every == 0 ? 10.0f : 0.0f);
                if (row[i] > row[best]) second = best, best = i;
                else if (i > 0 && (second < 0 || row[i] > row[second])) second = i;
            }
            for (int h = 0; h < sc->history; h++) /* history: often the row's best tokens, with repeats */
                histories[r][h] = (int32_t)(tm_rng_next(&rng) % (uint64_t)(h % 3 == 0 ? 8 : V));
            if (sc->fed) {
                histories[r][sc->history - 1] = best;
                if (r % 2) histories[r][1] = best, row[best] = 1.5f * row[second];
            }
            step_tokens[r] = sc->fed ? histories[r][sc->history - 1] : -1;
            int offset = n_distinct;
            for (int h = 0; h < sc->history - sc->fed; h++) { /* a fed last token is not the host's to list */
                bool seen = false;
                for (int k = offset; k < n_distinct && !seen; k++) seen = distinct[k] == histories[r][h];
                if (!seen) distinct[n_distinct++] = histories[r][h];
            }
            const tm_sampling *params = sc->mixed && r % 2 ? &mixed_top_k : &sc->params;
            tm_rng_t draw = rng; /* the CPU sampler's one draw, taken from a copy */
            double uniform = params->temperature > 0 ? tm_rng_uniform(&draw) : 0;
            float *scratch = penalized + (size_t)r * V; /* the CPU penalizes it in place: the row it ranks */
            memcpy(scratch, logits + (size_t)r * V, (size_t)V * 4);
            tm_rng_t cpu_rng = rng;
            expected[r] = tm_sample(params, scratch, V, histories[r], sc->history, &cpu_rng, candidates);
            rows[r] = (tm_cuda_sampling){params->temperature, params->top_p, params->min_p, params->repetition_penalty,
                                         params->top_k, n_distinct - offset, offset, sc->fed ? r : -1, uniform};
            tm_rng_next(&rng);
        }
        void *d_logits, *d_rows, *d_distinct, *d_tokens, *d_step_tokens;
        cudaMalloc(&d_logits, (size_t)ROWS * V * 4), cudaMalloc(&d_rows, sizeof rows), cudaMalloc(&d_distinct, sizeof distinct);
        cudaMalloc(&d_tokens, sizeof got), cudaMalloc(&d_step_tokens, sizeof step_tokens);
        cudaMemcpy(d_step_tokens, step_tokens, sizeof step_tokens, cudaMemcpyHostToDevice);
        cudaMemcpy(d_logits, logits, (size_t)ROWS * V * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(d_rows, rows, sizeof rows, cudaMemcpyHostToDevice);
        cudaMemcpy(d_distinct, distinct, sizeof distinct, cudaMemcpyHostToDevice);
        cudaMemset(d_tokens, 0xff, sizeof got);
        CHECK(tm_cuda_sample(d_logits, ROWS, V, d_rows, 0, d_distinct, d_step_tokens, d_tokens, NULL, NULL) == 0, "%s: launch", sc->name);
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: kernel", sc->name);
        cudaMemcpy(got, d_tokens, sizeof got, cudaMemcpyDeviceToHost);
        int first;
        const int differ = compare_rows(sc, got, expected, penalized, &first);
        CHECK(differ >= 0, "%s: rows differ beyond rounding (row %d: GPU %d, CPU %d)", sc->name, first, first >= 0 ? got[first] : 0,
              first >= 0 ? expected[first] : 0);
        int distinct_tokens = 0;
        for (int r = 0; r < ROWS; r++) {
            bool seen = false;
            for (int k = 0; k < r && !seen; k++) seen = expected[k] == expected[r];
            distinct_tokens += !seen;
        }
        printf("%-36s %d rows identical to the CPU sampler, %d its neighbour by rounding (%d distinct tokens)\n", sc->name,
               ROWS - (differ > 0 ? differ : 0), differ > 0 ? differ : 0, distinct_tokens);
        /* the engine's form: parameters and penalized ids read from mapped pinned host memory, the
         * tokens written there as well as on the device (fresh logits: the penalty applies in place) */
        tm_cuda_sampling *h_rows = NULL;
        int32_t *h_distinct = NULL, *h_tokens = NULL;
        CHECK(cudaHostAlloc((void **)&h_rows, sizeof rows, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostAlloc((void **)&h_distinct, sizeof distinct, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostAlloc((void **)&h_tokens, sizeof got, cudaHostAllocMapped) == cudaSuccess,
              "%s: mapped host memory", sc->name);
        memcpy(h_rows, rows, sizeof rows), memcpy(h_distinct, distinct, sizeof distinct), memset(h_tokens, 0xff, sizeof got);
        cudaMemcpy(d_logits, logits, (size_t)ROWS * V * 4, cudaMemcpyHostToDevice);
        cudaMemset(d_tokens, 0xff, sizeof got);
        /* rows 0..15 in the launch's arguments, the other 48 read by the kernel in host memory */
        const int in_args = TM_CUDA_SAMPLE_ARG_ROWS;
        CHECK(tm_cuda_sample(d_logits, in_args, V, h_rows, 1, h_distinct, d_step_tokens, d_tokens, h_tokens, NULL) == 0 &&
                  tm_cuda_sample((float *)d_logits + (size_t)in_args * V, ROWS - in_args, V, h_rows + in_args, 1, h_distinct,
                                 d_step_tokens, (int32_t *)d_tokens + in_args, h_tokens + in_args, NULL) == 0 &&
                  cudaDeviceSynchronize() == cudaSuccess,
              "%s: launch from host memory", sc->name);
        cudaMemcpy(got, d_tokens, sizeof got, cudaMemcpyDeviceToHost);
        int first_device, first_host;
        const int differ_device = compare_rows(sc, got, expected, penalized, &first_device);
        const int differ_host = compare_rows(sc, h_tokens, expected, penalized, &first_host);
        CHECK(differ_device >= 0 && differ_host >= 0, "%s, parameters in host memory: rows differ beyond rounding (first: %d on the device, %d in host memory)",
              sc->name, first_device, first_host);
        cudaFreeHost(h_rows), cudaFreeHost(h_distinct), cudaFreeHost(h_tokens);
        cudaFree(d_logits), cudaFree(d_rows), cudaFree(d_distinct), cudaFree(d_tokens), cudaFree(d_step_tokens);
        free(logits), free(penalized), free(candidates);
    }
    /* a vocabulary too large for the fixed-point sums is refused before any launch */
    tm_cuda_sampling one = {1.0f, 0, 1, 0, 1, 0, 0, -1, 0.5};
    CHECK(tm_cuda_sample(NULL, 1, TM_CUDA_SAMPLE_MAX_VOCAB + 1, &one, 1, NULL, NULL, NULL, NULL, NULL) != 0,
          "a vocabulary of %d is refused", TM_CUDA_SAMPLE_MAX_VOCAB + 1);
    return check_report("test_sample_cuda");
}
