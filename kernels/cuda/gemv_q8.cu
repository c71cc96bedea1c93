/*
 * gemv_q8.cu - the fast decode products for the k-quants (llama.cpp's MMVQ approach): the
 * activations are quantized once per input to 8-bit blocks of 32 (q8_1: int8 values, a scale d
 * and d * sum of the values), and weights meet them in integer dot products (dp4a, four 8-bit
 * products per instruction) with the float scales applied once per 32-element sub-block.
 * Per weight element the kernels read 0.56 (q4_k) or 0.82 (q6_k) bytes of weights and ~1.1
 * bytes of activation from L1, instead of 4 bytes of float activation.
 *
 * One warp owns R consecutive rows and up to NT tokens: lane l takes sub-block l % 8 of blocks
 * l / 8, l / 8 + 4, ...; the R rows' sub-blocks are decoded into registers once and dotted with
 * each token's activation sub-block, so the activations are read once per R rows and the weights
 * once for all tokens. Precision: the activation rounding (at most half a step of max|x|/127 per
 * element of each 32-block) is the only difference from the float kernels, as on the CPU's fast
 * path.
 */
#include "kernels.h"
#include "quant.cuh"

/* ---- activations to q8_1 --------------------------------------------------------------------- */

/* One warp per 32-element block: qs = round(x / d), d = max|x| / 127, sum = d * sum(qs). */
__global__ void quantize_q8_1_kernel(const float *x, int64_t n_blocks, int8_t *qs, half2 *ds) {
    int64_t block = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (block >= n_blocks) return;
    float value = x[block * 32 + lane], amax = fabsf(value);
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    float d = amax / 127.0f;
    int q = amax > 0 ? __float2int_rn(value / d) : 0;
    int sum = q;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    qs[block * 32 + lane] = (int8_t)q;
    if (lane == 0) ds[block] = make_half2(__float2half_rn(d), __float2half_rn(d * (float)sum));
}

extern "C" int tm_cuda_quantize_q8_1(const float *x, int64_t n, void *q8, void *stream) {
    if (n % 32) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    int64_t n_blocks = n / 32;
    int8_t *qs = (int8_t *)q8;
    half2 *ds = (half2 *)(qs + n);
    quantize_q8_1_kernel<<<(unsigned)((n_blocks * 32 + 255) / 256), 256, 0, (cudaStream_t)stream>>>(x, n_blocks, qs, ds);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" uint64_t tm_cuda_q8_1_bytes(int64_t n) { return (uint64_t)n + (uint64_t)n / 32 * 4; }

/* ---- weights: one 32-element sub-block, decoded for dp4a ---------------------------------- */

__device__ __forceinline__ uint32_t u32_2aligned(const uint8_t *p) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (uint32_t)h[0] | (uint32_t)h[1] << 16;
}

/* The sub-block as eight words of four int8 values, and how a dp4a sum becomes a float:
 * q4_k: dot = dx * scale[0] * isum - sx * scale[1] (scale[1] = dmin * min; sx = dx * sum(x));
 * q6_k: dot = dx * (scale[0] * isum(first 16) + scale[1] * isum(last 16)). */
template <int TYPE> struct packed_subblock {
    int q[8];
    float scale[2];
};

template <int TYPE> __device__ __forceinline__ void load_subblock(const uint8_t *b, int sub, packed_subblock<TYPE> &w);

template <> __device__ __forceinline__ void load_subblock<Q4_K>(const uint8_t *b, int sub, packed_subblock<Q4_K> &w) {
    int scale, min;
    k_scale_min(sub, b + 4, &scale, &min);
    w.scale[0] = half_at(b) * scale;
    w.scale[1] = half_at(b + 2) * min;
    const uint4 *qs = reinterpret_cast<const uint4 *>(b + 16 + 32 * (sub / 2)); /* 144-byte blocks: 16-byte aligned */
    const int shift = (sub & 1) * 4;
    uint4 lo = qs[0], hi = qs[1];
    uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int i = 0; i < 8; i++) w.q[i] = (int)((words[i] >> shift) & 0x0F0F0F0Fu);
}

