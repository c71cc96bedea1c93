/*
 * launch.cu - whether kernels overlap their predecessor (launch.cuh) and whether a device launches
 * thread-block clusters: decided once per device; dynamic shared memory above 48 KiB, allowed once
 * per kernel and device; how many blocks of a kernel a device holds at once, computed once per
 * kernel and device; whether a device runs this build's wgmma code (probed once per device); the
 * compute capability and shared memory every sm_90 and shared-memory choice reads (with the test
 * aids that cap them); and tm_env_int, the one way the kernels' measuring aids read the environment.
 */
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <mutex>

#include "launch.cuh"
#include "wgmma.cuh"

#define MAX_DEVICES 64

/* The device's compute capability major (0 where it cannot be read), once per device; at most
 * TM_DEVICE_MAJOR_MAX where that is set (a test aid: with 8, the host takes an RTX 4090's paths
 * on a newer card, no dependent launches, clusters, wgmma or sm_90-only kernel forms, so that a
 * build of compute_89 PTX run there executes the sm_89 code; ci/gpu's "sm_89 paths" step). */
static int device_major(int device) {
    static int major[MAX_DEVICES]; /* 0: unknown; benign race: every reader computes the same */
    static const int cap = tm_env_int("TM_DEVICE_MAJOR_MAX", 0);
    if (device < 0 || device >= MAX_DEVICES) return 0;
    if (!major[device]) {
        int read = 0;
        if (cudaDeviceGetAttribute(&read, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
            cudaGetLastError();
            read = 0;
        }
        major[device] = cap > 0 && read > cap ? cap : read;
    }
    return major[device];
}

int tm_device_major(void) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return device_major(device);
}

