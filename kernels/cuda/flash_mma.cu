/*
 * flash_mma.cu - prefill flash attention on tensor cores (mma.sync m16n8k16, f16 inputs, float32
 * accumulation; runs on sm_80 and later, so on both the RTX 4090 and the H100), reading keys and
 * values from an f16 paged KV cache through the page tables (kv_address.cuh).
 *
 * A block owns a tile of BM = 128 query rows, (token, query head) pairs of one kv head's group, as
 * the float kernel of attention.cu: eight warps of 16 rows each. The queries are scaled by
 * log2(e) / sqrt(head_dim), rounded to f16 and held in registers for the whole key loop. Keys and
 * values stream through shared memory in tiles of BN keys, double-buffered with cp.async (the
 * next tile's rows are gathered page by page while the tensor cores work on this one; keys past
 * the end are zero-filled). Per tile each warp computes S = Q K^T (ldmatrix of K), masks, updates
 * its online softmax in registers (exp2; row max and sum shared by the four lanes of a row), turns
 * the probabilities into f16 A fragments in place and accumulates O += P V (ldmatrix.trans of V).
 * Rows of 16-byte chunks are XOR-swizzled so every ldmatrix is free of bank conflicts.
 * Causal: row r sees keys 0..position(r); blocks take the tiles latest first, the heaviest work
 * first. Non-causal (n_keys > 0): every row sees keys 0..n_keys-1.
 *
 * Precision: queries and probabilities are rounded to f16 (relative 2^-11), sums in float32; the
 * float kernel of attention.cu stays the reference (exact precision).
 */
#include "common.cuh"
#include "kernels.h"
#include "kv_address.cuh"

#include <stdlib.h>

namespace {

/* W warps per block, 16 query rows each: BM = 16 W query rows per block. */
template <int HD, int W> struct mma_shape {
    static constexpr int bm = 16 * W;
    static constexpr int bn = HD >= 256 ? 32 : 64; /* keys per tile (registers: S is 16 x bn per warp) */
    static constexpr int chunks = HD / 8;          /* 16-byte chunks per f16 row */
    static constexpr uint32_t q_bytes = bm * HD * 2, kv_bytes = bn * HD * 2;
    static constexpr size_t shared_bytes = q_bytes + 4 * (size_t)kv_bytes; /* Q, then K0 V0 K1 V1 */
};

/* Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][HD] f16 tile: the chunk index is
 * XORed with row % 8 so that eight rows at the same logical chunk fall in eight bank groups. */
template <int HD> __device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
    return (uint32_t)(row * HD * 2 + ((chunk ^ (row & 7)) << 4));
}

__device__ __forceinline__ uint32_t shared_address(const void *pointer) { return (uint32_t)__cvta_generic_to_shared(pointer); }

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros. */
__device__ __forceinline__ void copy_async_16(uint32_t destination, const void *source, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(source), "r"(src_bytes));
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

