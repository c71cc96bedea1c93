/*
 * weights.cu - how weights are laid out in device memory, and the one way they get there.
 * Every type keeps its GGUF block layout, row after row; q6_k's 210-byte blocks are padded to 224
 * bytes (traits<Q6_K>::stride in quant.cuh), so every block, its quants (byte 0), high bits (128),
 * scales (192) and scale d (208) sit at 16-byte-aligned addresses and the decode products read
 * them with aligned 16-, 8- and 4-byte loads (in GGUF's packing a q6_k block is only 2-byte aligned: the
 * one-token product then needed sixteen 2-byte loads where q4_k uses one 16-byte load). The cost:
 * 14 bytes a block, 6.7 % more bytes for the q6_k tensors (a quarter of a Q4_K_M model).
 * q8_0 rows are split: a row's cols int8 values in order, then its cols / 32 half scales (the same
 * 34 bytes a block, the same row bytes); with cols % 256 == 0 the values and the scales of every row
 * start 16-byte aligned, so gemv_q8_0.cu reads them with aligned 16-byte loads (in GGUF's 34-byte
 * blocks a block's values are only 2-byte aligned). Generic kernels read it through row_value.
 * Guarantee: tm_cuda_upload_weight writes exactly tm_cuda_weight_row_bytes(type, cols) * rows
 * bytes: q6_k's padding zero, the blocks' 210 bytes unchanged; q8_0's every value and scale once.
 */
#include "kernels.h"
#include "quant.cuh"

#define UPLOAD_CHUNK_BLOCKS (1 << 17) /* q6_k blocks staged per copy: 26.25 MiB of device scratch */

extern "C" uint64_t tm_cuda_weight_row_bytes(int type, int64_t cols) {
    uint64_t block = 0, stride = 0;
    dispatch_weight_type(type, [&](auto t) {
        block = traits<decltype(t)::value>::block;
        stride = traits<decltype(t)::value>::stride;
        return cudaSuccess;
    });
    if (!block || cols <= 0 || (uint64_t)cols % block) return 0;
    return (uint64_t)cols / block * stride;
}

/* Block i of n: its 210 GGUF bytes at src + 210 i, to dst + 224 i followed by 14 zero bytes; a
 * thread per destination byte. */
__global__ void pad_q6_k_kernel(const uint8_t *src, uint8_t *dst, int64_t n_blocks) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks * traits<Q6_K>::stride) return;
    const int64_t block = i / traits<Q6_K>::stride;
    const int byte = (int)(i % traits<Q6_K>::stride);
    dst[i] = byte < traits<Q6_K>::bytes ? src[block * traits<Q6_K>::bytes + byte] : 0;
}

/* Block i of n (rows of `blocks` q8_0 blocks): its scale and 32 values from src + 34 i to their
 * places in the split row; a thread per block. */
__global__ void split_q8_0_kernel(const uint8_t *src, uint8_t *dst, int64_t n_blocks, int64_t blocks) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    const int64_t row = i / blocks, block = i % blocks;
    const uint8_t *from = src + i * 34;
    uint8_t *values = dst + row * blocks * 34 + block * 32, *scale = dst + row * blocks * 34 + blocks * 32 + block * 2;
    scale[0] = from[0], scale[1] = from[1];
    for (int j = 0; j < 32; j++) values[j] = from[2 + j];
}

/* q8_0: whole rows a chunk through device scratch, split by split_q8_0_kernel. */
static cudaError_t upload_q8_0(uint8_t *device, const uint8_t *host, int64_t rows, int64_t cols, cudaStream_t s) {
    const int64_t blocks = cols / 32, row_bytes = blocks * 34;
    if (rows == 0) return cudaSuccess;
    int64_t chunk_rows = 4 * UPLOAD_CHUNK_BLOCKS / blocks; /* 17 MiB of scratch */
    if (chunk_rows < 1) chunk_rows = 1;
    if (chunk_rows > rows) chunk_rows = rows;
    uint8_t *scratch = NULL;
    TM_CUDA_CHECK(cudaMalloc(&scratch, (size_t)(chunk_rows * row_bytes)));
    cudaError_t status = cudaSuccess;
    for (int64_t first = 0; first < rows && status == cudaSuccess; first += chunk_rows) {
        const int64_t n = rows - first < chunk_rows ? rows - first : chunk_rows;
        status = cudaMemcpyAsync(scratch, host + first * row_bytes, (size_t)(n * row_bytes), cudaMemcpyHostToDevice, s);
        if (status != cudaSuccess) break;
        split_q8_0_kernel<<<(unsigned)((n * blocks + 255) / 256), 256, 0, s>>>(scratch, device + first * row_bytes, n * blocks, blocks);
        status = cudaGetLastError();
        if (status == cudaSuccess) status = cudaStreamSynchronize(s); /* the scratch is reused by the next chunk */
    }
    cudaFree(scratch);
    return status;
}

extern "C" int tm_cuda_upload_weight(int type, void *device, const void *host, int64_t rows, int64_t cols, void *stream) {
    const uint64_t row_bytes = tm_cuda_weight_row_bytes(type, cols);
    if (!row_bytes || rows < 0) return cudaErrorInvalidValue;
    cudaStream_t s = (cudaStream_t)stream;
    if (type == Q8_0) {
        TM_CUDA_CHECK(upload_q8_0((uint8_t *)device, (const uint8_t *)host, rows, cols, s));
        return cudaSuccess;
    }
    if (type != Q6_K) {
        TM_CUDA_CHECK(cudaMemcpyAsync(device, host, row_bytes * (uint64_t)rows, cudaMemcpyHostToDevice, s));
        TM_CUDA_CHECK(cudaStreamSynchronize(s));
        return cudaSuccess;
    }
    const int64_t n_blocks = rows * (cols / traits<Q6_K>::block);
    if (n_blocks == 0) return cudaSuccess;
    const int64_t chunk = n_blocks < UPLOAD_CHUNK_BLOCKS ? n_blocks : UPLOAD_CHUNK_BLOCKS;
    uint8_t *scratch = NULL;
    TM_CUDA_CHECK(cudaMalloc(&scratch, (size_t)chunk * traits<Q6_K>::bytes));
    cudaError_t status = cudaSuccess;
    for (int64_t first = 0; first < n_blocks && status == cudaSuccess; first += chunk) {
        const int64_t n = n_blocks - first < chunk ? n_blocks - first : chunk;
        status = cudaMemcpyAsync(scratch, (const uint8_t *)host + first * traits<Q6_K>::bytes, (size_t)n * traits<Q6_K>::bytes,
                                 cudaMemcpyHostToDevice, s);
        if (status != cudaSuccess) break;
        const int64_t threads = n * traits<Q6_K>::stride;
        pad_q6_k_kernel<<<(unsigned)((threads + 255) / 256), 256, 0, s>>>(scratch, (uint8_t *)device + first * traits<Q6_K>::stride, n);
        status = cudaGetLastError();
        if (status == cudaSuccess) status = cudaStreamSynchronize(s); /* the scratch is reused by the next chunk */
    }
    cudaFree(scratch);
    TM_CUDA_CHECK(status);
    return cudaSuccess;
}