cudaError_t tm_device_shared_memory(int device, int *per_sm, int *per_block) {
    static const int cap_kib = tm_env_int("TM_SHARED_KIB_MAX", 0);
    int sm = 0, block = 0;
    TM_CUDA_CHECK(cudaDeviceGetAttribute(&sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    TM_CUDA_CHECK(cudaDeviceGetAttribute(&block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (cap_kib > 1) {
        sm = sm < cap_kib * 1024 ? sm : cap_kib * 1024;
        block = block < (cap_kib - 1) * 1024 ? block : (cap_kib - 1) * 1024; /* the SM keeps 1 KiB a block */
    }
    if (per_sm) *per_sm = sm;
    if (per_block) *per_block = block;
    return cudaSuccess;
}

int tm_dependent_launch_enabled(void) {
    static int environment = -1; /* -1: not read yet; benign race: every reader computes the same */
    if (environment < 0) {
        const char *value = getenv("TM_DEPENDENT_LAUNCH");
        environment = !(value && strcmp(value, "0") == 0);
    }
    return environment && tm_device_major() >= 9;
}

bool tm_cluster_launch_available(void) { return tm_device_major() >= 9; }

/* cudaFuncSetAttribute(kernel, attribute, value) on the current device, once: again only where
 * no earlier call for this kernel, device and attribute set a value that `covers` this one (at
 * least it for the dynamic shared-memory limit, the same value otherwise). */
static cudaError_t set_attribute_once(const void *kernel, cudaFuncAttribute attribute, int value, bool at_least) {
    static struct {
        const void *kernel;
        int device, attribute, value;
    } done[128];
    static int n_done;
    static std::mutex lock; /* backends on several devices may launch from several threads */
    int device = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess) return status;
    std::lock_guard<std::mutex> held(lock);
    for (int i = 0; i < n_done; i++)
        if (done[i].kernel == kernel && done[i].device == device && done[i].attribute == (int)attribute &&
            (at_least ? done[i].value >= value : done[i].value == value))
            return cudaSuccess;
    status = cudaFuncSetAttribute(kernel, attribute, value);
    if (status == cudaSuccess && n_done < 128) done[n_done].kernel = kernel, done[n_done].device = device, done[n_done].attribute = (int)attribute,
                                               done[n_done++].value = value;
    return status;
}

cudaError_t tm_allow_dynamic_shared(const void *kernel, int bytes) {
    return set_attribute_once(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes, true);
}

/* Per device (up to 16): whether a product kernel with staged activations has been launched. */
static std::atomic<bool> staged_products[16];

void tm_note_staged_products(void) {
    int device = 0;
    if (cudaGetDevice(&device) == cudaSuccess && device >= 0 && device < 16) staged_products[device].store(true);
}

cudaError_t tm_attention_carveout(const void *kernel) {
    static const int forced = tm_env_int("TM_ATTENTION_CARVEOUT", -2); /* 0..100: fixed; -1: the driver's; -2 (unset): the rule */
    int device = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess) return status;
    const bool staged = forced == -2 && device >= 0 && device < 16 && staged_products[device].load();
    const int percent = forced >= 0 && forced <= 100 ? forced : staged ? 50 : -1;
    return percent < 0 ? cudaSuccess : set_attribute_once(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, percent, false);
}

cudaError_t tm_resident_blocks(const void *kernel, int threads, size_t shared, int *blocks) {
    static struct {
        const void *kernel;
        int device, threads;
        size_t shared;
        int blocks;
    } known[64];
    static int n_known;
    static std::mutex lock;
    int device = 0, sms = 0, per_sm = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status != cudaSuccess) return status;
    std::lock_guard<std::mutex> held(lock);
    for (int i = 0; i < n_known; i++)
        if (known[i].kernel == kernel && known[i].device == device && known[i].threads == threads && known[i].shared == shared) {
            *blocks = known[i].blocks;
            return cudaSuccess;
        }
    if ((status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return status;
    if ((status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared)) != cudaSuccess) return status;
    *blocks = per_sm * sms;
    if (n_known < 64) known[n_known++] = {kernel, device, threads, shared, *blocks};
    return cudaSuccess;
}

/* Writes whether this build holds sm_90a code (compiled for the device it runs on). */
static __global__ void wgmma_probe_kernel(int *available) {
#if defined(TM_WGMMA_AVAILABLE)
    *available = 1;
#else
    *available = 0;
#endif
}

bool tm_wgmma_available(int device) {
    static signed char known[MAX_DEVICES]; /* 0 unknown, 1 yes, -1 no */
    if (device < 0 || device >= MAX_DEVICES || device_major(device) < 9) return false;
    if (!known[device]) {
        int *flag = NULL, value = 0;
        bool ok = cudaMalloc(&flag, sizeof(int)) == cudaSuccess;
        if (ok) {
            wgmma_probe_kernel<<<1, 1>>>(flag);
            ok = cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
            cudaFree(flag);
        }
        if (!ok) cudaGetLastError();
        known[device] = ok && value == 1 ? 1 : -1;
    }
    return known[device] == 1;
}

int tm_env_int(const char *name, int fallback) {
    const char *text = getenv(name);
    if (!text || !*text) return fallback;
    char *end = NULL;
    long value = strtol(text, &end, 10);
    return *end == '\0' && value >= -1000000 && value <= 1000000 ? (int)value : fallback;
}

#ifdef TM_BLOCK_STAMPS
/* The rings of the instrumented translation units (stamps.cuh). */
extern "C" int tm_stamps_dump_gemv_q8(FILE *f);
extern "C" int tm_stamps_dump_attention(FILE *f);
extern "C" int tm_stamps_dump_ops(FILE *f);
extern "C" int tm_stamps_dump_sample(FILE *f);
#endif

extern "C" int tm_cuda_stamps_dump(const char *path) {
#ifdef TM_BLOCK_STAMPS
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "block stamps: cannot write %s\n", path);
        return cudaErrorInvalidValue;
    }
    int status = tm_stamps_dump_gemv_q8(f);
    if (status == cudaSuccess) status = tm_stamps_dump_attention(f);
    if (status == cudaSuccess) status = tm_stamps_dump_ops(f);
    if (status == cudaSuccess) status = tm_stamps_dump_sample(f);
    if (fclose(f) != 0 && status == cudaSuccess) status = cudaErrorUnknown;
    return status;
#else
    (void)path;
    return cudaErrorNotSupported;
#endif
}
