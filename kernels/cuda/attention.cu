/*
 * attention.cu - attention through the paged KV cache, for decode and for prefill.
 * Decode: one block per (query token, query head, key split), four warps taking the split's
 * keys 32 at a time (a lane per key for the scores, a lane per output dimension for the values),
 * each with an online softmax (running max, sum, weighted value sum); warps merge in the block,
 * splits merge in combine_kernel (flash-decoding), so a long context spreads over many blocks. Prefill: flash attention over tiles of consecutive query tokens of one stream and the
 * query heads sharing one kv head (GQA), keys staged chunk by chunk in shared memory, causal.
 * Keys and values are read through the stream's page table with the same addressing as
 * engine/kv_cache.c, so nothing assumes contiguous KV. float32 math; f16 or f32 cache.
 */
#include "kernels.h"
#include "common.cuh"
#include "kv_address.cuh"

#define WARPS 4
#define MAX_HEAD_DIM 256

template <bool HALF> __device__ __forceinline__ float kv_element(const uint8_t *vector, int i) {
    if (HALF) return __half2float(reinterpret_cast<const __half *>(vector)[i]);
    return reinterpret_cast<const float *>(vector)[i];
}

/* Score of one key against the query (in shared memory, pre-scaled): 16-byte loads of the key. */
template <bool HALF>
__device__ __forceinline__ float key_score(const uint8_t *key, const float *query, int head_dim) {
    float dot = 0;
    if (HALF) {
        const uint4 *k8 = reinterpret_cast<const uint4 *>(key);
        for (int c = 0; c < head_dim / 8; c++) {
            uint4 packed = k8[c];
            const __half2 *h = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float2 k = __half22float2(h[j]);
                dot += k.x * query[8 * c + 2 * j] + k.y * query[8 * c + 2 * j + 1];
            }
        }
    } else {
        const float4 *k4 = reinterpret_cast<const float4 *>(key);
        for (int c = 0; c < head_dim / 4; c++) {
            float4 k = k4[c];
            dot += k.x * query[4 * c] + k.y * query[4 * c + 1] + k.z * query[4 * c + 2] + k.w * query[4 * c + 3];
        }
    }
    return dot;
}

/* One block per (query token, query head, key split). The four warps take the split's keys 32 at
 * a time: lane j scores key j of the warp's chunk on its own (the whole key vector in 16-byte
 * loads, so many loads are in flight), the chunk updates the warp's online softmax, and the
 * lanes, each owning head_dim / 32 output dimensions, accumulate the chunk's values. The warps
 * merge in the block. One split: the normalized result goes straight to out. Several: the block
 * writes its (max, sum, unnormalized values) to partials and combine_kernel merges the splits. */
template <bool HALF>
__global__ void __launch_bounds__(32 * WARPS) paged_attention_kernel(const float *q, float *out, float *partials, kv_addressing a,
                                                                     const int32_t *pages, const int64_t *page_offsets,
                                                                     const int32_t *n_keys, int n_head, int head_dim, float scale,
                                                                     int keys_per_split) {
    const int token = blockIdx.x / n_head, head = blockIdx.x % n_head, split = blockIdx.y, n_splits = gridDim.y;
    const int kv_head = head / (n_head / a.n_head_kv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int per_lane = head_dim / 32;
    const int32_t *table = pages + page_offsets[token];
    const int begin = (int)min((int64_t)split * keys_per_split, (int64_t)INT32_MAX), end = min(n_keys[token], begin + keys_per_split);
    __shared__ float query[MAX_HEAD_DIM];
    __shared__ float warp_max[WARPS], warp_sum[WARPS], warp_acc[WARPS][MAX_HEAD_DIM];
    const float *q_row = q + ((int64_t)token * n_head + head) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) query[d] = q_row[d] * scale;
    __syncthreads();
    float acc[MAX_HEAD_DIM / 32]; /* fixed-bound loops with a guard keep it in registers */
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; i++) acc[i] = 0;
    float running_max = -INFINITY, running_sum = 0;
    for (int chunk = begin + 32 * warp; chunk < end; chunk += 32 * WARPS) {
        const int p = chunk + lane;
        /* lane j finds key j's vectors once; the value loop below takes key k's address from lane k */
        float score = -INFINITY;
        unsigned long long value_address = 0;
        if (p < end) {
            score = key_score<HALF>(kv_address32(a, table, p, kv_head, false), query, head_dim);
            value_address = (unsigned long long)kv_address32(a, table, p, kv_head, true);
        }
        float chunk_max = score;
        for (int offset = 16; offset > 0; offset /= 2) chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, offset));
        const float new_max = fmaxf(running_max, chunk_max); /* finite: key `chunk` is valid */
        const float correction = expf(running_max - new_max), weight = expf(score - new_max);
        float weight_sum = weight;
        for (int offset = 16; offset > 0; offset /= 2) weight_sum += __shfl_xor_sync(0xffffffffu, weight_sum, offset);
        running_sum = running_sum * correction + weight_sum;
        running_max = new_max;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / 32; i++) acc[i] *= correction;
        const int n_valid = min(32, end - chunk);
