/*
 * gemv_q8.cu - the fast decode products for the k-quants (llama.cpp's MMVQ approach): the
 * activations are quantized once per input to 8-bit blocks of 32 (q8_1: int8 values, a scale d
 * and d * sum of the values), and weights meet them in integer dot products (dp4a, four 8-bit
 * products per instruction) with the float scales applied once per 32-element sub-block.
 * Per weight element the kernels read 0.56 (q4_k), 0.69 (q5_k) or 0.82 (q6_k) bytes of weights and ~1.1
 * bytes of activation from L1, instead of 4 bytes of float activation.
 *
 * One warp owns R consecutive rows and up to NT tokens: lane l takes sub-block l % 8 of blocks
 * l / 8, l / 8 + 4, ...; the R rows' sub-blocks are decoded into registers once and dotted with
 * each token's activation sub-block, so the activations are read once per R rows and the weights
 * once for all tokens (used at one token). From 2 tokens on, the int8 tensor-core kernels (mmq_kernel,
 * below: a block a 16-row tile; mmq_persistent_kernel: a block a resident slot running through its
 * tiles) take 16-row tiles instead; at one token, q4_k, q5_k and q6_k rows take pairs_kernel (a lane
 * a pair of sub-blocks sharing their bytes, reading the activations in the pair order quant.cuh
 * describes, below; TM_GEMV_STREAM=1 tries the streamed kernel of gemv_stream.cu first).
 * Precision: the activation rounding (at most half a step of max|x|/127 per element of each
 * 32-block) is the only difference from the float kernels, as on the CPU's fast path.
 * q8_0 weights take the same activations in gemv_q8_0.cu (tm_cuda_gemv_q8 and
 * tm_cuda_gemv_q8_parts send them there).
 */
#include <type_traits>

#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"
#include "mmvq.cuh"
#include "quant.cuh"
#include "rope_append.cuh"
#include "stamps.cuh"
#include "tile_sums.cuh"

TM_STAMPS_RING(gemv_q8, 1u << 22) /* a 7B x1 step: ~340 k records of pairs_kernel */

/* ---- activations to q8_1 --------------------------------------------------------------------- */

/* One thread a value, 256 threads a 256-value block (quantize_q8_1_block). */
__global__ void __launch_bounds__(256) quantize_q8_1_kernel(const float *x, q8_out q8) {
    tm_grid_dependency();
    const int64_t element = (int64_t)blockIdx.x * 256 + threadIdx.x;
    quantize_q8_1_block(x[element], element, q8);
}

extern "C" int tm_cuda_quantize_q8_1(const float *x, int64_t n_rows, int64_t n_per_row, void *q8, void *stream) {
    const int64_t n = n_rows * n_per_row;
    if (n_per_row % 256 || n_rows < 0) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    TM_LAUNCH_DEPENDENT(quantize_q8_1_kernel, dim3((unsigned)(n / 256)), dim3(256), 0, (cudaStream_t)stream, x,
                        q8_out_at(q8, n_rows, n_per_row));
    return cudaSuccess;
}

extern "C" uint64_t tm_cuda_q8_1_bytes(int64_t n) { return 2 * (uint64_t)n + (uint64_t)n / 32 * 4; } /* quant.cuh's layout */

/* Blocks per lane per pass of mmvq_rows, all loaded before any is used: more bytes in flight per
 * warp, where registers allow (small R x NT only; 4 at one row and one token measured slower: 4096 x
 * 4096 q4_k 8.2 -> 10.3 us, 7B decode 318 -> 286 tokens/s on the H200). In the several-matrix kernel
 * (PARTS) q5_k and q6_k take one: two of q5_k (its fifth bits) or q6_k (64 bytes a block) took that
 * kernel from 54-56 to 64 registers, the q4_k layers' launches too. */
template <int TYPE, int NT, int R, bool PARTS> __host__ __device__ constexpr int mmvq_unroll() {
    return R * NT > 4 || TYPE == Q5_K || (TYPE == Q6_K && PARTS) ? 1 : 2;
}

/* One pass of mmvq_rows: this lane's sub-block of blocks first, first + 4, ... (U of them) of the R rows. */
template <int TYPE, int R, int U>
__device__ __forceinline__ void mmvq_load_pass(const uint8_t *weights, int64_t rows, int64_t blocks, int64_t row_bytes, int64_t row0,
                                               int64_t first, int sub, packed_subblock<TYPE> (&w)[U][R]) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++)
            if (first + 4 * u < blocks && row0 + r < rows)
                load_subblock<TYPE>(weights + (row0 + r) * row_bytes + (first + 4 * u) * traits<TYPE>::stride, sub, w[u][r]);
}

/* This lane's part of the sums of rows row0..row0+R-1 of one matrix for up to NT tokens, by one
 * warp, U blocks a lane per pass, into acc (the warp's lanes add them up after). Calls
 * tm_grid_dependency() itself, then after_wait(): with `early`, after the first pass's weights are
 * requested (weights are written by no kernel, so their first trip to memory overlaps the previous
 * kernel's tail; the activations are read only after the wait), else before anything. A lane adds
 * its blocks in the same order whatever U is, so U changes no bit of the sums. */
template <int TYPE, int NT, int R, int U, typename AfterWait>
__device__ __forceinline__ void mmvq_sums(const uint8_t *weights, int64_t rows, int64_t cols, int64_t row0, const int8_t *xq,
                                          const half2 *xds, int n_tokens, bool early, AfterWait after_wait, float (&acc)[R][NT]) {
    const int lane = threadIdx.x % 32, sub = lane % 8;
    const int64_t blocks = cols / 256, row_bytes = blocks * traits<TYPE>::stride;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0;
    packed_subblock<TYPE> w[U][R];
    if (early) mmvq_load_pass<TYPE, R, U>(weights, rows, blocks, row_bytes, row0, lane / 8, sub, w);
    tm_grid_dependency();
    after_wait();
    if (!early) mmvq_load_pass<TYPE, R, U>(weights, rows, blocks, row_bytes, row0, lane / 8, sub, w);
    for (int64_t first = lane / 8; first < blocks; first += 4 * U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t block = first + 4 * u;
            if (block >= blocks) break;
            const int64_t x_block = block * 8 + sub;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= n_tokens) break;
                const int4 *xv = reinterpret_cast<const int4 *>(xq + t * cols + x_block * 32);
                int4 a = xv[0], b = xv[1];
                int x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                float2 xd = __half22float2(xds[t * (cols / 32) + x_block]);
#pragma unroll
                for (int r = 0; r < R; r++) acc[r][t] += subblock_dot<TYPE>(w[u][r], x, xd);
            }
        }
        if (first + 4 * U < blocks) mmvq_load_pass<TYPE, R, U>(weights, rows, blocks, row_bytes, row0, first + 4 * U, sub, w);
    }
}

/* Rows row0..row0+R-1 of one matrix for up to NT tokens by one warp (mmvq_sums, `early` as
 * there), added across the lanes and stored into y (token t's row r at y[t * rows + row0 + r]). */
template <int TYPE, int NT, int R, int U>
__device__ __forceinline__ void mmvq_rows(const uint8_t *weights, int64_t rows, int64_t cols, int64_t row0, const int8_t *xq,
                                          const half2 *xds, int n_tokens, float *y, bool early) {
    const int lane = threadIdx.x % 32;
    float acc[R][NT];
    mmvq_sums<TYPE, NT, R, U>(weights, rows, cols, row0, xq, xds, n_tokens, early, [] {}, acc);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float s = sum_over_warp(acc[r][t]);
            if (lane == 0 && t < n_tokens && row0 + r < rows) y[t * rows + row0 + r] = s;
        }
}

/* ---- one token, a lane a pair of sub-blocks (q4_k, q6_k) ------------------------------------
 *
 * mmvq_rows gives a lane one 32-element sub-block, and so loads bytes it drops: q4_k keeps two
 * sub-blocks in the low and high nibbles of the same 32 bytes (two lanes load them, each keeps
 * half), q6_k four in the nibbles and 2-bit fields of shared bytes; and the scale bytes, d and
 * dmin come in separate small loads a sub-block. Here lane l takes a pair of sub-blocks that share
 * their bytes (q6_k: the halves of four sub-blocks sharing theirs, q6k_block_sectors), in blocks
 * l / 4, l / 4 + 8, ... (all of a pass's loads before any use): every byte it loads is used, a
 * q4_k block's header (d, dmin, 12 scale bytes) is one 16-byte load its four lanes share, and the integer sums are scaled by their integer scales with d (and dmin) applied
 * once a block (as mmq_block_q4k_q5k). H200, against TM_GEMV_PAIRS=0: 7B decode x1 436.5 / 433.9 ->
 * 453.3 / 453.2 tokens/s (q4_k rows alone 444; two blocks a lane a pass measured 424), 70B x1 61.1
 * with its large products here instead of the streamed kernel's 60.9. More bytes in flight
 * without more instructions did not pay (per-warp cp.async rings, several warps a row: see
 * docs/perf-notes.md, session 8). `early`: as mmvq_rows.
 *
 * The activations come in pair order (quant.cuh), so a warp's four 16-byte activation loads of a
 * pass are each 512 contiguous bytes. Read from the plain order (lane l at byte 64l: sixteen
 * 128-byte lines a load), the activations were most of L1's work: ncu on the 7B's gate/up product,
 * L1/TEX 91 % busy (LSU data wavefronts 80 %) at DRAM 43 %, 65 % of the L1 traffic hits on the
 * activations; with the pair order, H200 decode x1 7B 452.4 / 448.2 -> 481.5 / 480.1 tokens/s,
 * 70B 62.34 -> 68.34 (one call, with the launch bounds below). */

/* The pass's activations: x is this lane's slot in the first of the four rows of its group of
 * eight blocks in pair order (quant.cuh), the rows `stride` bytes apart. */
__device__ __forceinline__ int4 pair_chunk(const int8_t *x, int stride, int row) {
    return *reinterpret_cast<const int4 *>(x + row * stride);
}

/* q4_k: pair p = l % 4 is sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles) of bytes
 * 16 + 32p .. 16 + 32p + 31; its activations are rows 0, 1 (sub-block 2p + (p & 1)) and 2, 3
 * (the other) at x, its two (d, d * sum) pairs one 8-byte load. q5_k (FIFTH): the nibbles are
 * bytes 48 + 32p .., and element k of sub-block s takes bit s of qh byte k (bytes 16..47, the same
 * 32 for every pair: qh_low, qh_high) as its fifth bit; scales, mins and activations as q4_k. */
template <bool FIFTH = false>
__device__ __forceinline__ float q4k_block_pair(uint4 header, uint4 low, uint4 high, const int8_t *x, int stride, const half2 *xds,
                                                int64_t block, int pair, uint4 qh_low = {}, uint4 qh_high = {}) {
    const int4 x0 = pair_chunk(x, stride, 0), x1 = pair_chunk(x, stride, 1), x2 = pair_chunk(x, stride, 2), x3 = pair_chunk(x, stride, 3);
    const uint2 xs = *reinterpret_cast<const uint2 *>(xds + block * 8 + 2 * pair);
    const uint32_t q[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
    const uint32_t qh[8] = {qh_low.x, qh_low.y, qh_low.z, qh_low.w, qh_high.x, qh_high.y, qh_high.z, qh_high.w};
    const int x01[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    const int x23[8] = {x2.x, x2.y, x2.z, x2.w, x3.x, x3.y, x3.z, x3.w};
    const int odd = pair & 1, shift01 = 4 * odd; /* rows 0, 1: the high nibbles for odd pairs */
    const int fifth01 = 2 * pair + odd, fifth23 = 2 * pair + 1 - odd; /* q5_k: the sub-blocks' qh bits */
    int dot01 = 0, dot23 = 0;
    /* all four rows from the first step, so their loads go out together (at 48 registers: 7B x1
     * 464 -> 477 tokens/s; integer sums, so the order is free) */
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = i; j < 8; j += 4) {
            uint32_t w01 = (q[j] >> shift01) & 0x0F0F0F0Fu, w23 = (q[j] >> (4 - shift01)) & 0x0F0F0F0Fu;
            if constexpr (FIFTH) {
                w01 |= ((qh[j] >> fifth01) & 0x01010101u) << 4;
                w23 |= ((qh[j] >> fifth23) & 0x01010101u) << 4;
            }
            dot01 = __dp4a((int)w01, x01[j], dot01);
            dot23 = __dp4a((int)w23, x23[j], dot23);
        }
    const int dot_a = odd ? dot23 : dot01, dot_b = odd ? dot01 : dot23; /* sub-blocks 2p, 2p + 1 */
    uint32_t scales[2], mins[2];
    k_scales_min_packed(header.y, header.z, header.w, scales, mins);
    const uint32_t scale_word = pair < 2 ? scales[0] : scales[1], min_word = pair < 2 ? mins[0] : mins[1];
    const unsigned at = (unsigned)(2 * pair) % 4u; /* bytes at, at + 1: sub-blocks 2p, 2p + 1 */
    const int scale_a = (int)__byte_perm(scale_word, 0, 0x4440u | at), scale_b = (int)__byte_perm(scale_word, 0, 0x4440u | (at + 1));
    const float min_a = (float)__byte_perm(min_word, 0, 0x4440u | at), min_b = (float)__byte_perm(min_word, 0, 0x4440u | (at + 1));
    const float2 xa_ds = __half22float2(*reinterpret_cast<const half2 *>(&xs.x));
    const float2 xb_ds = __half22float2(*reinterpret_cast<const half2 *>(&xs.y));
    const float2 dm = __half22float2(*reinterpret_cast<const half2 *>(&header.x));
    /* |dot scale| <= 32 * 31 * 127 * 63 < 2^24 (q4_k: 15 for 31): exact as a float */
    const float scaled = xa_ds.x * (float)(dot_a * scale_a) + xb_ds.x * (float)(dot_b * scale_b);
    const float offset = xa_ds.y * min_a + xb_ds.y * min_b;
    return dm.x * scaled - dm.y * offset;
}

/* q6_k, in whole sectors: lane quarter k = l % 4 is half h = k / 2 of the block and elements
 * j = 16 (k % 2) .. + 15 of each of its four 32-element quads, so its three 16-byte loads are ql
 * bytes 64h + j .., 64h + 32 + j .. and qh bytes 128 + 32h + j ..: the block's four lanes read 64
 * contiguous bytes in each instruction, whole 32-byte sectors. Quad q of the half is sub-block
 * 4h + q of the activations, chunk k % 2 (pair order: rows k % 2 and 2 + k % 2 at slots 4b + 2h and
 * 4b + 2h + 1, xr the first), and its 16 elements take scale byte k % 2 + 2q of the half's eight.
 * Until session 37 a q6_k lane took whole groups (32 ql bytes, the half's 32 qh bytes, which two
 * lanes loaded) in four loads, each instruction reading the halves of sectors, so every sector
 * crossed from L2 twice, and pairs_kernel<8, 1> spilled 56 bytes (none now). H200, one binary
 * (the old form / this), two rounds: held running (kernels-power.yaml) 8192 x 28672 0.213 / 0.214
 * -> 0.195 / 0.193 J/GB, 3321 / 3343 -> 3681 / 3710 GB/s; chained (kernels-decode-chain.yaml) 28672
 * x 8192 54.71 -> 51.35 us (87.7 -> 93.4 % of the copy rate), 8192 x 8192 19.13 -> 17.70, 14336 x
 * 4096 17.40 -> 15.81, 4096 x 4096 6.45 -> 6.12; decode x1 70B 78.22, 77.85 -> 79.37, 79.35
 * tokens/s (9.0 -> 8.7 J a token), 7B 552.6, 545.3 -> 562.6, 566.5. */
__device__ __forceinline__ float q6k_block_sectors(uint4 low, uint4 high, uint4 bits, uint2 scale_bytes, float d, const int8_t *xr,
                                                   int stride, float x_d, int quarter) {
    const int c = quarter % 2;
    /* pair order: quad 0 row c slot s, quad 1 row 2 + c slot s, quad 2 row 2 + c slot s + 1, quad 3 row c slot s + 1 */
    const int4 x0 = pair_chunk(xr, stride, 0), x1 = pair_chunk(xr, stride, 2), x2 = pair_chunk(xr + 16, stride, 2),
               x3 = pair_chunk(xr + 16, stride, 0);
    const uint32_t ql_a[4] = {low.x, low.y, low.z, low.w}, ql_b[4] = {high.x, high.y, high.z, high.w};
    const uint32_t qh[4] = {bits.x, bits.y, bits.z, bits.w};
    const int xq[4][4] = {{x0.x, x0.y, x0.z, x0.w}, {x1.x, x1.y, x1.z, x1.w}, {x2.x, x2.y, x2.z, x2.w}, {x3.x, x3.y, x3.z, x3.w}};
    int dot[4] = {0, 0, 0, 0};
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const uint32_t q0 = (ql_a[w] & 0x0F0F0F0Fu) | ((qh[w] & 0x03030303u) << 4);
        const uint32_t q1 = (ql_b[w] & 0x0F0F0F0Fu) | (((qh[w] >> 2) & 0x03030303u) << 4);
        const uint32_t q2 = ((ql_a[w] >> 4) & 0x0F0F0F0Fu) | (((qh[w] >> 4) & 0x03030303u) << 4);
        const uint32_t q3 = ((ql_b[w] >> 4) & 0x0F0F0F0Fu) | (((qh[w] >> 6) & 0x03030303u) << 4);
        dot[0] = __dp4a(q6k_minus_32(q0), xq[0][w], dot[0]);
        dot[1] = __dp4a(q6k_minus_32(q1), xq[1][w], dot[1]);
        dot[2] = __dp4a(q6k_minus_32(q2), xq[2][w], dot[2]);
        dot[3] = __dp4a(q6k_minus_32(q3), xq[3][w], dot[3]);
    }
    /* signed scale bytes c, c + 2 of .x (quads 0, 1) and of .y (quads 2, 3) */
    const int s0 = (int)(scale_bytes.x << (24 - 8 * c)) >> 24, s1 = (int)(scale_bytes.x << (8 - 8 * c)) >> 24;
    const int s2 = (int)(scale_bytes.y << (24 - 8 * c)) >> 24, s3 = (int)(scale_bytes.y << (8 - 8 * c)) >> 24;
    /* |dot scale| <= 16 * 32 * 127 * 128 < 2^23 a quad: two quads a float sum exact below 2^24 */
    return d * x_d * ((float)(dot[0] * s0 + dot[1] * s1) + (float)(dot[2] * s2 + dot[3] * s3));
}

