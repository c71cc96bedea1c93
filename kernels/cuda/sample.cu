/*
 * sample.cu - token sampling on the GPU with the CPU sampler's exact semantics (engine/sampler.c):
 * repetition penalty (the window's last token may be one fed on the device that the host has not
 * seen: fed_at), then greedy (temperature <= 0: argmax, lowest id on ties) or top-k, top-p, min-p,
 * temperature and a draw with the host's uniform number, in the CPU's order and arithmetic.
 * Candidates are ranked by the total order (logit descending, id ascending) encoded as one 64-bit
 * key, so "the k best" is exact: the keys at or above a bound (the k-th of the threads' own
 * largest keys) are compacted, or, where they are too many, the k-th largest key is found by
 * bisection over block-wide counts and the k survivors compacted; they are bitonic-sorted in
 * shared memory, and one thread then runs the CPU's cumulative loops over them in float64. Hence
 * the same logits, parameters and uniform give the CPU's token, except where a float64 sum lands
 * within rounding of a top-p or draw boundary. One block of 1024 threads per row; top_k must be
 * in 1..1024.
 * The engine's parameters and tokens live in mapped pinned host memory (engine/backend_cuda.c):
 * a row's parameters are loaded once a block, the tokens written there as well as on the device.
 */
#include "kernels.h"
#include "common.cuh"

#define THREADS 1024
static_assert(THREADS == TM_CUDA_SAMPLE_MAX_TOP_K, "a key a thread: keys[] holds a block's threads' keys");

__device__ __forceinline__ uint64_t rank_key(float logit, int id) {
    uint32_t bits = __float_as_uint(logit);
    bits ^= (bits >> 31) ? 0xFFFFFFFFu : 0x80000000u; /* order-preserving float -> unsigned */
    return (uint64_t)bits << 32 | (uint32_t)(0xFFFFFFFFu - (uint32_t)id);
}
__device__ __forceinline__ int key_id(uint64_t key) { return (int)(0xFFFFFFFFu - (uint32_t)key); }

/* Sum of one int per thread over the block (all threads must call). */
__device__ int block_count(int value, int *scratch) {
    value = sum_over_warp(value);
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < THREADS / 32; w++) total += scratch[w];
    return total;
}

/* keys[0..THREADS) sorted descending in place, bitonic (all threads call; one key a thread). */
__device__ void sort_keys_descending(uint64_t *keys) {
    const int tid = threadIdx.x;
    for (int size = 2; size <= THREADS; size *= 2)
        for (int stride = size / 2; stride > 0; stride /= 2) {
            int partner = tid ^ stride;
            if (partner > tid) {
                bool descending = (tid & size) == 0;
                uint64_t a = keys[tid], b = keys[partner];
                if ((a < b) == descending) keys[tid] = b, keys[partner] = a;
            }
            __syncthreads();
        }
}

/* The repetition penalty on one logit (engine/sampler.c's penalize). */
__device__ __forceinline__ float penalize_logit(float logit, float penalty) { return logit > 0 ? logit / penalty : logit * penalty; }

/* keys[0..n_selected) = the row's keys at or above `low`, in no order, at most THREADS of them
 * (n_selected counts them all), the rest of keys[] 0, which sorts last: every real key is above
 * 0 (all threads call). */
__device__ void compact_keys(const float *logits, int n_vocab, uint64_t low, uint64_t *keys, int *n_selected) {
    const int tid = threadIdx.x;
    if (tid == 0) *n_selected = 0;
    keys[tid] = 0;
    __syncthreads();
    for (int i = tid; i < n_vocab; i += THREADS) {
        const uint64_t key = rank_key(logits[i], i);
        if (key >= low) {
            const int at = atomicAdd(n_selected, 1);
            if (at < THREADS) keys[at] = key;
        }
    }
    __syncthreads();
}

