/*
 * bench.cu - micro-benchmarks of single operations for the harness's kernels suite: each
 * benchmark owns its inputs on the device (random values), and one run is timed with CUDA
 * events on its own stream after the L2 cache has been flushed (a kernel reading 256 MiB, so L2
 * holds only clean lines of that buffer: a memset would leave ~50 MB of dirty lines whose
 * write-back the timed op would pay, tens of microseconds against a 4-microsecond GEMV), so every
 * run reads its operands from memory; the flush also keeps the GPU busy while the host enqueues
 * the start event and the op, so no launch gap is timed. That cover is checked on every run: when
 * the start event has already completed once the host has queued the stop event, the GPU may have
 * waited for the host inside the timed region (a slow host, a long chain), so the run is discarded
 * and redone behind twice the flushes (up to MAX_FLUSHES, kept for the bench's later runs); a run
 * still uncovered then is returned and counted (tm_cuda_bench_uncovered_runs). Under a profiler
 * that serializes launches (the start event complete as soon as it is queued) runs are neither
 * redone nor counted. The ceilings are measured the same way: device-to-device copy
 * and a 16-bit cuBLAS GEMM. Each benchmark states the bytes and flops one run must move, so the
 * caller can turn a time into GB/s, TFLOP/s and a share of the ceilings.
 *
 * A decode step runs its products back to back, each launch overlapping its predecessor's tail
 * (launch.cuh); a product timed alone pays its ramp and tail in full. So gemv (and the read kernel
 * that is its same-size ceiling) can run as a chain: `chain` launches in one timed run, each over
 * its own copy of the weights (every launch still reads memory, whatever the L2 holds), the time
 * reported being a launch's share.
 */
#include <chrono>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "launch.cuh"
#include "quant.cuh"

#define FLUSH_BYTES (256ull << 20)
#define MAX_FLUSHES 16 /* 16 x 256 MiB: ~1 ms of cover on an H200, ~2.5 on an RTX 4090 */

/* dst = src, 16 bytes a thread at a time: a copy that is a kernel (hardware counters see it). */
__global__ void copy_kernel(const uint4 *src, uint4 *dst, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) dst[i] = src[i];
}

/* Reads the flush buffer (zeros); the XOR of everything is stored only if it is not zero, which
 * never happens but keeps the loads alive. */
__global__ void flush_read_kernel(const uint4 *buffer, int64_t n, unsigned *sink) {
    unsigned acc = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldcg(buffer + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc) *sink = acc;
}

/* Reads n 16-byte words as the decode products stream their weights (ldg_stream16), W a thread
 * (words i, i + T, ..., i + (W - 1)T of T threads) all requested before any is used and before the
 * wait for the previous kernel (in a chain the loads overlap its tail, as the products' first
 * weights do): one launch reading those bytes as fast as it can. Their XOR is stored only if it
 * is not zero, which never happens for the bench's buffer (every byte 1) but keeps the loads alive. */
