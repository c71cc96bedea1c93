/*
 * gemv16.cu - the one-token decode product of f16 and bf16 weights, up to TM_CUDA_GEMV_MAX_PARTS
 * products sharing one input (Q/K/V; gate/up) in one launch.
 *
 * A warp a row (of the parts' rows taken in order); lane l reads the row's 16-byte pieces l,
 * l + 32, ... (8 weights each) in batches of LOADS pieces a lane (2), a row starting at its own batch
 * (its index in its part modulo the row's batches) and wrapping around, every load of a batch issued
 * before the first is used, the first batch before the wait for the previous kernel (weights are
 * written by no kernel, launch.cuh), and dots each piece against the float activations (two
 * 16-byte loads, L1-resident) in float32. The lane's sums run over its pieces in order, then a
 * shuffle reduction: a row's result does not depend on the launch, so a part in one launch equals
 * its own launch bit for bit.
 *
 * Why: one launch a matrix left the small products latency-bound. H200, the 8B's one-token
 * products one at a time (kernels suite, the kernel before this one, % of the copy rate): 1024 x
 * 4096 (K, V) 17 %, 4096 x 4096 (Q, O) 55 %, 14336 x 4096 (gate, up) and 4096 x 14336 (down) 75 %,
 * 128256 x 4096 (LM head) 96 %; in the 8B x1 step's profile K and V took 8.6 us each for 8.4 MB.
 * Q/K/V (50 MB) and gate/up (235 MB) now take one launch each. 8B decode x1, tokens/s (H200, one
 * binary): the kernel before 193.7 / 194.2; this kernel a launch a matrix 193.6 / 193.5; parts in
 * one launch, batches of 8 pieces 207.6 / 207.7, of 4 219.4 / 219.3, of 2 236.9 / 236.5, of 1
 * 221.8 / 221.3. Larger batches put more bytes in flight a warp but lost: one at a time, 4096 x
 * 14336 took 47.2 us at 8 pieces against the kernel before's 36.6 (the cause not measured;
 * registers 56 at 8, 40 at 2).
 *
 * Why the rotation: the warps of a launch of one wave or so run in step, so without it they all read
 * the same column of rows a row's length apart (8 or 28 KB) at a time; starting each row at its own
 * batch spreads them over the columns. H200, kernels suite, one launch each, us without / with:
 * 4096 x 14336 40.2 / 32.7 (68 -> 84 % of the copy rate), 4096 x 4096 14.5 / 12.9, 1024 x 4096 11.2 /
 * 9.3, 14336 x 4096 36.2 / 33.3, 28672 x 4096 (gate/up together) 63.5 / 58.6 (86 -> 94 %); 8B decode
 * x1 236.0 / 236.5 -> 241.0 / 241.6 tokens/s (within the step the next launch's blocks start as the
 * last one's leave, so the warps are in step less than one launch alone). The same rotation measured
 * slower in gemv_q8.cu's pairs_kernel (7B x1 532 -> 520, 70B x1 73.5 -> 72.0) and no faster in
 * gemv_mma16.cu (its extra registers cost the 8B x8 3.5 %).
 *
 * TM_GEMV16=0 (a measuring aid, read once) takes the kernel before, one launch a matrix; 1 this
 * kernel, one launch a matrix; 3 this kernel for parts, the one before for a single f16 matrix
 * (8B x1 212.6 at 8 pieces, against 207.8 for parts and singles here); TM_GEMV16_LOADS=4 or 8
 * other batch sizes, TM_GEMV16_ROTATE=0 every row from column 0.
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "launch.cuh"
#include "quant.cuh"
#include "row_parts.cuh"

#define GEMV16_THREADS 256 /* 8 rows a block */

/* dot of 8 weights (one 16-byte piece) with 8 activations */
template <int TYPE> __device__ __forceinline__ float piece_dot(const uint4 &piece, const float4 &a, const float4 &b) {
    float2 w[4];
    if (TYPE == F16) {
        const __half2 *h = reinterpret_cast<const __half2 *>(&piece);
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = __half22float2(h[i]);
    } else {
        const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&piece);
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = __bfloat1622float2(h[i]);
    }
    return w[0].x * a.x + w[0].y * a.y + w[1].x * a.z + w[1].y * a.w + w[2].x * b.x + w[2].y * b.y + w[3].x * b.z + w[3].y * b.w;
}

