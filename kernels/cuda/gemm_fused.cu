/*
 * gemm_fused.cu - the prefill product of k-quant weights (q4_k, q5_k, q6_k) on tensor cores with
 * the dequantization fused into the tile loads: Y[T x rows] = X[T x cols] W^T, X the activations
 * already rounded to f16 by tm_cuda_gemm (gemm.cu), float32 accumulation. No f16 copy of the
 * weights is written or read back: each weight byte goes from memory to shared memory once per
 * block and from there, through registers, straight into the tensor cores.
 *
 * A block owns BM rows of W and BN tokens and walks the columns in stages of 128 (half a
 * 256-element super-block), several stages in flight: the X tile (BN x 128 halves, in wgmma's
 * 128-byte-swizzle K-major layout, which ldmatrix reads too) and the rows' super-blocks as stored
 * (144 / 176 / 224 bytes). Each warp owns 16 rows; per stage a lane reads its rows' bytes from
 * shared memory once (stage_row) and turns them into the A fragments of the m16n8k16 layout in
 * registers (rows lane/4 and lane/4 + 8, column pairs 2 (lane % 4) and + 8 of each 16-column
 * step) with two f16x2 operations a pair of weights: (nibbles | 0x6400) - 1024 is the quant
 * exactly, times the sub-block scale plus its negated min (q6_k: minus 32, times the 16-element
 * scale). Two kernels:
 *   fused_wgmma_kernel (sm_90a): 8 consumer warps (two warpgroups, BM 128, BN 128 or 64) and a producer
 *     warp whose first lane loads each stage by TMA (two 64-column boxes of X, one box of W rows)
 *     onto a `full` mbarrier; consumers release a stage on its `empty` mbarrier. wgmma takes A
 *     from registers and X from shared memory, 64 rows x 128 tokens an instruction; the next 64
 *     columns' fragments are dequantized while it runs.
 *   fused_mma_kernel (sm_80 and later, the RTX 4090's): 4 warps (BM 64, BN 64), stages copied by
 *     every thread with cp.async, mma.sync with X fragments by ldmatrix.
 * Precision: each weight is rounded to f16 once from f16 scale products (scale, min), the
 * activations to f16 as in the dequantize + cuBLAS path; the test bound is the same, 2e-3 of
 * sum |w x| (tests/gpu/test_gemv_cuda.c).
 *
 * tm_cuda_gemm_fused decides (wgmma_block_tokens): by default the wgmma kernel where it measured faster
 * than dequantize + cuBLAS, else it declines and the caller takes that path; TM_GEMM_FUSED=0
 * always declines, 1 always takes the mma.sync kernel, 2 always the fused one (wgmma where the
 * device runs it). H200 against the cuBLAS path (docs/perf-notes.md, session 12; kernels-prefill
 * suite): q4_k 4096 x 4096 x 512 tokens 445 TFLOP/s (375), 14336 x 4096 459 (410); q6_k 376 (359)
 * and 366 (398); throughput suite: 7B prompt 512 28473 tokens/s (25766), 70B 2978 (2698).
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdlib.h>

#include "kernels.h"
#include "launch.cuh"
#include "mbarrier.cuh"
#include "mma.cuh"
#include "quant.cuh"

namespace {

/* The mma.sync kernel's block: BM = 16 WARPS rows, BN tokens, stages of 128 columns (half a
 * super-block), STAGES deep, copied by all threads. */
template <int TYPE, int WARPS, int BN, int STAGES> struct fused_shape {
    static constexpr int threads = 32 * WARPS, bm = 16 * WARPS, stride = traits<TYPE>::stride;
    static constexpr uint32_t x_bytes = BN * 256, w_bytes = bm * stride; /* X: BN x 128 halves */
    static constexpr uint32_t stage_bytes = (x_bytes + w_bytes + 1023) / 1024 * 1024; /* tiles on 1024-byte boundaries */
    static constexpr size_t shared_bytes = 1024 + (size_t)STAGES * stage_bytes;      /* + slack to align the first */
    static_assert(BN % 16 == 0, "ldmatrix takes 16 tokens at a time");
    static_assert(threads % 128 == 0, "a thread's X pieces are a multiple of 8 tokens apart: one swizzle pattern");
    static_assert(stride % 16 == 0, "super-blocks are copied in 16-byte pieces");
};

/* The 16-byte pieces of a super-block that its columns HALF * 128.. need, piece k of `count`
 * (the rest of the block is not copied; the copied pieces keep their offsets in the block). */
