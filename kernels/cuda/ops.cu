/*
 * ops.cu - the small per-token operations of the forward pass: embedding lookup (every weight
 * type), RMSNorm, rope, SwiGLU and residual add. Each matches the CPU reference
 * (engine/ops_cpu.c, engine/quant.c) within the tolerance its test states: RMSNorm sums squares
 * in float64 and rope computes its angle in float64, as the CPU does.
 */
#include "kernels.h"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "quant.cuh"
#include "stamps.cuh"

TM_STAMPS_RING(ops, 1u << 18)

/* Where the host wrote a step's inputs (mapped pinned memory), every load is a trip over the bus,
 * and each warp that loads a word, even one every lane shares, is a request of its own: a decode
 * step's embedding launch at 8 tokens is 128 blocks of 8 warps. So the words a whole block needs
 * (its token, feed and the table's entry count) are loaded by its thread 0 alone, and of the
 * table's entries only the first EMBED_EARLY_ENTRIES before the count is known: a decode step's
 * growth at 8 sequences (the 7B's K and V take 16 KiB a token a layer, 4 pages: 8 x 32 x 4 = 1024
 * entries every step; the 8B's 256), beyond which entries cost a second trip; each thread issues its
 * loads before its first store, one trip for such a step. Until session 58 every warp loaded the
 * three words and the first 4096 threads an entry each (the whole buffer). H200, the launch's median
 * in a plain-launch profile (CUPTI), two runs each, one call: a one-token decode step 5.25, 5.01 ->
 * 4.67, 4.51 us (7B), 6.53, 6.24 -> 5.54, 4.72 (8B); at 8 tokens (7B 14.0, 16.8 -> 14.4, 14.9; 8B
 * 20.5, 21.4 -> 18.2, 12.8, min ~7 either way) and the prompts' launches within their spread (256
 * early entries; 1024 in another call: 7B x8 13.5, 12.1 -> 7.7, 13.6, 8B 18.8, 14.9 -> 14.0, 13.4,
 * one token unchanged); decode and prompt tokens/s unchanged (7B x1 622.3, 622.4 -> 622.5, 622.6).
 * What made the 8-token launch 2-3x the one-token one (bimodal: min ~7 us, p90 15-21): its 128
 * blocks' loads of the one host line queueing (session 59; a row one block now: EMBED_RUN below). */
#define EMBED_EARLY_ENTRIES 1024

/* The step's inputs as the host wrote them (copy, updates: up to TM_CUDA_INPUT_RUNS runs and a
 * table's entries), spread over every thread of the launch: load_step_inputs loads a thread's first
 * word of the runs and (among the first EMBED_EARLY_ENTRIES) its entry before the barrier that
 * publishes the entries' count (embed_kernel: its block's thread 0 loads the count);
 * store_step_inputs stores them after it, and the words and entries past the launch's threads, the
 * entries in a loop of UNROLL a thread a pass. */
struct step_inputs {
    uint2 entry;
    uint32_t word;
    int word_offset; /* -1: no word for this thread */
    bool early;
};

/* The word offset (in copy.from and copy.to) of the runs' w-th word, or -1 past their end. */
__device__ __forceinline__ int step_input_word(const tm_cuda_inputs_copy &copy, int w) {
    for (int run = 0; run < copy.n; run++) {
        if (w < copy.words[run]) return copy.at[run] + w;
        w -= copy.words[run];
    }
    return -1;
}

__device__ __forceinline__ step_inputs load_step_inputs(const tm_cuda_inputs_copy &copy, const tm_cuda_table_updates &updates, int thread) {
    step_inputs in = {};
    const uint2 *entries = reinterpret_cast<const uint2 *>(updates.entries);
    in.early = updates.count && thread < min(updates.capacity, EMBED_EARLY_ENTRIES);
    if (in.early) in.entry = entries[thread];
    in.word_offset = step_input_word(copy, thread);
    if (in.word_offset >= 0) in.word = copy.from[in.word_offset];
    return in;
}

