/*
 * mma.cuh - what the tensor-core kernels share (flash_mma.cu, gemm_fused.cu, gemv_q8.cu, gemv_mma16.cu): shared-memory tiles
 * of 16-byte chunks in wgmma's 128-byte-swizzle layout (readable by ldmatrix too), cp.async copies
 * into them, ldmatrix and mma.sync m16n8k16 / m16n8k8 (f16 in, float32 accumulate) and m16n8k32 / m16n8k16
 * (int8 in, int32 accumulate) for sm_80 and later, and
 * the wgmma matrix descriptor (sm_90a; the instructions themselves are in wgmma.cuh). Whether a
 * device runs this build's wgmma code: tm_wgmma_available (launch.cuh).
 */
#ifndef TM_CUDA_MMA_CUH
#define TM_CUDA_MMA_CUH

#include "common.cuh"
#include "wgmma.cuh"

/* The same tile in wgmma's 128-byte-swizzle canonical layout: HD / 64 column blocks of [rows][64]
 * (128-byte rows), chunk c of a row at c % 8 XOR row % 8 within its block; a tile must start on a
 * 1024-byte boundary, where the hardware's swizzle pattern repeats. */
__device__ __forceinline__ uint32_t swizzled_atoms(int row, int chunk, int rows) {
    return (uint32_t)((chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros. */
__device__ __forceinline__ void copy_async_16(uint32_t destination, const void *source, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(source), "r"(src_bytes));
}
/* 16 bytes global -> shared, asynchronously, the miss fetching the whole 128-byte line into L2
 * (.L2::128B, as ldg_stream16 in common.cuh): for tiles whose 16-byte pieces sweep whole lines. */
__device__ __forceinline__ void copy_async_line16(uint32_t destination, const void *source) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(destination), "l"(source) : "memory");
}
/* 16 bytes global -> shared, asynchronously, through L1 (.ca): for small inputs that several
 * blocks on an SM read. */
__device__ __forceinline__ void copy_async_ca16(uint32_t destination, const void *source) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(destination), "l"(source) : "memory");
}
/* 4 bytes global -> shared, asynchronously; src_bytes 0 writes zeros. */
__device__ __forceinline__ void copy_async_4(uint32_t destination, const void *source, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(destination), "l"(source), "r"(src_bytes));
}
/* 8 bytes global -> shared, asynchronously (both 8-byte aligned). */
__device__ __forceinline__ void copy_async_8(void *destination, const void *source) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(shared_address(destination)), "l"(source) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
/* Waits until at most `PENDING` of this thread's committed copy groups are still in flight. */
template <int PENDING> __device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory"); }

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

/* d += a (16x8, row) * b (8x8, col), f16 in, float32 accumulate: a0 rows g, a1 rows g + 8 (k 2t, 2t + 1),
 * b0 k 2t, 2t + 1 of column g (g = lane / 4, t = lane % 4); d as mma_16816's. */
__device__ __forceinline__ void mma_16808(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

__device__ __forceinline__ uint32_t pack_half2(float low, float high) {
    __half2 h = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* Descriptor of a 128-byte-swizzled operand at shared address `address` (see wgmma.cuh):
 * lbo / sbo the byte strides between 64-element column blocks / 8-row groups. */
__device__ __forceinline__ uint64_t wgmma_descriptor(uint32_t address, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((address & 0x3FFFF) >> 4) | (uint64_t)((lbo & 0x3FFFF) >> 4) << 16 | (uint64_t)((sbo & 0x3FFFF) >> 4) << 32 |
           1ull << 62;
}

/* c += a (16 x 32) b (32 x 8), int8 inputs, int32 accumulators (sm_80 and later). Thread (g =
 * lane / 4, t = lane % 4) holds a0 = A[g][4t..4t+3], a1 = A[g + 8][4t..], a2 = A[g][16 + 4t..],
 * a3 = A[g + 8][16 + 4t..], b0 = B[4t..4t+3][g], b1 = B[16 + 4t..][g]; c[2r + k] = C[g + 8r][2t + k]. */
__device__ __forceinline__ void mma_s8_k32(int (&c)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* The same with A's bytes unsigned (0..255): a q4_k sub-block's high nibbles fed in place, as 16 x
 * their value (mmq_block_q4k_q5k). */
__device__ __forceinline__ void mma_u8s8_k32(int (&c)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* The same with k = 16: a0 = A[g][4t..4t+3], a1 = A[g + 8][4t..], b0 = B[4t..4t+3][g]. */
__device__ __forceinline__ void mma_s8_k16(int (&c)[4], int a0, int a1, int b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

/* The same with A's bytes unsigned (0..255): q6_k's quants without their -32 (mmq_block_q6k). */
__device__ __forceinline__ void mma_u8s8_k16(int (&c)[4], int a0, int a1, int b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

#endif /* TM_CUDA_MMA_CUH */
