/*
 * kernels.h - C-linkage launchers of the CUDA kernels (no CUDA types: pointers are device
 * pointers passed as void *, the stream as void *; NULL is the default stream).
 * Every launcher returns 0 on success or the cudaError_t value, after printing the failing
 * call with file and line.
 */
#ifndef TM_CUDA_KERNELS_H
#define TM_CUDA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weights in device memory (weights.cu): GGUF's block layout row after row, q6_k blocks padded from
 * 210 to 224 bytes (16-byte aligned), q8_0 rows split into their int8 values then their half
 * scales (the same bytes a row). Every launcher below takes weights in this layout.
 * tm_cuda_weight_row_bytes: bytes of one row of `cols` elements in it (0: not whole blocks or an
 * unknown type); tm_cuda_upload_weight: rows x cols GGUF-layout weights from host memory into it
 * at `device` (tm_cuda_weight_row_bytes * rows bytes), returning when the copy is done. */
uint64_t tm_cuda_weight_row_bytes(int type, int64_t cols);
int tm_cuda_upload_weight(int type, void *device, const void *host, int64_t rows, int64_t cols, void *stream);

/* y[r] = dot(W[r, :], x) for rows of `cols` elements of ggml type `type` (float activations,
 * float32 accumulation). Types: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k. */
int tm_cuda_gemv(int type, const void *weights, int64_t rows, int64_t cols, const float *x, float *y, void *stream);

/* The batched decode product: y[j][r] = dot(W[r, :], x[j]) for n_tokens (1..16) activation rows
 * x[j] (cols floats each), reading each weight once for all of them. */
#define TM_CUDA_GEMV_MAX_TOKENS 16
int tm_cuda_gemv_batched(int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens, float *y,
                         void *stream);

/* Activations quantized for the fast decode products: n_rows rows of n_per_row floats (a multiple
 * of 256, else cudaErrorInvalidValue; the tokens' rows back to back), n = n_rows * n_per_row
 * values, become int8 values with one scale d = max |x| / 127 a 256-value block (as the CPU's q8_K
 * for the k-quants), stored as q8_1 (named for its pairs) at q8: n int8 values, then n / 32 pairs of
 * halves (d, d * sum of the 32-value sub-block's values), then, for one row only, the n int8 values
 * again in the order the one-token products read them (kernels/cuda/quant.cuh);
 * tm_cuda_q8_1_bytes(n) bytes. */
int tm_cuda_quantize_q8_1(const float *x, int64_t n_rows, int64_t n_per_row, void *q8, void *stream);
uint64_t tm_cuda_q8_1_bytes(int64_t n);
/* The fast decode product for q4_k, q5_k, q6_k and q8_0 weights (tm_cuda_gemv_q8_supported): y[j][r] =
 * dot(W[r, :], x[j]) for n_tokens (1..16) rows of x given as q8_1 (tm_cuda_quantize_q8_1 of
 * n_tokens * cols floats, cols % 256 == 0), integer dot products. One token: dp4a with float
 * scales per 32-element sub-block, or on sm_90 for large products weights streamed through shared
 * memory (gemv_stream.cu: the same sub-block dots; a wide row's partial sums added in another
 * order); 2-16 tokens: int8 tensor cores (a 256-column block's sub-block sums times
 * their integer weight scales added as integers, then the block's scales once). q8_0
 * (gemv_q8_0.cu): dp4a at one token, int8 tensor cores for 2-16 where the rows are whole 16-row
 * tiles (dp4a otherwise). */
int tm_cuda_gemv_q8_supported(int type);
int tm_cuda_gemv_q8(int type, const void *weights, int64_t rows, int64_t cols, const void *q8, int n_tokens, float *y,
                    void *stream);

/* Up to TM_CUDA_GEMV_MAX_PARTS such products sharing one input (Q/K/V; gate/up) in one launch:
 * part i writes parts[i].y[j][r]. cudaErrorNotSupported when a part's rows do not divide into the
 * kernel's rows per warp (1, 2 or 4 by token count); then call tm_cuda_gemv_q8 per part. */
