/*
 * gemv_q8_0.cu - decode products of q8_0 weights (llama.cpp's blocks of a half scale and 32 int8
 * values, split on upload into a row's values then its scales: weights.cu) with 1..16 tokens of
 * q8_1 activations (tm_cuda_quantize_q8_1, quant.cuh's layout), up to TM_CUDA_GEMV_MAX_PARTS
 * products sharing that input (Q/K/V, gate/up) in one launch.
 *
 * Guarantees: y[j][r] = sum over the row's blocks b of d_w[b] * d_x[j][b] * (the integer dot of
 * the block's 32 values with token j's), in float32 (the dp4a kernel sums each half-block's dot
 * apart); a row's sums are added in an order fixed by the row alone, then over the warp (or the
 * tile's warps) in a fixed order, so a row's result does not depend on the launch (a part equals
 * its own launch bit for bit) nor vary from run to run. The only rounding beyond float32 is the
 * activations' (at most half a step of max|x|/127 per 256-value block), as for the k-quants' fast
 * products. Declines (cudaErrorNotSupported) columns not a multiple of 256, weights not 16-byte
 * aligned, other types, more than TM_CUDA_GEMV_MAX_TOKENS tokens.
 *
 * 2..16 tokens where every part's rows are whole 16-row tiles take q8_0_mma_kernel (int8 tensor
 * cores, below; TM_Q80_MMA=0 keeps them on the dp4a kernel), on sm_90 in a block a resident slot
 * where the tiles outnumber the slots (TM_Q80_PERSISTENT=0, and before sm_90: a block a tile).
 *
 * Layout: with cols % 256 == 0 a split row's values and scales start 16-byte aligned. The dp4a
 * kernel: a warp a row, 4 rows a block; a pass is 32 blocks, lane l loads the 16-byte pieces l and
 * l + 32 (half l % 2 of blocks l / 2 and 16 + l / 2) and their scales straight from global memory,
 * each load instruction 512 contiguous bytes, and dots them with the matching 16 activation bytes
 * (again 512 contiguous bytes a load); the next pass is requested before this pass's dots, the
 * first before the wait for the previous kernel (weights are written by no kernel, launch.cuh).
 *
 * Before the split (session 25): in GGUF's 34-byte blocks a block's values are only 2-byte aligned,
 * so both kernels staged raw 16-byte pieces in shared memory and re-aligned each block with nine
 * 32-bit reads and funnel shifts (the tensor-core kernel: eight reads and four shifts a block and
 * lane); ncu put both at the shared-memory pipe's limit, not at bytes in flight. H200, one call,
 * GGUF blocks / split rows, two rounds: suites/gpu-q8_0.yaml decode x1 360.0 / 358.3 -> 375.1 /
 * 375.1 tokens/s, x8 1817 / 1826 -> 1919 / 1927, prompt 4081 / 4062 -> 4004 / 3998 (the
 * prefill's dequantization for cuBLAS, then read through row_value a value a thread; gemm.cu's
 * eight-a-thread kernel took it to 9370); kernels 14336 x 4096 x1 21.95 -> 21.63 us,
 * x8 36.83 -> 34.91, 4096 x 4096 x8 13.25 -> 12.51, but x1 9.12 -> 10.59 (alone; the step gained).
 *
 * Why: before this file q8_0 took gemv.cu's generic kernels (a value at a time decoded to float).
 * H200, suites/kernels-decode.yaml, before / with this kernel: 4096 x 4096 at 1 token 20.2 / 9.15
 * us (20.7 / 45.5 % of the copy rate), at 8 tokens 171 / 23.1 us (2.5 / 18.3 %); 14336 x 4096 64.4 /
 * 22.0 us (22.7 / 66.3 %) and 346 / 55.2 us (4.3 / 26.6 %). Llama-3-8B's shapes in q8_0
 * (suites/gpu-q8_0.yaml: synthetic, prompt 128), decode tokens/s: x1 115.9 / 115.7 ->
 * 360.5 / 360.6 (67 % of the ~537 that the 7.97 GB read a token allow at the copy rate), x8 175.4 / 175.4 ->
 * 1222 / 1225. At 8 tokens the dots, not the bytes, bound it (the 14336-row product 2.5x its
 * one-token time): hence the int8 tensor-core form below for 2..16 tokens.
 * Tried, with GGUF's blocks: two passes in flight a warp (60-80 registers) slower, x1 342, x8 942; the token's q8_1
 * staged in shared memory a block (340), a cp.async ring of 2-4 passes a warp (334-344), rows
 * starting at their own pass (no change); the tensor-core kernel with 4 warps a tile (x8 1460) or
 * its groups by cp.async (1552). ncu says both kernels are bound by the shared-memory pipe that
 * re-aligns the 34-byte blocks, not by bytes in flight (docs/perf-notes.md, session 25).
 */
