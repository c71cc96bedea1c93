/*
 * flash_mma.cu - prefill flash attention on tensor cores, reading keys and values from an f16
 * or 8-bit paged KV cache through the page tables (kv_address.cuh): queries and probabilities
 * rounded to f16 (an 8-bit cache's values times their scale too, as they are staged), float32
 * accumulation. Two kernels with one contract, chosen per device (pick_config):
 *
 * flash_wgmma_kernel (sm_90a: H100/H200): warpgroups of 64 query rows; S = Q K^T by wgmma with
 * both operands in shared memory (128-byte-swizzled canonical layout), the online softmax in
 * registers, O += P V by wgmma with P in registers and V read transposed from shared memory.
 * 343 TFLOP/s at head_dim 128 x 4096 tokens and 390 at head_dim 256 x 8192 on the H200
 * (docs/perf-notes.md), against 310 and 275 for the best mma.sync layout.
 *
 * flash_mma_kernel (sm_80 and later, so also the RTX 4090; mma.sync m16n8k16): a block owns BM
 * query rows, W warps of MT m16 tiles each (BM = 16 MT W). The queries are scaled by log2(e) /
 * sqrt(head_dim), rounded to f16 and kept in shared memory; each warp reads them as A fragments
 * per 16 dimensions. Per tile each warp computes S = Q K^T (one ldmatrix of K serves its MT m16
 * tiles), masks, updates its online softmax in registers (exp2; row max and sum shared by the
 * four lanes of a row), turns the probabilities into f16 A fragments in place and accumulates
 * O += P V (one ldmatrix.trans of V serves MT tiles). MT = 2 where registers allow (head dims
 * 64 and 128): a B fragment then feeds two mma, halving the shared-memory traffic per tensor
 * operation (one m16 tile per warp ran at 166 TFLOP/s on the H200, two at 310). PINGPONG
 * variants run half the warps half a tile behind (kept as candidates; measured slower).
 *
 * Both: a block's (token, query head) rows belong to one kv head's group, as the float kernel of
 * attention.cu; keys and values stream through shared memory in tiles of BN keys, double-buffered
 * with cp.async, rows of 16-byte chunks XOR-swizzled so ldmatrix and wgmma read without bank
 * conflicts; the page-table entries of a tile are copied into shared memory (cp.async) one tile
 * ahead of its keys, so no thread waits on a page-table read before issuing its copies. The O
 * rescale is skipped when no row of a warp found a new maximum. Causal: row r sees keys
 * 0..position(r); blocks take the tiles latest first, the heaviest work first, and a warp
 * (warpgroup) skips a key tile none of its rows can see. Non-causal (n_keys > 0): every row sees
 * keys 0..n_keys-1.
 *
 * Configurations (per head dim, best first) are listed in `configs`; the first the device can run
 * (sm_90a code, shared memory per block: the RTX 4090 grants 99 KB) is the default;
 * TM_FLASH_MMA_CONFIG=N selects candidate N of the head dim's list for experiments
 * (tools/flash-configs measures each).
 *
 * Precision: queries and probabilities are rounded to f16 (relative 2^-11), sums in float32; the
 * float kernel of attention.cu stays the reference (exact precision).
 */
#include "common.cuh"
#include "kernels.h"
#include "kv_address.cuh"
#include "launch.cuh"
#include "mma.cuh"

#include <stdlib.h>

namespace {

/* MT m16 tiles per warp, W warps: BM = 16 MT W query rows per block; BN keys per tile. PINGPONG:
 * the second half of the warps runs half a tile behind the first (see flash_mma_kernel), which
 * takes a third K/V buffer. */
template <int HD, int MT, int W, int BN, bool PINGPONG> struct flash_shape {
    static constexpr int threads = 32 * W;
    static constexpr int bm = 16 * MT * W;
    static constexpr int chunks = HD / 8; /* 16-byte chunks per f16 row */
    static constexpr int stages = PINGPONG ? 3 : 2;
    static constexpr uint32_t q_bytes = bm * HD * 2, kv_bytes = BN * HD * 2;
    static constexpr uint32_t entry_bytes = BN * 2 * 4; /* a tile's page entries: (key page, value page) per key */
    /* Q, stages x (K, V), then two tiles of page entries */
    static constexpr size_t shared_bytes = q_bytes + 2 * stages * (size_t)kv_bytes + 2 * entry_bytes;
    static constexpr int min_blocks = W <= 4 ? 2 : 1;
    static_assert((32 * W) % chunks == 0, "a thread copies one fixed chunk of each key row it loads");
    static_assert(BN <= 32 * W, "a thread per key copies the tile's page entries");
    static_assert(BN % 16 == 0, "P V takes 16 keys per step");
    static_assert(!PINGPONG || W % 2 == 0, "ping-pong splits the warps in two halves");
};

/* Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][HD] f16 tile: the chunk index is
 * XORed with row % 8 so that eight rows at the same logical chunk fall in eight bank groups. */
template <int HD> __device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
    return (uint32_t)(row * HD * 2 + ((chunk ^ (row & 7)) << 4));
}

/* 2^x on the special-function unit (2^-inf = 0). */
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}


/* Where kv head `head`'s key and value vectors sit, worked out once per block: the page-table
 * index of a token's key (value) page is p >> rows_shift (p / rows_per_page) when whole rows share
 * a page, else p * pages_per_row + key_page (value_page); the byte address is then the page's
 * base plus the row's offset in it plus key_offset (value_offset). */