__device__ __forceinline__ void store_step_inputs(const step_inputs &in, const tm_cuda_inputs_copy &copy, const tm_cuda_table_updates &updates,
                                                  int thread, int threads, int n_entries) {
    if (in.word_offset >= 0) {
        copy.to[in.word_offset] = in.word;
        for (int w = thread + threads, at; (at = step_input_word(copy, w)) >= 0; w += threads) copy.to[at] = copy.from[at];
    }
    const uint2 *entries = reinterpret_cast<const uint2 *>(updates.entries);
    if (thread < n_entries) {
        const uint2 entry = in.early ? in.entry : entries[thread];
        updates.table[entry.x] = (int32_t)entry.y;
    }
    constexpr int UNROLL = 4;
    for (int base = thread + threads; base < n_entries; base += UNROLL * threads) {
        uint2 entry[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            if (base + u * threads < n_entries) entry[u] = entries[base + u * threads];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            if (base + u * threads < n_entries) updates.table[entry[u].x] = (int32_t)entry[u].y;
    }
}

/* Threads of an embedding launch's block. A thread takes a run of EMBED_RUN consecutive values of
 * its token's row (row_run16: the run's loads issued together, one trip), so a 4096-wide row is one
 * block; where the row's width is not a multiple of EMBED_RUN (or TM_EMBED_RUN=1, a measuring aid) a
 * thread takes one value. Why one block a row: every block loads the step's host words (token, feed,
 * count) over the bus, and the loads of one host line queue behind each other. H200 (session 59,
 * CUPTI medians a launch, a value a thread -> a run a thread): 8 tokens 9.9-12.3 -> 5.0 us (7B,
 * q4_k rows), 13.6-19.7 -> 5.3-5.4 (8B, f16), a 128-token prompt ~31 -> 19-21, one token unchanged
 * (4.7-4.9). A thread's 16 values read strided a value at a time (the first try) took 10.7 us for
 * the 7B's one q4_k row. */
#define EMBED_THREADS 256
#define EMBED_RUN 16

/* out[t] = dequantized row token(t) of the table, token(t) = tokens[t], or with a feed map
 * (fed != NULL, fed[t] >= 0) the token a sampling on the device drew for row fed[t]
 * (sampled[fed[t]]): a decode step launched before the host has seen its tokens. Block (t, y)
 * takes values y * EMBED_THREADS * RUN.. of row t (RUN consecutive values a thread: 1 or
 * EMBED_RUN); its thread 0 loads tokens[t], fed[t] and the table updates' count together (one trip
 * where they are in host memory). Where step_tokens is not NULL, block (t, 0) writes token(t)
 * there (the step's tokens as embedded: the sampling reads a fed token's id there, for its
 * penalty). */
template <int TYPE, int RUN>
__global__ void __launch_bounds__(EMBED_THREADS) embed_kernel(const uint8_t *table, int n_embd, const int32_t *tokens, const int32_t *fed,
                                                              const int32_t *sampled, float *out, int32_t *step_tokens,
                                                              tm_cuda_table_updates updates, tm_cuda_inputs_copy copy) {
    __shared__ int block_words[3]; /* token, fed, the entries' count */
    const int thread = (blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x, threads = gridDim.x * gridDim.y * blockDim.x;
    const step_inputs in = load_step_inputs(copy, updates, thread);
    if (threadIdx.x == 0) {
        const int token = tokens[blockIdx.x], from = fed ? fed[blockIdx.x] : -1, count = updates.count ? *updates.count : 0;
        block_words[0] = token, block_words[1] = from, block_words[2] = count;
    }
    __syncthreads();
    const int token = block_words[0], from = block_words[1];
    store_step_inputs(in, copy, updates, thread, threads, block_words[2]);
    const int64_t row_bytes = (int64_t)n_embd / traits<TYPE>::block * traits<TYPE>::stride;
    const int embedded = from >= 0 ? sampled[from] : token;
    if (step_tokens && blockIdx.y == 0 && threadIdx.x == 0) step_tokens[blockIdx.x] = embedded;
    const uint8_t *row = table + (int64_t)embedded * row_bytes;
    const int first = (blockIdx.y * EMBED_THREADS + threadIdx.x) * RUN;
    if (first >= n_embd) return;
    float *to = out + (int64_t)blockIdx.x * n_embd + first;
    if constexpr (RUN == 1) {
        *to = row_value<TYPE>(row, n_embd, first);
    } else {
        float v[RUN];
        row_run16<TYPE>(row, n_embd, first, v);
#pragma unroll
        for (int k = 0; k < RUN; k += 4) *reinterpret_cast<float4 *>(to + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
    }
}

template <int TYPE>
static cudaError_t launch_embed(const void *table, int n_embd, const int32_t *tokens, const int32_t *fed, const int32_t *sampled,
                                int n_tokens, float *out, int32_t *step_tokens, tm_cuda_table_updates updates, tm_cuda_inputs_copy copy,
                                cudaStream_t s) {
    if (n_embd % traits<TYPE>::block || (fed && !sampled) || (updates.count && (!updates.entries || !updates.table || (uintptr_t)updates.entries % 8 || updates.capacity < 0)) ||
        copy.n < 0 || copy.n > TM_CUDA_INPUT_RUNS || (copy.n && (!copy.from || !copy.to)))
        return cudaErrorInvalidValue;
    for (int r = 0; r < copy.n; r++)
        if (copy.words[r] < 0 || copy.at[r] < 0) return cudaErrorInvalidValue;
    static const bool runs_allowed = tm_env_int("TM_EMBED_RUN", EMBED_RUN) != 1;
    const bool runs = runs_allowed && n_embd % EMBED_RUN == 0 && (uintptr_t)out % 16 == 0;
    const int per_block = EMBED_THREADS * (runs ? EMBED_RUN : 1);
    const dim3 grid((unsigned)n_tokens, (unsigned)((n_embd + per_block - 1) / per_block));
    const auto kernel = runs ? embed_kernel<TYPE, EMBED_RUN> : embed_kernel<TYPE, 1>;
    kernel<<<grid, EMBED_THREADS, 0, s>>>((const uint8_t *)table, n_embd, tokens, fed, sampled, out, step_tokens, updates, copy);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_embed(int type, const void *table, int n_embd, const int32_t *tokens, const int32_t *fed, const int32_t *sampled,
                             int n_tokens, float *out, int32_t *step_tokens, tm_cuda_table_updates updates, tm_cuda_inputs_copy copy,
                             void *stream) {
    return dispatch_weight_type(type, [&](auto t) {
        return launch_embed<decltype(t)::value>(table, n_embd, tokens, fed, sampled, n_tokens, out, step_tokens, updates, copy,
                                                (cudaStream_t)stream);
    });
}

/* Sum over the block (all threads call; blockDim.x a multiple of 32, at most 1024). */
__device__ double block_sum(double value) {
    __shared__ double warp_sums[32];
    value = sum_over_warp(value);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
    __syncthreads();
    double total = 0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) total += warp_sums[w];
    return total;
}

/* One block per row, optionally after the residual add (x_out = x + delta; x_out may be x),
 * optionally also writing the result as q8_1 blocks (q8: qs for n_rows * n values, then the (d,
 * d * sum) pairs; 8 warps each 256-value block, as in tm_cuda_quantize_q8_1, with the same
 * arithmetic: with q8, 1024 threads). float64 sum of squares. */
__global__ void rmsnorm_kernel(float *out, float *x_out, const float *x, const float *delta, const float *weight, int n, float eps,
                               q8_out q8) {
    tm_grid_dependency();
    const float *row = x + (int64_t)blockIdx.x * n;
    float *row_out = x_out + (int64_t)blockIdx.x * n;
    const float *add = delta ? delta + (int64_t)blockIdx.x * n : nullptr;
    double sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float value = row[i];
        if (add) row_out[i] = value = value + add[i];
        sum += (double)value * value;
    }
    const float scale = (float)(1.0 / sqrt(block_sum(sum) / n + eps));
    const float *summed = add ? row_out : row; /* each element re-read by the thread that wrote it */
    const int lane = threadIdx.x % 32;
    for (int base = threadIdx.x - lane; base < n; base += blockDim.x) { /* whole warps stay together */
        int i = base + lane;
        float value = i < n ? summed[i] * scale * weight[i] : 0.0f;
        if (i < n) out[(int64_t)blockIdx.x * n + i] = value;
        if (q8.qs) quantize_q8_1_block(value, (int64_t)blockIdx.x * n + i, q8); /* n % 256 == 0, 1024 threads */
    }
}

/* The same for rows of at most PER_THREAD x 1024 elements (PER_THREAD 4 or 8: launch_rmsnorm):
 * each thread loads its (up to) PER_THREAD elements and
 * their weights once, all loads in flight together, and keeps them in registers across the
 * reduction, instead of reading the row and then the weights a second time (a 4096-wide decode row
 * measured 8 us, most of it two dependent trips to memory). Same arithmetic, same results. Its
 * PER_THREAD values go to q8 in one quantize_q8_1_blocks call, one pair of barrier syncs for all
 * (with per-32 scales, the warp reductions interleaved instead of one after another had measured no
 * faster: 70B decode x1 53.68 against 53.83 on the H200). */
template <int PER_THREAD>
__global__ void rmsnorm_registers_kernel(float *out, float *x_out, const float *x, const float *delta, const float *weight, int n, float eps,
                                         q8_out q8) {
    tm_grid_dependency();
    const float *row = x + (int64_t)blockIdx.x * n;
    float *row_out = x_out + (int64_t)blockIdx.x * n;
    const float *add = delta ? delta + (int64_t)blockIdx.x * n : nullptr;
    float v[PER_THREAD], w[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        v[k] = i < n ? row[i] : 0.0f;
        w[k] = i < n ? weight[i] : 0.0f;
        if (add && i < n) v[k] = v[k] + add[i];
    }
    double sum = 0;
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (add && i < n) row_out[i] = v[k];
        sum += (double)v[k] * v[k];
    }
    const float scale = (float)(1.0 / sqrt(block_sum(sum) / n + eps));
    float value[PER_THREAD];
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        value[k] = i < n ? v[k] * scale * w[k] : 0.0f;
        if (i < n) out[(int64_t)blockIdx.x * n + i] = value[k];
    }
    /* value k of the threads: blockDim.x consecutive elements, a multiple of 256 with q8 */
    const int64_t row_start = (int64_t)blockIdx.x * n;
    if (q8.qs) quantize_q8_1_blocks<PER_THREAD>(value, row_start + threadIdx.x, blockDim.x, row_start + n, q8);
}

