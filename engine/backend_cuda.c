/*
 * backend_cuda.c - the CUDA backend: the llama forward pass on one GPU, composed of the kernels
 * of kernels/cuda (C-linkage launchers), behind the same interface as the CPU backend.
 *
 * DESIGN
 * - Memory, by purpose (tm_backend_memory): the weight arena (every tensor, 256-byte aligned,
 *   uploaded once in the device layout of kernels/cuda/weights.cu: q6_k blocks padded to 224
 *   bytes, q8_0 rows split into values then scales); the KV pool (pages; an 8-bit cache also its
 *   scales, a float a head vector, in the host cache's slot order) plus a device mirror of the page
 *   tables laid out [sequence][layer][max_pages]; activations (one allocation carved into the per-token buffers,
 *   sized for the largest batch seen) plus the step's inputs; workspace (GEMM tiles, decode
 *   attention partials, sampling). A failed allocation is TM_ERR_NO_MEMORY naming the purpose,
 *   the bytes and the device's free memory.
 * - One stream per backend. Each forward writes its inputs (tokens, positions, key counts, page
 *   offsets, logits rows, attention tiles) into one of two pinned, mapped staging slots (forward k:
 *   slot k % 2), and the step's first kernel, the embedding launch, reads them there over the bus
 *   and copies what later kernels read to the device: no transfer of their own (the copy ops
 *   between two steps kept the GPU idle ~8 us, now ~1.3: mapped_alloc). Page tables are mirrored
 *   incrementally (tm_kv_seq_take_unchanged: only entries that changed): a decode step's few grown
 *   entries ride in the staging slot and the same kernel writes them, larger growth (a prefill)
 *   goes by 2-D copies.
 * - Matrix products, fast precision (the default): q4_k/q6_k weights with 1..16 tokens use the
 *   8-bit integer kernels (activations quantized to q8_1 once per input, one scale a 256 values
 *   as the CPU's q8_K, where they are made: by the norms, the SwiGLU and the attention's
 *   split-combine; dp4a at one token, int8 tensor
 *   cores from 2; Q/K/V and gate/up in one launch); f16/bf16 weights: the float GEMV for one
 *   token, 16-bit tensor cores for 2..16 (gemv_mma16.cu; cuBLAS where the shape does not fit),
 *   activations rounded to 16 bits. Kernels of the decode path
 *   are launched as programmatic dependents on sm_90 (kernels/cuda/launch.cuh). Exact precision
 *   (float activations, the reference): one token: GEMV; 2..16:
 *   the batched GEMV reading each weight once. Both: more than 16 tokens run cuBLAS GEMM on
 *   tensor cores (quantized weights dequantized to f16 in row tiles), other types the float
 *   kernels.
 * - Attention: a batch whose tokens are each alone in their sequence (decode) uses the paged
 *   decode kernel split over keys, or, where every context is short enough that the kernels say it
 *   pays, the decode kernel without splits (a block per kv head, no combine launch); a batch with
 *   runs of tokens of one sequence (prefill) uses flash attention over tiles of those runs: on
 *   tensor cores (flash_mma.cu) in fast precision with an f16 or 8-bit cache, the float32 kernel
 *   otherwise. An 8-bit cache's keys and values are quantized by the separate rope +
 *   append kernel (never the Q/K/V products' epilogue: a tile holds part of a head vector).
 * - CUDA graphs: a decode batch of n <= 16 tokens (one per sequence, every one wanting logits)
 *   is captured once per n, attention form (ATTENTION_*: split, without splits, without splits
 *   past TM_CUDA_DECODE_MMA_KEYS keys) and staging slot, and replayed; the graph reads
 *   everything that changes per step from its staging slot and the page mirror, whose addresses
 *   are fixed until a buffer grows (which drops the graphs).
 * - Logits go back to the host, or stay on the device for `sample` (GPU sampling). A sampling's
 *   parameters and tokens live in one of two pinned, mapped host slots (the kernel reads the one and
 *   writes the other there), so `sample_start` can queue the next step's sampling while the host has
 *   not read this one's (sample_finish), and that next step's tokens are read on the device from
 *   the sampled ones (tm_batch.fed: the embedding lookup's feed map). A forward waits only for the
 *   forward before the last to have read its staging slot (inputs_read) and for the last one's
 *   2-D page-table copies (mirror_copied), not for the step in flight.
 * - With options.time_steps, events around each replayed decode step (before its graph launch,
 *   after its sampling kernel) time the device's idle between steps and busy in them
 *   (step_timing); the events cost a step 5-11 us (H200: 7B decode 0.3-0.7 %), so they are off by default.
 * Guarantees: see backend.h; every CUDA call is checked and a failure becomes a status whose
 * message names the call, file and line.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels.h"
#include "trace.h"

_Static_assert((int)TM_CUDA_KV_F16 == (int)TM_KV_F16 && (int)TM_CUDA_KV_F32 == (int)TM_KV_F32 && (int)TM_CUDA_KV_Q8 == (int)TM_KV_Q8,
               "kernels.h's cache types are tm_kv_type's values");

#define CHECK_CUDA(call)                                                                                             \
    do {                                                                                                             \
        cudaError_t cuda_status_ = (call);                                                                           \
        if (cuda_status_ != cudaSuccess)                                                                             \
            return tm_error_set(error, cuda_status_ == cudaErrorMemoryAllocation ? TM_ERR_NO_MEMORY : TM_ERR_INTERNAL, \
                                "CUDA: %s failed: %s (%s:%d)", #call, cudaGetErrorString(cuda_status_), __FILE__,     \
                                __LINE__);                                                                           \
    } while (0)
#define CHECK_KERNEL(call)                                                                                           \
    do {                                                                                                             \
        int kernel_status_ = (call);                                                                                 \
        if (kernel_status_ != 0)                                                                                     \
            return tm_error_set(error, TM_ERR_INTERNAL, "CUDA: %s failed (%s %d; %s:%d)", #call,                    \
                                kernel_status_ < 0 ? "cuBLAS status" : "cudaError", kernel_status_ < 0 ? -kernel_status_ : kernel_status_, \
                                __FILE__, __LINE__);                                                                 \
    } while (0)

/* The dequantized f16 weight tile of the prefill GEMM: 128 MiB measured best on the H200 for both
 * 7B (512-token prompt: 20024 tokens/s at 64 MiB, 21117 at 128, 21055 at 256) and 70B (1832, 1920,
 * 1377): a 7B matrix is one tile, a 70B feed-forward matrix four; TM_GEMM_TILE_MB=N caps it. */
#define GEMM_TILE_BYTES (128ull << 20)
#define CUBLAS_WORKSPACE_BYTES (32ull << 20) /* fixed, so cuBLAS calls can be captured in graphs */
#define KEYS_PER_SPLIT_AT_LONGEST 256 /* decode attention: splits for the longest context, one per this many keys */
#define MAX_SPLITS 32
#define ROPE_TABLE_POSITIONS 32768    /* rope angles tabled for positions below this (32768 x 64 pairs: 16 MiB) */
/* A decode step's attention: split path (tm_cuda_paged_attention), or without splits
 * (tm_cuda_decode_attention_whole), whose form for a group of 1 of an f16 cache differs past
 * TM_CUDA_DECODE_MMA_KEYS keys; each form has its own decode graph per token count. */
enum { ATTENTION_SPLIT, ATTENTION_WHOLE, ATTENTION_WHOLE_LONG, ATTENTION_FORMS };
#define SPLIT_KEYS_FLOOR 128          /* decode attention: a split takes at least this many keys (a chunk for each of its 4 warps) */

typedef struct device_weight {
    const void *data; /* in the weight arena */
    int type;
    int64_t rows, cols;
} device_weight;

/* The step's inputs, at fixed offsets of the staging buffers (each host slot, pinned and mapped,
 * and the device's). */
typedef struct step_inputs {
    int64_t *page_offsets;  /* (capacity) start of each token's page table in the mirror (layer 0) */
    int32_t *tokens, *positions, *n_keys, *logit_rows; /* (capacity) each */
    int32_t *fed;           /* (capacity) -1, or the row of the last sampling started whose token this one is (tm_batch.fed) */
    int32_t *tiles;         /* (2 x capacity) flash-attention tiles */
    int32_t *update_count;  /* (1, 8-byte aligned) page-table entries in updates, written by the step's first kernel (0: copied apart) */
    uint32_t *updates;      /* (2 x TABLE_UPDATES) (mirror index, page) pairs */
} step_inputs;

/* Page-table entries a step's inputs carry (sync_page_tables): a decode step grows each sequence by a
 * page a layer at most (the 7B's 4 pages a token: 8 sequences x 32 layers x 4 = 1024), so its growth
 * travels in the one staging copy and the step's first kernel writes it into the mirror. */
#define TABLE_UPDATES 4096

