/*
 * sample.cu - token sampling on the GPU with the CPU sampler's semantics (engine/sampler.c):
 * repetition penalty (the window's last token may be one fed on the device that the host has not
 * seen: fed_at), then greedy (temperature <= 0: argmax, lowest id on ties) or top-k, top-p, min-p,
 * temperature and a draw with the host's uniform number, in the CPU's order.
 * Candidates are ranked by the total order (logit descending, id ascending) encoded as one 64-bit
 * key, so "the k best" is exact. A row takes a cluster of 8 blocks on sm_90, one block elsewhere.
 * Greedy: each block's argmax of its share of the ids, then block 0's of the blocks'. Top-k
 * 1..1024: the keys at or above a bound (from the threads' own largest keys) are compacted, or,
 * where they are too many, the k-th largest key is found by bisection over the group's counts and
 * the k survivors compacted; they are gathered into the first block and bitonic-sorted in shared
 * memory, and the CPU's cumulative loops run over them in float64 with its arithmetic: the CPU's
 * token, except where a float64 sum lands within rounding of a top-p or draw boundary. No top-k,
 * or one above 1024: every id stays a candidate and each filter and the draw is found by weighted
 * histograms (see "Sampling with no top-k" below; a row's ids shared by a cluster of 8 blocks on
 * sm_90, one block elsewhere): the CPU's token up to float rounding of a weight (~2e-7) at a
 * boundary.
 * The engine's parameters and tokens live in mapped pinned host memory (engine/backend_cuda.c):
 * a row's parameters are loaded once a block, the tokens written there as well as on the device.
 */
#include <cooperative_groups.h>

#include "kernels.h"
#include "common.cuh"
#include "launch.cuh"
#include "stamps.cuh"

TM_STAMPS_RING(sample, 1u << 16)

#define THREADS 1024
static_assert(THREADS == TM_CUDA_SAMPLE_MAX_TOP_K, "a key a thread: keys[] holds a block's threads' keys");
static_assert(TM_CUDA_SAMPLE_MAX_VOCAB <= (1 << 23), "fixed-point weights: a row's sum below 2^63");

__device__ __forceinline__ uint64_t rank_key(float logit, int id) {
    uint32_t bits = __float_as_uint(__fadd_rn(logit, 0.0f)); /* -0 as +0: equal logits, ranked by id */
    bits ^= (bits >> 31) ? 0xFFFFFFFFu : 0x80000000u; /* order-preserving float -> unsigned */
    return (uint64_t)bits << 32 | (uint32_t)(0xFFFFFFFFu - (uint32_t)id);
}
__device__ __forceinline__ int key_id(uint64_t key) { return (int)(0xFFFFFFFFu - (uint32_t)key); }

/* visit(logit, id) for each of the row's logits that this thread takes, ids rising: block `rank`
 * of `blocks` sharing the row takes every blocks-th stretch of THREADS ids. The passes over a row
 * are bound by the instructions a logit takes on its SMs, not by their loads: four float4 loads in
 * flight a thread instead of one float made the one-block selection path 8 % slower and top-k 40
 * 2 % (H200, a 7B's 32000 logits), greedy 1 us faster (4.4 against 5.45 us a row). */
template <typename Visit>
__device__ __forceinline__ void for_each_logit(const float *logits, int n_vocab, Visit visit, int rank = 0, int blocks = 1) {
    for (int i = rank * THREADS + threadIdx.x; i < n_vocab; i += blocks * THREADS) visit(logits[i], i);
}

/* for_each_logit for a visit of a few instructions (greedy's), where the loads' latency bounds a
 * pass: four float4 a thread in flight where the row is 16-byte aligned (ids still rising); block
 * `rank` of `blocks` takes every blocks-th stretch of THREADS quads. */
template <typename Visit>
__device__ __forceinline__ void for_each_logit_vectorized(const float *logits, int n_vocab, Visit visit, int rank = 0, int blocks = 1) {
    const int tid = threadIdx.x, stride = blocks * THREADS;
    int tail = 0;
    if (((uintptr_t)logits & 15) == 0) {
        const float4 *quads = (const float4 *)logits;
        const int n_quads = n_vocab / 4;
        int q = rank * THREADS + tid;
        for (; q + 3 * stride < n_quads; q += 4 * stride) {
            float4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = quads[q + u * stride];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int id = 4 * (q + u * stride);
                visit(v[u].x, id), visit(v[u].y, id + 1), visit(v[u].z, id + 2), visit(v[u].w, id + 3);
            }
        }
        for (; q < n_quads; q += stride) {
            const float4 v = quads[q];
            visit(v.x, 4 * q), visit(v.y, 4 * q + 1), visit(v.z, 4 * q + 2), visit(v.w, 4 * q + 3);
        }
        tail = 4 * n_quads;
    }
    for (int i = tail + rank * THREADS + tid; i < n_vocab; i += stride) visit(logits[i], i);
}

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

/* A bitonic step's key for place `place` (a thread, or a lane within its warp): the pair (place,
 * place ^ stride) keeps the larger key in its lower place where this run of `size` descends. */
__device__ __forceinline__ uint64_t bitonic_keep(uint64_t key, uint64_t other, int place, int stride, int size) {
    return ((place & stride) == 0) == ((place & size) == 0) ? max(key, other) : min(key, other);
}

/* keys[0..n) sorted descending in place, bitonic; n a power of 2 up to THREADS (all threads call,
 * keys[] complete; one key a thread, in a register). A step of stride under 32 exchanges within
 * the warp by shuffles; a wider one through shared memory, keys[] and spare[] (THREADS keys) in
 * turn, one barrier a step: 15 barriers for 1024 keys instead of 55 (H200 block stamps: the top-k
 * kernel's 1024-key sort 7.07 -> 5.76 us; the sort is now bound by its steps' instructions, 55 of
 * them over 32 warps on one SM). */