#include <type_traits>

#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"
#include "quant.cuh"
#include "row_parts.cuh"
#include "tile_sums.cuh"

#define Q80_WARPS 4         /* rows a block */
#define Q80_PASS_BLOCKS 32  /* blocks a warp's pass: 1024 values, 64 pieces of 16 bytes */

/* NT: the most tokens the launch takes (n_tokens <= NT); tokens past n_tokens are skipped. */
template <int NT>
__global__ void __launch_bounds__(32 * Q80_WARPS) q8_0_kernel(row_parts p, int64_t cols, const int8_t *xq, const half2 *xds, int n_tokens) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, half_block = lane % 2;
    const int64_t at = (int64_t)blockIdx.x * Q80_WARPS + warp;
    const part_row here = part_row_of(p, at);
    const int64_t row = here.row, rows = part_field(p.rows, here.part);
    float *y = part_field(p.y, here.part);
    const int64_t blocks = cols / 32;
    const uint8_t *w = reinterpret_cast<const uint8_t *>(part_field(p.weights, here.part)) + row * blocks * 34;
    const uint4 *values = reinterpret_cast<const uint4 *>(w);     /* piece k: values 16k..16k+15 */
    const __half *scales = reinterpret_cast<const __half *>(w + cols); /* the split row (weights.cu) */
    uint4 next[2];
    __half next_d[2];
    auto load = [&](int64_t first) { /* the pass from block `first`: pieces 32k + lane, half lane % 2 of block first + 16k + lane / 2 */
#pragma unroll
        for (int k = 0; k < 2; k++)
            if (first + 16 * k + lane / 2 < blocks) {
                next[k] = ldg_stream16(values + 2 * first + 32 * k + lane);
                next_d[k] = __ldg(scales + first + 16 * k + lane / 2);
            }
    };
    const bool live = at < p.all_rows; /* the same for the whole warp */
    if (live) load(0);
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (!live) return;
    float acc[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j] = 0;
    for (int64_t first = 0; first < blocks; first += Q80_PASS_BLOCKS) {
        const uint4 v[2] = {next[0], next[1]};
        const __half d_w[2] = {next_d[0], next_d[1]};
        if (first + Q80_PASS_BLOCKS < blocks) load(first + Q80_PASS_BLOCKS); /* in flight during this pass's dots */
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int64_t block = first + 16 * k + lane / 2;
            if (block >= blocks) break;
            const float d = __half2float(d_w[k]);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (j >= n_tokens) break;
                const int4 x = __ldg(reinterpret_cast<const int4 *>(xq + j * cols + block * 32 + 16 * half_block));
                int dot = __dp4a((int)v[k].x, x.x, 0);
                dot = __dp4a((int)v[k].y, x.y, dot), dot = __dp4a((int)v[k].z, x.z, dot), dot = __dp4a((int)v[k].w, x.w, dot);
                acc[j] += d * __low2float(xds[j * blocks + block]) * (float)dot;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j] = sum_over_warp(acc[j]);
    if (lane == 0)
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < n_tokens) y[j * rows + row] = acc[j];
}

template <int NT>
static cudaError_t launch_q8_0(const row_parts &p, int64_t cols, const q8_out &x, int n_tokens, cudaStream_t s) {
    const dim3 grid((unsigned)((p.all_rows + Q80_WARPS - 1) / Q80_WARPS)), block(32 * Q80_WARPS);
    return tm_launch_dependent(q8_0_kernel<NT>, grid, block, 0, s, p, cols, (const int8_t *)x.qs, (const half2 *)x.ds, n_tokens);
}

