/*
 * mbarrier.cuh - shared-memory mbarriers that count bytes (sm_90), and the two ways bytes reach
 * them here: copies by the bulk-copy / TMA engine into this block's shared memory (gemv_stream.cu,
 * gemm_fused.cu), and st.async stores from the other blocks of a thread-block cluster
 * (attention.cu's one-token push into its first block, ops.cu's exchange of the decode norm's
 * partial sums), which need no fence. Every address is a shared-window one (shared_address).
 * The order that makes the cluster stores safe, kept by every user:
 *   1. thread 0 of each receiver initializes its mbarrier (mbarrier_init, fence_mbarrier_init),
 *      then every thread of every block arrives on the cluster barrier (relaxed: cheap, early);
 *   2. every thread of a sender waits on the cluster barrier before its first st.async (so no
 *      store reaches an mbarrier not yet initialized);
 *   3. one thread of the receiver expects the bytes (mbarrier_expect, its arrival), every thread
 *      that reads them waits for the phase (mbarrier_wait); stores may complete before the
 *      expectation is set.
 * A sender may leave once it has sent; a receiver may not leave before its bytes have come.
 * Only sm_90 code may call these.
 */
#ifndef TM_CUDA_MBARRIER_CUH
#define TM_CUDA_MBARRIER_CUH

#include "common.cuh" /* shared_address */

/* The mbarrier at `bar` counts `count` arrivals a phase. */
__device__ __forceinline__ void mbarrier_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
/* The initializations before it made visible to the cluster and to the copy engines. */
__device__ __forceinline__ void fence_mbarrier_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

/* This thread's arrival, announcing `bytes` that copies or stores will complete on the barrier
 * (a release of its own earlier shared-memory stores to the threads that wait). */
__device__ __forceinline__ void mbarrier_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }

/* Until the barrier's phase of parity `parity` has completed (acquire: its bytes are visible).
 * Polling with test_wait instead measured no faster (gemv_stream, 7B decode x1 386 vs 392 tokens/s). */
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, int parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
}

/* Every thread of every block of the cluster: arrive on the cluster barrier without ordering any
 * memory (step 1), and wait for the others' arrival (step 2). */
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }

/* The shared::cluster address, in block `rank` of the cluster, of this block's shared address `local`. */
__device__ __forceinline__ uint32_t cluster_map(uint32_t local, uint32_t rank) {
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}

/* Stores `value` at `remote` (a shared::cluster address) and counts its bytes on the mbarrier at
 * `remote_bar` (in the same block). */
__device__ __forceinline__ void st_async_u32(uint32_t remote, uint32_t value, uint32_t remote_bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote), "r"(value), "r"(remote_bar)
                 : "memory");
}
__device__ __forceinline__ void st_async_u64(uint32_t remote, uint64_t value, uint32_t remote_bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];" ::"r"(remote), "l"(value), "r"(remote_bar)
                 : "memory");
}

#endif /* TM_CUDA_MBARRIER_CUH */