#define NORM_SLICE 256 /* the sliced norms' threads a block: one q8_1 block of a row */

/* A sliced norm's normalized value into out, and into out16 when it is asked for. */
__device__ __forceinline__ void norm_slice_out(float *out, __half *out16, int64_t element, float value) {
    out[element] = value;
    if (out16) out16[element] = __float2half_rn(value); /* as the f16 products round their float input */
}

/* The end of a sliced norm's thread: its element (`in_row`: inside the row) normalized into out,
 * the residual sum into x_out (`added`), the f16 copy into out16, and with q8 its 256-value block
 * quantized (`warp_in_row`: its warp's elements inside the row; n % 256 == 0). */
__device__ __forceinline__ void norm_slice_write(float *out, float *x_out, bool added, int64_t element, bool in_row, bool warp_in_row,
                                                 float mine, float scale, float w, const q8_out &q8, __half *out16) {
    const float value = in_row ? mine * scale * w : 0.0f;
    if (in_row) {
        if (added) x_out[element] = mine;
        norm_slice_out(out, out16, element, value);
    }
    if (q8.qs && warp_in_row) quantize_q8_1_block(value, element, q8);
}

/* The sliced norms' EARLY_MAX form (TM_NORM_EARLY_MAX, on unless 0): a thread's output is
 * raw * scale with raw = x * weight, and x -> x * scale rounds monotonically for scale > 0, so its
 * q8_1 block's largest |output| is (the block's largest |raw|) * scale exactly, and that maximum
 * can be found before the row's sum is known: at the sum's own barrier (norm_block_sum_max), not in
 * two more after it (norm_slice_write's quantize_q8_1_block). The q8_1 still equals the
 * quantizer's of the output bit for bit. */