#pragma unroll 4
        for (int k = 0; k < n_valid; k++) {
            const float w = __shfl_sync(0xffffffffu, weight, k);
            const uint8_t *value = (const uint8_t *)__shfl_sync(0xffffffffu, value_address, k);
#pragma unroll
            for (int i = 0; i < MAX_HEAD_DIM / 32; i++)
                if (i < per_lane) acc[i] += w * kv_element<HALF>(value, lane + 32 * i);
        }
    }
    if (lane == 0) {
        warp_max[warp] = running_max;
        warp_sum[warp] = running_sum;
    }
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / 32; i++)
        if (i < per_lane) warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float block_max = -INFINITY;
    for (int w = 0; w < WARPS; w++) block_max = fmaxf(block_max, warp_max[w]);
    float total = 0, factor[WARPS];
    for (int w = 0; w < WARPS; w++) {
        factor[w] = warp_sum[w] > 0 ? expf(warp_max[w] - block_max) : 0.0f; /* a warp that saw no key adds nothing */
        total += warp_sum[w] * factor[w];
    }
    if (n_splits == 1) {
        float *result = out + ((int64_t)token * n_head + head) * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float sum = 0;
            for (int w = 0; w < WARPS; w++) sum += warp_acc[w][d] * factor[w];
            result[d] = sum / total;
        }
        return;
    }
    float *partial = partials + ((int64_t)blockIdx.x * n_splits + split) * (head_dim + 2);
    if (threadIdx.x == 0) partial[0] = block_max, partial[1] = total; /* total 0: a split past n_keys */
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0;
        for (int w = 0; w < WARPS; w++) sum += warp_acc[w][d] * factor[w];
        partial[2 + d] = sum;
    }
}

/* One block per (token, head): out = sum_s acc_s e^(m_s - m) / sum_s l_s e^(m_s - m). */
__global__ void combine_kernel(const float *partials, float *out, int n_splits, int head_dim) {
    const float *first = partials + (int64_t)blockIdx.x * n_splits * (head_dim + 2);
    float global_max = -INFINITY;
    for (int s = 0; s < n_splits; s++)
        if (first[s * (head_dim + 2) + 1] > 0) global_max = fmaxf(global_max, first[s * (head_dim + 2)]);
    float total = 0;
    for (int s = 0; s < n_splits; s++) {
        const float *p = first + s * (head_dim + 2);
        if (p[1] > 0) total += p[1] * expf(p[0] - global_max);
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0;
        for (int s = 0; s < n_splits; s++) {
            const float *p = first + s * (head_dim + 2);
            if (p[1] > 0) sum += p[2 + d] * expf(p[0] - global_max);
        }
        out[(int64_t)blockIdx.x * head_dim + d] = sum / total;
    }
}

extern "C" int tm_cuda_paged_attention(const float *q, float *out, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                       const void *pool, int kv_is_f32, uint32_t page_size, const int32_t *pages,
                                       const int64_t *page_offsets, const int32_t *n_keys, int n_splits, int keys_per_split,
                                       float *partials, void *stream) {
    if (head_dim > MAX_HEAD_DIM || head_dim % 32 || n_head % n_head_kv || n_splits < 1 || n_splits > 65535 || keys_per_split < 1 ||
        (n_splits > 1 && !partials))
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    float scale = 1.0f / sqrtf((float)head_dim);
    dim3 grid((unsigned)(n_tokens * n_head), (unsigned)n_splits), block(32 * WARPS);
    cudaStream_t s = (cudaStream_t)stream;
    if (n_splits == 1) keys_per_split = INT32_MAX;
    if (kv_is_f32)
        paged_attention_kernel<false><<<grid, block, 0, s>>>(q, out, partials, a, pages, page_offsets, n_keys, n_head, head_dim, scale,
                                                             keys_per_split);
    else
        paged_attention_kernel<true><<<grid, block, 0, s>>>(q, out, partials, a, pages, page_offsets, n_keys, n_head, head_dim, scale,
                                                            keys_per_split);
    TM_CUDA_CHECK_LAUNCH();
    if (n_splits > 1) {
        combine_kernel<<<n_tokens * n_head, 128, 0, s>>>(partials, out, n_splits, head_dim);
        TM_CUDA_CHECK_LAUNCH();
    }
    return cudaSuccess;
}

