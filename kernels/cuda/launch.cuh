/*
 * launch.cuh - kernel launches that may overlap the kernel before them in the stream
 * (programmatic dependent launch, compute capability 9.0 and later).
 *
 * A decode step is ~320 small kernels; launched plainly, each waits for its predecessor to drain
 * before its first block is scheduled. Launched with tm_launch_dependent, a kernel's blocks are
 * scheduled as soon as every block of the previous kernel has released its dependents (each
 * converted kernel starts with tm_grid_dependency: wait for its own predecessor, then release), and
 * wait in tm_grid_wait until the previous grid has finished and its writes are visible: the block
 * scheduling and launch latency overlap the previous kernel's tail (7B decode on the H200: +2 %).
 * The quantized products go further: they request their first weights (into registers, or into
 * shared memory by cp.async) before the wait, so that trip to memory overlaps the previous
 * kernel too (7B decode x1 +1.5-3.5 %, x8 +6 %). Prefetching weights into L2 before the wait, and
 * releasing before waiting, were tried and measured slower; see docs/perf-notes.md.
 *
 * The contract of a kernel launched this way: every thread calls tm_grid_wait() before it reads
 * anything earlier work in the stream writes, and before it writes anything earlier work reads.
 * Only reads of memory that no kernel writes (weights) may come before it. Because every such
 * kernel waits for its predecessor's completion, completion stays transitive along the stream.
 * On devices before sm_90, or with TM_DEPENDENT_LAUNCH=0 in the environment, launches are plain
 * and the two device calls compile or run to nothing.
 */
#ifndef TM_CUDA_LAUNCH_CUH
#define TM_CUDA_LAUNCH_CUH

#include "common.cuh"

/* Waits until the previous grid in the stream has completed and its memory is visible. */
__device__ __forceinline__ void tm_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next kernel in the stream start launching its blocks (they still wait in tm_grid_wait). */
__device__ __forceinline__ void tm_grid_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The first statement of every kernel launched by tm_launch_dependent: wait for the previous grid,
 * then let the next kernel start launching. Releasing after the wait keeps the look-ahead to one
 * kernel (releasing first let a chain of kernels occupy SMs while waiting: 70B decode 41.7 -> 39.2). */
__device__ __forceinline__ void tm_grid_dependency() {
    tm_grid_wait();
    tm_grid_release();
}

/* The current device's compute capability major, read once per device (0 where there is none), at
 * most TM_DEVICE_MAJOR_MAX where that is set (a test aid: 8 takes the RTX 4090's launches). */
int tm_device_major(void);

/* The shared memory of an SM of `device` and the most one block may opt in to, each at most
 * TM_SHARED_KIB_MAX KiB an SM (less the 1 KiB the SM keeps a block) where that is set: a test aid
 * that with 100 makes the choices sized by shared memory an RTX 4090's (100 KiB an SM, 99 a
 * block) on a larger card. Every choice sized by shared memory reads it here. */
cudaError_t tm_device_shared_memory(int device, int *per_sm, int *per_block);

/* Whether launches on the current device overlap their predecessor: compute capability >= 9.0 and
 * TM_DEPENDENT_LAUNCH is not "0" (read once). */
int tm_dependent_launch_enabled(void);

/* Whether `device`, the current device, runs this build's wgmma (sm_90a) code: a 9.0 device and a
 * build holding sm_90a; probed once per device by a one-thread kernel (so the first ask must not
 * come while a graph is being captured). */
bool tm_wgmma_available(int device);

/* The integer in environment variable `name`, or `fallback` when it is unset, empty or not a whole
 * number. For the measuring aids (TM_MMQ_STAGING=0 and the like); callers read it once, into a
 * function-local static const. */
int tm_env_int(const char *name, int fallback);

/* Lets `kernel` take `bytes` of dynamic shared memory (above the default 48 KiB) on the current
 * device: the attribute is set once per kernel and device (a host-side call, allowed while a graph
 * is being captured). */
cudaError_t tm_allow_dynamic_shared(const void *kernel, int bytes);

