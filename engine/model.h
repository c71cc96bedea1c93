/*
 * model.h - a llama-architecture model: hyperparameters from GGUF metadata and the weight
 * tensors of every layer, pointing into the (mapped or in-memory) GGUF.
 *
 * Guarantees: after tm_model_load, every field below is set and consistent (head counts divide,
 * every tensor exists with the shape and a supported type the hyperparameters imply), or the
 * load failed with a message naming the key or tensor. Covers Llama 2, Llama 3/3.1 (GQA, rope
 * frequency base, rope scaling: linear factor or llama3 per-dimension rope_freqs), SmolLM2
 * (tied embeddings: no output.weight, the LM head is token_embd).
 */
#ifndef TM_MODEL_H
#define TM_MODEL_H

#include "gguf.h"

typedef struct tm_weight {
    const void *data;   /* rows x cols of `type`, row-major (rows of cols elements) */
    tm_type type;
    int64_t rows, cols;
} tm_weight;

typedef struct tm_layer_weights {
    tm_weight attn_norm;   /* (n_embd) f32 */
    tm_weight wq;          /* (n_embd rows: n_head*head_dim, cols: n_embd) */
    tm_weight wk;          /* (n_head_kv*head_dim, n_embd) */
    tm_weight wv;          /* (n_head_kv*head_dim, n_embd) */
    tm_weight wo;          /* (n_embd, n_head*head_dim) */
    tm_weight ffn_norm;    /* (n_embd) f32 */
    tm_weight w_gate;      /* (n_ff, n_embd) */
    tm_weight w_up;        /* (n_ff, n_embd) */
    tm_weight w_down;      /* (n_embd, n_ff) */
} tm_layer_weights;

typedef struct tm_model_config {
    int n_vocab;
    int n_embd;           /* model width */
    int n_layer;
    int n_head;
    int n_head_kv;        /* grouped-query attention: n_head % n_head_kv == 0 */
    int head_dim;         /* n_embd / n_head */
    int n_rot;            /* rotated dimensions per head (llama.rope.dimension_count) */
    int n_ff;             /* feed-forward width */
    int n_ctx_train;      /* trained context length */
    float rms_norm_eps;
    float rope_freq_base;
    float rope_freq_scale; /* 1 / linear scaling factor (1 when none) */
    bool tied_embeddings;
} tm_model_config;

typedef struct tm_model {
    tm_gguf *gguf;               /* owned */
    tm_model_config config;
    tm_weight token_embd;        /* (n_vocab, n_embd) */
    tm_weight output_norm;       /* (n_embd) f32 */
    tm_weight output;            /* (n_vocab, n_embd); == token_embd when tied */
    const float *rope_freqs;     /* (n_rot/2) llama3 per-dimension frequency divisors, or NULL */
    tm_layer_weights *layers;    /* n_layer */
    uint64_t weight_bytes;       /* bytes of every tensor the forward pass reads */
    uint64_t step_weight_bytes;  /* of those, what every forward pass reads whole: all but the token-embedding table
                                  * (only its tokens' rows are looked up), which counts when it is also the output head */
    char name[128];
} tm_model;

/* Take ownership of an opened GGUF (closed on failure too). */
tm_status tm_model_load(tm_gguf *gguf, tm_model **out, tm_error_t *error);
/* Open a path, or "synthetic:PRESET:TYPE" / a synthetic spec given separately. */
tm_status tm_model_open(const char *path, const char *synthetic_spec, int n_threads, tm_model **out,
                        tm_error_t *error);
void tm_model_free(tm_model *model);

#endif /* TM_MODEL_H */