#define TM_CUDA_GEMV_MAX_PARTS 3
typedef struct tm_cuda_gemv_part {
    const void *weights;
    int type;
    int64_t rows;
    float *y;
} tm_cuda_gemv_part;
int tm_cuda_gemv_q8_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *q8, int n_tokens, void *stream);
/* The same for q8_0 parts only (gemv_q8_0.cu; tm_cuda_gemv_q8 and tm_cuda_gemv_q8_parts send q8_0 here,
 * and q8_0 beside other types gets cudaErrorNotSupported from tm_cuda_gemv_q8_parts): each part's
 * result equals its own launch bit for bit. cudaErrorNotSupported for other types, cols not a
 * multiple of 256, or weights not 16-byte aligned. */
int tm_cuda_gemv_q8_0_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *q8, int n_tokens, void *stream);
/* The one-token product of f16 or bf16 weights (float activations, float32 accumulation) for up to
 * TM_CUDA_GEMV_MAX_PARTS parts sharing x (cols floats) in one launch (gemv16.cu): part i writes
 * parts[i].y[r]; each part's result equals its own launch bit for bit. cudaErrorNotSupported for
 * mixed or other types, cols not a multiple of 8, or weights or x not 16-byte aligned (tm_cuda_gemv
 * then takes its generic kernel). */
int tm_cuda_gemv_16bit_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, void *stream);

/* The prefill product on tensor cores: y[j][r] = dot(W[r, :], x[j]) for any n_tokens.
 * Activations are rounded to f16 (bf16 for bf16 weights) and accumulated in float32. q4_k, q5_k
 * and q6_k weights go through tm_cuda_gemm_fused (dequantized inside the product) where it pays;
 * otherwise, and for other quantized weights, they are dequantized to f16 in row tiles of at most
 * workspace_bytes - n_tokens * cols * 2 bytes and multiplied by cuBLAS (`cublas` is a
 * cublasHandle_t bound to `stream`), as are f16 / bf16 weights; f32 weights use SGEMM.
 * Returns 0, a cudaError_t, or -(cublasStatus_t) for a cuBLAS failure. */
int tm_cuda_gemm(void *cublas, int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens, float *y,
                 void *workspace, uint64_t workspace_bytes, void *stream);
/* Workspace tm_cuda_gemm needs at least (one tile of 128 rows plus the converted activations). */
uint64_t tm_cuda_gemm_min_workspace(int64_t cols, int n_tokens);
/* The prefill product of q4_k / q5_k / q6_k weights with the dequantization fused into the
 * tensor-core tile loads (gemm_fused.cu): y[j][r] = dot(W[r, :], x[j]) for x already rounded to
 * f16 (n_tokens rows of cols halves, 16-byte aligned), float32 accumulation, no workspace.
 * cudaErrorNotSupported (nothing launched) for other types and where it does not pay: by default
 * it runs (wgmma, sm_90a) for at most 512 tokens on grids of at least 3/4 of the SMs; with
 * TM_GEMM_FUSED=0 in the environment never, 1 always on mma.sync, 2 always (wgmma where the
 * device runs it, else mma.sync). */
int tm_cuda_gemm_fused(int type, const void *weights, int64_t rows, int64_t cols, const void *x_f16, int n_tokens, float *y,
                       void *stream);
/* The decode product of f16 / bf16 weights for 2..TM_CUDA_GEMV_MAX_TOKENS tokens on tensor cores
 * (gemv_mma16.cu): y[j][r] = dot(W[r, :], x[j]), activations rounded to the weight's type as in
 * tm_cuda_gemm, float32 accumulation, no workspace. cudaErrorNotSupported (nothing launched) for
 * other types and token counts, rows not a multiple of 16, cols not a multiple of 32, weights or
 * x not 16-byte aligned, or with TM_MMA16=0 in the environment (a measuring aid). */
int tm_cuda_gemv_16bit_tokens(int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens, float *y,
                              void *stream);