__device__ void sort_keys_descending(uint64_t *keys, uint64_t *spare, int n = THREADS) {
    const int tid = threadIdx.x;
    uint64_t key = keys[tid];
    bool in_spare = false;
    for (int size = 2; size <= n; size *= 2)
        for (int stride = size / 2; stride > 0; stride /= 2) {
            uint64_t other;
            if (stride >= 32) { /* a buffer is rewritten two wide steps later, after a barrier all passed reading it */
                uint64_t *exchange = in_spare ? spare : keys;
                in_spare = !in_spare;
                exchange[tid] = key;
                __syncthreads();
                other = exchange[tid ^ stride];
            } else {
                other = __shfl_xor_sync(0xffffffffu, key, stride);
            }
            key = bitonic_keep(key, other, tid, stride, size);
        }
    __syncthreads(); /* the last wide step's reads done */
    keys[tid] = key;
    __syncthreads();
}

/* The m-th largest (m 1..32) of one key a thread over the block, without sorting all 1024: each
 * warp sorts its 32 by shuffles (no barrier) and writes its m best to lists (33 a warp); warp 0
 * merges the 32 lists, a lane a list, taking the largest head m times. Keys other than 0 must be
 * distinct (rank_key's are). *result: this block's shared scratch (all threads call). */
__device__ uint64_t block_mth_largest(uint64_t key, int m, uint64_t *lists, uint64_t *result) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int size = 2; size <= 32; size *= 2)
        for (int stride = size / 2; stride > 0; stride /= 2) {
            const uint64_t other = __shfl_xor_sync(0xffffffffu, key, stride);
            key = bitonic_keep(key, other, lane, stride, size); /* lane < 32: every warp descends */
        }
    if (lane < m) lists[33 * warp + lane] = key; /* the warp's m best, descending */
    __syncthreads();
    if (warp == 0) {
        int head = 0; /* lane j's place in warp j's list */
        uint64_t taken = 0;
        for (int round = 0; round < m; round++) {
            const uint64_t mine = head < m ? lists[33 * lane + head] : 0;
            taken = mine;
            for (int offset = 16; offset > 0; offset /= 2) taken = max(taken, __shfl_xor_sync(0xffffffffu, taken, offset));
            head += mine == taken && head < m; /* the one list it came from (a 0 ends every list) */
        }
        if (lane == 0) *result = taken;
    }
    __syncthreads();
    return *result;
}

/* The repetition penalty on one logit (engine/sampler.c's penalize). */
__device__ __forceinline__ float penalize_logit(float logit, float penalty) { return logit > 0 ? logit / penalty : logit * penalty; }

/* keys[0..n_selected) = the keys at or above `low` of this block's share of the row (block `rank`
 * of `blocks`, for_each_logit's), in no order, at most THREADS of them (n_selected counts them
 * all), the rest of keys[] 0, which sorts last: every real key is above 0 (all threads call). */
__device__ void compact_keys(const float *logits, int n_vocab, uint64_t low, uint64_t *keys, int *n_selected, int rank = 0, int blocks = 1) {
    const int tid = threadIdx.x;
    if (tid == 0) *n_selected = 0;
    keys[tid] = 0;
    __syncthreads();
    for_each_logit(
        logits, n_vocab,
        [&](float logit, int i) {
            const uint64_t key = rank_key(logit, i);
            if (key >= low) {
                const int at = atomicAdd(n_selected, 1);
                if (at < THREADS) keys[at] = key;
            }
        },
        rank, blocks);
    __syncthreads();
}

/* The smallest power of 2 at or above n (n >= 1). */
__device__ __forceinline__ int power_of_2_above(int n) { return n <= 1 ? 1 : 1 << (32 - __clz(n - 1)); }

/* Row `row`'s token, on the device and (where host_tokens is not NULL) in host memory. */
__device__ __forceinline__ void put_token(int32_t *tokens, int32_t *host_tokens, int row, int token) {
    tokens[row] = token;
    if (host_tokens) host_tokens[row] = token;
}

/* ---- Sampling with no top-k the block can hold (top_k 0, or above 1024): every id stays a
 * candidate, so nothing is sorted whole. Each filter and the draw is one question, "where in the
 * ranking does the running sum of a weight cross a target": top-k (a count of 1 each, target k),
 * top-p (exp(logit - best), target top_p times their sum), the draw (exp((logit - best) / T),
 * target uniform times their sum); each asked of the candidates at or above a floor key, which
 * the filter before it raised (min-p raises it by arithmetic: logit >= threshold is a key bound).
 * An answer takes a histogram of the weight over 2048 bins of logit value (monotone in the
 * ranking, so a bin is a run of it), finds the bin where the sum crosses, compacts that bin's
 * keys (random logits: ~60 of 128256) and sorts them; a bin of more than 1024 keys (ties, or a
 * few heavy bins) is split again by key range until it fits. Weights are summed in fixed point
 * (2^-40; exact, in any order); they are float exponentials of the difference taken exactly
 * (hi + lo), within ~2e-7 of the CPU's float64 ones, so a draw or a top-p threshold within that
 * of a boundary may take the neighbouring candidate (tests/gpu/test_sample_cuda.c bounds it).
 * On sm_90 a row's ids are shared by a cluster of 8 blocks: each builds the histogram of its
 * share, each sums the eight through distributed shared memory (so all find the same bin), and
 * the crossing bin's members are gathered from all eight. H200, top-p 0.95 at t 0.8 without
 * top-k, the kernel a row (CUPTI): 7B (32000 ids) one block 73.7 us, clusters of 8 52.3, with
 * fewer barriers (shuffle sorts, a one-trip gather) 42.5, with 32-bit shared atomics 39.5 (greedy
 * 5.5); 8B (128256 ids) 67.7 -> 58.4 by the atomics (docs/perf-notes.md, sessions 56 and 57).
 * The host sampled these rows before: 8B x1 38.6 tokens/s, now 243.2 (greedy 247.0). */