struct kv_gather {
    const uint8_t *pool;
    const float *scales; /* an 8-bit cache's */
    int64_t page_size;
    int rows_per_page, rows_shift, pages_per_row, row_bytes;
    int key_page, key_offset, value_page, value_offset;
};

__device__ __forceinline__ kv_gather make_gather(const kv_addressing &a, int head) {
    kv_gather g;
    g.pool = a.pool, g.scales = a.scales, g.page_size = a.page_size, g.rows_per_page = (int)a.rows_per_page, g.pages_per_row = (int)a.pages_per_row;
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

/* The row of token p within its page (0 when a row spans pages). */
__device__ __forceinline__ int row_in_page(const kv_gather &g, int p) {
    if (!g.rows_per_page) return 0;
    return g.rows_shift >= 0 ? p & (g.rows_per_page - 1) : p % g.rows_per_page;
}

/* Copy the page-table entries of key tile `tile` (key page, value page per key) into `entries`
 * (shared, 2 x BN int32); keys from key_end on get zeros. A thread per key. */
template <int BN>
__device__ __forceinline__ void load_entries(const kv_gather &g, const int32_t *table, int tile, int key_end, uint32_t entries) {
    const int key = threadIdx.x;
    if (key >= BN) return;
    const int p = tile * BN + key;
    const bool valid = p < key_end;
    const int32_t *k = table, *v = table;
    if (valid) {
        if (g.rows_per_page) k = v = table + (g.rows_shift >= 0 ? p >> g.rows_shift : p / g.rows_per_page);
        else k = table + p * g.pages_per_row + g.key_page, v = table + p * g.pages_per_row + g.value_page;
    }
    copy_async_4(entries + 8 * key, k, valid ? 4 : 0);
    copy_async_4(entries + 8 * key + 4, v, valid ? 4 : 0);
}

/* An 8-bit cache's chunk of 8 elements (8 bytes at `vector` + 8 chunk) times the vector's scale, as
 * the 8 halves (16 bytes) the f16 tile holds there. */
template <int HD> __device__ __forceinline__ uint4 scaled_q8_chunk(const kv_gather &g, const uint8_t *vector, int chunk) {
    const float scale = kv_scale<HD>(g.scales, g.pool, vector);
    const uint2 bytes = __ldg(reinterpret_cast<const uint2 *>(vector + 8 * chunk));
    float x[8];
    int8x4_to_float(bytes.x, x), int8x4_to_float(bytes.y, x + 4);
    return make_uint4(pack_half2(x[0] * scale, x[1] * scale), pack_half2(x[2] * scale, x[3] * scale), pack_half2(x[4] * scale, x[5] * scale),
                      pack_half2(x[6] * scale, x[7] * scale));
}

/* 16 bytes into shared memory at a shared-space address. */
__device__ __forceinline__ void store_shared_16(uint32_t at, uint4 v) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

/* Gather key tile `tile`'s keys and values into shared memory at k_tile / v_tile through the
 * page entries already in shared memory; keys from key_end on are zero-filled. f16: copied by
 * cp.async. Q8 (an 8-bit cache): each thread's int8 chunks and scales loaded into registers (all of
 * its loads issued before the first store), scaled and rounded to f16 and stored where the f16
 * cache's chunks go, so the kernels read the same tile either way (the loads' latency is not
 * hidden behind the current tile's work as cp.async's is). */
template <int HD, int BN, int THREADS, bool ATOMS = false, bool Q8 = false>
__device__ __forceinline__ void load_kv_tile(const kv_gather &g, const int32_t *entries, int tile, int key_end, uint32_t k_tile,
                                             uint32_t v_tile) {
    constexpr int CHUNKS = HD / 8;
    const int chunk = threadIdx.x % CHUNKS;
    if (Q8) {
        constexpr int PER_THREAD = BN / (THREADS / CHUNKS) > 0 ? (BN + THREADS / CHUNKS - 1) / (THREADS / CHUNKS) : 1;
        uint4 k_pieces[PER_THREAD], v_pieces[PER_THREAD];
#pragma unroll
        for (int i = 0; i < PER_THREAD; i++) {
            const int key = threadIdx.x / CHUNKS + i * (THREADS / CHUNKS), p = tile * BN + key;
            k_pieces[i] = v_pieces[i] = make_uint4(0, 0, 0, 0);
            if (key < BN && p < key_end) {
                const int row_offset = row_in_page(g, p) * g.row_bytes;
                k_pieces[i] = scaled_q8_chunk<HD>(g, g.pool + (int64_t)entries[2 * key] * g.page_size + row_offset + g.key_offset, chunk);
                v_pieces[i] = scaled_q8_chunk<HD>(g, g.pool + (int64_t)entries[2 * key + 1] * g.page_size + row_offset + g.value_offset, chunk);
            }
        }
#pragma unroll
        for (int i = 0; i < PER_THREAD; i++) {
            const int key = threadIdx.x / CHUNKS + i * (THREADS / CHUNKS);
            if (key >= BN) continue;
            const uint32_t at = ATOMS ? swizzled_atoms(key, chunk, BN) : swizzled<HD>(key, chunk);
            store_shared_16(k_tile + at, k_pieces[i]), store_shared_16(v_tile + at, v_pieces[i]);
        }
    } else {
#pragma unroll
        for (int key = threadIdx.x / CHUNKS; key < BN; key += THREADS / CHUNKS) {
            const int p = tile * BN + key;
            const uint32_t at = ATOMS ? swizzled_atoms(key, chunk, BN) : swizzled<HD>(key, chunk);
            if (p < key_end) {
                const int row_offset = row_in_page(g, p) * g.row_bytes + 16 * chunk;
                const uint8_t *k = g.pool + (int64_t)entries[2 * key] * g.page_size + row_offset + g.key_offset;
                const uint8_t *v = g.pool + (int64_t)entries[2 * key + 1] * g.page_size + row_offset + g.value_offset;
                copy_async_16(k_tile + at, k, 16);
                copy_async_16(v_tile + at, v, 16);
            } else {
                copy_async_16(k_tile + at, g.pool, 0);
                copy_async_16(v_tile + at, g.pool, 0);
            }
        }
    }
}

/* Keys a tile of queries reads, 0..key_end-1: n_keys when given (non-causal), else one past the
 * tile's latest position. */
__device__ __forceinline__ int tile_key_end(int n_keys, const int32_t *positions, int first, int n_tokens) {
    if (n_keys > 0) return n_keys;
    int key_end = 0;
    for (int t = 0; t < n_tokens; t++) key_end = max(key_end, positions[first + t] + 1);
    return key_end;
}

/* The copy pipeline's start: the page entries of key tile 0 (waited for: its copies need them),
 * then tile 0's keys and values into k_tile / v_tile with the entries of tile 1 into the second
 * entry slot, committed as one group. */
template <int HD, int BN, int THREADS, bool ATOMS, bool Q8>
__device__ __forceinline__ void start_kv_pipeline(const kv_gather &g, const int32_t *table, int key_end, int n_key_tiles,
                                                  const int32_t *entries, uint32_t entry_tiles, uint32_t entry_bytes, uint32_t k_tile,
                                                  uint32_t v_tile) {
    load_entries<BN>(g, table, 0, key_end, entry_tiles);
    copy_async_commit();
    copy_async_wait_all();
    __syncthreads();
    load_kv_tile<HD, BN, THREADS, ATOMS, Q8>(g, entries, 0, key_end, k_tile, v_tile);
    if (n_key_tiles > 1) load_entries<BN>(g, table, 1, key_end, entry_tiles + entry_bytes);
    copy_async_commit();
}

/* The tile's BM query rows, scaled and rounded to f16, into shared memory at `tile` (a generic
 * pointer), laid out for ldmatrix (ATOMS false) or wgmma (true); zeros past the tile's n_rows. */
template <int HD, int BM, int THREADS, bool ATOMS>
__device__ __forceinline__ void stage_queries(uint8_t *tile, const float *q, float q_scale, int n_rows, int first, int group, int kv_head,
                                              int n_head) {
    constexpr int CHUNKS = HD / 8;
#pragma unroll 1
    for (int i = threadIdx.x; i < BM * CHUNKS; i += THREADS) {
        const int row = i / CHUNKS, chunk = i % CHUNKS;
        uint4 packed = make_uint4(0, 0, 0, 0);
        if (row < n_rows) {
            const int token = first + row / group, head = kv_head * group + row % group;
            const float4 *source = reinterpret_cast<const float4 *>(q + ((int64_t)token * n_head + head) * HD + 8 * chunk);
            const float4 x = source[0], y = source[1];
            packed.x = pack_half2(x.x * q_scale, x.y * q_scale), packed.y = pack_half2(x.z * q_scale, x.w * q_scale);
            packed.z = pack_half2(y.x * q_scale, y.y * q_scale), packed.w = pack_half2(y.z * q_scale, y.w * q_scale);
        }
        *reinterpret_cast<uint4 *>(tile + (ATOMS ? swizzled_atoms(row, chunk, BM) : swizzled<HD>(row, chunk))) = packed;
    }
}

/* The kernel. Per key tile t a warp scores (S = Q K_t^T, mask, online softmax, P = f16 of the
 * weights) and accumulates (O += P V_t). With PINGPONG the warps of the second half accumulate
 * tile t - 1 at the start of iteration t and keep P across the barrier: their tensor-core work
 * then falls where the first half does its softmax (the special-function unit's exp2) and the
 * other way round, instead of every warp of the block doing the same phase at once. */
template <int HD, int MT, int W, int BN, bool PINGPONG, bool Q8>
__global__ void __launch_bounds__(32 * W, (flash_shape<HD, MT, W, BN, PINGPONG>::min_blocks))
    flash_mma_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages, const int64_t *page_offsets,
                     const int32_t *positions, const int32_t *tiles, int n_tiles, int n_head, float q_scale, int n_keys) {
    typedef flash_shape<HD, MT, W, BN, PINGPONG> shape;
    constexpr int BM = shape::bm, THREADS = shape::threads, STAGES = shape::stages;
    extern __shared__ __align__(128) uint8_t shared[];
    const uint32_t q_tile = shared_address(shared), kv_tiles = q_tile + shape::q_bytes;
    const uint32_t entry_tiles = kv_tiles + 2 * STAGES * shape::kv_bytes;
    /* the page entries of tiles with the parity of `slot`, as an array (2 x BN int32) */
    const int32_t *entries = reinterpret_cast<const int32_t *>(shared + shape::q_bytes + 2 * STAGES * shape::kv_bytes);
#define TM_ENTRIES(slot) (entries + (slot) * (shape::entry_bytes / 4))
#define TM_K_TILE(tile) (kv_tiles + 2 * ((tile) % STAGES) * shape::kv_bytes)

    const int tile = n_tiles - 1 - (int)blockIdx.x; /* latest (heaviest, when causal) first */
    const int first = tiles[2 * tile], n_tokens = tiles[2 * tile + 1], kv_head = blockIdx.y;
    const int group = n_head / a.n_head_kv, n_rows = n_tokens * group;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t *table = pages + page_offsets[first];
    const kv_gather gather = make_gather(a, kv_head);

    const int key_end = tile_key_end(n_keys, positions, first, n_tokens);
    const int n_key_tiles = (key_end + BN - 1) / BN;
    start_kv_pipeline<HD, BN, THREADS, false, Q8>(gather, table, key_end, n_key_tiles, TM_ENTRIES(0), entry_tiles, shape::entry_bytes,
                                              TM_K_TILE(0), TM_K_TILE(0) + shape::kv_bytes);

    stage_queries<HD, BM, THREADS, false>(shared, q, q_scale, n_rows, first, group, kv_head, n_head);

    /* this lane's rows: g and g + 8 of each of the warp's m16 tiles; the last key each may see */
    const int row0 = warp * 16 * MT;
    const int g = lane >> 2, quad = lane & 3;
    int last_key[MT][2];
    int lane_min_last = INT32_MAX, lane_max_last = -1;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = row0 + 16 * m + g + 8 * h;
            last_key[m][h] = row >= n_rows ? -1 : n_keys > 0 ? n_keys - 1 : positions[first + row / group];
            lane_min_last = min(lane_min_last, last_key[m][h]);
            lane_max_last = max(lane_max_last, last_key[m][h]);
        }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        lane_min_last = min(lane_min_last, __shfl_xor_sync(0xffffffffu, lane_min_last, offset));
        lane_max_last = max(lane_max_last, __shfl_xor_sync(0xffffffffu, lane_max_last, offset));
    }
    const int warp_min_last = lane_min_last, warp_max_last = lane_max_last;

    float o[MT][HD / 8][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < HD / 8; j++) o[m][j][0] = o[m][j][1] = o[m][j][2] = o[m][j][3] = 0;
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int m = 0; m < MT; m++) row_max[m][0] = row_max[m][1] = -INFINITY, row_sum[m][0] = row_sum[m][1] = 0;
    uint32_t p[MT][BN / 16][4]; /* the weights of the last scored tile, as f16 A fragments of 16-key steps */

    /* S = Q K_t^T, masked, into the online softmax; P = the tile's weights; O rescaled */
    auto score = [&](int t) {
        const uint32_t k_tile = TM_K_TILE(t);
        float s[MT][BN / 8][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int j = 0; j < BN / 8; j++) s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t qa[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++)
                ldmatrix_x4(qa[m], q_tile + swizzled<HD>(row0 + 16 * m + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * kk + (lane >> 4)));
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, k_tile + swizzled<HD>(8 * j + (lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma_16816(s[m][j], qa[m], b[0], b[1]);
                    mma_16816(s[m][j + 1], qa[m], b[2], b[3]);
                }
            }
        }
        /* mask keys past each row's last visible key */
        const int key0 = t * BN;
        if (key0 + BN - 1 > warp_min_last) {
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (key0 + 8 * j + 2 * quad + (e & 1) > last_key[m][e >> 1]) s[m][j][e] = -INFINITY;
        }
        /* online softmax per row (the row's four lanes agree on max and correction) */
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float correction[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float mx = row_max[m][h];
#pragma unroll
                for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[m][j][2 * h], s[m][j][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float base = mx == -INFINITY ? 0.0f : mx; /* nothing visible yet: every weight is 0 */
                correction[h] = row_max[m][h] == mx ? 1.0f : exp2_approx(row_max[m][h] - base);
                row_max[m][h] = mx;
                float sum = 0;
#pragma unroll
                for (int j = 0; j < BN / 8; j++) {
                    s[m][j][2 * h] = exp2_approx(s[m][j][2 * h] - base);
                    s[m][j][2 * h + 1] = exp2_approx(s[m][j][2 * h + 1] - base);
                    sum += s[m][j][2 * h] + s[m][j][2 * h + 1];
                }
                row_sum[m][h] = row_sum[m][h] * correction[h] + sum; /* this lane's share; the quad sums at the end */
            }
            /* rescale O unless no row of the warp found a new maximum (then every factor is 1) */
            if (!__all_sync(0xffffffffu, correction[0] == 1.0f && correction[1] == 1.0f)) {
#pragma unroll
                for (int j = 0; j < HD / 8; j++) {
                    o[m][j][0] *= correction[0], o[m][j][1] *= correction[0];
                    o[m][j][2] *= correction[1], o[m][j][3] *= correction[1];
                }
            }
#pragma unroll
            for (int kt = 0; kt < BN / 16; kt++) {
                p[m][kt][0] = pack_half2(s[m][2 * kt][0], s[m][2 * kt][1]);
                p[m][kt][1] = pack_half2(s[m][2 * kt][2], s[m][2 * kt][3]);
                p[m][kt][2] = pack_half2(s[m][2 * kt + 1][0], s[m][2 * kt + 1][1]);
                p[m][kt][3] = pack_half2(s[m][2 * kt + 1][2], s[m][2 * kt + 1][3]);
            }
        }
    };
    /* O += P V_t */
    auto accumulate = [&](int t) {
        const uint32_t v_tile = TM_K_TILE(t) + shape::kv_bytes;
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
#pragma unroll
            for (int j = 0; j < HD / 8; j += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_tile + swizzled<HD>(16 * kt + (lane & 7) + 8 * ((lane >> 3) & 1), j + (lane >> 4)));
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma_16816(o[m][j], p[m][kt], b[0], b[1]);
                    mma_16816(o[m][j + 1], p[m][kt], b[2], b[3]);
                }
            }
        }
    };

    const bool lagging = PINGPONG && warp >= W / 2;
    const int iterations = n_key_tiles + (PINGPONG ? 1 : 0); /* the lagging half accumulates the last tile after it */
    for (int t = 0; t < iterations; t++) {
        copy_async_wait_all();
        __syncthreads(); /* tile t and the entries of t + 1 are in; no warp reads the buffer tile t + 1 overwrites */
        if (t + 1 < n_key_tiles) {
            load_kv_tile<HD, BN, THREADS, false, Q8>(gather, TM_ENTRIES((t + 1) & 1), t + 1, key_end, TM_K_TILE(t + 1), TM_K_TILE(t + 1) + shape::kv_bytes);
            if (t + 2 < n_key_tiles) load_entries<BN>(gather, table, t + 2, key_end, entry_tiles + (t & 1) * shape::entry_bytes);
        }
        copy_async_commit();
        /* causal: a tile none of this warp's rows sees is skipped */
        if (lagging && t >= 1 && (t - 1) * BN <= warp_max_last) accumulate(t - 1);
        if (t < n_key_tiles && t * BN <= warp_max_last) {
            score(t);
            if (!lagging) accumulate(t);
        }
    }

    /* normalize and write this lane's rows */
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float sum = row_sum[m][h];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int row = row0 + 16 * m + g + 8 * h;
            if (row >= n_rows) continue;
            const float inverse = sum > 0 ? 1.0f / sum : 0.0f;
            const int token = first + row / group, head = kv_head * group + row % group;
            float *result = out + ((int64_t)token * n_head + head) * HD + 2 * quad;
