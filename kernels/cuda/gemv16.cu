/*
 * gemv16.cu - the one-token decode product of f16 and bf16 weights, up to TM_CUDA_GEMV_MAX_PARTS
 * products sharing one input (Q/K/V; gate/up) in one launch.
 *
 * A warp a row (of the parts' rows taken in order); lane l reads the row's 16-byte pieces l,
 * l + 32, ... (8 weights each) in batches of LOADS pieces a lane (2), every load of a batch issued
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
 * TM_GEMV16=0 (a measuring aid, read once) takes the kernel before, one launch a matrix; 1 this
 * kernel, one launch a matrix; 3 this kernel for parts, the one before for a single f16 matrix
 * (8B x1 212.6 at 8 pieces, against 207.8 for parts and singles here); TM_GEMV16_LOADS=4 or 8
 * other batch sizes.
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "launch.cuh"
#include "quant.cuh"

#define GEMV16_THREADS 256 /* 8 rows a block */

struct gemv16_parts {
    const uint4 *weights[TM_CUDA_GEMV_MAX_PARTS];
    float *y[TM_CUDA_GEMV_MAX_PARTS];
    int64_t end[TM_CUDA_GEMV_MAX_PARTS]; /* rows of parts 0..i together */
    int64_t all_rows; /* end[n_parts - 1], kept apart: a dynamic index would copy the parameters to the stack */
    int n_parts;
};

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
__global__ void __launch_bounds__(GEMV16_THREADS, 4) gemv16_kernel(gemv16_parts p, int64_t cols, const float *x) {
    const int64_t all_rows = p.all_rows, at = ((int64_t)blockIdx.x * GEMV16_THREADS + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    /* the part by constant indices (a dynamic index would copy the parameters to the stack) */
    const int part = at < p.end[0] ? 0 : at < p.end[1] || p.n_parts < 3 ? 1 : 2;
    const int64_t row = at - (part == 0 ? 0 : part == 1 ? p.end[0] : p.end[1]);
    const int pieces = (int)(cols / 8);
    const uint4 *w = (part == 0 ? p.weights[0] : part == 1 ? p.weights[1] : p.weights[2]) + row * pieces;
    float *y = part == 0 ? p.y[0] : part == 1 ? p.y[1] : p.y[2];
    uint4 batch[LOADS];
    if (at < all_rows)
#pragma unroll
        for (int u = 0; u < LOADS; u++) batch[u] = lane + 32 * u < pieces ? ldg_stream16(w + lane + 32 * u) : make_uint4(0, 0, 0, 0);
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (at >= all_rows) return;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float sum = 0;
    for (int first = 0; first < pieces; first += 32 * LOADS) {
        if (first) /* the next batch (the first was loaded before the wait) */
#pragma unroll
            for (int u = 0; u < LOADS; u++) {
                const int c = first + lane + 32 * u;
                batch[u] = c < pieces ? ldg_stream16(w + c) : make_uint4(0, 0, 0, 0);
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
static cudaError_t launch_parts(const gemv16_parts &p, int64_t cols, const float *x, cudaStream_t stream) {
    static const int loads = tm_env_int("TM_GEMV16_LOADS", 2);
    const dim3 grid((unsigned)((p.all_rows * 32 + GEMV16_THREADS - 1) / GEMV16_THREADS)), block(GEMV16_THREADS);
    if (loads == 4) return tm_launch_dependent(gemv16_kernel<TYPE, 4>, grid, block, 0, stream, p, cols, x);
    if (loads == 8) return tm_launch_dependent(gemv16_kernel<TYPE, 8>, grid, block, 0, stream, p, cols, x);
    return tm_launch_dependent(gemv16_kernel<TYPE, 2>, grid, block, 0, stream, p, cols, x);
}

extern "C" int tm_cuda_gemv_16bit_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const float *x, void *stream) {
    static const int mode = tm_env_int("TM_GEMV16", 2);
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS || cols < 8 || cols % 8 || (uintptr_t)x % 16) return cudaErrorNotSupported;
    const int type = parts[0].type;
    gemv16_parts p = {};
    p.n_parts = n_parts;
    for (int i = 0; i < n_parts; i++) {
        if (parts[i].type != type || (type != F16 && type != BF16) || parts[i].rows < 1 || (uintptr_t)parts[i].weights % 16)
            return cudaErrorNotSupported;
        p.weights[i] = (const uint4 *)parts[i].weights, p.y[i] = parts[i].y;
        p.end[i] = parts[i].rows + (i ? p.end[i - 1] : 0);
    }
    p.all_rows = p.end[n_parts - 1];
    if (mode == 0 || (mode == 1 && n_parts > 1) || (mode == 3 && n_parts == 1 && type == F16)) {
        if (type != F16 || n_parts > 1) return cudaErrorNotSupported;
        const dim3 grid((unsigned)((parts[0].rows * 32 + 255) / 256));
        return tm_launch_dependent(gemv_f16_kernel, grid, dim3(256), 0, (cudaStream_t)stream, (const __half *)parts[0].weights, parts[0].rows,
                                   cols, x, parts[0].y);
    }
    return type == F16 ? launch_parts<F16>(p, cols, x, (cudaStream_t)stream) : launch_parts<BF16>(p, cols, x, (cudaStream_t)stream);
}