#define BINS (2 * THREADS)
#define FIXED_ONE 0x1p40f /* a weight of 1: sums of up to 2^23 ids stay below 2^63 */
#define SAMPLE_CLUSTER 8  /* blocks sharing a row on sm_90 (a cluster); 1 elsewhere */

/* The blocks of a row's group (C > 1: a thread-block cluster, sm_90) wait for each other, their
 * shared and global memory writes then visible to all; with C 1, the block's barrier. */
template <int C> __device__ __forceinline__ void group_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (C > 1) {
        cooperative_groups::this_cluster().sync();
        return;
    }
#endif
    __syncthreads();
}

/* The address of `local` (this block's shared memory) in block `rank` of the group. */
template <int C, typename T> __device__ __forceinline__ T *in_block(T *local, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (C > 1) return cooperative_groups::this_cluster().map_shared_rank(local, rank);
#endif
    (void)rank;
    return local;
}

enum weight_kind { BY_COUNT, BY_MASS, BY_DRAW };

struct weighing {
    int kind;
    float best, inverse_temperature, temperature;
};

/* x - y = hi + lo exactly (two-sum) */
__device__ __forceinline__ void exact_difference(float x, float y, float *hi, float *lo) {
    const float s = __fsub_rn(x, y);
    const float x_part = __fadd_rn(s, y), y_part = __fsub_rn(s, x_part);
    *hi = s;
    *lo = __fadd_rn(__fsub_rn(x, x_part), __fsub_rn(-y, y_part));
}

/* A candidate's weight in units of 1 / FIXED_ONE (a count: 1). */
__device__ __forceinline__ uint64_t weight_of(const weighing &w, float logit) {
    if (w.kind == BY_COUNT) return 1;
    float hi, lo;
    exact_difference(logit, w.best, &hi, &lo);
    if (w.kind == BY_DRAW) { /* (hi + lo) / T as hi + lo: the quotient's residual taken exactly by an FMA */
        const float q = __fmul_rn(hi, w.inverse_temperature);
        lo = __fmul_rn(__fadd_rn(fmaf(-q, w.temperature, hi), lo), w.inverse_temperature);
        hi = q;
    }
    const float e = expf(hi);
    const float weight = fmaf(e, lo, e); /* exp(hi + lo) = exp(hi) (1 + lo) to float precision */
    return weight > 0 ? __float2ull_rn(__fmul_rn(weight, FIXED_ONE)) : 0; /* -inf, NaN, underflow: 0 */
}

/* *sum += weight, exactly, in 32-bit shared-memory atomics: the low word's add, then the high word's
 * (the weight's high bits plus the low word's carry) only where not zero. A 64-bit shared atomic add
 * is a compare-and-swap loop in SASS; most weights (below 2^32, a 2^-8 share of the best's) take
 * one 32-bit add. The words are the u64's (little-endian), so a reader after the block's barrier
 * sees the exact sum. */
__device__ __forceinline__ void add_weight(unsigned long long *sum, uint64_t weight) {
    unsigned *words = reinterpret_cast<unsigned *>(sum);
    const unsigned low = (unsigned)weight, old = atomicAdd(&words[0], low);
    const unsigned high = (unsigned)(weight >> 32) + (old + low < old); /* the carry out of the low word */
    if (high) atomicAdd(&words[1], high);
}

/* The histogram's bin of a logit: 0 for the best, rising as the logit falls (a -inf or NaN one in
 * the last); a bin holds a run of the ranking, since the map is monotone. */
__device__ __forceinline__ int logit_bin(float logit, float best, float scale) {
    return (int)fminf(__fmul_rn(__fsub_rn(best, logit), scale), (float)(BINS - 1));
}

/* A block's shared memory for the selection. The group's blocks read each other's `weights` (a
 * histogram of their ids), `keys`, `n_members` and `low`/`high` (after a group_sync, and each
 * rewrites them only after the next one). */
struct selection_shared {
    union {
        unsigned long long weights[BINS]; /* this block's histogram */
        uint64_t gathered[THREADS];       /* the crossing bin's members from every block of the group */
    };
    unsigned long long merged[BINS]; /* the group's histogram; then the gathered members' weights */
    uint64_t keys[THREADS];          /* this block's members of the crossing bin */
    unsigned long long partial[32];
    uint64_t warp_low[32], warp_high[32], low, high;
    int n_members, index;
    unsigned long long before;
};

__device__ __forceinline__ bool crosses(uint64_t sum, double target, bool strict) {
    return strict ? (double)sum > target : (double)sum >= target;
}

/* The first i of s.merged[0..BINS) (two a thread, in order) where base plus the running sum
 * crosses *target (first scaled by base plus the sum of all, where of_total); -1 if none.
 * *before: base plus the sum before it. All threads call; all get the same answer. */