#pragma unroll
            for (int j = 0; j < HD / 8; j++)
                *reinterpret_cast<float2 *>(result + 8 * j) = make_float2(o[m][j][2 * h] * inverse, o[m][j][2 * h + 1] * inverse);
        }
#undef TM_ENTRIES
#undef TM_K_TILE
}


/* ---- sm_90a: the same attention on warpgroup MMA (wgmma) ------------------------------------ */

/* WG warpgroups of 64 query rows (BM = 64 WG), BN-key tiles (64: wgmma_qk has that width; 128
 * measured no faster, docs/perf-notes.md), K/V double-buffered as
 * above but in wgmma's canonical layout; 1 KB of slack aligns the tiles to 1024 bytes. */
template <int HD, int WG, int BN> struct wgmma_shape {
    static constexpr int threads = 128 * WG, bm = 64 * WG, bn = BN;
    static constexpr uint32_t q_bytes = bm * HD * 2, kv_bytes = bn * HD * 2, entry_bytes = bn * 2 * 4;
    static constexpr size_t shared_bytes = 1024 + q_bytes + 4 * (size_t)kv_bytes + 2 * entry_bytes;
};

#if defined(TM_WGMMA_AVAILABLE)

/* S (64 x BN) (+)= Q (64 x 16 dims) K^T (16 dims x BN keys), both K-major in shared memory. */
template <int BN> __device__ __forceinline__ void wgmma_qk(float (&s)[BN / 2], uint64_t q, uint64_t k, int accumulate);
template <> __device__ __forceinline__ void wgmma_qk<64>(float (&s)[32], uint64_t q, uint64_t k, int accumulate) { wgmma_ss_n64(s, q, k, accumulate); }