/* The same for up to TM_CUDA_GEMV_MAX_PARTS products sharing x (n_tokens rows of cols floats) in
 * one launch: part i writes parts[i].y[j][r], equal bit for bit to its own launch. Also declined
 * for mixed types, or with TM_MMA16_PARTS=0 (a measuring aid) for more than one part. */
int tm_cuda_gemv_16bit_tokens_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, int n_tokens,
                                    void *stream);
/* The same for f16 weights with the activations already in f16 (x16: n_tokens x cols halves, 16-byte
 * aligned, rounded as the float path rounds x): the same results bit for bit, half the activation
 * bytes, no conversions in the loop. cudaErrorNotSupported where the float form would be, or for bf16. */
int tm_cuda_gemv_f16_tokens_parts_half_x(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *x16, int n_tokens,
                                         void *stream);

/* Entries to write into a device table (the page-table mirror) before a step reads it: *count
 * pairs of (index, value), entries[2i] the index (8-byte aligned; the buffer holds `capacity`
 * pairs, *count <= capacity, all of which a launch may read); count NULL: none. count and entries
 * may be in mapped pinned host memory (the launch reads them over the bus) or on the device. */
typedef struct tm_cuda_table_updates {
    const int32_t *count;
    const uint32_t *entries;
    int32_t *table;
    int capacity;
} tm_cuda_table_updates;

/* Runs of 4-byte words the step's first kernel copies from the host's staging buffer (pinned and
 * mapped) into the device's before any later kernel of the step reads them: run i is words[i] words
 * at word offset at[i] of both; n runs, n 0: none. */
#define TM_CUDA_INPUT_RUNS 6
typedef struct tm_cuda_inputs_copy {
    const uint32_t *from;
    uint32_t *to;
    int n;
    int at[TM_CUDA_INPUT_RUNS], words[TM_CUDA_INPUT_RUNS];
} tm_cuda_inputs_copy;

/* out[t] = row tokens[t] of an embedding table (n_embd columns of ggml type `type`), as floats; with a
 * feed map (fed: n_tokens ints, or NULL) a token t with fed[t] >= 0 takes row sampled[fed[t]]
 * instead (sampled: tokens drawn on the device, which the host has not seen yet); step_tokens
 * (device, n_tokens ints, or NULL) gets each row's token as embedded (tm_cuda_sample's fed_at reads
 * it). The same launch writes `updates` and `copy` (a step's first kernel: its page-table growth and
 * its other inputs, read where the host wrote them instead of by transfers of their own). tokens and
 * fed may be in mapped pinned host memory or on the device. A plain launch, so every later kernel of
 * the step sees what it wrote. */
int tm_cuda_embed(int type, const void *table, int n_embd, const int32_t *tokens, const int32_t *fed, const int32_t *sampled,
                  int n_tokens, float *out, int32_t *step_tokens, tm_cuda_table_updates updates, tm_cuda_inputs_copy copy,
                  void *stream);
/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for n_rows rows of n floats (out may be x). */
int tm_cuda_rmsnorm(float *out, const float *x, const float *weight, int n_rows, int n, float eps, void *stream);
/* Rope (llama.cpp's "normal", as engine/ops_cpu.c) in place on n_tokens x n_heads x head_dim floats;
 * positions: one per token (device); freq_factors: n_rot/2 floats (device) or NULL. */
int tm_cuda_rope(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                 const float *freq_factors, const int32_t *positions, void *stream);
/* The residual add fused with the next norm: x_out[r] = x[r] + delta[r] (delta may be NULL: no add,
 * x_out unused), then out[r] = rmsnorm(x_out[r]) * weight; with q8 (n % 256 == 0) also out as q8_1
 * blocks (the layout of tm_cuda_quantize_q8_1 over n_rows * n values, bit-identical to quantizing
 * out separately). n % 4 == 0. x_out may be x (in place), but a separate x_out lets one or two
 * rows (decode) be normalized by many blocks a row (the residual stream then alternates between two
 * buffers); out is bit-identical to tm_cuda_rmsnorm of the sum where both take the same kernel. */
int tm_cuda_add_rmsnorm(float *out, float *x_out, const float *x, const float *delta, const float *weight, int n_rows, int n, float eps,
                        void *q8, void *stream);