__device__ int first_crossing(selection_shared &s, uint64_t base, double *target, bool of_total, bool strict, uint64_t *before) {
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const uint64_t a = s.merged[2 * tid], b = s.merged[2 * tid + 1];
    uint64_t inclusive = a + b;
    for (int offset = 1; offset < 32; offset *= 2) {
        const uint64_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += up;
    }
    if (lane == 31) s.partial[warp] = inclusive;
    if (tid == 0) s.index = -1;
    __syncthreads();
    if (warp == 0) {
        uint64_t sum = s.partial[lane];
        for (int offset = 1; offset < 32; offset *= 2) {
            const uint64_t up = __shfl_up_sync(0xffffffffu, sum, offset);
            if (lane >= offset) sum += up;
        }
        s.partial[lane] = sum;
    }
    __syncthreads();
    if (of_total) *target *= (double)(base + s.partial[31]);
    const double goal = *target;
    const uint64_t exclusive = base + (warp ? s.partial[warp - 1] : 0) + inclusive - (a + b);
    if (!crosses(exclusive, goal, strict) && crosses(exclusive + a, goal, strict)) s.index = 2 * tid, s.before = exclusive;
    else if (!crosses(exclusive + a, goal, strict) && crosses(exclusive + a + b, goal, strict))
        s.index = 2 * tid + 1, s.before = exclusive + a;
    __syncthreads();
    const int index = s.index;
    *before = s.before;
    __syncthreads();
    return index;
}

/* The least (or, with MOST, the most) of one key a thread over the block (all threads call). */
template <bool MOST> __device__ uint64_t block_extreme_key(uint64_t key, uint64_t *per_warp) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const uint64_t other = __shfl_xor_sync(0xffffffffu, key, offset);
        key = MOST ? max(key, other) : min(key, other);
    }
    if (threadIdx.x % 32 == 0) per_warp[threadIdx.x / 32] = key;
    __syncthreads();
    key = per_warp[0];
    for (int w = 1; w < THREADS / 32; w++) key = MOST ? max(key, per_warp[w]) : min(key, per_warp[w]);
    __syncthreads();
    return key;
}
__device__ uint64_t block_min_key(uint64_t key, selection_shared &s) { return block_extreme_key<false>(key, s.warp_low); }
__device__ uint64_t block_max_key(uint64_t key, selection_shared &s) { return block_extreme_key<true>(key, s.warp_high); }

/* This thread's member of the group's blocks' keys[] taken block after block (count[r] of them in
 * block r, n in all, at most THREADS): a member a thread, one round trip; 0 for a thread past n.
 * The caller keeps the blocks' keys[] and counts until a group_sync after this. */
template <int C> __device__ uint64_t group_member(const uint64_t *keys, const int *count, int n) {
    const int tid = threadIdx.x;
    int ends[C]; /* members of blocks 0..r (the C counts read at once, not one after another) */
#pragma unroll
    for (int r = 0; r < C; r++) ends[r] = *in_block<C>(count, r) + (r ? ends[r - 1] : 0);
    if (tid >= n) return 0;
    int r = 0;
#pragma unroll
    for (int q = 0; q < C - 1; q++) r += tid >= ends[q];
    return *in_block<C>(&keys[tid - (r ? ends[r - 1] : 0)], r);
}

/* The sum over the group's C blocks of one int a block (`value` in this block's shared memory; all
 * threads call after their last write of it: the group's barrier comes first). A caller rewrites
 * `value` only after the group's next barrier. */
template <int C> __device__ int group_total(const int *value) {
    group_sync<C>();
    int total = 0;
#pragma unroll
    for (int r = 0; r < C; r++) total += *in_block<C>(value, r);
    return total;
}

/* The least of the group's threads' `least` keys and the most of their `most` (through s.low and
 * s.high: a group_sync after their last readers' before the next call). */
template <int C> __device__ void group_min_max(uint64_t *least, uint64_t *most, selection_shared &s) {
    const uint64_t block_least = block_min_key(*least, s), block_most = block_max_key(*most, s);
    if (C == 1) {
        *least = block_least, *most = block_most;
        return;
    }
    if (threadIdx.x == 0) s.low = block_least, s.high = block_most;
    group_sync<C>();
    *least = ~0ull, *most = 0;
#pragma unroll
    for (int r = 0; r < C; r++) *least = min(*least, *in_block<C>(&s.low, r)), *most = max(*most, *in_block<C>(&s.high, r));
}

/* s.merged = the sum of the group's blocks' histograms (s.weights, complete: all threads call after
 * this block's last atomic). */
template <int C> __device__ void merge_histograms(selection_shared &s) {
    group_sync<C>();
#pragma unroll 1
    for (int b = threadIdx.x; b < BINS; b += THREADS) { /* a bin's C loads in flight at once, not the two bins' (spills) */
        unsigned long long sum = 0;
#pragma unroll
        for (int r = 0; r < C; r++) sum += *in_block<C>(&s.weights[b], r);
        s.merged[b] = sum;
    }
    __syncthreads();
}

/* The key of the first candidate, in ranking order among the keys at or above `floor`, at which
 * the running sum of w's weight crosses target (times the sum of them all, where of_total):
 * reaches it, or passes it where strict. 0 if none does. All threads of the group's C blocks call
 * (block `rank` takes its share of the ids); all get the same answer. */