/* D (64 x HD) += P (64 x 16 keys, registers) V (16 keys x HD, MN-major) for one 16-key step. */
template <int HD> __device__ __forceinline__ void wgmma_pv(float (&o)[HD / 2], const uint32_t (&p)[4], uint64_t v);
template <> __device__ __forceinline__ void wgmma_pv<64>(float (&o)[32], const uint32_t (&p)[4], uint64_t v) { wgmma_rs_n64_tb(o, p, v); }
template <> __device__ __forceinline__ void wgmma_pv<128>(float (&o)[64], const uint32_t (&p)[4], uint64_t v) { wgmma_rs_n128_tb(o, p, v); }
template <> __device__ __forceinline__ void wgmma_pv<256>(float (&o)[128], const uint32_t (&p)[4], uint64_t v) { wgmma_rs_n256_tb(o, p, v); }
#endif


/* Same contract as flash_mma_kernel. Each warpgroup owns 64 rows: S = Q K_t^T by wgmma from
 * shared memory (Q and K K-major, 4 x 16 dims per 128-byte column block), the softmax in
 * registers per warp exactly as above (the accumulator fragment is the mma.sync one), P stays in
 * registers as the A operand of O += P V_t (V MN-major, transposed by the instruction). */
template <int HD, int WG, int BN_, bool Q8>
__global__ void __launch_bounds__(128 * WG, 1)
    flash_wgmma_kernel(const float *q, float *out, kv_addressing a, const int32_t *pages, const int64_t *page_offsets,
                       const int32_t *positions, const int32_t *tiles, int n_tiles, int n_head, float q_scale, int n_keys) {
#if defined(TM_WGMMA_AVAILABLE)
    typedef wgmma_shape<HD, WG, BN_> shape;
    constexpr int BM = shape::bm, BN = shape::bn, THREADS = shape::threads;
    extern __shared__ __align__(1024) uint8_t shared_raw[];
    const uint32_t raw = shared_address(shared_raw), q_tile = (raw + 1023) & ~1023u;
    uint8_t *shared = shared_raw + (q_tile - raw);
    const uint32_t kv_tiles = q_tile + shape::q_bytes, entry_tiles = kv_tiles + 4 * shape::kv_bytes;
    const int32_t *entries = reinterpret_cast<const int32_t *>(shared + shape::q_bytes + 4 * shape::kv_bytes);

    const int tile = n_tiles - 1 - (int)blockIdx.x; /* latest (heaviest, when causal) first */
    const int first = tiles[2 * tile], n_tokens = tiles[2 * tile + 1], kv_head = blockIdx.y;
    const int group = n_head / a.n_head_kv, n_rows = n_tokens * group;
    const int lane = threadIdx.x & 31, wg = threadIdx.x >> 7;
    const int32_t *table = pages + page_offsets[first];
    const kv_gather gather = make_gather(a, kv_head);

    const int key_end = tile_key_end(n_keys, positions, first, n_tokens);
    const int n_key_tiles = (key_end + BN - 1) / BN;
    start_kv_pipeline<HD, BN, THREADS, true, Q8>(gather, table, key_end, n_key_tiles, entries, entry_tiles, shape::entry_bytes, kv_tiles,
                                             kv_tiles + shape::kv_bytes);

    stage_queries<HD, BM, THREADS, true>(shared, q, q_scale, n_rows, first, group, kv_head, n_head);
    fence_proxy_async(); /* the queries were written by ordinary stores; wgmma reads them */

    /* this lane's rows g and g + 8 of its warp's 16; the warp's and the warpgroup's visible keys */
    const int row0 = wg * 64 + ((threadIdx.x >> 5) & 3) * 16;
    const int g = lane >> 2, quad = lane & 3;
    int last_key[2];
    for (int h = 0; h < 2; h++) {
        const int row = row0 + g + 8 * h;
        last_key[h] = row >= n_rows ? -1 : n_keys > 0 ? n_keys - 1 : positions[first + row / group];
    }
    int warp_min_last = min(last_key[0], last_key[1]), wg_max_last = -1;
    for (int r = lane; r < 64; r += 32) { /* every warp of the warpgroup scans all its 64 rows */
        const int row = wg * 64 + r;
        if (row < n_rows) wg_max_last = max(wg_max_last, n_keys > 0 ? n_keys - 1 : positions[first + row / group]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        warp_min_last = min(warp_min_last, __shfl_xor_sync(0xffffffffu, warp_min_last, offset));
        wg_max_last = max(wg_max_last, __shfl_xor_sync(0xffffffffu, wg_max_last, offset));
    }

    float o[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0, 0};

    for (int t = 0; t < n_key_tiles; t++) {
        copy_async_wait_all();
        fence_proxy_async(); /* this thread's copies are visible to wgmma after the barrier */
        __syncthreads();
        if (t + 1 < n_key_tiles) {
            const uint32_t next = kv_tiles + 2 * ((t + 1) & 1) * shape::kv_bytes;
            load_kv_tile<HD, BN, THREADS, true, Q8>(gather, entries + ((t + 1) & 1) * (shape::entry_bytes / 4), t + 1, key_end, next,
                                                next + shape::kv_bytes);
            if (t + 2 < n_key_tiles) load_entries<BN>(gather, table, t + 2, key_end, entry_tiles + (t & 1) * shape::entry_bytes);
        }
        copy_async_commit();
        const int key0 = t * BN;
        if (key0 > wg_max_last) continue; /* causal: no row of this warpgroup sees these keys */
        const uint32_t k_tile = kv_tiles + 2 * (t & 1) * shape::kv_bytes, v_tile = k_tile + shape::kv_bytes;

        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const uint32_t column = (kk >> 2) * 128 * BM + (kk & 3) * 32; /* 16 dims: a quarter of a 128-byte row */
            const uint64_t qd = wgmma_descriptor(q_tile + column + wg * 64 * 128, 16, 1024);
            const uint64_t kd = wgmma_descriptor(k_tile + (kk >> 2) * 128 * BN + (kk & 3) * 32, 16, 1024);
            wgmma_qk<BN>(s, qd, kd, kk > 0);
        }
        wgmma_commit();
        wgmma_wait_all();

        if (key0 + BN - 1 > warp_min_last) {
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (key0 + 8 * j + 2 * quad + (e & 1) > last_key[e >> 1]) s[4 * j + e] = -INFINITY;
        }
        float correction[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = row_max[h];
#pragma unroll
            for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base = mx == -INFINITY ? 0.0f : mx;
            correction[h] = row_max[h] == mx ? 1.0f : exp2_approx(row_max[h] - base);
            row_max[h] = mx;
            float sum = 0;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                s[4 * j + 2 * h] = exp2_approx(s[4 * j + 2 * h] - base);
                s[4 * j + 2 * h + 1] = exp2_approx(s[4 * j + 2 * h + 1] - base);
                sum += s[4 * j + 2 * h] + s[4 * j + 2 * h + 1];
            }
            row_sum[h] = row_sum[h] * correction[h] + sum;
        }
        if (!__all_sync(0xffffffffu, correction[0] == 1.0f && correction[1] == 1.0f)) {
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                o[4 * j] *= correction[0], o[4 * j + 1] *= correction[0];
                o[4 * j + 2] *= correction[1], o[4 * j + 3] *= correction[1];
            }
        }
        uint32_t p[BN / 16][4];
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
            p[kt][0] = pack_half2(s[8 * kt], s[8 * kt + 1]);
            p[kt][1] = pack_half2(s[8 * kt + 2], s[8 * kt + 3]);
            p[kt][2] = pack_half2(s[8 * kt + 4], s[8 * kt + 5]);
            p[kt][3] = pack_half2(s[8 * kt + 6], s[8 * kt + 7]);
        }
        wgmma_fence();
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) wgmma_pv<HD>(o, p[kt], wgmma_descriptor(v_tile + kt * 16 * 128, BN * 128, 1024));
        wgmma_commit();
        wgmma_wait_all();
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        float sum = row_sum[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = row0 + g + 8 * h;
        if (row >= n_rows) continue;
        const float inverse = sum > 0 ? 1.0f / sum : 0.0f;
        const int token = first + row / group, head = kv_head * group + row % group;
        float *result = out + ((int64_t)token * n_head + head) * HD + 2 * quad;
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
            *reinterpret_cast<float2 *>(result + 8 * j) = make_float2(o[4 * j + 2 * h] * inverse, o[4 * j + 2 * h + 1] * inverse);
    }