typedef struct cuda_backend {
    const tm_model *model;
    tm_backend_cuda_options options;
    cudaStream_t stream;
    cublasHandle_t cublas;
    tm_backend_memory memory;
    /* weights */
    uint8_t *arena;
    device_weight token_embd, output_norm, output;
    device_weight *layers;     /* n_layer x 9 in tm_layer_weights order */
    float *rope_freqs;         /* in the arena, or NULL */
    void *rope_angles;         /* tm_cuda_rope_table of rope_positions positions (with the KV pool) */
    void *rope_targets;        /* tm_cuda_rope_targets of a decode step (up to TM_CUDA_GEMV_MAX_TOKENS tokens) */
    int rope_positions;
    /* KV */
    tm_cuda_kv kv;             /* the pages (and an 8-bit cache's scales) on the device */
    int64_t max_pages;         /* per stream: the mirror's row stride */
    int max_sequences;
    int32_t *page_mirror, *host_page_mirror; /* [seq][layer][max_pages] */
    int n_splits;              /* decode attention: key splits (each token's keys spread evenly over them) */
    /* activations, for `capacity` tokens */
    int capacity;
    void *activation_block;
    float *x, *x_next, *xb, *q, *k, *v, *att, *delta, *gate, *up, *logits, *xo; /* residual stream: x, x_next in turn */
    void *host_staging, *device_staging; /* host: two slots (forward k writes slot k % 2), pinned and mapped */
    step_inputs host_in[2], device_in;
    int input_slot;                      /* the slot of the forward being launched */
    /* workspace */
    void *gemm_workspace, *cublas_workspace;
    uint64_t gemm_workspace_bytes;
    void *q8;                  /* activations as q8_1 for the fast decode products */
    void *xb16;                /* a norm's or the SwiGLU's output as f16 for the f16 products of 2..16 tokens (half_activations) */
    float *partials;
    /* sampling: the tokens on the device (one buffer: the stream orders its uses) and pinned mapped
     * host slots, two, so a sampling can be queued while the one before it is still in flight
     * (sample_start); the kernel reads its parameters from its slot and writes its tokens there */
    tm_cuda_sampling *host_sample_rows; /* 2 slots of capacity rows */
    int32_t *sampled, *host_penalized;  /* host_penalized: 2 slots of penalized_capacity ids */
    int32_t *step_tokens;               /* (capacity, after sampled's in its allocation) the last forward's tokens as
                                         * embedded, fed ones filled in: a penalty window's unseen last token (fed_at) */
    int32_t *host_tokens;               /* 2 slots of capacity tokens, written by the sampling kernel */
    int penalized_capacity;
    cudaEvent_t tokens_copied[2];  /* a slot's tokens are in host_tokens (its sampling kernel has finished) */
    int slot_rows[2];              /* rows of the sampling in each slot */
    int64_t samples_started, samples_finished; /* samplings queued / collected so far (slot: count % 2) */
    int last_started_rows;         /* rows of the last sampling started: the feed map's range */
    cudaEvent_t inputs_read[2];    /* after the launches of the last forward that read staging slot i */
    bool inputs_pending[2];        /* inputs_read[i] recorded since the host last waited for it */
    cudaEvent_t mirror_copied;     /* after the last forward's 2-D copies from the host page mirror */
    bool mirror_pending;           /* mirror_copied recorded since the host last waited for it */
    /* per forward */
    int n_out;                 /* logits rows kept on the device by the last forward */
    uint64_t *seen_step;       /* (max_sequences) step stamp: sequence already synced this step */
    int64_t *grown_from;       /* (max_sequences) sync_page_tables: the first page-table entry a sequence grew this step */
    uint64_t step;
    int attention_form;        /* this step's decode attention (ATTENTION_*): the decode graphs are keyed by it */
    int longest_keys;          /* this step's longest context */
    cudaGraphExec_t graphs[ATTENTION_FORMS][TM_CUDA_GEMV_MAX_TOKENS + 1][2]; /* [attention_form][tokens][staging slot] */
    /* options.time_steps: events in the stream around replayed decode steps, sampling k's in pair
     * k % 3 (two samplings may be in flight while the one before them is read) */
    cudaEvent_t launched[3], copied[3]; /* before a step's graph launch; after its sampling kernel (its tokens in the host slot) */
    int64_t forwards;                   /* forward calls so far */
    int64_t launch_for[3];              /* the sampling whose step recorded launched[i] (-1: none) */
    int64_t timed[3];                   /* the sampling that recorded both of pair i's events (-1: none) */
    int64_t forward_of[3];              /* the forward count when pair i's sampling was started */
    tm_backend_step_timing timing;
} cuda_backend;

void tm_backend_cuda_options_default(tm_backend_cuda_options *options) {
    options->device = 0;
    options->max_context = 0;
    options->graphs = true;
    options->precision = TM_PRECISION_FAST;
    options->time_steps = false;
}

/* ---- memory -------------------------------------------------------------------------------- */

static tm_status device_alloc(cuda_backend *b, void **out, uint64_t bytes, uint64_t *account, const char *purpose,
                              tm_error_t *error) {
    *out = NULL;
    if (bytes == 0) return TM_OK;
    cudaError_t status = cudaMalloc(out, bytes);
    if (status != cudaSuccess) {
        cudaGetLastError();
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return tm_error_set(error, status == cudaErrorMemoryAllocation ? TM_ERR_NO_MEMORY : TM_ERR_INTERNAL,
                            "cuda backend: cannot allocate %llu bytes of %s on device %d: %s (%llu of %llu bytes free)",
                            (unsigned long long)bytes, purpose, b->options.device, cudaGetErrorString(status),
                            (unsigned long long)free_bytes, (unsigned long long)total_bytes);
    }
    *account += bytes;
    return TM_OK;
}

/* Pinned host memory that kernels read and write at the host's own address (mapped; under unified
 * addressing, which every 64-bit platform CUDA runs on has, both addresses are one): the step's
 * inputs and the samplings' slots, read and written by the step's kernels over the bus instead of
 * by copy ops of their own. H200, session 54, overlapped decode steps: the GPU's idle between two
 * steps (the sampled tokens' copy back, the next step's input copy) 7.5-8.4 -> 1.29-1.31 us, 7B x1
 * 615.4 -> 621.5 tokens/s, x8 3565 -> 3590, 8B x1 246.2 -> 246.9, x8 1866 -> 1873 (two rounds). */
static tm_status mapped_alloc(cuda_backend *b, void **out, uint64_t bytes, const char *purpose, tm_error_t *error) {
    *out = NULL;
    cudaError_t status = cudaHostAlloc(out, bytes, cudaHostAllocMapped);
    if (status != cudaSuccess) {
        cudaGetLastError();
        *out = NULL;
        return tm_error_set(error, status == cudaErrorMemoryAllocation ? TM_ERR_NO_MEMORY : TM_ERR_INTERNAL,
                            "cuda backend: cannot allocate %llu bytes of pinned host memory for %s: %s", (unsigned long long)bytes, purpose,
                            cudaGetErrorString(status));
    }
    void *device = NULL;
    status = cudaHostGetDevicePointer(&device, *out, 0);
    if (status != cudaSuccess || device != *out) {
        cudaGetLastError();
        cudaFreeHost(*out);
        *out = NULL;
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "cuda backend: device %d does not see the pinned host memory for %s at its host "
                            "address (%s): unified addressing is needed", b->options.device, purpose,
                            status != cudaSuccess ? cudaGetErrorString(status) : "another address");
    }
    return TM_OK;
}

static void drop_graphs(cuda_backend *b) {
    for (int w = 0; w < ATTENTION_FORMS; w++)
        for (int i = 0; i <= TM_CUDA_GEMV_MAX_TOKENS; i++)
            for (int slot = 0; slot < 2; slot++)
                if (b->graphs[w][i][slot]) cudaGraphExecDestroy(b->graphs[w][i][slot]), b->graphs[w][i][slot] = NULL;
}

static void free_activations(cuda_backend *b) {
    drop_graphs(b);
    cudaFree(b->activation_block), cudaFree(b->device_staging), cudaFreeHost(b->host_staging);
    cudaFree(b->gemm_workspace), cudaFree(b->partials), cudaFree(b->sampled), cudaFree(b->q8);
    cudaFree(b->xb16);
    cudaFreeHost(b->host_sample_rows), cudaFreeHost(b->host_tokens);
    b->activation_block = b->device_staging = b->host_staging = b->gemm_workspace = b->q8 = b->xb16 = NULL;
    b->partials = NULL, b->host_sample_rows = NULL, b->sampled = b->step_tokens = b->host_tokens = NULL;
    b->memory.activations = 0;
    b->memory.workspace = b->cublas_workspace ? CUBLAS_WORKSPACE_BYTES : 0; /* it lives as long as the backend */
    b->capacity = 0;
    cudaFreeHost(b->host_penalized);
    b->host_penalized = NULL, b->penalized_capacity = 0;
}

static void release(cuda_backend *b) {
    /* a measuring aid: the block timelines of a build with TM_BLOCK_STAMPS (kernels/cuda/stamps.cuh) */
    const char *stamps = getenv("TM_BLOCK_STAMPS_FILE");
    if (stamps && *stamps && b->stream) {
        cudaStreamSynchronize(b->stream);
        int status = tm_cuda_stamps_dump(stamps);
        if (status == cudaErrorNotSupported) fprintf(stderr, "TM_BLOCK_STAMPS_FILE: this build has no block stamps (cmake -DTM_BLOCK_STAMPS=ON)\n");
        else if (status != cudaSuccess) fprintf(stderr, "TM_BLOCK_STAMPS_FILE: writing %s failed (CUDA error %d)\n", stamps, status);
    }
    if (b->stream) cudaStreamSynchronize(b->stream); /* a sampling in flight copies into the host slots freed below */
    free_activations(b);
    cudaFree(b->arena), cudaFree(b->kv.pool), cudaFree(b->kv.scales), cudaFree(b->page_mirror), cudaFreeHost(b->host_page_mirror), cudaFree(b->rope_angles);
    cudaFree(b->rope_targets);
    cudaFree(b->cublas_workspace);
    if (b->cublas) cublasDestroy(b->cublas);
    if (b->stream) cudaStreamDestroy(b->stream);
    for (int i = 0; i < 3; i++) {
        if (b->launched[i]) cudaEventDestroy(b->launched[i]);
        if (b->copied[i]) cudaEventDestroy(b->copied[i]);
    }
    for (int i = 0; i < 2; i++)
        if (b->tokens_copied[i]) cudaEventDestroy(b->tokens_copied[i]);
    for (int i = 0; i < 2; i++)
        if (b->inputs_read[i]) cudaEventDestroy(b->inputs_read[i]);
    if (b->mirror_copied) cudaEventDestroy(b->mirror_copied);
    free(b->layers), free(b->seen_step), free(b->grown_from);
    free(b);
}

/* Bytes of a weight in the device layout (kernels.h: q6_k blocks padded to 224 bytes, q8_0 rows split). */
static uint64_t weight_bytes(const tm_weight *w) { return tm_cuda_weight_row_bytes((int)w->type, w->cols) * (uint64_t)w->rows; }

static uint64_t aligned(uint64_t bytes) { return (bytes + 255) / 256 * 256; }

