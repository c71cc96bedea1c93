/*
 * backend.h - the backend interface: a table of function pointers plus a context (ggml's
 * pattern). A backend computes a forward pass for a batch of tokens from several sequences,
 * writing their keys/values into the paged KV cache and returning the logits asked for.
 *
 * Contract of forward: for every batch token i (tokens[i] at positions[i] of sequence seq[i]),
 * its K/V are written at that position of every layer, and attention sees positions
 * 0..positions[i] of its own sequence (tokens earlier in the same batch included); the
 * sequence's KV capacity must already cover positions[i]. Logits (n_vocab floats) are written
 * for each token whose want_logits[i] is set, in batch order, one row after another; a backend
 * with `sample` may be given logits == NULL, and then keeps them for the next `sample` call.
 */
#ifndef TM_BACKEND_H
#define TM_BACKEND_H

#include "kv_cache.h"
#include "model.h"
#include "tensormesh.h"
#include "threadpool.h"

typedef struct tm_batch {
    int n_tokens;
    const int32_t *tokens;      /* (n_tokens) token ids */
    const int32_t *positions;   /* (n_tokens) position of each token in its sequence */
    const int32_t *seq;         /* (n_tokens) KV cache sequence slot of each token */
    const uint8_t *want_logits; /* (n_tokens) 1: return this token's logits */
    const int32_t *fed;         /* NULL, or (n_tokens): -1 takes tokens[i]; r >= 0 takes the token the last sampling
                                 * started (sample_start) drew for its row r, which stays on the backend's device:
                                 * a step launched before the host has seen the tokens it decodes */
} tm_batch;

/* How activations meet quantized weights on the CPU. */
typedef enum tm_precision {
    TM_PRECISION_FAST = 0,  /* activations quantized to Q8_0/Q8_K, integer dots (llama.cpp's way) */
    TM_PRECISION_EXACT = 1, /* float activations against dequantized weights: the reference */
} tm_precision;

/* Device memory a backend holds, by purpose (bytes; all 0 for the CPU backend). */
typedef struct tm_backend_memory {
    uint64_t weights;     /* the weight arena */
    uint64_t kv;          /* KV pages, the device page tables and the rope angles of the positions they hold */
    uint64_t activations; /* per-token buffers of the forward pass and the step's inputs */
    uint64_t workspace;   /* GEMM tiles, attention partials, sampling buffers */
} tm_backend_memory;

/* One logits row to sample on the device: the CPU sampler's parameters, the uniform draw the
 * host took from the request's generator (temperature > 0 only), the distinct token ids of the
 * repetition-penalty window. With window_fed, the window also ends with the token the last forward
 * processed for this row, a token fed on the device (tm_batch.fed) that the host has not seen and
 * `penalized` does not hold: the backend penalizes it too, once (not where penalized lists it). */
typedef struct tm_sample_row {
    const tm_sampling *params;
    double uniform;
    const int32_t *penalized;
    int n_penalized;
    bool window_fed;
    int penalized_start;    /* the caller's bookkeeping; ignored by backends */
} tm_sample_row;

/* Decode steps timed on the device by a backend that can (the CUDA backend's time_steps): each step
 * replayed as a graph right after another timed one; the device idle before it (the previous step's
 * sampled tokens in host memory -> this step's graph launched: the host's turnaround) and busy in it
 * (graph launched -> its sampled tokens in host memory), summed. */
typedef struct tm_backend_step_timing {
    int64_t steps;
    double idle_seconds, busy_seconds;
} tm_backend_step_timing;

typedef struct tm_backend tm_backend;
struct tm_backend {
    const char *name;
    void *context;
    tm_status (*forward)(tm_backend *backend, const tm_batch *batch, tm_kv_cache *kv, float *logits, tm_error_t *error);
    void (*free)(tm_backend *backend);
    /* optional: device memory in use */
    void (*memory)(const tm_backend *backend, tm_backend_memory *memory);
    /* optional: sample the logits rows kept by the last forward (logits == NULL), one row per
     * tm_sample_row, any sampling parameters (engine/sampler.c's meaning). */
    tm_status (*sample)(tm_backend *backend, int n_rows, const tm_sample_row *rows, int32_t *tokens, tm_error_t *error);
    /* optional, both or neither: `sample` in two halves, so the host can launch the next step (its
     * tokens fed from this sampling: tm_batch.fed) before it waits for these tokens. sample_start
     * queues the sampling of the rows the last forward kept and returns without waiting;
     * sample_finish waits for the oldest sampling started and not finished and writes its tokens
     * (in row order, n_rows of them). At most two started and not finished. */
    tm_status (*sample_start)(tm_backend *backend, int n_rows, const tm_sample_row *rows, tm_error_t *error);
    tm_status (*sample_finish)(tm_backend *backend, int32_t *tokens, tm_error_t *error);
    /* optional: the decode steps it has timed (zeros where it times none) */
    void (*step_timing)(const tm_backend *backend, tm_backend_step_timing *timing);
};

typedef struct tm_backend_cpu_options {
    tm_threadpool *pool;    /* not owned; NULL: single thread */
    tm_precision precision;
} tm_backend_cpu_options;

tm_status tm_backend_cpu_create(const tm_model *model, const tm_backend_cpu_options *options, tm_backend **out,
                                tm_error_t *error);

#ifdef TM_CUDA
typedef struct tm_backend_cuda_options {
    int device;           /* CUDA device index */
    int max_context;      /* longest sequence (tokens) the device page tables and the decode key
                           * splits are sized for; 0: all the KV pool could give one sequence */
    bool graphs;          /* capture decode steps as CUDA graphs, one per batch size (default on) */
    tm_precision precision; /* FAST (default): 8-bit activations for k-quant decode products and
                             * 16-bit for f16/bf16 weights, as llama.cpp; EXACT: float activations */
    bool time_steps;      /* time replayed decode steps with events (step_timing); off by default */
} tm_backend_cuda_options;
void tm_backend_cuda_options_default(tm_backend_cuda_options *options);

/* The CUDA backend: uploads the weights; the KV pool is allocated on the device at the first
 * forward (the kv cache must be created without host storage). */
tm_status tm_backend_cuda_create(const tm_model *model, const tm_backend_cuda_options *options, tm_backend **out,
                                 tm_error_t *error);
#endif

#endif /* TM_BACKEND_H */