/* ---- 2..16 tokens on int8 tensor cores --------------------------------------------------------- */

#define Q80_MMA_WARPS 8
#define Q80_GROUP_VALUE_PIECES 256 /* a 16-row tile's 8-block group: 16 rows of 256 values, 16-byte pieces */

/* Where value piece `piece` (0..15: block piece / 2, half piece % 2) of row r (0..15) of a group
 * sits in a warp's slot, in pieces: piece-major, rows 0-7 and 8-15 each one 128-byte line, the
 * 16-byte chunk within the line XOR-swizzled by the piece, so that ldmatrix's eight rows of one
 * piece and the lanes' stores of one row's eight pieces both touch eight different bank groups. */
__device__ __forceinline__ int q80_slot_piece(int r, int piece) { return piece * 16 + (r / 8) * 8 + ((r % 8) ^ (piece % 8)); }

/* NG groups of 8 tokens (tokens past n_tokens read token n_tokens - 1 and are never stored) over
 * 16-row tiles. A block takes tiles blockIdx.x, blockIdx.x + gridDim.x, ... (launch_q8_0_tiles:
 * one block a resident slot, or a block a tile); warp w takes each of its tiles' 8-block groups w,
 * w + WARPS, ..., and those groups of all the block's tiles form one stream a warp: it copies a
 * group's 16 x 256 values and 16 x 8 scales of the split rows (weights.cu) into its shared-memory
 * slot by 16-byte pieces, the stream's next group (of this tile or the next) requested before this
 * one's products, so the next tile's weights are in flight while this tile's sums are added. For
 * each of the group's 8 blocks one ldmatrix.x4 gives the A fragment of m16n8k32 (rows g and g + 8,
 * values 4t.. and 16 + 4t..), one m16n8k32 a token group with B the tokens' q8_1 values, and C, an
 * exact integer, scaled by the row's d and the token's d into float32 sums; then the warps' sums
 * are added in warp order (tile_sums.cuh, through two alternating buffers: one __syncthreads a
 * tile), so a tile's result depends neither on the launch nor on the grid. */
/* STAGED: each group's activations, the tokens' 256 values and their 8 blocks' (d, d * sum) for
 * every token group, come by cp.async into one of two buffers a warp in dynamic shared memory,
 * the next group's requested with its weights (after the wait for the previous kernel: earlier
 * kernels write them), and B comes from there by ldmatrix.x4 (two blocks a call), the tokens'
 * scales by 8-byte reads; rows of Q80_X_ROW_BYTES, so the 8 rows of an ldmatrix hit 8 bank groups.
 * Why (session 30): ncu of the persistent kernel reading B and the tokens' scales from global
 * memory inside the products (14336 x 4096, 8 tokens, 30.2 us): 8.4 cycles an instruction stalled
 * on long scoreboard of 16.6, 0.23 instructions a cycle a scheduler, L1 hit rate 52 %: each
 * group's products waited on loads of the activations, not of the weights (those are a group
 * ahead). Staged: long scoreboard 1.37, 23.0 us under ncu. H200, one binary, two interleaved
 * rounds, TM_Q80_STAGE_X=0 -> 1, chained (16 launches), 8 tokens: 14336 x 4096 28.88 / 28.96 ->
 * 20.68 / 20.64 us (50.9 -> 71.1 % of the copy rate), 4096 x 4096 9.61 / 9.61 -> 7.02 / 7.05,
 * 4096 x 14336 24.05 / 23.98 -> 17.83 / 17.85 (61 -> 82 %); 4 tokens 23.06 / 23.08 -> 20.36 / 20.35,
 * 8.32 / 8.31 -> 7.02 / 7.01, 20.00 / 20.11 -> 17.55 / 17.57; Llama-3-8B q8_0 decode x8
 * (suites/gpu-q8_0.yaml) 2033 / 2039 -> 2573 / 2576 tokens/s. 124 registers, no spills. */