/* Copy one weight into the arena at *offset (256-byte aligned), in the device layout. */
static tm_status upload(cuda_backend *b, const tm_weight *w, device_weight *out, uint64_t *offset, tm_error_t *error) {
    uint64_t bytes = weight_bytes(w);
    int status = tm_cuda_upload_weight((int)w->type, b->arena + *offset, w->data, w->rows, w->cols, NULL);
    if (status)
        return tm_error_set(error, status == cudaErrorMemoryAllocation ? TM_ERR_NO_MEMORY : TM_ERR_INTERNAL,
                            "CUDA: uploading a %s weight of %lld x %lld failed: %s", tm_type_name(w->type), (long long)w->rows,
                            (long long)w->cols, cudaGetErrorString((cudaError_t)status));
    *out = (device_weight){b->arena + *offset, (int)w->type, w->rows, w->cols};
    *offset += aligned(bytes);
    return TM_OK;
}

/* The KV pool, the page-table mirror, the rope angles and the decode split geometry: at the first
 * forward. seen_step is allocated last and marks it done; a failure part-way keeps what was
 * allocated, and the next call allocates only what is missing. */
static tm_status ensure_kv(cuda_backend *b, tm_kv_cache *kv, tm_error_t *error) {
    if (b->seen_step) return TM_OK;
    const tm_model_config *c = &b->model->config;
    tm_kv_stats stats;
    tm_kv_get_stats(kv, &stats);
    const tm_kv_layout *layout = tm_kv_get_layout(kv);
    if (layout->n_layer != c->n_layer || layout->n_head_kv != c->n_head_kv || layout->head_dim != c->head_dim)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: the KV cache's layout does not match the model");
    b->max_pages = stats.pages_total / c->n_layer;
    if (b->options.max_context > 0) b->max_pages = TM_MIN(b->max_pages, tm_kv_pages_for_tokens(layout, b->options.max_context));
    b->max_sequences = stats.max_sequences;
    /* the longest stream the mirror can hold, in tokens */
    int64_t max_tokens = layout->page_size >= tm_kv_row_bytes(layout)
                             ? b->max_pages * (int64_t)(layout->page_size / tm_kv_row_bytes(layout))
                             : b->max_pages / tm_kv_pages_for_tokens(layout, 1);
    b->n_splits = (int)TM_MIN((int64_t)MAX_SPLITS, TM_MAX((int64_t)1, (max_tokens + KEYS_PER_SPLIT_AT_LONGEST - 1) / KEYS_PER_SPLIT_AT_LONGEST));
    tm_status s;
    uint64_t pool_bytes = (uint64_t)stats.pages_total * stats.page_size;
    uint64_t mirror_bytes = (uint64_t)b->max_sequences * c->n_layer * b->max_pages * sizeof(int32_t);
    if (layout->type == TM_KV_Q8 && layout->page_size % (uint32_t)layout->head_dim)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "cuda backend: the 8-bit KV cache needs a page size that is a multiple of the "
                                                       "head dim (%u bytes, head dim %d)", layout->page_size, layout->head_dim);
    if (!b->kv.pool && (s = device_alloc(b, &b->kv.pool, pool_bytes, &b->memory.kv, "KV pages", error))) return s;
    const uint64_t scale_bytes = (uint64_t)stats.pages_total * tm_kv_scale_bytes_per_page(layout);
    if (scale_bytes && !b->kv.scales &&
        (s = device_alloc(b, (void **)&b->kv.scales, scale_bytes, &b->memory.kv, "KV scales (8-bit cache)", error)))
        return s;
    b->kv.type = (int)layout->type, b->kv.page_size = layout->page_size; /* TM_CUDA_KV_* are tm_kv_type's values */
    if (!b->page_mirror && (s = device_alloc(b, (void **)&b->page_mirror, mirror_bytes, &b->memory.kv, "KV page tables", error))) return s;
    if (!b->host_page_mirror) CHECK_CUDA(cudaMallocHost((void **)&b->host_page_mirror, mirror_bytes));
    /* the rope angles of the positions a stream can reach (up to ROPE_TABLE_POSITIONS; later ones are
     * computed); rope_positions stays 0 (every angle computed) until the table is written */
    const int rope_positions = (int)TM_MIN((int64_t)ROPE_TABLE_POSITIONS, max_tokens);
    if (!b->rope_angles &&
        (s = device_alloc(b, &b->rope_angles, tm_cuda_rope_table_bytes(rope_positions, c->n_rot), &b->memory.kv, "rope angles", error)))
        return s;
    CHECK_KERNEL(tm_cuda_rope_table(b->rope_angles, rope_positions, c->n_rot, c->rope_freq_base, c->rope_freq_scale, b->rope_freqs,
                                    b->stream));
    b->rope_positions = rope_positions;
    /* where a decode step's queries, keys and values go (for the Q/K/V products' rope epilogue) */
    const tm_cuda_rope_kv geometry = {.n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = c->head_dim, .n_rot = c->n_rot,
                                      .kv = b->kv};
    const uint64_t targets_bytes = tm_cuda_rope_targets_bytes(TM_CUDA_GEMV_MAX_TOKENS, c->n_layer, &geometry);
    if (!b->rope_targets && (s = device_alloc(b, &b->rope_targets, targets_bytes, &b->memory.kv, "rope targets", error))) return s;
    if (!b->grown_from && !(b->grown_from = calloc((size_t)b->max_sequences, sizeof *b->grown_from)))
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
    if (!(b->seen_step = calloc((size_t)b->max_sequences, sizeof *b->seen_step)))
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
    return TM_OK;
}

static void swap_buffers(float **a, float **b) {
    float *t = *a;
    *a = *b, *b = t;
}

/* Per-token buffers for n_tokens: grown (never shrunk) to the largest batch seen. */
static tm_status ensure_activations(cuda_backend *b, int n_tokens, tm_error_t *error) {
    if (n_tokens <= b->capacity) return TM_OK;
    const tm_model_config *c = &b->model->config;
    if (b->samples_started != b->samples_finished) /* their tokens' host slots would go */
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: a forward of %d tokens grows the step buffers while %lld "
                            "sampling(s) are not finished", n_tokens, (long long)(b->samples_started - b->samples_finished));
    CHECK_CUDA(cudaStreamSynchronize(b->stream)); /* nothing in flight reads the buffers freed below */
    b->inputs_pending[0] = b->inputs_pending[1] = b->mirror_pending = false;
    free_activations(b);
    const uint64_t T = (uint64_t)n_tokens, q_dim = (uint64_t)c->n_head * c->head_dim,
                   kv_dim = (uint64_t)c->n_head_kv * c->head_dim;
    /* x x_next xb delta xo: n_embd; q att: q_dim; k v: kv_dim; gate up: n_ff; logits: n_vocab */
    const uint64_t widths[] = {c->n_embd, c->n_embd, c->n_embd, q_dim, kv_dim, kv_dim, q_dim, c->n_embd, c->n_ff, c->n_ff, c->n_vocab, c->n_embd};
    float **buffers[] = {&b->x, &b->x_next, &b->xb, &b->q, &b->k, &b->v, &b->att, &b->delta, &b->gate, &b->up, &b->logits, &b->xo};
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) total += aligned(T * widths[i] * sizeof(float));
    tm_status s;
    if ((s = device_alloc(b, &b->activation_block, total, &b->memory.activations, "activations", error))) return s;
    uint64_t offset = 0;
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        *buffers[i] = (float *)((uint8_t *)b->activation_block + offset);
        offset += aligned(T * widths[i] * sizeof(float));
    }
    /* step inputs: page offsets (8 bytes), five int32 arrays, the tile pairs, the page-table updates' count (8
     * bytes, 8-byte aligned: the pairs after it are read 8 bytes at a time) and pairs */
    const uint64_t count_at = (T * 8 + 7 * T * 4 + 7) / 8 * 8, staging = count_at + 8 + 2 * TABLE_UPDATES * 4;
    if ((s = device_alloc(b, &b->device_staging, staging, &b->memory.activations, "step inputs", error)) ||
        (s = mapped_alloc(b, &b->host_staging, 2 * staging, "step inputs", error)))
        return s;
    step_inputs *ins[3] = {&b->host_in[0], &b->host_in[1], &b->device_in};
    uint8_t *bases[3] = {b->host_staging, (uint8_t *)b->host_staging + staging, b->device_staging};
    for (int i = 0; i < 3; i++) {
        ins[i]->page_offsets = (int64_t *)bases[i];
        ins[i]->tokens = (int32_t *)(bases[i] + T * 8);
        ins[i]->positions = ins[i]->tokens + T;
        ins[i]->n_keys = ins[i]->positions + T;
        ins[i]->logit_rows = ins[i]->n_keys + T;
        ins[i]->fed = ins[i]->logit_rows + T;
        ins[i]->tiles = ins[i]->fed + T;
        ins[i]->update_count = (int32_t *)(bases[i] + count_at);
        ins[i]->updates = (uint32_t *)(ins[i]->update_count + 2);
    }
    /* workspace */
    /* GEMM: the activations as 16-bit for any batch (cuBLAS), plus a dequantized weight tile
     * when prefill batches (more than 16 tokens) come */
    uint64_t widest = (uint64_t)TM_MAX(TM_MAX(c->n_embd, c->n_ff), (int)q_dim);
    uint64_t tile = n_tokens > TM_CUDA_GEMV_MAX_TOKENS ? GEMM_TILE_BYTES : 0;
    b->gemm_workspace_bytes = aligned(T * widest * 2) + TM_MAX(tile, tm_cuda_gemm_min_workspace((int64_t)widest, 1));
    if ((s = device_alloc(b, &b->gemm_workspace, b->gemm_workspace_bytes, &b->memory.workspace, "GEMM workspace", error))) return s;
    uint64_t q8_bytes = tm_cuda_q8_1_bytes((int64_t)TM_MIN(n_tokens, TM_CUDA_GEMV_MAX_TOKENS) * (int64_t)widest);
    if ((s = device_alloc(b, &b->q8, q8_bytes, &b->memory.workspace, "quantized activations", error))) return s;
    const uint64_t xb16_bytes = (uint64_t)TM_MIN(n_tokens, TM_CUDA_GEMV_MAX_TOKENS) * (uint64_t)TM_MAX(c->n_embd, c->n_ff) * 2;
    if ((s = device_alloc(b, &b->xb16, xb16_bytes, &b->memory.workspace, "f16 activations", error))) return s;
    uint64_t decode_tokens = (uint64_t)TM_MIN(n_tokens, TM_CUDA_GEMV_MAX_TOKENS);
    uint64_t partial_bytes = decode_tokens * c->n_head * b->n_splits * (c->head_dim + 2) * sizeof(float);
    if ((s = device_alloc(b, (void **)&b->partials, partial_bytes, &b->memory.workspace, "attention partials", error))) return s;
    if ((s = device_alloc(b, (void **)&b->sampled, 2 * T * sizeof(int32_t), &b->memory.workspace, "sampling", error)) ||
        (s = mapped_alloc(b, (void **)&b->host_sample_rows, 2 * T * sizeof(tm_cuda_sampling), "sampling", error)) ||
        (s = mapped_alloc(b, (void **)&b->host_tokens, 2 * T * sizeof(int32_t), "sampling", error)))
        return s;
    b->step_tokens = b->sampled + T;
    b->capacity = n_tokens;
    return TM_OK;
}

