/*
 * synth.h - synthetic llama models: real shapes and tensor-type recipes, random weights.
 *
 * Guarantees: for a (preset, type, seed) the output is the same bytes on every run and every
 * thread count; the file is a valid llama GGUF (hyperparameters, a tokenizer vocabulary, every
 * tensor llama.cpp would expect) and the weights are drawn with standard deviation
 * 1/sqrt(fan_in) (norm weights near 1), so activations stay finite through every layer.
 * The same bytes can be built in memory (tm_synth_open_memory) so benchmarks need no disk.
 */
#ifndef TM_SYNTH_H
#define TM_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "threadpool.h"

typedef enum tm_synth_vocab_kind {
    TM_SYNTH_VOCAB_SPM,        /* tokenizer.ggml.model = llama (SentencePiece, byte fallback) */
    TM_SYNTH_VOCAB_BPE_LLAMA3, /* gpt2 byte-level BPE, pre-tokenizer llama-bpe */
    TM_SYNTH_VOCAB_BPE_SMOLLM, /* gpt2 byte-level BPE, pre-tokenizer smollm */
} tm_synth_vocab_kind;

typedef struct tm_synth_preset {
    const char *name;
    uint32_t n_vocab;
    uint32_t n_embd;      /* model width */
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;   /* < n_head: grouped-query attention */
    uint32_t n_ff;        /* feed-forward hidden width */
    uint32_t n_ctx;       /* trained context length */
    float rope_freq_base;
    float rms_norm_eps;
    bool tied_embeddings; /* no output.weight: the LM head reuses token_embd */
    tm_synth_vocab_kind vocab;
} tm_synth_preset;

/* File-level recipes (`--type`). */
typedef enum tm_synth_recipe {
    TM_SYNTH_Q4_K_M,
    TM_SYNTH_Q8_0,
    TM_SYNTH_F16,
} tm_synth_recipe;

typedef struct tm_synth_options {
    const tm_synth_preset *preset;
    tm_synth_recipe recipe;
    uint64_t seed;
    tm_threadpool *pool; /* NULL: single thread */
    bool progress;       /* print progress to stderr */
    bool vocab_only;     /* metadata and vocabulary, no tensors (llama.cpp's vocab-only files) */
} tm_synth_options;

/* Preset by name, NULL when unknown; the list is NULL-terminated. */
const tm_synth_preset *tm_synth_find_preset(const char *name);
const tm_synth_preset *const *tm_synth_presets(void);
bool tm_synth_recipe_from_name(const char *name, tm_synth_recipe *out);
const char *tm_synth_recipe_name(tm_synth_recipe recipe);

/* The tensor type llama.cpp's recipe gives `name` (e.g. "blk.3.ffn_down.weight") with row
 * length n_cols; 1-D tensors are F32. */
tm_type tm_synth_tensor_type(const tm_synth_preset *preset, tm_synth_recipe recipe, const char *name,
                             uint32_t n_dims, uint64_t n_cols);

/* Size in bytes of the file tm_synth_write_file would produce. */
tm_status tm_synth_file_size(const tm_synth_options *options, uint64_t *out_size, tm_error_t *error);
tm_status tm_synth_write_file(const tm_synth_options *options, const char *path, tm_error_t *error);
tm_status tm_synth_open_memory(const tm_synth_options *options, tm_gguf **out, tm_error_t *error);

/* "PRESET:TYPE" (e.g. "llama2-7b:q4_k_m") into options; the error names what is wrong. */
tm_status tm_synth_parse_spec(const char *spec, tm_synth_options *options, tm_error_t *error);

#endif /* TM_SYNTH_H */
