/*
 * tensormesh.h - the public C API of the TensorMesh engine.
 *
 * Guarantees: opaque handles, plain C types only (no CUDA types), status codes that only grow at
 * the end. Every function that can fail on user input returns a tm_status and, where it takes a
 * tm_error_t, writes a message that names the file, field and byte offset that was wrong.
 */
#ifndef TENSORMESH_H
#define TENSORMESH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TM_VERSION_STRING "0.1.0"

/* Status codes: append only. */
typedef enum tm_status {
    TM_OK = 0,
    TM_ERR_IO = 1,          /* open/read/write/mmap failed */
    TM_ERR_FORMAT = 2,      /* a file is malformed (truncated, bad magic, out-of-range field) */
    TM_ERR_UNSUPPORTED = 3, /* valid but not supported here (unknown tensor type, version) */
    TM_ERR_INVALID_ARG = 4, /* a caller passed a bad argument (unknown preset, bad flag value) */
    TM_ERR_NO_MEMORY = 5,   /* host or device allocation failed */
    TM_ERR_NOT_FOUND = 6,   /* a looked-up key or tensor is absent */
    TM_ERR_INTERNAL = 7,    /* a broken invariant: a bug in TensorMesh */
} tm_status;

/* An error report: the status plus a human-readable message (file, key/tensor, byte offset). */
typedef struct tm_error {
    tm_status status;
    char message[512];
} tm_error_t;

/* Name of a status code, e.g. "format error". Never NULL. */
const char *tm_status_name(tm_status status);

/* ---- engine ------------------------------------------------------------------------------- */

typedef struct tm_engine tm_engine;

typedef struct tm_engine_options {
    const char *model_path;  /* a GGUF file, or "synthetic:PRESET:TYPE" */
    const char *synthetic;   /* or a synthetic spec "PRESET:TYPE" (exactly one of the two) */
    const char *device;      /* "auto" (default: CUDA when a device is present, else CPU), "cpu", "cuda", "cuda:N" */
    int n_threads;           /* CPU threads; 0 = all */
    int max_sequences;       /* sequences decoded together (default 16) */
    int n_ctx;               /* most tokens one sequence may hold; 0 = the model's trained length, at most 4096 */
    int64_t kv_pages;        /* KV pool size in pages; 0 = enough for max_sequences x n_ctx, capped by kv_bytes */
    uint64_t kv_bytes;       /* 0 = 2 GiB cap when kv_pages is 0 */
    uint32_t kv_page_size;   /* bytes per KV page (default 4096) */
    int kv_type;             /* 0 f16 (default), 1 f32, 2 q8 (8-bit values, a float scale a head vector) */
    int precision;           /* 0 fast (quantized activations), 1 exact (float activations) */
    int max_batch_tokens;    /* tokens per forward step: prefill chunk budget (default 512) */
    bool no_cuda_graphs;     /* CUDA: launch decode steps kernel by kernel instead of replaying graphs */
    bool host_sampling;      /* CUDA: copy logits back and sample on the CPU (default: on the GPU,
                              * any sampling settings) */
    bool nvtx_detail;        /* NVTX ranges per layer and operation too (for Nsight; CUDA decode steps then run
                              * without graphs) */
    bool time_device_steps;  /* CUDA: time each decode step's graph and the device's idle before it with events
                              * (tm_engine_stats.device_idle_seconds; a measuring aid: they cost a step 5-11 us) */
    bool no_step_overlap;    /* Read each step's sampled tokens before the next step is launched. By default a
                              * decode step whose batch is already known (every running request decoding, none
                              * queued that a free sequence slot could admit) is launched before the host reads
                              * the tokens of the step before it, which it reads on the device (and adds to a
                              * repetition penalty's window there): the host's turnaround between steps overlaps
                              * the device's work. The
                              * tokens are the same either way; a queued request that a slot freed by a step's
                              * tokens admits starts one step later. */
} tm_engine_options;

typedef struct tm_sampling {
    float temperature;        /* 0: greedy */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    int penalty_last_n;       /* tokens the penalty looks back over (0: all) */
    uint64_t seed;
} tm_sampling;

typedef struct tm_request_params {
    const char *prompt;        /* text (UTF-8; invalid bytes are tokenized, not rejected) */
    size_t prompt_length;      /* 0: strlen(prompt) */
    const int32_t *prompt_tokens; /* or token ids (then prompt is NULL) */
    int n_prompt_tokens;
    int max_tokens;            /* tokens to generate at most (default 128) */
    tm_sampling sampling;
    const char *const *stop;   /* stop strings: generation ends before the first occurrence */
    int n_stop;
    bool add_bos;              /* prepend BOS when the model wants one (default true) */
    bool parse_special;        /* match special-token text in the prompt (default true) */
    bool ignore_eos;           /* keep generating past end-of-generation tokens (benchmarks) */
} tm_request_params;

typedef enum tm_request_state {
    TM_REQUEST_QUEUED = 0,
    TM_REQUEST_PREFILL = 1,
    TM_REQUEST_DECODING = 2,
    TM_REQUEST_FINISHED = 3,
} tm_request_state;