template <int TYPE> struct half_pieces;
template <> struct half_pieces<Q4_K> { /* d, dmin, scales; 64 quant bytes */
    static constexpr int count = 5;
    template <int HALF> __device__ static int piece(int k) { return k == 0 ? 0 : 4 * HALF + k; }
};
template <> struct half_pieces<Q5_K> { /* d, dmin, scales; qh[32] (every column's fifth bit); 64 quant bytes */
    static constexpr int count = 7;
    template <int HALF> __device__ static int piece(int k) { return k < 3 ? k : 4 * HALF + k; }
};
template <> struct half_pieces<Q6_K> { /* ql[64 HALF..], qh[32 HALF..], scales and d */
    static constexpr int count = 8;
    template <int HALF> __device__ static int piece(int k) { return k < 4 ? 4 * HALF + k : k < 6 ? 4 + 2 * HALF + k : 6 + k; }
};

/* Stage kb (columns 128 kb.., HALF = kb % 2 of super-block kb / 2) into the tile at `tile` by
 * cp.async: the block's X rows (this thread: one 16-byte piece of every (THREADS / 16)-th token,
 * from x_row, stored at x_at + 128 bytes a token) and the needed pieces of the block's rows'
 * super-block; tokens past n_tokens and rows past `rows` are zeros (a zero super-block
 * dequantizes to zeros). */
template <int TYPE, int WARPS, int BN, int STAGES, int HALF>
__device__ __forceinline__ void load_stage(uint32_t tile, const __half *x_row, int x_rows_left, uint32_t x_at, int64_t cols,
                                           const uint8_t *w, int64_t rows_left, int64_t row_bytes, int kb) {
    typedef fused_shape<TYPE, WARPS, BN, STAGES> shape;
    constexpr int X_STEP = shape::threads / 16, X_ITERS = (BN + X_STEP - 1) / X_STEP, COUNT = half_pieces<TYPE>::count;
#pragma unroll
    for (int n = 0; n < X_ITERS; n++) {
        if (BN % X_STEP && (int)threadIdx.x / 16 + n * X_STEP >= BN) break;
        const bool valid = n * X_STEP < x_rows_left;
        copy_async_16(tile + x_at + n * X_STEP * 128, valid ? x_row + n * X_STEP * cols + 128 * kb : x_row, valid ? 16 : 0);
    }
    const uint8_t *block = w + (int64_t)(kb >> 1) * shape::stride;
#pragma unroll
    for (int n = 0; n < (shape::bm * COUNT + shape::threads - 1) / shape::threads; n++) {
        const int i = (int)threadIdx.x + n * shape::threads;
        if (i < shape::bm * COUNT) {
            const int r = i / COUNT, piece = half_pieces<TYPE>::template piece<HALF>(i % COUNT);
            const bool valid = r < rows_left;
            copy_async_16(tile + shape::x_bytes + r * shape::stride + 16 * piece, block + (valid ? r * row_bytes : 0) + 16 * piece,
                          valid ? 16 : 0);
        }
    }
}

__device__ __forceinline__ uint32_t u16_at(const uint8_t *p) { return *reinterpret_cast<const uint16_t *>(p); }
/* bytes 0 and 1 of x into the low bytes of the two 16-bit halves */
__device__ __forceinline__ uint32_t spread(uint32_t x) { return __byte_perm(x, 0, 0x4140); }
/* (v & mask) | bits in one instruction (the compiler emits two for constant operands) */
__device__ __forceinline__ uint32_t and_or(uint32_t v, uint32_t mask, uint32_t bits) {
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(v), "r"(mask), "r"(bits));
    return r;
}
__device__ __forceinline__ __half2 as_half2(uint32_t v) { return *reinterpret_cast<__half2 *>(&v); }
__device__ __forceinline__ uint32_t as_u32(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }

/* What one lane reads of one row's super-block for one stage (half HALF of the block: chunks
 * 2 HALF and 2 HALF + 1), loaded from shared memory once and turned into both chunks' fragments:
 *   q4_k / q5_k: the 16-byte header (d, dmin, 12 bytes of 6-bit scales and mins) and, per chunk,
 *     the quant bytes 2 quad + 8 p, +1 (p = 0..3) of its 32; q5_k also qh bytes at the same
 *     positions (every chunk's fifth bits).
 *   q6_k: ql bytes 16 s + 2 quad + 8 e (+1) of the half's 64 (both chunks: low, high nibbles), qh
 *     bytes 16 (s % 2) + 2 quad + 8 e of its 32, each chunk's four int8 scales, and d. */
template <int TYPE> struct stage_row;
template <> struct stage_row<Q4_K> { uint4 header; uint32_t q[2][4]; };
template <> struct stage_row<Q5_K> { uint4 header; uint32_t q[2][4], qh[4]; };
template <> struct stage_row<Q6_K> { uint32_t ql[8], qh[4], scales[2], d; };