/* tm_cuda_add_rmsnorm without q8, also writing out rounded to f16 into out16 (n_rows x n halves, 16-byte
 * aligned; what tm_cuda_gemv_f16_tokens_parts_half_x takes): only for the out-of-place norm of a
 * decode step of up to TM_CUDA_GEMV_MAX_TOKENS rows (the sliced kernel; cudaErrorNotSupported
 * otherwise, nothing written). */
int tm_cuda_add_rmsnorm_half(float *out, void *out16, float *x_out, const float *x, const float *delta, const float *weight,
                             int n_rows, int n, float eps, void *stream);
/* gate[i] = silu(gate[i]) * up[i]. */
int tm_cuda_swiglu(float *gate, const float *up, int64_t n, void *stream);
/* The same, also writing each result rounded to f16 into out16 (n halves, 16-byte aligned; what
 * tm_cuda_gemv_f16_tokens_parts_half_x takes). */
int tm_cuda_swiglu_half(float *gate, const float *up, int64_t n, void *out16, void *stream);
/* The same over n_rows rows of n_per_row values, also writing the result as q8_1
 * (n_per_row % 256 == 0), as tm_cuda_quantize_q8_1 would. */
int tm_cuda_swiglu_q8(float *gate, const float *up, int64_t n_rows, int64_t n_per_row, void *q8, void *stream);
/* out16[i] = x[i] rounded to f16 (nearest even, as the f16 products round float input; n halves,
 * 16-byte aligned): for producers that cannot write the copy themselves. */
int tm_cuda_float_to_half(const float *x, int64_t n, void *out16, void *stream);
/* x[i] += delta[i]. */
int tm_cuda_add(float *x, const float *delta, int64_t n, void *stream);

/* The paged KV cache in device memory (engine/kv_cache.h's geometry): pages of page_size bytes
 * holding elements of `type`, tm_kv_type's values: TM_CUDA_KV_F16 (0), TM_CUDA_KV_F32 (1) or
 * TM_CUDA_KV_Q8 (2: int8 values, and for the head vector at byte offset o of the pool its float
 * scale at scales[o / head_dim], page_size a multiple of head_dim: the host cache's scale slots in
 * the same order, tm_kv_scale_storage). scales is NULL for the other types. */
enum { TM_CUDA_KV_F16 = 0, TM_CUDA_KV_F32 = 1, TM_CUDA_KV_Q8 = 2 };
typedef struct tm_cuda_kv {
    void *pool;
    float *scales;
    int type;
    uint32_t page_size;
} tm_cuda_kv;
/* Whether the kernels take a cache of this type, page size and head dim (0: the 8-bit type's page
 * size is not a multiple of head_dim, or no scales, or an unknown type). */
int tm_cuda_kv_valid(const tm_cuda_kv *kv, int head_dim);

/* Decode attention through the paged KV cache (layout of engine/kv_cache.h: rows [K heads][V heads],
 * any of tm_cuda_kv's types): for query token t and head h,
 * out[t][h] = softmax(q[t][h] . K[0..n_keys[t]) / sqrt(head_dim)) V[0..n_keys[t]) of kv head
 * h / (n_head / n_head_kv), reading token t's stream through pages[page_offsets[t]...].
 * Token t's keys are spread over S splits, max(min_keys_per_split, ceil(n_keys[t] / S)) keys each
 * (splits past n_keys[t] add nothing), S being n_splits or, where fewer fill one wave of the
 * device's resident blocks, that many; so a graph captured with the split count of the longest
 * context keeps the splits busy at any context. Where n_keys[t] <= 32 S and a kv head has 2 or
 * more query heads (head dims 32..256), the splits take 32 keys each instead (the block's warps
 * then split its query heads, not its keys); with n_splits > 1,
 * partials holds n_tokens * n_head * n_splits * (head_dim + 2) floats. All pointers are device
 * pointers; head_dim a multiple of 32, at most 256 (32, 64, 128 and 256 take the kernel that
 * reads each kv head's keys once for its whole group of query heads). q8 (optional, else NULL):
 * out is also written there as tm_cuda_quantize_q8_1 would (n_tokens * n_head * head_dim values;
 * n_head * head_dim % 256 == 0, else cudaErrorInvalidValue),
 * by the split-combine when there is one, so the output product needs no quantizing launch.
 * out16 (optional, else NULL; 16-byte aligned): out is also written there as f16, each value
 * rounded as tm_cuda_float_to_half rounds it (what tm_cuda_gemv_f16_tokens_parts_half_x takes), by
 * the split-combine when there is one, else by that conversion's launch. */