/* The batch's sequences that grew this step, each once, from batch token *t on: its first grown
 * column (*unchanged) and its pages now (sync_page_tables' second half). */
static bool next_grown(cuda_backend *b, const tm_batch *batch, tm_kv_cache *kv, int *t, int *seq, int64_t *unchanged, int64_t *n_pages) {
    for (; *t < batch->n_tokens; (*t)++) {
        *seq = batch->seq[*t];
        *unchanged = b->grown_from[*seq];
        if (*unchanged < 0) continue;
        b->grown_from[*seq] = -1; /* once a sequence */
        tm_kv_page_table(kv, *seq, 0, n_pages);
        (*t)++;
        return true;
    }
    return false;
}

/* After sync_page_tables' 2-D copies from the host mirror: the next forward waits for them before it
 * changes the mirror (a copy of a rectangle takes entries it did not grow as they are). */
static tm_status mirror_copies_queued(cuda_backend *b, tm_error_t *error) {
    CHECK_CUDA(cudaEventRecord(b->mirror_copied, b->stream));
    b->mirror_pending = true;
    return TM_OK;
}

/* Bring the device mirror of every batch sequence's page tables up to date (changed entries only). */
static tm_status sync_page_tables(cuda_backend *b, const tm_batch *batch, tm_kv_cache *kv, tm_error_t *error) {
    const int n_layer = b->model->config.n_layer;
    const size_t pitch = (size_t)b->max_pages * 4;
    b->step++;
    /* the grown entries into the host mirror, and the rectangle of mirror rows ([seq][layer], one
     * pitch apart) and columns that holds every one of them */
    int64_t first_seq = INT64_MAX, last_seq = -1, first_column = INT64_MAX, end_column = 0, grown_bytes = 0;
    for (int t = 0; t < batch->n_tokens; t++) {
        int seq = batch->seq[t];
        if (b->seen_step[seq] == b->step) continue;
        b->seen_step[seq] = b->step;
        int64_t unchanged = tm_kv_seq_take_unchanged(kv, seq), n_pages = 0;
        tm_kv_page_table(kv, seq, 0, &n_pages);
        if (n_pages > b->max_pages)
            return tm_error_set(error, TM_ERR_INVALID_ARG,
                                "cuda backend: sequence %d needs %lld KV pages per layer, more than the %lld its context "
                                "(max_context) was sized for",
                                seq, (long long)n_pages, (long long)b->max_pages);
        b->grown_from[seq] = n_pages > unchanged ? unchanged : -1;
        if (n_pages <= unchanged) continue;
        int32_t *host = b->host_page_mirror + (int64_t)seq * n_layer * b->max_pages;
        for (int l = 0; l < n_layer; l++) {
            int64_t n;
            const int32_t *table = tm_kv_page_table(kv, seq, l, &n);
            memcpy(host + (int64_t)l * b->max_pages + unchanged, table + unchanged, (size_t)(n_pages - unchanged) * 4);
        }
        first_seq = TM_MIN(first_seq, seq), last_seq = TM_MAX(last_seq, seq);
        first_column = TM_MIN(first_column, unchanged), end_column = TM_MAX(end_column, n_pages);
        grown_bytes += (n_pages - unchanged) * 4 * n_layer;
    }
    step_inputs *in = &b->host_in[b->input_slot];
    *in->update_count = 0;
    if (last_seq < 0) return TM_OK;
    /* Where they fit the step's inputs (a decode step's growth), the grown entries travel with the
     * other inputs in their one copy and the step's first kernel writes them (tm_cuda_embed): no
     * transfer of their own. H200 (session 53), the 7B's page tables grow every step: with the
     * steps overlapped, the GPU's idle between steps 31.7-36.1 us with the 2-D copy below against
     * ~10 us where nothing grows (the 8B's). */
    const int64_t mirror_entries = (int64_t)b->max_sequences * n_layer * b->max_pages;
    if (grown_bytes / 4 <= TABLE_UPDATES && mirror_entries <= (int64_t)UINT32_MAX) {
        uint32_t *pairs = in->updates;
        int n = 0, t = 0, seq;
        int64_t unchanged, n_pages;
        while (next_grown(b, batch, kv, &t, &seq, &unchanged, &n_pages))
            for (int l = 0; l < n_layer; l++)
                for (int64_t column = unchanged; column < n_pages; column++) {
                    const int64_t at = ((int64_t)seq * n_layer + l) * b->max_pages + column;
                    pairs[2 * n] = (uint32_t)at, pairs[2 * n + 1] = (uint32_t)b->host_page_mirror[at];
                    n++;
                }
        *in->update_count = n;
        return TM_OK;
    }
    /* One copy of the whole rectangle where it is small (a decode step: a few pages a sequence, so
     * a few KiB for every sequence at once) or not much larger than the grown entries themselves:
     * every copy's host time is GPU idle between steps. H200 step_events, a copy a sequence -> one
     * copy, device idle a step (us): 7B 128 x8 49.5 -> 39.8, 8B x8 40.6 -> 23.8, x1 17.4 -> 16.9 and
     * 20.0 -> 15.7; decode tokens/s 7B x8 3488 -> 3504, 8B x8 1864 -> 1872 (one round). Rows and
     * columns the batch did not grow are copied as they are: the host mirror holds what the device's
     * already does there (each entry is written to the device from the host mirror, and the host
     * mirror only changes at a sync), and entries past a sequence's pages are never read. Else,
     * as after a long prefill beside short sequences, or sequences of far apart lengths (their
     * columns spread the rectangle), a copy for each grown sequence. */
    const int64_t rows = (last_seq - first_seq + 1) * n_layer, width = (end_column - first_column) * 4;
    if (rows * width <= TM_MAX(64 << 10, 4 * grown_bytes)) {
        const int64_t at = first_seq * n_layer * b->max_pages + first_column;
        CHECK_CUDA(cudaMemcpy2DAsync(b->page_mirror + at, pitch, b->host_page_mirror + at, pitch, (size_t)width, (size_t)rows,
                                     cudaMemcpyHostToDevice, b->stream));
        return mirror_copies_queued(b, error);
    }
    int t = 0, seq;
    int64_t unchanged, n_pages;
    while (next_grown(b, batch, kv, &t, &seq, &unchanged, &n_pages)) {
        const int64_t at = (int64_t)seq * n_layer * b->max_pages + unchanged;
        CHECK_CUDA(cudaMemcpy2DAsync(b->page_mirror + at, pitch, b->host_page_mirror + at, pitch, (size_t)(n_pages - unchanged) * 4,
                                     (size_t)n_layer, cudaMemcpyHostToDevice, b->stream));
    }
    return mirror_copies_queued(b, error);
}

/* ---- the forward pass ------------------------------------------------------------------------ */

/* y = W x for n tokens. *x_q8: whether b->q8 already holds x quantized (products that read
 * the same input share one quantization); the caller resets it when x changes. */
static tm_status matmul(cuda_backend *b, const device_weight *w, const float *x, int n, float *y, bool *x_q8, tm_error_t *error) {
    const bool fast = b->options.precision == TM_PRECISION_FAST;
    const bool sixteen_bit = w->type == TM_TYPE_F16 || w->type == TM_TYPE_BF16;
    int status = cudaErrorNotSupported;
    if (n <= TM_CUDA_GEMV_MAX_TOKENS && fast && tm_cuda_gemv_q8_supported(w->type) && w->cols % 256 == 0) {
        if (!*x_q8) CHECK_KERNEL(tm_cuda_quantize_q8_1(x, n, w->cols, b->q8, b->stream));
        *x_q8 = true;
        CHECK_KERNEL(tm_cuda_gemv_q8(w->type, w->data, w->rows, w->cols, b->q8, n, y, b->stream));
    } else if (fast && sixteen_bit && n > 1 && n <= TM_CUDA_GEMV_MAX_TOKENS &&
               (status = tm_cuda_gemv_16bit_tokens(w->type, w->data, w->rows, w->cols, x, n, y, b->stream)) != cudaErrorNotSupported) {
        CHECK_KERNEL(status); /* several sequences' decode on 16-bit tensor cores; shapes it refuses go to cuBLAS below */
    } else if (n > TM_CUDA_GEMV_MAX_TOKENS || (fast && n > 1 && sixteen_bit)) {
        CHECK_KERNEL(tm_cuda_gemm(b->cublas, w->type, w->data, w->rows, w->cols, x, n, y, b->gemm_workspace, b->gemm_workspace_bytes,
                                  b->stream));
    } else {
        CHECK_KERNEL(tm_cuda_gemv_batched(w->type, w->data, w->rows, w->cols, x, n, y, b->stream));
    }
    return TM_OK;
}