template <int C>
__device__ uint64_t select_crossing(const float *logits, int n_vocab, int rank, const weighing &w, uint64_t floor, double target,
                                    bool of_total, bool strict, float scale, selection_shared &s, int stamp = TM_STAMP_POINTS) {
    const int tid = threadIdx.x;
    for (int b = tid; b < BINS; b += THREADS) s.weights[b] = 0;
    __syncthreads();
    for_each_logit(
        logits, n_vocab,
        [&](float logit, int i) {
            if (rank_key(logit, i) < floor) return;
            const uint64_t weight = weight_of(w, logit);
            if (weight) add_weight(&s.weights[logit_bin(logit, w.best, scale)], weight);
        },
        rank, C);
    __syncthreads();
    merge_histograms<C>(s);
    if (stamp < TM_STAMP_POINTS) tm_stamp(stamp);
    uint64_t above;
    int bin = first_crossing(s, 0, &target, of_total, strict, &above); /* target now a sum */
    if (bin < 0) return 0;
    /* the crossing bin's members: first those of a logit bin, then of a key range [low, high] */
    bool by_logit = true;
    uint64_t low = 0, high = ~0ull;
    int n_members;
    for (;;) {
        if (tid == 0) s.n_members = 0;
        s.keys[tid] = 0; /* 0 sorts last: every real key is above it */
        __syncthreads();
        uint64_t least = ~0ull, most = 0;
        for_each_logit(
            logits, n_vocab,
            [&](float logit, int i) {
                const uint64_t key = rank_key(logit, i);
                if (key < floor || (by_logit ? logit_bin(logit, w.best, scale) != bin : key < low || key > high)) return;
                const int at = atomicAdd(&s.n_members, 1);
                if (at < THREADS) s.keys[at] = key;
                least = min(least, key), most = max(most, key);
            },
            rank, C);
        n_members = group_total<C>(&s.n_members); /* every block's members and count complete */
        if (n_members <= THREADS) break;
        /* too many to sort: split their key range into BINS bins and find the crossing one */
        group_min_max<C>(&least, &most, s);
        low = least, high = most, by_logit = false;
        const uint64_t width = (high - low) / BINS + 1;
        for (int b = tid; b < BINS; b += THREADS) s.weights[b] = 0;
        __syncthreads();
        for_each_logit(
            logits, n_vocab,
            [&](float logit, int i) {
                const uint64_t key = rank_key(logit, i);
                if (key < floor || key < low || key > high) return;
                const uint64_t weight = weight_of(w, logit);
                if (weight) add_weight(&s.weights[(high - key) / width], weight);
            },
            rank, C);
        __syncthreads();
        merge_histograms<C>(s);
        bin = first_crossing(s, above, &target, false, strict, &above);
        if (bin < 0) return 0;
        const uint64_t top = high - (uint64_t)bin * width; /* the bin's keys: (top - width, top] within [low, high] */
        high = top, low = top - low >= width ? top - width + 1 : low;
    }
    /* the members of every block gathered (a member a thread: one round trip), ranked; their
     * weights; the crossing among them */
    const int n_sorted = power_of_2_above(n_members);
    const uint64_t member = group_member<C>(s.keys, &s.n_members, n_members);
    group_sync<C>(); /* every block's members read: s.keys may be rewritten (the sort's spare) */
    s.gathered[tid] = member;
    __syncthreads();
    sort_keys_descending(s.gathered, s.keys, n_sorted);
    for (int b = tid; b < BINS; b += THREADS) s.merged[b] = b < n_members ? weight_of(w, logits[key_id(s.gathered[b])]) : 0;
    __syncthreads();
    uint64_t before;
    const int index = first_crossing(s, above, &target, false, strict, &before);
    if (stamp < TM_STAMP_POINTS) tm_stamp(stamp + 1);
    return index >= 0 && index < n_members ? s.gathered[index] : 0;
}

/* The token of one row with no top-k a block can hold (engine/sampler.c's choose without top-k,
 * or with a top-k above 1024 and below the vocabulary), by the C blocks of the row's group (this
 * one `rank`). All their threads call; all get the same token. */
template <int C> __device__ int sample_by_selection(const float *logits, int n_vocab, int rank, const tm_cuda_sampling &p, selection_shared &s) {
    /* the best key (its logit the best), and the least above -inf: the histograms' range */
    uint64_t best_key = 0, worst_key = ~0ull;
    for_each_logit(
        logits, n_vocab,
        [&](float logit, int i) {
            if (logit != logit) return; /* NaN */
            const uint64_t key = rank_key(logit, i);
            best_key = max(best_key, key);
            if (logit > -INFINITY) worst_key = min(worst_key, key);
        },
        rank, C);
    group_min_max<C>(&worst_key, &best_key, s);
    tm_stamp(TM_STAMP_A);
    if (best_key == 0 || worst_key == ~0ull) { /* every logit NaN, or -inf (or NaN) */
        group_sync<C>();
        return best_key ? key_id(best_key) : 0;
    }
    const float best = logits[key_id(best_key)];
    const float worst = logits[key_id(worst_key)];
    float scale = worst < best ? (float)BINS / __fsub_rn(best, worst) : 0.0f;
    if (!isfinite(scale)) scale = 0;
    weighing w = {BY_COUNT, best, 1.0f / p.temperature, p.temperature};
    uint64_t floor = 0;
    if (p.top_k > THREADS && p.top_k < n_vocab) { /* the k best: the k-th key */
        const uint64_t kth = select_crossing<C>(logits, n_vocab, rank, w, 0, (double)p.top_k, false, false, scale, s);
        if (kth) floor = kth;
    }
    if (p.top_p > 0 && p.top_p < 1) { /* the fewest best whose probability reaches top_p */
        w.kind = BY_MASS;
        const uint64_t last = select_crossing<C>(logits, n_vocab, rank, w, floor, (double)p.top_p, true, false, scale, s, TM_STAMP_B);
        if (last) floor = last;
    }
    if (p.min_p > 0) /* the logits at or above best + log(min_p): keys at or above its bits, any id */
        floor = max(floor, rank_key(__fadd_rn(best, logf(p.min_p)), 0) & (uint64_t)0xFFFFFFFF00000000ull);
    floor = min(floor, best_key); /* at least the best */
    w.kind = BY_DRAW;
    uint64_t chosen = select_crossing<C>(logits, n_vocab, rank, w, floor, p.uniform, true, true, scale, s, TM_STAMP_D);
    if (!chosen) { /* the draw past the total by rounding: the last kept, as the CPU's loop ends */
        uint64_t least = ~0ull, most = 0;
        for_each_logit(
            logits, n_vocab,
            [&](float logit, int i) {
                const uint64_t key = rank_key(logit, i);
                if (key >= floor) least = min(least, key);
            },
            rank, C);
        group_min_max<C>(&least, &most, s);
        chosen = least;
    }
    group_sync<C>(); /* no block leaves while another may read its shared memory */
    return key_id(chosen);
}