/* d += a (16x16, row) * b (16x8, col), f16 in, float32 accumulate. */
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float low, float high) {
    __half2 h = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* Where kv head `head`'s key and value vectors sit, worked out once per block, so the per-key
 * address is a page-table read, a shift (or a division where rows per page is not a power of
 * two) and adds. */
struct kv_gather {
    const uint8_t *pool;
    int64_t page_size;
    int rows_per_page, rows_shift, pages_per_row, row_bytes;
    int key_page, key_offset, value_page, value_offset; /* page within the row (pages_per_row) and byte offset */
};

__device__ __forceinline__ kv_gather make_gather(const kv_addressing &a, int head) {
    kv_gather g;
    g.pool = a.pool, g.page_size = a.page_size, g.rows_per_page = (int)a.rows_per_page, g.pages_per_row = (int)a.pages_per_row;
    g.row_bytes = (int)a.row_bytes;
    g.rows_shift = g.rows_per_page && !(g.rows_per_page & (g.rows_per_page - 1)) ? __ffs(g.rows_per_page) - 1 : -1;
    const int key_in_row = head * (int)a.head_bytes, value_in_row = (a.n_head_kv + head) * (int)a.head_bytes;
    if (g.rows_per_page) {
        g.key_page = g.value_page = 0, g.key_offset = key_in_row, g.value_offset = value_in_row;
    } else {
        g.key_page = key_in_row / (int)a.page_size, g.key_offset = key_in_row % (int)a.page_size;
        g.value_page = value_in_row / (int)a.page_size, g.value_offset = value_in_row % (int)a.page_size;
    }
    return g;
}

/* Addresses of token p's key and value vectors (the same bytes as kv_address). */
__device__ __forceinline__ void gather_address(const kv_gather &g, const int32_t *table, int p, const uint8_t *&key,
                                               const uint8_t *&value) {
    if (g.rows_per_page) {
        const int page = g.rows_shift >= 0 ? p >> g.rows_shift : p / g.rows_per_page;
        const int row = p - page * g.rows_per_page;
        const uint8_t *base = g.pool + (int64_t)table[page] * g.page_size + row * g.row_bytes;
        key = base + g.key_offset, value = base + g.value_offset;
    } else {
        const int32_t *row_pages = table + p * g.pages_per_row;
        key = g.pool + (int64_t)row_pages[g.key_page] * g.page_size + g.key_offset;
        value = g.pool + (int64_t)row_pages[g.value_page] * g.page_size + g.value_offset;
    }
}

/* Gather key tile `tile` (keys tile * bn ..) and its values into shared memory at k_tile / v_tile;
 * keys from key_end on are zero-filled. */
template <int HD, int W>
__device__ __forceinline__ void load_kv_tile(const kv_gather &g, const int32_t *table, int tile, int key_end, uint32_t k_tile,
                                             uint32_t v_tile) {
    typedef mma_shape<HD, W> shape;
    const int chunk = threadIdx.x % shape::chunks; /* fixed per thread: 32 * W is a multiple of the chunks per row */
    for (int key = threadIdx.x / shape::chunks; key < shape::bn; key += 32 * W / shape::chunks) {
        const int p = tile * shape::bn + key;
        const bool valid = p < key_end;
        const uint8_t *k = g.pool, *v = g.pool;
        if (valid) gather_address(g, table, p, k, v);
        const uint32_t at = swizzled<HD>(key, chunk);
        copy_async_16(k_tile + at, valid ? k + 16 * chunk : k, valid ? 16 : 0);
        copy_async_16(v_tile + at, valid ? v + 16 * chunk : v, valid ? 16 : 0);
    }
}

template <int HD, int W>
__global__ void __launch_bounds__(32 * W) flash_mma_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages,
                                                               const int64_t *page_offsets, const int32_t *positions,
                                                               const int32_t *tiles, int n_tiles, int n_head, float q_scale,
                                                               int n_keys) {
    typedef mma_shape<HD, W> shape;
    constexpr int BM = shape::bm, BN = shape::bn, CHUNKS = shape::chunks;
    extern __shared__ __align__(128) uint8_t shared[];
    const uint32_t q_tile = shared_address(shared), kv_tiles = q_tile + shape::q_bytes;

    const int tile = n_tiles - 1 - (int)blockIdx.x; /* latest (heaviest, when causal) first */
    const int first = tiles[2 * tile], n_tokens = tiles[2 * tile + 1], kv_head = blockIdx.y;
    const int group = n_head / a.n_head_kv, n_rows = n_tokens * group;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t *table = pages + page_offsets[first];
    const kv_gather gather = make_gather(a, kv_head);

    /* keys this tile reads: 0..key_end-1 */
    int key_end = n_keys;
    if (n_keys <= 0) {
        key_end = 0;
        for (int t = 0; t < n_tokens; t++) key_end = max(key_end, positions[first + t] + 1);
    }
    const int n_key_tiles = (key_end + BN - 1) / BN;
    load_kv_tile<HD, W>(gather, table, 0, key_end, kv_tiles, kv_tiles + shape::kv_bytes);
    copy_async_commit();

    /* the queries, scaled and rounded to f16, into shared memory (zeros past the tile's rows) */
    for (int i = threadIdx.x; i < BM * CHUNKS; i += 32 * W) {
        const int row = i / CHUNKS, chunk = i % CHUNKS;
        uint4 packed = make_uint4(0, 0, 0, 0);
        if (row < n_rows) {
            const int token = first + row / group, head = kv_head * group + row % group;
            const float4 *source = reinterpret_cast<const float4 *>(q + ((int64_t)token * n_head + head) * HD + 8 * chunk);
            const float4 x = source[0], y = source[1];
            packed.x = pack_half2(x.x * q_scale, x.y * q_scale), packed.y = pack_half2(x.z * q_scale, x.w * q_scale);
            packed.z = pack_half2(y.x * q_scale, y.y * q_scale), packed.w = pack_half2(y.z * q_scale, y.w * q_scale);
        }
        *reinterpret_cast<uint4 *>(shared + swizzled<HD>(row, chunk)) = packed;
    }
    __syncthreads();
    /* this warp's 16 rows as A fragments, one per 16 dimensions */
    uint32_t q_frag[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
        ldmatrix_x4(q_frag[kk], q_tile + swizzled<HD>(warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4)));

    /* this lane's two rows: g and g + 8 of the warp's 16; the last key each may see */
    const int g = lane >> 2, quad = lane & 3;
    int last_key[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = warp * 16 + g + 8 * h;
        last_key[h] = row >= n_rows ? -1 : n_keys > 0 ? n_keys - 1 : positions[first + row / group];
    }
    const int lane_min_last = min(last_key[0], last_key[1]);

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0, 0};

    for (int t = 0; t < n_key_tiles; t++) {
        copy_async_wait_all();
        __syncthreads(); /* tile t is in; every warp is done with tile t - 1, whose buffers refill now */
        if (t + 1 < n_key_tiles) {
            const uint32_t next = kv_tiles + 2 * ((t + 1) & 1) * shape::kv_bytes;
            load_kv_tile<HD, W>(gather, table, t + 1, key_end, next, next + shape::kv_bytes);
        }
        copy_async_commit();
        const uint32_t k_tile = kv_tiles + 2 * (t & 1) * shape::kv_bytes, v_tile = k_tile + shape::kv_bytes;

        /* S = Q K^T: 16 x BN per warp, n-tiles of 8 keys */
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, k_tile + swizzled<HD>(8 * j + (lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1)));
                mma_16816(s[j], q_frag[kk], b[0], b[1]);
                mma_16816(s[j + 1], q_frag[kk], b[2], b[3]);
            }
        }
        /* mask keys past each row's last visible key */
        const int key0 = t * BN;
        if (key0 + BN - 1 > lane_min_last) {
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (key0 + 8 * j + 2 * quad + (e & 1) > last_key[e >> 1]) s[j][e] = -INFINITY;
        }
        /* online softmax per row (the row's four lanes agree on max and correction) */
        float correction[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float m = row_max[h];
#pragma unroll
            for (int j = 0; j < BN / 8; j++) m = fmaxf(m, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            const float base = m == -INFINITY ? 0.0f : m; /* nothing visible yet: every weight is 0 */
            correction[h] = exp2f(row_max[h] - base);
            row_max[h] = m;
            float sum = 0;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                s[j][2 * h] = exp2f(s[j][2 * h] - base);
                s[j][2 * h + 1] = exp2f(s[j][2 * h + 1] - base);
                sum += s[j][2 * h] + s[j][2 * h + 1];
            }
            row_sum[h] = row_sum[h] * correction[h] + sum; /* this lane's share; the quad sums at the end */
        }
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            o[j][0] *= correction[0], o[j][1] *= correction[0];
            o[j][2] *= correction[1], o[j][3] *= correction[1];
        }
        /* O += P V: P's accumulators are already the A fragments of 16-key steps */
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
            const uint32_t p_frag[4] = {pack_half2(s[2 * kt][0], s[2 * kt][1]), pack_half2(s[2 * kt][2], s[2 * kt][3]),
                                        pack_half2(s[2 * kt + 1][0], s[2 * kt + 1][1]), pack_half2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
            for (int j = 0; j < HD / 8; j += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_tile + swizzled<HD>(16 * kt + (lane & 7) + 8 * ((lane >> 3) & 1), j + (lane >> 4)));
                mma_16816(o[j], p_frag, b[0], b[1]);
                mma_16816(o[j + 1], p_frag, b[2], b[3]);
            }
        }
    }

    /* normalize and write this lane's two rows */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float sum = row_sum[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = warp * 16 + g + 8 * h;
        if (row >= n_rows) continue;
        const float inverse = sum > 0 ? 1.0f / sum : 0.0f;
        const int token = first + row / group, head = kv_head * group + row % group;
        float *result = out + ((int64_t)token * n_head + head) * HD + 2 * quad;
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
            *reinterpret_cast<float2 *>(result + 8 * j) = make_float2(o[j][2 * h] * inverse, o[j][2 * h + 1] * inverse);
    }
}

