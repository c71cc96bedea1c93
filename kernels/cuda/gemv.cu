/*
 * gemv.cu - matrix-vector products for every weight type on the GPU: the correctness-first
 * version (one warp per row, each lane decodes the elements it needs straight from the GGUF
 * block layout, float activations, float32 accumulation, warp-shuffle reduction). The decode
 * kernels tuned to the memory roofline come with the GPU-speed issue; this one is the parity
 * baseline every faster kernel is checked against.
 *
 * The element decoders live in quant.cuh (shared with the embedding lookup).
 */
#include "kernels.h"
#include "launch.cuh"
#include "quant.cuh"

/* ---- kernel and launcher ----------------------------------------------------------------- */

template <int TYPE>
__global__ void gemv_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const float *x, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    const int64_t row_bytes = cols / traits<TYPE>::block * traits<TYPE>::stride;
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (row >= rows) return;
    const uint8_t *w = weights + row * row_bytes;
    float sum = 0;
    for (int64_t i = lane; i < cols; i += 32) sum += row_value<TYPE>(w, cols, i) * x[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

/* k-quants, one warp per row: lane l takes 32-element sub-block l % 8 of blocks l / 8, l / 8 + 4,
 * ... so scale unpacking happens once per sub-block (not per element) and the quants and
 * activations come in 16-byte loads. */
__device__ __forceinline__ float q4k_subblock_dot(const uint8_t *b, int sub, const float *x) {
    int scale, min;
    k_scale_min(sub, b + 4, &scale, &min);
    const uint4 *qs = reinterpret_cast<const uint4 *>(b + 16 + 32 * (sub / 2)); /* 16-byte aligned: 144 = 9 x 16 */
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    const int shift = (sub & 1) * 4;
    float qx = 0, xs = 0;
    for (int half = 0; half < 2; half++) {
        uint4 packed = qs[half];
        uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
        for (int w = 0; w < 4; w++) {
            float4 xv = x4[half * 4 + w];
            uint32_t q = words[w] >> shift;
            qx += (q & 0xF) * xv.x + ((q >> 8) & 0xF) * xv.y + ((q >> 16) & 0xF) * xv.z + ((q >> 24) & 0xF) * xv.w;
            xs += xv.x + xv.y + xv.z + xv.w;
        }
    }
    return half_at(b) * scale * qx - half_at(b + 2) * min * xs;
}

__device__ __forceinline__ float q6k_subblock_dot(const uint8_t *b, int sub, const float *x) {
    /* sub-block sub (32 elements) = group (sub % 4) of half (sub / 4); two 16-element scales */
    int half = sub / 4, group = sub % 4;
    const uint8_t *ql = b + 64 * half + ((group & 1) ? 32 : 0), *qh = b + 128 + 32 * half;
    const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
    float sums[2] = {0, 0};
    for (int k = 0; k < 32; k++) {
        int q = (((ql[k] >> low_shift) & 0xF) | ((qh[k] >> high_shift) & 3) << 4) - 32;
        sums[k / 16] += q * x[k];
    }
    const int8_t *scales = reinterpret_cast<const int8_t *>(b + 192);
    return half_at(b + 208) * (scales[2 * sub] * sums[0] + scales[2 * sub + 1] * sums[1]);
}

template <int TYPE>
__global__ void gemv_k_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const float *x, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    const int64_t blocks = cols / 256;
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (row >= rows) return;
    const uint8_t *w = weights + row * blocks * traits<TYPE>::stride;
    float sum = 0;
    for (int64_t block = lane / 8; block < blocks; block += 4) {
        int sub = lane % 8;
        const float *xs = x + block * 256 + 32 * sub;
        if (TYPE == Q4_K) sum += q4k_subblock_dot(w + block * traits<TYPE>::stride, sub, xs);
        else sum += q6k_subblock_dot(w + block * traits<TYPE>::stride, sub, xs);
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

template <int TYPE>
static cudaError_t launch(const void *weights, int64_t rows, int64_t cols, const float *x, float *y, cudaStream_t stream) {
    if (cols % traits<TYPE>::block) return cudaErrorInvalidValue;
    if (TYPE == F16 || TYPE == BF16) { /* gemv16.cu where it takes the shape */
        const tm_cuda_gemv_part part = {weights, TYPE, rows, y};
        const int status = tm_cuda_gemv_16bit_parts(&part, 1, cols, x, stream);
        if (status != cudaErrorNotSupported) return (cudaError_t)status;
    }
    const int threads = 256; /* 8 rows per block */
    int64_t blocks = (rows * 32 + threads - 1) / threads;
    if ((TYPE == Q4_K || TYPE == Q6_K) && ((uintptr_t)x % 16 == 0))
        TM_LAUNCH_DEPENDENT(gemv_k_kernel<TYPE>, dim3((unsigned)blocks), dim3(threads), 0, stream, (const uint8_t *)weights, rows, cols, x,
                            y);
    else
        TM_LAUNCH_DEPENDENT(gemv_kernel<TYPE>, dim3((unsigned)blocks), dim3(threads), 0, stream, (const uint8_t *)weights, rows, cols, x, y);
    return cudaSuccess;
}

extern "C" int tm_cuda_gemv(int type, const void *weights, int64_t rows, int64_t cols, const float *x, float *y, void *stream) {
    return dispatch_weight_type(type, [&](auto t) { return launch<decltype(t)::value>(weights, rows, cols, x, y, (cudaStream_t)stream); });
}

/* ---- batched decode: n_tokens (2..16) activation vectors against each weight read once ---- */

/* Generic types: one warp per row; each element is decoded once and meets every token. */
template <int TYPE, int NT>
__global__ void gemv_batched_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const float *x, int n_tokens, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    const int64_t row_bytes = cols / traits<TYPE>::block * traits<TYPE>::stride;
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (row >= rows) return;
    const uint8_t *w = weights + row * row_bytes;
    float sum[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) sum[j] = 0;
    for (int64_t i = lane; i < cols; i += 32) {
        const float value = row_value<TYPE>(w, cols, i);
#pragma unroll
        for (int j = 0; j < NT; j++)
            if (j < n_tokens) sum[j] += value * x[j * cols + i];
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
        float s = sum[j];
        for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
        if (lane == 0 && j < n_tokens) y[j * rows + row] = s;
    }
}

/* k-quants: lanes take sub-blocks as gemv_k_kernel; each sub-block is dequantized once into
 * registers and dotted with every token's 32 activations (16-byte loads). */
template <int TYPE, int NT>
__global__ void gemv_k_batched_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const float *x, int n_tokens, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    const int64_t blocks = cols / 256;
    tm_grid_dependency(); /* launched by tm_launch_dependent (launch.cuh) */
    if (row >= rows) return;
    const uint8_t *w = weights + row * blocks * traits<TYPE>::stride;
    float sum[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) sum[j] = 0;
    for (int64_t block = lane / 8; block < blocks; block += 4) {
        const int sub = lane % 8;
        float value[32];
        k_subblock_floats<TYPE>(w + block * traits<TYPE>::stride, sub, value);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (j >= n_tokens) break;
            const float4 *x4 = reinterpret_cast<const float4 *>(x + j * cols + block * 256 + 32 * sub);
            float s = 0;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float4 v = x4[k];
                s += value[4 * k] * v.x + value[4 * k + 1] * v.y + value[4 * k + 2] * v.z + value[4 * k + 3] * v.w;
            }
            sum[j] += s;
        }
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
        float s = sum[j];
        for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
        if (lane == 0 && j < n_tokens) y[j * rows + row] = s;
    }
}

