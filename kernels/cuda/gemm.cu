/*
 * gemm.cu - the prefill matrix product on tensor cores: Y[T x rows] = X[T x cols] W^T through
 * cuBLAS GemmEx (f16 or bf16 inputs, float32 accumulation and output). The activations are
 * rounded once to the weight's 16-bit type; quantized weights are dequantized to f16 one row
 * tile at a time into the caller's workspace (tiles of equal rows, a multiple of 256, as large as
 * the workspace allows), each tile multiplied as soon as it is ready. f32 weights go through
 * SGEMM (no rounding).
 *
 * Cost: per tile, the dequantization writes and cuBLAS reads 2 bytes per weight element next to
 * the ~0.56 bytes (q4_k) read from the GGUF blocks. A 70B prefill of 512 tokens (H200 profile,
 * before the contiguous stores and the even tiles) spent 32 % of its kernel time dequantizing at
 * 2.3 TB/s and 30 % in an sm80 cuBLAS kernel picked for 2340-row tiles; both fixed, the row went
 * 1888 -> 2845 tokens/s. q4_k, q5_k and q6_k weights go to gemm_fused.cu instead (dequantized
 * inside the tensor-core product) where that measured faster (tm_cuda_gemm_fused decides).
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdlib.h>

#include "kernels.h"
#include "launch.cuh"
#include "quant.cuh"

#define TILE_ROWS_MIN 128

template <int TYPE>
__global__ void dequantize_f16_kernel(const uint8_t *weights, int64_t rows, int64_t cols, __half *out) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= rows * cols) return;
    int64_t row = index / cols, i = index % cols;
    out[index] = __float2half_rn(row_value<TYPE>(weights + row * (cols / traits<TYPE>::block * traits<TYPE>::stride), cols, i));
}

/* k-quants: one warp per 256-element block, each lane eight consecutive elements (1/4 of a
 * sub-block), stored as one 16-byte vector of halves: a warp writes 512 contiguous bytes per
 * store (a thread per 32-element sub-block storing four vectors 64 bytes apart measured 2.3 TB/s
 * on the H200, half its copy rate). */
template <int TYPE> __device__ __forceinline__ void k_octet_floats(const uint8_t *b, int sub, int first, float (&w)[8]) {
    if (TYPE == Q4_K || TYPE == Q5_K) {
        int scale, min;
        k_scale_min(sub, b + 4, &scale, &min);
        const float d = half_at(b) * scale, m = half_at(b + 2) * min;
        const int quants_at = TYPE == Q5_K ? 48 : 16, shift = (sub & 1) * 4;
        const uint2 q = *reinterpret_cast<const uint2 *>(b + quants_at + 32 * (sub / 2) + first); /* 144/176-byte blocks: 16-byte aligned */
        const uint2 h = TYPE == Q5_K ? *reinterpret_cast<const uint2 *>(b + 16 + first) : make_uint2(0, 0);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t word = k < 4 ? q.x : q.y, high = k < 4 ? h.x : h.y;
            const int byte = 8 * (k % 4);
            const int value = (int)((word >> (byte + shift)) & 0xF) | (int)((high >> (byte + sub)) & 1) << 4;
            w[k] = d * value - m;
        }
    } else { /* Q6_K: 224-byte blocks in device memory (16-byte aligned): 8-byte loads of the 8 quants' bytes */
        const int half = sub / 4, group = sub % 4;
        const uint2 low8 = *reinterpret_cast<const uint2 *>(b + 64 * half + ((group & 1) ? 32 : 0) + first);
        const uint2 high8 = *reinterpret_cast<const uint2 *>(b + 128 + 32 * half + first);
        const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
        const float scale = half_at(b + 208) * (float)reinterpret_cast<const int8_t *>(b + 192)[2 * sub + first / 16];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t low_word = k < 4 ? low8.x : low8.y, high_word = k < 4 ? high8.x : high8.y;
            const int byte = 8 * (k % 4);
            const int low = (int)((low_word >> (byte + low_shift)) & 0xF), high = (int)((high_word >> (byte + high_shift)) & 3);
            w[k] = scale * (float)((low | high << 4) - 32);
        }
    }
}

