/*
 * gemv_stream.cu - the one-token decode product for q4_k, q5_k and q6_k weights on sm_90: weights
 * streamed into shared memory by the bulk-copy engine (cp.async.bulk, completion counted on an
 * mbarrier), so the bytes in flight no longer depend on registers.
 *
 * Why: the dp4a kernel (gemv_q8.cu, a warp a row) keeps its weights in flight in registers: at
 * the 56 registers its decoding needs only 36 warps fit on an SM, and ncu on the H200 saw the 7B
 * gate/up product latency-bound at 40 % of DRAM bandwidth. Here two blocks an SM (grid: twice the
 * SM count, or the rows when fewer) each own a contiguous range of the (concatenated) rows. A
 * block's producer warp copies its rows a tile at a time into a ring of stages (the first stages
 * before the wait for the previous kernel: weights are written by no kernel), and the activations
 * (q8_1, at most 32 KiB for a 28672-wide row) once into shared memory after the wait. Eight
 * consumer warps take each stage as it lands: warp w owns STREAM_R = 4 rows of the tile (each
 * activation sub-block read from shared memory serves four rows), or, for wide rows, a slice of
 * their 256-column blocks; lane l takes sub-block l % 8 of blocks l / 8, l / 8 + 4, ... of its
 * slice, as the dp4a kernel does. A warp's sums go to shared memory; the producer, once all eight
 * warps have released a stage, adds a row's slices in a fixed order (so a row's result does not
 * depend on the launch), stores y and refills the stage.
 *
 * The host plans per part: the tile is the most rows (up to 32, halving) whose bytes stay within
 * the stage target (TM_STREAM_STAGE_KB, default 64, halved until two stages fit), the split (warps
 * sharing a group of four rows) follows from it, and the ring takes as many stages (up to 8) of
 * the largest part's tile as the block's half of shared memory leaves after the activations. A
 * launch is declined with cudaErrorNotSupported (the caller falls back to dp4a) when it moves
 * fewer than TM_STREAM_MIN_KB (default 448) KiB of weights a block. Also declined: plans that do
 * not fit (fewer than two stages), devices before sm_90, activations not 16-byte aligned, and
 * unless TM_GEMV_STREAM=1 (the measuring aids are read once).
 *
 * Off by default since session 8: gemv_q8.cu's pairs_kernel (a lane a pair of sub-blocks, every
 * byte it loads used) took the 70B's large products faster than this kernel (H200, 70B decode x1
 * 60.86 / 60.96 / 60.88 tokens/s streaming them, 61.06 / 61.12 / 61.07 not, in three calls). Kept
 * for measuring on other cards (TM_GEMV_STREAM=1); test_gemv_cuda checks it on every q8 shape.
 *
 * Measured on the H200 (tmbench run suites/throughput.yaml, decode tokens/s, docs/perf-notes.md
 * session 6): 70B x1 56.9 -> 60.7 with the products of >= 256 KiB a block streamed (gate/up 1 MiB,
 * down 500-780 KiB, LM head 870 KiB), 61.0 with every product streamed; 7B x1 420 -> 394 with
 * every product streamed (36-190 KiB a block), 417 with only its LM head (434 KiB) streamed. The
 * default, 448, streams exactly the 70B products of the 60.7 row and none of the 7B's. Why small
 * products lose is not settled: ncu of the first version (one block an SM, 5 stages) saw DRAM
 * 20-34 % busy at 0.23-0.32 issues a cycle a scheduler; two blocks an SM and larger stages each
 * helped (7B x1 312 -> 392 -> 406), smaller copies hurt; a per-launch fill and drain that a
 * block of a few stages cannot amortize fits the data but was not isolated.
 */
#include "kernels.h"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "mmvq.cuh"

#define STREAM_WARPS 8 /* consumer warps; one more warp produces */
#define STREAM_R 4     /* rows a consumer warp owns */
#define STREAM_BLOCKS_PER_SM 2
#define STREAM_MAX_STAGES 8

/* How one launch streams its parts (the host's plan; the kernel reads it with constant indices). */
struct stream_plan {
    int64_t total_rows, total_bytes;
    int tile_rows[TM_CUDA_GEMV_MAX_PARTS]; /* rows a stage holds */
    int split[TM_CUDA_GEMV_MAX_PARTS];     /* warps sharing one group of STREAM_R rows (1, 2, 4 or 8) */
    int row_bytes[TM_CUDA_GEMV_MAX_PARTS];
    int slot_bytes; /* bytes from one stage to the next, a multiple of 128 */
    int stages;
    int x_bytes; /* the activations' region at the start of dynamic shared memory, a multiple of 128 */
};