/* ---- rope fused with the KV append ------------------------------------------------------ */

/* One block per (token, head slot): slots 0..n_head-1 rope the query heads in place; slots
 * n_head.. rope kv head h's key and write it and the value into the cache. A thread per pair. */
template <bool HALF>
__global__ void rope_kv_append_kernel(float *q, const float *k, const float *v, int n_head, kv_addressing a, int head_dim, int n_rot,
                                      float freq_base, float freq_scale, const float *freq_factors, const int32_t *pages,
                                      const int64_t *page_offsets, const int32_t *positions) {
    const int token = blockIdx.x / (n_head + a.n_head_kv), slot = blockIdx.x % (n_head + a.n_head_kv);
    const int position = positions[token];
    for (int i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
        if (slot < n_head) {
            if (2 * i < n_rot) rope_pair(q + ((int64_t)token * n_head + slot) * head_dim + 2 * i, i, n_rot, position, freq_base, freq_scale, freq_factors);
            continue;
        }
        const int head = slot - n_head;
        const int64_t at = ((int64_t)token * a.n_head_kv + head) * head_dim + 2 * i;
        float key[2] = {k[at], k[at + 1]};
        if (2 * i < n_rot) rope_pair(key, i, n_rot, position, freq_base, freq_scale, freq_factors);
        const int32_t *table = pages + page_offsets[token];
        uint8_t *key_out = const_cast<uint8_t *>(kv_address(a, table, position, head, false));
        uint8_t *value_out = const_cast<uint8_t *>(kv_address(a, table, position, head, true));
        if (HALF) {
            reinterpret_cast<__half *>(key_out)[2 * i] = __float2half_rn(key[0]);
            reinterpret_cast<__half *>(key_out)[2 * i + 1] = __float2half_rn(key[1]);
            reinterpret_cast<__half *>(value_out)[2 * i] = __float2half_rn(v[at]);
            reinterpret_cast<__half *>(value_out)[2 * i + 1] = __float2half_rn(v[at + 1]);
        } else {
            reinterpret_cast<float *>(key_out)[2 * i] = key[0];
            reinterpret_cast<float *>(key_out)[2 * i + 1] = key[1];
            reinterpret_cast<float *>(value_out)[2 * i] = v[at];
            reinterpret_cast<float *>(value_out)[2 * i + 1] = v[at + 1];
        }
    }
}