template <int HD, int W>
cudaError_t launch(const float *q, float *out, int n_head, const kv_addressing &a, const int32_t *pages, const int64_t *page_offsets,
                   const int32_t *positions, const int32_t *tiles, int n_tiles, int n_keys, cudaStream_t stream) {
    typedef mma_shape<HD, W> shape;
    TM_CUDA_CHECK(cudaFuncSetAttribute(flash_mma_kernel<HD, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shape::shared_bytes));
    const float q_scale = 1.4426950408889634f / sqrtf((float)HD); /* log2(e) / sqrt(head_dim): softmax in exp2 */
    flash_mma_kernel<HD, W><<<dim3((unsigned)n_tiles, (unsigned)a.n_head_kv), 32 * W, shape::shared_bytes, stream>>>(
        q, out, a, pages, page_offsets, positions, tiles, n_tiles, n_head, q_scale, n_keys);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

/* Warps per block (query rows / 16). TM_FLASH_MMA_WARPS=4|8 overrides it for experiments. */
int warps_per_block() {
    static int warps = 0;
    if (!warps) {
        const char *text = getenv("TM_FLASH_MMA_WARPS");
        warps = text && atoi(text) == 4 ? 4 : 8;
    }
    return warps;
}

} // namespace

extern "C" int tm_cuda_flash_mma_tile_tokens(int head_dim, int n_head, int n_head_kv) {
    const int rows = 16 * warps_per_block();
    if (n_head_kv < 1 || n_head % n_head_kv || n_head / n_head_kv > rows) return 0;
    if (head_dim != 64 && head_dim != 128 && head_dim != 256) return 0;
    return rows / (n_head / n_head_kv);
}