#endif
}

/* One configuration: its shape, and the launch. */
struct flash_config {
    int head_dim, rows, bn;    /* query rows per block, keys per tile */
    bool wgmma;                /* the sm_90a kernel (warpgroups of 64 rows) */
    int mt, warps;             /* mma.sync kernel: m16 tiles per warp, warps (wgmma: warpgroups in `warps`) */
    bool pingpong;
    size_t shared_bytes;
    cudaError_t (*launch)(const float *q, float *out, int n_head, const kv_addressing &a, const int32_t *pages,
                          const int64_t *page_offsets, const int32_t *positions, const int32_t *tiles, int n_tiles, int n_keys,
                          cudaStream_t stream);
};

/* log2(e) / sqrt(head_dim): the queries' scale, for a softmax in exp2 */
inline float query_scale(int head_dim) { return 1.4426950408889634f / sqrtf((float)head_dim); }

template <int HD, int MT, int W, int BN, bool PINGPONG>
cudaError_t launch(const float *q, float *out, int n_head, const kv_addressing &a, const int32_t *pages, const int64_t *page_offsets,
                   const int32_t *positions, const int32_t *tiles, int n_tiles, int n_keys, cudaStream_t stream) {
    typedef flash_shape<HD, MT, W, BN, PINGPONG> shape;
    const auto kernel = a.scales ? flash_mma_kernel<HD, MT, W, BN, PINGPONG, true> : flash_mma_kernel<HD, MT, W, BN, PINGPONG, false>;
    TM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shape::shared_bytes));
    kernel<<<dim3((unsigned)n_tiles, (unsigned)a.n_head_kv), shape::threads, shape::shared_bytes, stream>>>(
        q, out, a, pages, page_offsets, positions, tiles, n_tiles, n_head, query_scale(HD), n_keys);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