extern "C" int tm_cuda_rope_kv_append(float *q, const float *k, const float *v, int n_tokens, int n_head, int n_head_kv, int head_dim,
                                      int n_rot, float freq_base, float freq_scale, const float *freq_factors, void *pool, int kv_is_f32,
                                      uint32_t page_size, const int32_t *pages, const int64_t *page_offsets, const int32_t *positions,
                                      void *stream) {
    if (head_dim % 2 || n_rot > head_dim) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    unsigned blocks = (unsigned)(n_tokens * (n_head + n_head_kv)), threads = head_dim / 2 < 32 ? 32 : head_dim / 2;
    if (kv_is_f32)
        rope_kv_append_kernel<false><<<blocks, threads, 0, (cudaStream_t)stream>>>(q, k, v, n_head, a, head_dim, n_rot, freq_base, freq_scale,
                                                                                freq_factors, pages, page_offsets, positions);
    else
        rope_kv_append_kernel<true><<<blocks, threads, 0, (cudaStream_t)stream>>>(q, k, v, n_head, a, head_dim, n_rot, freq_base, freq_scale,
                                                                               freq_factors, pages, page_offsets, positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* ---- prefill: flash attention over query tiles ------------------------------------------- */

/* Rows of a tile: (token, query head of one kv head's group) pairs; CHUNK keys per pass. */
template <int HD> struct flash_shape {
    static constexpr int rows = HD <= 128 ? 64 : 32, chunk = 32, rows_per_warp = rows / WARPS, per_lane = HD / 32;
    static constexpr size_t shared_bytes = sizeof(float) * ((size_t)rows * HD + (size_t)chunk * (HD + 1) + (size_t)chunk * HD);
};

/* One block per (tile, kv head). A tile is up to rows / group consecutive batch tokens of one
 * stream; every query row of the tile and the group's heads is scored against chunks of keys
 * 0..max position, staged in shared memory, with the causal mask key <= row's position and an
 * online softmax per row (lane j scores key j of the chunk; each lane accumulates head_dim / 32
 * output dimensions of every row its warp owns). */
template <int HD, bool HALF>
__global__ void __launch_bounds__(32 * WARPS) flash_attention_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages,
                                                                     const int64_t *page_offsets, const int32_t *positions,
                                                                     const int32_t *tiles, int n_head, float scale) {
    typedef flash_shape<HD> shape;
    extern __shared__ float shared[];
    float *q_tile = shared, *k_chunk = q_tile + shape::rows * HD, *v_chunk = k_chunk + shape::chunk * (HD + 1);
    const int first = tiles[2 * blockIdx.x], n_tokens = tiles[2 * blockIdx.x + 1], kv_head = blockIdx.y;
    const int group = n_head / a.n_head_kv, n_rows = n_tokens * group;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int32_t *table = pages + page_offsets[first];
    int max_position = 0;
    for (int t = 0; t < n_tokens; t++) max_position = max(max_position, positions[first + t]);
    /* the tile's queries, pre-scaled */
    for (int i = threadIdx.x; i < n_rows * HD; i += blockDim.x) {
        int row = i / HD, d = i % HD, token = first + row / group, head = kv_head * group + row % group;
        q_tile[i] = q[((int64_t)token * n_head + head) * HD + d] * scale;
    }
    float row_max[shape::rows_per_warp], row_sum[shape::rows_per_warp], acc[shape::rows_per_warp][shape::per_lane];
    int row_position[shape::rows_per_warp];
#pragma unroll
    for (int r = 0; r < shape::rows_per_warp; r++) {
        int row = warp * shape::rows_per_warp + r;
        row_position[r] = row < n_rows ? positions[first + row / group] : -1;
        row_max[r] = -INFINITY, row_sum[r] = 0;
#pragma unroll
        for (int i = 0; i < shape::per_lane; i++) acc[r][i] = 0;
    }
    for (int chunk_start = 0; chunk_start <= max_position; chunk_start += shape::chunk) {
        __syncthreads(); /* the previous chunk is consumed (and the queries are in) */
        for (int i = threadIdx.x; i < shape::chunk * HD; i += blockDim.x) {
            int key = i / HD, d = i % HD, p = chunk_start + key;
            float k_value = 0, v_value = 0;
            if (p <= max_position) {
                k_value = kv_element<HALF>(kv_address(a, table, p, kv_head, false), d);
                v_value = kv_element<HALF>(kv_address(a, table, p, kv_head, true), d);
            }
            k_chunk[key * (HD + 1) + d] = k_value;
            v_chunk[key * HD + d] = v_value;
        }
        __syncthreads();
        const int key_position = chunk_start + lane;
#pragma unroll
        for (int r = 0; r < shape::rows_per_warp; r++) {
            if (row_position[r] < chunk_start) continue; /* masked out entirely (or an empty row); warp-uniform */
            const float *query = q_tile + (warp * shape::rows_per_warp + r) * HD, *key = k_chunk + lane * (HD + 1);
            float score = 0;
#pragma unroll 8
            for (int d = 0; d < HD; d++) score += query[d] * key[d];
            if (key_position > row_position[r]) score = -INFINITY;
            float chunk_max = score;
            for (int offset = 16; offset > 0; offset /= 2) chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, offset));
            const float new_max = fmaxf(row_max[r], chunk_max); /* finite: key chunk_start is visible */
            const float correction = expf(row_max[r] - new_max), weight = expf(score - new_max);
            float weight_sum = weight;
            for (int offset = 16; offset > 0; offset /= 2) weight_sum += __shfl_xor_sync(0xffffffffu, weight_sum, offset);
            row_sum[r] = row_sum[r] * correction + weight_sum;
            row_max[r] = new_max;
#pragma unroll
            for (int i = 0; i < shape::per_lane; i++) acc[r][i] *= correction;
            for (int k = 0; k < shape::chunk; k++) {
                float w = __shfl_sync(0xffffffffu, weight, k);
#pragma unroll
                for (int i = 0; i < shape::per_lane; i++) acc[r][i] += w * v_chunk[k * HD + lane + 32 * i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < shape::rows_per_warp; r++) {
        int row = warp * shape::rows_per_warp + r;
        if (row >= n_rows) continue;
        int token = first + row / group, head = kv_head * group + row % group;
        float *result = out + ((int64_t)token * n_head + head) * HD;
#pragma unroll
        for (int i = 0; i < shape::per_lane; i++) result[lane + 32 * i] = acc[r][i] / row_sum[r];
    }
}

template <int HD>
static cudaError_t launch_flash(const float *q, float *out, int n_head, kv_addressing a, int kv_is_f32, const int32_t *pages,
                                const int64_t *page_offsets, const int32_t *positions, const int32_t *tiles, int n_tiles,
                                cudaStream_t stream) {
    typedef flash_shape<HD> shape;
    dim3 grid((unsigned)n_tiles, (unsigned)a.n_head_kv);
    float scale = 1.0f / sqrtf((float)HD);
    if (kv_is_f32) {
        TM_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)shape::shared_bytes));
        flash_attention_kernel<HD, false><<<grid, 32 * WARPS, shape::shared_bytes, stream>>>(q, out, a, pages, page_offsets, positions,
                                                                                             tiles, n_head, scale);
    } else {
        TM_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<HD, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)shape::shared_bytes));
        flash_attention_kernel<HD, true><<<grid, 32 * WARPS, shape::shared_bytes, stream>>>(q, out, a, pages, page_offsets, positions,
                                                                                            tiles, n_head, scale);
    }
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

