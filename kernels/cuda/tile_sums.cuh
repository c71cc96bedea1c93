/*
 * tile_sums.cuh - the end of the tensor-core decode products (gemv_q8.cu's int8 tiles,
 * gemv_mma16.cu's 16-bit ones): a 16-row tile's m16n8 accumulators, split over a block's warps
 * by columns, added in warp order and stored.
 */
#ifndef TM_CUDA_TILE_SUMS_CUH
#define TM_CUDA_TILE_SUMS_CUH

#include <stdint.h>

/* acc[G][2r + k] of lane (g = lane / 4, t = lane % 4) holds row row0 + g + 8r, token 8G + 2t + k.
 * Warps 1..WARPS-1 leave theirs in `partial` (shared memory, (WARPS - 1) * NG * 4 * 32 floats, free
 * for it) and get false; warp 0 adds them to its own in warp order (the same order on every run)
 * and gets true, its acc then holding the tile's sums. Every thread of the block calls it. */
template <int NG, int WARPS>
__device__ __forceinline__ bool add_tile_sums(float (&acc)[NG][4], float (*partial)[NG * 4][32]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (warp > 0)
#pragma unroll
        for (int G = 0; G < NG; G++)
#pragma unroll
            for (int i = 0; i < 4; i++) partial[warp - 1][G * 4 + i][lane] = acc[G][i];
    __syncthreads();
    if (warp > 0) return false;
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int w = 0; w < WARPS - 1; w++) acc[G][i] += partial[w][G * 4 + i][lane];
    return true;
}

/* Warp 0's tile sums into y[token][row] (rows a token) for tokens below n_tokens. */
template <int NG>
__device__ __forceinline__ void write_tile_sums(const float (&sums)[NG][4], float *y, int64_t rows, int64_t row0, int n_tokens) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int token = G * 8 + 2 * t + i % 2;
            const int64_t row = row0 + g + 8 * (i / 2);
            if (token < n_tokens) y[token * rows + row] = sums[G][i];
        }
}

/* add_tile_sums, then warp 0 stores y (write_tile_sums). */
template <int NG, int WARPS>
__device__ __forceinline__ void store_tile_sums(const float (&acc)[NG][4], float (*partial)[NG * 4][32], float *y, int64_t rows,
                                                int64_t row0, int n_tokens) {
    float sums[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) sums[G][i] = acc[G][i];
    if (!add_tile_sums<NG, WARPS>(sums, partial)) return;
    write_tile_sums<NG>(sums, y, rows, row0, n_tokens);
}

/* The same where each of WARPS warps holds CLASSES_A_WARP classes' sums, acc[c] being class
 * warp + c * WARPS's: the WARPS * CLASSES_A_WARP classes added in class order, class 0 first,
 * exactly as add_tile_sums adds as many warps of one class each (the same bits). */
template <int NG, int WARPS, int CLASSES_A_WARP>
__device__ __forceinline__ void store_class_sums(const float (&acc)[CLASSES_A_WARP][NG][4], float (*partial)[NG * 4][32], float *y,
                                                 int64_t rows, int64_t row0, int n_tokens) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int c = 0; c < CLASSES_A_WARP; c++) {
        const int k = warp + c * WARPS; /* this sum's class */
        if (k > 0)
#pragma unroll
            for (int G = 0; G < NG; G++)
#pragma unroll
                for (int i = 0; i < 4; i++) partial[k - 1][G * 4 + i][lane] = acc[c][G][i];
    }
    __syncthreads();
    if (warp > 0) return;
    float sums[NG][4];
#pragma unroll
    for (int G = 0; G < NG; G++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            sums[G][i] = acc[0][G][i];
#pragma unroll
            for (int k = 0; k < WARPS * CLASSES_A_WARP - 1; k++) sums[G][i] += partial[k][G * 4 + i][lane];
        }
    write_tile_sums<NG>(sums, y, rows, row0, n_tokens);
}

#endif /* TM_CUDA_TILE_SUMS_CUH */