/* The rows one stage carries: `n` rows from `row` (relative to its part) of one part. */
struct stream_chunk {
    const uint8_t *weights;
    float *y;
    int64_t row;
    int n, type, tile_rows, split, row_bytes;
};

/* The chunk starting at concatenated row `at` of a block's range ending at `end`. */
__device__ __forceinline__ stream_chunk chunk_at(const mmvq_parts &parts, const stream_plan &plan, int64_t at, int64_t end) {
    stream_chunk c = {};
    int64_t row = at, left = 0;
    bool found = false;
#pragma unroll
    for (int i = 0; i < TM_CUDA_GEMV_MAX_PARTS; i++) {
        if (i >= parts.n || found) continue;
        if (row < parts.rows[i]) {
            c.weights = parts.weights[i], c.y = parts.y[i], c.type = parts.type[i], c.tile_rows = plan.tile_rows[i];
            c.split = plan.split[i], c.row_bytes = plan.row_bytes[i];
            left = parts.rows[i] - row;
            found = true;
        } else {
            row -= parts.rows[i];
        }
    }
    c.row = row;
    c.n = (int)min((int64_t)c.tile_rows, min(left, end - at));
    return c;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared memory by the bulk-copy engine. */
__device__ __forceinline__ void bulk_copy(void *shared, const void *global, unsigned bytes, uint64_t *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(shared_address(shared)),
                 "l"(global), "r"(bytes), "r"(shared_address(bar))
                 : "memory");
}

/* One warp's share of a stage: rows group*R .. group*R + R - 1 of the tile (`valid` of them real)
 * over 256-column blocks 4 * (slice + split * i) + lane / 8, sub-block lane % 8. */
template <int TYPE, int R>
__device__ __forceinline__ void stream_rows(const uint8_t *rows, int row_bytes, int valid, int slice, int split, int blocks,
                                            const int8_t *x_q, const half2 *x_d, int lane, float (&acc)[R]) {
    const int sub = lane % 8;
    for (int group4 = slice; group4 * 4 < blocks; group4 += split) {
        const int block = group4 * 4 + lane / 8;
        if (block >= blocks) break;
        const int4 *xv = reinterpret_cast<const int4 *>(x_q + block * 256 + sub * 32);
        const int4 a = xv[0], b = xv[1];
        const int x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        const float2 xd = __half22float2(x_d[block * 8 + sub]);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= valid) break;
            packed_subblock<TYPE> w;
            load_subblock<TYPE, true>(rows + r * row_bytes + block * traits<TYPE>::stride, sub, w);
            acc[r] += subblock_dot<TYPE>(w, x, xd);
        }
    }
}
#endif

