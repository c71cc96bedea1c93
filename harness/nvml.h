/*
 * nvml.h - NVIDIA's management library (libnvidia-ml.so.1), loaded at run time with dlopen so
 * that a machine without the NVIDIA driver builds and runs everything else. One loader for every
 * harness module that asks the driver something (environment.c: the GPUs' names, clocks and
 * limits; energy.c: a GPU's energy counter and power samples).
 * Guarantees: tm_nvml_open returns a started library (nvmlInit_v2 succeeded) or NULL with the
 * reason; the entry points every user needs (shutdown, device count, handle by index) are never
 * NULL in an opened one, any other may be NULL where this driver lacks it. Each open is its own
 * nvmlInit_v2 / nvmlShutdown pair (NVML counts them), so modules open and close independently.
 */
#ifndef TM_NVML_H
#define TM_NVML_H

#include <stddef.h>

typedef void *tm_nvml_device;

/* NVML's nvmlSample_t: a CPU timestamp (microseconds, the realtime clock) and a value whose
 * type the query returns (power: unsigned int milliwatts, value type 1). */
typedef struct {
    unsigned long long timestamp_us;
    union {
        double d;
        unsigned int u32;
        unsigned long long u64;
        long long i64;
    } value;
} tm_nvml_sample;

enum {
    TM_NVML_TOTAL_POWER_SAMPLES = 0,     /* nvmlSamplingType_t */
    TM_NVML_VALUE_UNSIGNED_INT = 1,      /* nvmlValueType_t */
    TM_NVML_CLOCK_SM = 1,                /* nvmlClockType_t */
    TM_NVML_CLOCK_MEMORY = 2,
};

typedef struct {
    void *library;
    int (*shutdown)(void);
    int (*device_count)(unsigned int *count);
    int (*handle_by_index)(unsigned int index, tm_nvml_device *device);
    int (*handle_by_pci_bus_id)(const char *bus_id, tm_nvml_device *device);
    int (*name)(tm_nvml_device device, char *name, unsigned int size);
    int (*driver_version)(char *version, unsigned int size);
    int (*cuda_driver_version)(int *version);
    int (*max_clock)(tm_nvml_device device, int clock, unsigned int *mhz);
    int (*clock_info)(tm_nvml_device device, int clock, unsigned int *mhz); /* the clock now */
    int (*power_limit)(tm_nvml_device device, unsigned int *milliwatts);
    int (*total_energy)(tm_nvml_device device, unsigned long long *millijoules);
    /* nvmlDeviceGetSamples: samples newer than since_us; with samples NULL, *count is the buffer's size */
    int (*samples)(tm_nvml_device device, int type, unsigned long long since_us, int *value_type, unsigned int *count,
                   tm_nvml_sample *samples);
} tm_nvml;

/* Loads and starts NVML; NULL when it cannot (`why`, if not NULL, says which step failed). */
tm_nvml *tm_nvml_open(char *why, size_t why_size);
void tm_nvml_close(tm_nvml *nvml);

#endif /* TM_NVML_H */