template <int TYPE, int HALF> __device__ __forceinline__ stage_row<TYPE> load_stage_row(const uint8_t *b, int quad) {
    stage_row<TYPE> r;
    if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        r.header = *reinterpret_cast<const uint4 *>(b);
        const uint8_t *q = b + (TYPE == Q5_K ? 48 : 16) + 64 * HALF + 2 * quad;
#pragma unroll
        for (int c = 0; c < 2; c++)
#pragma unroll
            for (int p = 0; p < 4; p++) r.q[c][p] = u16_at(q + 32 * c + 8 * p);
        if constexpr (TYPE == Q5_K)
#pragma unroll
            for (int p = 0; p < 4; p++) r.qh[p] = u16_at(b + 16 + 2 * quad + 8 * p);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) r.ql[i] = u16_at(b + 64 * HALF + 8 * i + 2 * quad); /* i = 2 s + e */
#pragma unroll
        for (int i = 0; i < 4; i++) r.qh[i] = u16_at(b + 128 + 32 * HALF + 8 * i + 2 * quad); /* i = 2 (s % 2) + e */
        r.scales[0] = *reinterpret_cast<const uint32_t *>(b + 192 + 8 * HALF);
        r.scales[1] = *reinterpret_cast<const uint32_t *>(b + 196 + 8 * HALF);
        r.d = u16_at(b + 208);
    }
    return r;
}

/* Byte i of the 12 scale bytes of a q4_k / q5_k header (words y, z, w). */
__device__ __forceinline__ int scale_byte(const uint4 &header, int i) {
    const uint32_t word = i < 4 ? header.y : i < 8 ? header.z : header.w;
    return (int)((word >> (8 * (i & 3))) & 0xFF);
}
/* Sub-block `sub`'s 6-bit scale and min (k_scale_min of quant.cuh, from registers); `low` says
 * sub < 4 (known at compile time where sub is not). */
__device__ __forceinline__ void header_scale_min(const uint4 &header, int sub, bool low, int *scale, int *min) {
    if (low) {
        *scale = scale_byte(header, sub) & 63;
        *min = scale_byte(header, sub + 4) & 63;
    } else {
        *scale = (scale_byte(header, sub + 4) & 0xF) | ((scale_byte(header, sub - 4) >> 6) << 4);
        *min = (scale_byte(header, sub + 4) >> 4) | ((scale_byte(header, sub) >> 6) << 4);
    }
}

/* q4_k / q5_k chunk j's sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles): (scale, -min) as
 * f16 pairs, the high one's scale divided by 16 (its nibbles are read as 16 q). */
struct scale_pairs { uint32_t low, high; };
__device__ __forceinline__ scale_pairs chunk_scales(const uint4 &header, int j, bool low_half) {
    int scale_low, min_low, scale_high, min_high;
    header_scale_min(header, 2 * j, low_half, &scale_low, &min_low);
    header_scale_min(header, 2 * j + 1, low_half, &scale_high, &min_high);
    const __half2 dm = as_half2(header.x); /* d, dmin */
    const float d = __low2float(dm), dmin = __high2float(dm);
    return {as_u32(__floats2half2_rn(d * scale_low, -dmin * min_low)), as_u32(__floats2half2_rn(d * scale_high * 0.0625f, -dmin * min_high))};
}

/* Row h (0: the lane's first row, 1: the row 8 below) of the A fragments of 64-column chunk
 * 2 HALF + C of the super-block: a[s] is 16-column step s of the chunk, registers h and 2 + h
 * (columns 2 quad, +1 and 2 quad + 8, +9). q4_k / q5_k take the chunk's scales in `sp`. */
template <int TYPE, int HALF, int C>
__device__ __forceinline__ void fragments(const stage_row<TYPE> &r, int h, scale_pairs sp, uint32_t (&a)[4][4]) {
    constexpr int j = 2 * HALF + C;
    if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        const __half2 s_low = __low2half2(as_half2(sp.low)), m_low = __high2half2(as_half2(sp.low));
        const __half2 s_high = __low2half2(as_half2(sp.high)), m_high = __high2half2(as_half2(sp.high));
        const __half2 offset = __float2half2_rn(1024.0f);
#pragma unroll
        for (int p = 0; p < 4; p++) { /* quant bytes 2 quad + 8 p, +1: step p / 2, column pair p % 2 */
            const uint32_t v = spread(r.q[C][p]);
            uint32_t low = and_or(v, 0x000F000Fu, 0x64006400u), high = and_or(v, 0x00F000F0u, 0x64006400u);
            if constexpr (TYPE == Q5_K) { /* fifth bits: bit 2j (low) and 2j + 1 (high) of qh[position] */
                const uint32_t bits = spread(r.qh[p]);
                low |= ((bits >> (2 * j)) & 0x00010001u) << 4;
                high |= ((bits >> (2 * j + 1)) & 0x00010001u) << 8;
            }
            const int step = p >> 1, reg = 2 * (p & 1) + h;
            a[step][reg] = as_u32(__hfma2(__hsub2(as_half2(low), offset), s_low, m_low));
            a[step + 2][reg] = as_u32(__hfma2(__hsub2(as_half2(high), offset), s_high, m_high));
        }
    } else { /* Q6_K: chunk 2 HALF + C is the half's groups 2C and 2C + 1: ql nibbles C, qh bits 2 group */
        const __half2 d = as_half2(r.d | r.d << 16);
        const __half2 offset = __float2half2_rn(1056.0f); /* 1024 + 32 */
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const int group = 2 * C + (s >> 1);
            const int8_t sc = (int8_t)(r.scales[C] >> (8 * s)); /* one scale per 16 elements: per step */
            const __half2 scale = __hmul2(d, __half2half2(__int2half_rn(sc)));
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const uint32_t low = spread(r.ql[2 * s + e]), high = spread(r.qh[2 * (s & 1) + e]);
                const uint32_t bits = and_or(low >> (4 * C), 0x000F000Fu, ((high << 4 >> (2 * group)) & 0x00300030u) | 0x64006400u);
                a[s][2 * e + h] = as_u32(__hmul2(__hsub2(as_half2(bits), offset), scale));
            }
        }
    }
}

