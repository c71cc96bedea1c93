/*
 * cluster.cuh - how the blocks of a thread-block cluster (sm_90) send values into one another's
 * shared memory without a fence: the receiver keeps an mbarrier in its shared memory, the sender
 * stores by st.async, which counts the stored bytes on that mbarrier, and the receiver waits until
 * the bytes it expects have come. The order that makes it safe, kept by every user:
 *   1. thread 0 of each receiver initializes its mbarrier (cluster_mbarrier_init), then every
 *      thread of every block arrives on the cluster barrier (relaxed: cheap, early);
 *   2. every thread of a sender waits on the cluster barrier before its first st.async (so no
 *      store reaches an mbarrier not yet initialized);
 *   3. one thread of the receiver expects the bytes (mbarrier_expect_bytes: the barrier's one
 *      arrival), every thread that reads them waits for the phase (mbarrier_wait_first_phase);
 *      stores may complete before the expectation is set.
 * A sender may leave once it has sent; a receiver may not leave before its bytes have come.
 * Used by the one-token decode attention's push into its first block (attention.cu) and the decode
 * norm's exchange of partial sums (ops.cu). Only sm_90 code may call these.
 */
#ifndef TM_CUDA_CLUSTER_CUH
#define TM_CUDA_CLUSTER_CUH

#include "common.cuh" /* shared_address */

/* Thread 0 of a receiver: the mbarrier at `barrier` (shared address) counts one arrival a phase,
 * its initialization released to the cluster. */
__device__ __forceinline__ void cluster_mbarrier_init(uint32_t barrier) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(barrier) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
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
 * `remote_barrier` (in the same block). */
__device__ __forceinline__ void st_async_u32(uint32_t remote, uint32_t value, uint32_t remote_barrier) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote), "r"(value), "r"(remote_barrier)
                 : "memory");
}
__device__ __forceinline__ void st_async_u64(uint32_t remote, uint64_t value, uint32_t remote_barrier) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];" ::"r"(remote), "l"(value), "r"(remote_barrier)
                 : "memory");
}

/* One thread of the receiver: its arrival on the mbarrier, expecting `bytes` more (a release of its
 * own earlier shared-memory stores to the threads that wait). */
__device__ __forceinline__ void mbarrier_expect_bytes(uint32_t barrier, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier), "r"(bytes) : "memory");
}

/* Waits until the mbarrier's first phase completes: the arrival and every expected byte. */
__device__ __forceinline__ void mbarrier_wait_first_phase(uint32_t barrier) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n\tselp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(barrier)
                     : "memory");
}

#endif /* TM_CUDA_CLUSTER_CUH */