template <int TYPE, int NT>
static cudaError_t launch_batched_nt(const void *weights, int64_t rows, int64_t cols, const float *x, int n, float *y, cudaStream_t stream) {
    const int threads = 256;
    unsigned blocks = (unsigned)((rows * 32 + threads - 1) / threads);
    if ((TYPE == Q4_K || TYPE == Q6_K) && (uintptr_t)x % 16 == 0 && cols % 4 == 0)
        TM_LAUNCH_DEPENDENT(gemv_k_batched_kernel<TYPE, NT>, dim3(blocks), dim3(threads), 0, stream, (const uint8_t *)weights, rows, cols, x,
                            n, y);
    else
        TM_LAUNCH_DEPENDENT(gemv_batched_kernel<TYPE, NT>, dim3(blocks), dim3(threads), 0, stream, (const uint8_t *)weights, rows, cols, x, n,
                            y);
    return cudaSuccess;
}

template <int TYPE>
static cudaError_t launch_batched(const void *weights, int64_t rows, int64_t cols, const float *x, int n, float *y,
                                  cudaStream_t stream) {
    if (cols % traits<TYPE>::block || n < 1 || n > TM_CUDA_GEMV_MAX_TOKENS) return cudaErrorInvalidValue;
    if (n == 1) return launch<TYPE>(weights, rows, cols, x, y, stream);
    if (n <= 4) return launch_batched_nt<TYPE, 4>(weights, rows, cols, x, n, y, stream);
    if (n <= 8) return launch_batched_nt<TYPE, 8>(weights, rows, cols, x, n, y, stream);
    return launch_batched_nt<TYPE, 16>(weights, rows, cols, x, n, y, stream);
}

extern "C" int tm_cuda_gemv_batched(int type, const void *weights, int64_t rows, int64_t cols, const float *x, int n_tokens,
                                    float *y, void *stream) {
    return dispatch_weight_type(type, [&](auto t) {
        return launch_batched<decltype(t)::value>(weights, rows, cols, x, n_tokens, y, (cudaStream_t)stream);
    });
}

extern "C" int tm_cuda_device_name(char *name, int capacity) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    cudaDeviceProp properties;
    if (cudaGetDeviceProperties(&properties, 0) != cudaSuccess) return 0;
    snprintf(name, (size_t)capacity, "%s (sm_%d%d)", properties.name, properties.major, properties.minor);
    return 1;
}

extern "C" int tm_cuda_device_pci_bus_id(int device, char *bus_id, int capacity) {
    if (cudaDeviceGetPCIBusId(bus_id, capacity, device) != cudaSuccess) {
        cudaGetLastError(); /* clear it: no such device */
        return 0;
    }
    return 1;
}
