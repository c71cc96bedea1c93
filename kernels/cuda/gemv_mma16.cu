/*
 * gemv_mma16.cu - decode products of f16 and bf16 weights with 2..16 tokens on the tensor cores:
 * y[j][r] = dot(W[r, :], x[j]), every weight read once for all the tokens.
 *
 * Guarantees: the activations are rounded once to the weight's 16-bit type (as tm_cuda_gemm does
 * before cuBLAS) and every product is accumulated in float32 by mma.sync m16n8k16; the sum over a
 * row is split over a block's warps and added in a fixed order, so results do not vary from run to
 * run. Shapes it does not take (rows not a multiple of 16, columns not a multiple of 32,
 * misaligned pointers, more than 16 tokens) return cudaErrorNotSupported and leave y untouched.
 *
 * Why: at 8 tokens the 8B F16 decode went through cuBLAS GemmEx, whose kernels for a GEMM with
 * 8 columns read the weights at about the rate of the one-token GEMV (the x8 step cost 1.15x the
 * x1 step); decode is a weight stream, so the tokens should ride along nearly for free. Measured
 * (H200, tmbench suites/throughput.yaml, one call, cuBLAS by TM_MMA16=0): 8B decode x8 1355 /
 * 1358 -> 1417 / 1426 tokens/s, 512 x4 694 -> 724, 2048 x8 1203 -> 1239. This kernel takes 84 %
 * of the x8 step's GPU time at ~3.1 TB/s (73 % of the copy rate). Tried (same call): 2 steps a
 * round (78 registers, 24 warps an SM) 1385; the activations also requested a round ahead,
 * 2 steps 1397, 4 steps (148 registers, 8 warps an SM) 1313.
 *
 * Layout: a block takes a 16-row tile and its warps split the columns in 32-column steps dealt to
 * 8 classes (class c: steps c, c + 8, ...): 8 warps a class each, or 4 warps two each, one after
 * the other (mma16_warps), so at any moment a block's warps read up to 512 contiguous bytes of each
 * of its rows. In a step, lane (g = lane / 4, t = lane % 4) loads 16 bytes of rows g
 * and g + 8 (columns 8t..8t+7) and its token g's (of each group of 8) eight floats at the same
 * columns; the mma's k order is free, so those are fed as two m16n8k16 whose k = 2t, 2t+1, 2t+8,
 * 2t+9 are columns 8t..8t+3 and 8t+4..8t+7. UNROLL steps' loads are in flight together, the first
 * steps' weights requested before the wait for the previous kernel (launch.cuh).
 *
 * f16 activations (HALF_X, tm_cuda_gemv_f16_tokens_parts_half_x): the decode step's norm writes its
 * output rounded to f16 beside the float one (tm_cuda_add_rmsnorm_half, the same rounding pack16
 * does), so the Q/K/V and gate/up products of f16 weights read 16 bytes of activations a lane and
 * step instead of 32 and convert nothing (their activation bytes, re-read by every tile, equalled
 * the weights'). Results bit for bit the float path's. H200, 8B f16 decode, one binary, two rounds,
 * TM_MMA16_HALF_X=0 / 1: 128 x8 1698, 1711 -> 1766, 1757 tokens/s; 512 x4 863.2, 868.6 -> 876.8,
 * 875.2; 2048 x8 1494, 1503 -> 1533, 1529. The SwiGLU's f16 copy for the down product too (next
 * call, a switch since removed, norms only / both): 128 x8 1813, 1796 -> 1816, 1818; 512 x4 895.9, 894.1
 * -> 894.8, 896.2; 2048 x8 1564, 1563 -> 1567, 1567 (within the noise, kept: it never lost). The
 * output product (its input from the attention) still takes float activations.
 *
 * Parts: up to TM_CUDA_GEMV_MAX_PARTS products sharing x (Q/K/V, gate/up) take one launch, part i's
 * tiles after part i - 1's (tm_cuda_gemv_16bit_tokens_parts; a product alone is one part). Why:
 * the 8B's K and V (1024 rows) are 64 tiles, 64 blocks on 132 SMs; gemv16.cu's one-token parts
 * took the 8B x1 step from 194 to 208 tokens/s before its other change. TM_MMA16_PARTS=0 (a
 * measuring aid) declines more than one part.
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"
#include "quant.cuh"
#include "row_parts.cuh"
#include "tile_sums.cuh"

#define MMA16_ROWS TM_TILE_ROWS
#define MMA16_CLASSES 8 /* a row's steps dealt to 8 classes: a block's 8 warps, or its 4 taking two each */
#define MMA16_UNROLL 4

