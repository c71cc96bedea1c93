/*
 * backend.h - the backend interface: a table of function pointers plus a context (ggml's
 * pattern). A backend computes a forward pass for a batch of tokens from several sequences,
 * writing their keys/values into the paged KV cache and returning the logits asked for.
 *
 * Contract of forward: for every batch token i (tokens[i] at positions[i] of sequence seq[i]),
 * its K/V are written at that position of every layer, and attention sees positions
 * 0..positions[i] of its own sequence (tokens earlier in the same batch included); the
 * sequence's KV capacity must already cover positions[i]. Logits (n_vocab floats) are written
 * for each token whose want_logits[i] is set, in batch order, one row after another.
 */
#ifndef TM_BACKEND_H
#define TM_BACKEND_H

#include "kv_cache.h"
#include "model.h"
#include "threadpool.h"

typedef struct tm_batch {
    int n_tokens;
    const int32_t *tokens;      /* (n_tokens) token ids */
    const int32_t *positions;   /* (n_tokens) position of each token in its sequence */
    const int32_t *seq;         /* (n_tokens) KV cache sequence slot of each token */
    const uint8_t *want_logits; /* (n_tokens) 1: return this token's logits */
} tm_batch;

/* How activations meet quantized weights on the CPU. */
typedef enum tm_precision {
    TM_PRECISION_FAST = 0,  /* activations quantized to Q8_0/Q8_K, integer dots (llama.cpp's way) */
    TM_PRECISION_EXACT = 1, /* float activations against dequantized weights: the reference */
} tm_precision;

typedef struct tm_backend tm_backend;
struct tm_backend {
    const char *name;
    void *context;
    tm_status (*forward)(tm_backend *backend, const tm_batch *batch, tm_kv_cache *kv, float *logits, tm_error_t *error);
    void (*free)(tm_backend *backend);
};

typedef struct tm_backend_cpu_options {
    tm_threadpool *pool;    /* not owned; NULL: single thread */
    tm_precision precision;
} tm_backend_cpu_options;

tm_status tm_backend_cpu_create(const tm_model *model, const tm_backend_cpu_options *options, tm_backend **out,
                                tm_error_t *error);

#ifdef TM_CUDA
/* The CUDA backend on device `device`: uploads the weights; the KV pool is allocated on the
 * device at the first forward (the kv cache must be created without host storage). */
tm_status tm_backend_cuda_create(const tm_model *model, int device, tm_backend **out, tm_error_t *error);
#endif

#endif /* TM_BACKEND_H */