__device__ __forceinline__ double norm_block_sum_max(double sum, float raw, bool want_max, float &raw_max) {
    __shared__ double warp_sums[NORM_SLICE / 32];
    __shared__ float warp_max[NORM_SLICE / 32];
    const double warp_sum = sum_over_warp(sum);
    const float warp_raw_max = want_max ? max_over_warp(fabsf(raw)) : 0.0f;
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = warp_sum, warp_max[threadIdx.x / 32] = warp_raw_max;
    __syncthreads();
    double total = 0; /* in block_sum's order */
    raw_max = 0;
#pragma unroll
    for (int k = 0; k < NORM_SLICE / 32; k++) total += warp_sums[k], raw_max = fmaxf(raw_max, warp_max[k]);
    return total;
}

/* The EARLY_MAX end of a sliced norm's thread (its residual sum already stored): raw * scale into
 * out (and out16), and with q8 its 256-value block quantized from the known maximum. */
__device__ __forceinline__ void norm_slice_write_scaled(float *out, int64_t element, bool in_row, bool warp_in_row, float raw, float raw_max,
                                                        float scale, const q8_out &q8, __half *out16) {
    const float value = raw * scale;
    if (in_row) norm_slice_out(out, out16, element, value);
    if (q8.qs && warp_in_row) quantize_q8_1_known_max(value, raw_max * scale, element, q8);
}

/* The norm of a few rows (decode) over many SMs: block (row, slice) normalizes elements
 * slice * 256 .. + 255 of its row, after summing the squares of the whole row itself (every block
 * of a row reads all of it from L2: 16 KiB of x and of delta at 4096 wide). One block of 1024
 * threads a row ran 5.2-5.6 us at 4096 wide (H200, profile), most of it one SM's latency chain
 * (three trips, a 32-warp reduction, four q8_1 blocks a warp); here each of 16 blocks holds 8 warps,
 * one 256-value q8 block. The residual sum goes to x_out, which must not be x: another block of the
 * row may still be reading x. float64 sum of squares. EARLY_MAX: the q8_1 block's largest value
 * found at the sum's barrier and the residual sum stored before it (norm_block_sum_max; what an
 * RTX 4090 runs: measured on the H200 under TM_NORM_CLUSTER=0, see perf-notes session 46). */