template <> __device__ __forceinline__ void load_subblock<Q6_K>(const uint8_t *b, int sub, packed_subblock<Q6_K> &w) {
    const int half = sub / 4, group = sub % 4;
    const uint8_t *ql = b + 64 * half + ((group & 1) ? 32 : 0), *qh = b + 128 + 32 * half; /* 210-byte blocks: 2-byte aligned */
    const int low_shift = group >= 2 ? 4 : 0, high_shift = 2 * group;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        uint32_t low = (u32_2aligned(ql + 4 * i) >> low_shift) & 0x0F0F0F0Fu;
        uint32_t high = ((u32_2aligned(qh + 4 * i) >> high_shift) & 0x03030303u) << 4;
        w.q[i] = (int)__vsubss4(low | high, 0x20202020u); /* - 32, per byte */
    }
    const int8_t *scales = reinterpret_cast<const int8_t *>(b + 192);
    const float d = half_at(b + 208);
    w.scale[0] = d * scales[2 * sub];
    w.scale[1] = d * scales[2 * sub + 1];
}

template <int TYPE> __device__ __forceinline__ float subblock_dot(const packed_subblock<TYPE> &w, const int *x, float2 xd) {
    if (TYPE == Q4_K) {
        int isum = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) isum = __dp4a(w.q[i], x[i], isum);
        return xd.x * w.scale[0] * (float)isum - xd.y * w.scale[1];
    } else {
        int first = 0, second = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) first = __dp4a(w.q[i], x[i], first);
#pragma unroll
        for (int i = 4; i < 8; i++) second = __dp4a(w.q[i], x[i], second);
        return xd.x * (w.scale[0] * (float)first + w.scale[1] * (float)second);
    }
}

/* Rows row0..row0+R-1 of one matrix for up to NT tokens, by one warp. */
template <int TYPE, int NT, int R>
__device__ __forceinline__ void mmvq_rows(const uint8_t *weights, int64_t rows, int64_t cols, int64_t row0, const int8_t *xq,
                                          const half2 *xds, int n_tokens, float *y) {
    const int lane = threadIdx.x % 32, sub = lane % 8;
    const int64_t blocks = cols / 256, row_bytes = blocks * traits<TYPE>::bytes;
    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0;
    /* U blocks per lane per pass, all loaded before any is used: more bytes in flight per warp
     * (small R x NT only, where registers allow) */
    constexpr int U = R * NT <= 4 ? 2 : 1;
    for (int64_t first = lane / 8; first < blocks; first += 4 * U) {
        packed_subblock<TYPE> w[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                if (first + 4 * u < blocks && row0 + r < rows)
                    load_subblock<TYPE>(weights + (row0 + r) * row_bytes + (first + 4 * u) * traits<TYPE>::bytes, sub, w[u][r]);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t block = first + 4 * u;
            if (block >= blocks) break;
            const int64_t x_block = block * 8 + sub;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= n_tokens) break;
                const int4 *xv = reinterpret_cast<const int4 *>(xq + t * cols + x_block * 32);
                int4 a = xv[0], b = xv[1];
                int x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                float2 xd = __half22float2(xds[t * (cols / 32) + x_block]);
#pragma unroll
                for (int r = 0; r < R; r++) acc[r][t] += subblock_dot<TYPE>(w[u][r], x, xd);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float s = acc[r][t];
            for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
            if (lane == 0 && t < n_tokens && row0 + r < rows) y[t * rows + row0 + r] = s;
        }
}

template <int TYPE, int NT, int R>
__global__ void __launch_bounds__(128) mmvq_kernel(const uint8_t *weights, int64_t rows, int64_t cols, const int8_t *xq,
                                                   const half2 *xds, int n_tokens, float *y) {
    const int64_t row0 = ((int64_t)blockIdx.x * 4 + threadIdx.x / 32) * R;
    if (row0 < rows) mmvq_rows<TYPE, NT, R>(weights, rows, cols, row0, xq, xds, n_tokens, y);
}

/* Several matrices with the same input in one launch (Q/K/V, gate/up): the warps run over the
 * concatenated rows; each part's row count is a multiple of R, so a warp stays in one part. */
struct mmvq_parts {
    const uint8_t *weights[TM_CUDA_GEMV_MAX_PARTS];
    float *y[TM_CUDA_GEMV_MAX_PARTS];
    int64_t rows[TM_CUDA_GEMV_MAX_PARTS];
    int type[TM_CUDA_GEMV_MAX_PARTS];
    int n;
};