template <int HD, int WG, int BN>
cudaError_t launch_wgmma(const float *q, float *out, int n_head, const kv_addressing &a, const int32_t *pages, const int64_t *page_offsets,
                         const int32_t *positions, const int32_t *tiles, int n_tiles, int n_keys, cudaStream_t stream) {
    typedef wgmma_shape<HD, WG, BN> shape;
    const auto kernel = a.scales ? flash_wgmma_kernel<HD, WG, BN, true> : flash_wgmma_kernel<HD, WG, BN, false>;
    TM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shape::shared_bytes));
    kernel<<<dim3((unsigned)n_tiles, (unsigned)a.n_head_kv), shape::threads, shape::shared_bytes, stream>>>(
        q, out, a, pages, page_offsets, positions, tiles, n_tiles, n_head, query_scale(HD), n_keys);
    TM_CUDA_CHECK_LAUNCH();
    return cudaSuccess;
}

#define TM_FLASH_CONFIG(HD, MT, W, BN, PINGPONG)                                                                         \
    {HD, 16 * MT * W, BN, false, MT, W, PINGPONG, flash_shape<HD, MT, W, BN, PINGPONG>::shared_bytes, launch<HD, MT, W, BN, PINGPONG>}
#define TM_FLASH_WGMMA_CONFIG(HD, WG, BN) {HD, 64 * WG, BN, true, 0, WG, false, wgmma_shape<HD, WG, BN>::shared_bytes, launch_wgmma<HD, WG, BN>}
/* Per head dim, best first (as measured on the H200 of 2026-11-29, docs/perf-notes.md); the first
 * the device can run (sm_90a code for wgmma, and the shared memory a block may have: the RTX 4090
 * grants 99 KB) is the default. */