template <bool EARLY_MAX>
__global__ void __launch_bounds__(NORM_SLICE) rmsnorm_sliced_kernel(float *out, float *x_out, const float *x, const float *delta,
                                                                    const float *weight, int n, float eps, q8_out q8, __half *out16) {
    const tm_stamper stamper = tm_stamp_begin();
    const int i = blockIdx.y * NORM_SLICE + threadIdx.x; /* this thread's element */
    const float w = i < n ? weight[i] : 0.0f;            /* a weight: no kernel writes it, so before the wait */
    tm_grid_dependency();
    tm_stamp(TM_STAMP_WAITED);
    const float *row = x + (int64_t)blockIdx.x * n;
    const float *add = delta ? delta + (int64_t)blockIdx.x * n : nullptr;
    float mine = i < n ? row[i] : 0.0f;
    if (add && i < n) mine += add[i];
    const int64_t element = (int64_t)blockIdx.x * n + i;
    /* the row's squares, its x and delta read NORM_BATCH float4 a thread at a time (8192 wide, the
     * 70B's, in one batch), every load of a batch issued before the first is used (a loop of one
     * float4 and its sum went out in two or three trips: 1.3 us from the wait to the last load in
     * the 7B x1 step, 3.1 in the 70B's, H200 block stamps); the sum adds the same terms in the same
     * order as that loop did */
    constexpr int NORM_BATCH = 8, STRIDE = 4 * NORM_SLICE; /* n % 4 == 0 */
    double sum = 0;
    for (int base = 4 * threadIdx.x; base < n; base += NORM_BATCH * STRIDE) {
        float4 a[NORM_BATCH], b[NORM_BATCH];
#pragma unroll
        for (int k = 0; k < NORM_BATCH; k++) {
            const int j = base + k * STRIDE;
            a[k] = j < n ? *reinterpret_cast<const float4 *>(row + j) : make_float4(0, 0, 0, 0);
            b[k] = add && j < n ? *reinterpret_cast<const float4 *>(add + j) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < NORM_BATCH; k++) {
            if (base + k * STRIDE >= n) break;
            float4 v = a[k];
            if (add) v.x += b[k].x, v.y += b[k].y, v.z += b[k].z, v.w += b[k].w;
            sum += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
    }
    tm_stamp_after(TM_STAMP_A, (uint32_t)(__double_as_longlong(sum) >> 32) ^ __float_as_uint(mine) ^ __float_as_uint(w)); /* loads arrived */
    const bool in_row = i < n, warp_in_row = i - threadIdx.x % 32 < n;
    if constexpr (EARLY_MAX) {
        if (add && in_row) x_out[element] = mine;
        const float raw = mine * w; /* 0 past the row */
        float raw_max;
        const float scale = (float)(1.0 / sqrt(norm_block_sum_max(sum, raw, q8.qs != nullptr, raw_max) / n + eps));
        tm_stamp_after(TM_STAMP_B, __float_as_uint(scale)); /* the row's sum of squares */
        norm_slice_write_scaled(out, element, in_row, warp_in_row, raw, raw_max, scale, q8, out16);
    } else {
        const float scale = (float)(1.0 / sqrt(block_sum(sum) / n + eps));
        tm_stamp_after(TM_STAMP_B, __float_as_uint(scale)); /* the row's sum of squares */
        norm_slice_write(out, x_out, add != nullptr, element, in_row, warp_in_row, mine, scale, w, q8, out16);
    }
    tm_stamp_end(stamper, TM_STAMP_NORM, weight);
}

/* The sliced norm in clusters of NORM_CLUSTER blocks (sm_90), for rows a multiple of
 * NORM_SLICE x NORM_CLUSTER wide: block (slice, row) of cluster rank r reads only slices r, r + 8,
 * ... of its row (its own among them: 2 of a 4096-wide row, 4 of 8192), sums their squares, and
 * sends that partial sum into every other block of its cluster by st.async counted on the
 * receiver's mbarrier (initialized before the wait, the cluster's arrive then, its wait before the
 * first send); each block adds the 8 partials in rank order, so every block of a row, in every cluster,
 * holds the same sum (its terms added in another order than the sliced kernel's). There each block
 * read the whole row through its SM (x and delta: 32 KiB at 4096 wide, 64 at 8192; H200 block
 * stamps, 7B x1 step: the wait to the loads' arrival 1.15 us, here 4 KiB and 0.54 us; the sum with
 * the exchange 0.64 -> 0.99; the launch's exposed time 3.15 -> 2.69 us; the 70B's, 8192 wide:
 * loads 1.50 -> 0.64, sum 0.61 -> 0.99, exposed 3.57 -> 2.94 us). H200, one binary,
 * TM_NORM_CLUSTER 0 / 1, three rounds, decode tokens/s after 128-token prompts: 7B x1 602.2, 601.2,
 * 605.6 / 608.7, 608.3, 608.5; 8B x1 244.4, 243.5, 243.1 / 246.2, 245.1, 246.8; 8B x8 1792, 1796,
 * 1793 / 1815, 1807, 1813; 70B x1 82.55, 82.88, 82.69 / 82.93, 83.24, 82.78; 70B x8 535.0, 535.4,
 * 537.7 / 542.6, 543.9, 539.6; 7B x8 3433, 3404, 3440 / 3431, 3426, 3430.
 * EARLY_MAX (the default; TM_NORM_EARLY_MAX=0 keeps norm_slice_write's end): the q8_1 block's
 * largest value found at the sum's own barrier (norm_block_sum_max), before the partials travel,
 * and the residual sum stored while they do, so after the sum only a multiply, a division and the
 * warp's sum of q are left (the old end: two more barriers). H200 block stamps: the sum -> end
 * 0.61 -> 0.38 us, the launch's exposed time 2.69 -> 2.38 (7B x1 step), 2.94 -> 2.66 (70B). One
 * binary, TM_NORM_EARLY_MAX 0 / 1, three rounds, tokens/s: 7B x8 3379, 3377, 3383 / 3463, 3468,
 * 3473; 7B x1 604.1, 601.7, 606.1 / 607.9, 609.8, 605.1; 8B x1 245.7, 246.3, 245.1 / 246.4, 247.0,
 * 247.5; 8B x8, 70B x1 and x8 unchanged within their spread. */
#define NORM_CLUSTER 8
#define NORM_CLUSTER_SHARE 8 /* slices a block reads, at most: rows up to 8 x 8 x 256 = 16384 wide */
template <bool EARLY_MAX>
__global__ void __launch_bounds__(NORM_SLICE) rmsnorm_cluster_kernel(float *out, float *x_out, const float *x, const float *delta,
                                                                     const float *weight, int n, float eps, q8_out q8, __half *out16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const tm_stamper stamper = tm_stamp_begin();
    const int slice = blockIdx.x, rank = slice % NORM_CLUSTER, share = n / (NORM_SLICE * NORM_CLUSTER);
    const int i = slice * NORM_SLICE + threadIdx.x; /* this thread's element (n a multiple of the cluster's slices) */
    const int64_t element = (int64_t)blockIdx.y * n + i;
    __shared__ double partial[NORM_CLUSTER];
    __shared__ alignas(8) uint64_t received;
    const uint32_t barrier = shared_address(&received);
    if (threadIdx.x == 0) mbarrier_init(barrier, 1), fence_mbarrier_init();
    cluster_arrive_relaxed(); /* waited for before the first send */
    const float w = weight[i]; /* a weight: no kernel writes it, so before the wait */
    tm_grid_dependency();
    tm_stamp(TM_STAMP_WAITED);
    const float *row = x + (int64_t)blockIdx.y * n;
    const float *add = delta ? delta + (int64_t)blockIdx.y * n : nullptr;
    float a[NORM_CLUSTER_SHARE], b[NORM_CLUSTER_SHARE];
#pragma unroll
    for (int k = 0; k < NORM_CLUSTER_SHARE; k++) {
        const int j = (rank + k * NORM_CLUSTER) * NORM_SLICE + threadIdx.x;
        a[k] = k < share ? row[j] : 0.0f;
        b[k] = add && k < share ? add[j] : 0.0f;
    }
    double sum = 0;
    float mine = 0;
#pragma unroll
    for (int k = 0; k < NORM_CLUSTER_SHARE; k++) {
        if (k >= share) break;
        const float v = add ? a[k] + b[k] : a[k];
        sum += (double)v * v;
        if (rank + k * NORM_CLUSTER == slice) mine = v;
    }
    /* loads arrived */
    tm_stamp_after(TM_STAMP_A, (uint32_t)(__double_as_longlong(sum) >> 32) ^ __float_as_uint(mine) ^ __float_as_uint(w));
    const float raw = mine * w; /* EARLY_MAX: the output before the row's scale */
    float raw_max = 0;          /* ... and its q8_1 block's largest |raw| */
    const double block_total = EARLY_MAX ? norm_block_sum_max(sum, raw, q8.qs != nullptr, raw_max) : block_sum(sum);
    cluster_wait(); /* every block's mbarrier initialized */
    if (threadIdx.x < NORM_CLUSTER && threadIdx.x != rank)
        st_async_u64(cluster_map(shared_address(&partial[rank]), threadIdx.x), (uint64_t)__double_as_longlong(block_total),
                     cluster_map(barrier, threadIdx.x));
    if (threadIdx.x == 0) { /* its own partial stored before its arrive (a release the waiters acquire) */
        partial[rank] = block_total;
        mbarrier_expect(barrier, (NORM_CLUSTER - 1) * 8);
    }
    if (EARLY_MAX && add) x_out[element] = mine; /* the residual sum, while the partials travel */
    mbarrier_wait(barrier, 0);
    double total = 0;
#pragma unroll
    for (int r = 0; r < NORM_CLUSTER; r++) total += partial[r];
    const float scale = (float)(1.0 / sqrt(total / n + eps));
    tm_stamp_after(TM_STAMP_B, __float_as_uint(scale)); /* the row's sum of squares */
    if constexpr (EARLY_MAX) {
        norm_slice_write_scaled(out, element, true, true, raw, raw_max, scale, q8, out16);
    } else {
        norm_slice_write(out, x_out, add != nullptr, element, true, true, mine, scale, w, q8, out16);
    }
    tm_stamp_end(stamper, TM_STAMP_NORM, weight);
#else
    __trap(); /* clusters need sm_90; the host never launches it there */
#endif
}

static unsigned norm_threads(int n) { return n >= 4096 ? 1024 : n >= 1024 ? 256 : 128; }

/* Elements a thread of the register kernel: 4 up to 4096 a row (1024 threads) when it also writes
 * q8_1, else 8. Each thread quantizes its elements one after another (two warp reductions each), so
 * fewer a thread is faster there (H200, one call, 4096 wide with q8_1, 7B decode: 32 / 16 / 8 / 4 a
 * thread 255 / 322 / 376 / 387 tokens/s, the norm alone 25.1 us at 32 and 6.1 at 8; x8 2000 ->
 * 2047 at 4); without q8_1 (8B F16) 4 measured no better (x1 179.9 -> 178.9, x8 1328 -> 1319).
 * TM_NORM_PER_THREAD=4 or 8 (a measuring aid) forces one. */
static int norm_elements_per_thread(int n, bool quantize) {
    static const int forced = tm_env_int("TM_NORM_PER_THREAD", 0);
    if (forced == 4 || forced == 8) return forced;
    return quantize && n <= 4 * 1024 ? 4 : 8;
}

/* Rows up to which the sliced kernel takes out-of-place norms (TM_NORM_SLICED_ROWS, a measuring
 * aid: 0 never). H200, 7B decode, tokens/s with it against without: one row 412.8 / 390.8, four
 * 1116 / 1121, eight 2143-2156 / 2166-2174 when q8 had a scale a 32-value block (a warp's own);
 * since the 256-value blocks (8 warps meet at a barrier; the register kernel, a block of 1024
 * threads a row, profiled 8.75 us a launch in a 70B x8 step, its dependent-launch wait included):
 * eight rows 461.0 -> 473.0 (70B x8) and 2557 -> 2624 (7B x8), one call each. Session 50, up to
 * 16 rows against 8 (in clusters, the 9-16-token steps that had taken the register kernel), H200,
 * one binary, two rounds, throughput-batched: 70B x12 595.5, 595.6 -> 605.8, 607.3, x16 708.4, 709.6
 * -> 718.7, 719.5; 7B x12 3595, 3591 -> 3630, 3635, x16 4293, 4313 -> 4304, 4304; x8 unchanged. */
static int norm_sliced_rows(void) {
    static const int rows = tm_env_int("TM_NORM_SLICED_ROWS", TM_CUDA_GEMV_MAX_TOKENS);
    return rows;
}

/* Whether rows n wide take the sliced norm in clusters (rmsnorm_cluster_kernel): on devices that
 * launch clusters, n a multiple of its clusters' slices and at most 8 of them a block;
 * TM_NORM_CLUSTER=0 (a measuring aid) never. */
static bool norm_clusters(int n) {
    static const bool allowed = tm_env_int("TM_NORM_CLUSTER", 1) != 0;
    const int cluster_width = NORM_SLICE * NORM_CLUSTER;
    return allowed && n % cluster_width == 0 && n / cluster_width <= NORM_CLUSTER_SHARE && tm_cluster_launch_available();
}

/* Whether the sliced and cluster kernels find each q8_1 block's largest value before the row's sum
 * is known (their EARLY_MAX: norm_block_sum_max); TM_NORM_EARLY_MAX=0 (a measuring aid) keeps the
 * reduction after it. */
static bool norm_early_max(void) {
    static const bool early = tm_env_int("TM_NORM_EARLY_MAX", 1) != 0;
    return early;
}

/* Launch the norm of n_rows rows: out of place (x_out != x, or no delta) for a few rows, the sliced
 * kernel (in clusters where norm_clusters says so); else the register kernel up to 8192 elements a
 * row (threads: n / its elements a thread, rounded up to whole warps, with q8 to multiples of 256,
 * at least 4 warps), the looping one beyond (1024 threads there). With out16 the sliced kernels
 * take up to TM_CUDA_GEMV_MAX_TOKENS rows whatever TM_NORM_SLICED_ROWS says: they alone write the
 * copy (H200, 8B decode 128 x16 with the f16 Q/K/V and gate/up inputs of 9-16 tokens against
 * float ones: 3113, 3135 -> 3329, 3326 tokens/s). */
static cudaError_t launch_rmsnorm(float *out, float *x_out, const float *x, const float *delta, const float *weight, int n_rows, int n,
                                  float eps, q8_out q8, cudaStream_t stream, __half *out16 = nullptr) {
    const bool aligned = (uintptr_t)x % 16 == 0 && (uintptr_t)delta % 16 == 0; /* the sliced kernel reads float4 */
    const int sliced_rows = out16 ? TM_CUDA_GEMV_MAX_TOKENS : norm_sliced_rows();
    if ((x_out != x || !delta) && n_rows <= sliced_rows && norm_clusters(n)) {
        const dim3 grid((unsigned)(n / NORM_SLICE), (unsigned)n_rows);
        const auto kernel = norm_early_max() ? rmsnorm_cluster_kernel<true> : rmsnorm_cluster_kernel<false>;
#ifdef TM_BLOCK_STAMPS
        static const bool twice = tm_env_int("TM_STAMPS_TWICE", 0) != 0; /* as for the sliced kernel below */
        if (twice)
            TM_CUDA_CHECK(tm_launch_dependent_cluster(kernel, grid, dim3(NORM_SLICE), 0, stream, NORM_CLUSTER, out, x_out, x, delta, weight, n,
                                                      eps, q8, out16));
#endif
        TM_CUDA_CHECK(tm_launch_dependent_cluster(kernel, grid, dim3(NORM_SLICE), 0, stream, NORM_CLUSTER, out, x_out, x, delta, weight, n,
                                                  eps, q8, out16));
        return cudaSuccess;
    }
    if ((x_out != x || !delta) && aligned && n_rows <= sliced_rows && n % 32 == 0) {
        const dim3 grid((unsigned)n_rows, (unsigned)((n + NORM_SLICE - 1) / NORM_SLICE));
        const auto kernel = norm_early_max() ? rmsnorm_sliced_kernel<true> : rmsnorm_sliced_kernel<false>;
#ifdef TM_BLOCK_STAMPS
        /* a measuring aid of stamp builds: the same launch twice (out of place, so idempotent), the second on warm caches */
        static const bool twice = tm_env_int("TM_STAMPS_TWICE", 0) != 0;
        if (twice) TM_LAUNCH_DEPENDENT(kernel, grid, dim3(NORM_SLICE), 0, stream, out, x_out, x, delta, weight, n, eps, q8, out16);
#endif
        TM_LAUNCH_DEPENDENT(kernel, grid, dim3(NORM_SLICE), 0, stream, out, x_out, x, delta, weight, n, eps, q8, out16);
        return cudaSuccess;
    }
    if (out16) return cudaErrorNotSupported; /* only the sliced kernel writes the f16 copy */
    const int per_thread = norm_elements_per_thread(n, q8.qs != nullptr);
    if (n <= per_thread * 1024) {
        const unsigned whole = q8.qs ? 256 : 32; /* quantize_q8_1_block: 8 warps a 256-value block */
        unsigned threads = (unsigned)((n + per_thread - 1) / per_thread + whole - 1) / whole * whole;
        if (threads < 128) threads = 128;
        if (per_thread == 4)
            TM_LAUNCH_DEPENDENT(rmsnorm_registers_kernel<4>, dim3(n_rows), dim3(threads), 0, stream, out, x_out, x, delta, weight, n, eps,
                                q8);
        else
            TM_LAUNCH_DEPENDENT(rmsnorm_registers_kernel<8>, dim3(n_rows), dim3(threads), 0, stream, out, x_out, x, delta, weight, n, eps,
                                q8);
    } else {
        TM_LAUNCH_DEPENDENT(rmsnorm_kernel, dim3(n_rows), dim3(norm_threads(n)), 0, stream, out, x_out, x, delta, weight, n, eps, q8);
    }
    return cudaSuccess;
}

extern "C" int tm_cuda_add_rmsnorm_half(float *out, void *out16, float *x_out, const float *x, const float *delta, const float *weight,
                                        int n_rows, int n, float eps, void *stream) {
    if (n_rows == 0) return cudaSuccess;
    if (n % 4 || (delta && !x_out) || !out16 || (uintptr_t)out16 % 16) return cudaErrorInvalidValue;
    return launch_rmsnorm(out, x_out, x, delta, weight, n_rows, n, eps, q8_out_at(nullptr, 0, 0), (cudaStream_t)stream, (__half *)out16);
}

extern "C" int tm_cuda_rmsnorm(float *out, const float *x, const float *weight, int n_rows, int n, float eps, void *stream) {
    if (n_rows == 0) return cudaSuccess;
    return launch_rmsnorm(out, nullptr, x, nullptr, weight, n_rows, n, eps, q8_out_at(nullptr, 0, 0), (cudaStream_t)stream);
}

extern "C" int tm_cuda_add_rmsnorm(float *out, float *x_out, const float *x, const float *delta, const float *weight, int n_rows, int n,
                                   float eps, void *q8, void *stream) {
    if (n_rows == 0) return cudaSuccess;
    if ((q8 && n % 256) || n % 4 || (delta && !x_out)) return cudaErrorInvalidValue;
    return launch_rmsnorm(out, x_out, x, delta, weight, n_rows, n, eps, q8_out_at(q8, n_rows, n), (cudaStream_t)stream);
}

/* One thread per (token, head, pair). */
__global__ void rope_kernel(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                            const float *freq_factors, const int32_t *positions) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int pairs = n_rot / 2;
    if (index >= (int64_t)n_tokens * n_heads * pairs) return;
    int i = (int)(index % pairs), head = (int)(index / pairs % n_heads);
    int64_t token = index / pairs / n_heads;
    rope_pair(vec + (token * n_heads + head) * head_dim + 2 * i, i, n_rot, positions[token], freq_base, freq_scale, freq_factors);
}