template <int NT, int R>
__global__ void __launch_bounds__(128) mmvq_parts_kernel(mmvq_parts parts, int64_t cols, const int8_t *xq, const half2 *xds,
                                                         int n_tokens) {
    int64_t row0 = ((int64_t)blockIdx.x * 4 + threadIdx.x / 32) * R;
    int p = 0;
    while (p < parts.n && row0 >= parts.rows[p]) row0 -= parts.rows[p++];
    if (p == parts.n) return;
    if (parts.type[p] == Q4_K) mmvq_rows<Q4_K, NT, R>(parts.weights[p], parts.rows[p], cols, row0, xq, xds, n_tokens, parts.y[p]);
    else mmvq_rows<Q6_K, NT, R>(parts.weights[p], parts.rows[p], cols, row0, xq, xds, n_tokens, parts.y[p]);
}

template <int TYPE, int NT, int R>
static cudaError_t launch_mmvq(const void *weights, int64_t rows, int64_t cols, const void *q8, int n, float *y, cudaStream_t s) {
    const int8_t *qs = (const int8_t *)q8;
    const half2 *ds = (const half2 *)(qs + (int64_t)n * cols);
    int64_t warps = (rows + R - 1) / R;
    mmvq_kernel<TYPE, NT, R><<<(unsigned)((warps + 3) / 4), 128, 0, s>>>((const uint8_t *)weights, rows, cols, qs, ds, n, y);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

template <int TYPE>
static cudaError_t mmvq(const void *weights, int64_t rows, int64_t cols, const void *q8, int n, float *y, cudaStream_t s) {
    if (n <= 1) return launch_mmvq<TYPE, 1, 1>(weights, rows, cols, q8, n, y, s);
    if (n <= 2) return launch_mmvq<TYPE, 2, 2>(weights, rows, cols, q8, n, y, s);
    if (n <= 4) return launch_mmvq<TYPE, 4, 2>(weights, rows, cols, q8, n, y, s);
    if (n <= 8) return launch_mmvq<TYPE, 8, 4>(weights, rows, cols, q8, n, y, s);
    return launch_mmvq<TYPE, 16, 4>(weights, rows, cols, q8, n, y, s);
}

extern "C" int tm_cuda_gemv_q8_supported(int type) { return type == Q4_K || type == Q6_K; }

extern "C" int tm_cuda_gemv_q8(int type, const void *weights, int64_t rows, int64_t cols, const void *q8, int n_tokens, float *y,
                               void *stream) {
    if (cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || ((uintptr_t)weights % 16)) return cudaErrorInvalidValue;
    cudaStream_t s = (cudaStream_t)stream;
    if (type == Q4_K) return mmvq<Q4_K>(weights, rows, cols, q8, n_tokens, y, s);
    if (type == Q6_K) return mmvq<Q6_K>(weights, rows, cols, q8, n_tokens, y, s);
    return cudaErrorInvalidValue;
}

template <int NT, int R>
static cudaError_t launch_parts(const mmvq_parts &parts, int64_t cols, const void *q8, int n, cudaStream_t s) {
    int64_t total = 0;
    for (int p = 0; p < parts.n; p++) {
        if (parts.rows[p] % R) return cudaErrorNotSupported;
        total += parts.rows[p];
    }
    const int8_t *qs = (const int8_t *)q8;
    const half2 *ds = (const half2 *)(qs + (int64_t)n * cols);
    mmvq_parts_kernel<NT, R><<<(unsigned)((total / R + 3) / 4), 128, 0, s>>>(parts, cols, qs, ds, n);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_gemv_q8_parts(const tm_cuda_gemv_part *parts, int n_parts, int64_t cols, const void *q8, int n_tokens,
                                     void *stream) {
    if (cols % 256 || n_tokens < 1 || n_tokens > TM_CUDA_GEMV_MAX_TOKENS || n_parts < 1 || n_parts > TM_CUDA_GEMV_MAX_PARTS)
        return cudaErrorInvalidValue;
    mmvq_parts p = {};
    p.n = n_parts;
    for (int i = 0; i < n_parts; i++) {
        if (!tm_cuda_gemv_q8_supported(parts[i].type) || (uintptr_t)parts[i].weights % 16) return cudaErrorInvalidValue;
        p.weights[i] = (const uint8_t *)parts[i].weights, p.y[i] = parts[i].y, p.rows[i] = parts[i].rows, p.type[i] = parts[i].type;
    }
    cudaStream_t s = (cudaStream_t)stream;
    if (n_tokens <= 1) return launch_parts<1, 1>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 2) return launch_parts<2, 2>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 4) return launch_parts<4, 2>(p, cols, q8, n_tokens, s);
    if (n_tokens <= 8) return launch_parts<8, 4>(p, cols, q8, n_tokens, s);
    return launch_parts<16, 4>(p, cols, q8, n_tokens, s);
}