template <int W> __global__ void __launch_bounds__(256) read_kernel(const uint4 *src, int64_t n, unsigned *sink) {
    const int64_t threads = (int64_t)gridDim.x * blockDim.x, first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint4 v[W];
#pragma unroll
    for (int u = 0; u < W; u++) v[u] = first + u * threads < n ? ldg_stream16(src + first + u * threads) : make_uint4(0, 0, 0, 0);
    tm_grid_dependency();
    unsigned acc = 0;
#pragma unroll
    for (int u = 0; u < W; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    if (acc) *sink = acc;
}

template <int W> static cudaError_t launch_read(const void *words, int64_t n, void *sink, cudaStream_t stream) {
    const unsigned blocks = (unsigned)((n + 256 * W - 1) / (256 * W));
    return tm_launch_dependent(read_kernel<W>, dim3(blocks), dim3(256), 0, stream, (const uint4 *)words, n, (unsigned *)sink);
}

struct tm_cuda_bench {
    tm_cuda_bench_spec spec;
    cudaStream_t stream;
    cudaEvent_t start, stop;
    cublasHandle_t cublas;
    void *flush;
    void *buffers[8];
    int n_buffers;
    double bytes, flops;
    int chain;           /* launches a run (>= 1) */
    int flushes;         /* flush kernels before a run's start event (1, doubled while uncovered, <= MAX_FLUSHES) */
    int uncovered_runs;  /* runs returned although the GPU may have waited for the host inside them */
    double last_ms;      /* the last timed run's time a launch (0: none yet): sizes tm_cuda_bench_sustain's batches */
    uint64_t slot_bytes; /* gemv, read: bytes between the chain's copies of the streamed operand */
    /* op-specific */
    uint64_t workspace_bytes;
    int n_tiles, n_splits, keys_per_split;
};

__host__ __device__ static uint32_t hash32(uint64_t x) {
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull, x ^= x >> 33;
    return (uint32_t)x;
}

__global__ void fill_floats_kernel(float *x, int64_t n, uint32_t seed) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = (float)((hash32((uint64_t)i * 0x9e3779b97f4a7c15ull + seed) >> 8) * (2.0 / 16777216.0) - 1.0);
}
__global__ void fill_halves_kernel(__half *x, int64_t n, uint32_t seed) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __float2half((float)((hash32((uint64_t)i * 0x9e3779b97f4a7c15ull + seed) >> 8) * (2.0 / 16777216.0) - 1.0));
}
/* Quantized blocks: random quants with small positive scales (every 16-bit field a half in [0, 1/64]). */
__global__ void fill_blocks_kernel(uint8_t *x, int64_t n, uint32_t seed) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = (uint8_t)(hash32((uint64_t)i + seed) & 0x3F); /* 0x00-0x3F: small halves, small quants */
}

static unsigned grid(int64_t n) { return (unsigned)((n + 255) / 256); }

static int fail(char *message, int capacity, const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(message, (size_t)capacity, format, arguments);
    va_end(arguments);
    return -1;
}