int tm_cuda_paged_attention(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                            const tm_cuda_kv *kv, const int32_t *pages,
                            const int64_t *page_offsets, const int32_t *n_keys, int n_splits, int min_keys_per_split,
                            float *partials, void *q8, void *out16, void *stream);

/* Decode attention as tm_cuda_paged_attention, without key splits: one block per token and kv head
 * (two or four kv heads where a group of 1 leaves a head's outputs short of a 256-value q8_1
 * block; at one token, a block per two query heads of a group of 4 or 8 at head dim 128), its 8
 * or 16 warps taking the token's keys 32 at a time in turn and merging in the block; so no
 * partials and no combine launch, and q8 (optional, as in tm_cuda_paged_attention) is written by
 * the same kernel where the group is 1, 4 or 8 (else by a quantize launch after it), out16
 * (optional, as in tm_cuda_paged_attention) by the same kernel always. At one token
 * of a group of 1 on sm_90 the blocks of a kv-head pair run as a cluster of 8 sharing its keys,
 * merged through distributed shared memory. Exact at any context; meant for steps whose every
 * context is short (a chunk or two a warp), or, for a group of 1, steps that fill most of a wave
 * (tm_cuda_decode_attention_whole_keys). f16 or 8-bit
 * cache, head dims 64 and 128, groups up to 8 (tm_cuda_decode_attention_whole_supported); cudaErrorNotSupported
 * (nothing launched) otherwise. */
int tm_cuda_decode_attention_whole_supported(int n_head, int n_head_kv, int head_dim, int kv_type);
/* The longest context (keys) up to which a decode step of n_tokens tokens is faster through
 * tm_cuda_decode_attention_whole than through the split path (measured on the H200); 0: never,
 * INT_MAX: any (a group of 1 whose step fills most of a wave of the kernel's blocks, or one token
 * of a group of 1 of an f16 cache on sm_90, in clusters). */
int tm_cuda_decode_attention_whole_keys(int n_tokens, int n_head, int n_head_kv, int head_dim, int kv_type);
/* Past this many keys in a step's longest context (longest_keys), a group of 1 of an f16 cache takes
 * the tensor-core form of tm_cuda_decode_attention_whole (a graph captured for one form serves the
 * steps of that form: decode graphs are keyed by it). */
#define TM_CUDA_DECODE_MMA_KEYS 256
/* longest_keys: the step's longest context, or any bound of it; it only picks the kernel's form
 * (exact at any context whichever). */
int tm_cuda_decode_attention_whole(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                   const tm_cuda_kv *kv, const int32_t *pages, const int64_t *page_offsets,
                                   const int32_t *n_keys, int longest_keys, void *q8, void *out16, void *stream);

/* Prefill (flash) attention, causal: tiles[2 i] is the first batch token of tile i and
 * tiles[2 i + 1] its token count (at most tm_cuda_flash_tile_tokens), tokens of one stream;
 * query token t sees keys 0..positions[t] of its stream (already appended). Head dims 32, 64,
 * 128 and 256; any of tm_cuda_kv's types; float32 math. */
int tm_cuda_flash_attention(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                            const int32_t *pages, const int64_t *page_offsets,
                            const int32_t *positions, const int32_t *tiles, int n_tiles, void *stream);