static bool takes_q8(const cuda_backend *b, const device_weight *w, int n);

/* Whether the products of several weights with one input go in one launch: every weight takes the
 * 8-bit path with the same width. Also at one token since the parts kernel stopped copying its
 * parameters to the stack in every thread (7B decode on the H200: 348 fused vs 325 separate; with
 * the copy, fused was the slower, 280 vs 318). TM_FUSED_PRODUCTS_MIN_TOKENS=N (a measuring aid)
 * fuses from N tokens on. */
static bool products_together(const cuda_backend *b, const device_weight *const *w, int n_parts, int n) {
    static int min_tokens = 0;
    if (!min_tokens) {
        const char *text = getenv("TM_FUSED_PRODUCTS_MIN_TOKENS");
        min_tokens = text && atoi(text) > 0 ? atoi(text) : 1;
    }
    bool together = n >= min_tokens;
    for (int i = 0; i < n_parts; i++) together = together && takes_q8(b, w[i], n) && w[i]->cols == w[0]->cols;
    return together;
}

/* Whether the products of several weights with one input go in one launch of a 16-bit kernel:
 * every weight f16, or every one bf16, all of one width; one token (gemv16.cu, any precision: the
 * activations stay float32, as in the product of each alone) or, at fast precision, 2..16 tokens
 * (gemv_mma16.cu, the kernel of each alone there). */
static bool sixteen_bit_together(const cuda_backend *b, const device_weight *const *w, int n_parts, int n) {
    bool together = n == 1 || (n <= TM_CUDA_GEMV_MAX_TOKENS && b->options.precision == TM_PRECISION_FAST);
    for (int i = 0; i < n_parts; i++)
        together = together && (w[i]->type == TM_TYPE_F16 || w[i]->type == TM_TYPE_BF16) && w[i]->type == w[0]->type && w[i]->cols == w[0]->cols;
    return together;
}

/* Products of several weights with one input (Q/K/V, gate/up): one launch when
 * products_together (8-bit activations) or sixteen_bit_together, else one product each. */
static tm_status matmul_parts(cuda_backend *b, const device_weight *const *w, float *const *y, int n_parts, const float *x, int n,
                              bool *x_q8, const void *x16, tm_error_t *error) {
    tm_cuda_gemv_part parts[TM_CUDA_GEMV_MAX_PARTS];
    for (int i = 0; i < n_parts; i++) parts[i] = (tm_cuda_gemv_part){w[i]->data, w[i]->type, w[i]->rows, y[i]};
    int status = cudaErrorNotSupported;
    if (sixteen_bit_together(b, w, n_parts, n)) {
        if (x16 && n > 1) status = tm_cuda_gemv_f16_tokens_parts_half_x(parts, n_parts, w[0]->cols, x16, n, b->stream);
        if (status == cudaErrorNotSupported)
            status = n == 1 ? tm_cuda_gemv_16bit_parts(parts, n_parts, w[0]->cols, x, b->stream)
                            : tm_cuda_gemv_16bit_tokens_parts(parts, n_parts, w[0]->cols, x, n, b->stream);
    } else if (products_together(b, w, n_parts, n)) {
        if (!*x_q8) CHECK_KERNEL(tm_cuda_quantize_q8_1(x, n, w[0]->cols, b->q8, b->stream));
        *x_q8 = true;
        status = tm_cuda_gemv_q8_parts(parts, n_parts, w[0]->cols, b->q8, n, b->stream);
    }
    if (status == 0) return TM_OK;
    if (status != cudaErrorNotSupported) CHECK_KERNEL(status);
    for (int i = 0; i < n_parts; i++) {
        tm_status s = matmul(b, w[i], x, n, y[i], x_q8, error);
        if (s) return s;
    }
    return TM_OK;
}

/* y = W x for n tokens, reading x16 (x's f16 copy from its producer, where half_activations said
 * the product takes it) or else x itself. */
static tm_status matmul_from(cuda_backend *b, const device_weight *w, const float *x, const void *x16, int n, float *y, bool *x_q8,
                             tm_error_t *error) {
    return x16 ? matmul_parts(b, &w, &y, 1, x, n, x_q8, x16, error) : matmul(b, w, x, n, y, x_q8, error);
}

/* Whether environment variable `name` is set to exactly `value`: the measuring aids' switches
 * (callers read it once, into a function-local static). */
static bool env_is(const char *name, const char *value) {
    const char *text = getenv(name);
    return text && strcmp(text, value) == 0;
}

/* Whether decode steps may give the rope and KV append to the Q/K/V products: TM_FUSED_ROPE=0 (a
 * measuring aid) keeps them apart. */
static bool fused_rope_enabled(void) {
    static int fused = -1;
    if (fused < 0) fused = !env_is("TM_FUSED_ROPE", "0");
    return fused;
}

/* The Q/K/V products of T tokens, then the rope and the KV append: in one launch where the step's
 * rope targets were found (rope->targets) and the products take the 8-bit path in one launch and
 * the kernel takes the rope too (tm_cuda_gemv_q8_qkv_rope), else the products then
 * tm_cuda_rope_kv_append. */
static tm_status qkv_rope_append(cuda_backend *b, const device_weight *w, const float *x, int T, bool *x_q8, const void *x16,
                                 const tm_cuda_rope_kv *rope, tm_error_t *error) {
    const bool detail = tm_trace_detail();
    const device_weight *qkv[3] = {&w[1], &w[2], &w[3]};
    float *qkv_out[3] = {b->q, b->k, b->v};
    if (rope->targets && products_together(b, qkv, 3, T)) {
        if (!*x_q8) CHECK_KERNEL(tm_cuda_quantize_q8_1(x, T, qkv[0]->cols, b->q8, b->stream));
        *x_q8 = true;
        tm_cuda_gemv_part parts[3];
        for (int i = 0; i < 3; i++) parts[i] = (tm_cuda_gemv_part){qkv[i]->data, qkv[i]->type, qkv[i]->rows, qkv_out[i]};
        TM_DETAIL_BEGIN("q/k/v + rope + kv append");
        const int status = tm_cuda_gemv_q8_qkv_rope(parts, qkv[0]->cols, b->q8, T, rope, b->stream);
        TM_DETAIL_END();
        if (status == 0) return TM_OK;
        if (status != cudaErrorNotSupported) CHECK_KERNEL(status);
    }
    TM_DETAIL_BEGIN("q/k/v");
    tm_status s = matmul_parts(b, qkv, qkv_out, 3, x, T, x_q8, x16, error);
    TM_DETAIL_END();
    if (s) return s;
    TM_DETAIL_BEGIN("rope + kv append");
    CHECK_KERNEL(tm_cuda_rope_kv_append(b->q, b->k, b->v, T, rope, b->stream));
    TM_DETAIL_END();
    return TM_OK;
}

/* Whether y = W x for n tokens takes the 8-bit path (so x should be quantized where made). */
static bool takes_q8(const cuda_backend *b, const device_weight *w, int n) {
    return b->options.precision == TM_PRECISION_FAST && n <= TM_CUDA_GEMV_MAX_TOKENS && tm_cuda_gemv_q8_supported(w->type) &&
           w->cols % 256 == 0;
}

/* Prefill attention on tensor cores (f16 queries and probabilities): fast precision, an f16 or
 * 8-bit cache and a head dim the kernel takes; otherwise (an f32 cache too) the float32 kernel. */
static bool flash_on_tensor_cores(const cuda_backend *b, tm_kv_type kv_type) {
    const tm_model_config *c = &b->model->config;
    return b->options.precision == TM_PRECISION_FAST && kv_type != TM_KV_F32 &&
           tm_cuda_flash_mma_tile_tokens(c->head_dim, c->n_head, c->n_head_kv) > 0;
}

/* Whether the products of `w` at T tokens take f16 activations, which their producer (a norm, the
 * decode attention, the SwiGLU) then also writes into b->xb16 (tm_cuda_gemv_f16_tokens_parts_half_x:
 * the same rounding, half the activation bytes those products read, no conversions in their loop):
 * f16 weights at 2..16 tokens, fast precision, rows that fit xb16's. TM_MMA16_HALF_X=0 (a measuring
 * aid) keeps the float activations. */
static bool half_activations(const cuda_backend *b, const device_weight *w, int T) {
    static int enabled = -1;
    if (enabled < 0) enabled = !env_is("TM_MMA16_HALF_X", "0");
    const tm_model_config *c = &b->model->config;
    return enabled && w->type == TM_TYPE_F16 && T >= 2 && T <= TM_CUDA_GEMV_MAX_TOKENS && b->options.precision == TM_PRECISION_FAST &&
           w->cols % 32 == 0 && w->cols <= TM_MAX(c->n_embd, c->n_ff);
}

/* Whether the decode attention writes the f16 copy the output product takes (half_activations):
 * TM_ATTENTION_HALF=0 (a measuring aid) leaves that product its float input. */
static bool attention_half(void) {
    static int enabled = -1;
    if (enabled < 0) enabled = !env_is("TM_ATTENTION_HALF", "0");
    return enabled;
}

/* The residual add and norm before a layer's products; with `half` also the f16 copy into b->xb16
 * where the kernel takes it (*x16 then points at it, else NULL). */
static tm_status norm_for_products(cuda_backend *b, float *x_out, const float *x, const float *delta, const float *weight, int T,
                                   bool q8, bool half, const void **x16, tm_error_t *error) {
    const tm_model_config *c = &b->model->config;
    *x16 = NULL;
    if (half && !q8) {
        const int status = tm_cuda_add_rmsnorm_half(b->xb, b->xb16, x_out, x, delta, weight, T, c->n_embd, c->rms_norm_eps, b->stream);
        if (status == 0) {
            *x16 = b->xb16;
            return TM_OK;
        }
        if (status != cudaErrorNotSupported) CHECK_KERNEL(status);
    }
    CHECK_KERNEL(tm_cuda_add_rmsnorm(b->xb, x_out, x, delta, weight, T, c->n_embd, c->rms_norm_eps, q8 ? b->q8 : NULL, b->stream));
    return TM_OK;
}