const flash_config configs[] = {
    TM_FLASH_WGMMA_CONFIG(64, 2, 64),       /* 307 TFLOP/s at 4096 tokens (3 and 4 warpgroups: 231, 286) */
    TM_FLASH_CONFIG(64, 2, 4, 64, false),   /* the RTX 4090's; 253 */
    TM_FLASH_WGMMA_CONFIG(128, 3, 64),      /* 114 KB; 343 at 4096 tokens */
    TM_FLASH_WGMMA_CONFIG(128, 2, 64),      /* 98 KB; 304 (128-key tiles: 338) */
    TM_FLASH_CONFIG(128, 2, 8, 64, false),  /* 129 KB; 310: the best mma.sync layout on the H200 */
    TM_FLASH_CONFIG(128, 2, 4, 64, false),  /* 97 KB: the RTX 4090's; 292 */
    TM_FLASH_WGMMA_CONFIG(256, 2, 64),      /* 194 KB; 389 at 8192 tokens */
    TM_FLASH_CONFIG(256, 1, 8, 64, false),  /* 193 KB; 275 */
    TM_FLASH_CONFIG(256, 1, 8, 48, true),   /* 209 KB; 257 (ping-pong) */
    TM_FLASH_CONFIG(256, 1, 4, 32, false),  /* 97 KB: the RTX 4090's; 223 */
};
#undef TM_FLASH_CONFIG
#undef TM_FLASH_WGMMA_CONFIG