extern "C" int tm_cuda_rope(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                            const float *freq_factors, const int32_t *positions, void *stream) {
    int64_t threads = (int64_t)n_tokens * n_heads * (n_rot / 2);
    if (threads == 0) return cudaSuccess;
    rope_kernel<<<(unsigned)((threads + 255) / 256), 256, 0, (cudaStream_t)stream>>>(vec, n_tokens, n_heads, head_dim, n_rot,
                                                                                       freq_base, freq_scale, freq_factors,
                                                                                       positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* One thread per element; with q8, a warp per 32-element block also writes its q8_1 block; with
 * out16, the value rounded to f16 too. */
__global__ void swiglu_kernel(float *gate, const float *up, int64_t n, q8_out q8, __half *out16) {
    const tm_stamper stamper = tm_stamp_begin();
    tm_grid_dependency();
    tm_stamp(TM_STAMP_WAITED);
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    float value = 0;
    if (i < n) gate[i] = value = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    tm_stamp_after(TM_STAMP_A, __float_as_uint(value)); /* loads arrived */
    if (out16 && i < n) out16[i] = __float2half_rn(value); /* as the f16 products round their float input */
    if (q8.qs && i - lane < n) quantize_q8_1_block(value, i, q8); /* n % 256 == 0: whole blocks of 256 threads */
    tm_stamp_end(stamper, TM_STAMP_SWIGLU, up);
}

extern "C" int tm_cuda_swiglu(float *gate, const float *up, int64_t n, void *stream) {
    if (n == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(swiglu_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, (cudaStream_t)stream, gate, up, n,
                        q8_out_at(nullptr, 0, 0), (__half *)nullptr);
    return cudaSuccess;
}

extern "C" int tm_cuda_swiglu_half(float *gate, const float *up, int64_t n, void *out16, void *stream) {
    if (!out16 || (uintptr_t)out16 % 16) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(swiglu_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, (cudaStream_t)stream, gate, up, n,
                        q8_out_at(nullptr, 0, 0), (__half *)out16);
    return cudaSuccess;
}

extern "C" int tm_cuda_swiglu_q8(float *gate, const float *up, int64_t n_rows, int64_t n_per_row, void *q8, void *stream) {
    const int64_t n = n_rows * n_per_row;
    if (n_per_row % 256 || n_rows < 0) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(swiglu_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, (cudaStream_t)stream, gate, up, n,
                        q8_out_at(q8, n_rows, n_per_row), (__half *)nullptr);
    return cudaSuccess;
}

__global__ void float_to_half_kernel(const float *x, int64_t n, __half *out16) {
    tm_grid_dependency();
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out16[i] = __float2half_rn(x[i]); /* as the f16 products round their float input */
}

extern "C" int tm_cuda_float_to_half(const float *x, int64_t n, void *out16, void *stream) {
    if (!out16 || (uintptr_t)out16 % 16 || n < 0) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(float_to_half_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, (cudaStream_t)stream, x, n,
                        (__half *)out16);
    return cudaSuccess;
}

__global__ void add_kernel(float *x, const float *delta, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += delta[i];
}

extern "C" int tm_cuda_add(float *x, const float *delta, int64_t n, void *stream) {
    if (n == 0) return cudaSuccess;
    add_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(x, delta, n);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

__global__ void gather_rows_kernel(const float *x, const int32_t *index, int n, float *out) {
    tm_grid_dependency();
    const float *row = x + (int64_t)index[blockIdx.x] * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(int64_t)blockIdx.x * n + i] = row[i];
}

extern "C" int tm_cuda_gather_rows(const float *x, const int32_t *index, int n_out, int n, float *out, void *stream) {
    if (n_out == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(gather_rows_kernel, dim3(n_out), dim3(256), 0, (cudaStream_t)stream, x, index, n, out);
    return cudaSuccess;
}