/* Both rows' raw bytes for a stage (rows lane/4 and lane/4 + 8 of the warp's 16) and, for q4_k /
 * q5_k, the scales of both rows and both chunks: scale_pairs[h][C]. The four lanes of a row pair
 * compute one (row, chunk) each and exchange them by shuffles (each computing all four: q4_k 4096
 * x 4096 x 512 tokens 442 / 439 TFLOP/s against 450 / 450, 7B prompt 512 28279 -> 28767 tokens/s,
 * H200). */
template <int TYPE> struct stage_rows {
    stage_row<TYPE> r[2];
    scale_pairs scales[2][2];
};
template <int TYPE, int HALF>
__device__ __forceinline__ stage_rows<TYPE> load_stage_rows(const uint8_t *first_row, int stride, int lane) {
    const int quad = lane & 3;
    stage_rows<TYPE> rows = {{load_stage_row<TYPE, HALF>(first_row, quad), load_stage_row<TYPE, HALF>(first_row + 8 * stride, quad)}, {}};
    if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
        const int h = quad & 1, c = quad >> 1;
        const scale_pairs mine = chunk_scales(h ? rows.r[1].header : rows.r[0].header, 2 * HALF + c, HALF == 0);
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
#pragma unroll
            for (int cc = 0; cc < 2; cc++) {
                const int from = (lane & ~3) | hh | cc << 1;
                rows.scales[hh][cc] = {__shfl_sync(0xffffffffu, mine.low, from), __shfl_sync(0xffffffffu, mine.high, from)};
            }
    }
    return rows;
}
template <int TYPE, int HALF, int C> __device__ __forceinline__ void dequantize_rows(const stage_rows<TYPE> &rows, uint32_t (&a)[4][4]) {
    fragments<TYPE, HALF, C>(rows.r[0], 0, rows.scales[0][C], a);
    fragments<TYPE, HALF, C>(rows.r[1], 1, rows.scales[1][C], a);
}

/* The accumulators (mma.sync C layout per 8 tokens) into y[token][row] for rows first_row.. of the
 * warp's 16 and tokens token0..; rows and tokens past the ends are not written. */
template <int BN>
__device__ __forceinline__ void store_tile(const float (&acc)[BN / 2], float *y, int64_t rows, int n_tokens, int64_t first_row, int token0, int lane) {
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t row = first_row + (lane >> 2) + 8 * (e >> 1);
            const int token = token0 + 8 * j + 2 * (lane & 3) + (e & 1);
            if (row < rows && token < n_tokens) y[(int64_t)token * rows + row] = acc[4 * j + e];
        }
}

#if defined(TM_WGMMA_AVAILABLE)
/* TMA (sm_90; its mbarriers: mbarrier.cuh). The pipeline waits with the loop inside one asm block,
 * the form it was built and measured with (mbarrier_wait's C loop compiles to other SASS here). */
__device__ __forceinline__ void mbarrier_wait_in_asm(uint32_t bar, int parity) {
    asm volatile("{\n.reg .pred done;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* box at (x0, y0) of the tensor `map` into shared memory at `destination`, completing on `bar` */
__device__ __forceinline__ void tma_load_2d(uint32_t destination, const CUtensorMap *map, int x0, int y0, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(destination),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(x0), "r"(y0), "r"(bar)
                 : "memory");
}
#endif

/* Keeps registers live (and unmoved) up to this point: wgmma reads its register operands and
 * writes its accumulators asynchronously, after the instruction the compiler sees. */
template <int N> __device__ __forceinline__ void hold(uint32_t (&r)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i][0]), "+r"(r[i][1]), "+r"(r[i][2]), "+r"(r[i][3]));
}
template <int N> __device__ __forceinline__ void hold(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i]));
}

/* ---- sm_80 and later (the RTX 4090): mma.sync, X fragments by ldmatrix, stages by cp.async ---- */