/* The one-token dot of one q4_k, q5_k or q6_k row (`blocks` 256-column blocks) by one warp, lane l's
 * share; xp: the activations in pair order. after_wait(): called right after the wait for the
 * previous kernel (before the first activation is read). With SPLIT > 1 the row's groups of eight
 * blocks are dealt to SPLIT warps: this one (`segment`) takes groups segment, segment + SPLIT, ...
 * and returns its share of the row's sum. */
template <int TYPE, int LINES, int SPLIT, typename AfterWait>
__device__ __forceinline__ float row_pairs(const uint8_t *row, int64_t blocks, const int8_t *xp, const half2 *xds, bool early,
                                           AfterWait after_wait, int segment = 0) {
    const int lane = threadIdx.x % 32, quarter = lane % 4;
    uint4 v[TYPE == Q5_K ? 5 : TYPE == Q6_K ? 3 : 4];
    uint2 scale_bytes = {};
    float d = 0;
    /* a q4_k or q5_k lane's 32 weight bytes come in two 16-byte loads, each half of a 32-byte
     * sector: through L1 (pairs_weight_lines) the second half is found there instead of crossing
     * from L2 again (q6_k's lanes read whole sectors: q6k_block_sectors) */
    constexpr bool through_l1 = (LINES & (TYPE == Q6_K ? 2 : 1)) != 0;
    auto weights16 = [](const uint8_t *p) { return through_l1 ? ldg_line16(p) : ldg_stream16(p); };
    auto load = [&](int64_t block) {
        if (block >= blocks) return;
        const uint8_t *b = row + block * traits<TYPE>::stride;
        if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
            constexpr int nibbles = TYPE == Q5_K ? 48 : 16; /* q5_k's qh comes first */
            v[0] = weights16(b);
            v[1] = weights16(b + nibbles + 32 * quarter);
            v[2] = weights16(b + nibbles + 16 + 32 * quarter);
            if constexpr (TYPE == Q5_K) {
                v[3] = weights16(b + 16); /* qh: the same 32 bytes for the block's four lanes */
                v[4] = weights16(b + 32);
            }
        } else {
            const int half = quarter / 2, j = 16 * (quarter % 2);
            v[0] = weights16(b + 64 * half + j);
            v[1] = weights16(b + 64 * half + 32 + j);
            v[2] = weights16(b + 128 + 32 * half + j);
            scale_bytes = *reinterpret_cast<const uint2 *>(b + 192 + 8 * half);
            d = half_at(b + 208);
        }
    };
    const int64_t start = 8 * segment + lane / 4; /* SPLIT 1: segment 0 */
    if (early) load(start);
    tm_grid_dependency();
    after_wait();
    if (!early) load(start);
    float acc = 0;
    for (int64_t block = start; block < blocks; block += 8 * SPLIT) {
        const int64_t first = block - lane / 4; /* the pass's group of (up to) eight blocks */
        const int8_t *x = xp + first * 256 + 16 * lane;
        /* rows 512 bytes apart in a whole group: constant offsets, so the four loads go out
         * together (a computed stride cost them their registers: 444 against 454 tokens/s) */
        const int stride = first + 8 <= blocks ? 512 : (int)(blocks - first) * 64;
        if constexpr (TYPE == Q4_K || TYPE == Q5_K) {
            uint4 qh_low = {}, qh_high = {};
            if constexpr (TYPE == Q5_K) qh_low = v[3], qh_high = v[4];
            if (stride == 512) acc += q4k_block_pair<TYPE == Q5_K>(v[0], v[1], v[2], x, 512, xds, block, quarter, qh_low, qh_high);
            else acc += q4k_block_pair<TYPE == Q5_K>(v[0], v[1], v[2], x, stride, xds, block, quarter, qh_low, qh_high);
        } else {
            const int8_t *xr = x + (quarter % 2 ? stride - 16 : 0); /* row quarter % 2 at slot 4b + 2h */
            const float x_d = __low2float(xds[block * 8]); /* one scale a 256-value block */
            acc += q6k_block_sectors(v[0], v[1], v[2], scale_bytes, d, xr, stride, x_d, quarter);
        }
        load(block + 8 * SPLIT);
    }
    return sum_over_warp(acc);
}

/* Whether one-token products take pairs_kernel (1, the default) or the dp4a kernels' lane a
 * sub-block (0): TM_GEMV_PAIRS, a measuring aid. */
static int gemv_pairs(void) {
    static const int pairs = tm_env_int("TM_GEMV_PAIRS", 1);
    return pairs != 0;
}

/* One-token products, a warp a row (concatenated over the parts): q4_k, q5_k and q6_k rows by
 * row_pairs, so a product gives the same bits alone or with others in one launch. q5_k rows
 * took mmvq_sums' lane a sub-block until session 29: in pairs (H200, kernels-decode-chain, one
 * token, 16 launches chained) 8192 x 8192 23.6 -> 15.4 us, 28672 x 8192 54.0 -> 44.6 us (70 -> 85 %
 * of the copy rate); the 70B's step, whose q5_k rows are a few V products, unchanged (75.1 / 75.3
 * against 75.2 / 74.8 tokens/s). With ROPE (the Q, K and V
 * products of a decode step) the sums go through rope_append_write instead. TYPES: the types the
 * launch holds, 0 q4_k alone, 1 with q6_k, 2 with q5_k too; MIN_BLOCKS: launch bounds, q4_k alone 9 (54
 * registers), with the other types 8 (64). H200, 7B / 70B decode x1 tokens/s in one call: 9 / 7
 * 481.5 / 68.34, 10 / 8 (48 / 64 registers) 477.3 / 66.31, 10 / 7 471.0 / 66.78 (before the pair
 * order, 10 / 8 was the best: a 40-register q4_k cap measured 443 against 454). Session 11, with
 * the weights' 128-byte L2 fetches (ldg_stream16), one call: 9 / 7 489.7 / 489.4, 9 / 8 496.6 /
 * 496.0 (70B 66.69 against 65.86 without either change); next call 9 / 8 493.0 / 489.7, 10 / 8
 * 472.2 / 478.3, 8 / 8 486.9 / 488.4. At 7 blocks an SM a 4096-row mixed launch (the 7B's down
 * product in its q6_k layers, 1024 blocks) needed two waves, the second a tenth full. Session 37,
 * with q6_k's whole-sector lanes (56 registers without the rope, 40 bytes spilled with it), q6_k
 * launches at 9 blocks an SM measured slower, one binary, two rounds: chained q6_k 28672 x 8192
 * 51.36 -> 53.88 us, 8192 x 8192 17.66 -> 19.60; decode x1 70B 79.94 / 79.75 -> 78.46 / 78.45 (with
 * the rope launch too 77.69 / 78.21), 7B 571.5 / 570.9 -> 563.9 / 561.4 tokens/s. */
template <int MIN_BLOCKS, int TYPES, bool ROPE, int LINES, int SPLIT = 1>
__global__ void __launch_bounds__(128, MIN_BLOCKS) pairs_kernel(mmvq_parts parts, int64_t cols, const half2 *xds, const int8_t *xp,
                                                              bool early, rope_append rope, unsigned first_block) {
    static_assert(!ROPE || TYPES < 2, "launch_pairs_kernel declines the rope with a q5_k part (measured no faster)");
    static_assert(SPLIT == 1 || !ROPE, "rows split over warps take no rope epilogue (launch_pairs_kernel)");
    const tm_stamper stamper = tm_stamp_begin();
    /* with a q5_k part, blocks first_block.. of the concatenated rows first, then wrapping round to
     * 0: the launcher puts the q5_k part's blocks (five loads a lane and block against q4_k's
     * three) at the grid's start */
    unsigned block = blockIdx.x;
    if constexpr (TYPES == 2) block = block + first_block < gridDim.x ? block + first_block : block + first_block - gridDim.x;
    int64_t row = (int64_t)block * (4 / SPLIT) + threadIdx.x / 32 / SPLIT;
    mmvq_part part;
    /* with ROPE every part's rows are a multiple of 4, with SPLIT of 4 / SPLIT: no warp leaves here */
    if (!find_part(parts, &row, &part)) return;
    const int64_t blocks = cols / 256;
    const int warp = threadIdx.x / 32, segment = warp % SPLIT; /* SPLIT warps a row, segment: this one's share */
    /* with ROPE the block's 4 rows are two rope pairs of one part; threads 0 and 1 copy where theirs
     * goes (its angle, its cache row) from the step's targets into shared memory as soon as the wait
     * allows, so the end of the block waits on no load */
    struct pair_target {
        float2 angle;
        uint8_t *chunk;
    };
    __shared__ pair_target targets[2];
    __shared__ float sums[4];
    const int pair_row = (int)(row - warp) + 2 * threadIdx.x, head = pair_row / rope.head_dim, d = pair_row % rope.head_dim;
    auto after_wait = [&] {
        tm_stamp(TM_STAMP_WAITED);
        if constexpr (ROPE) {
            if (threadIdx.x < 2) {
                if (part.index < 2 && d < rope.n_rot) copy_async_8(&targets[threadIdx.x].angle, rope_target_angle(rope, 0, d / 2));
                if (part.index > 0) copy_async_8(&targets[threadIdx.x].chunk, rope_target_chunk(rope, 1, part.index, head, 0));
                copy_async_commit();
            }
        }
    };
    float sum;
    if (TYPES == 0 || part.type == Q4_K) {
        sum = row_pairs<Q4_K, LINES, SPLIT>(part.weights + row * blocks * traits<Q4_K>::stride, blocks, xp, xds, early, after_wait, segment);
    } else if (TYPES == 1 || part.type == Q6_K) {
        sum = row_pairs<Q6_K, LINES, SPLIT>(part.weights + row * blocks * traits<Q6_K>::stride, blocks, xp, xds, early, after_wait, segment);
    } else {
        sum = row_pairs<Q5_K, LINES, SPLIT>(part.weights + row * blocks * traits<Q5_K>::stride, blocks, xp, xds, early, after_wait, segment);
    }
    tm_stamp_after(TM_STAMP_A, __float_as_uint(sum)); /* warp 0's row summed */
    if constexpr (SPLIT > 1 || ROPE) { /* the block's warps' sums, for whoever finishes the rows */
        if (threadIdx.x % 32 == 0) sums[warp] = sum;
        __syncthreads();
    }
    if constexpr (SPLIT > 1) {
        /* the row's SPLIT shares added by its first warp in segment order: the same bits every run */
        if (threadIdx.x % 32 == 0 && segment == 0) {
#pragma unroll
            for (int other = 1; other < SPLIT; other++) sum += sums[warp + other];
            part.y[row] = sum;
        }
    } else if constexpr (ROPE) {
        const int pair = threadIdx.x;
        if (pair < 2) {
            copy_async_wait<0>();
            uint8_t *to = part.index ? targets[pair].chunk + rope_target_offset(rope, part.index, head)
                                     : rope_append_head(rope, 0, head, 0, 0, 0, part.y);
            const float2 angle = part.index < 2 && d < rope.n_rot ? targets[pair].angle : make_float2(1.0f, 0.0f);
            rope_append_write(rope, part.index, to, d, angle, sums[2 * pair], sums[2 * pair + 1]);
        }
    } else if (threadIdx.x % 32 == 0) {
        part.y[row] = sum;
    }
    tm_stamp_end(stamper, ROPE ? TM_STAMP_PAIRS_ROPE : TM_STAMP_PAIRS, parts.weights[0]);
}

template <int TYPE, int NT, int R>
__global__ void __launch_bounds__(128) mmvq_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const int8_t *xq,
                                                   const half2 *xds, int n_tokens, float *y, bool early) {
    const int64_t row0 = ((int64_t)blockIdx.x * 4 + threadIdx.x / 32) * R;
    if (row0 < rows) mmvq_rows<TYPE, NT, R, mmvq_unroll<TYPE, NT, R, false>()>(weights, rows, cols, row0, xq, xds, n_tokens, y, early);
}

template <int NT, int R>
__global__ void __launch_bounds__(128) mmvq_parts_kernel(mmvq_parts parts, int64_t cols, const int8_t *xq, const half2 *xds,
                                                         int n_tokens, bool early) {
    int64_t row0 = ((int64_t)blockIdx.x * 4 + threadIdx.x / 32) * R;
    mmvq_part part;
    if (!find_part(parts, &row0, &part)) return;
    if (part.type == Q4_K) mmvq_rows<Q4_K, NT, R, mmvq_unroll<Q4_K, NT, R, true>()>(part.weights, part.rows, cols, row0, xq, xds, n_tokens, part.y, early);
    else if (part.type == Q5_K) mmvq_rows<Q5_K, NT, R, mmvq_unroll<Q5_K, NT, R, true>()>(part.weights, part.rows, cols, row0, xq, xds, n_tokens, part.y, early);
    else mmvq_rows<Q6_K, NT, R, mmvq_unroll<Q6_K, NT, R, true>()>(part.weights, part.rows, cols, row0, xq, xds, n_tokens, part.y, early);
}

/* Whether the quantized decode products request their first weights before waiting for the
 * previous kernel: the one-token kernels their first pass (mmvq_rows), the tensor-core kernel its
 * first stages (mmq_kernel). TM_GEMV_EARLY_WEIGHTS=0, a measuring aid, waits first. H200, against
 * it: 7B decode x1 387.3 / 373.4 and 403.6 / 397.8 (two builds), x8 2168 / 2043, 70B x1 55.64 / 55.33. */
static bool gemv_early_weights(void) {
    static const bool early = tm_env_int("TM_GEMV_EARLY_WEIGHTS", 1) != 0;
    return early;
}

/* The parts' rows together, or -1 when a part's rows are not a multiple of `tile`. */
static int64_t rows_in_tiles(const mmvq_parts &parts, int tile) {
    int64_t total = 0;
    for (int p = 0; p < parts.n; p++) {
        if (parts.rows[p] % tile) return -1;
        total += parts.rows[p];
    }
    return total;
}

/* Which one-token weights pairs_kernel reads through L1 (ldg_line16) instead of around it
 * (ldg_stream16): bit 0 q4_k and q5_k, bit 1 q6_k; TM_PAIRS_WEIGHT_LINES=0, 1 (the default) or 3, a
 * measuring aid. A lane's 32 bytes of a block are two 16-byte loads, each half of every 32-byte
 * sector, so around L1 each sector crossed from L2 twice. H200, session 36, one binary a call, two
 * rounds: q4_k rows through L1, the 70B's 8192 x 28672 held running (kernels-power.yaml) 0.196 /
 * 0.202 -> 0.184 / 0.181 J/GB, 3526 / 3585 -> 3923 / 3911 GB/s, its power-capped SM clock 1721 /
 * 1739 -> 1916 / 1870 MHz; decode x1 (0 / 1 / 3): 70B 73.56, 73.74 / 78.06, 77.53 / 76.77, 77.31
 * tokens/s (9.7 -> 9.0 J a token), 7B 544.8, 544.7 / 557.8, 556.8 / 555.6, 559.1. q6_k rows through
 * L1 lost (8192 x 28672 held: 0.211 -> 0.230 J/GB, 3180 -> 2952 GB/s at full clock, in session
 * 36's lane mapping; with session 37's whole-sector lanes, q6k_block_sectors, still 0.191 / 0.192
 * -> 0.207 / 0.200 J/GB, 3743 / 3677 -> 3396 / 3464 GB/s: the L1 lines only displace the
 * activations). Sessions 11-20 had taken the weights around L1 (70B x1
 * 55.7 -> 56.4 then, a lane a sub-block). */
static int pairs_weight_lines(void) {
    static const int lines = tm_env_int("TM_PAIRS_WEIGHT_LINES", 1);
    return lines == 0 || lines == 3 ? lines : 1;
}