template <int TYPE>
__global__ void dequantize_k_f16_kernel(const uint8_t *weights, int64_t rows, int64_t cols, __half *out) {
    const int64_t thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, block = thread / 32; /* 256-element block */
    if (block >= rows * cols / 256) return;
    const int lane = (int)(thread % 32), sub = lane / 4, first = 8 * (lane % 4);
    const int64_t blocks_per_row = cols / 256;
    const uint8_t *b = weights + (block / blocks_per_row) * blocks_per_row * traits<TYPE>::stride + (block % blocks_per_row) * traits<TYPE>::stride;
    float w[8];
    k_octet_floats<TYPE>(b, sub, first, w);
    __half2 h[4];
#pragma unroll
    for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(w[2 * j], w[2 * j + 1]);
    reinterpret_cast<uint4 *>(out)[thread] = *reinterpret_cast<uint4 *>(h); /* element 8 * thread */
}

/* q8_0's split rows (weights.cu), cols % 256 == 0 (rows 16-byte aligned): eight consecutive
 * elements a thread, an 8-byte load of values, their block's scale, a 16-byte store; the same
 * values as dequantize_f16_kernel's row_value. */
__global__ void dequantize_q8_0_f16_kernel(const uint8_t *weights, int64_t rows, int64_t cols, __half *out) {
    const int64_t thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, first = 8 * thread;
    if (first >= rows * cols) return;
    const int64_t row = first / cols, col = first % cols;
    const uint8_t *w = weights + row * (cols / 32 * 34);
    const uint2 q = *reinterpret_cast<const uint2 *>(w + col);
    const float d = half_at(w + cols + 2 * (col / 32));
    __half2 h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t word = k < 2 ? q.x : q.y;
        const int shift = 16 * (k % 2);
        h[k] = __floats2half2_rn(d * (float)(int8_t)(word >> shift), d * (float)(int8_t)(word >> (shift + 8)));
    }
    reinterpret_cast<uint4 *>(out)[thread] = *reinterpret_cast<uint4 *>(h);
}

__global__ void to_half_kernel(const float *x, int64_t n, __half *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half_rn(x[i]);
}