#define Q80_X_ROW_BYTES 272 /* a token's 256 values and 16 bytes of padding */
/* A buffer of NG token groups: their tokens' rows, then each token's 8 blocks' half2 (32 bytes). */
__host__ __device__ constexpr int q80_x_stage_bytes(int ng) { return ng * 8 * Q80_X_ROW_BYTES + ng * 8 * 32; }
__host__ __device__ constexpr int q80_x_shared_bytes(int ng) { return Q80_MMA_WARPS * 2 * q80_x_stage_bytes(ng); }

template <int NG, bool STAGED>
__global__ void __launch_bounds__(32 * Q80_MMA_WARPS, 2)
    q8_0_mma_kernel(tile_parts p, int tiles, int64_t cols, const int8_t *xq, const half2 *xds, int n_tokens) {
    constexpr int X_STAGE_BYTES = q80_x_stage_bytes(NG);
    __shared__ uint4 slots[Q80_MMA_WARPS][Q80_GROUP_VALUE_PIECES + 16]; /* the values (q80_slot_piece), then row r's 8 scales at 256 + r */
    __shared__ float partial[2][Q80_MMA_WARPS - 1][NG * 4][32];
    extern __shared__ __align__(16) uint8_t q80_x[]; /* STAGED: q80_x_shared_bytes(NG) */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int64_t blocks = cols / 32, groups = cols / 256, row_bytes = blocks * 34;
    const int per_tile = groups > warp ? (int)((groups - warp + Q80_MMA_WARPS - 1) / Q80_MMA_WARPS) : 0; /* this warp's groups a tile */
    const int my_tiles = (int)blockIdx.x < tiles ? (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    /* The fetch cursor: the stream's next (tile, group) to load, and that tile's first row. */
    int fetch_tile = blockIdx.x, fetch_index = 0, fetches_left = my_tiles * per_tile;
    const uint8_t *fetch_rows = nullptr;
    auto aim_fetch = [&] {
        const int part = tile_part_of(p, fetch_tile);
        fetch_rows = reinterpret_cast<const uint8_t *>(part_field(p.weights, part)) + tile_row0(p, fetch_tile, part) * row_bytes;
    };
    uint4 next[9]; /* 256 value pieces over 32 lanes, 8 each; the ninth, lanes 0..15: row lane's 8 scales */
    int64_t loaded_group = -1; /* the group load_next last loaded (-1: none, the stream's end) */
    auto load_next = [&] {
        loaded_group = -1;
        if (fetches_left <= 0) return;
        const int64_t group = warp + (int64_t)fetch_index * Q80_MMA_WARPS;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int piece = lane + 32 * k; /* row piece / 16, its piece piece % 16 of the group */
            next[k] = ldg_stream16(fetch_rows + (piece / 16) * row_bytes + group * 256 + (piece % 16) * 16);
        }
        if (lane < 16) next[8] = ldg_stream16(fetch_rows + lane * row_bytes + cols + group * 16);
        loaded_group = group;
        fetches_left--;
        if (++fetch_index == per_tile) {
            fetch_index = 0;
            fetch_tile += gridDim.x;
            if (fetches_left > 0) aim_fetch();
        }
    };
    /* STAGED: this warp's two activation buffers, and the copies of group `group` into one (one
     * commit group a call, empty past the stream's end). Tokens past n_tokens copy the last. */
    const uint32_t x_buffers = shared_address(q80_x + warp * 2 * X_STAGE_BYTES);
    auto fetch_x = [&](int64_t group, int buffer) {
        if (group >= 0) {
            const uint32_t to = x_buffers + buffer * X_STAGE_BYTES;
#pragma unroll
            for (int k = 0; k < 4 * NG; k++) {
                const int piece = lane + 32 * k, token = piece / 16, chunk = piece % 16;
                copy_async_ca16(to + token * Q80_X_ROW_BYTES + chunk * 16, xq + min(token, n_tokens - 1) * cols + group * 256 + chunk * 16);
            }
            if (lane < 16 * NG) {
                const int token = lane / 2, half = lane % 2;
                copy_async_ca16(to + NG * 8 * Q80_X_ROW_BYTES + token * 32 + half * 16,
                                xds + min(token, n_tokens - 1) * blocks + group * 8 + half * 4);
            }
        }
        copy_async_commit();
    };
    if (fetches_left > 0) aim_fetch();
    load_next(); /* before the wait: weights are not written by earlier work */
    tm_grid_dependency();
    if constexpr (STAGED) fetch_x(loaded_group, 0);
    uint4 *slot = slots[warp];
    const int8_t *b_token[NG]; /* token 8G + g: its B column */
    const half2 *c_token_scales[NG][2]; /* tokens 8G + 2t, + 1: their C columns' scales */
#pragma unroll
    for (int G = 0; G < NG; G++) {
        b_token[G] = xq + min(8 * G + g, n_tokens - 1) * cols + 4 * t;
#pragma unroll
        for (int k = 0; k < 2; k++) c_token_scales[G][k] = xds + min(8 * G + 2 * t + k, n_tokens - 1) * blocks;
    }
    /* this lane's ldmatrix row: matrix m = lane / 8 is rows 8 (m % 2).. of half m / 2 of a block */
    const int a_row = (lane / 8 % 2) * 8 + lane % 8, a_half = lane / 16;
    /* STAGED, B by ldmatrix.x4 over blocks j, j + 1: matrix m = lane / 8 is token row lane % 8, bytes
     * 16 (m % 2).. of block j + m / 2 */
    const uint32_t b_lane = (lane % 8) * Q80_X_ROW_BYTES + (lane / 16) * 32 + (lane / 8 % 2) * 16;
    int buffer = 0;
    for (int k_tile = 0; k_tile < my_tiles; k_tile++) {
        const int tile = blockIdx.x + k_tile * gridDim.x, part = tile_part_of(p, tile);
        float acc[NG][4];
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[G][i] = 0;
        for (int b = 0; b < per_tile; b++) {
            const int64_t group = warp + (int64_t)b * Q80_MMA_WARPS;
            __syncwarp(); /* the previous group's reads of the slot (and of the other activation buffer) are done */
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int piece = lane + 32 * k;
                slot[q80_slot_piece(piece / 16, piece % 16)] = next[k];
            }
            if (lane < 16) slot[Q80_GROUP_VALUE_PIECES + lane] = next[8];
            load_next(); /* in flight during this group's products */
            if constexpr (STAGED) {
                fetch_x(loaded_group, buffer ^ 1);
                copy_async_wait<1>(); /* this group's activations are in (this lane's copies) */
            }
            __syncwarp(); /* ... and every lane's copies and stores are visible */
            const uint4 scales_g = slot[Q80_GROUP_VALUE_PIECES + g], scales_g8 = slot[Q80_GROUP_VALUE_PIECES + g + 8];
            const __half *d_g = reinterpret_cast<const __half *>(&scales_g), *d_g8 = reinterpret_cast<const __half *>(&scales_g8);
            if constexpr (STAGED) {
                const uint32_t x_here = x_buffers + buffer * X_STAGE_BYTES;
                const uint8_t *scales_here = q80_x + (warp * 2 + buffer) * X_STAGE_BYTES + NG * 8 * Q80_X_ROW_BYTES;
#pragma unroll
                for (int jj = 0; jj < 8; jj += 2) {
                    uint32_t bx[NG][4];         /* group G's B of blocks jj (0, 1) and jj + 1 (2, 3) */
                    uint2 token_scales[NG][2]; /* its tokens 2t, 2t + 1: the half2 of blocks jj, jj + 1 */
#pragma unroll
                    for (int G = 0; G < NG; G++) {
                        ldmatrix_x4(bx[G], x_here + b_lane + G * 8 * Q80_X_ROW_BYTES + jj * 32);
#pragma unroll
                        for (int k = 0; k < 2; k++)
                            token_scales[G][k] = *reinterpret_cast<const uint2 *>(scales_here + (8 * G + 2 * t + k) * 32 + jj * 4);
                    }
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int j = jj + h;
                        uint32_t a[4];
                        ldmatrix_x4(a, shared_address(slot + q80_slot_piece(a_row, 2 * j + a_half)));
                        const float d_row[2] = {__half2float(d_g[j]), __half2float(d_g8[j])};
#pragma unroll
                        for (int G = 0; G < NG; G++) {
                            int c[4] = {0, 0, 0, 0};
                            mma_s8_k32(c, (int)a[0], (int)a[1], (int)a[2], (int)a[3], (int)bx[G][2 * h], (int)bx[G][2 * h + 1]);
#pragma unroll
                            for (int k = 0; k < 2; k++) {
                                const uint32_t scale_word = h ? token_scales[G][k].y : token_scales[G][k].x;
                                const float d_token = __low2float(*reinterpret_cast<const half2 *>(&scale_word));
#pragma unroll
                                for (int r = 0; r < 2; r++) acc[G][2 * r + k] += d_row[r] * d_token * (float)c[2 * r + k];
                            }
                        }
                    }
                }
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int64_t block = group * 8 + j;
                    uint32_t a[4];
                    ldmatrix_x4(a, shared_address(slot + q80_slot_piece(a_row, 2 * j + a_half)));
                    const float d_row[2] = {__half2float(d_g[j]), __half2float(d_g8[j])};
#pragma unroll
                    for (int G = 0; G < NG; G++) {
                        const int8_t *x = b_token[G] + block * 32;
                        int c[4] = {0, 0, 0, 0};
                        mma_s8_k32(c, (int)a[0], (int)a[1], (int)a[2], (int)a[3], *reinterpret_cast<const int *>(x),
                                   *reinterpret_cast<const int *>(x + 16));
#pragma unroll
                        for (int k = 0; k < 2; k++) {
                            const float d_token = __low2float(c_token_scales[G][k][block]);
#pragma unroll
                            for (int r = 0; r < 2; r++) acc[G][2 * r + k] += d_row[r] * d_token * (float)c[2 * r + k];
                        }
                    }
                }
            }
            buffer ^= 1;
        }
        const int64_t rows = part == 0 ? p.rows[0] : part == 1 ? p.rows[1] : p.rows[2]; /* part_field here: 4 registers more (ptxas) */
        store_tile_sums<NG, Q80_MMA_WARPS>(acc, partial[k_tile & 1], part_field(p.y, part), rows, tile_row0(p, tile, part), n_tokens);
    }
    if constexpr (STAGED) copy_async_wait<0>();
}