template <int TYPE, int WARPS, int BN, int STAGES>
__global__ void __launch_bounds__(32 * WARPS, 1)
    fused_mma_kernel(const uint8_t *w, int64_t rows, int64_t cols, const __half *x, int n_tokens, float *y) {
    typedef fused_shape<TYPE, WARPS, BN, STAGES> shape;
    constexpr int BM = shape::bm, STRIDE = shape::stride, AHEAD = STAGES - 1; /* stages in flight ahead of the one multiplied */
    extern __shared__ __align__(1024) uint8_t shared_raw[];
    const uint32_t raw = shared_address(shared_raw), tiles = (raw + 1023) & ~1023u;
    const uint8_t *shared = shared_raw + (tiles - raw);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row0 = (int64_t)blockIdx.x * BM, row_bytes = cols / 256 * STRIDE;
    const int token0 = (int)blockIdx.y * BN, n_k = (int)(cols / 128);
    const int warp_row = 16 * warp; /* the warp's 16 rows within the block */

    /* this thread's copies: X piece threadIdx.x % 16 of tokens threadIdx.x / 16 + (THREADS / 16) n */
    const int first_token = (int)threadIdx.x / 16, x_rows_left = n_tokens - token0 - first_token;
    const __half *x_row = x_rows_left > 0 ? x + (int64_t)(token0 + first_token) * cols + 8 * (threadIdx.x % 16) : x;
    const uint32_t x_at = swizzled_atoms(first_token, (int)threadIdx.x % 16, BN);
    const uint8_t *w_rows = w + row0 * row_bytes;
    const int64_t rows_left = rows - row0;

    float acc[BN / 2] = {}; /* per 8 tokens j: rows lane/4 (+8 for e >= 2), tokens 8 j + 2 quad + e % 2 */
    uint32_t a[4][4];
#pragma unroll
    for (int s = 0; s < AHEAD; s++) { /* n_k >= 2 >= AHEAD */
        if (s & 1) load_stage<TYPE, WARPS, BN, STAGES, 1>(tiles + s * shape::stage_bytes, x_row, x_rows_left, x_at, cols, w_rows, rows_left, row_bytes, s);
        else load_stage<TYPE, WARPS, BN, STAGES, 0>(tiles + s * shape::stage_bytes, x_row, x_rows_left, x_at, cols, w_rows, rows_left, row_bytes, s);
        copy_async_commit();
    }
    /* stage kb: half HALF = kb % 2 of each row's super-block, chunks 2 HALF and 2 HALF + 1 */
    auto stage = [&](auto half_tag, int kb) {
        constexpr int HALF = decltype(half_tag)::value;
        copy_async_wait<AHEAD - 1>(); /* this thread's copies of stage kb have landed */
        __syncthreads();              /* everyone's have, and nobody still reads the stage refilled next */
        if (kb + AHEAD < n_k)
            load_stage<TYPE, WARPS, BN, STAGES, (HALF + AHEAD) & 1>(tiles + ((kb + AHEAD) % STAGES) * shape::stage_bytes, x_row, x_rows_left, x_at, cols,
                                                                  w_rows, rows_left, row_bytes, kb + AHEAD);
        copy_async_commit();
        const uint32_t x_tile = tiles + (kb % STAGES) * shape::stage_bytes;
        const uint8_t *first_row = shared + (kb % STAGES) * shape::stage_bytes + shape::x_bytes + (warp_row + (lane >> 2)) * STRIDE;
        const stage_rows<TYPE> bytes = load_stage_rows<TYPE, HALF>(first_row, STRIDE, lane);
#pragma unroll
        for (int c = 0; c < 2; c++) {
            if (c == 0) dequantize_rows<TYPE, HALF, 0>(bytes, a);
            else dequantize_rows<TYPE, HALF, 1>(bytes, a);
#pragma unroll
            for (int s = 0; s < 4; s++) {
                const int step = 4 * c + s; /* 16-column step of the stage: 16-byte pieces 2 step, 2 step + 1 */
#pragma unroll
                for (int jj = 0; jj < BN / 16; jj++) { /* tokens 16 jj.. : ldmatrix's four 8x8 matrices */
                    uint32_t b[4];
                    ldmatrix_x4(b, x_tile + swizzled_atoms(16 * jj + (lane & 7) + 8 * (lane >> 4), 2 * step + ((lane >> 3) & 1), BN));
                    mma_16816(*reinterpret_cast<float(*)[4]>(&acc[8 * jj]), a[s], b[0], b[1]);
                    mma_16816(*reinterpret_cast<float(*)[4]>(&acc[8 * jj + 4]), a[s], b[2], b[3]);
                }
            }
        }
    };
#pragma unroll 1
    for (int kb = 0; kb < n_k; kb += 2) { /* n_k is even: whole super-blocks */
        stage(std::integral_constant<int, 0>(), kb);
        stage(std::integral_constant<int, 1>(), kb + 1);
    }
    copy_async_wait<0>();
    store_tile<BN>(acc, y, rows, n_tokens, row0 + warp_row, token0, lane);
}