/* ---- Top-k by a group of blocks ------------------------------------------------------------------ */

/* The k-th largest key of the row (the largest threshold with at least k keys at or above it) by
 * bisection from `low` (at least k keys at or above it), a pass over the group's shares and a
 * count a step (up to 64): where the bound's keys are too many to compact (ties, a large k).
 * counts: two ints of this block's shared memory, a step's count in one while the group may
 * still read the other's. All threads of the group call. */
template <int C> __device__ uint64_t kth_key_by_bisection(const float *logits, int n_vocab, int rank, int k, uint64_t low, int *scratch,
                                                          int *counts) {
    uint64_t high = ~0ull;
    for (int step = 0; low < high; step++) {
        const uint64_t middle = low + (high - low) / 2 + 1;
        int count = 0;
        for_each_logit(logits, n_vocab, [&](float logit, int i) { count += rank_key(logit, i) >= middle; }, rank, C);
        count = block_count(count, scratch);
        if (threadIdx.x == 0) counts[step & 1] = count;
        if (group_total<C>(&counts[step & 1]) >= k) low = middle;
        else high = middle - 1;
    }
    group_sync<C>(); /* every block's counts read */
    return low;
}

/* The n members of the group's blocks' keys[] (counts[r] of block r, n at most THREADS) into block
 * 0's keys[0..n) in block order, the rest of them 0; true in block 0, whose threads go on, and
 * false in the others, which may leave: nothing reads their shared memory after. All threads of
 * the group call. */
template <int C> __device__ bool gather_keys(uint64_t *keys, const int *count, int n, int rank) {
    const uint64_t member = group_member<C>(keys, count, n);
    group_sync<C>(); /* every block's keys read */
    if (rank > 0) return false;
    keys[threadIdx.x] = member;
    __syncthreads();
    return true;
}

/* The greedy token of row `row_index` (argmax, lowest id on ties) by the C blocks of its group,
 * this one `rank`: each block over its share of the ids, block 0 over the blocks' bests (in its
 * shared memory, written there by each block before the group's barrier). best_value and best_id:
 * the block's THREADS / 32 slots. (sample_kernel<8> on sm_90a with it: 64 registers, 28 bytes of
 * spill stores, 44 before; written inline in the kernel, 56.) */
template <int C>
__device__ __forceinline__ void greedy_row(const float *logits, int n_vocab, int rank, int row_index, int32_t *tokens, int32_t *host_tokens,
                                        float *best_value, int *best_id) {
    __shared__ float group_value[C];
    __shared__ int group_id[C];
    const int tid = threadIdx.x;
    float value = -INFINITY;
    int id = n_vocab; /* no id yet: loses every tie */
    const auto take = [&](float other_value, int other_id) {
        if (other_value > value || (other_value == value && other_id < id)) value = other_value, id = other_id;
    };
    for_each_logit_vectorized(
        logits, n_vocab, [&](float logit, int i) {
            if (logit > value || id == n_vocab) value = logit, id = i;
        },
        rank, C);
    for (int offset = 16; offset > 0; offset /= 2) take(__shfl_xor_sync(0xffffffffu, value, offset), __shfl_xor_sync(0xffffffffu, id, offset));
    if (tid % 32 == 0) best_value[tid / 32] = value, best_id[tid / 32] = id;
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < THREADS / 32; w++) take(best_value[w], best_id[w]);
        if constexpr (C > 1) *in_block<C>(&group_value[rank], 0) = value, *in_block<C>(&group_id[rank], 0) = id;
    }
    if constexpr (C > 1) {
        group_sync<C>(); /* every block's best in block 0's shared memory */
        if (rank == 0 && tid == 0)
            for (int r = 1; r < C; r++) take(group_value[r], group_id[r]);
    }
    if (rank == 0 && tid == 0) put_token(tokens, host_tokens, row_index, id < n_vocab ? id : 0);
}

/* Up to TM_CUDA_SAMPLE_ARG_ROWS rows' parameters by value in the launch's arguments (n 0: none). */
struct sample_rows_arg {
    int n;
    tm_cuda_sampling rows[TM_CUDA_SAMPLE_ARG_ROWS];
};

/* Whether a row samples by selection (sample_by_selection) rather than greedy or top-k in a block. */
__host__ __device__ __forceinline__ bool samples_by_selection(const tm_cuda_sampling &p) {
    return p.temperature > 0 && (p.top_k < 1 || p.top_k > TM_CUDA_SAMPLE_MAX_TOP_K);
}

/* One row a group of C blocks (C > 1: a cluster, sm_90), all C taking their share of its ids:
 * greedy, top-k or the selection. */