template <int TYPE, int LOADS>
__global__ void __launch_bounds__(GEMV16_THREADS, 4) gemv16_kernel(row_parts p, int64_t cols, const float *x, int rotate) {
    const int64_t all_rows = p.all_rows, at = ((int64_t)blockIdx.x * GEMV16_THREADS + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    const part_row here = part_row_of(p, at);
    const int64_t row = here.row;
    const int pieces = (int)(cols / 8);
    const uint4 *w = part_field(p.weights, here.part) + row * pieces;
    float *y = part_field(p.y, here.part);
    /* a row starts at its own batch (row % batches) and wraps around, so that the warps of a launch, which run in step,
       read different columns of their rows at a time rather than addresses a row's length apart */
    const int batches = (pieces + 32 * LOADS - 1) / (32 * LOADS);
    int first = rotate ? (int)(row % batches) * 32 * LOADS : 0;
    uint4 batch[LOADS];
    if (at < all_rows)
#pragma unroll
        for (int u = 0; u < LOADS; u++) {
            const int c = first + lane + 32 * u;
            batch[u] = c < pieces ? ldg_stream16(w + c) : make_uint4(0, 0, 0, 0);
        }
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (at >= all_rows) return;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float sum = 0;
    for (int b = 0; b < batches; b++) {
        if (b) { /* the next batch (the first was loaded before the wait) */
            first += 32 * LOADS;
            if (first >= pieces) first = 0;
#pragma unroll
            for (int u = 0; u < LOADS; u++) {
                const int c = first + lane + 32 * u;
                batch[u] = c < pieces ? ldg_stream16(w + c) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < LOADS; u++) {
            const int c = first + lane + 32 * u;
            if (c < pieces) sum += piece_dot<TYPE>(batch[u], __ldg(x4 + 2 * c), __ldg(x4 + 2 * c + 1));
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

/* The kernel before (TM_GEMV16=0): f16 only, one matrix, two pieces a lane in flight. */
__global__ void gemv_f16_kernel(const __half *weights, int64_t rows, int64_t cols, const float *x, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (row >= rows) return;
    const uint4 *w = reinterpret_cast<const uint4 *>(weights + row * cols);
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    const int64_t chunks = cols / 8;
    float sum = 0;
    for (int64_t c = lane; c < chunks; c += 64) {
        uint4 packed[2];
        packed[0] = ldg_stream16(w + c);
        if (c + 32 < chunks) packed[1] = ldg_stream16(w + c + 32);
#pragma unroll
        for (int u = 0; u < 2; u++) {
            int64_t chunk = c + 32 * u;
            if (chunk >= chunks) break;
            sum += piece_dot<F16>(packed[u], x4[2 * chunk], x4[2 * chunk + 1]);
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

template <int TYPE>
static cudaError_t launch_parts(const row_parts &p, int64_t cols, const float *x, cudaStream_t stream) {
    static const int loads = tm_env_int("TM_GEMV16_LOADS", 2), rotate = tm_env_int("TM_GEMV16_ROTATE", 1);
    const dim3 grid((unsigned)((p.all_rows * 32 + GEMV16_THREADS - 1) / GEMV16_THREADS)), block(GEMV16_THREADS);
    if (loads == 4) return tm_launch_dependent(gemv16_kernel<TYPE, 4>, grid, block, 0, stream, p, cols, x, rotate);
    if (loads == 8) return tm_launch_dependent(gemv16_kernel<TYPE, 8>, grid, block, 0, stream, p, cols, x, rotate);
    return tm_launch_dependent(gemv16_kernel<TYPE, 2>, grid, block, 0, stream, p, cols, x, rotate);
}

extern "C" int tm_cuda_gemv_16bit_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, void *stream) {
    static const int mode = tm_env_int("TM_GEMV16", 2);
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS || cols < 8 || cols % 8 || (uintptr_t)x % 16) return cudaErrorNotSupported;
    const int type = parts[0].type;
    row_parts p;
    if ((type != F16 && type != BF16) || !row_parts_of(parts, n_parts, type, &p)) return cudaErrorNotSupported;
    if (mode == 0 || (mode == 1 && n_parts > 1) || (mode == 3 && n_parts == 1 && type == F16)) {
        if (type != F16 || n_parts > 1) return cudaErrorNotSupported;
        const dim3 grid((unsigned)((parts[0].rows * 32 + 255) / 256));
        return tm_launch_dependent(gemv_f16_kernel, grid, dim3(256), 0, (cudaStream_t)stream, (const __half *)parts[0].weights, parts[0].rows,
                                   cols, x, parts[0].y);
    }
    return type == F16 ? launch_parts<F16>(p, cols, x, (cudaStream_t)stream) : launch_parts<BF16>(p, cols, x, (cudaStream_t)stream);
}