template <int LINES>
static cudaError_t launch_pairs_lines(dim3 grid, const mmvq_parts &parts, int64_t cols, const half2 *ds, const int8_t *paired, bool early,
                                      const rope_append *rope, int types, unsigned first_block, cudaStream_t s) {
    const rope_append none = {};
    if (rope && types == 1) TM_LAUNCH_DEPENDENT((pairs_kernel<8, 1, true, LINES>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, *rope, first_block);
    else if (rope) TM_LAUNCH_DEPENDENT((pairs_kernel<9, 0, true, LINES>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, *rope, first_block);
    else if (types == 2) TM_LAUNCH_DEPENDENT((pairs_kernel<8, 2, false, LINES>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    else if (types == 1) TM_LAUNCH_DEPENDENT((pairs_kernel<8, 1, false, LINES>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    else TM_LAUNCH_DEPENDENT((pairs_kernel<9, 0, false, LINES>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    return cudaSuccess;
}

/* pairs_kernel with each row split over SPLIT warps (pairs_split), weights lines as the default (1). */
template <int SPLIT>
static cudaError_t launch_pairs_split(dim3 grid, const mmvq_parts &parts, int64_t cols, const half2 *ds, const int8_t *paired, bool early,
                                      int types, unsigned first_block, cudaStream_t s) {
    const rope_append none = {};
    if (types == 2) TM_LAUNCH_DEPENDENT((pairs_kernel<8, 2, false, 1, SPLIT>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    else if (types == 1) TM_LAUNCH_DEPENDENT((pairs_kernel<8, 1, false, 1, SPLIT>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    else TM_LAUNCH_DEPENDENT((pairs_kernel<9, 0, false, 1, SPLIT>), grid, dim3(128), 0, s, parts, cols, ds, paired, early, none, first_block);
    return cudaSuccess;
}

/* Warps a row of one-token launches whose rows are long (pairs_kernel's SPLIT): 4 for rows of at
 * least 64 256-column blocks (the 70B's down product, 112), else 1; TM_PAIRS_SPLIT=1, 2 or 4 and
 * TM_PAIRS_SPLIT_BLOCKS=B (rows of at least B blocks), measuring aids. A warp's row is a chain of
 * trips to memory, one a group of eight blocks (fourteen for the 70B's down product); split, the
 * chains are shorter and the launch has four times the blocks, in more waves. Rope launches never
 * split, so a separate Q/K/V launch of rows that long would differ in its last bits from the rope
 * launch (no model's Q/K/V rows are: 32 blocks at most). H200, session 48, one binary, three rounds,
 * TM_PAIRS_SPLIT 1 / 4 from 40 blocks / 4 from 24 / 2 from 24, decode x1 tokens/s: 70B 83.88, 83.75,
 * 84.17 / 84.24, 84.29, 84.38 / 77.46, 77.75, 77.62 / 82.69, 82.73, 82.69; 7B (its down product's 43
 * blocks split from 40 and 24, the only long rows) 608.3, 606.8, 613.0 / 601.3, 601.6, 600.7 / 602.7,
 * 601.5, 600.1 / 608.0, 608.8, 612.5: the shorter chains pay only on the 70B's fourteen-trip rows,
 * and the 70B's 32-block products (gate/up, output) lose 7.5 % split. Another call, 1 / 4 from 64 /
 * 2 from 64: 70B 79.90, 80.28 / 80.49, 80.93 / 80.88, 80.54. */
static int pairs_split(int64_t blocks) {
    static const int split = tm_env_int("TM_PAIRS_SPLIT", 4);
    static const int min_blocks = tm_env_int("TM_PAIRS_SPLIT_BLOCKS", 64);
    return blocks >= min_blocks && (split == 2 || split == 4) ? split : 1;
}

/* One token of `parts` (q4_k, q5_k or q6_k: the callers check) through pairs_kernel:
 * cudaErrorNotSupported when gemv_pairs() is off (then mmvq_kernel's lane a sub-block). With
 * `rope` (parts Q, K, V) the outputs go through rope_append_write instead: not supported with a q5_k part or a part's rows not a multiple of 4
 * (the rope epilogue on the 70B's q5_k layers, built and measured, was no faster than the separate
 * rope kernel: H200 decode x1 70.85 / 70.76 / 70.75 -> 70.67 / 70.63 / 70.72 tokens/s in one call;
 * with the q5_k blocks first, below, 73.22 / 73.10 / 73.12 separate against 72.87 / 72.73 / 73.24
 * fused). A q5_k part's blocks are launched first (first_block). */
static cudaError_t launch_pairs_kernel(const mmvq_parts &parts, int64_t cols, const void *q8, cudaStream_t s,
                                       const rope_append *rope = nullptr) {
    /* a q5_k part's rows are scheduled first, so they run under the other rows instead of making
     * the launch's tail: the 70B's q5_k V products (its Q/K/V launches of 2560 blocks, the V's 256
     * last) decode x1 72.67 / 72.47 / 72.55 -> 73.22 / 73.10 / 73.12 tokens/s (H200, three pairs in
     * one call), measured when they took mmvq_sums (twice a q4_k row's passes) */
    int64_t rows = 0;
    int types = 0;
    int64_t first_row = 0; /* where the first q5_k part's rows start */
    for (int p = 0; p < parts.n; p++) {
        if (parts.type[p] == Q5_K && types < 2) first_row = rows;
        rows += parts.rows[p], types = max(types, parts.type[p] == Q5_K ? 2 : parts.type[p] == Q6_K ? 1 : 0);
    }
    if (!gemv_pairs() || rows <= 0) return cudaErrorNotSupported;
    if (rope && (types == 2 || rows_in_tiles(parts, 4) < 0)) return cudaErrorNotSupported;
    const q8_out x = q8_out_at(q8, 1, cols); /* one token */
    const int8_t *paired = x.paired;
    const half2 *ds = x.ds;
    const bool early = gemv_early_weights();
    const int split = pairs_split(cols / 256), block_rows = 4 / split;
    if (split > 1 && !rope && pairs_weight_lines() == 1 && rows_in_tiles(parts, block_rows) >= 0) {
        const dim3 grid((unsigned)(rows / block_rows));
        const unsigned first_block = (unsigned)(first_row / block_rows);
        return split == 2 ? launch_pairs_split<2>(grid, parts, cols, ds, paired, early, types, first_block, s)
                          : launch_pairs_split<4>(grid, parts, cols, ds, paired, early, types, first_block, s);
    }
    const unsigned first_block = (unsigned)(first_row / 4); /* in 4-row blocks */
    const dim3 grid((unsigned)((rows + 3) / 4));
    switch (pairs_weight_lines()) {
    case 0: return launch_pairs_lines<0>(grid, parts, cols, ds, paired, early, rope, types, first_block, s);
    case 3: return launch_pairs_lines<3>(grid, parts, cols, ds, paired, early, rope, types, first_block, s);
    default: return launch_pairs_lines<1>(grid, parts, cols, ds, paired, early, rope, types, first_block, s);
    }
}

template <int TYPE, int NT, int R>
static cudaError_t launch_mmvq(const void *weights, int64_t rows, int64_t cols, const void *q8, int n, float *y, cudaStream_t s) {
    const q8_out x = q8_out_at(q8, n, cols);
    int64_t warps = (rows + R - 1) / R;
    TM_LAUNCH_DEPENDENT(mmvq_kernel<TYPE, NT, R>, dim3((unsigned)((warps + 3) / 4)), dim3(128), 0, s, (const uint8_t *)weights, rows,
                        cols, x.qs, x.ds, n, y, gemv_early_weights());
    return cudaSuccess;
}

/* One row a warp at one token: two or four (the activations' L1 traffic shared by more rows, a
 * smaller grid) measured slower on the H200: 14336 x 4096 q4_k 17.3 -> 18.1 / 22.5 us, 7B decode
 * 344 -> 319 / 238 tokens/s. */
template <int TYPE>
static cudaError_t mmvq(const void *weights, int64_t rows, int64_t cols, const void *q8, int n, float *y, cudaStream_t s) {
    if (n <= 1) return launch_mmvq<TYPE, 1, 1>(weights, rows, cols, q8, n, y, s);
    if (n <= 2) return launch_mmvq<TYPE, 2, 2>(weights, rows, cols, q8, n, y, s);
    if (n <= 4) return launch_mmvq<TYPE, 4, 2>(weights, rows, cols, q8, n, y, s);
    if (n <= 8) return launch_mmvq<TYPE, 8, 4>(weights, rows, cols, q8, n, y, s);
    return launch_mmvq<TYPE, 16, 4>(weights, rows, cols, q8, n, y, s);
}

/* The tensor-core products (below): used from mmq_min_tokens() tokens on. */
static int mmq_min_tokens(void);
static cudaError_t launch_mmq(const mmvq_parts &parts, int64_t cols, const void *q8, int n, cudaStream_t s,
                              const rope_append *rope = nullptr);

/* `parts` at n tokens through the first kernel that takes them: the tensor-core products from
 * mmq_min_tokens() tokens, at one token the streamed kernel (when turned on) or pairs_kernel;
 * cudaErrorNotSupported when none does (the callers then launch the dp4a kernels of a lane a
 * sub-block). */
static cudaError_t launch_fast_products(const mmvq_parts &parts, int64_t cols, const void *q8, int n, cudaStream_t s) {
    cudaError_t status = cudaErrorNotSupported;
    if (n >= mmq_min_tokens()) status = launch_mmq(parts, cols, q8, n, s);
    if (status == cudaErrorNotSupported && n == 1) status = mmvq_stream(parts, cols, q8, s);
    if (status == cudaErrorNotSupported && n == 1) status = launch_pairs_kernel(parts, cols, q8, s);
    return status;
}

extern "C" int tm_cuda_gemv_q8_supported(int type) { return type == Q4_K || type == Q5_K || type == Q6_K || type == Q8_0; }

extern "C" int tm_cuda_gemv_q8(int type, const void *weights, int64_t rows, int64_t cols, const void *q8, int n_tokens, float *y,
                               void *stream) {
    if (cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || ((uintptr_t)weights % 16) || !tm_cuda_gemv_q8_supported(type))
        return cudaErrorInvalidValue;
    if (type == Q8_0) { /* gemv_q8_0.cu */
        const tm_cuda_gemv_part part = {weights, type, rows, y};
        return tm_cuda_gemv_q8_0_parts(&part, 1, cols, q8, n_tokens, stream);
    }
    cudaStream_t s = (cudaStream_t)stream;
    mmvq_parts one = {}; /* for the kernels that take parts */
    one.n = 1, one.weights[0] = (const uint8_t *)weights, one.y[0] = y, one.rows[0] = rows, one.type[0] = type;
    const cudaError_t status = launch_fast_products(one, cols, q8, n_tokens, s);
    if (status != cudaErrorNotSupported) return status;
    if (type == Q4_K) return mmvq<Q4_K>(weights, rows, cols, q8, n_tokens, y, s);
    if (type == Q5_K) return mmvq<Q5_K>(weights, rows, cols, q8, n_tokens, y, s);
    return mmvq<Q6_K>(weights, rows, cols, q8, n_tokens, y, s);
}

/* ---- 2..16 tokens on the tensor cores: int8 mma (llama.cpp's MMQ idea) --------------------------
 *
 * At 8 tokens the dp4a kernel above is bound by instructions, not bytes: every 32-element
 * sub-block costs each token 8 dp4a plus its float scaling. Here a warp multiplies a 16-row tile
 * of weights by 8 tokens with one mma.sync per sub-block (m16n8k32 s8: q4_k's 32 elements share
 * one scale; q6_k takes two m16n8k16, one per 16-element scale) and applies the float scales to
 * the 4 int32 results a thread holds. The mma's k order is free (a dot product does not care), so
 * thread t of a quad feeds bytes 8t..8t+7 of a q4_k sub-block pair as its k = 4t..4t+3 and
 * 16+4t..16+4t+3, from one 8-byte load, and the activations are read with the same permutation.
 * A block's 4 or 8 warps (launch_mmq_layout) split a tile's 256-column blocks and add their sums in shared
 * memory (a 4096-wide row is 16 blocks: two or four per warp, every warp's loads in flight at
 * once). Exact integer sums per sub-block, times the sub-block's integer scale (still exact), then
 * float32 scaling by the activations' d per sub-block and the block's d and dmin once per block. */

#define MMQ_ROWS 16
/* A warp's blocks come through shared-memory stages filled by cp.async: while it multiplies one
 * block, the next is in flight without holding registers (direct loads keep a block's bytes in
 * registers, and at 100 registers a thread only 16 warps fit on an SM: ncu on the H200 saw DRAM 23 %
 * busy, 1.1 TB/s, for 14336 x 4096 q4_k at 8 tokens). Two layouts (mmq_stage_sizes):
 * - weights only (the default): three stages of a block's 16 q4_k/q5_k rows; q6_k rows are read
 *   straight from global memory, and the activations too, after the stage's wait. Measured when
 *   first staged (H200, against TM_MMQ_STAGING=0): 14336 x 4096 q4_k at 8 tokens 27.0 -> 25.0 us,
 *   7B decode x8 1856 -> 1903 tokens/s. Three blocks an SM (launch bounds, 80 registers) measured
 *   far worse (1524): 3 x 67.5 KiB of stages leave L1 little room for the activations every tile
 *   re-reads.
 * - INPUTS, up to 8 tokens in wide products (mmq_inputs_mode: the 70B's) on GPUs with the shared
 *   memory (sm_90): two stages, each a block's 16 rows of any type (sized for the launch's widest
 *   staged row) and the tokens' activations for it (256 values and 8 (d, d * sum) pairs a token),
 *   so after a stage's wait a warp reads only shared memory (the activations' global loads had warps
 *   waiting on the L1TEX scoreboard, 34-41 % of warp cycles in ncu). Both stages' weights are
 *   requested before the wait for the previous kernel (a first version requesting one, which also
 *   had the 7B's down product in 4-warp blocks, measured 7B x8 2182 against 2308).
 * Staged weight rows are 160 (q4_k: 144 + 16), 176 (q5_k) or 240 (q6_k: 224 + 16) bytes apart and
 * activation rows 288 (272 under q6_k) bytes apart, so each type's fragment reads hit distinct
 * banks. The weight copies fetch whole 128-byte lines into L2 on a miss, as ldg_stream16 does
 * (common.cuh); the activation copies go through L1 (.ca), where the other tiles on the SM find
 * them. */
#define MMQ_STAGE_ROW_BYTES_Q4K 160
#define MMQ_STAGE_ROW_BYTES_Q5K 176
#define MMQ_STAGE_ROW_BYTES_Q6K 240
#define MMQ_X_ROW_BYTES 288
#define MMQ_X_ROW_BYTES_Q6K 272

__host__ __device__ constexpr int mmq_stage_row_bytes(int type) {
    return type == Q4_K ? MMQ_STAGE_ROW_BYTES_Q4K : type == Q5_K ? MMQ_STAGE_ROW_BYTES_Q5K : MMQ_STAGE_ROW_BYTES_Q6K;
}

/* A warp's stages and their sizes: three of 16 q4_k/q5_k weight rows (weights only), or two of 16
 * weight rows of any type and the tokens' values and pairs (INPUTS, one token group only). Weight
 * rows are sized for the launch's widest staged row (`widest_row`, mmq_widest_row: 160 bytes when
 * every staged part is q4_k, 176 with q5_k, 240 with q6_k), not for the widest type: a q4_k INPUTS
 * stage is 5 KiB instead of 6.25, so four 4-warp blocks take ~164 KiB of an sm_90 SM's 228 instead
 * of ~204. H200, 8 tokens, one call each, stages of the widest type -> of the widest staged row:
 * kernels-decode-70b 28672 x 8192 q4_k 48.42 / 47.26 -> 41.42 / 41.60 us, 8192 x 28672 q4_k 49.38 /
 * 48.90 -> 44.00 / 44.13, q6_k (stages unchanged) 66.24 / 66.34 -> 65.50 / 65.82; 70B decode x8
 * 459.4 / 458.3 -> 485.0 / 484.9 tokens/s, 512 x4 253.5 -> 258.9, 2048 x8 403.2 -> 420.1; the 7B's
 * weights-only stages (176 -> 160 bytes a q4_k row) 7B x8 2606 / 2594 -> 2622 / 2622, within its
 * noise. Why (ncu, 28672 x 8192): the same four blocks an SM, but the driver's shared-memory
 * carveout drops from 233 to 168 KB, and the L1 it leaves, through which the activations are
 * copied (.ca) and found by the SM's other tiles, hits 41.6 % of sectors instead of 20.4 %: DRAM
 * 57.5 -> 68.2 % of peak. Three stages a warp of the compact size (three blocks an SM, ~1.5x the
 * weight bytes in flight) measured worse: 43.98 us on 28672 x 8192, 53.95 on 8192 x 28672 (its 512
 * tiles no longer one wave), 70B x8 470.1 / 470.2. Session 33: two adjacent tiles a warp sharing
 * one stage's activations (32 weight rows and 8 tokens a stage, 141 registers, three 4-warp blocks
 * an SM: the activations' shared memory and L2 reads halved a weight byte) measured slower too, one
 * binary and call, two rounds: 70B 128 x8 522.9, 520.0 -> 514.2, 511.3 tokens/s, 2048 x8 480.9,
 * 479.1 -> 472.6, 471.9 (in 2-warp blocks, seven an SM: 397.0, 396.7 / 377.1, 377.0); not kept.
 * Session 34, each a switch in one binary and call (branches mmq-wide-5-blocks, mmq-paired-tiles,
 * l2-256; perf-notes has the ncu tables), 70B 128 x8 tokens/s: five 4-warp blocks an SM at 96
 * registers 516.6 -> 457.9 (L1 left to the activations shrinks: xbar bytes +40 %); the weight
 * copies without the L2::128B hint -> 502.7, through L1 (.ca) -> 487.5 (q6_k's products -31 %), by
 * cp.async.bulk a row's block -> 363.8, with 256-byte L2 fetches 533.0 -> 504.0; two tiles a block
 * of 8 warps, the warps at the same blocks sharing one copy of the activations (half each, a named
 * barrier a block) 514.4 -> 505.0. The xbar carries 215 MB for the 28672 x 8192 product's 132 MB of
 * weights in every one of these except the five blocks and the bulk copies, and also when the copies
 * read as if a tile's rows of each block were stored together (branch tile-major-probe, timing only:
 * 288 sector-aligned bytes an instruction; 70B x8 512.8 -> 517.3, one round): neither the
 * activations nor the rows' alignment is the excess, and a tile-major layout would buy ~1 %.
 * Session 37, the q4_k and q5_k copies alone through L1 (cp.async.ca.L2::128B; q6_k's 224-byte
 * blocks share no sector), two binaries and rounds in one call: held running (kernels-power.yaml,
 * 8 tokens) 8192 x 28672 0.219 -> 0.211 J/GB, 3198 / 3221 -> 3319 / 3343 GB/s, 28672 x 8192
 * unchanged (0.212, ~3300); 70B 128 x8 533.7 / 533.7 -> 528.3 / 528.9, 7B 3425 / 3442 -> 3405 /
 * 3409 tokens/s: not kept. */
template <bool INPUTS> constexpr int MMQ_STAGES = INPUTS ? 2 : 3; /* a warp's stages */
struct mmq_stage_size {
    int weight_bytes; /* then, with INPUTS, the values (8 rows of MMQ_X_ROW_BYTES) and the (d, d * sum) pairs: 32 bytes a token */
    int stage_bytes;
    int warp_bytes;
};
template <int NG, bool INPUTS> __host__ __device__ constexpr mmq_stage_size mmq_stage_sizes(int widest_row) {
    static_assert(!INPUTS || NG == 1, "activations are staged for one token group");
    const int weight_bytes = MMQ_ROWS * widest_row;
    const int stage_bytes = weight_bytes + (INPUTS ? NG * 8 * MMQ_X_ROW_BYTES + NG * 8 * 32 : 0);
    return mmq_stage_size{weight_bytes, stage_bytes, MMQ_STAGES<INPUTS> * stage_bytes};
}
template <int NG, bool INPUTS> __host__ __device__ constexpr int mmq_shared_bytes(int warps, int widest_row) {
    return warps * mmq_stage_sizes<NG, INPUTS>(widest_row).warp_bytes;
}

/* The staged row bytes of the widest type among a launch's parts that the layout stages (q6_k rows
 * only with the activations, `inputs`): what mmq_stage_sizes takes as `widest_row`. */
static int mmq_widest_row(const mmvq_parts &parts, bool inputs) {
    int widest = MMQ_STAGE_ROW_BYTES_Q4K;
    for (int i = 0; i < parts.n; i++)
        if (parts.type[i] != Q6_K || inputs) widest = max(widest, mmq_stage_row_bytes(parts.type[i]));
    return widest;
}

/* The activations one thread needs for one 256-column block and token group: its B column's
 * token (the group's g-th), its values and pairs, and the (d, d * sum) pairs of the two tokens of
 * its C columns. */
template <int NG> struct mmq_inputs {
    const int8_t *b_row[NG];     /* token group*8 + g: its q8 values at this block */
    const half2 *b_pairs[NG];    /* ... and its 8 (d, s) pairs (the mins' mma, mmq_block_q4k_q5k) */
    const half2 *c_scales[NG][2]; /* tokens group*8 + 2t, +1: their 8 (d, s) pairs at this block (only the first pair's d is read) */
};

template <int NG>
__device__ __forceinline__ mmq_inputs<NG> mmq_inputs_at(const int8_t *xq, const half2 *xds, int64_t cols, int64_t block, int n_tokens,
                                                        int g, int t) {
    mmq_inputs<NG> in;
    /* offsets in 32 bits: 16 tokens of at most 2^24 columns (launch_mmq) stay below 2^31. In 64
     * (cols is int64_t) each pointer took a wide multiply, ~25 more instructions a block in the
     * two-group kernels, and mmq_kernel's two-group rope instantiations spilled 28 bytes (none now) */
    const int row = (int)cols, pairs = row / 32, at = (int)block;
#pragma unroll
    for (int G = 0; G < NG; G++) {
        const int b_token = min(G * 8 + g, n_tokens - 1); /* columns past the batch read a real token; never stored */
        in.b_row[G] = xq + (b_token * row + at * 256);
        in.b_pairs[G] = xds + (b_token * pairs + at * 8);
#pragma unroll
        for (int k = 0; k < 2; k++) in.c_scales[G][k] = xds + (min(G * 8 + 2 * t + k, n_tokens - 1) * pairs + at * 8);
    }
    return in;
}

/* The same from a stage (mmq_stage_sizes INPUTS): the tokens' values x_stride bytes apart at
 * `values`, their (d, d * sum) pairs 8 a token after them; columns past the batch read the last
 * real token, as mmq_inputs_at. */
template <int NG>
__device__ __forceinline__ mmq_inputs<NG> mmq_inputs_staged(const uint8_t *values, int x_stride, int n_tokens, int g, int t) {
    mmq_inputs<NG> in;
    const half2 *pairs = reinterpret_cast<const half2 *>(values + NG * 8 * x_stride);
#pragma unroll
    for (int G = 0; G < NG; G++) {
        const int b_token = min(G * 8 + g, n_tokens - 1);
        in.b_row[G] = reinterpret_cast<const int8_t *>(values + b_token * x_stride);
        in.b_pairs[G] = pairs + b_token * 8;
#pragma unroll
        for (int k = 0; k < 2; k++) in.c_scales[G][k] = pairs + min(G * 8 + 2 * t + k, n_tokens - 1) * 8;
    }
    return in;
}

/* A thread's activations for one 256-column block, as the block functions feed them to the mma:
 * per token group G, its B column's values (q4_k / q5_k: bytes 8t..8t+7 of each 32-value
 * sub-block; q6_k: bytes 4t..4t+3 in .x and 16+4t..16+4t+3 in .y), that token's (d, d * sum)
 * pairs 2t, 2t + 1 (the q4_k / q5_k mins' mma), and the d of its two C-column tokens: the
 * activations keep one d a 256-value block (quant.cuh), the same in the block's 8 pairs, so the
 * first pair's d scales the whole block (block_scaled). Loaded apart from the products so that the
 * layouts reading them from global memory issue the loads before they wait for the block's
 * weights (mmq_kernel, mmq_persistent_kernel). */
template <int NG> struct mmq_x {
    uint2 values[NG][8];
    uint2 pairs[NG];
    float block_d[NG][2];
};

template <int NG, bool Q6K> __device__ __forceinline__ mmq_x<NG> mmq_load_x(const mmq_inputs<NG> &in, int t) {
    mmq_x<NG> x;
#pragma unroll
    for (int G = 0; G < NG; G++) {
#pragma unroll
        for (int s = 0; s < 8; s++)
            x.values[G][s] = Q6K ? make_uint2(*reinterpret_cast<const uint32_t *>(in.b_row[G] + 32 * s + 4 * t),
                                              *reinterpret_cast<const uint32_t *>(in.b_row[G] + 32 * s + 16 + 4 * t))
                                 : *reinterpret_cast<const uint2 *>(in.b_row[G] + 32 * s + 8 * t);
        x.pairs[G] = Q6K ? make_uint2(0, 0) : *reinterpret_cast<const uint2 *>(in.b_pairs[G] + 2 * t); /* q6_k: unused */
#pragma unroll
        for (int k = 0; k < 2; k++) x.block_d[G][k] = __low2float(*in.c_scales[G][k]);
    }
    return x;
}

/* The block functions' activations: already loaded (an mmq_x), or loaded there after the weights'
 * loads from an mmq_inputs. */
template <int NG, bool Q6K, typename XS> __device__ __forceinline__ mmq_x<NG> mmq_x_from(const XS &xs, int t) {
    if constexpr (std::is_same<XS, mmq_x<NG>>::value) return xs;
    else return mmq_load_x<NG, Q6K>(xs, t);
}

/* acc[G][2r + k] += rows (g, g + 8)[r] . tokens (G*8 + 2t + k) over one q4_k or q5_k block of 256
 * columns (q5_k: the nibbles start at byte 48 and the fifth bits of elements 8t..8t+7, bit s for
 * sub-block s, are bytes 16 + 8t..8t+7: one more 8-byte load a row). A token group's mins' term
 * (16 rows' 8 mins by 8 tokens' 8 d * sum q) is one f16 m16n8k8 a block: the mins are 6-bit
 * integers and d * sum q a half, so every product is exact and the sums float32. It replaced 4
 * FFMA, 2 conversions and 2 byte picks a sub-block (sm_90a q4_k block 324 -> 256 instructions a
 * warp); H200: 70B decode x8 404.1 -> 415.7 tokens/s (staged layout), 7B x8 2334/2323 -> 2342/2353
 * and 512 x4 1194/1191 -> 1203/1210 (weights-only layout; session 10 had measured it 1 % slower
 * there, before the stage copies by rows).
 * The activations' one d a 256-value block (quant.cuh) lets the sub-blocks' c sc add up as
 * integers, converted and scaled once a block (block_scaled): per sub-block 4 IMAD a group instead
 * of 4 IMAD + 4 conversions + 4 FFMA + 2 half conversions (sm_90a kernels 320-400 instructions
 * shorter). H200 one call, with the writers of those activations and a q6_k one-token change
 * (c35b617): 70B decode x8 436.7 / 436.8 -> 450.5 / 450.2, 7B x8 2361 / 2364 -> 2568 / 2556; the
 * kernels alone (a speed bound, writers unchanged): 28672 x 8192 q4_k at 8 tokens 50.0 / 50.3 ->
 * 48.5 / 47.2 us. Both were first taken for one group only (the mins' mma had made the 9-16-token
 * kernels spill 28-60 bytes while they still held each token's 8 pairs for the sub-block FFMA);
 * with two groups too (session 40: the block's d is all a group needs, 4 registers instead of 32,
 * and 8 integer sums instead of 16 floats), chained (kernels-decode-batched, H200, one call, two
 * rounds) 28672 x 8192 q4_k at 12 / 16 tokens 41.7 / 34.0 -> 55.9 / 44.4 % of the copy rate, q5_k
 * 41.9 / 36.2 -> 53.7 / 48.3, q6_k 32.5 / 28.7 -> 39.3 / 37.2, 14336 x 4096 q4_k 30.7 / 27.9 ->
 * 40.5 / 37.6; decode 128 x16 7B 3529 -> 4055, 70B 497.9 -> 624.8 tokens/s (x8 unchanged: the same
 * instructions). */
template <int TYPE, int NG, bool HIGH_MASKED = false, typename XS>
__device__ __forceinline__ void mmq_block_q4k_q5k(const uint8_t *row_g, const uint8_t *row_g8, const XS &xs, int t, float (&acc)[NG][4]) {
    constexpr int quants_at = TYPE == Q5_K ? 48 : 16;
    const uint8_t *rows[2] = {row_g, row_g8};
    uint4 header[2];
    uint2 quants[2][4], fifth[2] = {};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        header[r] = *reinterpret_cast<const uint4 *>(rows[r]);
#pragma unroll
        for (int j = 0; j < 4; j++) quants[r][j] = *reinterpret_cast<const uint2 *>(rows[r] + quants_at + 32 * j + 8 * t);
        if (TYPE == Q5_K) fifth[r] = *reinterpret_cast<const uint2 *>(rows[r] + 16 + 8 * t);
    }
    const mmq_x<NG> x = mmq_x_from<NG, false>(xs, t);
    uint32_t scales[2][2], mins[2][2]; /* [row][sub-blocks 0-3, 4-7]: a 6-bit value a byte */
#pragma unroll
    for (int r = 0; r < 2; r++) k_scales_min_packed(header[r].y, header[r].z, header[r].w, scales[r], mins[r]);
    /* Over the block, per (token group, output): sum_s c_s sc_s, an integer (|c sc| < 32 * 31 * 128
     * * 63 < 2^24 a sub-block, |sum| < 8 * 2^23), converted and scaled by the tokens' block d once
     * (block_scaled), and the mins' term sum_s (dx sum q)_s m_s from one f16 m16n8k8 a group; the
     * row's d and dmin scale them once at the end. */
    int whole[NG][4];
    float low[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) whole[G][i] = 0, low[G][i] = 0;
    {
        /* A: row (g, g + 8)'s mins of sub-blocks 2t, 2t + 1 as a half2 (0x64XX is the half 1024 + XX);
         * B: token g's d * sum q of the same sub-blocks, the high halves of its pairs 2t, 2t + 1. */
        const uint32_t pick = (uint32_t)(2 * t) | (uint32_t)(2 * t + 1) << 8;
        uint32_t a[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const uint32_t biased = (__byte_perm(mins[r][0], mins[r][1], pick) & 0x00FF00FFu) | 0x64006400u;
            const half2 m = __hsub2(*reinterpret_cast<const half2 *>(&biased), __floats2half2_rn(1024.0f, 1024.0f));
            a[r] = *reinterpret_cast<const uint32_t *>(&m);
        }
#pragma unroll
        for (int G = 0; G < NG; G++) {
            mma_16808(low[G], a[0], a[1], __byte_perm(x.pairs[G].x, x.pairs[G].y, 0x7632));
        }
    }
    /* HIGH_MASKED (q4_k only): the odd sub-blocks (high nibbles) go to the mma in place, masked, not
     * shifted: 16 x their value as unsigned bytes, so their sums are 16 x the true ones, kept apart
     * in high[] and divided back exactly (16 divides every term) once a block: one LOP3 a quant word
     * instead of a shift and a LOP3, the same sums bit for bit. sm_90a: 8 fewer instructions a
     * block in the one-group persistent kernel, 16 in its rope form. H200 (session 59, one call,
     * two rounds, main / this): 7B decode 128 x8 3590, 3588 -> 3622, 3617 tokens/s, 512 x4 1657,
     * 1656 -> 1667, 1668, 2048 x8 1953, 1951 -> 1958, 1960; chained 14336 x 4096 q4_k at 8 tokens
     * 59.4, 59.7 -> 60.1, 60.2 % of the copy rate. Only mmq_persistent_kernel's one-group forms
     * take it: in mmq_kernel (the 70B's 2-8-token products) the chained 28672 x 8192 q4_k lost
     * 79.8, 79.7 -> 79.0, 79.1 % at 8 tokens (its code otherwise scheduled), and the two-group
     * persistent kernels gained nothing at 12 and 16 tokens (chained, within 0.5 %) while their
     * rope forms spilled 4-8 bytes. */
    int high[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) high[G][i] = 0;
#pragma unroll
    for (int s = 0; s < 8; s++) {
        int scale[2];
#pragma unroll
        for (int r = 0; r < 2; r++) scale[r] = (int)__byte_perm(scales[r][s / 4], 0, 0x4440 | (s % 4)); /* byte s % 4, one PRMT */
        /* a sub-block's quant bytes: the nibble (and q5_k's fifth bit), or HIGH_MASKED's 16 x nibble */
        const bool masked = HIGH_MASKED && TYPE == Q4_K && (s & 1);
        const int shift = (s & 1) * 4;
        const auto quant_bytes = [&](uint32_t quants_word, uint32_t fifth_word) {
            return masked ? (int)(quants_word & 0xF0F0F0F0u) : (int)(((quants_word >> shift) & 0x0F0F0F0Fu) | ((fifth_word >> s) & 0x01010101u) << 4);
        };
        const int a0 = quant_bytes(quants[0][s / 2].x, fifth[0].x), a2 = quant_bytes(quants[0][s / 2].y, fifth[0].y);
        const int a1 = quant_bytes(quants[1][s / 2].x, fifth[1].x), a3 = quant_bytes(quants[1][s / 2].y, fifth[1].y);
#pragma unroll
        for (int G = 0; G < NG; G++) {
            int c[4] = {0, 0, 0, 0};
            if (masked) mma_u8s8_k32(c, a0, a1, a2, a3, (int)x.values[G][s].x, (int)x.values[G][s].y);
            else mma_s8_k32(c, a0, a1, a2, a3, (int)x.values[G][s].x, (int)x.values[G][s].y);
            int(&sums)[4] = masked ? high[G] : whole[G];
#pragma unroll
            for (int i = 0; i < 4; i++) sums[i] += c[i] * scale[i / 2];
        }
    }
    if (HIGH_MASKED && TYPE == Q4_K)
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) whole[G][i] += high[G][i] >> 4; /* exact: 16 divides every term */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float2 d_dmin = __half22float2(*reinterpret_cast<const half2 *>(&header[r].x));
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const float scaled = __fmul_rn(x.block_d[G][k], (float)whole[G][2 * r + k]);
                acc[G][2 * r + k] = __fadd_rn(acc[G][2 * r + k], __fmaf_rn(d_dmin.x, scaled, -__fmul_rn(d_dmin.y, low[G][2 * r + k])));
            }
    }
}

/* The same for a q6_k block (224 bytes in device memory, 16-byte aligned): per sub-block two
 * m16n8k16, one per 16-element scale; thread t feeds elements 4t..4t+3 of each half (4-byte
 * loads of its quants and high bits, one 16-byte load of a row's 16 scales). q - 32 is taken
 * four bytes at a time with each byte's top bit set first, so no borrow crosses a byte (in
 * mmq_kernel's one token group, UNSIGNED below, once a block by one more mma instead). In each
 * token group a sub-block's two integer sums times their integer scales are added as integers
 * (|c| <= 16 * 32 * 127, |scale| <= 128: the sum stays below 2^24, exact as a float), so each output
 * takes one conversion and one FFMA a sub-block and the row's d is applied once a block (sm_90a,
 * both: 710 -> 491 instructions a block). The sums also add across sub-blocks (the activations'
 * d is the block's: |sum| <= 16 * 65024 * 128 < 2^31), converted and scaled by d and the token's d
 * once a block (block_scaled), in each token group (with two groups since session 40, as the q4_k
 * and q5_k blocks above). Both block functions add their float
 * terms with explicit __fmaf_rn / __fmul_rn / __fadd_rn: left to the compiler, the q6_k sums were
 * contracted into FFMA in mmq_kernel's rope instantiations and not in the plain ones (sm_90a SASS),
 * so a warp adding two or more q6_k blocks gave the rope launch and the separate launches different
 * last bits. */
template <int NG, bool UNSIGNED = false, typename XS>
__device__ __forceinline__ void mmq_block_q6k(const uint8_t *row_g, const uint8_t *row_g8, const XS &xs, int t, float (&acc)[NG][4]) {
    const uint8_t *rows[2] = {row_g, row_g8};
    uint32_t low[2][2][2][2], high[2][2][2]; /* [row][128-element half][32-byte offset][16-byte half]; [row][half][16-byte half] */
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int H = 0; H < 2; H++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                low[r][H][0][h] = *reinterpret_cast<const uint32_t *>(rows[r] + 64 * H + 16 * h + 4 * t);
                low[r][H][1][h] = *reinterpret_cast<const uint32_t *>(rows[r] + 64 * H + 32 + 16 * h + 4 * t);
                high[r][H][h] = *reinterpret_cast<const uint32_t *>(rows[r] + 128 + 32 * H + 16 * h + 4 * t);
            }
    float d[2];
    uint4 scale_bytes[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        d[r] = __half2float(*reinterpret_cast<const __half *>(rows[r] + 208));
        scale_bytes[r] = *reinterpret_cast<const uint4 *>(rows[r] + 192);
    }
    const mmq_x<NG> x = mmq_x_from<NG, true>(xs, t);
    /* UNSIGNED (mmq_kernel's one token group): the quants go to the mma unsigned (0..63), without
     * their -32 (three word operations each); the -32 is taken once a block: sum scale (q - 32) x =
     * sum scale q x - 32 sum scale x, and sum scale x over the block is one m16n8k32 a sub-block
     * accumulating in place, A the rows' two scales of the sub-block each repeated over its 16
     * columns (a PRMT a register), B the tokens' values as fed to the products. Integer
     * throughout: the same sums bit for bit (|sum scale x| <= 256 * 128 * 127). sm_90a: the
     * block's 64 LOP3 and 32 adds of the -32 become 32 PRMT and 8 IMMA. H200, session 60, two
     * rounds: chained 28672 x 8192 q6_k at 8 tokens 77.3, 77.1 -> 78.8, 78.7 % of copy, 70B
     * 128 x8 decode 522.1 -> 526.1 tokens/s. The persistent kernel keeps q6k_minus_32: with it
     * the 7B's 128 x8 decode lost 0.3 % (3631 -> 3621) and its 8-token chained q6_k product was
     * flat; two groups keep it too (their 9-16-token kernels spilled 20-56 bytes with it). */
    static_assert(!UNSIGNED || NG == 1, "the unsigned q6_k form is one token group's");
    int whole[NG][4], offsets[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) whole[G][i] = 0, offsets[G][i] = 0;
#pragma unroll
    for (int s = 0; s < 8; s++) {
        const int H = s / 4, group = s % 4, low_shift = group >= 2 ? 4 : 0;
        int a[2][2], scale[2][2], spread[2][2]; /* [16-element half][row] */
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                /* the high bits (2 group..2 group + 1 of each byte) moved to bits 4-5 */
                const uint32_t high_bits = group <= 2 ? high[r][H][h] << (4 - 2 * group) : high[r][H][h] >> 2;
                const uint32_t quants = ((low[r][H][group & 1][h] >> low_shift) & 0x0F0F0F0Fu) | (high_bits & 0x30303030u);
                a[h][r] = UNSIGNED ? (int)quants : q6k_minus_32(quants);
                const uint32_t word = (&scale_bytes[r].x)[s / 2]; /* scale 2s + h is byte 2(s % 2) + h of word s / 2 */
                const int byte = 2 * (s % 2) + h;
                scale[h][r] = (int)(int8_t)(word >> (8 * byte));
                if (UNSIGNED) spread[h][r] = (int)__byte_perm(word, 0, 0x1111u * (uint32_t)byte); /* that byte in all four */
            }
#pragma unroll
        for (int G = 0; G < NG; G++) {
            int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
            if constexpr (UNSIGNED) {
                mma_u8s8_k16(c0, a[0][0], a[0][1], (int)x.values[G][s].x);
                mma_u8s8_k16(c1, a[1][0], a[1][1], (int)x.values[G][s].y);
                mma_s8_k32(offsets[G], spread[0][0], spread[0][1], spread[1][0], spread[1][1], (int)x.values[G][s].x,
                           (int)x.values[G][s].y);
            } else {
                mma_s8_k16(c0, a[0][0], a[0][1], (int)x.values[G][s].x);
                mma_s8_k16(c1, a[1][0], a[1][1], (int)x.values[G][s].y);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) whole[G][i] += c0[i] * scale[0][i / 2] + c1[i] * scale[1][i / 2];
        }
    }
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int sum = UNSIGNED ? whole[G][i] - 32 * offsets[G][i] : whole[G][i];
            acc[G][i] = __fmaf_rn(d[i / 2], __fmul_rn(x.block_d[G][i % 2], (float)sum), acc[G][i]);
        }
}

/* Warps an SM the tensor-core kernel's registers must allow: 16 on sm_90 (228 KiB of shared memory
 * an SM hold 16 warps' stages; without the bound the 9-16-token kernel took 191 registers), 8
 * before (an sm_89 SM's 100 KiB hold 8). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define MMQ_MIN_WARPS 8
#else
#define MMQ_MIN_WARPS 16
#endif

/* One lane's pieces of a block's 16 rows: its piece of rows r, r + 2, ... from `source` (row r's),
 * row_bytes apart, to `destination` (its place in the stage), stage rows mmq_stage_row_bytes apart. */
template <int TYPE>
__device__ __forceinline__ void mmq_copy_block_rows(uint32_t destination, const uint8_t *source, int row_bytes) {
    constexpr int stride = mmq_stage_row_bytes(TYPE);
#pragma unroll
    for (int j = 0; j < MMQ_ROWS / 2; j++) copy_async_line16(destination + 2 * j * stride, source + (ptrdiff_t)(2 * j) * row_bytes);
}

/* One block (256 columns) of a tile's 16 rows, row_bytes apart from `from`, into a stage at `to`
 * (rows mmq_stage_row_bytes(TYPE) apart), in 16-byte cp.async pieces: lane l takes piece l % 16 of
 * rows l / 16, l / 16 + 2, ... (lanes past the type's 9, 11 or 14 pieces a row idle), so each
 * instruction copies two rows' whole blocks and a lane's addresses only step by two rows: a block's
 * copy costs no per-piece division or address arithmetic. The mapping it replaced (pieces
 * lane + 32 j of the 16 rows' sequence: ~4 rows an instruction, each piece's row and offset
 * computed, ~120 instructions a block in the 4-warp kernel) measured, H200 one call: 7B decode x8
 * 2305 / 2313 -> 2361 / 2361 tokens/s, 70B x8 382.0 -> 400.3, 28672 x 8192 q4_k at 8 tokens 57.2 ->
 * 52.6 us; session 10's mapping of a lane per (row l / 2, pieces l % 2 + 2j), 16 rows an
 * instruction, had measured 5-9 % slower than it. Offsets 32-bit: 16 rows of at most 2^24 / 256
 * blocks. */
template <int TYPE>
__device__ __forceinline__ void mmq_fetch_block(uint8_t *to, const uint8_t *from, int row_bytes, int lane) {
    constexpr int chunks = traits<TYPE>::stride / 16, stride = mmq_stage_row_bytes(TYPE);
    const int c = lane & 15, r = lane >> 4;
    if (c >= chunks) return;
    mmq_copy_block_rows<TYPE>(shared_address(to + r * stride + 16 * c), from + r * row_bytes + 16 * c, row_bytes);
}

/* The staged layout's (INPUTS) copies of one block into the stage at shared address `to`, from one
 * lane's running addresses, in two parts (the weights may be fetched before the previous kernel
 * is waited for, the activations not): the lane's weight piece of the block (piece lane % 16 of
 * row lane / 16, as mmq_fetch_block; rows two apart are row_pair_bytes on), and its tokens' value
 * pieces (piece lane % 16 of token lane / 16; tokens two apart token_pair_bytes on) and (d, d * sum)
 * half (half lane % 2 of token lane / 2). The caller computes the addresses once and steps them a
 * block at a time, so a copy costs one 64-bit add beyond itself (the offsets recomputed from the
 * block index each block took ~140 instructions a q4_k block, sm_90a). Slots of tokens past the
 * batch are not written (mmq_inputs_staged reads the last real token there). The weights' loop is
 * mmq_copy_block_rows' with the source stepped instead of indexed: written through that function,
 * sm_90a gave mmq_kernel's INPUTS instantiations 24-64 more instructions, and the running form there
 * made the persistent kernel's others change; each keeps its measured form. */
template <int TYPE>
__device__ __forceinline__ void mmq_fetch_stage_weights(uint32_t to, const uint8_t *weights, int64_t row_pair_bytes, int lane) {
    constexpr int chunks = traits<TYPE>::stride / 16, stride = mmq_stage_row_bytes(TYPE);
    if ((lane & 15) >= chunks) return;
    const uint32_t into = to + (lane >> 4) * stride + 16 * (lane & 15);
#pragma unroll
    for (int j = 0; j < MMQ_ROWS / 2; j++, weights += row_pair_bytes) copy_async_line16(into + 2 * j * stride, weights);
}

/* (`to`: the stage's activation part, after its weights.) */
template <int NG, int X_STRIDE>
__device__ __forceinline__ void mmq_fetch_stage_inputs(uint32_t to, const int8_t *values, int64_t token_pair_bytes, const half2 *pairs,
                                                       int n_tokens, int lane) {
    const int r = lane >> 4;
    const uint32_t values_to = to + r * X_STRIDE + 16 * (lane & 15);
#pragma unroll
    for (int j = 0; j < NG * 8 / 2; j++, values += token_pair_bytes)
        if (r + 2 * j < n_tokens) copy_async_ca16(values_to + 2 * j * X_STRIDE, values);
    if (lane < 2 * n_tokens) copy_async_ca16(to + NG * 8 * X_STRIDE + 16 * lane, pairs);
}

/* With the rope epilogue: where a 16-row tile's outputs go (the tile lies in one head: head_dim a
 * multiple of 16), per token its cache row's chunk and the angles of the tile's 8 row pairs, copied
 * from the step's targets into shared memory after the stages by warp 0 right after its wait, read
 * by it at the end. */
struct rope_tile {
    uint8_t *chunk[TM_CUDA_GEMV_MAX_TOKENS];
    float2 angle[TM_CUDA_GEMV_MAX_TOKENS][MMQ_ROWS / 2];
};

/* Warp 0: the copies into its rope_tile (uncommitted: they join the thread's next group). */
__device__ __forceinline__ void fetch_rope_tile(const rope_append &rope, int part, int64_t row0, int n_tokens, rope_tile *tile) {
    const int lane = threadIdx.x, d0 = (int)row0 % rope.head_dim, head = (int)row0 / rope.head_dim; /* rows below 2^31 */
    for (int k = lane; k < n_tokens * (MMQ_ROWS / 2); k += 32) {
        const int token = k / (MMQ_ROWS / 2), j = k % (MMQ_ROWS / 2);
        if (part < 2 && d0 + 2 * j < rope.n_rot) copy_async_8(&tile->angle[token][j], rope_target_angle(rope, token, d0 / 2 + j));
    }
    if (part > 0 && lane < n_tokens) copy_async_8(&tile->chunk[lane], rope_target_chunk(rope, n_tokens, part, head, lane));
}

/* The tile's sums (add_tile_sums, warp 0; lane (g, t) holds rows g, g + 8 and tokens 2t, 2t + 1 of
 * each group) through rope_append_write: lanes of even g store the pairs (row, row + 1), row + 1's
 * sum coming from lane + 4. */
template <int NG>
__device__ __forceinline__ void store_tile_rope(const float (&sums)[NG][4], const rope_append &rope, int part, int64_t row0, int n_tokens,
                                                const rope_tile *tile, float *q) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, d0 = (int)row0 % rope.head_dim, head = (int)row0 / rope.head_dim;
    const int offset = part ? rope_target_offset(rope, part, head) : 0;
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float next_row = __shfl_xor_sync(0xffffffffu, sums[G][i], 4);
            const int token = G * 8 + 2 * t + i % 2, r = g + 8 * (i / 2), d = d0 + r;
            if (g % 2 == 0 && token < n_tokens) {
                uint8_t *to = part ? tile->chunk[token] + offset : rope_append_head(rope, 0, head, token, 0, 0, q);
                const float2 angle = part < 2 && d < rope.n_rot ? tile->angle[token][r / 2] : make_float2(1.0f, 0.0f);
                rope_append_write(rope, part, to, d, angle, sums[G][i], next_row);
            }
        }
}

/* One block per 16-row tile of one part (parts as mmvq_parts; each part's rows a multiple of 16):
 * warp w of WARPS takes the tile's 256-column blocks w, w + WARPS, ...; warp 0 adds them and stores.
 * Blocks come through the warp's shared-memory stages (mmq_stage_sizes: with INPUTS every type's
 * weights and the activations, else q4_k/q5_k weights only), unless `staging` is 0 (a measuring
 * aid: every block straight from global memory). With `early`, the first stages' weight copies are
 * issued before the wait for the previous kernel (the activations after it). ROPE: warp 0 stores
 * the sums through store_tile_rope (tm_cuda_gemv_q8_qkv_rope). Dynamic shared memory:
 * mmq_shared_bytes<NG, INPUTS>(WARPS, widest_row), and a rope_tile after it with ROPE. */
template <int NG, int WARPS, bool ROPE, bool INPUTS>
__global__ void __launch_bounds__(32 * WARPS, MMQ_MIN_WARPS / WARPS) mmq_kernel(mmvq_parts parts, int64_t cols, const int8_t *xq, const half2 *xds,
                                                             int n_tokens, int staging, bool early, int widest_row, rope_append rope) {
    const mmq_stage_size layout = mmq_stage_sizes<NG, INPUTS>(widest_row);
    extern __shared__ __align__(16) uint8_t mmq_shared[];
    int64_t row0 = (int64_t)blockIdx.x * MMQ_ROWS;
    mmvq_part part;
    if (!find_part(parts, &row0, &part)) return;
    const bool staged = staging && (INPUTS || part.type != Q6_K);
    rope_tile *targets = reinterpret_cast<rope_tile *>(mmq_shared + WARPS * layout.warp_bytes); /* with ROPE */
    auto fetch_targets = [&] { /* after the wait (the step's targets are written by an earlier kernel) */
        if (ROPE && threadIdx.x < 32) fetch_rope_tile(rope, part.index, row0, n_tokens, targets);
    };
    if (!(early && staged)) tm_grid_dependency(); /* early: after the first stages' weights are requested */
    const uint8_t *weights = part.weights;
    float *y = part.y;
    const int64_t rows = part.rows;
    const int type = part.type;
    const int block_bytes = k_block_stride(type);
    const int64_t row_bytes = cols / 256 * block_bytes;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    float acc[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[G][i] = 0;
    const int64_t blocks = cols / 256;
    if (staged) {
        constexpr int S = MMQ_STAGES<INPUTS>;
        const int stride = type == Q4_K                ? MMQ_STAGE_ROW_BYTES_Q4K
                           : !INPUTS || type == Q5_K ? MMQ_STAGE_ROW_BYTES_Q5K /* no q6_k stages without INPUTS */
                                                     : MMQ_STAGE_ROW_BYTES_Q6K;
        const int x_stride = INPUTS && type == Q6_K ? MMQ_X_ROW_BYTES_Q6K : MMQ_X_ROW_BYTES;
        uint8_t *mine = mmq_shared + warp * layout.warp_bytes;
        const uint8_t *tile = weights + row0 * row_bytes;
        /* INPUTS: the lane's running copy addresses (mmq_fetch_stage_weights / _inputs) of the next
         * block to fetch, block `warp` first; each fetch steps them WARPS blocks on. */
        const int piece = lane & 15, pair_row = lane >> 4;
        const uint8_t *weights_from = tile + warp * block_bytes + pair_row * row_bytes + 16 * piece;
        const int8_t *values_from = xq + pair_row * cols + warp * 256 + 16 * piece;
        const half2 *pairs_from = xds + (lane / 2) * (cols / 32) + warp * 8 + 4 * (lane % 2);
        auto fetch_stage_weights = [&](int64_t block, int stage) {
            if (block < blocks) {
                const uint32_t to = shared_address(mine + stage * layout.stage_bytes);
                if (type == Q4_K) mmq_fetch_stage_weights<Q4_K>(to, weights_from, 2 * row_bytes, lane);
                else if (type == Q5_K) mmq_fetch_stage_weights<Q5_K>(to, weights_from, 2 * row_bytes, lane);
                else mmq_fetch_stage_weights<Q6_K>(to, weights_from, 2 * row_bytes, lane);
            }
            weights_from += WARPS * block_bytes;
        };
        auto fetch_stage_inputs = [&](int64_t block, int stage) {
            if (block < blocks) {
                const uint32_t to = shared_address(mine + stage * layout.stage_bytes + layout.weight_bytes);
                if (type == Q6_K) mmq_fetch_stage_inputs<NG, MMQ_X_ROW_BYTES_Q6K>(to, values_from, 2 * cols, pairs_from, n_tokens, lane);
                else mmq_fetch_stage_inputs<NG, MMQ_X_ROW_BYTES>(to, values_from, 2 * cols, pairs_from, n_tokens, lane);
            }
            values_from += WARPS * 256;
            pairs_from += WARPS * 8;
        };
        auto fetch_weights = [&](int64_t block, int stage) { /* without INPUTS: the tile's 16 rows of one block into a stage */
            if (block >= blocks) return;
            uint8_t *to = mine + stage * layout.stage_bytes;
            const uint8_t *from = tile + block * block_bytes;
            if (type == Q4_K) mmq_fetch_block<Q4_K>(to, from, (int)row_bytes, lane);
            else mmq_fetch_block<Q5_K>(to, from, (int)row_bytes, lane); /* no q6_k stages without INPUTS */
        };
        /* Commit groups, one per block fetched, empty ones too, so the wait counts hold. Weights
         * only (three stages): W0, W1 before the loop (the targets join the first loop group), and
         * each iteration first fetches the block two ahead. With the activations (two stages):
         * W0, W1 before the wait for the previous kernel, A0 (with the targets), A1 after it; each
         * iteration refills its stage at its end.
         * Either way, at a block's wait its groups are all but the newest S - 1. */
        constexpr int ahead = INPUTS ? S : S - 1;
#pragma unroll
        for (int k = 0; k < ahead; k++) {
            if constexpr (INPUTS) fetch_stage_weights(warp + k * WARPS, k);
            else fetch_weights(warp + k * WARPS, k);
            copy_async_commit();
        }
        if (early) tm_grid_dependency();
        fetch_targets();
        if constexpr (INPUTS) {
#pragma unroll
            for (int k = 0; k < S; k++) {
                fetch_stage_inputs(warp + k * WARPS, k);
                copy_async_commit();
            }
        }
        int stage = 0;
        for (int64_t block = warp; block < blocks; block += WARPS) {
            if constexpr (!INPUTS) {
                fetch_weights(block + (S - 1) * WARPS, (stage + S - 1) % S);
                copy_async_commit();
            }
            copy_async_wait<S - 1>(); /* this block's groups are done (for this lane's copies) */
            __syncwarp();             /* ... and the other lanes' copies are visible */
            const uint8_t *here = mine + stage * layout.stage_bytes;
            const mmq_inputs<NG> in = INPUTS ? mmq_inputs_staged<NG>(here + layout.weight_bytes, x_stride, n_tokens, g, t)
                                             : mmq_inputs_at<NG>(xq, xds, cols, block, n_tokens, g, t);
            const uint8_t *staged_g = here + g * stride;
            if (type == Q4_K) mmq_block_q4k_q5k<Q4_K, NG>(staged_g, staged_g + 8 * stride, in, t, acc);
            else if (!INPUTS || type == Q5_K) mmq_block_q4k_q5k<Q5_K, NG>(staged_g, staged_g + 8 * stride, in, t, acc);
            else mmq_block_q6k<NG, NG == 1>(staged_g, staged_g + 8 * stride, in, t, acc);
            __syncwarp(); /* every lane is done with the stage before it is fetched into again */
            if constexpr (INPUTS) {
                fetch_stage_weights(block + S * WARPS, stage);
                fetch_stage_inputs(block + S * WARPS, stage);
                copy_async_commit();
            }
            stage = (stage + 1) % S;
        }
        copy_async_wait<0>();
    } else {
        fetch_targets();
        const uint8_t *row_g = weights + (row0 + g) * row_bytes, *row_g8 = row_g + 8 * row_bytes;
        for (int64_t block = warp; block < blocks; block += WARPS) {
            const mmq_inputs<NG> in = mmq_inputs_at<NG>(xq, xds, cols, block, n_tokens, g, t);
            if (type == Q4_K)
                mmq_block_q4k_q5k<Q4_K, NG>(row_g + block * traits<Q4_K>::stride, row_g8 + block * traits<Q4_K>::stride, in, t, acc);
            else if (type == Q5_K)
                mmq_block_q4k_q5k<Q5_K, NG>(row_g + block * traits<Q5_K>::stride, row_g8 + block * traits<Q5_K>::stride, in, t, acc);
            else mmq_block_q6k<NG, NG == 1>(row_g + block * traits<Q6_K>::stride, row_g8 + block * traits<Q6_K>::stride, in, t, acc);
        }
    }
    __syncthreads(); /* the stages are free: the partial sums reuse them */
    float(*partial)[NG * 4][32] = reinterpret_cast<float(*)[NG * 4][32]>(mmq_shared);
    if constexpr (ROPE) {
        if (threadIdx.x < 32) copy_async_commit(), copy_async_wait<0>(); /* the targets are in (add_tile_sums syncs the block) */
        if (add_tile_sums<NG, WARPS>(acc, partial)) store_tile_rope<NG>(acc, rope, part.index, row0, n_tokens, targets, y);
    } else {
        store_tile_sums<NG, WARPS>(acc, partial, y, rows, row0, n_tokens);
    }
}

/* ---- one block a resident slot, its tiles' blocks in one stream a warp ---------------------------- */

/* mmq_kernel's launches of several waves (the 7B's gate/up at 8 tokens: 1376 tiles, 5.2 waves of
 * two 8-warp blocks an SM) pay a trip to memory, the blocks' products and the tile's sums one after
 * another in every wave (ncu, H200: 54 % of the DRAM peak, an instruction every 2.8 cycles a
 * scheduler; 28.1 us where its 50.8 MB take 11.5 at the copy rate). Here a block a resident slot
 * takes tiles blockIdx.x, blockIdx.x + gridDim.x, ... and each warp's blocks of those tiles (warp,
 * warp + WARPS, ... of each) form one stream through its S stages, so the next
 * tile's weights are in flight while this tile's last blocks are multiplied and its sums added.
 * Every type is staged (q6_k rows 240 bytes apart; stages sized for the launch's widest row,
 * mmq_widest_row(parts, true)), so the q6_k products that mmq_kernel reads straight from global
 * memory without the staged activations (the 7B's down and V in half its layers) are pipelined
 * too. The sums go through two alternating buffers after the stages: one __syncthreads a tile, a
 * buffer written again only after the next tile's barrier, which warp 0 reaches after adding the
 * last. Each warp adds its blocks and the block its warps in mmq_kernel's order, so the sums equal
 * its 8-warp layout's bit for bit. With ROPE (the Q/K/V launch of decode steps), warp 0 copies a
 * tile's targets into one of two rope_tiles at the tile's start (they join its first copy group)
 * and stores the sums through store_tile_rope as mmq_kernel does (H200, TM_MMQ_PERSISTENT_ROPE=0 /
 * 1, one binary: 7B 128 x8 3036, 3025 / 3046, 3057 tokens/s, 512 x4 1476 / 1495).
 * H200, 7B decode (TM_MMQ_PERSISTENT=0 / 1 / 2 with three stages, one binary, interleaved rounds): 128 x8 2912, 2909,
 * 2902 / 2927, 2929, 2922 / 3020, 3013, 3015 tokens/s; 512 x4 1437, 1436 / 1458, 1456 / 1487,
 * 1484; 2048 x8 1702 / 1710 / 1724. Per launch (profile, plain launches): gate/up 25.00 -> 24.27 us,
 * output and down (256 tiles, one a block) 12.24 -> 11.57 on average. The gate/up launch stays at
 * ~2.1 TB/s: ncu puts its time in the warps' dependent chains (0.36 -> 0.42 instructions a cycle a
 * scheduler, 4 warps each), not in waves. Holding the activations in the block's shared memory
 * (36.5 KiB more a block; branch mmq-persistent-x) took that launch to 21.5 us alone but the
 * captured step from 2919 to 2765 tokens/s. */
/* A stage of the persistent kernel: a block's 16 weight rows (widest_row apart), and with INPUTS the
 * tokens' activations for it (8 rows a token group of MMQ_X_ROW_BYTES, or MMQ_X_ROW_BYTES_Q6K in a
 * q6_k tile, then 8 (d, d * sum) pairs a token), as mmq_kernel's INPUTS stages. */
template <int NG, bool INPUTS> __host__ __device__ constexpr int mmq_persistent_stage_bytes(int widest_row) {
    return MMQ_ROWS * widest_row + (INPUTS ? NG * (8 * MMQ_X_ROW_BYTES + 8 * 32) : 0);
}
template <int NG, int WARPS, int S, bool ROPE, bool INPUTS> __host__ __device__ constexpr int mmq_persistent_shared_bytes(int widest_row) {
    return WARPS * S * mmq_persistent_stage_bytes<NG, INPUTS>(widest_row) + 2 * (WARPS - 1) * NG * 4 * 32 * (int)sizeof(float) +
           (ROPE ? 2 * (int)sizeof(rope_tile) : 0);
}
/* Warps an SM the persistent kernel must keep resident: MMQ_MIN_WARPS, but 12 (sm_90) where the stages
 * hold two token groups' activations (7.5 KiB a q4_k stage, 15 a warp: three 4-warp blocks an SM,
 * not four); the launch bound then allows 168 registers instead of 128. The host's check
 * (mmq_persistent_slots) uses the sm_90 figure: the kernel is not used before. */
template <int NG, bool INPUTS> __host__ __device__ constexpr int mmq_persistent_min_warps() {
    return NG == 2 && INPUTS ? MMQ_MIN_WARPS * 3 / 4 : MMQ_MIN_WARPS;
}

/* Where tile `tile` (of the concatenated parts' 16-row tiles) lies: its part and first row in it. */
__device__ __forceinline__ void mmq_tile_at(const mmvq_parts &parts, int64_t tile, mmvq_part *part, int64_t *row0) {
    *row0 = tile * MMQ_ROWS;
    find_part(parts, row0, part); /* tiles < the launch's: always found */
}

template <int NG, int WARPS, int S, bool ROPE, bool INPUTS>
__global__ void __launch_bounds__(32 * WARPS, (mmq_persistent_min_warps<NG, INPUTS>() / WARPS))
    mmq_persistent_kernel(mmvq_parts parts, int64_t cols, const int8_t *xq, const half2 *xds, int n_tokens, int64_t tiles, bool early,
                          int widest_row, rope_append rope) {
    /* Activations from global memory (the two-group products) are loaded before the wait for
     * their block's weights, so their trip overlaps it; not with the rope epilogue, where holding
     * them across the copies made the two-group kernels spill (128 bytes a thread, sm_90a; none
     * without the rope). H200, one call each, chained 14336 x 4096 (kernels-decode-batched) loaded
     * after the wait -> before, % of the copy rate: q4_k at 12 / 16 tokens 40.9, 40.9 / 36.8, 38.0 ->
     * 45.4, 46.1 / 42.1, 42.1; q6_k 43.6, 43.4 / 37.8, 38.8 -> 45.3, 45.9 / 39.3, 39.1; 7B decode
     * 128 x16 4051 -> 4152 tokens/s. (In mmq_kernel's direct q6_k reads the same order lost 7-12 %.) */
    constexpr bool EARLY_X = !INPUTS && !ROPE;
    extern __shared__ __align__(16) uint8_t mmq_shared[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int weight_bytes = MMQ_ROWS * widest_row, stage_bytes = mmq_persistent_stage_bytes<NG, INPUTS>(widest_row);
    uint8_t *mine = mmq_shared + warp * S * stage_bytes;
    float(*partials)[WARPS - 1][NG * 4][32] = reinterpret_cast<float(*)[WARPS - 1][NG * 4][32]>(mmq_shared + WARPS * S * stage_bytes);
    rope_tile *targets = reinterpret_cast<rope_tile *>(partials + 2); /* with ROPE: two, by tile parity */
    const int64_t blocks = cols / 256;
    const int per_tile = blocks > warp ? (int)((blocks - warp + WARPS - 1) / WARPS) : 0; /* this warp's blocks of a tile */
    const int64_t my_tiles = blockIdx.x < tiles ? (tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    /* The fetch cursor: the next (tile, block) of the warp's stream to copy, and that tile's rows. */
    int64_t fetch_tile = blockIdx.x, fetches_left = my_tiles * per_tile;
    int fetch_index = 0, fetch_type = 0, fetch_row_bytes = 0;
    int64_t fetched_block = -1; /* the block fetch_next last copied (-1: none) and its tile's type */
    int fetched_type = 0;
    /* This lane's piece of the fetch tile's block 0 (piece lane % 16 of row lane / 16, as
     * mmq_fetch_block) and where it goes in stage 0, set once a tile: a block's copies then cost one
     * address step (recomputed from the lane each block, they took ~45 instructions of a q4_k
     * block's ~430 in the two-group kernel, sm_90a; ~28 now). With the activations' offsets in 32
     * bits (mmq_inputs_at), H200 one call, 128 x16: 70B 695.6 -> 717.6, 7B 4222 -> 4313 tokens/s
     * (the offsets alone 707.4 / 4290). */
    const uint8_t *fetch_from = nullptr;
    uint32_t fetch_to = 0;
    bool fetch_piece = false; /* lanes past the type's 9, 11 or 14 pieces a row copy nothing */
    auto aim_fetch = [&] {
        mmvq_part part;
        int64_t row0;
        mmq_tile_at(parts, fetch_tile, &part, &row0);
        fetch_type = part.type;
        fetch_row_bytes = (int)(blocks * k_block_stride(part.type)); /* 16 rows below 2^31 bytes: cols <= 2^24 */
        fetch_from = part.weights + row0 * fetch_row_bytes + (lane >> 4) * fetch_row_bytes + 16 * (lane & 15);
        fetch_to = shared_address(mine) + (lane >> 4) * mmq_stage_row_bytes(part.type) + 16 * (lane & 15);
        fetch_piece = (lane & 15) < k_block_stride(part.type) / 16;
    };
    auto fetch_next = [&](int stage) { /* the stream's next block's weights (none past its end); the caller commits */
        fetched_block = -1;
        if (fetches_left > 0) {
            const uint32_t to = fetch_to + stage * stage_bytes;
            const int64_t block = warp + (int64_t)fetch_index * WARPS;
            if (fetch_piece) {
                if (fetch_type == Q4_K) mmq_copy_block_rows<Q4_K>(to, fetch_from + block * traits<Q4_K>::stride, fetch_row_bytes);
                else if (fetch_type == Q5_K) mmq_copy_block_rows<Q5_K>(to, fetch_from + block * traits<Q5_K>::stride, fetch_row_bytes);
                else mmq_copy_block_rows<Q6_K>(to, fetch_from + block * traits<Q6_K>::stride, fetch_row_bytes);
            }
            fetched_block = block, fetched_type = fetch_type;
            fetches_left--;
            if (++fetch_index == per_tile) {
                fetch_index = 0;
                fetch_tile += gridDim.x;
                if (fetches_left > 0) aim_fetch();
            }
        }
    };
    /* INPUTS: the tokens' values and pairs at `block` into the stage after its weights (lane: piece
     * lane % 16 of tokens lane / 16, + 2, ...; pair half lane % 2 of token lane / 2); only after the
     * wait for the previous kernel, which writes them. */
    auto fetch_inputs = [&](int64_t block, int type, int stage) {
        if (!INPUTS || block < 0) return;
        const uint32_t to = shared_address(mine + stage * stage_bytes + weight_bytes);
        const int8_t *values = xq + (lane >> 4) * cols + block * 256 + 16 * (lane & 15);
        const half2 *pairs = xds + (lane / 2) * (cols / 32) + block * 8 + 4 * (lane % 2);
        if (type == Q6_K) mmq_fetch_stage_inputs<NG, MMQ_X_ROW_BYTES_Q6K>(to, values, 2 * cols, pairs, n_tokens, lane);
        else mmq_fetch_stage_inputs<NG, MMQ_X_ROW_BYTES>(to, values, 2 * cols, pairs, n_tokens, lane);
    };
    if (fetches_left > 0) aim_fetch();
    if (!early) tm_grid_dependency();
    int64_t first_blocks[S - 1]; /* INPUTS: the first stages' blocks and types, their activations copied after the wait */
    int first_types[S - 1];
#pragma unroll
    for (int k = 0; k < S - 1; k++) {
        fetch_next(k);
        first_blocks[k] = fetched_block, first_types[k] = fetched_type;
        copy_async_commit();
    }
    if (early) tm_grid_dependency(); /* the weights are written by no kernel; the activations and y after the wait */
    if constexpr (INPUTS) {
#pragma unroll
        for (int k = 0; k < S - 1; k++) {
            fetch_inputs(first_blocks[k], first_types[k], k);
            copy_async_commit();
        }
    }
    int stage = 0;
    for (int64_t k = 0; k < my_tiles; k++) {
        mmvq_part part;
        int64_t row0;
        mmq_tile_at(parts, blockIdx.x + k * gridDim.x, &part, &row0);
        const int stride = mmq_stage_row_bytes(part.type);
        if (ROPE && warp == 0) fetch_rope_tile(rope, part.index, row0, n_tokens, &targets[k & 1]); /* joins the next group */
        float acc[NG][4];
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[G][i] = 0;
        for (int b = 0; b < per_tile; b++) {
            mmq_x<NG> early_x; /* EARLY_X */
            if constexpr (EARLY_X) {
                const mmq_inputs<NG> in = mmq_inputs_at<NG>(xq, xds, cols, warp + (int64_t)b * WARPS, n_tokens, g, t);
                early_x = part.type == Q6_K ? mmq_load_x<NG, true>(in, t) : mmq_load_x<NG, false>(in, t);
            }
            fetch_next((stage + S - 1) % S);
            fetch_inputs(fetched_block, fetched_type, (stage + S - 1) % S);
            copy_async_commit();
            copy_async_wait<S - 1>(); /* this item's groups are done (for this lane's copies) */
            __syncwarp();             /* ... and the other lanes' copies are visible */
            const uint8_t *here = mine + stage * stage_bytes;
            const mmq_inputs<NG> in =
                INPUTS ? mmq_inputs_staged<NG>(here + weight_bytes, part.type == Q6_K ? MMQ_X_ROW_BYTES_Q6K : MMQ_X_ROW_BYTES, n_tokens, g, t)
                       : mmq_inputs_at<NG>(xq, xds, cols, warp + (int64_t)b * WARPS, n_tokens, g, t);
            const uint8_t *staged_g = here + g * stride;
            auto block = [&](const auto &xs) {
                if (part.type == Q4_K) mmq_block_q4k_q5k<Q4_K, NG, NG == 1>(staged_g, staged_g + 8 * stride, xs, t, acc);
                else if (part.type == Q5_K) mmq_block_q4k_q5k<Q5_K, NG>(staged_g, staged_g + 8 * stride, xs, t, acc);
                else mmq_block_q6k<NG>(staged_g, staged_g + 8 * stride, xs, t, acc);
            };
            if constexpr (EARLY_X) block(early_x); /* `in` then unused; folding the two forms' address computations into one */
            else block(in);                        /* changed ptxas' allocation (16 bytes of spills, 4-warp rope kernel, 2 groups) */
            __syncwarp(); /* every lane is done with the stage before it is fetched into again */
            stage = (stage + 1) % S;
        }
        if constexpr (ROPE) {
            /* the targets joined the tile's first group, done at its last block's wait when the tile
             * has at least S blocks a warp; else warp 0 waits for all its copies */
            if (warp == 0 && per_tile < S) copy_async_wait<0>();
            if (add_tile_sums<NG, WARPS>(acc, partials[k & 1]))
                store_tile_rope<NG>(acc, rope, part.index, row0, n_tokens, &targets[k & 1], part.y);
        } else {
            store_tile_sums<NG, WARPS>(acc, partials[k & 1], part.y, part.rows, row0, n_tokens);
        }
    }
    copy_async_wait<0>();
}

/* From how many tokens on the tensor-core products are used (default 2). */
static int mmq_min_tokens(void) {
    static const int forced = tm_env_int("TM_MMQ_MIN_TOKENS", 2); /* a measuring aid: 17 turns the tensor-core path off */
    return forced > 0 ? forced : 2;
}

template <int NG, int WARPS, bool ROPE, bool INPUTS>
static cudaError_t launch_mmq_kernel(const mmvq_parts &parts, int64_t cols, const int8_t *qs, const half2 *ds, int n, int64_t tiles,
                                     const rope_append &rope, cudaStream_t s) {
    static const int staging = tm_env_int("TM_MMQ_STAGING", 1) != 0; /* 0 (a measuring aid): every block straight from global memory */
    const int widest = mmq_widest_row(parts, INPUTS), shared = mmq_shared_bytes<NG, INPUTS>(WARPS, widest) + (ROPE ? (int)sizeof(rope_tile) : 0);
    TM_CUDA_CHECK(tm_allow_dynamic_shared((const void *)mmq_kernel<NG, WARPS, ROPE, INPUTS>, shared));
    if (INPUTS && staging) tm_note_staged_products(); /* the 70B's wide products: the decode attention leaves room for them too */
    TM_LAUNCH_DEPENDENT((mmq_kernel<NG, WARPS, ROPE, INPUTS>), dim3((unsigned)tiles), dim3(32 * WARPS), shared, s, parts, cols, qs, ds, n,
                        staging, gemv_early_weights(), widest, rope);
    return cudaSuccess;
}

template <int NG, int WARPS, bool INPUTS>
static cudaError_t launch_mmq_kernel(const mmvq_parts &parts, int64_t cols, const int8_t *qs, const half2 *ds, int n, int64_t tiles,
                                     const rope_append *rope, cudaStream_t s) {
    if (rope) return launch_mmq_kernel<NG, WARPS, true, INPUTS>(parts, cols, qs, ds, n, tiles, *rope, s);
    return launch_mmq_kernel<NG, WARPS, false, INPUTS>(parts, cols, qs, ds, n, tiles, rope_append{}, s);
}

/* Warps a tile (launch_mmq_layout): 4 for a wide product (mmq_wide: a row has at least 32 blocks, 8 or
 * more a warp to pipeline through its stages, and the tiles fill at least 90 % of a wave of 4-warp
 * blocks, the device's resident blocks), else 8. H200, decode at 8 tokens: 70B (rows of 32 and 112 blocks, 512-3584 tiles) 334.0 /
 * 334.4 tokens/s with 8, 343.5 / 344.2 with 4; 7B (16 and 43 blocks, 256-1376 tiles) 2225-2260
 * with 8, 2053-2076 with 4 everywhere or on its gate/up alone (a rule by the last wave's fullness,
 * which ncu's serialized 33.2 -> 29.8 us for that product favoured). TM_MMQ_WARPS=3, 4 or 8 (a
 * measuring aid) forces one. */
/* The device's resident blocks of mmq_kernel (WARPS warps, no rope) for these parts' stages. */
template <int NG, int WARPS, bool INPUTS> static cudaError_t mmq_resident_blocks(const mmvq_parts &parts, int *resident) {
    const void *kernel = (const void *)mmq_kernel<NG, WARPS, false, INPUTS>;
    const int shared = mmq_shared_bytes<NG, INPUTS>(WARPS, mmq_widest_row(parts, INPUTS));
    TM_CUDA_CHECK(tm_allow_dynamic_shared(kernel, shared)); /* else the count is 0 above 48 KiB */
    return tm_resident_blocks(kernel, 32 * WARPS, shared, resident);
}

template <int NG, bool INPUTS> static cudaError_t mmq_wide(const mmvq_parts &parts, int64_t cols, int64_t tiles, bool *wide) {
    *wide = false;
    if (cols / 256 < 32) return cudaSuccess;
    int resident4 = 0;
    TM_CUDA_CHECK((mmq_resident_blocks<NG, 4, INPUTS>(parts, &resident4)));
    *wide = 10 * tiles >= 9 * (int64_t)resident4;
    return cudaSuccess;
}

/* mmq_kernel in the layout given, 4 warps a tile for a wide product, else 8 (mmq_wide); 3 for a
 * wide product with staged activations whose tiles are more than the resident 4-warp blocks but
 * no more than the resident 3-warp ones (five an SM on sm_90: 116 registers, ~32 KiB of stages),
 * so they run in one wave instead of a wave and a fifth: the 70B's Q/K/V (640 tiles against 528
 * and 660 slots), whose launch with the rope (the decode steps') and without (tm_cuda_gemv_q8_parts,
 * the same parts) so keep one layout and the same bits. A warp then takes 11 of a row's 32 blocks
 * instead of 8, but no tile waits for a second wave. H200, one binary, two rounds,
 * TM_MMQ_THREE_WARPS=0 (a measuring aid: 4 warps) / the default: 70B 128 x8 529.0, 527.8 / 532.0,
 * 534.7 tokens/s, 512 x4 274.7, 274.5 / 276.4, 276.0, 2048 x8 489.7, 490.0 / 495.7, 495.5; the
 * Q/K/V launch's exposed time in a step profiled with dependent launches 23.29 -> 19.92 us. */
template <int NG, bool INPUTS>
static cudaError_t launch_mmq_layout(const mmvq_parts &parts, int64_t cols, const int8_t *qs, const half2 *ds, int n, int64_t tiles,
                                     bool wide, const rope_append *rope, cudaStream_t s) {
    static const int forced = tm_env_int("TM_MMQ_WARPS", 0), three = tm_env_int("TM_MMQ_THREE_WARPS", 1);
    int warps = forced == 3 || forced == 4 || forced == 8 ? forced : wide ? 4 : 8;
    if (!forced && wide && three && INPUTS) {
        int resident4 = 0, resident3 = 0;
        TM_CUDA_CHECK((mmq_resident_blocks<NG, 4, INPUTS>(parts, &resident4)));
        TM_CUDA_CHECK((mmq_resident_blocks<NG, 3, INPUTS>(parts, &resident3)));
        if (tiles > resident4 && tiles <= resident3) warps = 3;
    }
    if (warps == 3) return launch_mmq_kernel<NG, 3, INPUTS>(parts, cols, qs, ds, n, tiles, rope, s);
    return warps == 8 ? launch_mmq_kernel<NG, 8, INPUTS>(parts, cols, qs, ds, n, tiles, rope, s)
                      : launch_mmq_kernel<NG, 4, INPUTS>(parts, cols, qs, ds, n, tiles, rope, s);
}

/* How products of up to 8 tokens choose their layout: 0 never INPUTS (mmq_stage_sizes), 1 INPUTS for
 * products mmq_wide calls wide (4-warp blocks, 8 or more blocks a warp to pipeline through its two
 * stages: every product of the 70B, none of the 7B), 2 INPUTS for every product (TM_MMQ_INPUTS=0 / 2, the
 * default 1; measuring aids); 0 where two 8-warp blocks' q6_k-sized stages (and rope targets) do not
 * fit in an SM's shared memory, as on an RTX 4090 (100 KiB; sm_90 has 228). H200, decode tokens/s,
 * TM_MMQ_INPUTS=0 / 2 (4 warps): 70B 128 x8 346.1 / 394.3, 2048 x8 319.7 / 348.5; 7B 128 x8
 * 2280-2302 / 2293-2309, 512 x4 1170 / 1120, 2048 x8 1144 / 1102 (its products of 16 blocks a row,
 * 2 or 4 a warp; with 8 warps 2218 at 128 x8); only the 7B's down product (43 blocks a row, half a
 * wave of tiles): 2250-2262 at 128 x8. */
static cudaError_t mmq_inputs_mode(int *mode) {
    static const int wanted = tm_env_int("TM_MMQ_INPUTS", 1);
    static signed char known[16]; /* per device: 0 unknown, 1 fits, -1 does not */
    int device = 0, per_sm = 0;
    *mode = 0;
    TM_CUDA_CHECK(cudaGetDevice(&device));
    if (wanted == 0 || device < 0 || device >= 16) return cudaSuccess;
    if (!known[device]) {
        TM_CUDA_CHECK(tm_device_shared_memory(device, &per_sm, NULL));
        const int block = mmq_shared_bytes<1, true>(8, MMQ_STAGE_ROW_BYTES_Q6K) + (int)sizeof(rope_tile) + 1024; /* 1 KiB the runtime keeps a block */
        known[device] = per_sm >= 2 * block ? 1 : -1;
    }
    if (known[device] > 0) *mode = wanted == 2 ? 2 : 1;
    return cudaSuccess;
}

/* The persistent kernel's stages a warp: 2 (TM_MMQ_PERSISTENT_STAGES=3, a measuring aid, takes
 * three). Fewer stages measured faster in the step, as less shared memory leaves more L1 to the
 * kernels around it (H200, 7B decode, 2 / 3 / 4 stages, two rounds: 128 x8 3026, 3038 / 3004, 3002
 * / 2841, 2836 tokens/s; 512 x4 1484 / 1480 / 1418; a uniform carveout of all shared memory for
 * every kernel, TM_CARVEOUT=100 on branch carveout, took 7B x8 to 2758 and 8B f16 x8 to 1087). */
static int mmq_persistent_stages(void) {
    static const int stages = tm_env_int("TM_MMQ_PERSISTENT_STAGES", 2);
    return stages == 3 ? 3 : 2;
}

/* The persistent kernel's warps a block: 0 (the default) chooses per product (mmq_persistent_blocks:
 * 4 where its tiles outnumber the 4-warp blocks resident at once, 8 otherwise);
 * TM_MMQ_PERSISTENT_WARPS=8 or 4 fixes them (measuring aids). With 4, a 4096-column row's 16 blocks
 * are 4 a warp a tile instead of 2, a tile's sums added over 4 warps, four blocks an SM. H200,
 * session 29, 8 -> 4 for every product: chained 8-token products (kernels-decode-chain) 14336 x
 * 4096 q4_k 17.63 -> 15.23 us, q6_k 25.61 -> 22.02, but 4096 x 4096 q4_k 6.31 -> 7.42, q6_k 9.71
 * -> 10.45 (256 tiles: half the warps of 8-warp blocks at work), the 70B's shapes unchanged; 7B
 * decode 128 x8 3058 / 3061 -> 2864 / 2877 tokens/s, 512 x4 1494 / 1498 -> 1429 / 1430. Session 30,
 * the rule (0) against 8, one binary, two interleaved rounds: chained x8 14336 x 4096 q4_k 17.42 /
 * 18.00 -> 15.13 / 15.55 us, q6_k 26.03 / 26.06 -> 21.99 / 22.29, 4096 x 4096 the same kernel; 7B
 * decode 128 x8 3009 / 3037 -> 3058 / 3083 tokens/s, 512 x4 1490 / 1488 -> 1508 / 1511. */
static int mmq_persistent_warps(void) {
    static const int forced = tm_env_int("TM_MMQ_PERSISTENT_WARPS", 0);
    return forced == 4 || forced == 8 ? forced : 0;
}

/* Whether the persistent kernel's products of one token group stage the tokens' activations with
 * each block's weights (mmq_persistent_stage_bytes; two stages a warp only): TM_MMQ_PERSISTENT_INPUTS=0,
 * a measuring aid, reads them from global memory inside the products (4 / 8: only in blocks of that
 * many warps). Why (session 30): the q8_0 tensor-core kernel's products had waited on the
 * activations' global loads (ncu: 8.4 of 16.6 cycles an instruction on long scoreboard; staged, 1.4);
 * the k-quant products read them the same way. H200, one binary, two interleaved rounds, 0 -> 1:
 * chained 8-token products 4096 x 4096 q4_k 6.09 / 6.92 -> 5.14 / 5.10 us, q6_k 9.74 / 8.94 -> 6.98 /
 * 7.00, 14336 x 4096 q4_k 15.22 / 15.08 -> 13.40 / 13.31, q6_k 22.02 / 21.85 -> 19.03 / 19.03; 7B
 * decode 128 x8 3080 / 3080 -> 3401 / 3389 tokens/s, 512 x4 1524 / 1508 -> 1549 / 1542, but 2048 x8
 * 1813 / 1800 -> 1711 / 1718 (staging in 4-warp or 8-warp blocks only: 1704 / 1667), although each
 * product kernel was faster there too (plain-launch profile: 42.0 -> 36.3 ms of the 8-warp ones a
 * run) and the step without dependent launches gained (1666 -> 1737): the larger blocks no longer
 * fit beside the decode attention's last blocks in the carveout the driver chose for it, so they
 * waited for its SMs to drain. With the attention's carveout at 50 % (tm_attention_carveout) 2048 x8
 * is 1872 and 128 x8 3428. */
static bool mmq_persistent_inputs(int warps) {
    static const int staged = tm_env_int("TM_MMQ_PERSISTENT_INPUTS", 1); /* 4 / 8: only in blocks of that many warps */
    return staged == 1 || staged == warps;
}

/* f(std::integral_constant<int, W>, std::integral_constant<int, S>, std::bool_constant<ROPE>,
 * std::bool_constant<INPUTS>) for the launch's warps, stages, rope and staged activations (two
 * token groups: `staged2`, in 4-warp blocks only): the one place the persistent kernel's
 * instantiations are chosen. */
template <int NG, typename F> static cudaError_t mmq_persistent_variant(int warps, bool staged2, bool rope, F &&f) {
    auto with_rope = [&](auto w, auto stages, auto staged) { return rope ? f(w, stages, std::true_type{}, staged) : f(w, stages, std::false_type{}, staged); };
    auto with_warps = [&](auto w) {
        if (mmq_persistent_stages() == 3) return with_rope(w, std::integral_constant<int, 3>{}, std::false_type{});
        if constexpr (NG == 1) {
            if (mmq_persistent_inputs(decltype(w)::value)) return with_rope(w, std::integral_constant<int, 2>{}, std::true_type{});
        } else if constexpr (decltype(w)::value == 4) {
            if (staged2) return with_rope(w, std::integral_constant<int, 2>{}, std::true_type{});
        }
        return with_rope(w, std::integral_constant<int, 2>{}, std::false_type{});
    };
    return warps == 4 ? with_warps(std::integral_constant<int, 4>{}) : with_warps(std::integral_constant<int, 8>{});
}

/* The persistent kernel's resident blocks on this device at `warps` a block, 0 where it is not used
 * (before sm_90, or fewer than mmq_persistent_min_warps warps an SM fit); `staged2`: the form
 * staging two token groups' activations (mmq_two_group_staging). */
template <int NG>
static cudaError_t mmq_persistent_slots(int warps, bool staged2, int widest, bool rope, int *slots) {
    const void *kernel = nullptr;
    int shared = 0, resident = 0, device = 0, sms = 0, min_warps = MMQ_MIN_WARPS;
    *slots = 0;
    if (tm_device_major() < 9) return cudaSuccess; /* measured on sm_90 only; an RTX 4090 keeps mmq_kernel */
    mmq_persistent_variant<NG>(warps, staged2, rope, [&](auto w, auto stages, auto with, auto staged) {
        constexpr int W = decltype(w)::value, S = decltype(stages)::value;
        constexpr bool ROPE = decltype(with)::value, INPUTS = decltype(staged)::value;
        kernel = (const void *)mmq_persistent_kernel<NG, W, S, ROPE, INPUTS>;
        shared = mmq_persistent_shared_bytes<NG, W, S, ROPE, INPUTS>(widest);
        min_warps = mmq_persistent_min_warps<NG, INPUTS>();
        return cudaSuccess;
    });
    TM_CUDA_CHECK(cudaGetDevice(&device));
    TM_CUDA_CHECK(tm_allow_dynamic_shared(kernel, shared));
    TM_CUDA_CHECK(tm_resident_blocks(kernel, 32 * warps, shared, &resident));
    TM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (resident < min_warps / warps * sms) return cudaSuccess;
    *slots = resident;
    return cudaSuccess;
}

/* The fraction of its slots' rounds a product of `tiles` tiles keeps busy in `slots` resident blocks
 * (each takes ceil(tiles / slots) tiles or one fewer). */
static double mmq_round_fill(int64_t tiles, int slots) {
    const int64_t rounds = (tiles + slots - 1) / slots;
    return (double)tiles / (double)(rounds * slots);
}

/* Whether a two-group product of `tiles` tiles that takes 4-warp persistent blocks (*resident of
 * them, weights-only stages) stages both groups' activations instead (*staged2; *resident then the
 * staged form's slots): three blocks an SM instead of four (mmq_persistent_min_warps), so only where
 * that form's rounds are fuller (mmq_round_fill, by more than 2 %). Why by rounds: ncu (H200,
 * session 41) of 28672 x 8192 q4_k at 16 tokens, weights-only / staged: long-scoreboard stall an
 * issued instruction 1.37 / 0.56, warp cycles an issued instruction 7.61 / 5.81, but 15.1 / 11.6
 * warps an SM, so the same 0.50 instructions a cycle a scheduler and the same tiles an SM a second;
 * the launch gained 5 % (70.9 -> 67.3 us) by its 1792 tiles filling 90 % of 5 rounds of 396 slots
 * against 85 % of 4 rounds of 528. TM_MMQ_PERSISTENT_INPUTS2=0 never stages them, 2 wherever the
 * staged form fits (measuring aids); TM_MMQ_PERSISTENT_INPUTS=0 turns it off too. Not where a q6_k row
 * makes the stages too large for three blocks an SM (*resident kept). */
static cudaError_t mmq_two_group_staging(int widest, bool rope, int64_t tiles, int *resident, bool *staged2) {
    static const int mode = tm_env_int("TM_MMQ_PERSISTENT_INPUTS2", 1);
    *staged2 = false;
    if (mode == 0 || !mmq_persistent_inputs(4)) return cudaSuccess;
    int staged_slots = 0;
    TM_CUDA_CHECK(mmq_persistent_slots<2>(4, true, widest, rope, &staged_slots));
    if (staged_slots == 0) return cudaSuccess;
    if (mode == 2 || mmq_round_fill(tiles, staged_slots) > mmq_round_fill(tiles, *resident) + 0.02) {
        *staged2 = true;
        *resident = staged_slots;
    }
    return cudaSuccess;
}

/* In how many blocks mmq_persistent_kernel (8 or 4 warps; mmq_persistent_warps) takes a product, or 0 where mmq_kernel takes it:
 * TM_MMQ_PERSISTENT=2 (the default) every product it is offered of 2..8 tokens and those of more
 * than one wave of tiles at 9..16, 1 only products of more than one wave, 0 none (1 and 0:
 * measuring aids); none before sm_90 (not measured there: an RTX 4090 keeps mmq_kernel) or where
 * two of its blocks do not fit an SM. Every resident slot takes a block: an SM's two
 * blocks then hold at most one tile more than the mean (1376 tiles over 264 slots: 11 an SM against
 * 10.4), where spreading them over fewer blocks of ceil(tiles / slots) would leave some SMs one
 * block and others 12 tiles. TM_MMQ_PERSISTENT_BLOCKS=n (a testing aid) counts n slots, so small
 * products take several tiles a block. One launch each (H200, three stages; a kernels suite of the
 * 7B's shapes, 4096-22016 rows, at 4, 8 and 16 tokens), mmq_kernel ->
 * this kernel: q6_k 6-19 % faster at 4, 8 and 16 tokens on 4096-22016 x 4096, and at 4 and 8 on
 * 4096 x 11008; q4_k 1-2 % faster at 12288 and 22016 rows, 1.5-4.7 % slower on 4096 x 4096 and
 * 4096 x 11008 (one wave, its steps still gain); at 16 tokens q6_k 4096 x 11008 (one wave) 11 %
 * slower, hence the rule for 9..16 tokens. Products mmq_wide calls wide (the 70B's at 2..8 tokens)
 * stay with mmq_kernel's staged-activations layout: this kernel on them (staged, 4 warps for
 * gate/up, 8 for the rest) measured slower, H200 session 33, one binary and call, two rounds: 70B
 * 128 x8 512.5, 512.4 -> 478.6, 478.1 tokens/s, 2048 x8 466.5, 467.0 -> 448.3, 449.3 (plain-launch
 * profile: the output, gate/up and down launches 143 -> 159 us a layer); on the Q/K/V launch alone
 * (22.7 against 24.3 us there) 128 x8 533.4, 533.6 -> 530.6, 529.5, 2048 x8 unchanged.
 * At 9..16 tokens the wide products of more than one wave come here too (the 70B's gate/up and
 * Q/K/V in 4-warp blocks; its output and down products, 512 tiles, in 8-warp ones, 264 slots: ncu,
 * session 41): mmq_kernel has no
 * staged-activations layout for two token groups, so its weights-only stages leave q6_k rows read
 * straight from global memory (ncu, 28672 x 8192 q6_k at 16 tokens: 8.7 cycles of long-scoreboard
 * stall an issued instruction, 31 % issue, DRAM 29 %). H200, one binary, two rounds,
 * TM_MMQ_WIDE_PERSISTENT=0 (a measuring aid) / 1: chained 28672 x 8192 (kernels-decode-batched) at
 * 12 and 16 tokens, % of the copy rate: q6_k 39.7, 39.8 / 37.2, 37.4 -> 56.1, 56.5 / 46.4, 46.5;
 * q5_k 53.8, 54.1 / 48.4, 48.4 -> 56.0, 56.1 / 51.3, 51.5; q4_k 56.2, 56.4 / 44.5, 44.5 -> 52.1,
 * 51.8 / 47.7, 47.7; 70B decode 128 x12 532.8 -> 581.5 tokens/s, x16 626.3 -> 692.4.
 * The warps (*warps): unless mmq_persistent_warps fixes them, 4 a block where the product's tiles
 * outnumber the 4-warp slots (several tiles a slot either way: the 7B's gate/up and Q/K/V at 8
 * tokens), 8 otherwise (where 4-warp blocks would leave SMs with fewer warps at work). Two-group
 * products in 4-warp blocks may stage their activations (*staged2, mmq_two_group_staging). */
template <int NG>
static cudaError_t mmq_persistent_blocks(const mmvq_parts &parts, int64_t tiles, bool rope, int *grid, int *warps, bool *staged2) {
    static const int mode = tm_env_int("TM_MMQ_PERSISTENT", 2), cap = tm_env_int("TM_MMQ_PERSISTENT_BLOCKS", 0),
                     with_rope = tm_env_int("TM_MMQ_PERSISTENT_ROPE", 1);
    *grid = 0;
    *warps = mmq_persistent_warps();
    *staged2 = false;
    if (mode == 0 || (rope && !with_rope)) return cudaSuccess;
    const int widest = mmq_widest_row(parts, true);
    int resident = 0;
    if (*warps == 0) {
        TM_CUDA_CHECK(mmq_persistent_slots<NG>(4, false, widest, rope, &resident));
        *warps = resident > 0 && tiles > resident ? 4 : 8;
        if (*warps == 8) TM_CUDA_CHECK(mmq_persistent_slots<NG>(8, false, widest, rope, &resident));
    } else {
        TM_CUDA_CHECK(mmq_persistent_slots<NG>(*warps, false, widest, rope, &resident));
    }
    if (NG == 2 && *warps == 4 && resident > 0) TM_CUDA_CHECK(mmq_two_group_staging(widest, rope, tiles, &resident, staged2));
    if (resident == 0) return cudaSuccess;
    if (cap > 0 && cap < resident) resident = cap;
    if ((mode == 1 || NG == 2) && tiles <= resident) return cudaSuccess;
    *grid = (int)(tiles < resident ? tiles : resident);
    return cudaSuccess;
}

template <int NG>
static cudaError_t launch_mmq_persistent(const mmvq_parts &parts, int64_t cols, const int8_t *qs, const half2 *ds, int n, int64_t tiles,
                                         int grid, int warps, bool staged2, const rope_append *rope, cudaStream_t s) {
    const int widest = mmq_widest_row(parts, true);
    const rope_append targets = rope ? *rope : rope_append{};
    return mmq_persistent_variant<NG>(warps, staged2, rope != nullptr, [&](auto w, auto stages, auto with, auto staged) {
        constexpr int W = decltype(w)::value, S = decltype(stages)::value;
        constexpr bool ROPE = decltype(with)::value, INPUTS = decltype(staged)::value;
        if (INPUTS) tm_note_staged_products(); /* the decode attention then leaves room for these blocks (launch.cuh) */
        TM_LAUNCH_DEPENDENT((mmq_persistent_kernel<NG, W, S, ROPE, INPUTS>), dim3((unsigned)grid), dim3(32 * W),
                            (mmq_persistent_shared_bytes<NG, W, S, ROPE, INPUTS>(widest)), s, parts, cols, qs, ds, n, tiles,
                            gemv_early_weights(), widest, targets);
        return cudaSuccess;
    });
}

/* The tensor-core products when every part's rows divide into 16-row tiles; cudaErrorNotSupported
 * otherwise, or for rows wider than 2^24 (the caller falls back to dp4a). With `rope` (parts Q, K,
 * V) the outputs go through store_tile_rope. */
static cudaError_t launch_mmq(const mmvq_parts &parts, int64_t cols, const void *q8, int n, cudaStream_t s, const rope_append *rope) {
    const int64_t total = rows_in_tiles(parts, MMQ_ROWS);
    if (total < 0 || cols > (1 << 24)) return cudaErrorNotSupported; /* mmq_fetch_block's 32-bit offsets */
    const q8_out x = q8_out_at(q8, n, cols);
    const int8_t *qs = x.qs;
    const half2 *ds = x.ds;
    const int64_t tiles = total / MMQ_ROWS;
    bool wide = false;
    int grid = 0, warps = 8;
    if (n > 8) {
        static const int wide_persistent = tm_env_int("TM_MMQ_WIDE_PERSISTENT", 1); /* mmq_persistent_blocks */
        bool staged2 = false;
        TM_CUDA_CHECK((mmq_wide<2, false>(parts, cols, tiles, &wide)));
        if (!wide || wide_persistent) TM_CUDA_CHECK(mmq_persistent_blocks<2>(parts, tiles, rope != nullptr, &grid, &warps, &staged2));
        if (grid) return launch_mmq_persistent<2>(parts, cols, qs, ds, n, tiles, grid, warps, staged2, rope, s);
        return launch_mmq_layout<2, false>(parts, cols, qs, ds, n, tiles, wide, rope, s);
    }
    int mode = 0;
    TM_CUDA_CHECK(mmq_inputs_mode(&mode));
    if (mode) {
        TM_CUDA_CHECK((mmq_wide<1, true>(parts, cols, tiles, &wide)));
        if (wide || mode == 2) return launch_mmq_layout<1, true>(parts, cols, qs, ds, n, tiles, wide, rope, s);
    }
    TM_CUDA_CHECK((mmq_wide<1, false>(parts, cols, tiles, &wide)));
    bool staged1 = false; /* one token group: mmq_persistent_inputs decides */
    if (!wide) TM_CUDA_CHECK(mmq_persistent_blocks<1>(parts, tiles, rope != nullptr, &grid, &warps, &staged1));
    if (grid) return launch_mmq_persistent<1>(parts, cols, qs, ds, n, tiles, grid, warps, staged1, rope, s);
    return launch_mmq_layout<1, false>(parts, cols, qs, ds, n, tiles, wide, rope, s);
}

template <int NT, int R>
static cudaError_t launch_parts(const mmvq_parts &parts, int64_t cols, const void *q8, int n, cudaStream_t s) {
    const int64_t total = rows_in_tiles(parts, R);
    if (total < 0) return cudaErrorNotSupported;
    const q8_out x = q8_out_at(q8, n, cols);
    TM_LAUNCH_DEPENDENT(mmvq_parts_kernel<NT, R>, dim3((unsigned)((total / R + 3) / 4)), dim3(128), 0, s, parts, cols, x.qs, x.ds, n,
                        gemv_early_weights());
    return cudaSuccess;
}

extern "C" int tm_cuda_gemv_q8_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *q8, int n_tokens,
                                     void *stream) {
    if (cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS)
        return cudaErrorInvalidValue;
    int q8_0_parts = 0;
    for (int i = 0; i < n_parts; i++) q8_0_parts += parts[i].type == Q8_0;
    if (q8_0_parts == n_parts) return tm_cuda_gemv_q8_0_parts(parts, n_parts, cols, q8, n_tokens, stream);
    if (q8_0_parts) return cudaErrorNotSupported; /* q8_0 beside k-quants: a launch each */
    mmvq_parts p = {};
    p.n = n_parts;
    for (int i = 0; i < n_parts; i++) {
        if (!tm_cuda_gemv_q8_supported(parts[i].type) || (uintptr_t)parts[i].weights % 16) return cudaErrorInvalidValue;
        p.weights[i] = (const uint8_t *)parts[i].weights, p.y[i] = parts[i].y, p.rows[i] = parts[i].rows, p.type[i] = parts[i].type;
    }
    cudaStream_t s = (cudaStream_t)stream;
    const cudaError_t status = launch_fast_products(p, cols, q8, n_tokens, s);
    if (status != cudaErrorNotSupported) return status;
    if (n_tokens <= 1) return launch_parts<1, 1>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 2) return launch_parts<2, 2>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 4) return launch_parts<4, 2>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 8) return launch_parts<8, 4>(p, cols, q8, n_tokens, s);
    return launch_parts<16, 4>(p, cols, q8, n_tokens, s);
}

extern "C" int tm_cuda_gemv_q8_qkv_rope(const tm_cuda_gemv_part *parts, int64_t cols, const void *q8, int n_tokens, const tm_cuda_rope_kv *rope,
                                        void *stream) {
    if (!parts || !rope || !rope_append_valid(*rope) || !rope->targets || rope->layer < 0 || cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS)
        return cudaErrorInvalidValue;
    if (rope->kv.type == TM_CUDA_KV_Q8) return cudaErrorNotSupported; /* a tile holds 16 rows of a vector, its scale needs all */
    const int64_t q_rows = (int64_t)rope->n_head * rope->head_dim, kv_rows = (int64_t)rope->n_head_kv * rope->head_dim;
    if (parts[0].rows != q_rows || parts[1].rows != kv_rows || parts[2].rows != kv_rows || !parts[0].y) return cudaErrorInvalidValue;
    mmvq_parts p = {};
    p.n = 3;
    for (int i = 0; i < 3; i++) {
        if (parts[i].type == Q8_0) return cudaErrorNotSupported; /* no rope epilogue in gemv_q8_0.cu: the products, then the rope */
        if (!tm_cuda_gemv_q8_supported(parts[i].type) || (uintptr_t)parts[i].weights % 16) return cudaErrorInvalidValue;
        p.weights[i] = (const uint8_t *)parts[i].weights, p.y[i] = parts[0].y, p.rows[i] = parts[i].rows, p.type[i] = parts[i].type;
    }
    const rope_append e = make_rope_append(*rope);
    cudaStream_t s = (cudaStream_t)stream;
    if (n_tokens >= mmq_min_tokens()) return rope->head_dim % MMQ_ROWS ? cudaErrorNotSupported : launch_mmq(p, cols, q8, n_tokens, s, &e);
    static const int streamed = tm_env_int("TM_GEMV_STREAM", 0); /* the streamed kernel (a measuring aid) has no rope epilogue */
    if (n_tokens == 1 && !streamed) return launch_pairs_kernel(p, cols, q8, s, &e);
    return cudaErrorNotSupported;
}