template <int C>
__global__ void __launch_bounds__(THREADS) sample_kernel(float *logits_all, int n_vocab, const tm_cuda_sampling *rows, sample_rows_arg in_args,
                                                         const int32_t *penalized, const int32_t *step_tokens, int32_t *tokens,
                                                         int32_t *host_tokens) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if (C > 1) __trap(); /* clusters need sm_90; the host never launches C > 1 there */
#endif
    const tm_stamper stamper = tm_stamp_begin(); /* -DTM_BLOCK_STAMPS only (stamps.cuh) */
    const int row_index = blockIdx.x / C, rank = blockIdx.x % C;
    __shared__ union {
        struct {
            uint64_t keys[TM_CUDA_SAMPLE_MAX_TOP_K];
            double weights[TM_CUDA_SAMPLE_MAX_TOP_K];
            float draw_weights[TM_CUDA_SAMPLE_MAX_TOP_K], logits[TM_CUDA_SAMPLE_MAX_TOP_K];
            uint64_t spare[TM_CUDA_SAMPLE_MAX_TOP_K]; /* the sort's second buffer */
            uint64_t lists[32 * 33];                  /* block_mth_largest's, 33 a warp: no bank conflicts */
        } top_k;
        selection_shared selection;
    } shared;
    uint64_t *keys = shared.top_k.keys;
    double *weights = shared.top_k.weights;
    float *draw_weights = shared.top_k.draw_weights, *kept_logits = shared.top_k.logits;
    __shared__ int scratch[THREADS / 32];
    __shared__ float best_value[THREADS / 32];
    __shared__ int best_id[THREADS / 32], n_selected, bisection_counts[2];
    __shared__ uint64_t block_bound;
    __shared__ double softmax_sum;
    __shared__ tm_cuda_sampling row;
    /* the row's parameters from the launch's arguments, or one load for the block (rows may be in
     * host memory: a trip over the bus a load) */
    if (threadIdx.x == 0) row = in_args.n ? in_args.rows[row_index] : rows[row_index];
    __syncthreads();
    const tm_cuda_sampling p = row;
    const bool by_selection = samples_by_selection(p);
    float *logits = logits_all + (int64_t)row_index * n_vocab;
    const int tid = threadIdx.x;
    /* repetition penalty: the host lists each id of the window once; a fed token that ends the
     * window (fed_at, unseen by the host) is penalized after them unless they list it (by the
     * group's first block; the group's barrier then shows the others) */
    if (rank == 0 && p.repetition_penalty != 1.0f && p.repetition_penalty > 0) {
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
    if (p.repetition_penalty != 1.0f && p.repetition_penalty > 0) group_sync<C>(); /* the first block's penalties seen (C 1: the block's barrier) */
    if (by_selection) {
        tm_stamp(TM_STAMP_WAITED);
        const int token = sample_by_selection<C>(logits, n_vocab, rank, p, shared.selection);
        if (rank == 0 && tid == 0) put_token(tokens, host_tokens, row_index, token);
        tm_stamp_end(stamper, TM_STAMP_SAMPLE_SELECTION, logits_all);
        return;
    }
    __syncthreads();
    tm_stamp(TM_STAMP_WAITED);
    if (p.temperature <= 0) {
        greedy_row<C>(logits, n_vocab, rank, row_index, tokens, host_tokens, best_value, best_id);
        tm_stamp_end(stamper, TM_STAMP_SAMPLE_GREEDY, logits_all);
        return;
    }
    const int k = min(p.top_k, n_vocab);
    /* The k best keys into keys[0..k), descending. First a bound: every thread's largest key
     * (sorted, the k-th of them: k real keys are at or above it, so every one of the k best is; in
     * a group of C blocks, the least of the blocks' ceil(k/C)-th: C ceil(k/C) real keys are at or
     * above it, and it is tighter than the most of their k-th: Gaussian logits, k 40, simulated,
     * ~70 keys through against ~255; k 200, ~265 against ~1560, too many to compact; where
     * ceil(k/C) <= 32 found without sorting the 1024: block_mth_largest, top-k 40 a row 7B 23.2 ->
     * 20.2 us, 8B 25.6 -> 22.3, H200), then the keys at or above it compacted, which for k up to a
     * few hundred are far fewer than the 1024 keys[] holds (128256 random logits, k 40, one block:
     * ~40); two passes over the row, a group's blocks each over their share (on one block the 8B's
     * 128256 ids took 42.1 us a row against the 7B's 32000 in 24.5, H200). Where they are more, the
     * k-th largest key is found by bisection from that bound (a pass over the row a step, up to 64)
     * and exactly the k keys at or above it are compacted. The bisection alone, as before session
     * 55, cost 8B decode x1 at top-k 40 a sixth of its speed; H200, top-k 40 / top-p 0.95 at
     * temperature 0.8, bisection -> bound: 8B x1 208.3 -> 244.5 tokens/s (greedy 246.7), x8 1591 ->
     * 1852; 7B x1 561.0 -> 612.9, x8 3315 -> 3547. */
    uint64_t largest = 0; /* a thread without ids: 0, which sorts last */
    for_each_logit(logits, n_vocab, [&](float logit, int i) { largest = max(largest, rank_key(logit, i)); }, rank, C);
    tm_stamp(TM_STAMP_A);
    const int m = (k + C - 1) / C; /* the bound: this block's m-th largest thread maximum */
    uint64_t low;
    if (C > 1 && m <= 32) {
        low = block_mth_largest(largest, m, shared.top_k.lists, &block_bound); /* set to it below anyway */
    } else {
        keys[tid] = largest;
        __syncthreads();
        sort_keys_descending(keys, shared.top_k.spare);
        low = keys[m - 1];
    }
    tm_stamp(TM_STAMP_B);
    if constexpr (C > 1) {
        if (tid == 0) block_bound = low;
        group_sync<C>();
#pragma unroll
        for (int r = 0; r < C; r++) low = min(low, *in_block<C>(&block_bound, r));
    }
    __syncthreads();
    compact_keys(logits, n_vocab, low, keys, &n_selected, rank, C);
    int n_keys = group_total<C>(&n_selected);
    if (n_keys > THREADS) {
        low = kth_key_by_bisection<C>(logits, n_vocab, rank, k, low, scratch, bisection_counts);
        compact_keys(logits, n_vocab, low, keys, &n_selected, rank, C); /* exactly k */
        n_keys = group_total<C>(&n_selected);
    }
    if constexpr (C > 1)
        if (!gather_keys<C>(keys, &n_selected, n_keys, rank)) return;
    tm_stamp(TM_STAMP_C);
    sort_keys_descending(keys, shared.top_k.spare, power_of_2_above(n_keys));
    const int n = k;
    const double best = logits[key_id(keys[0])];
    if (tid < n) { /* each candidate's logit and weights, for thread 0's loops (each a load from L2 and an exp) */
        const float logit = logits[key_id(keys[tid])];
        kept_logits[tid] = logit;
        weights[tid] = exp((double)logit - best);
        draw_weights[tid] = (float)exp(((double)logit - best) / p.temperature);
    }
    __syncthreads();
    /* the CPU's loops, in its order (its weights): the softmax's sum by thread 0, each term's
     * quotient by its own thread (a float64 division each: serial, k 1024 took ~100 us), the
     * running sums by thread 0 */
    const bool top_p = p.top_p > 0 && p.top_p < 1;
    if (top_p) {
        if (tid == 0) {
            double sum = 0;
            for (int i = 0; i < n; i++) sum += weights[i];
            softmax_sum = sum;
        }
        __syncthreads();
        if (tid < n) weights[tid] /= softmax_sum;
        __syncthreads();
    }
    tm_stamp(TM_STAMP_D);
    if (tid != 0) return;
    int keep = n;
    if (top_p) {
        double cumulative = 0;
        for (int i = 0; i < n; i++) {
            cumulative += weights[i];
            if (cumulative >= p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p.min_p > 0) {
        float threshold = (float)best + logf(p.min_p);
        int kept = 1;
        while (kept < keep && kept_logits[kept] >= threshold) kept++;
        keep = kept;
    }
    double total = 0;
    for (int i = 0; i < keep; i++) total += draw_weights[i];
    double draw = p.uniform * total, acc = 0;
    int chosen = key_id(keys[keep - 1]);
    for (int i = 0; i < keep; i++) {
        acc += draw_weights[i];
        if (draw < acc) {
            chosen = key_id(keys[i]);
            break;
        }
    }
    tm_stamp(TM_STAMP_E);
    put_token(tokens, host_tokens, row_index, chosen);
    tm_stamp_end(stamper, TM_STAMP_SAMPLE_TOP_K, logits_all);
}

/* Rows run in clusters of SAMPLE_CLUSTER blocks wherever the device launches clusters (sm_90),
 * every row. Greedy rows took one block until session 58; in clusters (H200, CUPTI, plain-launch profile,
 * the kernel's mean a step) the 8B's 128256 ids 8.64 -> 5.47 us at one row, 8.85 -> 5.51 at 8; the
 * 7B's 32000 5.70 -> 5.67 and 5.66 -> 5.30 (its one block's pass was already one round trip: the
 * rest is the launch, the barriers and the token's store); decode tokens/s, one call, two rounds:
 * 8B x1 250.1, 250.1 -> 250.3, 250.3, x8 1892, 1894 -> 1896, 1895, the 7B within its noise. */

extern "C" int tm_cuda_sample(float *logits, int n_rows, int n_vocab, const tm_cuda_sampling *rows, int rows_on_host,
                              const int32_t *penalized, const int32_t *step_tokens, int32_t *tokens, int32_t *host_tokens, void *stream) {
    if (n_rows == 0) return cudaSuccess;
    if (n_vocab < 1 || n_vocab > TM_CUDA_SAMPLE_MAX_VOCAB) return cudaErrorInvalidValue;
    sample_rows_arg in_args;
    in_args.n = rows_on_host && n_rows <= TM_CUDA_SAMPLE_ARG_ROWS ? n_rows : 0;
    for (int r = 0; r < in_args.n; r++) in_args.rows[r] = rows[r];
    if (tm_cluster_launch_available()) {
        cudaLaunchAttribute attribute;
        attribute.id = cudaLaunchAttributeClusterDimension;
        attribute.val.clusterDim.x = SAMPLE_CLUSTER, attribute.val.clusterDim.y = 1, attribute.val.clusterDim.z = 1;
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(n_rows * SAMPLE_CLUSTER);
        config.blockDim = dim3(THREADS);
        config.stream = (cudaStream_t)stream;
        config.attrs = &attribute;
        config.numAttrs = 1;
        TM_CUDA_CHECK(cudaLaunchKernelEx(&config, sample_kernel<SAMPLE_CLUSTER>, logits, n_vocab, rows, in_args, penalized, step_tokens, tokens,
                                         host_tokens));
        return cudaSuccess;
    }
    sample_kernel<1><<<n_rows, THREADS, 0, (cudaStream_t)stream>>>(logits, n_vocab, rows, in_args, penalized, step_tokens, tokens,
                                                                    host_tokens);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}