/* Whether 2..16 tokens take the tensor-core kernel where every part's rows are whole 16-row tiles
 * (TM_Q80_MMA=0, a measuring aid, keeps them on q8_0_kernel's dp4a). */
static bool q8_0_mma_enabled(void) {
    static const bool enabled = tm_env_int("TM_Q80_MMA", 1) != 0;
    return enabled;
}

/* The tensor-core kernel's grid: a block a resident slot (each taking every gridDim.x-th tile), or a
 * block a tile where the tiles fit the slots or TM_Q80_PERSISTENT=0 (a measuring aid: the kernel's
 * one-tile-a-block form). TM_MMQ_PERSISTENT_BLOCKS=n (a testing aid, as for gemv_q8.cu's
 * persistent kernel) counts n slots, so small products take several tiles a block. Why (session
 * 30): a block a tile ran 896 tiles of a 14336-row product in 3.4 waves of two blocks an SM, each
 * block paying a trip to memory, its groups and the tile's sums one after another. H200, one
 * binary, two interleaved rounds, TM_Q80_PERSISTENT=0 -> 1: chained (16 launches) 14336 x 4096 at
 * 8 tokens 31.83 / 31.56 -> 28.99 / 28.90 us, at 16 47.83 / 47.91 -> 44.30 / 44.24; 4096 x 4096
 * (256 tiles, one wave) unchanged, 9.59 / 9.57 -> 9.60 / 9.85; Llama-3-8B q8_0 (suites/gpu-q8_0.yaml)
 * decode x8 1897 / 1891 -> 2036 / 2030 tokens/s. The minimum of two blocks an SM in the kernel's
 * launch bounds keeps the 9-16-token form at 128 registers (176 without, one block an SM). */