/* Whether the LM head always reads gathered rows (TM_HEAD_GATHER=1, a measuring aid: the gather and
 * quantize launches before it even when every row wants logits). Without them (a decode step's
 * head reads the final norm's rows and q8_1 as they are), H200 block stamps, 7B x1 step: the
 * head's wait returned 1.5-1.9 us after the norm ended instead of 6.6, its exposed time 39.3 ->
 * 31.6-33.0 us; one binary, TM_HEAD_GATHER 1 / unset, three rounds, tokens/s: 7B x8 3458, 3429,
 * 3464 / 3475, 3473, 3474; 7B x1 608.7, 608.1, 604.2 / 605.8, 607.3, 609.3 (within its spread). */
static bool gather_before_head(void) {
    static int gather = -1;
    if (gather < 0) gather = env_is("TM_HEAD_GATHER", "1");
    return gather;
}

/* Every launch of one forward pass over T tokens (n_tiles > 0: flash attention over the tiles,
 * else decode attention) and the LM head over the n_out rows that want logits (gathered unless
 * they are all T): what a graph captures.
 * Per layer: [residual add +] norm [+ quantize], Q/K/V products and rope + KV append (one launch
 * where the decode products take them), attention,
 * output product, residual add + norm [+ quantize], gate/up products, SwiGLU [+ quantize], down
 * product; the last residual add is fused into the final norm. */
static tm_status launch_forward(cuda_backend *b, int T, int n_tiles, int n_out, tm_error_t *error) {
    const tm_model_config *c = &b->model->config;
    const int D = c->n_embd;
    const step_inputs *in = &b->device_in;
    cudaStream_t stream = b->stream;
    tm_status s;
    const bool detail = tm_trace_detail(); /* ranges around the launches (host side; graphs are off with detail) */
    /* the embedding launch reads the tokens, the feed map and the page-table growth where the host
     * wrote them (the forward's staging slot) and copies the rest of the inputs to the device */
    const step_inputs *host = &b->host_in[b->input_slot];
    const tm_cuda_table_updates updates = {host->update_count, host->updates, b->page_mirror, TABLE_UPDATES};
    const int32_t *runs[] = {(const int32_t *)host->page_offsets, host->positions, host->n_keys, host->logit_rows, host->tiles};
    const int run_words[] = {2 * T, T, T, T, 2 * n_tiles};
    tm_cuda_inputs_copy copy = {.from = (const uint32_t *)host->page_offsets, .to = b->device_staging, .n = 5};
    for (int r = 0; r < 5; r++) copy.at[r] = (int)(runs[r] - (const int32_t *)host->page_offsets), copy.words[r] = run_words[r];
    CHECK_KERNEL(tm_cuda_embed(b->token_embd.type, b->token_embd.data, D, host->tokens, host->fed, b->sampled, T, b->x, b->step_tokens,
                               updates, copy, stream));
    const float *pending_delta = NULL; /* the down product's output, added by the next norm */
    /* The residual stream: each norm that adds a delta writes the sum to the other buffer
     * (tm_cuda_add_rmsnorm out of place, so a few rows can be normalized by many blocks). */
    float *residual = b->x, *residual_next = b->x_next;
    tm_cuda_rope_kv rope = {.n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = c->head_dim, .n_rot = c->n_rot,
                            .freq_base = c->rope_freq_base, .freq_scale = c->rope_freq_scale, .freq_factors = b->rope_freqs,
                            .angles = b->rope_angles, .n_angles = b->rope_positions, .kv = b->kv,
                            .pages = b->page_mirror, /* layer 0's: the targets' base; each layer's below */
                            .page_offsets = in->page_offsets, .positions = in->positions};
    /* decode steps whose Q/K/V products can take the rope: the step's targets first, one launch (not
     * with an 8-bit cache: a product's tile holds 16 rows of a head vector, its scale needs all) */
    const device_weight *first_qkv[3] = {&b->layers[1], &b->layers[2], &b->layers[3]};
    if (fused_rope_enabled() && b->kv.type != TM_CUDA_KV_Q8 && !n_tiles && T <= TM_CUDA_GEMV_MAX_TOKENS && products_together(b, first_qkv, 3, T)) {
        CHECK_KERNEL(tm_cuda_rope_targets(b->rope_targets, T, c->n_layer, b->max_pages, &rope, stream));
        rope.targets = b->rope_targets;
    }
    for (int l = 0; l < c->n_layer; l++) {
        const device_weight *w = &b->layers[(size_t)l * 9];
        const float *attn_norm = w[0].data, *ffn_norm = w[5].data;
        const int32_t *pages = b->page_mirror + (int64_t)l * b->max_pages;
        char layer_name[32];
        if (detail) tm_trace_layer_name(layer_name, sizeof layer_name, l);
        TM_DETAIL_BEGIN(layer_name);
        /* attention block */
        bool xb_q8 = takes_q8(b, &w[1], T), att_q8 = false, gate_q8 = takes_q8(b, &w[8], T);
        void *att16 = NULL; /* the attention's output as f16, where the output product takes it */
        TM_DETAIL_BEGIN("attention norm");
        const void *xb16 = NULL;
        if ((s = norm_for_products(b, residual_next, residual, pending_delta, attn_norm, T, xb_q8, half_activations(b, &w[1], T),
                                   &xb16, error)))
            return s;
        if (pending_delta) swap_buffers(&residual, &residual_next);
        TM_DETAIL_END();
        rope.pages = pages, rope.layer = l;
        if ((s = qkv_rope_append(b, w, b->xb, T, &xb_q8, xb16, &rope, error))) return s;
        TM_DETAIL_BEGIN("attention");
        if (n_tiles && flash_on_tensor_cores(b, (tm_kv_type)b->kv.type))
            CHECK_KERNEL(tm_cuda_flash_attention_mma(b->q, b->att, c->n_head, c->n_head_kv, c->head_dim, &b->kv, pages, in->page_offsets,
                                                     in->positions, in->tiles, n_tiles, 0, stream));
        else if (n_tiles)
            CHECK_KERNEL(tm_cuda_flash_attention(b->q, b->att, c->n_head, c->n_head_kv, c->head_dim, &b->kv, pages, in->page_offsets,
                                                 in->positions, in->tiles, n_tiles, stream));
        else {
            /* the attention also writes the output product's input as that product reads it: q8_1
             * for the 8-bit products, f16 for the 16-bit ones of 2..16 tokens (into b->xb16, which
             * the Q/K/V products have read by then) where its own kernel writes it (no split path of
             * one split, whose copy would take a launch of its own) */
            att_q8 = takes_q8(b, &w[4], T);
            const bool in_kernel = b->attention_form != ATTENTION_SPLIT || b->n_splits > 1;
            att16 = !att_q8 && in_kernel && attention_half() && half_activations(b, &w[4], T) ? b->xb16 : NULL;
            if (b->attention_form != ATTENTION_SPLIT)
                CHECK_KERNEL(tm_cuda_decode_attention_whole(b->q, b->att, T, c->n_head, c->n_head_kv, c->head_dim, &b->kv, pages,
                                                            in->page_offsets, in->n_keys, b->longest_keys, att_q8 ? b->q8 : NULL,
                                                            att16, stream));
            else
                CHECK_KERNEL(tm_cuda_paged_attention(b->q, b->att, T, c->n_head, c->n_head_kv, c->head_dim, &b->kv,
                                                 pages, in->page_offsets, in->n_keys, T <= TM_CUDA_GEMV_MAX_TOKENS ? b->n_splits : 1,
                                                 SPLIT_KEYS_FLOOR, b->partials, att_q8 ? b->q8 : NULL, att16, stream));
        }
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("attention output");
        if ((s = matmul_from(b, &w[4], b->att, att16, T, b->delta, &att_q8, error))) return s;
        TM_DETAIL_END();
        /* feed-forward block */
        TM_DETAIL_BEGIN("ffn norm");
        xb_q8 = takes_q8(b, &w[6], T);
        if ((s = norm_for_products(b, residual_next, residual, b->delta, ffn_norm, T, xb_q8, half_activations(b, &w[6], T),
                                   &xb16, error)))
            return s;
        swap_buffers(&residual, &residual_next);
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("gate/up");
        const device_weight *gate_up[2] = {&w[6], &w[7]};
        float *gate_up_out[2] = {b->gate, b->up};
        if ((s = matmul_parts(b, gate_up, gate_up_out, 2, b->xb, T, &xb_q8, xb16, error))) return s;
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("swiglu");
        const bool gate16 = !gate_q8 && half_activations(b, &w[8], T); /* the down product's input also as f16 */
        if (gate_q8) CHECK_KERNEL(tm_cuda_swiglu_q8(b->gate, b->up, T, c->n_ff, b->q8, stream));
        else if (gate16) CHECK_KERNEL(tm_cuda_swiglu_half(b->gate, b->up, (int64_t)T * c->n_ff, b->xb16, stream));
        else CHECK_KERNEL(tm_cuda_swiglu(b->gate, b->up, (int64_t)T * c->n_ff, stream));
        TM_DETAIL_END();
        TM_DETAIL_BEGIN("down");
        if ((s = matmul_from(b, &w[8], b->gate, gate16 ? b->xb16 : NULL, T, b->delta, &gate_q8, error))) return s;
        TM_DETAIL_END();
        TM_DETAIL_END(); /* the layer */
        pending_delta = b->delta;
    }
    /* the last residual add with the final norm, then the LM head over the rows that want logits */
    TM_DETAIL_BEGIN("lm head");
    /* every row wants logits (a decode step: logit_rows is 0..T-1): the head reads the norm's rows
     * as they are, quantized by the norm itself where it takes q8_1, with no gather or quantize
     * launch between them (two launches a step) */
    const bool every_row = n_out == T && !gather_before_head();
    bool xo_q8 = every_row && takes_q8(b, &b->output, T);
    const void *xo16 = NULL; /* the norm's f16 copy, where a 16-bit head reads every row (half_activations) */
    if ((s = norm_for_products(b, residual_next, residual, pending_delta, b->output_norm.data, T, xo_q8,
                               every_row && half_activations(b, &b->output, T), &xo16, error)))
        return s;
    if (n_out) {
        if (!every_row) CHECK_KERNEL(tm_cuda_gather_rows(b->xb, in->logit_rows, n_out, D, b->xo, stream));
        if ((s = matmul_from(b, &b->output, every_row ? b->xb : b->xo, xo16, n_out, b->logits, &xo_q8, error))) return s;
    }
    TM_DETAIL_END();
    return TM_OK;
}