/* Four elements a thread (16-byte loads, 8-byte stores), used when n and x allow it. */
__global__ void to_half4_kernel(const float4 *x, int64_t n4, uint2 *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 v = x[i];
    __half2 h[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
    out[i] = *reinterpret_cast<uint2 *>(h);
}

__global__ void to_bf16_kernel(const float *x, int64_t n, __nv_bfloat16 *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

static unsigned grid_for(int64_t n) { return (unsigned)((n + 255) / 256); }

#define CHECK_CUBLAS(call)                                                                                       \
    do {                                                                                                         \
        cublasStatus_t tm_cublas_status_ = (call);                                                               \
        if (tm_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            fprintf(stderr, "cuBLAS error %s in %s at %s:%d\n", cublasGetStatusString(tm_cublas_status_), #call,  \
                    __FILE__, __LINE__);                                                                         \
            return -(int)tm_cublas_status_;                                                                      \
        }                                                                                                        \
    } while (0)

/* Y (col-major rows x T, ldc = ldc) = op(A)^T B for A a row-major tile of `rows` x cols. */
static int gemm_16bit(cublasHandle_t handle, cudaDataType type, const void *a, int64_t rows, int64_t cols, const void *b,
                      int n_tokens, float *y, int64_t ldc) {
    const float one = 1.0f, zero = 0.0f;
    CHECK_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n_tokens, (int)cols, &one, a, type, (int)cols, b, type,
                              (int)cols, &zero, y, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Rows per tile when the matrix takes several: the same number in every tile, a multiple of 256
 * (cuBLAS's large tiles; a 2340-row tile of a 70B down projection ran on an sm80 kernel at 270
 * TFLOP/s where 8192-row tiles got 620 on the H200), never above `capacity` rows. */
static int64_t even_tile_rows(int64_t rows, int64_t capacity) {
    const int64_t align = 256;
    if (capacity < align) return capacity;
    const int64_t n_tiles = (rows + capacity - 1) / capacity;
    const int64_t even = ((rows + n_tiles - 1) / n_tiles + align - 1) / align * align;
    return even <= capacity ? even : capacity / align * align;
}

/* TM_GEMM_Q80_FAST=0 (a measuring aid) dequantizes q8_0 for cuBLAS a value a thread (row_value). */
static bool dequantize_q8_0_fast(void) {
    static const bool fast = tm_env_int("TM_GEMM_Q80_FAST", 1) != 0;
    return fast;
}

extern "C" uint64_t tm_cuda_gemm_min_workspace(int64_t cols, int n_tokens) {
    return (uint64_t)cols * 2 * ((uint64_t)n_tokens + TILE_ROWS_MIN);
}

extern "C" int tm_cuda_gemm(void *cublas, int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens,
                            float *y, void *workspace, uint64_t workspace_bytes, void *stream_pointer) {
    cublasHandle_t handle = (cublasHandle_t)cublas;
    cudaStream_t stream = (cudaStream_t)stream_pointer;
    if (n_tokens < 1 || rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX) return cudaErrorInvalidValue;
    CHECK_CUBLAS(cublasSetStream(handle, stream));
    if (type == F32) {
        const float one = 1.0f, zero = 0.0f;
        CHECK_CUBLAS(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, n_tokens, (int)cols, &one, (const float *)weights,
                                 (int)cols, x, (int)cols, &zero, y, (int)rows));
        return 0;
    }
    const int64_t n_x = (int64_t)n_tokens * cols;
    if (workspace_bytes < tm_cuda_gemm_min_workspace(cols, n_tokens)) return cudaErrorInvalidValue;
    uint8_t *converted = (uint8_t *)workspace, *tile = converted + ((n_x * 2 + 255) / 256) * 256;
    if (type == BF16) {
        to_bf16_kernel<<<grid_for(n_x), 256, 0, stream>>>(x, n_x, (__nv_bfloat16 *)converted);
        TM_CUDA_CHECK_LAUNCH();
        return gemm_16bit(handle, CUDA_R_16BF, weights, rows, cols, converted, n_tokens, y, rows);
    }
    if (n_x % 4 == 0 && (uintptr_t)x % 16 == 0)
        to_half4_kernel<<<grid_for(n_x / 4), 256, 0, stream>>>((const float4 *)x, n_x / 4, (uint2 *)converted);
    else
        to_half_kernel<<<grid_for(n_x), 256, 0, stream>>>(x, n_x, (__half *)converted);
    TM_CUDA_CHECK_LAUNCH();
    if (type == F16) return gemm_16bit(handle, CUDA_R_16F, weights, rows, cols, converted, n_tokens, y, rows);
    const int fused = tm_cuda_gemm_fused(type, weights, rows, cols, converted, n_tokens, y, stream);
    if (fused != cudaErrorNotSupported) return fused;
    /* quantized: dequantize a row tile, multiply it, next tile */
    uint64_t tile_capacity = workspace_bytes - (uint64_t)(tile - converted);
    static const int tile_megabytes = tm_env_int("TM_GEMM_TILE_MB", 0); /* a measuring aid: tiles of at most that many MiB */
    const uint64_t tile_cap = tile_megabytes > 0 ? (uint64_t)tile_megabytes << 20 : UINT64_MAX;
    if (tile_capacity > tile_cap) tile_capacity = tile_cap;
    int64_t tile_rows = (int64_t)(tile_capacity / ((uint64_t)cols * 2));
    if (tile_rows < 1) return cudaErrorInvalidValue;
    if (tile_rows >= rows) tile_rows = rows;
    else tile_rows = even_tile_rows(rows, tile_rows);
    int cublas_failure = 0;
    cudaError_t status = dispatch_weight_type(type, [&](auto t) -> cudaError_t {
        constexpr int TYPE = decltype(t)::value;
        if (cols % traits<TYPE>::block) return cudaErrorInvalidValue;
        const int64_t row_bytes = cols / traits<TYPE>::block * traits<TYPE>::stride;
        for (int64_t first = 0; first < rows; first += tile_rows) {
            int64_t n_rows = rows - first < tile_rows ? rows - first : tile_rows;
            if constexpr (TYPE == Q4_K || TYPE == Q5_K || TYPE == Q6_K)
                dequantize_k_f16_kernel<TYPE><<<grid_for(n_rows * cols / 8), 256, 0, stream>>>(
                    (const uint8_t *)weights + first * row_bytes, n_rows, cols, (__half *)tile); /* tile: 256-byte aligned */
            else if (TYPE == Q8_0 && cols % 256 == 0 && dequantize_q8_0_fast())
                dequantize_q8_0_f16_kernel<<<grid_for(n_rows * cols / 8), 256, 0, stream>>>((const uint8_t *)weights + first * row_bytes,
                                                                                              n_rows, cols, (__half *)tile);
            else
                dequantize_f16_kernel<TYPE><<<grid_for(n_rows * cols), 256, 0, stream>>>((const uint8_t *)weights + first * row_bytes,
                                                                                         n_rows, cols, (__half *)tile);
            TM_CUDA_CHECK_LAUNCH();
            if ((cublas_failure = gemm_16bit(handle, CUDA_R_16F, tile, n_rows, cols, converted, n_tokens, y + first, rows)))
                return cudaErrorUnknown;
        }
        return cudaSuccess;
    });
    return cublas_failure ? cublas_failure : (int)status;
}
