/*
 * gemv_q8_0.cu - decode products of q8_0 weights (llama.cpp's 34-byte blocks: a half scale and 32
 * int8 values) with 1..16 tokens of q8_1 activations (tm_cuda_quantize_q8_1, quant.cuh's layout),
 * up to TM_CUDA_GEMV_MAX_PARTS products sharing that input (Q/K/V, gate/up) in one launch.
 *
 * Guarantees: y[j][r] = sum over the row's blocks b of d_w[b] * d_x[j][b] * (the integer dot of
 * the block's 32 values with token j's), in float32; lane l adds the blocks l, l + 32, ... in order,
 * then a butterfly over the warp, so a row's result does not depend on the launch (a part equals its
 * own launch bit for bit) nor vary from run to run. The only rounding beyond float32 is the
 * activations' (at most half a step of max|x|/127 per 256-value block), as for the k-quants' fast
 * products. Declines (cudaErrorNotSupported) columns not a multiple of 256, weights not 16-byte
 * aligned, other types, more than TM_CUDA_GEMV_MAX_TOKENS tokens.
 *
 * 2..16 tokens where every part's rows are whole 16-row tiles take q8_0_mma_kernel (int8 tensor
 * cores, below; TM_Q80_MMA=0 keeps them on the dp4a kernel). H200, one call, dp4a / tensor cores:
 * 4096 x 4096 at 8 tokens 23.3 / 13.4 us (18.1 / 31.6 % of the copy rate), 14336 x 4096 55.1 /
 * 36.9 us (26.7 / 39.9 %); suites/gpu-q8_0.yaml decode x8 1220 / 1225 -> 1835 / 1829 tokens/s (x1
 * unchanged, 361).
 *
 * Layout: a warp a row, 4 rows a block. A row's blocks are 34 bytes apart (2-byte aligned), but 8
 * blocks are 272 bytes, 17 16-byte pieces, so with cols % 256 == 0 every 8-block group of every row
 * starts 16-byte aligned. A pass takes 32 blocks (1088 bytes, 68 pieces): the lanes load its pieces
 * with coalesced 16-byte loads into the warp's slot of shared memory, then lane l dots block l of
 * the pass: its scale read as a half, its 32 values as nine 32-bit words and a funnel shift (block
 * l's values start 2 bytes into a word for even l, on a word for odd l). The next pass's pieces are
 * requested before this pass's dots, the first pass's before the wait for the previous kernel
 * (weights are written by no kernel, launch.cuh).
 *
 * Why: before this file q8_0 took gemv.cu's generic kernels (a value at a time decoded to float).
 * H200, suites/kernels-decode.yaml, before / with this kernel: 4096 x 4096 at 1 token 20.2 / 9.15
 * us (20.7 / 45.5 % of the copy rate), at 8 tokens 171 / 23.1 us (2.5 / 18.3 %); 14336 x 4096 64.4 /
 * 22.0 us (22.7 / 66.3 %) and 346 / 55.2 us (4.3 / 26.6 %). Llama-3-8B's shapes in q8_0
 * (suites/gpu-q8_0.yaml: synthetic, prompt 128), decode tokens/s: x1 115.9 / 115.7 ->
 * 360.5 / 360.6 (67 % of the ~537 that the 7.97 GB read a token allow at the copy rate), x8 175.4 / 175.4 ->
 * 1222 / 1225. At 8 tokens the dots, not the bytes, bound it (the 14336-row product 2.5x its
 * one-token time): hence the int8 tensor-core form below for 2..16 tokens.
 * Tried: two passes in flight a warp (60-80 registers) slower, x1 342, x8 942; the token's q8_1
 * staged in shared memory a block (340), a cp.async ring of 2-4 passes a warp (334-344), rows
 * starting at their own pass (no change); the tensor-core kernel with 4 warps a tile (x8 1460) or
 * its groups by cp.async (1552). ncu says both kernels are bound by the shared-memory pipe that
 * re-aligns the 34-byte blocks, not by bytes in flight (docs/perf-notes.md, session 25).
 */
#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"
#include "quant.cuh"
#include "row_parts.cuh"
#include "tile_sums.cuh"

#define Q80_WARPS 4                                /* rows a block */
#define Q80_PASS_BLOCKS 32                         /* a lane a block */
#define Q80_PASS_PIECES (Q80_PASS_BLOCKS * 34 / 16) /* 68 */

/* 16-byte pieces of the pass of `blocks_left` (a multiple of 8) or more blocks */
__device__ __forceinline__ int pass_pieces(int64_t blocks_left) {
    return (int)(blocks_left < Q80_PASS_BLOCKS ? blocks_left : Q80_PASS_BLOCKS) * 17 / 8;
}