/* ---- sm_90a: wgmma, tiles by TMA, a producer warp and mbarriers ------------------------------- */

/* Block of 9 warps: 8 consumers (two warpgroups of 64 rows, BM = 128; BN 128 or 64 tokens) and one producer warp whose
 * first lane issues the copies: per stage two TMA boxes of X (BN tokens x 64 halves, 128-byte
 * swizzle: wgmma's K-major layout) and one of W (BM rows x one super-block, as stored), completing
 * on the stage's `full` barrier; consumers release a stage on its `empty` barrier (one arrival a
 * warp) once their instructions reading it are done, and the producer refills it. Warpgroups
 * run decoupled (no block-wide barrier in the loop). */
template <int TYPE, int BN, int STAGES> struct tma_shape {
    static constexpr int consumers = 256, threads = consumers + 32, bm = 128, stride = traits<TYPE>::stride;
    static constexpr uint32_t x_bytes = BN * 256, w_bytes = bm * stride;
    static constexpr uint32_t stage_bytes = (x_bytes + w_bytes + 1023) / 1024 * 1024;
    static constexpr size_t shared_bytes = 1024 + (size_t)STAGES * stage_bytes + 2 * STAGES * 8; /* + the barriers */
    static_assert(STAGES >= 2, "a stage refilled while another is multiplied");
};

#if defined(TM_WGMMA_AVAILABLE)
template <int BN> __device__ __forceinline__ void wgmma_step(float (&d)[BN / 2], const uint32_t (&a)[4], uint64_t x, int accumulate);
template <> __device__ __forceinline__ void wgmma_step<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t x, int accumulate) {
    wgmma_rs_n64(d, a, x, accumulate);
}
template <> __device__ __forceinline__ void wgmma_step<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t x, int accumulate) {
    wgmma_rs_n128(d, a, x, accumulate);
}
#endif

template <int TYPE, int BN, int STAGES>
__global__ void __launch_bounds__(288, 1)
    fused_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map, int64_t rows, int64_t cols,
                       int n_tokens, float *y) {
#if defined(TM_WGMMA_AVAILABLE)
    typedef tma_shape<TYPE, BN, STAGES> shape;
    constexpr int STRIDE = shape::stride;
    extern __shared__ __align__(1024) uint8_t shared_raw[];
    const uint32_t raw = shared_address(shared_raw), tiles = (raw + 1023) & ~1023u;
    const uint8_t *shared = shared_raw + (tiles - raw);
    const uint32_t full = tiles + STAGES * shape::stage_bytes, empty = full + 8 * STAGES; /* barrier s at + 8 s */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row0 = (int64_t)blockIdx.x * shape::bm;
    const int token0 = (int)blockIdx.y * BN, n_k = (int)(cols / 128);

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) mbarrier_init(full + 8 * s, 1), mbarrier_init(empty + 8 * s, 8);
        fence_mbarrier_init();
    }
    __syncthreads();

    if (warp == 8) { /* the producer */
        if (lane == 0)
            for (int kb = 0; kb < n_k; kb++) {
                const int s = kb % STAGES;
                if (kb >= STAGES) mbarrier_wait_in_asm(empty + 8 * s, ((kb / STAGES) - 1) & 1);
                const uint32_t tile = tiles + s * shape::stage_bytes, bar = full + 8 * s;
                mbarrier_expect(bar, shape::x_bytes + shape::w_bytes);
                tma_load_2d(tile, &x_map, 128 * kb, token0, bar);
                tma_load_2d(tile + BN * 128, &x_map, 128 * kb + 64, token0, bar);
                tma_load_2d(tile + shape::x_bytes, &w_map, (kb >> 1) * STRIDE, (int)row0, bar);
            }
        return;
    }

    const int warp_row = 64 * (warp >> 2) + 16 * (warp & 3); /* the warp's 16 rows: of its warpgroup's 64 */
    float acc[BN / 2]; /* zeroed by the first instruction (ordinary stores to it while instructions are in flight would serialize them: ptxas C7515) */
    uint32_t a[2][4][4]; /* chunks alternate: one multiplied while the next is dequantized */
    auto stage = [&](auto half_tag, int kb) {
        constexpr int HALF = decltype(half_tag)::value;
        const int s = kb % STAGES;
        mbarrier_wait_in_asm(full + 8 * s, (kb / STAGES) & 1);
        const uint32_t x_tile = tiles + s * shape::stage_bytes;
        const uint8_t *first_row = shared + s * shape::stage_bytes + shape::x_bytes + (warp_row + (lane >> 2)) * STRIDE;
        const stage_rows<TYPE> bytes = load_stage_rows<TYPE, HALF>(first_row, STRIDE, lane);
#pragma unroll
        for (int c = 0; c < 2; c++) { /* chunk c of every stage uses a[c] */
            if (c == 0) dequantize_rows<TYPE, HALF, 0>(bytes, a[0]);
            else dequantize_rows<TYPE, HALF, 1>(bytes, a[1]);
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < 4; k++) wgmma_step<BN>(acc, a[c][k], wgmma_descriptor(x_tile + c * BN * 128 + k * 32, 16, 1024), kb | c | k);
            wgmma_commit();
            wgmma_wait<1>();   /* the chunk before is done: a[c ^ 1] may be rewritten */
            hold(a[c ^ 1]);    /* ... and not before */
            if (c == 0 && kb > 0) { /* the chunk before was stage kb - 1's last: this warp is done with it */
                __syncwarp();
                if (lane == 0) mbarrier_arrive(empty + 8 * ((kb - 1) % STAGES));
            }
        }
    };