template <int NG, bool STAGED> static cudaError_t q8_0_tiles_grid(int tiles, bool sm90, int *grid) {
    static const int persistent = tm_env_int("TM_Q80_PERSISTENT", 1), cap = tm_env_int("TM_MMQ_PERSISTENT_BLOCKS", 0);
    int resident = 0;
    *grid = tiles;
    if (!persistent || !sm90) return cudaSuccess; /* measured on sm_90 only (as gemv_q8.cu's persistent kernel): an RTX 4090 keeps a block a tile */
    TM_CUDA_CHECK(tm_resident_blocks((const void *)q8_0_mma_kernel<NG, STAGED>, 32 * Q80_MMA_WARPS, STAGED ? q80_x_shared_bytes(NG) : 0, &resident));
    if (cap > 0 && cap < resident) resident = cap;
    if (resident > 0 && resident < tiles) *grid = resident;
    return cudaSuccess;
}

template <int NG, bool STAGED>
static cudaError_t launch_q8_0_tiles_as(const tile_parts &p, int tiles, int64_t cols, const q8_out &x, int n_tokens, bool sm90, cudaStream_t s) {
    const int shared = STAGED ? q80_x_shared_bytes(NG) : 0;
    int grid = 0;
    if (STAGED) TM_CUDA_CHECK(tm_allow_dynamic_shared((const void *)q8_0_mma_kernel<NG, STAGED>, shared));
    TM_CUDA_CHECK((q8_0_tiles_grid<NG, STAGED>(tiles, sm90, &grid)));
    return tm_launch_dependent(q8_0_mma_kernel<NG, STAGED>, dim3((unsigned)grid), dim3(32 * Q80_MMA_WARPS), shared, s, p, tiles, cols,
                               (const int8_t *)x.qs, (const half2 *)x.ds, n_tokens);
}