/* The decode attention kernels' shared-memory carveout (cudaFuncAttributePreferredSharedMemoryCarveout),
 * set once per kernel and device at its launch: 50 % of the SM's unified L1 / shared memory once the
 * device has launched products with staged activations (tm_note_staged_products: gemv_q8.cu's
 * persistent kernel and mmq_kernel's INPUTS layout), so those products' blocks (an 8-warp q4_k
 * block 87 KiB, 47 unstaged; the 70B's 4-warp INPUTS blocks 40-50 KiB) fit beside the attention's
 * last blocks on an SM and start during its tail; the driver's choice otherwise.
 * TM_ATTENTION_CARVEOUT=P (a measuring aid, read once) fixes P % for every decode attention launch,
 * -1 leaves every launch to the driver.
 * H200, 7B decode with staged products, one call each: driver's choice / 50 / 60 / 70 / 85 %: 128 x8
 * 3388, 3361 / 3428 / 3424, 3394 / 3401 / 3398 tokens/s; 512 x4 1549 (session 30, call 8) / 1598 /
 * 1582 / 1549 / 1547; 2048 x8 1710, 1731 / 1872 / 1862, 1865 / 1822 / 1707; without staged products
 * 60 % changed nothing (2048 x8 1809, 1810 -> 1809, 1812); the 8B f16 (no such products) 128 x8 /
 * 2048 x8 1727 / 1478 -> 1700 / 1458 at 60 %, hence only after staged products. The 70B's wide
 * products at 8 tokens (mmq_kernel, INPUTS), session 33, one binary and call, driver's choice
 * (TM_ATTENTION_CARVEOUT=-1) / 50 %, two rounds: 128 x8 531.4, 531.8 / 534.9, 533.9; 512 x4 274.2,
 * 273.8 / 276.1, 275.6; 2048 x8 484.4, 482.2 / 493.0, 491.5. */
cudaError_t tm_attention_carveout(const void *kernel);
/* Marks the current device as running products with staged activations (see tm_attention_carveout). */
void tm_note_staged_products(void);

/* How many blocks of `kernel` (`threads` each, `shared` bytes of dynamic shared memory) the current
 * device holds at once: blocks an SM by the occupancy calculator, times the SMs; computed once per
 * kernel, device and shape (a host-side query, allowed while a graph is being captured). */
cudaError_t tm_resident_blocks(const void *kernel, int threads, size_t shared, int *blocks);

/* Whether the current device launches thread-block clusters (compute capability >= 9.0; read once
 * per device). */
bool tm_cluster_launch_available(void);

/* kernel<<<grid, block, shared, stream>>>(args...) in clusters of `cluster` consecutive blocks along
 * x (1: no clusters; grid.x a multiple of it; only where tm_cluster_launch_available()), with
 * programmatic stream serialization where tm_dependent_launch_enabled(); the launch error is
 * returned (not printed). */
template <typename... Params, typename... Args>
static inline cudaError_t tm_launch_dependent_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                                                      cudaStream_t stream, int cluster, Args... args) {
    cudaLaunchAttribute attributes[2];
    unsigned n = 0;
    if (tm_dependent_launch_enabled()) {
        attributes[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attributes[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attributes[n].id = cudaLaunchAttributeClusterDimension;
        attributes[n].val.clusterDim.x = (unsigned)cluster, attributes[n].val.clusterDim.y = 1, attributes[n++].val.clusterDim.z = 1;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared;
    config.stream = stream;
    config.attrs = attributes;
    config.numAttrs = n;
    return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

/* kernel<<<grid, block, shared, stream>>>(args...), with programmatic stream serialization where
 * tm_dependent_launch_enabled(); the launch error is returned (not printed). */
template <typename... Params, typename... Args>
static inline cudaError_t tm_launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                                              Args... args) {
    return tm_launch_dependent_cluster(kernel, grid, block, shared, stream, 1, args...);
}

/* tm_launch_dependent, returning from the enclosing function on failure as TM_CUDA_CHECK does. */
#define TM_LAUNCH_DEPENDENT(kernel, grid, block, shared, stream, ...) \
    TM_CUDA_CHECK(tm_launch_dependent(kernel, grid, block, shared, stream, __VA_ARGS__))

#endif /* TM_CUDA_LAUNCH_CUH */