#pragma unroll 1
    for (int kb = 0; kb < n_k; kb += 2) { /* n_k is even: whole super-blocks */
        stage(std::integral_constant<int, 0>(), kb);
        stage(std::integral_constant<int, 1>(), kb + 1);
    }
    wgmma_wait<0>();
    hold(a[0]), hold(a[1]);
    hold(acc);
    store_tile<BN>(acc, y, rows, n_tokens, row0 + warp_row, token0, lane);
#endif
}

template <int TYPE, int WARPS, int BN, int STAGES>
cudaError_t launch_mma(const uint8_t *w, int64_t rows, int64_t cols, const __half *x, int n_tokens, float *y, cudaStream_t stream) {
    typedef fused_shape<TYPE, WARPS, BN, STAGES> shape;
    void (*kernel)(const uint8_t *, int64_t, int64_t, const __half *, int, float *) = fused_mma_kernel<TYPE, WARPS, BN, STAGES>;
    TM_CUDA_CHECK(tm_allow_dynamic_shared((const void *)kernel, (int)shape::shared_bytes));
    const dim3 grid((unsigned)((rows + shape::bm - 1) / shape::bm), (unsigned)((n_tokens + BN - 1) / BN));
    kernel<<<grid, shape::threads, shape::shared_bytes, stream>>>(w, rows, cols, x, n_tokens, y);
    return cudaGetLastError();
}

/* cuTensorMapEncodeTiled, from the driver through the runtime (no -lcuda); NULL if unavailable. */
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 encode;
    static bool looked;
    if (!looked) {
        cudaDriverEntryPointQueryResult found;
        void *function = NULL;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess)
            encode = (PFN_cuTensorMapEncodeTiled_v12000)function;
        else
            cudaGetLastError();
        looked = true;
    }
    return encode;
}

/* A 2D tensor map: `width` x `height` elements of `type` (`pitch` bytes a row), boxes of
 * box_width x box_height; elements outside read as zeros. */
cudaError_t encode_map(CUtensorMap *map, CUtensorMapDataType type, const void *base, uint64_t width, uint64_t height, uint64_t pitch,
                       uint32_t box_width, uint32_t box_height, CUtensorMapSwizzle swizzle) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
    if (!encode) return cudaErrorNotSupported;
    const cuuint64_t dims[2] = {width, height}, strides[1] = {pitch};
    const cuuint32_t box[2] = {box_width, box_height}, element_strides[2] = {1, 1};
    const CUresult result = encode(map, type, 2, const_cast<void *>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                   CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (result != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed (%d) for a %llu x %llu tensor\n", (int)result, (unsigned long long)width,
                (unsigned long long)height);
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

template <int TYPE, int BN, int STAGES>
cudaError_t launch_wgmma(const uint8_t *w, int64_t rows, int64_t cols, const __half *x, int n_tokens, float *y, cudaStream_t stream) {
    typedef tma_shape<TYPE, BN, STAGES> shape;
    CUtensorMap x_map, w_map;
    const uint64_t row_bytes = (uint64_t)cols / 256 * shape::stride;
    TM_CUDA_CHECK(encode_map(&x_map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, x, (uint64_t)cols, (uint64_t)n_tokens, (uint64_t)cols * 2, 64, BN,
                             CU_TENSOR_MAP_SWIZZLE_128B));
    TM_CUDA_CHECK(encode_map(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, w, row_bytes, (uint64_t)rows, row_bytes, shape::stride, shape::bm,
                             CU_TENSOR_MAP_SWIZZLE_NONE));
    void (*kernel)(const CUtensorMap, const CUtensorMap, int64_t, int64_t, int, float *) = fused_wgmma_kernel<TYPE, BN, STAGES>;
    TM_CUDA_CHECK(tm_allow_dynamic_shared((const void *)kernel, (int)shape::shared_bytes));
    const dim3 grid((unsigned)((rows + shape::bm - 1) / shape::bm), (unsigned)((n_tokens + BN - 1) / BN));
    kernel<<<grid, shape::threads, shape::shared_bytes, stream>>>(x_map, w_map, rows, cols, n_tokens, y);
    return cudaGetLastError();
}

/* The kernel for `kind` (1 mma.sync, 2 wgmma): shapes that fit the RTX 4090's 99 KiB of shared
 * memory a block for mma.sync (91 KiB at q6_k), the H100/H200's 227 KiB for wgmma (four stages:
 * 201 / 217 KiB at q4_k / q5_k, three measured 4 % slower; three at q6_k, 181 KiB). */
template <int TYPE>
cudaError_t launch_kind(int kind, int block_tokens, const uint8_t *w, int64_t rows, int64_t cols, const __half *x, int n_tokens, float *y,
                        cudaStream_t stream) {
    if (kind == 2) {
        if (block_tokens == 64) return launch_wgmma<TYPE, 64, 4>(w, rows, cols, x, n_tokens, y, stream); /* 137-177 KiB */
        if constexpr (TYPE == Q6_K) return launch_wgmma<TYPE, 128, 3>(w, rows, cols, x, n_tokens, y, stream);
        else return launch_wgmma<TYPE, 128, 4>(w, rows, cols, x, n_tokens, y, stream);
    }
    return launch_mma<TYPE, 4, 64, 3>(w, rows, cols, x, n_tokens, y, stream);
}

} // namespace