/* The configuration for head_dim on the current device: candidate TM_FLASH_MMA_CONFIG (0-based,
 * among the head dim's entries) when set and runnable, else the first runnable one. */
const flash_config *choose_config(int device, int head_dim) {
    int limit = 0;
    if (tm_device_shared_memory(device, NULL, &limit) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    const char *text = getenv("TM_FLASH_MMA_CONFIG");
    const int wanted = text && *text ? atoi(text) : -1;
    const flash_config *chosen = NULL, *fallback = NULL;
    int index = 0;
    for (const flash_config &c : configs) {
        if (c.head_dim != head_dim) continue;
        const bool runnable = c.shared_bytes <= (size_t)limit && (!c.wgmma || tm_wgmma_available(device));
        if (runnable && index == wanted) chosen = &c;
        if (runnable && !fallback) fallback = &c;
        index++;
    }
    if (wanted >= 0 && fallback) { /* an experiment: say what runs */
        const flash_config *c = chosen ? chosen : fallback;
        const char *what = chosen ? "that candidate" : wanted < index ? "not runnable here, the default" : "no such candidate, the default";
        if (c->wgmma)
            fprintf(stderr, "flash_mma: head_dim %d, TM_FLASH_MMA_CONFIG=%d: %s: wgmma, %d warpgroups of 64 rows, %d-key tiles, %zu bytes of shared memory\n",
                    head_dim, wanted, what, c->warps, c->bn, c->shared_bytes);
        else
            fprintf(stderr, "flash_mma: head_dim %d, TM_FLASH_MMA_CONFIG=%d: %s: mma.sync, %d m16 tiles per warp, %d warps, %d-key tiles%s, %zu bytes of shared memory\n",
                    head_dim, wanted, what, c->mt, c->warps, c->bn,
                    c->pingpong ? ", ping-pong halves" : "", c->shared_bytes);
    }
    return chosen ? chosen : fallback;
}

/* choose_config for the current device, worked out once per device and head dim (every prefill
 * layer asks). */
const flash_config *pick_config(int head_dim) {
    enum { MAX_DEVICES = 64 };
    static const flash_config *chosen[MAX_DEVICES][3];
    static bool known[MAX_DEVICES][3];
    const int slot = head_dim == 64 ? 0 : head_dim == 128 ? 1 : head_dim == 256 ? 2 : -1;
    int device = 0;
    if (slot < 0 || cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= MAX_DEVICES) {
        cudaGetLastError();
        return NULL;
    }
    if (!known[device][slot]) chosen[device][slot] = choose_config(device, head_dim), known[device][slot] = true;
    return chosen[device][slot];
}

/* Tokens per tile of configuration c for this head shape; 0 when the group does not fit a tile. */
int tile_tokens_of(const flash_config *c, int n_head, int n_head_kv) {
    if (!c || n_head_kv < 1 || n_head % n_head_kv || n_head / n_head_kv > c->rows) return 0;
    return c->rows / (n_head / n_head_kv);
}

} // namespace

extern "C" int tm_cuda_flash_mma_tile_tokens(int head_dim, int n_head, int n_head_kv) {
    return tile_tokens_of(pick_config(head_dim), n_head, n_head_kv);
}

extern "C" int tm_cuda_flash_attention_mma(const float *q, float *out, int n_head, int n_head_kv, int head_dim, const tm_cuda_kv *kv,
                                           const int32_t *pages, const int64_t *page_offsets, const int32_t *positions,
                                           const int32_t *tiles, int n_tiles, int n_keys, void *stream) {
    const flash_config *c = pick_config(head_dim);
    if (!kv || !tm_cuda_kv_valid(kv, head_dim) || tile_tokens_of(c, n_head, n_head_kv) < 1) return cudaErrorInvalidValue;
    if (kv->type == TM_CUDA_KV_F32) return cudaErrorNotSupported;
    if (n_tiles == 0) return cudaSuccess;
    kv_addressing a = make_addressing(*kv, n_head_kv, head_dim);
    if (kv->type != TM_CUDA_KV_Q8) a.scales = NULL; /* the launch picks the 8-bit kernels by the scales */
    return c->launch(q, out, n_head, a, pages, page_offsets, positions, tiles, n_tiles, n_keys, (cudaStream_t)stream);
}