/* This block's row's token, on the device and (where host_tokens is not NULL) in host memory. */
__device__ __forceinline__ void put_token(int32_t *tokens, int32_t *host_tokens, int token) {
    tokens[blockIdx.x] = token;
    if (host_tokens) host_tokens[blockIdx.x] = token;
}

/* Up to TM_CUDA_SAMPLE_ARG_ROWS rows' parameters by value in the launch's arguments (n 0: none). */
struct sample_rows_arg {
    int n;
    tm_cuda_sampling rows[TM_CUDA_SAMPLE_ARG_ROWS];
};

__global__ void __launch_bounds__(THREADS) sample_kernel(float *logits_all, int n_vocab, const tm_cuda_sampling *rows, sample_rows_arg in_args,
                                                         const int32_t *penalized, const int32_t *step_tokens, int32_t *tokens,
                                                         int32_t *host_tokens) {
    __shared__ uint64_t keys[TM_CUDA_SAMPLE_MAX_TOP_K];
    __shared__ double weights[TM_CUDA_SAMPLE_MAX_TOP_K];
    __shared__ int scratch[THREADS / 32];
    __shared__ float best_value[THREADS / 32];
    __shared__ int best_id[THREADS / 32], n_selected;
    __shared__ tm_cuda_sampling row;
    /* the row's parameters from the launch's arguments, or one load for the block (rows may be in
     * host memory: a trip over the bus a load) */
    if (threadIdx.x == 0) row = in_args.n ? in_args.rows[blockIdx.x] : rows[blockIdx.x];
    __syncthreads();
    const tm_cuda_sampling p = row;
    float *logits = logits_all + (int64_t)blockIdx.x * n_vocab;
    const int tid = threadIdx.x;
    /* repetition penalty: the host lists each id of the window once; a fed token that ends the
     * window (fed_at, unseen by the host) is penalized after them unless they list it */
    if (p.repetition_penalty != 1.0f && p.repetition_penalty > 0) {
        const int fed = p.fed_at >= 0 ? step_tokens[p.fed_at] : -1;
        bool listed = false;
        for (int i = tid; i < p.n_penalized; i += THREADS) {
            int id = penalized[p.penalized_offset + i];
            listed |= id == fed;
            if (id >= 0 && id < n_vocab) logits[id] = penalize_logit(logits[id], p.repetition_penalty);
        }
        if (p.fed_at >= 0 && !__syncthreads_or(listed) && tid == 0 && fed >= 0 && fed < n_vocab)
            logits[fed] = penalize_logit(logits[fed], p.repetition_penalty);
    }
    __syncthreads();
    if (p.temperature <= 0) { /* argmax, lowest id on ties */
        float value = -INFINITY;
        int id = n_vocab;
        for (int i = tid; i < n_vocab; i += THREADS)
            if (logits[i] > value || id == n_vocab) value = logits[i], id = i;
        for (int offset = 16; offset > 0; offset /= 2) {
            float other_value = __shfl_xor_sync(0xffffffffu, value, offset);
            int other_id = __shfl_xor_sync(0xffffffffu, id, offset);
            if (other_value > value || (other_value == value && other_id < id)) value = other_value, id = other_id;
        }
        if (tid % 32 == 0) best_value[tid / 32] = value, best_id[tid / 32] = id;
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < THREADS / 32; w++)
                if (best_value[w] > value || (best_value[w] == value && best_id[w] < id)) value = best_value[w], id = best_id[w];
            put_token(tokens, host_tokens, id < n_vocab ? id : 0);
        }
        return;
    }
    if (p.top_k < 1 || p.top_k > TM_CUDA_SAMPLE_MAX_TOP_K) {
        if (tid == 0) put_token(tokens, host_tokens, -1); /* the host samples such rows itself */
        return;
    }
    const int k = min(p.top_k, n_vocab);
    /* The k best keys into keys[0..k), descending. First a bound: every thread's largest key
     * (sorted, the k-th of them: k real keys are at or above it, so every one of the k best is),
     * then the keys at or above it compacted, which for k up to a few hundred are far fewer than
     * the 1024 keys[] holds (128256 random logits, k 40: ~50); two passes over the row. Where they
     * are more, the k-th largest key is found by bisection from that bound (a pass over the row a
     * step, up to 64) and exactly the k keys at or above it are compacted. The bisection alone,
     * as before session 55, cost 8B decode x1 at top-k 40 a sixth of its speed; H200, top-k 40 /
     * top-p 0.95 at temperature 0.8, bisection -> bound: 8B x1 208.3 -> 244.5 tokens/s (greedy
     * 246.7), x8 1591 -> 1852; 7B x1 561.0 -> 612.9, x8 3315 -> 3547. */
    uint64_t largest = 0; /* a thread without ids: 0, which sorts last */
    for (int i = tid; i < n_vocab; i += THREADS) largest = max(largest, rank_key(logits[i], i));
    keys[tid] = largest;
    __syncthreads();
    sort_keys_descending(keys);
    uint64_t low = keys[k - 1];
    __syncthreads();
    compact_keys(logits, n_vocab, low, keys, &n_selected);
    if (n_selected > THREADS) {
        /* the k-th largest key: the largest threshold with at least k keys at or above it */
        uint64_t high = ~0ull;
        while (low < high) {
            uint64_t middle = low + (high - low) / 2 + 1;
            int count = 0;
            for (int i = tid; i < n_vocab; i += THREADS) count += rank_key(logits[i], i) >= middle;
            if (block_count(count, scratch) >= k) low = middle;
            else high = middle - 1;
        }
        compact_keys(logits, n_vocab, low, keys, &n_selected); /* exactly k */
    }
    sort_keys_descending(keys);
    const int n = k;
    const double best = logits[key_id(keys[0])];
    if (tid < n) weights[tid] = exp((double)logits[key_id(keys[tid])] - best);
    __syncthreads();
    if (tid != 0) return;
    /* the CPU's loops, in its order */
    int keep = n;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += weights[i];
    if (p.top_p > 0 && p.top_p < 1) {
        double cumulative = 0;
        for (int i = 0; i < n; i++) {
            cumulative += weights[i] / sum;
            if (cumulative >= p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p.min_p > 0) {
        float threshold = (float)best + logf(p.min_p);
        int kept = 1;
        while (kept < keep && logits[key_id(keys[kept])] >= threshold) kept++;
        keep = kept;
    }
    double total = 0;
    for (int i = 0; i < keep; i++) {
        float w = (float)exp(((double)logits[key_id(keys[i])] - best) / p.temperature);
        weights[i] = w;
        total += w;
    }
    double draw = p.uniform * total, acc = 0;
    int chosen = key_id(keys[keep - 1]);
    for (int i = 0; i < keep; i++) {
        acc += weights[i];
        if (draw < acc) {
            chosen = key_id(keys[i]);
            break;
        }
    }
    put_token(tokens, host_tokens, chosen);
}

extern "C" int tm_cuda_sample(float *logits, int n_rows, int n_vocab, const tm_cuda_sampling *rows, int rows_on_host,
                              const int32_t *penalized, const int32_t *step_tokens, int32_t *tokens, int32_t *host_tokens, void *stream) {
    if (n_rows == 0) return cudaSuccess;
    if (n_vocab < 1) return cudaErrorInvalidValue;
    sample_rows_arg in_args;
    in_args.n = rows_on_host && n_rows <= TM_CUDA_SAMPLE_ARG_ROWS ? n_rows : 0;
    for (int r = 0; r < in_args.n; r++) in_args.rows[r] = rows[r];
    sample_kernel<<<n_rows, THREADS, 0, (cudaStream_t)stream>>>(logits, n_vocab, rows, in_args, penalized, step_tokens, tokens,
                                                                 host_tokens);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}
