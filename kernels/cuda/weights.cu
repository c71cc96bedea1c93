/*
 * weights.cu - how weights are laid out in device memory, and the one way they get there.
 * Every type keeps its GGUF block layout, row after row; q6_k's 210-byte blocks are padded to 224
 * bytes (traits<Q6_K>::stride in quant.cuh), so every block, its quants (byte 0), high bits (128),
 * scales (192) and scale d (208) sit at 16-byte-aligned addresses and the decode products read
 * them with aligned 16-, 8- and 4-byte loads (in GGUF's packing a q6_k block is only 2-byte aligned: the
 * one-token product then needed sixteen 2-byte loads where q4_k uses one 16-byte load). The cost:
 * 14 bytes a block, 6.7 % more bytes for the q6_k tensors (a quarter of a Q4_K_M model).
 * Guarantee: tm_cuda_upload_weight writes exactly tm_cuda_weight_row_bytes(type, cols) * rows
 * bytes, padding zero, the blocks' 210 bytes unchanged.
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

extern "C" int tm_cuda_upload_weight(int type, void *device, const void *host, int64_t rows, int64_t cols, void *stream) {
    const uint64_t row_bytes = tm_cuda_weight_row_bytes(type, cols);
    if (!row_bytes || rows < 0) return cudaErrorInvalidValue;
    cudaStream_t s = (cudaStream_t)stream;
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