#define TRY(call)                                                                                             \
    do {                                                                                                      \
        cudaError_t bench_status_ = (call);                                                                   \
        if (bench_status_ != cudaSuccess) {                                                                   \
            fail(message, capacity, "%s: %s", #call, cudaGetErrorString(bench_status_));                      \
            tm_cuda_bench_free(b);                                                                            \
            return -1;                                                                                        \
        }                                                                                                     \
    } while (0)

static cudaError_t alloc(tm_cuda_bench *b, void **out, uint64_t bytes) {
    cudaError_t status = cudaMalloc(out, bytes ? bytes : 1);
    if (status == cudaSuccess) b->buffers[b->n_buffers++] = *out;
    return status;
}

extern "C" int tm_cuda_bench_create(const tm_cuda_bench_spec *spec, tm_cuda_bench **out, char *message, int capacity) {
    *out = NULL;
    tm_cuda_bench *b = (tm_cuda_bench *)calloc(1, sizeof *b);
    if (!b) return fail(message, capacity, "out of memory");
    b->spec = *spec;
    const tm_cuda_bench_spec *s = spec; /* the caller's: still valid after a failure frees b */
    TRY(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    TRY(cudaEventCreate(&b->start));
    TRY(cudaEventCreate(&b->stop));
    TRY(alloc(b, &b->flush, FLUSH_BYTES));
    TRY(cudaMemset(b->flush, 0, FLUSH_BYTES));
    void *a = NULL, *x = NULL, *y = NULL, *w = NULL;
    b->chain = s->chain > 1 ? s->chain : 1;
    b->flushes = 1;
    if (b->chain > 1 && s->op != TM_BENCH_GEMV && s->op != TM_BENCH_READ)
        return tm_cuda_bench_free(b), fail(message, capacity, "chain applies to gemv and read only (got chain %d)", s->chain);
    if (b->chain > 4096) return tm_cuda_bench_free(b), fail(message, capacity, "chain %d is more than 4096 launches", s->chain);
    switch (s->op) {
    case TM_BENCH_READ: {
        const uint64_t bytes = (uint64_t)s->rows;
        if (bytes % 16 || !bytes) return tm_cuda_bench_free(b), fail(message, capacity, "read takes whole 16-byte words (rows %% 16 == 0, rows > 0)");
        if (s->read_words && s->read_words != 1 && s->read_words != 2 && s->read_words != 4 && s->read_words != 8 && s->read_words != 16)
            return tm_cuda_bench_free(b), fail(message, capacity, "read takes 1, 2, 4, 8 or 16 words a thread (got %d)", s->read_words);
        b->slot_bytes = (bytes + 255) / 256 * 256;
        TRY(alloc(b, &a, b->slot_bytes * b->chain));
        TRY(alloc(b, &x, 16)); /* the sink */
        TRY(cudaMemset(a, 1, b->slot_bytes * b->chain));
        b->bytes = (double)bytes;
        break;
    }
    case TM_BENCH_COPY:
    case TM_BENCH_COPY_KERNEL: {
        uint64_t bytes = (uint64_t)s->rows;
        if (s->op == TM_BENCH_COPY_KERNEL && bytes % 16)
            return tm_cuda_bench_free(b), fail(message, capacity, "copy_kernel copies whole 16-byte words (rows %% 16 == 0)");
        TRY(alloc(b, &a, bytes));
        TRY(alloc(b, &x, bytes));
        TRY(cudaMemset(a, 1, bytes));
        b->bytes = 2.0 * (double)bytes;
        break;
    }
    case TM_BENCH_GEMM_F16:
    case TM_BENCH_GEMM_BF16: {
        int64_t n = s->rows;
        if (cublasCreate(&b->cublas) != CUBLAS_STATUS_SUCCESS) return tm_cuda_bench_free(b), fail(message, capacity, "cublasCreate failed");
        TRY(alloc(b, &a, (uint64_t)n * n * 2));
        TRY(alloc(b, &x, (uint64_t)n * n * 2));
        TRY(alloc(b, &y, (uint64_t)n * n * 2));
        fill_halves_kernel<<<grid(n * n), 256>>>((__half *)a, n * n, 1); /* bf16 reads the same bits: finite, small */
        fill_halves_kernel<<<grid(n * n), 256>>>((__half *)x, n * n, 2);
        b->flops = 2.0 * n * n * n;
        b->bytes = 3.0 * n * n * 2;
        break;
    }
    case TM_BENCH_GEMV:
    case TM_BENCH_GEMM: {
        uint64_t row_bytes = tm_cuda_weight_row_bytes(s->type, s->cols); /* device layout: what the product reads */
        if (!row_bytes) return tm_cuda_bench_free(b), fail(message, capacity, "type %d with %lld columns is not a whole number of blocks", s->type, (long long)s->cols);
        if (s->op == TM_BENCH_GEMV && (s->tokens < 1 || s->tokens > TM_CUDA_GEMV_MAX_TOKENS))
            return tm_cuda_bench_free(b), fail(message, capacity, "gemv takes 1..%d tokens", TM_CUDA_GEMV_MAX_TOKENS);
        b->slot_bytes = (row_bytes * s->rows + 255) / 256 * 256;
        TRY(alloc(b, &w, b->slot_bytes * b->chain));
        TRY(alloc(b, &x, (uint64_t)s->tokens * s->cols * 4));
        TRY(alloc(b, &y, (uint64_t)s->tokens * s->rows * 4));
        for (int copy = 0; copy < b->chain; copy++) { /* each copy its own random values */
            uint8_t *slot = (uint8_t *)w + copy * b->slot_bytes;
            if (s->type == F16) fill_halves_kernel<<<grid(s->rows * s->cols), 256>>>((__half *)slot, s->rows * s->cols, 3 + 977 * copy);
            else fill_blocks_kernel<<<grid((int64_t)(row_bytes * s->rows)), 256>>>(slot, (int64_t)(row_bytes * s->rows), 3 + 977 * copy);
        }
        fill_floats_kernel<<<grid(s->tokens * s->cols), 256>>>((float *)x, s->tokens * s->cols, 4);
        void *extra = NULL;
        if (s->op == TM_BENCH_GEMV && tm_cuda_gemv_q8_supported(s->type)) {
            TRY(alloc(b, &extra, tm_cuda_q8_1_bytes(s->tokens * s->cols)));
            if (tm_cuda_quantize_q8_1((const float *)x, s->tokens, s->cols, extra, NULL))
                return tm_cuda_bench_free(b), fail(message, capacity, "quantize failed");
        } else if (s->op == TM_BENCH_GEMM) {
            if (cublasCreate(&b->cublas) != CUBLAS_STATUS_SUCCESS) return tm_cuda_bench_free(b), fail(message, capacity, "cublasCreate failed");
            b->workspace_bytes = (uint64_t)s->tokens * s->cols * 2 + 256 + (64ull << 20);
            TRY(alloc(b, &extra, b->workspace_bytes));
        }
        b->bytes = (double)(row_bytes * s->rows) + (double)s->tokens * (s->cols + s->rows) * 4;
        b->flops = 2.0 * s->rows * s->cols * s->tokens;
        break;
    }
    case TM_BENCH_FLASH:
    case TM_BENCH_DECODE_ATTENTION: {
        const bool flash = s->op == TM_BENCH_FLASH;
        if (flash && s->exact && !s->causal)
            return tm_cuda_bench_free(b), fail(message, capacity, "the float32 flash kernel (exact: 1) runs causal only (causal: 1)");
        if (!flash && s->whole && !tm_cuda_decode_attention_whole_supported(s->heads, s->kv_heads, s->head_dim, 0))
            return tm_cuda_bench_free(b), fail(message, capacity,
                                               "decode attention without splits (whole: 1) takes head dims 64 and 128 and groups up to 8 "
                                               "(got %d heads, %d kv heads, head_dim %d)", s->heads, s->kv_heads, s->head_dim);
        const int sequences = flash ? 1 : s->batch, length = flash ? s->tokens : s->context;
        const int queries = flash ? s->tokens : s->batch;
        if (s->heads < 1 || s->kv_heads < 1 || s->heads % s->kv_heads || sequences < 1 || length < 1)
            return tm_cuda_bench_free(b), fail(message, capacity, "attention needs heads a multiple of kv_heads, tokens/context and batch >= 1");
        const uint32_t page_size = 4096;
        const uint64_t row_bytes = 2ull * s->kv_heads * s->head_dim * 2; /* f16 K and V */
        const int64_t pages_per_sequence = row_bytes <= page_size ? (length + page_size / row_bytes - 1) / (page_size / row_bytes)
                                                                  : (int64_t)length * ((row_bytes + page_size - 1) / page_size);
        const int64_t pages = pages_per_sequence * sequences;
        void *pool, *table, *offsets, *positions, *partials; /* positions: positions | key counts | tiles */
        TRY(alloc(b, &pool, (uint64_t)pages * page_size));
        fill_halves_kernel<<<grid((int64_t)(pages * page_size / 2)), 256>>>((__half *)pool, (int64_t)(pages * page_size / 2), 5);
        int32_t *host_table = (int32_t *)malloc((size_t)pages * 4), *host_ints = (int32_t *)malloc((size_t)queries * 4 * 4);
        int64_t *host_offsets = (int64_t *)malloc((size_t)queries * 8);
        for (int64_t p = 0; p < pages; p++) host_table[p] = (int32_t)((p * 7919) % pages); /* scattered pages */
        const int tile_tokens = !flash   ? 1
                                : s->exact ? tm_cuda_flash_tile_tokens(s->head_dim, s->heads, s->kv_heads)
                                           : tm_cuda_flash_mma_tile_tokens(s->head_dim, s->heads, s->kv_heads);
        if (tile_tokens < 1) {
            free(host_table), free(host_ints), free(host_offsets);
            return tm_cuda_bench_free(b), fail(message, capacity, "head_dim %d is not one flash attention takes", s->head_dim);
        }
        int n_tiles = 0;
        for (int q = 0; q < queries; q++) {
            host_offsets[q] = flash ? 0 : (int64_t)q * pages_per_sequence;
            host_ints[q] = flash ? q : length - 1;          /* positions */
            host_ints[queries + q] = flash ? q + 1 : length; /* key counts */
            if (flash && q % tile_tokens == 0) {
                host_ints[2 * queries + 2 * n_tiles] = q;
                host_ints[2 * queries + 2 * n_tiles + 1] = queries - q < tile_tokens ? queries - q : tile_tokens;
                n_tiles++;
            }
        }
        TRY(alloc(b, &table, (uint64_t)pages * 4));
        TRY(alloc(b, &offsets, (uint64_t)queries * 8));
        TRY(alloc(b, &positions, (uint64_t)queries * 4 * 4));
        cudaMemcpy(table, host_table, (size_t)pages * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(offsets, host_offsets, (size_t)queries * 8, cudaMemcpyHostToDevice);
        cudaMemcpy(positions, host_ints, (size_t)queries * 4 * 4, cudaMemcpyHostToDevice);
        free(host_table), free(host_ints), free(host_offsets);
        b->n_tiles = n_tiles;
        b->n_splits = flash ? 1 : (length + 255) / 256 > 32 ? 32 : (length + 255) / 256;
        b->keys_per_split = (length + b->n_splits - 1) / b->n_splits;
        TRY(alloc(b, &x, (uint64_t)queries * s->heads * s->head_dim * 4));
        TRY(alloc(b, &y, (uint64_t)queries * s->heads * s->head_dim * 4));
        TRY(alloc(b, &partials, (uint64_t)queries * s->heads * b->n_splits * (s->head_dim + 2) * 4));
        fill_floats_kernel<<<grid((int64_t)queries * s->heads * s->head_dim), 256>>>((float *)x, (int64_t)queries * s->heads * s->head_dim, 6);
        const double kv_bytes = (double)sequences * length * row_bytes, qo_bytes = 2.0 * queries * s->heads * s->head_dim * 4;
        b->bytes = kv_bytes + qo_bytes;
        /* 4 flops per visible (query, key, dimension): the scores and the weighted values; causal: half the pairs */
        const double pairs = !flash ? (double)queries * length : s->causal ? (double)length * (length + 1) / 2 : (double)length * length;
        b->flops = 4.0 * s->heads * s->head_dim * pairs;
        break;
    }
    case TM_BENCH_RMSNORM: {
        TRY(alloc(b, &x, (uint64_t)s->rows * s->cols * 4));
        TRY(alloc(b, &y, (uint64_t)s->rows * s->cols * 4));
        TRY(alloc(b, &w, (uint64_t)s->cols * 4));
        fill_floats_kernel<<<grid(s->rows * s->cols), 256>>>((float *)x, s->rows * s->cols, 7);
        fill_floats_kernel<<<grid(s->cols), 256>>>((float *)w, s->cols, 8);
        b->bytes = 2.0 * s->rows * s->cols * 4 + s->cols * 4.0;
        b->flops = 3.0 * s->rows * s->cols;
        break;
    }
    case TM_BENCH_ROPE: {
        TRY(alloc(b, &x, (uint64_t)s->tokens * s->heads * s->head_dim * 4));
        TRY(alloc(b, &a, (uint64_t)s->tokens * 4));
        fill_floats_kernel<<<grid((int64_t)s->tokens * s->heads * s->head_dim), 256>>>((float *)x, (int64_t)s->tokens * s->heads * s->head_dim, 9);
        int32_t *host_positions = (int32_t *)malloc((size_t)s->tokens * 4);
        for (int t = 0; t < s->tokens; t++) host_positions[t] = t;
        cudaMemcpy(a, host_positions, (size_t)s->tokens * 4, cudaMemcpyHostToDevice);
        free(host_positions);
        b->bytes = 2.0 * s->tokens * s->heads * s->head_dim * 4;
        b->flops = 6.0 * s->tokens * s->heads * s->head_dim / 2;
        break;
    }
    default:
        tm_cuda_bench_free(b);
        return fail(message, capacity, "unknown benchmark op %d", s->op);
    }
    TRY(cudaDeviceSynchronize());
    TRY(cudaGetLastError());
    *out = b;
    return 0;
}

/* The op once, on the bench's stream (buffers in creation order, after the flush buffer), over
 * copy `link` of the chain's streamed operand. */
static int launch(tm_cuda_bench *b, int link) {
    const tm_cuda_bench_spec *s = &b->spec;
    void *buf[8];
    for (int i = 1; i < b->n_buffers; i++) buf[i - 1] = b->buffers[i];
    buf[0] = (uint8_t *)buf[0] + link * b->slot_bytes; /* gemv's weights, read's words; slot_bytes is 0 for the other ops */
    cudaStream_t st = b->stream;
    switch (s->op) {
    case TM_BENCH_READ:
        switch (s->read_words) {
        case 1: return launch_read<1>(buf[0], s->rows / 16, buf[1], st);
        case 2: return launch_read<2>(buf[0], s->rows / 16, buf[1], st);
        case 8: return launch_read<8>(buf[0], s->rows / 16, buf[1], st);
        case 16: return launch_read<16>(buf[0], s->rows / 16, buf[1], st);
        default: return launch_read<4>(buf[0], s->rows / 16, buf[1], st);
        }
    case TM_BENCH_COPY: return cudaMemcpyAsync(buf[1], buf[0], (size_t)s->rows, cudaMemcpyDeviceToDevice, st);
    case TM_BENCH_COPY_KERNEL:
        copy_kernel<<<1024, 256, 0, st>>>((const uint4 *)buf[0], (uint4 *)buf[1], s->rows / 16);
        return cudaGetLastError();
    case TM_BENCH_GEMM_F16:
    case TM_BENCH_GEMM_BF16: {
        const float one = 1, zero = 0;
        cudaDataType type = s->op == TM_BENCH_GEMM_F16 ? CUDA_R_16F : CUDA_R_16BF;
        int n = (int)s->rows;
        cublasSetStream(b->cublas, st);
        cublasStatus_t status = cublasGemmEx(b->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, buf[0], type, n, buf[1], type, n, &zero,
                                             buf[2], type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        return status == CUBLAS_STATUS_SUCCESS ? 0 : -(int)status;
    }
    case TM_BENCH_GEMV: {
        if (tm_cuda_gemv_q8_supported(s->type))
            return tm_cuda_gemv_q8(s->type, buf[0], s->rows, s->cols, buf[3], s->tokens, (float *)buf[2], st);
        /* f16/bf16 from 2 tokens: the engine's 16-bit tensor-core product where the shape fits */
        const int status = tm_cuda_gemv_16bit_tokens(s->type, buf[0], s->rows, s->cols, (const float *)buf[1], s->tokens, (float *)buf[2], st);
        if (status != cudaErrorNotSupported) return status;
        return tm_cuda_gemv_batched(s->type, buf[0], s->rows, s->cols, (const float *)buf[1], s->tokens, (float *)buf[2], st);
    }
    case TM_BENCH_GEMM:
        return tm_cuda_gemm(b->cublas, s->type, buf[0], s->rows, s->cols, (const float *)buf[1], s->tokens, (float *)buf[2], buf[3],
                            b->workspace_bytes, st);
    case TM_BENCH_FLASH:
    case TM_BENCH_DECODE_ATTENTION: {
        /* buffers: pool, table, offsets, positions|n_keys|tiles, q, out, partials */
        const int queries = s->op == TM_BENCH_FLASH ? s->tokens : s->batch;
        const int32_t *ints = (const int32_t *)buf[3];
        const tm_cuda_kv kv = {buf[0], NULL, TM_CUDA_KV_F16, 4096};
        if (s->op == TM_BENCH_FLASH && !s->exact)
            return tm_cuda_flash_attention_mma((const float *)buf[4], (float *)buf[5], s->heads, s->kv_heads, s->head_dim, &kv,
                                               (const int32_t *)buf[1], (const int64_t *)buf[2], ints, ints + 2 * queries, b->n_tiles,
                                               s->causal ? 0 : s->tokens, st);
        if (s->op == TM_BENCH_FLASH)
            return tm_cuda_flash_attention((const float *)buf[4], (float *)buf[5], s->heads, s->kv_heads, s->head_dim, &kv,
                                           (const int32_t *)buf[1], (const int64_t *)buf[2], ints, ints + 2 * queries, b->n_tiles, st);
        if (s->whole)
            return tm_cuda_decode_attention_whole((const float *)buf[4], (float *)buf[5], queries, s->heads, s->kv_heads, s->head_dim, &kv,
                                                  (const int32_t *)buf[1], (const int64_t *)buf[2], ints + queries, s->context, NULL, NULL, st);
        return tm_cuda_paged_attention((const float *)buf[4], (float *)buf[5], queries, s->heads, s->kv_heads, s->head_dim, &kv,
                                       (const int32_t *)buf[1], (const int64_t *)buf[2], ints + queries, b->n_splits, b->keys_per_split,
                                       (float *)buf[6], NULL, NULL, st);
    }
    case TM_BENCH_RMSNORM:
        return tm_cuda_add_rmsnorm((float *)buf[1], NULL, (float *)buf[0], NULL, (const float *)buf[2], (int)s->rows, (int)s->cols, 1e-5f, NULL, st);
    case TM_BENCH_ROPE:
        return tm_cuda_rope((float *)buf[0], s->tokens, s->heads, s->head_dim, s->head_dim, 10000.0f, 1.0f, NULL, (const int32_t *)buf[1], st);
    }
    return cudaErrorInvalidValue;
}

/* One run behind b->flushes flush kernels: *covered is false when the start event had completed
 * once the host had queued the stop event (the GPU may have waited for the host in between), true
 * as well where the start event had completed as soon as it was queued: launches are then
 * serialized (a profiler replaying each kernel, --counters or ncu), no cover is possible, and a
 * redone run would only profile the kernels again. */
static int run_once(tm_cuda_bench *b, double *milliseconds, bool *covered, char *message, int capacity) {
    for (int f = 0; f < b->flushes; f++) /* evict L2; keep the GPU busy while the run is queued */
        flush_read_kernel<<<1024, 256, 0, b->stream>>>((const uint4 *)b->flush, (int64_t)(FLUSH_BYTES / 16), (unsigned *)b->flush);
    cudaError_t status = cudaGetLastError();
    if (status == cudaSuccess) status = cudaEventRecord(b->start, b->stream);
    if (status != cudaSuccess) return fail(message, capacity, "flush/start: %s", cudaGetErrorString(status));
    const bool serialized = cudaEventQuery(b->start) == cudaSuccess; /* the flushes (>= 62 us) ran inside their launches */
    for (int link = 0; link < b->chain; link++) {
        int op = launch(b, link);
        if (op) return fail(message, capacity, "the benchmarked op failed (%s %d)", op < 0 ? "cuBLAS status" : "cudaError", op < 0 ? -op : op);
    }
    float elapsed = 0;
    status = cudaEventRecord(b->stop, b->stream);
    if (status == cudaSuccess) {
        const cudaError_t started = cudaEventQuery(b->start);
        *covered = serialized || started == cudaErrorNotReady;
        if (started != cudaSuccess && started != cudaErrorNotReady) status = started;
    }
    if (status == cudaSuccess) status = cudaEventSynchronize(b->stop);
    if (status == cudaSuccess) status = cudaEventElapsedTime(&elapsed, b->start, b->stop);
    if (status != cudaSuccess) return fail(message, capacity, "timing: %s", cudaGetErrorString(status));
    *milliseconds = elapsed / b->chain;
    return 0;
}

extern "C" int tm_cuda_bench_run(tm_cuda_bench *b, double *milliseconds, char *message, int capacity) {
    for (;;) {
        bool covered = false;
        if (run_once(b, milliseconds, &covered, message, capacity)) return -1;
        b->last_ms = *milliseconds;
        if (covered) return 0;
        if (b->flushes >= MAX_FLUSHES) {
            b->uncovered_runs++;
            return 0;
        }
        b->flushes *= 2;
    }
}

extern "C" int tm_cuda_bench_sustain(tm_cuda_bench *b, double seconds, long long *launches, double *milliseconds,
                                     void (*between)(void *), void *context, char *message, int capacity) {
    /* batches of chains of ~10 ms (sized by the last timed run, one made first where there is none),
     * each followed by an event; the host waits for the batch before the one it has just queued, so
     * one is always queued behind the running one */
    double one_ms = b->last_ms;
    if (one_ms <= 0 && tm_cuda_bench_run(b, &one_ms, message, capacity)) return -1;
    const double chain_ms = one_ms * b->chain > 1e-3 ? one_ms * b->chain : 1e-3;
    const int per_batch = chain_ms >= 10 ? 1 : (int)(10 / chain_ms) + 1;
    cudaEvent_t batch_done[2];
    if (cudaEventCreateWithFlags(&batch_done[0], cudaEventDisableTiming) != cudaSuccess) return fail(message, capacity, "event");
    if (cudaEventCreateWithFlags(&batch_done[1], cudaEventDisableTiming) != cudaSuccess) {
        cudaEventDestroy(batch_done[0]);
        return fail(message, capacity, "event");
    }
    cudaError_t status = cudaEventRecord(b->start, b->stream);
    const auto begun = std::chrono::steady_clock::now();
    long long made = 0;
    for (int batch = 0; status == cudaSuccess; batch++) {
        for (int c = 0; c < per_batch; c++)
            for (int link = 0; link < b->chain; link++) {
                const int op = launch(b, link);
                if (op) {
                    cudaEventDestroy(batch_done[0]), cudaEventDestroy(batch_done[1]);
                    return fail(message, capacity, "the benchmarked op failed (%s %d)", op < 0 ? "cuBLAS status" : "cudaError", op < 0 ? -op : op);
                }
                made++;
            }
        status = cudaEventRecord(batch_done[batch % 2], b->stream);
        if (status == cudaSuccess && batch > 0) {
            status = cudaEventSynchronize(batch_done[(batch + 1) % 2]);
            if (between) between(context);
        }
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - begun).count() >= seconds) break;
    }
    float elapsed = 0;
    if (status == cudaSuccess) status = cudaEventRecord(b->stop, b->stream);
    if (status == cudaSuccess) status = cudaEventSynchronize(b->stop);
    if (status == cudaSuccess) status = cudaEventElapsedTime(&elapsed, b->start, b->stop);
    cudaEventDestroy(batch_done[0]), cudaEventDestroy(batch_done[1]);
    if (status != cudaSuccess) return fail(message, capacity, "sustained runs: %s", cudaGetErrorString(status));
    *launches = made;
    *milliseconds = elapsed;
    return 0;
}

extern "C" int tm_cuda_bench_uncovered_runs(const tm_cuda_bench *b) { return b->uncovered_runs; }

extern "C" void tm_cuda_bench_cost(const tm_cuda_bench *b, double *bytes, double *flops) {
    *bytes = b->bytes;
    *flops = b->flops;
}

extern "C" void tm_cuda_bench_free(tm_cuda_bench *b) {
    if (!b) return;
    cudaDeviceSynchronize();
    for (int i = 0; i < b->n_buffers; i++) cudaFree(b->buffers[i]);
    if (b->cublas) cublasDestroy(b->cublas);
    if (b->start) cudaEventDestroy(b->start);
    if (b->stop) cudaEventDestroy(b->stop);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}