/* NT: the most tokens the launch takes (n_tokens <= NT); tokens past n_tokens are skipped. */
template <int NT>
__global__ void __launch_bounds__(32 * Q80_WARPS) q8_0_kernel(row_parts p, int64_t cols, const int8_t *xq, const half2 *xds, int n_tokens) {
    /* a warp's pass, and one piece more: the last lane's ninth word, read but not used */
    __shared__ uint4 slots[Q80_WARPS][Q80_PASS_PIECES + 1];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t at = (int64_t)blockIdx.x * Q80_WARPS + warp;
    const part_row here = part_row_of(p, at);
    const int64_t row = here.row, rows = part_field(p.rows, here.part);
    float *y = part_field(p.y, here.part);
    const int64_t blocks = cols / 32;
    const uint4 *w = part_field(p.weights, here.part) + row * (blocks * 17 / 8);
    uint4 next[3];
    auto load = [&](int64_t first) { /* the pass from block `first` (a multiple of 32) into next */
        const int pieces = pass_pieces(blocks - first);
        const uint4 *src = w + first * 17 / 8;
#pragma unroll
        for (int k = 0; k < 3; k++)
            if (lane + 32 * k < pieces) next[k] = ldg_stream16(src + lane + 32 * k);
    };
    const bool live = at < p.all_rows; /* the same for the whole warp */
    if (live) load(0);
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (!live) return;
    uint4 *slot = slots[warp];
    if (lane == 0) slot[Q80_PASS_PIECES] = make_uint4(0, 0, 0, 0);
    const uint32_t *slot_words = reinterpret_cast<const uint32_t *>(slot);
    const int byte = 34 * lane, word0 = (byte + 2) / 4, shift = (byte + 2) % 4 * 8; /* lane's block in the slot */
    float acc[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j] = 0;
    for (int64_t first = 0; first < blocks; first += Q80_PASS_BLOCKS) {
        const int pieces = pass_pieces(blocks - first);
        __syncwarp(); /* the previous pass's reads of the slot are done */
#pragma unroll
        for (int k = 0; k < 3; k++)
            if (lane + 32 * k < pieces) slot[lane + 32 * k] = next[k];
        __syncwarp();
        if (first + Q80_PASS_BLOCKS < blocks) load(first + Q80_PASS_BLOCKS); /* in flight during this pass's dots */
        const int64_t block = first + lane;
        if (block >= blocks) continue;
        const float d = __half2float(*reinterpret_cast<const __half *>(reinterpret_cast<const uint8_t *>(slot) + byte));
        uint32_t words[9];
#pragma unroll
        for (int i = 0; i < 9; i++) words[i] = slot_words[word0 + i];
        int v[8];
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = (int)__funnelshift_r(words[i], words[i + 1], shift);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (j >= n_tokens) break;
            const int4 *x = reinterpret_cast<const int4 *>(xq + j * cols + block * 32);
            const int4 lo = __ldg(x), hi = __ldg(x + 1);
            int dot = __dp4a(v[0], lo.x, 0);
            dot = __dp4a(v[1], lo.y, dot), dot = __dp4a(v[2], lo.z, dot), dot = __dp4a(v[3], lo.w, dot);
            dot = __dp4a(v[4], hi.x, dot), dot = __dp4a(v[5], hi.y, dot), dot = __dp4a(v[6], hi.z, dot), dot = __dp4a(v[7], hi.w, dot);
            acc[j] += d * __low2float(xds[j * blocks + block]) * (float)dot;
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
#define Q80_GROUP_PIECES (16 * 17) /* a 16-row tile's 8-block group: 16 rows of 272 bytes */

/* One block a 16-row tile, NG groups of 8 tokens (tokens past n_tokens read token n_tokens - 1 and
 * are never stored). Warp w takes the tile's 8-block groups w, w + WARPS, ...: it copies the
 * group's 16 x 272 bytes into its shared-memory slot by 16-byte pieces (the next group's requested
 * before this one's products), then for each of the 8 blocks one m16n8k32 a token group: A the 16
 * rows' 32 values (four words a thread, each two words and a funnel shift: a block's values start
 * 2 bytes into a word for even blocks), B the tokens' q8_1 values, and C, an exact integer, scaled
 * by the row's d and the token's d into float32 sums; then the warps' sums are added in warp order
 * (tile_sums.cuh), so a tile's result does not depend on the launch. */
template <int NG>
__global__ void __launch_bounds__(32 * Q80_MMA_WARPS) q8_0_mma_kernel(tile_parts p, int64_t cols, const int8_t *xq, const half2 *xds, int n_tokens) {
    __shared__ uint4 slots[Q80_MMA_WARPS][Q80_GROUP_PIECES + 1]; /* one piece more: the last words' right neighbour */
    __shared__ float partial[Q80_MMA_WARPS - 1][NG * 4][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int tile = blockIdx.x, part = tile_part_of(p, tile);
    const uint4 *weights = part_field(p.weights, part);
    float *y = part_field(p.y, part);
    const int64_t rows = part == 0 ? p.rows[0] : part == 1 ? p.rows[1] : p.rows[2]; /* part_field here: 4 registers more (ptxas) */
    const int64_t row0 = tile_row0(p, tile, part);
    const int64_t blocks = cols / 32, groups = cols / 256, row_pieces = blocks * 17 / 8;
    const uint4 *tile_weights = weights + row0 * row_pieces;
    uint4 next[9]; /* 272 pieces over 32 lanes: 8 each, the ninth for lanes 0..15 */
    auto load = [&](int64_t group) {
        if (group >= groups) return;
#pragma unroll
        for (int k = 0; k < 9; k++) {
            const int piece = lane + 32 * k;
            if (piece < Q80_GROUP_PIECES) next[k] = ldg_stream16(tile_weights + (piece / 17) * row_pieces + group * 17 + piece % 17);
        }
    };
    load(warp); /* before the wait: weights are not written by earlier work */
    tm_grid_dependency();
    uint4 *slot = slots[warp];
    if (lane == 0) slot[Q80_GROUP_PIECES] = make_uint4(0, 0, 0, 0);
    const uint32_t *words = reinterpret_cast<const uint32_t *>(slot);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(slot);
    const int8_t *b_token[NG]; /* token 8G + g: its B column */
    const half2 *c_token_scales[NG][2]; /* tokens 8G + 2t, + 1: their C columns' scales */
#pragma unroll
    for (int G = 0; G < NG; G++) {
        b_token[G] = xq + min(8 * G + g, n_tokens - 1) * cols + 4 * t;
#pragma unroll
        for (int k = 0; k < 2; k++) c_token_scales[G][k] = xds + min(8 * G + 2 * t + k, n_tokens - 1) * blocks;
    }
    float acc[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[G][i] = 0;
    /* A's value at row r of the group's block j, values 4c..4c+3 (c = t or 4 + t) */
    auto a_word = [&](int r, int j, int c) {
        const int byte = r * 272 + 34 * j + 2 + 4 * c;
        return (int)__funnelshift_r(words[byte / 4], words[byte / 4 + 1], (byte % 4) * 8);
    };
    for (int64_t group = warp; group < groups; group += Q80_MMA_WARPS) {
        __syncwarp(); /* the previous group's reads of the slot are done */
#pragma unroll
        for (int k = 0; k < 9; k++)
            if (lane + 32 * k < Q80_GROUP_PIECES) slot[lane + 32 * k] = next[k];
        __syncwarp();
        load(group + Q80_MMA_WARPS); /* in flight during this group's products */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int64_t block = group * 8 + j;
            const int a0 = a_word(g, j, t), a1 = a_word(g + 8, j, t), a2 = a_word(g, j, 4 + t), a3 = a_word(g + 8, j, 4 + t);
            float d_row[2];
#pragma unroll
            for (int r = 0; r < 2; r++) d_row[r] = __half2float(*reinterpret_cast<const __half *>(bytes + (g + 8 * r) * 272 + 34 * j));
#pragma unroll
            for (int G = 0; G < NG; G++) {
                const int8_t *b = b_token[G] + block * 32;
                int c[4] = {0, 0, 0, 0};
                mma_s8_k32(c, a0, a1, a2, a3, *reinterpret_cast<const int *>(b), *reinterpret_cast<const int *>(b + 16));
#pragma unroll
                for (int k = 0; k < 2; k++) {
                    const float d_token = __low2float(c_token_scales[G][k][block]);
#pragma unroll
                    for (int r = 0; r < 2; r++) acc[G][2 * r + k] += d_row[r] * d_token * (float)c[2 * r + k];
                }
            }
        }
    }
    store_tile_sums<NG, Q80_MMA_WARPS>(acc, partial, y, rows, row0, n_tokens);
}

/* Whether 2..16 tokens take the tensor-core kernel where every part's rows are whole 16-row tiles
 * (TM_Q80_MMA=0, a measuring aid, keeps them on q8_0_kernel's dp4a). */
static bool q8_0_mma_enabled(void) {
    static const bool enabled = tm_env_int("TM_Q80_MMA", 1) != 0;
    return enabled;
}

static cudaError_t launch_q8_0_tiles(const tile_parts &p, int64_t cols, const q8_out &x, int n_tokens, cudaStream_t s) {
    const dim3 grid((unsigned)p.tiles_end[p.n_parts - 1]), block(32 * Q80_MMA_WARPS);
    const int8_t *qs = (const int8_t *)x.qs;
    const half2 *ds = (const half2 *)x.ds;
    if (n_tokens <= 8) return tm_launch_dependent(q8_0_mma_kernel<1>, grid, block, 0, s, p, cols, qs, ds, n_tokens);
    return tm_launch_dependent(q8_0_mma_kernel<2>, grid, block, 0, s, p, cols, qs, ds, n_tokens);
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