__global__ void __launch_bounds__(32 * (STREAM_WARPS + 1), STREAM_BLOCKS_PER_SM)
    stream_kernel(mmvq_parts parts, stream_plan plan, int64_t cols, const int8_t *xq, const half2 *xds) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) uint8_t stream_shared[];
    __shared__ uint64_t full[STREAM_MAX_STAGES], empty[STREAM_MAX_STAGES], x_ready;
    __shared__ float partial[STREAM_MAX_STAGES][STREAM_WARPS * STREAM_R];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, stages = plan.stages;
    const int64_t begin = plan.total_rows * blockIdx.x / gridDim.x, end = plan.total_rows * (blockIdx.x + 1) / gridDim.x;
    int8_t *x_q = reinterpret_cast<int8_t *>(stream_shared);
    half2 *x_d = reinterpret_cast<half2 *>(stream_shared + cols);
    uint8_t *ring = stream_shared + plan.x_bytes;
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) mbarrier_init(shared_address(&full[s]), 1), mbarrier_init(shared_address(&empty[s]), STREAM_WARPS);
        mbarrier_init(shared_address(&x_ready), 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    if (warp == STREAM_WARPS) { /* the producer */
        int64_t issue_at = begin, retire_at = begin;
        int issued = 0, retired = 0;
        auto issue = [&]() {
            const stream_chunk c = chunk_at(parts, plan, issue_at, end);
            const int s = issued % stages;
            if (lane == 0) {
                const unsigned bytes = (unsigned)(c.n * c.row_bytes);
                mbarrier_expect(shared_address(&full[s]), bytes);
                /* one copy a stage: pieces of 4 KiB or 1 KiB measured slower (7B x1 312 -> 308 / 246) */
                bulk_copy(ring + (size_t)s * plan.slot_bytes, c.weights + c.row * c.row_bytes, bytes, &full[s]);
            }
            issue_at += c.n, issued++;
        };
        while (issued < stages && issue_at < end) issue(); /* weights only: before the wait */
        tm_grid_wait();
        if (lane == 0) {
            mbarrier_expect(shared_address(&x_ready), (unsigned)(cols + cols / 8));
            bulk_copy(x_q, xq, (unsigned)cols, &x_ready);
            bulk_copy(x_d, xds, (unsigned)(cols / 8), &x_ready);
        }
        tm_grid_release();
        while (retire_at < end) {
            const stream_chunk c = chunk_at(parts, plan, retire_at, end);
            const int s = retired % stages;
            mbarrier_wait(shared_address(&empty[s]), (unsigned)((retired / stages) & 1));
            for (int i = lane; i < c.n; i += 32) { /* row i of the tile: its slices, in order */
                const int group = i / STREAM_R, r = i % STREAM_R;
                float sum = partial[s][group * c.split * STREAM_R + r];
                for (int j = 1; j < c.split; j++) sum += partial[s][(group * c.split + j) * STREAM_R + r];
                c.y[c.row + i] = sum;
            }
            __syncwarp(); /* every lane has read the partial sums before the stage's next use can write them */
            retire_at += c.n, retired++;
            if (issue_at < end) issue();
        }
    } else { /* a consumer */
        tm_grid_dependency();
        mbarrier_wait(shared_address(&x_ready), 0);
        const int blocks = (int)(cols / 256);
        int it = 0;
        for (int64_t at = begin; at < end; it++) {
            const stream_chunk c = chunk_at(parts, plan, at, end);
            const int s = it % stages;
            mbarrier_wait(shared_address(&full[s]), (unsigned)((it / stages) & 1));
            const int group = warp / c.split, slice = warp % c.split, valid = min(STREAM_R, c.n - group * STREAM_R);
            const uint8_t *rows = ring + (size_t)s * plan.slot_bytes + (size_t)group * STREAM_R * c.row_bytes;
            float acc[STREAM_R];
#pragma unroll
            for (int r = 0; r < STREAM_R; r++) acc[r] = 0;
            if (valid > 0) {
                if (c.type == Q4_K) stream_rows<Q4_K, STREAM_R>(rows, c.row_bytes, valid, slice, c.split, blocks, x_q, x_d, lane, acc);
                else if (c.type == Q5_K) stream_rows<Q5_K, STREAM_R>(rows, c.row_bytes, valid, slice, c.split, blocks, x_q, x_d, lane, acc);
                else stream_rows<Q6_K, STREAM_R>(rows, c.row_bytes, valid, slice, c.split, blocks, x_q, x_d, lane, acc);
            }
#pragma unroll
            for (int r = 0; r < STREAM_R; r++) {
                const float sum = sum_over_warp(acc[r]);
                if (lane == 0) partial[s][warp * STREAM_R + r] = sum;
            }
            __syncwarp(); /* every lane is done reading the stage */
            if (lane == 0) mbarrier_arrive(shared_address(&empty[s]));
            at += c.n;
        }
    }
#endif
}

/* ---- host side ----------------------------------------------------------------------------- */

#define STREAM_MAX_DEVICES 64

/* Per device, read once: the SM count and the dynamic shared memory each of a multiprocessor's
 * STREAM_BLOCKS_PER_SM blocks may take (0: before sm_90). */
