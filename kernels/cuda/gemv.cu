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
#include "quant.cuh"

/* ---- kernel and launcher ----------------------------------------------------------------- */

template <int TYPE>
__global__ void gemv_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const float *x, float *y) {
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int64_t row_bytes = cols / traits<TYPE>::block * traits<TYPE>::bytes;
    const uint8_t *w = weights + row * row_bytes;
    float sum = 0;
    for (int64_t i = lane; i < cols; i += 32) {
        const uint8_t *block = w + (i / traits<TYPE>::block) * traits<TYPE>::bytes;
        sum += decode<TYPE>(block, (int)(i % traits<TYPE>::block)) * x[i];
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

template <int TYPE>
static cudaError_t launch(const void *weights, int64_t rows, int64_t cols, const float *x, float *y, cudaStream_t stream) {
    if (cols % traits<TYPE>::block) return cudaErrorInvalidValue;
    const int threads = 256; /* 8 rows per block */
    int64_t blocks = (rows * 32 + threads - 1) / threads;
    gemv_kernel<TYPE><<<(unsigned)blocks, threads, 0, stream>>>((const uint8_t *)weights, rows, cols, x, y);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_gemv(int type, const void *weights, int64_t rows, int64_t cols, const float *x, float *y, void *stream) {
    cudaStream_t s = (cudaStream_t)stream;
    switch (type) {
    case F32: return launch<F32>(weights, rows, cols, x, y, s);
    case F16: return launch<F16>(weights, rows, cols, x, y, s);
    case BF16: return launch<BF16>(weights, rows, cols, x, y, s);
    case Q4_0: return launch<Q4_0>(weights, rows, cols, x, y, s);
    case Q4_1: return launch<Q4_1>(weights, rows, cols, x, y, s);
    case Q5_0: return launch<Q5_0>(weights, rows, cols, x, y, s);
    case Q5_1: return launch<Q5_1>(weights, rows, cols, x, y, s);
    case Q8_0: return launch<Q8_0>(weights, rows, cols, x, y, s);
    case Q4_K: return launch<Q4_K>(weights, rows, cols, x, y, s);
    case Q5_K: return launch<Q5_K>(weights, rows, cols, x, y, s);
    case Q6_K: return launch<Q6_K>(weights, rows, cols, x, y, s);
    default: return cudaErrorInvalidValue;
    }
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
