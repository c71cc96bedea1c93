/*
 * row_parts.cuh - up to TM_CUDA_GEMV_MAX_PARTS products sharing one input in one launch: a warp a
 * row of the parts' rows taken in order (row_parts: gemv16.cu, gemv_q8_0.cu's dp4a kernel) or a
 * block a 16-row tile of them (tile_parts: gemv_mma16.cu, gemv_q8_0.cu's tensor-core kernel). The
 * launch's description and where a row or tile of it belongs. The part is picked by constant
 * indices: a dynamic index into the parameters would copy them to the stack (seen with -Xptxas -v:
 * 80 bytes).
 */
#ifndef TM_CUDA_ROW_PARTS_CUH
#define TM_CUDA_ROW_PARTS_CUH

#include "common.cuh"
#include "kernels.h"

struct row_parts {
    const uint4 *weights[TM_CUDA_GEMV_MAX_PARTS];
    float *y[TM_CUDA_GEMV_MAX_PARTS];
    int64_t rows[TM_CUDA_GEMV_MAX_PARTS];
    int64_t end[TM_CUDA_GEMV_MAX_PARTS]; /* rows of parts 0..i together */
    int64_t all_rows;                    /* end[n_parts - 1], kept apart: a dynamic index would copy the parameters to the stack */
    int n_parts;
};

/* The launch of `parts` (1..TM_CUDA_GEMV_MAX_PARTS, each of `type` with at least a row and 16-byte
 * aligned weights): false, *out untouched, for any other. */
static inline bool row_parts_of(const tm_cuda_gemv_part *parts, int n_parts, int type, row_parts *out) {
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS) return false;
    row_parts p = {};
    p.n_parts = n_parts;
    for (int i = 0; i < n_parts; i++) {
        if (parts[i].type != type || parts[i].rows < 1 || (uintptr_t)parts[i].weights % 16) return false;
        p.weights[i] = (const uint4 *)parts[i].weights, p.y[i] = parts[i].y, p.rows[i] = parts[i].rows;
        p.end[i] = parts[i].rows + (i ? p.end[i - 1] : 0);
    }
    p.all_rows = p.end[n_parts - 1];
    *out = p;
    return true;
}

/* Row `at` of the launch (below all_rows): its part, and its row there. */
struct part_row {
    int part;
    int64_t row;
};
__device__ __forceinline__ part_row part_row_of(const row_parts &p, int64_t at) {
    const int part = at < p.end[0] ? 0 : at < p.end[1] || p.n_parts < 3 ? 1 : 2;
    return {part, at - (part == 0 ? 0 : part == 1 ? p.end[0] : p.end[1])};
}

/* field[part] by constant indices */
template <typename T> __device__ __forceinline__ T part_field(const T (&field)[TM_CUDA_GEMV_MAX_PARTS], int part) {
    return part == 0 ? field[0] : part == 1 ? field[1] : field[2];
}

/* A launch of a block a 16-row tile: part i's tiles follow part i - 1's. */
#define TM_TILE_ROWS 16
struct tile_parts {
    const uint4 *weights[TM_CUDA_GEMV_MAX_PARTS];
    float *y[TM_CUDA_GEMV_MAX_PARTS];
    int64_t rows[TM_CUDA_GEMV_MAX_PARTS];
    int tiles_end[TM_CUDA_GEMV_MAX_PARTS]; /* tiles of parts 0..i together */
    int n_parts;
};

/* The launch of `parts` (1..TM_CUDA_GEMV_MAX_PARTS, each of `type`, rows a multiple of 16, 16-byte
 * aligned weights, at most INT32_MAX tiles in all): false, *out untouched, for any other. */
static inline bool tile_parts_of(const tm_cuda_gemv_part *parts, int n_parts, int type, tile_parts *out) {
    if (n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS) return false;
    tile_parts p = {};
    p.n_parts = n_parts;
    int64_t tiles = 0;
    for (int i = 0; i < n_parts; i++) {
        if (parts[i].type != type || parts[i].rows < 0 || parts[i].rows % TM_TILE_ROWS || (uintptr_t)parts[i].weights % 16) return false;
        tiles += parts[i].rows / TM_TILE_ROWS;
        if (tiles > INT32_MAX) return false;
        p.weights[i] = (const uint4 *)parts[i].weights, p.y[i] = parts[i].y, p.rows[i] = parts[i].rows, p.tiles_end[i] = (int)tiles;
    }
    *out = p;
    return true;
}

/* The part tile `tile` of the launch belongs to, and (tile_row0) its first row there. */
__device__ __forceinline__ int tile_part_of(const tile_parts &p, int tile) {
    return tile < p.tiles_end[0] ? 0 : tile < p.tiles_end[1] || p.n_parts < 3 ? 1 : 2;
}
__device__ __forceinline__ int64_t tile_row0(const tile_parts &p, int tile, int part) {
    return (int64_t)(tile - (part == 0 ? 0 : part == 1 ? p.tiles_end[0] : p.tiles_end[1])) * TM_TILE_ROWS;
}

#endif /* TM_CUDA_ROW_PARTS_CUH */