/* Tokens a block of the wgmma kernel takes (128 or 64) and whether the product should take it at
 * all (`pays`). The grid should fill at least 3/4 of the SMs: 128-token blocks when they do (from 65
 * tokens on), 64-token blocks when those do (half the tokens, twice the blocks; from 64 tokens down
 * they waste less on padding at the same block count), else dequantize + cuBLAS; never above 512
 * tokens (the engine's prefill step). Measured on the H200 against dequantize + cuBLAS (TFLOP/s,
 * q4_k; docs/perf-notes.md, session 12): 4096 rows at 512 tokens (128 blocks of 128) 445 vs 375,
 * 14336 rows at 128 tokens 420 vs 160; at 2048 tokens cuBLAS wins (560 vs 484), its one
 * dequantization spread over 4x the tokens. TM_GEMM_FUSED_TOKENS=64|128 fixes the block (a
 * measuring aid). Devices without wgmma keep the cuBLAS path until the mma.sync kernel is measured
 * there (TM_GEMM_FUSED=1 takes it). */
static int wgmma_block_tokens(int device, int64_t rows, int n_tokens, bool *pays) {
    enum { MAX_DEVICES = 64 };
    static int sms[MAX_DEVICES];
    static const int fixed = tm_env_int("TM_GEMM_FUSED_TOKENS", 0);
    *pays = false;
    if (device < 0 || device >= MAX_DEVICES) return 128;
    if (!sms[device] && cudaDeviceGetAttribute(&sms[device], cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        cudaGetLastError();
        return 128;
    }
    const int64_t row_blocks = (rows + 127) / 128, fill = 3 * (int64_t)sms[device];
    const bool fills128 = 4 * row_blocks * ((n_tokens + 127) / 128) >= fill, fills64 = 4 * row_blocks * ((n_tokens + 63) / 64) >= fill;
    const int tokens = fixed == 64 || fixed == 128 ? fixed : n_tokens > 64 && fills128 ? 128 : 64;
    *pays = n_tokens <= 512 && (tokens == 128 ? fills128 : fills64);
    return tokens;
}

extern "C" int tm_cuda_gemm_fused(int type, const void *weights, int64_t rows, int64_t cols, const void *x_f16, int n_tokens, float *y,
                                  void *stream_pointer) {
    if (type != Q4_K && type != Q5_K && type != Q6_K) return cudaErrorNotSupported;
    static const int wanted = tm_env_int("TM_GEMM_FUSED", -1);
    if (wanted == 0) return cudaErrorNotSupported;
    if (n_tokens < 1 || rows < 1 || cols < 256 || cols % 256 || cols > INT32_MAX || rows > INT32_MAX) return cudaErrorInvalidValue;
    int device = 0;
    TM_CUDA_CHECK(cudaGetDevice(&device));
    const bool wgmma = wanted != 1 && tm_wgmma_available(device);
    bool pays = false;
    const int block_tokens = wgmma ? wgmma_block_tokens(device, rows, n_tokens, &pays) : 64;
    if (wanted < 0 && !(wgmma && pays)) return cudaErrorNotSupported;
    const int kind = wgmma ? 2 : 1;
    const uint8_t *w = (const uint8_t *)weights;
    const __half *x = (const __half *)x_f16;
    cudaStream_t stream = (cudaStream_t)stream_pointer;
    if (type == Q4_K) return launch_kind<Q4_K>(kind, block_tokens, w, rows, cols, x, n_tokens, y, stream);
    if (type == Q5_K) return launch_kind<Q5_K>(kind, block_tokens, w, rows, cols, x, n_tokens, y, stream);
    return launch_kind<Q6_K>(kind, block_tokens, w, rows, cols, x, n_tokens, y, stream);
}