extern "C" int tm_cuda_flash_attention_mma(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const void *pool,
                                           uint32_t page_size, const int32_t *pages, const int64_t *page_offsets,
                                           const int32_t *positions, const int32_t *tiles, int n_tiles, int n_keys, void *stream) {
    if (tm_cuda_flash_mma_tile_tokens(head_dim, n_head, n_head_kv) < 1) return cudaErrorInvalidValue;
    if (n_tiles == 0) return cudaSuccess;
    const kv_addressing a = make_addressing(pool, 0, page_size, n_head_kv, head_dim);
    cudaStream_t s = (cudaStream_t)stream;
#define TM_FLASH_MMA_LAUNCH(HD, W) launch<HD, W>(q, out, n_head, a, pages, page_offsets, positions, tiles, n_tiles, n_keys, s)
    if (warps_per_block() == 4) {
        if (head_dim == 64) return TM_FLASH_MMA_LAUNCH(64, 4);
        if (head_dim == 128) return TM_FLASH_MMA_LAUNCH(128, 4);
        return TM_FLASH_MMA_LAUNCH(256, 4);
    }
    if (head_dim == 64) return TM_FLASH_MMA_LAUNCH(64, 8);
    if (head_dim == 128) return TM_FLASH_MMA_LAUNCH(128, 8);
    return TM_FLASH_MMA_LAUNCH(256, 8);
#undef TM_FLASH_MMA_LAUNCH
}