/* Whether a decode step of T tokens whose longest context is most_keys takes the decode attention
 * without splits (tm_cuda_decode_attention_whole: no partials, no combine launch; in a graph of its
 * own): where the kernels say it is the faster (tm_cuda_decode_attention_whole_keys), or, with
 * TM_ATTENTION_WHOLE_KEYS=N (a measuring aid), up to N keys wherever it is supported (0: never). */
static bool whole_attention(const cuda_backend *b, int T, int most_keys, tm_kv_type kv_type) {
    static int forced = -2;
    if (forced == -2) {
        const char *text = getenv("TM_ATTENTION_WHOLE_KEYS");
        forced = text && *text ? TM_MAX(0, atoi(text)) : -1;
    }
    const tm_model_config *c = &b->model->config;
    if (forced >= 0) return most_keys <= forced && tm_cuda_decode_attention_whole_supported(c->n_head, c->n_head_kv, c->head_dim, kv_type);
    return most_keys <= tm_cuda_decode_attention_whole_keys(T, c->n_head, c->n_head_kv, c->head_dim, kv_type);
}

/* Replay the decode graph for T tokens (and b->attention_form), capturing it first if needed. */
static tm_status run_graph(cuda_backend *b, int T, tm_error_t *error) {
    cudaGraphExec_t *exec = &b->graphs[b->attention_form][T][b->input_slot];
    if (!*exec) {
        cudaGraph_t graph = NULL;
        CHECK_CUDA(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
        tm_status s = launch_forward(b, T, 0, T, error);
        cudaError_t end = cudaStreamEndCapture(b->stream, &graph);
        if (s) {
            if (graph) cudaGraphDestroy(graph);
            return s;
        }
        CHECK_CUDA(end);
        cudaError_t made = cudaGraphInstantiate(exec, graph, 0);
        cudaGraphDestroy(graph);
        CHECK_CUDA(made);
    }
    CHECK_CUDA(cudaGraphLaunch(*exec, b->stream));
    return TM_OK;
}

static tm_status forward(tm_backend *backend, const tm_batch *batch, tm_kv_cache *kv, float *logits, tm_error_t *error) {
    cuda_backend *b = backend->context;
    const tm_model_config *c = &b->model->config;
    const int T = batch->n_tokens;
    const tm_kv_layout *layout = tm_kv_get_layout(kv);
    tm_status s;
    b->n_out = 0;
    if (T <= 0) return TM_OK;
    for (int t = 0; t < T; t++) {
        const bool fed = batch->fed && batch->fed[t] >= 0;
        if (fed && (b->samples_started == 0 || batch->fed[t] >= b->last_started_rows))
            return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token %d is fed from row %d of a sampling of %d rows", t,
                                batch->fed[t], b->samples_started ? b->last_started_rows : 0);
        if ((!fed && (batch->tokens[t] < 0 || batch->tokens[t] >= c->n_vocab)) || batch->positions[t] < 0 ||
            batch->positions[t] >= tm_kv_seq_capacity(kv, batch->seq[t]))
            return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token %d (id %d, position %d) is out of range", t,
                                fed ? -1 : batch->tokens[t], batch->positions[t]);
    }
    CHECK_CUDA(cudaSetDevice(b->options.device));
    /* forward k writes staging slot k % 2, which forward k - 2's launches read (the engine's
     * overlapped steps read that step's tokens before launching this one, so this does not wait),
     * and forward k - 1's 2-D copies from the host page mirror have run (a step in flight may still
     * be computing) */
    const int slot = (int)(b->forwards % 2);
    if (b->inputs_pending[slot]) CHECK_CUDA(cudaEventSynchronize(b->inputs_read[slot]));
    b->inputs_pending[slot] = false;
    if (b->mirror_pending) CHECK_CUDA(cudaEventSynchronize(b->mirror_copied));
    b->mirror_pending = false;
    b->input_slot = slot;
    b->forwards++;
    if ((s = ensure_kv(b, kv, error)) || (s = ensure_activations(b, T, error))) return s;
    for (int t = 0; t < T; t++)
        if (batch->seq[t] < 0 || batch->seq[t] >= b->max_sequences)
            return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token %d has sequence %d", t, batch->seq[t]);
    if ((s = sync_page_tables(b, batch, kv, error))) return s;

    /* the step's inputs; tiles: runs of consecutive tokens of one sequence */
    step_inputs *in = &b->host_in[slot];
    const int tile_tokens = flash_on_tensor_cores(b, layout->type)
                                ? tm_cuda_flash_mma_tile_tokens(c->head_dim, c->n_head, c->n_head_kv)
                                : tm_cuda_flash_tile_tokens(c->head_dim, c->n_head, c->n_head_kv);
    int n_tiles = 0, n_out = 0, most_keys = 0;
    bool prefill = false;
    for (int t = 0; t < T; t++) {
        in->fed[t] = batch->fed && batch->fed[t] >= 0 ? batch->fed[t] : -1;
        in->tokens[t] = in->fed[t] >= 0 ? 0 : batch->tokens[t];
        in->positions[t] = batch->positions[t];
        in->n_keys[t] = batch->positions[t] + 1;
        most_keys = TM_MAX(most_keys, in->n_keys[t]);
        in->page_offsets[t] = (int64_t)batch->seq[t] * c->n_layer * b->max_pages;
        if (batch->want_logits[t]) in->logit_rows[n_out++] = t;
        bool extends = n_tiles && batch->seq[t] == batch->seq[t - 1] && in->tiles[2 * n_tiles - 1] < tile_tokens;
        if (extends) in->tiles[2 * n_tiles - 1]++, prefill = true;
        else in->tiles[2 * n_tiles] = t, in->tiles[2 * n_tiles + 1] = 1, n_tiles++;
    }
    /* flash attention for runs of tokens (and for more single tokens than the decode partials
     * hold); head dims flash does not cover fall back to the decode kernel, which is exact for
     * any batch since every token's keys are appended before attention */
    if (T > TM_CUDA_GEMV_MAX_TOKENS) prefill = true;
    if (tile_tokens < 1) prefill = false;
    const bool whole = !prefill && T <= TM_CUDA_GEMV_MAX_TOKENS && whole_attention(b, T, most_keys, layout->type);
    b->attention_form = !whole ? ATTENTION_SPLIT : most_keys > TM_CUDA_DECODE_MMA_KEYS ? ATTENTION_WHOLE_LONG : ATTENTION_WHOLE;
    b->longest_keys = most_keys;
    const bool graph = b->options.graphs && !prefill && n_out == T && T <= TM_CUDA_GEMV_MAX_TOKENS;
    /* a timed step: its launch event, right before the graph, in the pair of the sampling that
     * will follow it (time_step: a forward not followed by its sampling breaks the chain) */
    const int pair = (int)(b->samples_started % 3);
    b->launch_for[pair] = -1;
    if (graph && b->options.time_steps) {
        CHECK_CUDA(cudaEventRecord(b->launched[pair], b->stream));
        b->launch_for[pair] = b->samples_started;
    }
    if (graph) s = run_graph(b, T, error);
    else s = launch_forward(b, T, prefill ? n_tiles : 0, n_out, error);
    /* recorded whatever came of the launches: whatever of them was queued reads the slot */
    cudaError_t recorded = cudaEventRecord(b->inputs_read[slot], b->stream);
    b->inputs_pending[slot] = recorded == cudaSuccess;
    if (s) return s;
    CHECK_CUDA(recorded);
    b->n_out = n_out;
    if (logits) {
        if (n_out)
            CHECK_CUDA(cudaMemcpyAsync(logits, b->logits, (size_t)n_out * c->n_vocab * 4, cudaMemcpyDeviceToHost, b->stream));
        CHECK_CUDA(cudaStreamSynchronize(b->stream));
    }
    return TM_OK;
}

/* ---- sampling ------------------------------------------------------------------------------ */

/* Sampling k has finished (its tokens in the host slot): where its step was timed, its busy time, and
 * the idle before it where sampling k - 1's step was timed too and its forward came right after
 * k - 1's sampling (no untimed forward between). Pair k - 1's events are still k - 1's: at most
 * two samplings are in flight, k and k + 1. */
static void time_step(cuda_backend *b, int64_t k) {
    const int pair = (int)(k % 3), before = (int)((k + 2) % 3);
    float busy_ms = 0, idle_ms = 0;
    if (b->timed[pair] == k && cudaEventElapsedTime(&busy_ms, b->launched[pair], b->copied[pair]) == cudaSuccess && k > 0 &&
        b->timed[before] == k - 1 && b->forward_of[pair] == b->forward_of[before] + 1 &&
        cudaEventElapsedTime(&idle_ms, b->copied[before], b->launched[pair]) == cudaSuccess) {
        b->timing.steps++;
        b->timing.idle_seconds += idle_ms * 1e-3;
        b->timing.busy_seconds += busy_ms * 1e-3;
    }
    cudaGetLastError(); /* an event that could not be timed leaves no error behind */
}

static void step_timing(const tm_backend *backend, tm_backend_step_timing *timing) {
    *timing = ((const cuda_backend *)backend->context)->timing;
}

/* Queue the sampling of the rows the last forward kept: the rows' parameters and penalized ids
 * into this sampling's host slot, and the kernel, which reads them there and writes the tokens into
 * the slot; no wait. The tokens also stay in b->sampled, where the next forward's fed tokens read them. */