extern "C" int tm_cuda_flash_tile_tokens(int head_dim, int n_head, int n_head_kv) {
    if (n_head_kv < 1 || n_head % n_head_kv) return 0;
    int rows = head_dim == 256 ? flash_shape<256>::rows
               : head_dim == 128 ? flash_shape<128>::rows
               : head_dim == 64  ? flash_shape<64>::rows
               : head_dim == 32  ? flash_shape<32>::rows
                                 : 0;
    return rows / (n_head / n_head_kv);
}

extern "C" int tm_cuda_flash_attention(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const void *pool,
                                       int kv_is_f32, uint32_t page_size, const int32_t *pages, const int64_t *page_offsets,
                                       const int32_t *positions, const int32_t *tiles, int n_tiles, void *stream) {
    if (tm_cuda_flash_tile_tokens(head_dim, n_head, n_head_kv) < 1) return cudaErrorInvalidValue;
    if (n_tiles == 0) return cudaSuccess;
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    cudaStream_t s = (cudaStream_t)stream;
    if (head_dim == 32) return launch_flash<32>(q, out, n_head, a, kv_is_f32, pages, page_offsets, positions, tiles, n_tiles, s);
    if (head_dim == 64) return launch_flash<64>(q, out, n_head, a, kv_is_f32, pages, page_offsets, positions, tiles, n_tiles, s);
    if (head_dim == 128) return launch_flash<128>(q, out, n_head, a, kv_is_f32, pages, page_offsets, positions, tiles, n_tiles, s);
    return launch_flash<256>(q, out, n_head, a, kv_is_f32, pages, page_offsets, positions, tiles, n_tiles, s);
}

/* One thread per element: key and value of each (token, kv head, dim) into its page. */
template <bool HALF>
__global__ void kv_append_kernel(const float *k, const float *v, int n_tokens, kv_addressing a, int head_dim,
                                 const int32_t *pages, const int64_t *page_offsets, const int32_t *positions) {
    int64_t index = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t per_token = (int64_t)a.n_head_kv * head_dim;
    if (index >= n_tokens * per_token) return;
    int token = (int)(index / per_token), head = (int)(index % per_token / head_dim), d = (int)(index % head_dim);
    const int32_t *table = pages + page_offsets[token];
    uint8_t *key = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, false));
    uint8_t *value = const_cast<uint8_t *>(kv_address(a, table, positions[token], head, true));
    if (HALF) {
        reinterpret_cast<__half *>(key)[d] = __float2half_rn(k[index]);
        reinterpret_cast<__half *>(value)[d] = __float2half_rn(v[index]);
    } else {
        reinterpret_cast<float *>(key)[d] = k[index];
        reinterpret_cast<float *>(value)[d] = v[index];
    }
}

extern "C" int tm_cuda_kv_append(const float *k, const float *v, int n_tokens, int n_head_kv, int head_dim, void *pool,
                                 int kv_is_f32, uint32_t page_size, const int32_t *pages, const int64_t *page_offsets,
                                 const int32_t *positions, void *stream) {
    kv_addressing a = make_addressing(pool, kv_is_f32, page_size, n_head_kv, head_dim);
    int64_t total = (int64_t)n_tokens * n_head_kv * head_dim;
    if (total == 0) return cudaSuccess;
    unsigned blocks = (unsigned)((total + 255) / 256);
    if (kv_is_f32)
        kv_append_kernel<false><<<blocks, 256, 0, (cudaStream_t)stream>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    else
        kv_append_kernel<true><<<blocks, 256, 0, (cudaStream_t)stream>>>(k, v, n_tokens, a, head_dim, pages, page_offsets, positions);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}