/* Tokens per flash tile for this head shape; 0 when the shape is unsupported. */
int tm_cuda_flash_tile_tokens(int head_dim, int n_head, int n_head_kv);
/* The same on tensor cores (flash_mma.cu; mma.sync, sm_80 and later): f16 or 8-bit cache (f32:
 * cudaErrorNotSupported, nothing launched; 8-bit values are scaled and rounded to f16 as they are
 * staged), head dims 64, 128 and 256, queries and probabilities rounded to f16, float32 accumulation. n_keys 0:
 * causal as above; n_keys > 0: every query sees keys 0..n_keys-1 of its stream (non-causal). */
int tm_cuda_flash_attention_mma(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                                const int32_t *pages, const int64_t *page_offsets, const int32_t *positions,
                                const int32_t *tiles, int n_tiles, int n_keys, void *stream);
/* Tokens per tile of tm_cuda_flash_attention_mma; 0 when the shape is unsupported. */
int tm_cuda_flash_mma_tile_tokens(int head_dim, int n_head, int n_head_kv);

/* Write the keys and values of n_tokens tokens (n_head_kv x head_dim floats each, from k and v)
 * at positions[t] of token t's stream (pages[page_offsets[t]...]), converted to the cache type
 * (8-bit: q = round(x / d), d = max |x| / 127 of the head vector, as engine/kv_cache.c's
 * tm_kv_store_vector). */
int tm_cuda_kv_append(const float *k, const float *v, int n_tokens, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                      const int32_t *pages, const int64_t *page_offsets, const int32_t *positions,
                      void *stream);

/* Sampling parameters of one logits row (engine/sampler.c's meaning); uniform: the draw in [0, 1)
 * the host took from the request's generator (used only when temperature > 0). */
typedef struct tm_cuda_sampling {
    float temperature, top_p, min_p, repetition_penalty;
    int top_k;                          /* <= 0 or >= the vocabulary: none */
    int n_penalized, penalized_offset;  /* the window's distinct ids: penalized[offset...] */
    int fed_at;                         /* -1, or t: the window also ends with step_tokens[t] (tm_cuda_embed's:
                                         * a token fed on the device, unseen by the host), penalized once
                                         * like the others (not again where penalized lists it) */
    double uniform;
} tm_cuda_sampling;
#define TM_CUDA_SAMPLE_MAX_TOP_K 1024   /* top-k up to this selects in one block's shared memory; above, by histograms */
#define TM_CUDA_SAMPLE_MAX_VOCAB (1 << 23)
/* tokens[r] = the token sampled from row r of logits (n_rows x n_vocab, n_vocab at most
 * TM_CUDA_SAMPLE_MAX_VOCAB, device; penalties are applied in place); the same
 * into host_tokens[r] too where host_tokens is not NULL (mapped pinned host memory: the host reads
 * them once the launch has finished, with no copy of their own). tokens is a device pointer;
 * penalized may be in mapped pinned host memory or on the device; step_tokens (device) is read only
 * for rows with fed_at >= 0 and a penalty. rows_on_host: rows is host memory
 * that the launcher reads, and up to TM_CUDA_SAMPLE_ARG_ROWS rows travel in the launch's arguments
 * (no trip to memory for them); else, or for more rows, the kernel reads rows where it points
 * (device or mapped pinned host memory). */
#define TM_CUDA_SAMPLE_ARG_ROWS 16
int tm_cuda_sample(float *logits, int n_rows, int n_vocab, const tm_cuda_sampling *rows, int rows_on_host, const int32_t *penalized,
                   const int32_t *step_tokens, int32_t *tokens, int32_t *host_tokens, void *stream);

/* Gather: out[i] = x[index[i]] for rows of n floats. */
int tm_cuda_gather_rows(const float *x, const int32_t *index, int n_out, int n, float *out, void *stream);

/* The rope angles of positions 0..n_positions-1 as tm_cuda_rope computes them, (cos, sin) in float
 * per (position, pair of the n_rot rotated dimensions): tm_cuda_rope_table_bytes of device memory. */
uint64_t tm_cuda_rope_table_bytes(int n_positions, int n_rot);
int tm_cuda_rope_table(void *angles, int n_positions, int n_rot, float freq_base, float freq_scale, const float *freq_factors,
                       void *stream);