static cudaError_t stream_device(int *sms, int *shared_per_block) {
    static int cached_sms[STREAM_MAX_DEVICES], cached_shared[STREAM_MAX_DEVICES];
    static bool known[STREAM_MAX_DEVICES];
    int device = 0;
    TM_CUDA_CHECK(cudaGetDevice(&device));
    if (device < 0 || device >= STREAM_MAX_DEVICES) return cudaErrorNotSupported;
    if (!known[device]) {
        int count = 0, per_sm = 0;
        const int major = tm_device_major(); /* of the current device, as TM_DEVICE_MAJOR_MAX allows */
        TM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
        TM_CUDA_CHECK(tm_device_shared_memory(device, &per_sm, NULL));
        cached_sms[device] = count;
        /* each block: its static shared memory (under 2 KiB) and the 1 KiB the driver reserves */
        cached_shared[device] = major >= 9 ? per_sm / STREAM_BLOCKS_PER_SM - 3072 : 0;
        known[device] = true;
    }
    *sms = cached_sms[device], *shared_per_block = cached_shared[device];
    return cudaSuccess;
}

/* The plan for `parts` at rows of `cols` with stages of at most `target` bytes (a single row may
 * exceed it): false when fewer than two stages fit. */
static bool stream_plan_at(const mmvq_parts &parts, int64_t cols, int shared_per_block, int64_t target, stream_plan *plan) {
    *plan = stream_plan{};
    int64_t slot = 0;
    for (int p = 0; p < parts.n; p++) {
        const int64_t row_bytes = cols / 256 * k_block_stride(parts.type[p]);
        int tile = STREAM_WARPS * STREAM_R;
        while (tile > 1 && tile * row_bytes > target) tile /= 2;
        plan->tile_rows[p] = tile;
        plan->split[p] = tile >= STREAM_R ? STREAM_WARPS * STREAM_R / tile : STREAM_WARPS;
        plan->row_bytes[p] = (int)row_bytes;
        slot = max(slot, tile * row_bytes);
        plan->total_rows += parts.rows[p];
        plan->total_bytes += parts.rows[p] * row_bytes;
    }
    plan->slot_bytes = (int)((slot + 127) / 128 * 128);
    plan->x_bytes = (int)((cols + cols / 8 + 127) / 128 * 128);
    plan->stages = (int)min((int64_t)STREAM_MAX_STAGES, ((int64_t)shared_per_block - plan->x_bytes) / plan->slot_bytes);
    return plan->stages >= 2 && plan->total_rows > 0;
}

/* The plan at the stage target (TM_STREAM_STAGE_KB, default 64 KiB), halved until two stages fit
 * beside the activations (wide rows: a 28672-wide q4_k row is 15.75 KiB, 32 KiB of activations). */
static bool stream_plan_for(const mmvq_parts &parts, int64_t cols, int shared_per_block, stream_plan *plan) {
    static const int stage_kb = tm_env_int("TM_STREAM_STAGE_KB", 64); /* a measuring aid */
    for (int64_t target = (int64_t)(stage_kb > 0 ? stage_kb : 64) * 1024; target >= 256; target /= 2)
        if (stream_plan_at(parts, cols, shared_per_block, target, plan)) return true;
    return false;
}

cudaError_t mmvq_stream(const mmvq_parts &parts, int64_t cols, const void *q8, cudaStream_t s) {
    static const int enabled = tm_env_int("TM_GEMV_STREAM", 0);  /* a measuring aid: 1 streams (off by default since session 8) */
    static const int min_kb = tm_env_int("TM_STREAM_MIN_KB", 448); /* a measuring aid: weights a block needs to be streamed */
    if (!enabled || (uintptr_t)q8 % 16 || cols % 256 || cols > (1 << 24)) return cudaErrorNotSupported;
    int sms = 0, shared_per_block = 0;
    cudaError_t status = stream_device(&sms, &shared_per_block);
    if (status != cudaSuccess) return status;
    stream_plan plan;
    if (shared_per_block <= 0 || sms <= 0 || !stream_plan_for(parts, cols, shared_per_block, &plan)) return cudaErrorNotSupported;
    const int64_t grid = min((int64_t)sms * STREAM_BLOCKS_PER_SM, plan.total_rows);
    if (plan.total_bytes / grid < (int64_t)min_kb * 1024) return cudaErrorNotSupported;
    TM_CUDA_CHECK(tm_allow_dynamic_shared((const void *)stream_kernel, shared_per_block));
    const q8_out x = q8_out_at(q8, 1, cols); /* one token */
    const size_t shared = (size_t)plan.x_bytes + (size_t)plan.stages * plan.slot_bytes;
    TM_LAUNCH_DEPENDENT(stream_kernel, dim3((unsigned)grid), dim3(32 * (STREAM_WARPS + 1)), shared, s, parts, plan, cols, x.qs, x.ds);
    return cudaSuccess;
}