static tm_status sample_start(tm_backend *backend, int n_rows, const tm_sample_row *rows, tm_error_t *error) {
    cuda_backend *b = backend->context;
    if (n_rows != b->n_out)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: %d rows to sample but the last forward kept %d", n_rows, b->n_out);
    if (b->samples_started - b->samples_finished >= 2)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: a third sampling started before the first finished");
    int n_penalized = 0;
    for (int r = 0; r < n_rows; r++) n_penalized += rows[r].n_penalized;
    if (n_penalized > b->penalized_capacity) {
        CHECK_CUDA(cudaStreamSynchronize(b->stream)); /* no sampling in flight reads the slots freed here */
        cudaFreeHost(b->host_penalized);
        b->host_penalized = NULL, b->penalized_capacity = 0;
        tm_status s = mapped_alloc(b, (void **)&b->host_penalized, (uint64_t)n_penalized * 2 * 4, "sampling", error);
        if (s) return s;
        b->penalized_capacity = n_penalized;
    }
    const int slot = (int)(b->samples_started % 2), pair = (int)(b->samples_started % 3);
    tm_cuda_sampling *host_rows = b->host_sample_rows + (size_t)slot * b->capacity;
    int32_t *host_penalized = b->host_penalized ? b->host_penalized + (size_t)slot * b->penalized_capacity : NULL;
    const int32_t *logit_rows = b->host_in[b->input_slot].logit_rows; /* the last forward's: row r is its token logit_rows[r] */
    int offset = 0;
    for (int r = 0; r < n_rows; r++) {
        const tm_sampling *p = rows[r].params;
        host_rows[r] = (tm_cuda_sampling){p->temperature, p->top_p, p->min_p, p->repetition_penalty, p->top_k, rows[r].n_penalized, offset,
                                          rows[r].window_fed ? logit_rows[r] : -1, rows[r].uniform};
        if (rows[r].n_penalized) memcpy(host_penalized + offset, rows[r].penalized, (size_t)rows[r].n_penalized * 4);
        offset += rows[r].n_penalized;
    }
    CHECK_KERNEL(tm_cuda_sample(b->logits, n_rows, b->model->config.n_vocab, host_rows, 1, host_penalized, b->step_tokens, b->sampled,
                                b->host_tokens + (size_t)slot * b->capacity, b->stream));
    b->timed[pair] = -1;
    if (b->launch_for[pair] == b->samples_started) {
        CHECK_CUDA(cudaEventRecord(b->copied[pair], b->stream));
        b->timed[pair] = b->samples_started;
        b->forward_of[pair] = b->forwards;
    }
    CHECK_CUDA(cudaEventRecord(b->tokens_copied[slot], b->stream));
    b->slot_rows[slot] = n_rows;
    b->last_started_rows = n_rows;
    b->samples_started++;
    b->n_out = 0; /* penalties changed the rows: sample each forward once */
    return TM_OK;
}

/* The tokens of the oldest sampling started and not finished (waits for its kernel). */
static tm_status sample_finish(tm_backend *backend, int32_t *tokens, tm_error_t *error) {
    cuda_backend *b = backend->context;
    if (b->samples_finished == b->samples_started)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: sample_finish without a sampling started");
    const int slot = (int)(b->samples_finished % 2);
    CHECK_CUDA(cudaEventSynchronize(b->tokens_copied[slot]));
    memcpy(tokens, b->host_tokens + (size_t)slot * b->capacity, (size_t)b->slot_rows[slot] * 4);
    if (b->options.time_steps) time_step(b, b->samples_finished);
    b->samples_finished++;
    return TM_OK;
}

static tm_status sample(tm_backend *backend, int n_rows, const tm_sample_row *rows, int32_t *tokens, tm_error_t *error) {
    cuda_backend *b = backend->context;
    if (b->samples_started != b->samples_finished)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: sample while a sampling started is not finished");
    tm_status s = sample_start(backend, n_rows, rows, error);
    return s ? s : sample_finish(backend, tokens, error);
}

static void memory(const tm_backend *backend, tm_backend_memory *out) { *out = ((const cuda_backend *)backend->context)->memory; }

static void backend_free(tm_backend *backend) {
    if (!backend) return;
    if (backend->context) release(backend->context);
    free(backend);
}

tm_status tm_backend_cuda_create(const tm_model *model, const tm_backend_cuda_options *options, tm_backend **out, tm_error_t *error) {
    *out = NULL;
    tm_backend_cuda_options defaults;
    tm_backend_cuda_options_default(&defaults);
    if (!options) options = &defaults;
    char name[256];
    if (!tm_cuda_device_name(name, sizeof name))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "cuda backend: no CUDA device is available");
    int count = 0;
    CHECK_CUDA(cudaGetDeviceCount(&count));
    if (options->device < 0 || options->device >= count)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: device %d does not exist (%d present)", options->device, count);
    CHECK_CUDA(cudaSetDevice(options->device));
    const tm_model_config *c = &model->config;
    cuda_backend *b = calloc(1, sizeof *b);
    tm_backend *backend = calloc(1, sizeof *backend);
    if (!b || !backend || !(b->layers = calloc((size_t)c->n_layer * 9, sizeof *b->layers))) {
        free(backend);
        if (b) release(b);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
    }
    b->model = model;
    b->options = *options;
    tm_status s = TM_OK;
    cudaError_t status = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
    if (status != cudaSuccess)
        s = tm_error_set(error, TM_ERR_INTERNAL, "CUDA: cudaStreamCreateWithFlags failed: %s", cudaGetErrorString(status));
    cublasStatus_t blas = s ? CUBLAS_STATUS_SUCCESS : cublasCreate(&b->cublas);
    if (!s && blas != CUBLAS_STATUS_SUCCESS)
        s = tm_error_set(error, TM_ERR_INTERNAL, "cuBLAS: cublasCreate failed: %s", cublasGetStatusString(blas));
    if (!s) s = device_alloc(b, &b->cublas_workspace, CUBLAS_WORKSPACE_BYTES, &b->memory.workspace, "cuBLAS workspace", error);
    if (!s && (blas = cublasSetWorkspace(b->cublas, b->cublas_workspace, CUBLAS_WORKSPACE_BYTES)) != CUBLAS_STATUS_SUCCESS)
        s = tm_error_set(error, TM_ERR_INTERNAL, "cuBLAS: cublasSetWorkspace failed: %s", cublasGetStatusString(blas));
    for (int i = 0; i < 3; i++) b->launch_for[i] = b->timed[i] = -1;
    for (int i = 0; i < 3 && !s && options->time_steps; i++)
        if ((status = cudaEventCreate(&b->launched[i])) != cudaSuccess || (status = cudaEventCreate(&b->copied[i])) != cudaSuccess)
            s = tm_error_set(error, TM_ERR_INTERNAL, "CUDA: cudaEventCreate failed: %s", cudaGetErrorString(status));
    for (int i = 0; i < 2 && !s; i++)
        if ((status = cudaEventCreateWithFlags(&b->tokens_copied[i], cudaEventDisableTiming)) != cudaSuccess)
            s = tm_error_set(error, TM_ERR_INTERNAL, "CUDA: cudaEventCreate failed: %s", cudaGetErrorString(status));
    for (int i = 0; i < 3 && !s; i++)
        if ((status = cudaEventCreateWithFlags(i < 2 ? &b->inputs_read[i] : &b->mirror_copied, cudaEventDisableTiming)) != cudaSuccess)
            s = tm_error_set(error, TM_ERR_INTERNAL, "CUDA: cudaEventCreate failed: %s", cudaGetErrorString(status));
    /* the arena: every tensor, 256-byte aligned, then the rope frequency factors */
    uint64_t total = 0;
    const tm_weight *top[3] = {&model->token_embd, &model->output_norm, &model->output};
    for (int i = 0; i < (c->tied_embeddings ? 2 : 3); i++) total += aligned(weight_bytes(top[i]));
    for (int l = 0; l < c->n_layer; l++) { /* tm_layer_weights is nine tm_weight fields in a row */
        const tm_weight *w = (const tm_weight *)&model->layers[l];
        for (int k = 0; k < 9; k++) total += aligned(weight_bytes(&w[k]));
    }
    uint64_t freq_bytes = model->rope_freqs ? (uint64_t)(c->n_rot / 2) * sizeof(float) : 0;
    if (!s) s = device_alloc(b, (void **)&b->arena, total + aligned(freq_bytes), &b->memory.weights, "weights", error);
    uint64_t offset = 0;
    if (!s) s = upload(b, &model->token_embd, &b->token_embd, &offset, error);
    if (!s) s = upload(b, &model->output_norm, &b->output_norm, &offset, error);
    if (!s && model->config.tied_embeddings) b->output = b->token_embd;
    else if (!s) s = upload(b, &model->output, &b->output, &offset, error);
    for (int l = 0; l < c->n_layer && !s; l++) {
        const tm_weight *w = (const tm_weight *)&model->layers[l];
        for (int k = 0; k < 9 && !s; k++) s = upload(b, &w[k], &b->layers[(size_t)l * 9 + k], &offset, error);
    }
    if (!s && freq_bytes) {
        b->rope_freqs = (float *)(b->arena + offset);
        status = cudaMemcpy(b->rope_freqs, model->rope_freqs, freq_bytes, cudaMemcpyHostToDevice);
        if (status != cudaSuccess) s = tm_error_set(error, TM_ERR_INTERNAL, "CUDA: copying rope_freqs failed: %s", cudaGetErrorString(status));
    }
    if (s) {
        release(b);
        free(backend);
        return s;
    }
    backend->name = "cuda";
    backend->context = b;
    backend->forward = forward;
    backend->free = backend_free;
    backend->memory = memory;
    if (model->config.n_vocab <= TM_CUDA_SAMPLE_MAX_VOCAB) { /* else the engine samples on the host */
        backend->sample = sample;
        backend->sample_start = sample_start;
        backend->sample_finish = sample_finish;
    }
    backend->step_timing = step_timing;
    *out = backend;
    return TM_OK;
}