typedef enum tm_finish_reason {
    TM_FINISH_NONE = 0,
    TM_FINISH_LENGTH = 1,      /* max_tokens reached */
    TM_FINISH_END = 2,         /* an end-of-generation token */
    TM_FINISH_STOP = 3,        /* a stop string */
    TM_FINISH_CONTEXT = 4,     /* the sequence reached n_ctx */
    TM_FINISH_CANCELLED = 5,
} tm_finish_reason;

typedef struct tm_request_info {
    tm_request_state state;
    tm_finish_reason finish_reason;
    int n_prompt_tokens;
    int n_generated;
    double submitted_at, first_token_at, finished_at; /* seconds, monotonic clock; 0 = not yet */
    int preemptions;           /* times it lost its KV pages and was recomputed */
} tm_request_info;

typedef struct tm_engine_stats {
    uint64_t weight_bytes;     /* bytes of weights the forward pass reads */
    uint64_t step_weight_bytes; /* of those, what every forward pass reads whole, however many tokens: all but the
                                 * token-embedding table (its tokens' rows are looked up), which counts when it is
                                 * also the output head (tied embeddings); in the file's encoding, so a device
                                 * layout's padding is not counted */
    uint64_t kv_bytes_per_position; /* KV cache bytes one position of one sequence holds over all layers (keys, values
                                     * and an 8-bit cache's scales): what a decode step reads per position attended */
    int64_t kv_pages_total, kv_pages_used, kv_pages_free;
    uint64_t kv_page_size;
    uint64_t kv_bytes_used, kv_bytes_allocated;
    int requests_queued, requests_running;
    int64_t steps;
    int64_t prompt_tokens;     /* prompt tokens processed */
    int64_t generated_tokens;
    double prefill_seconds;    /* forward + sampling time of steps that processed prompt tokens */
    double decode_seconds;     /* forward + sampling time of pure decode steps */
    double sample_seconds;     /* sampling (and, on the GPU, waiting for the forward to finish) */
    double load_seconds;
    int64_t device_sampled_tokens; /* tokens sampled on the GPU */
    /* device memory of the backend (0 on the CPU) */
    uint64_t device_weight_bytes, device_kv_bytes, device_activation_bytes, device_workspace_bytes;
    /* with time_device_steps (CUDA): decode steps timed by device events, each replayed as a graph right after
     * another timed one; the device idle before each (from the end of the previous step's sampling kernel,
     * which writes its tokens into host memory, to this step's graph launch: the host's turnaround between
     * steps) and busy in it (from the graph launch to the end of its sampling kernel), summed */
    int64_t device_timed_steps;
    double device_idle_seconds, device_busy_seconds;
    int64_t overlapped_steps;  /* steps launched before the host read the tokens of the step before them */
} tm_engine_stats;

void tm_engine_options_default(tm_engine_options *options);
/* The kv_type value of a KV cache type's name ("f16", "f32", "q8"), or -1 for any other name. */
int tm_kv_type_from_name(const char *name);
void tm_sampling_default(tm_sampling *sampling);          /* greedy */
void tm_request_params_default(tm_request_params *params);

tm_status tm_engine_create(const tm_engine_options *options, tm_engine **out, tm_error_t *error);
void tm_engine_free(tm_engine *engine);

/* Queue a request; *request_id identifies it until tm_engine_release. */
tm_status tm_engine_submit(tm_engine *engine, const tm_request_params *params, int *request_id, tm_error_t *error);
/* One scheduler step: admit queued requests (first come, first served, while KV pages last),
 * run one forward pass over a batch of prefill chunks and decode tokens, sample. Each call reads
 * one step's tokens; with overlapped steps (the default, see no_step_overlap) it may also launch
 * the decode step after it first, which the next call reads. */
tm_status tm_engine_step(tm_engine *engine, tm_error_t *error);
/* True while any request is queued or running. */
bool tm_engine_busy(const tm_engine *engine);
tm_status tm_engine_cancel(tm_engine *engine, int request_id);
/* Forget a finished request (its id may be reused). */
void tm_engine_release(tm_engine *engine, int request_id);

tm_status tm_engine_request_info(const tm_engine *engine, int request_id, tm_request_info *info);
/* Generated token ids so far. */
int tm_engine_request_tokens(const tm_engine *engine, int request_id, const int32_t **tokens);
/* Generated text that is final: complete UTF-8, and not possibly the start of a stop string.
 * Valid until the next step. */
tm_status tm_engine_request_text(tm_engine *engine, int request_id, const char **text, size_t *length);

void tm_engine_get_stats(const tm_engine *engine, tm_engine_stats *stats);
/* Model facts for front ends. */
const char *tm_engine_model_name(const tm_engine *engine);
/* The device the engine runs on, "auto" resolved: "cpu", "cuda" or "cuda:N". */
const char *tm_engine_device(const tm_engine *engine);
int tm_engine_vocab_size(const tm_engine *engine);
/* Tokenize with the model's tokenizer (malloc'ed ids, caller frees). */
tm_status tm_engine_tokenize(const tm_engine *engine, const char *text, size_t length, bool add_bos, int32_t **ids,
                             int *n_ids, tm_error_t *error);
/* Wrap a user message in the model's chat template (malloc'ed, caller frees). */
tm_status tm_engine_chat_prompt(const tm_engine *engine, const char *system, const char *user, char **prompt,
                                tm_error_t *error);

#ifdef __cplusplus
}
#endif

#endif /* TENSORMESH_H */