/* Rope and KV append: the rope parameters (as tm_cuda_rope), the cache (kv; pages: the page
 * tables, token t's at pages + page_offsets[t]; 8-bit vectors rounded as tm_cuda_kv_append) and one
 * position per token (device). angles (optional, else NULL): a tm_cuda_rope_table of n_angles
 * positions with the same rope parameters, read instead of computing the angle below n_angles. */
typedef struct tm_cuda_rope_kv {
    int n_head, n_head_kv, head_dim, n_rot;
    float freq_base, freq_scale;
    const float *freq_factors;
    const void *angles;
    int n_angles;
    tm_cuda_kv kv;
    const int32_t *pages;
    const int64_t *page_offsets;
    const int32_t *positions;
    /* tm_cuda_gemv_q8_qkv_rope only: the step's targets (tm_cuda_rope_targets, for the same tokens)
     * and the layer whose keys and values are made (pages is that layer's page tables) */
    const void *targets;
    int layer;
} tm_cuda_rope_kv;

/* Where the step's queries, keys and values go, found once a step so that the Q/K/V products'
 * epilogue reads them from fixed addresses (no chain of dependent loads at the end of each block):
 * for each of n_tokens tokens its rope angles, and for each of n_layer layers the address of its
 * cache row (of each page of it, where a row spans pages); layer l's page tables are at
 * pages + l * layer_pages (page_offsets, positions, pages: as in tm_cuda_rope_kv; its targets and
 * layer are not read). tm_cuda_rope_targets_bytes of device memory. */
uint64_t tm_cuda_rope_targets_bytes(int n_tokens, int n_layer, const tm_cuda_rope_kv *rope);
int tm_cuda_rope_targets(void *targets, int n_tokens, int n_layer, int64_t layer_pages, const tm_cuda_rope_kv *rope, void *stream);

/* tm_cuda_rope on q (n_head heads) and k (n_head_kv heads) and tm_cuda_kv_append of the roped
 * keys and the values, in one launch, bit-identical to the three separate calls (k is read, not
 * changed). */
int tm_cuda_rope_kv_append(float *q, const float *k, const float *v, int n_tokens, const tm_cuda_rope_kv *rope, void *stream);

/* The Q/K/V products (tm_cuda_gemv_q8_parts with parts[0..2] = Q, K, V, n_head * head_dim and
 * n_head_kv * head_dim rows) of layer rope->layer with the rope and the KV append applied as their
 * outputs are made (rope->targets: tm_cuda_rope_targets of this step, written earlier in the stream):
 * the roped queries go to parts[0].y, the roped keys and the values only into the cache (parts[1].y
 * and parts[2].y are not written). The same bits as tm_cuda_gemv_q8_parts then tm_cuda_rope_kv_append,
 * one launch fewer. cudaErrorNotSupported (nothing launched) for an 8-bit cache (a tile holds 16
 * rows of a head vector, not the whole vector its scale needs), or where the products would not take
 * pairs_kernel (one token: no q5_k part, rows a multiple of 4, not TM_GEMV_STREAM=1 or
 * TM_GEMV_PAIRS=0) or the int8 tensor-core kernel (2-16 tokens, rows a multiple of 16); then make
 * the two calls. */
int tm_cuda_gemv_q8_qkv_rope(const tm_cuda_gemv_part *parts, int64_t cols, const void *q8, int n_tokens, const tm_cuda_rope_kv *rope,
                             void *stream);

/* Whether a CUDA device is usable here; writes its name. */
int tm_cuda_device_name(char *name, int capacity);
/* Writes the instrumented kernels' block timelines (stamps.cuh) to `path`, the stream idle:
 * cudaErrorNotSupported in a build without TM_BLOCK_STAMPS. */
int tm_cuda_stamps_dump(const char *path);
/* The PCI bus id of CUDA device `device` ("0000:1B:00.0", what NVML finds a device by); 0 when it has none. */
int tm_cuda_device_pci_bus_id(int device, char *bus_id, int capacity);

#ifdef __cplusplus
}
#endif

#endif /* TM_CUDA_KERNELS_H */
