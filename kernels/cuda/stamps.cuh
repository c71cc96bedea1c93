/*
 * stamps.cuh - block timelines of the decode kernels as a CUDA graph runs them, a measuring aid
 * compiled in only with -DTM_BLOCK_STAMPS (cmake -DTM_BLOCK_STAMPS=ON). Without it every call
 * here compiles to nothing, so the kernels' code is the production code.
 *
 * With it, thread 0 of every block of an instrumented kernel (pairs_kernel, decode_whole_kernel,
 * the sliced norm and its cluster form, the SwiGLU, the sampling kernel) keeps the global timer (%globaltimer, ns, one clock for all SMs)
 * at its start, right after its wait for the previous kernel, at up to three points of the
 * kernel's own and at its end, and writes them with its SM into a ring of records in its
 * translation unit (TM_STAMPS_RING, the slot taken by an atomic at the start whose result is
 * first used at the end, so no stamp waits for it). tm_cuda_stamps_dump (launch.cu) writes the
 * rings to a file; the backend calls it when freed if TM_BLOCK_STAMPS_FILE names one.
 * tools/block_stamps.py reads the file: per launch of the last decode step, when its first block
 * started, when its blocks' waits returned, when its last block ended, and the kernels' phases.
 *
 * What it costs: one atomic and a few shared-memory stores a block, and the end's 64-byte
 * record; the instrumented build measures its own tokens/s, which says how far it moved.
 */
#ifndef TM_CUDA_STAMPS_CUH
#define TM_CUDA_STAMPS_CUH

#include "common.cuh"

/* A record's times: the first two and the last for every kernel, A..E the kernel's own. */
enum { TM_STAMP_START, TM_STAMP_WAITED, TM_STAMP_A, TM_STAMP_B, TM_STAMP_C, TM_STAMP_D, TM_STAMP_E, TM_STAMP_END, TM_STAMP_POINTS };
/* The instrumented kernels (decode_whole_kernel: ATTENTION its one-token slices, ATTENTION_CHUNKS its other forms). */
enum { TM_STAMP_PAIRS = 1, TM_STAMP_PAIRS_ROPE = 2, TM_STAMP_ATTENTION = 3, TM_STAMP_NORM = 4, TM_STAMP_SWIGLU = 5, TM_STAMP_ATTENTION_CHUNKS = 6,
       TM_STAMP_SAMPLE_GREEDY = 7, TM_STAMP_SAMPLE_TOP_K = 8, TM_STAMP_SAMPLE_SELECTION = 9 };

/* One block's record: 80 bytes (the dump's layout, read by tools/block_stamps.py). */
struct tm_block_stamp {
    uint32_t kind, block, smid, tag; /* tag: a pointer's low bits that tell the launches of a step apart */
    uint64_t t[TM_STAMP_POINTS];     /* %globaltimer, 0 where the block did not pass the point */
};

/* Each instrumenting translation unit names its ring once, after its includes and before its
 * kernels: TM_STAMPS_RING(name, records) defines the ring, its dump (extern "C" int
 * tm_stamps_dump_<name>(FILE *), a cudaError_t; neither without TM_BLOCK_STAMPS) and the two
 * calls the kernels make: tm_stamp_begin() first thing in the kernel, tm_stamp_end(stamper, kind,
 * tag) last thing (before any return); tm_stamp(point) between. */
#ifdef TM_BLOCK_STAMPS
__device__ __forceinline__ uint64_t tm_global_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Thread 0's times, in shared memory until the end. */
__device__ __forceinline__ uint64_t *tm_stamp_times() {
    __shared__ uint64_t times[TM_STAMP_POINTS];
    return times;
}

__device__ __forceinline__ void tm_stamp(int point) {
    if (threadIdx.x == 0) tm_stamp_times()[point] = tm_global_ns();
}

/* The same once `bits` (a loaded or computed value's) has arrived: the branch on it makes thread 0
 * wait for it before it reads the timer. Put it after the loads it times have all been issued, so
 * the wait holds back nothing the kernel would have issued meanwhile. */
__device__ __forceinline__ void tm_stamp_after(int point, uint32_t bits) {
    if (threadIdx.x == 0) {
        if (bits == 0x7fc0dead) asm volatile("membar.cta;" ::: "memory");
        tm_stamp_times()[point] = tm_global_ns();
    }
}

/* The block's slot in the ring (thread 0's; the others' ~0). */
struct tm_stamper {
    unsigned long long slot;
};

#define TM_STAMPS_RING(name, records)                                                                          \
    static __device__ tm_block_stamp tm_stamp_ring[records];                                                   \
    static __device__ unsigned long long tm_stamp_next;                                                        \
    static __device__ __forceinline__ tm_stamper tm_stamp_begin() {                                            \
        tm_stamper s = {~0ull};                                                                                \
        if (threadIdx.x == 0) {                                                                                \
            uint64_t *t = tm_stamp_times();                                                                    \
            t[0] = tm_global_ns();                                                                             \
            for (int i = 1; i < TM_STAMP_POINTS; i++) t[i] = 0;                                                \
            s.slot = atomicAdd(&tm_stamp_next, 1ull);                                                          \
        }                                                                                                      \
        return s;                                                                                              \
    }                                                                                                          \
    static __device__ __forceinline__ void tm_stamp_end(const tm_stamper &s, unsigned kind, const void *tag) { \
        if (threadIdx.x != 0 || s.slot == ~0ull) return;                                                       \
        uint64_t *t = tm_stamp_times();                                                                        \
        t[TM_STAMP_END] = tm_global_ns();                                                                      \
        tm_block_stamp *r = &tm_stamp_ring[s.slot % (records)];                                                \
        unsigned smid;                                                                                         \
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));                                                      \
        r->kind = kind, r->block = blockIdx.x + blockIdx.y * gridDim.x, r->smid = smid;                        \
        r->tag = (uint32_t)(uintptr_t)tag;                                                                     \
        for (int i = 0; i < TM_STAMP_POINTS; i++) r->t[i] = t[i];                                              \
    }                                                                                                          \
    extern "C" int tm_stamps_dump_##name(FILE *f) {                                                            \
        unsigned long long next = 0;                                                                           \
        TM_CUDA_CHECK(cudaMemcpyFromSymbol(&next, tm_stamp_next, sizeof next));                                \
        const unsigned long long capacity = (records), count = next < capacity ? next : capacity;              \
        tm_block_stamp *all = (tm_block_stamp *)malloc(sizeof(tm_block_stamp) * capacity);                     \
        if (!all) return cudaErrorMemoryAllocation;                                                            \
        const cudaError_t status = cudaMemcpyFromSymbol(all, tm_stamp_ring, sizeof(tm_block_stamp) * capacity); \
        if (status == cudaSuccess)                                                                             \
            for (unsigned long long i = next - count; i < next; i++) fwrite(&all[i % capacity], sizeof *all, 1, f); \
        free(all);                                                                                             \
        return status;                                                                                         \
    }
#else
struct tm_stamper {};
__device__ __forceinline__ void tm_stamp(int) {}
__device__ __forceinline__ void tm_stamp_after(int, uint32_t) {}
#define TM_STAMPS_RING(name, records)                                                                          \
    static __device__ __forceinline__ tm_stamper tm_stamp_begin() { return tm_stamper{}; }                    \
    static __device__ __forceinline__ void tm_stamp_end(const tm_stamper &, unsigned, const void *) {}
#endif

#endif /* TM_CUDA_STAMPS_CUH */