/* On sm_90 the tensor-core products stage their activations (q8_0_mma_kernel's STAGED; TM_Q80_STAGE_X=0,
 * a measuring aid, reads them from global memory as before sm_90): up to 8 tokens since session 30,
 * 9-16 (two token groups, 39 KiB of buffers a block; 32 bytes of spills at 128 registers) since
 * session 40: H200, one binary, two rounds, TM_Q80_STAGE_X=0 -> 1, chained 14336 x 4096
 * (kernels-decode-batched), % of the copy rate at 12 / 16 tokens 38.7, 38.6 / 33.8, 33.8 -> 51.9,
 * 51.9 / 50.7, 50.8 (at 8: 51.3, 51.2 -> 71.6, 71.6). */
static cudaError_t launch_q8_0_tiles(const tile_parts &p, int64_t cols, const q8_out &x, int n_tokens, cudaStream_t s) {
    static const int stage_x = tm_env_int("TM_Q80_STAGE_X", 1);
    const int tiles = p.tiles_end[p.n_parts - 1];
    const bool sm90 = tm_device_major() >= 9;
    auto launch = [&](auto groups) {
        constexpr int NG = decltype(groups)::value;
        return stage_x && sm90 ? launch_q8_0_tiles_as<NG, true>(p, tiles, cols, x, n_tokens, sm90, s)
                               : launch_q8_0_tiles_as<NG, false>(p, tiles, cols, x, n_tokens, sm90, s);
    };
    return n_tokens > 8 ? launch(std::integral_constant<int, 2>{}) : launch(std::integral_constant<int, 1>{});
}

extern "C" int tm_cuda_gemv_q8_0_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *q8, int n_tokens, void *stream) {
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS || cols < 256 || cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || !q8)
        return cudaErrorNotSupported;
    row_parts p;
    if (!row_parts_of(parts, n_parts, Q8_0, &p)) return cudaErrorNotSupported;
    const q8_out x = q8_out_at(q8, n_tokens, cols);
    const cudaStream_t s = (cudaStream_t)stream;
    tile_parts tiles;
    if (n_tokens >= 2 && q8_0_mma_enabled() && tile_parts_of(parts, n_parts, Q8_0, &tiles)) return launch_q8_0_tiles(tiles, cols, x, n_tokens, s);
    if (n_tokens == 1) return launch_q8_0<1>(p, cols, x, n_tokens, s);
    if (n_tokens == 2) return launch_q8_0<2>(p, cols, x, n_tokens, s);
    if (n_tokens <= 4) return launch_q8_0<4>(p, cols, x, n_tokens, s);
    if (n_tokens <= 8) return launch_q8_0<8>(p, cols, x, n_tokens, s);
    return launch_q8_0<16>(p, cols, x, n_tokens, s);
}
