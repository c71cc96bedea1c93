/*
 * tile_sums.cuh - the end of the tensor-core decode products (gemv_q8.cu's int8 tiles,
 * gemv_mma16.cu's 16-bit ones): a 16-row tile's m16n8 accumulators, split over a block's warps
 * by columns (a warp one class of them, or several), added in class order and stored.
 */
#ifndef TM_CUDA_TILE_SUMS_CUH
#define TM_CUDA_TILE_SUMS_CUH

#include <stdint.h>

/* acc[c][G][2r + k] of lane (g = lane / 4, t = lane % 4) holds row row0 + g + 8r, token 8G + 2t + k
 * of class warp + c * WARPS: a tile's columns dealt to WARPS * CLASSES classes, CLASSES a warp (1
 * where a warp is a class). The classes other than 0 leave theirs in `partial` (shared memory,
 * (WARPS * CLASSES - 1) * NG * 4 * 32 floats, free for it); warp 0 adds them to class 0's in class
 * order (the same order on every run, and the same sums for any split of the classes over warps)
 * and gets true, its acc[0] then holding the tile's sums; the other warps get false. Every thread
 * of the block calls it. */
template <int NG, int WARPS, int CLASSES>
__device__ __forceinline__ bool add_class_sums(float (&acc)[CLASSES][NG][4], float (*partial)[NG * 4][32]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int c = 0; c < CLASSES; c++) {
        const int k = warp + c * WARPS; /* this sum's class */
        if (k > 0)
#pragma unroll
            for (int G = 0; G < NG; G++)
#pragma unroll
                for (int i = 0; i < 4; i++) partial[k - 1][G * 4 + i][lane] = acc[c][G][i];
    }
    __syncthreads();
    if (warp > 0) return false;
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int k = 0; k < WARPS * CLASSES - 1; k++) acc[0][G][i] += partial[k][G * 4 + i][lane];
    return true;
}

/* add_class_sums where each warp is one class: warp 0's acc holds the tile's sums (true). */
template <int NG, int WARPS>
__device__ __forceinline__ bool add_tile_sums(float (&acc)[NG][4], float (*partial)[NG * 4][32]) {
    return add_class_sums<NG, WARPS, 1>(reinterpret_cast<float(&)[1][NG][4]>(acc), partial);
}

/* add_class_sums, then warp 0 stores y[token][row] (rows a token) for tokens below n_tokens. */
template <int NG, int WARPS, int CLASSES>
__device__ __forceinline__ void store_class_sums(const float (&acc)[CLASSES][NG][4], float (*partial)[NG * 4][32], float *y,
                                                 int64_t rows, int64_t row0, int n_tokens) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    float sums[CLASSES][NG][4];
#pragma unroll
    for (int c = 0; c < CLASSES; c++)
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) sums[c][G][i] = acc[c][G][i];
    if (!add_class_sums<NG, WARPS, CLASSES>(sums, partial)) return;
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int token = G * 8 + 2 * t + i % 2;
            const int64_t row = row0 + g + 8 * (i / 2);
            if (token < n_tokens) y[token * rows + row] = sums[0][G][i];
        }
}

/* store_class_sums where each warp is one class. */
template <int NG, int WARPS>
__device__ __forceinline__ void store_tile_sums(const float (&acc)[NG][4], float (*partial)[NG * 4][32], float *y, int64_t rows,
                                                int64_t row0, int n_tokens) {
    store_class_sums<NG, WARPS, 1>(reinterpret_cast<const float(&)[1][NG][4]>(acc), partial, y, rows, row0, n_tokens);
}

#endif /* TM_CUDA_TILE_SUMS_CUH */
