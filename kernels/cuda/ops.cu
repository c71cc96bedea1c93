/*
 * ops.cu - the small per-token operations of the forward pass: embedding lookup (every weight
 * type), RMSNorm, rope, SwiGLU and residual add. Each matches the CPU reference
 * (engine/ops_cpu.c, engine/quant.c) within the tolerance its test states: RMSNorm sums squares
 * in float64 and rope computes its angle in float64, as the CPU does.
 */
#include "kernels.h"
#include "quant.cuh"

/* One block per token row: out[t] = dequantized row tokens[t] of the table. */
template <int TYPE>
__global__ void embed_kernel(const uint8_t *table, int n_embd, const int32_t *tokens, float *out) {
    const int64_t row_bytes = (int64_t)n_embd / traits<TYPE>::block * traits<TYPE>::bytes;
    const uint8_t *row = table + (int64_t)tokens[blockIdx.x] * row_bytes;
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x)
        out[(int64_t)blockIdx.x * n_embd + i] = decode<TYPE>(row + (i / traits<TYPE>::block) * traits<TYPE>::bytes, i % traits<TYPE>::block);
}

template <int TYPE>
static cudaError_t launch_embed(const void *table, int n_embd, const int32_t *tokens, int n_tokens, float *out, cudaStream_t s) {
    if (n_embd % traits<TYPE>::block) return cudaErrorInvalidValue;
    embed_kernel<TYPE><<<n_tokens, 256, 0, s>>>((const uint8_t *)table, n_embd, tokens, out);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_embed(int type, const void *table, int n_embd, const int32_t *tokens, int n_tokens, float *out,
                             void *stream) {
    return dispatch_weight_type(type, [&](auto t) {
        return launch_embed<decltype(t)::value>(table, n_embd, tokens, n_tokens, out, (cudaStream_t)stream);
    });
}

/* One block per row: float64 sum of squares, reduced through shared memory. */
__global__ void rmsnorm_kernel(float *out, const float *x, const float *weight, int n, float eps) {
    __shared__ double partial[256];
    const float *row = x + (int64_t)blockIdx.x * n;
    double sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += (double)row[i] * row[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    float scale = (float)(1.0 / sqrt(partial[0] / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(int64_t)blockIdx.x * n + i] = row[i] * scale * weight[i];
}

extern "C" int tm_cuda_rmsnorm(float *out, const float *x, const float *weight, int n_rows, int n, float eps, void *stream) {
    rmsnorm_kernel<<<n_rows, 256, 0, (cudaStream_t)stream>>>(out, x, weight, n, eps);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* One thread per (token, head, pair). */
__global__ void rope_kernel(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                            const float *freq_factors, const int32_t *positions) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int pairs = n_rot / 2;
    if (index >= (int64_t)n_tokens * n_heads * pairs) return;
    int i = (int)(index % pairs), head = (int)(index / pairs % n_heads);
    int64_t token = index / pairs / n_heads;
    double theta = positions[token] * (double)freq_scale * pow((double)freq_base, -2.0 * i / n_rot);
    if (freq_factors) theta /= freq_factors[i];
    float cos_theta = (float)cos(theta), sin_theta = (float)sin(theta);
    float *pair = vec + (token * n_heads + head) * head_dim + 2 * i;
    float a = pair[0], b = pair[1];
    pair[0] = a * cos_theta - b * sin_theta;
    pair[1] = a * sin_theta + b * cos_theta;
}

extern "C" int tm_cuda_rope(float *vec, int n_tokens, int n_heads, int head_dim, int n_rot, float freq_base, float freq_scale,
                            const float *freq_factors, const int32_t *positions, void *stream) {
    int64_t threads = (int64_t)n_tokens * n_heads * (n_rot / 2);
    if (threads == 0) return cudaSuccess;
    rope_kernel<<<(unsigned)((threads + 255) / 256), 256, 0, (cudaStream_t)stream>>>(vec, n_tokens, n_heads, head_dim, n_rot,
                                                                                       freq_base, freq_scale, freq_factors,
                                                                                       positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

__global__ void swiglu_kernel(float *gate, const float *up, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

extern "C" int tm_cuda_swiglu(float *gate, const float *up, int64_t n, void *stream) {
    if (n == 0) return cudaSuccess;
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(gate, up, n);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

__global__ void add_kernel(float *x, const float *delta, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += delta[i];
}

extern "C" int tm_cuda_add(float *x, const float *delta, int64_t n, void *stream) {
    if (n == 0) return cudaSuccess;
    add_kernel<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)stream>>>(x, delta, n);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

__global__ void gather_rows_kernel(const float *x, const int32_t *index, int n, float *out) {
    const float *row = x + (int64_t)index[blockIdx.x] * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(int64_t)blockIdx.x * n + i] = row[i];
}

extern "C" int tm_cuda_gather_rows(const float *x, const int32_t *index, int n_out, int n, float *out, void *stream) {
    if (n_out == 0) return cudaSuccess;
    gather_rows_kernel<<<n_out, 256, 0, (cudaStream_t)stream>>>(x, index, n, out);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}