/* Two floats as one 32-bit register of two 16-bit values (the first in the low half). */
template <bool BF16> __device__ __forceinline__ uint32_t pack16(float lo, float hi) {
    if (BF16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const uint32_t *>(&v);
    }
    return pack_half2(lo, hi);
}

/* c += a (16 x 16) b (16 x 8), f16 (mma.cuh's mma_16816) or bf16 inputs, f32 accumulators. */
template <bool BF16> __device__ __forceinline__ void mma16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if (BF16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        mma_16816(c, a, b0, b1);
}

/* One block per 16-row tile of the parts' rows in order; NG groups of 8 tokens (columns past
 * n_tokens read token n_tokens - 1 and are never stored). acc[G][2r + k]: row g + 8r, token
 * 8G + 2t + k. A row's 32-column steps are dealt round-robin to MMA16_CLASSES classes, each class's
 * steps summed in order by one warp, the classes added in class order (tile_sums.cuh): with WARPS
 * = 8 a warp is a class, with 4 a warp takes classes w and w + 4 one after the other (the second's
 * first weights requested during the first's last round), so both forms give the same bits and a
 * tile's result depends neither on the other parts of its launch nor on the form the launch took. */
template <bool BF16, int NG, bool HALF_X, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, WARPS == 8 ? 0 : NG == 2 && !HALF_X ? 3 : 4) mma16_kernel(tile_parts p, int64_t cols, const float *x,
                                                                               const __half *x16, int n_tokens) {
    static_assert(WARPS == 8 || WARPS == 4, "a warp takes one class or two");
    constexpr int CLASSES_A_WARP = MMA16_CLASSES / WARPS;
    __shared__ float partial[MMA16_CLASSES - 1][NG * 4][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int tile = blockIdx.x, part = tile_part_of(p, tile);
    const uint4 *weights = part_field(p.weights, part);
    float *y = part_field(p.y, part);
    const int64_t rows = part == 0 ? p.rows[0] : part == 1 ? p.rows[1] : p.rows[2]; /* part_field here: 4 registers more (ptxas) */
    const int64_t row0 = tile_row0(p, tile, part);
    const int64_t steps = cols / 32, row_pieces = cols / 8;
    const uint4 *row_g = weights + (row0 + g) * row_pieces + t, *row_g8 = row_g + 8 * row_pieces;
    const float4 *x_g[NG];
    const uint4 *x16_g[NG]; /* HALF_X: the same 8 columns as f16, already rounded as pack16 rounds them */
#pragma unroll
    for (int G = 0; G < NG; G++) {
        x_g[G] = reinterpret_cast<const float4 *>(x + min(8 * G + g, n_tokens - 1) * cols) + 2 * t;
        x16_g[G] = reinterpret_cast<const uint4 *>(x16 + min(8 * G + g, n_tokens - 1) * cols) + t;
    }
    float acc[CLASSES_A_WARP][NG][4];
#pragma unroll
    for (int c = 0; c < CLASSES_A_WARP; c++)
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[c][G][i] = 0;
    uint4 w[MMA16_UNROLL][2];
    auto load_weights = [&](int64_t step0) {
#pragma unroll
        for (int u = 0; u < MMA16_UNROLL; u++) {
            const int64_t step = step0 + (int64_t)u * MMA16_CLASSES;
            if (step < steps) w[u][0] = ldg_stream16(row_g + 4 * step), w[u][1] = ldg_stream16(row_g8 + 4 * step);
        }
    };
    load_weights(warp); /* before the wait: weights are not written by earlier work */
    tm_grid_dependency();
#pragma unroll
    for (int c = 0; c < CLASSES_A_WARP; c++) {
        const int64_t next_class = warp + (c + 1) * WARPS; /* the round after this class's last (none past the last class) */
        for (int64_t step0 = warp + c * WARPS; step0 < steps; step0 += MMA16_UNROLL * MMA16_CLASSES) {
            float4 xv[MMA16_UNROLL][NG][2];
            uint4 xh[MMA16_UNROLL][NG];
#pragma unroll
            for (int u = 0; u < MMA16_UNROLL; u++) {
                const int64_t step = step0 + (int64_t)u * MMA16_CLASSES;
                if (step < steps)
#pragma unroll
                    for (int G = 0; G < NG; G++) {
                        if (HALF_X) xh[u][G] = x16_g[G][4 * step];
                        else xv[u][G][0] = x_g[G][8 * step], xv[u][G][1] = x_g[G][8 * step + 1];
                    }
            }
            uint4 now[MMA16_UNROLL][2];
#pragma unroll
            for (int u = 0; u < MMA16_UNROLL; u++) now[u][0] = w[u][0], now[u][1] = w[u][1];
            /* the next round's weights, in flight during this one's products */
            const int64_t next = step0 + MMA16_UNROLL * MMA16_CLASSES;
            load_weights(c + 1 == CLASSES_A_WARP || next < steps ? next : next_class);
#pragma unroll
            for (int u = 0; u < MMA16_UNROLL; u++) {
                if (step0 + (int64_t)u * MMA16_CLASSES >= steps) break;
                const uint32_t a_low[4] = {now[u][0].x, now[u][1].x, now[u][0].y, now[u][1].y};  /* columns 8t..8t+3 */
                const uint32_t a_high[4] = {now[u][0].z, now[u][1].z, now[u][0].w, now[u][1].w}; /* columns 8t+4..8t+7 */
#pragma unroll
                for (int G = 0; G < NG; G++) {
                    if (HALF_X) {
                        mma16<BF16>(acc[c][G], a_low, xh[u][G].x, xh[u][G].y);
                        mma16<BF16>(acc[c][G], a_high, xh[u][G].z, xh[u][G].w);
                    } else {
                        const float4 lo = xv[u][G][0], hi = xv[u][G][1];
                        mma16<BF16>(acc[c][G], a_low, pack16<BF16>(lo.x, lo.y), pack16<BF16>(lo.z, lo.w));
                        mma16<BF16>(acc[c][G], a_high, pack16<BF16>(hi.x, hi.y), pack16<BF16>(hi.z, hi.w));
                    }
                }
            }
        }
    }
    store_class_sums<NG, WARPS, CLASSES_A_WARP>(acc, partial, y, rows, row0, n_tokens);
}

/* Whether the tensor-core decode product is used (TM_MMA16=0, a measuring aid, sends these
 * products back to cuBLAS). */
static bool mma16_enabled(void) {
    static const bool enabled = tm_env_int("TM_MMA16", 1) != 0;
    return enabled;
}

/* Warps a block for a launch of `tiles` tiles: 8, or 4 where the tiles outnumber the blocks of 8
 * warps the GPU holds at once (the 8B's Q/K/V, 384 tiles, and gate/up, 1792, against the H200's
 * 264 at 8 tokens and 132 at 9-16 with float activations, whose 8-warp kernel takes 158 registers),
 * so a launch of more than one round of blocks runs in fewer, fuller ones; the down product (256
 * tiles) keeps 8. Both forms give the same bits (mma16_kernel). TM_MMA16_WARPS=4 or 8 (a measuring
 * aid) fixes it. H200, one binary, two rounds, 8 / this rule: chained (16 launches) 6144 x 4096 at 8
 * tokens 17.11, 17.10 -> 16.43, 16.47 us, 28672 x 4096 61.15, 60.91 -> 60.09; at 16 tokens (float
 * activations) 21.27, 21.07 -> 16.57, 16.59 and 88.51, 87.91 -> 69.99, but the 4096-row products
 * there, 256 tiles against 132, lose: 4096 x 4096 14.92, 14.88 -> 15.24, 4096 x 14336 39.36, 39.41
 * -> 43.32 (the engine's down and, since session 50, output products read f16 activations and keep 8).
 * 8B decode tokens/s: 128 x8 1797, 1817 -> 1809, 1819; 128 x16 2654, 2660 -> 3039, 3031; 512 x4
 * 895.2, 899.9 -> 904.2, 899.5; 2048 x8 1555, 1571 -> 1580, 1573. */
static int mma16_warps(const void *eight_warps, int tiles) {
    static const int forced = tm_env_int("TM_MMA16_WARPS", 0);
    if (forced == 4 || forced == 8) return forced;
    int resident = 0;
    if (tm_resident_blocks(eight_warps, 32 * 8, 0, &resident) != cudaSuccess) return 8;
    return tiles > resident ? 4 : 8;
}

template <bool BF16, int NG, bool HALF_X>
static cudaError_t launch_mma16(const tile_parts &p, int tiles, int64_t cols, const float *x, const __half *x16, int n_tokens, cudaStream_t s) {
    const auto eight = mma16_kernel<BF16, NG, HALF_X, 8>;
    if (mma16_warps((const void *)eight, tiles) == 4)
        TM_LAUNCH_DEPENDENT((mma16_kernel<BF16, NG, HALF_X, 4>), dim3((unsigned)tiles), dim3(32 * 4), 0, s, p, cols, x, x16, n_tokens);
    else
        TM_LAUNCH_DEPENDENT(eight, dim3((unsigned)tiles), dim3(32 * 8), 0, s, p, cols, x, x16, n_tokens);
    return cudaSuccess;
}

static cudaError_t launch_tokens_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, const __half *x16,
                                       int n_tokens, cudaStream_t s) {
    static const bool parts_enabled = tm_env_int("TM_MMA16_PARTS", 1) != 0;
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS || n_tokens < 2 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || cols % 32 ||
        (uintptr_t)x % 16 || (uintptr_t)x16 % 16 || !mma16_enabled() || (n_parts > 1 && !parts_enabled))
        return cudaErrorNotSupported;
    const int type = parts[0].type;
    tile_parts p;
    if ((type != F16 && type != BF16) || (x16 && type != F16) || !tile_parts_of(parts, n_parts, type, &p)) return cudaErrorNotSupported;
    const int tiles = p.tiles_end[n_parts - 1];
    if (tiles == 0) return cudaSuccess;
    if (x16) return n_tokens <= 8 ? launch_mma16<false, 1, true>(p, tiles, cols, x, x16, n_tokens, s)
                                  : launch_mma16<false, 2, true>(p, tiles, cols, x, x16, n_tokens, s);
    if (type == F16) return n_tokens <= 8 ? launch_mma16<false, 1, false>(p, tiles, cols, x, x16, n_tokens, s)
                                          : launch_mma16<false, 2, false>(p, tiles, cols, x, x16, n_tokens, s);
    return n_tokens <= 8 ? launch_mma16<true, 1, false>(p, tiles, cols, x, x16, n_tokens, s)
                         : launch_mma16<true, 2, false>(p, tiles, cols, x, x16, n_tokens, s);
}

extern "C" int tm_cuda_gemv_16bit_tokens_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, int n_tokens,
                                               void *stream) {
    return launch_tokens_parts(parts, n_parts, cols, x, nullptr, n_tokens, (cudaStream_t)stream);
}

extern "C" int tm_cuda_gemv_f16_tokens_parts_half_x(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *x16,
                                                    int n_tokens, void *stream) {
    if (!x16) return cudaErrorInvalidValue;
    return launch_tokens_parts(parts, n_parts, cols, nullptr, (const __half *)x16, n_tokens, (cudaStream_t)stream);
}

extern "C" int tm_cuda_gemv_16bit_tokens(int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens,
                                         float *y, void *stream) {
    const tm_cuda_gemv_part part = {weights, type, rows, y};
    return tm_cuda_gemv_16bit_tokens_parts(&part, 1, cols, x, n_tokens, stream);
}
