/*
 * nvml.c - NVML loaded at run time (see nvml.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "nvml.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void say(char *why, size_t size, const char *text) {
    if (why && size) snprintf(why, size, "%s", text);
}

tm_nvml *tm_nvml_open(char *why, size_t why_size) {
    void *library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        say(why, why_size, "no NVML (libnvidia-ml.so.1) on this machine");
        return NULL;
    }
    int (*init)(void) = (int (*)(void))dlsym(library, "nvmlInit_v2");
    tm_nvml *n = calloc(1, sizeof *n);
    if (!n) {
        say(why, why_size, "out of memory");
        dlclose(library);
        return NULL;
    }
    n->library = library;
    /* POSIX: a dlsym result converts to a function pointer */
#define TM_NVML_ENTRY(field, symbol) *(void **)&n->field = dlsym(library, symbol)
    TM_NVML_ENTRY(shutdown, "nvmlShutdown");
    TM_NVML_ENTRY(device_count, "nvmlDeviceGetCount_v2");
    TM_NVML_ENTRY(handle_by_index, "nvmlDeviceGetHandleByIndex_v2");
    TM_NVML_ENTRY(handle_by_pci_bus_id, "nvmlDeviceGetHandleByPciBusId_v2");
    TM_NVML_ENTRY(name, "nvmlDeviceGetName");
    TM_NVML_ENTRY(driver_version, "nvmlSystemGetDriverVersion");
    TM_NVML_ENTRY(cuda_driver_version, "nvmlSystemGetCudaDriverVersion_v2");
    TM_NVML_ENTRY(max_clock, "nvmlDeviceGetMaxClockInfo");
    TM_NVML_ENTRY(clock_info, "nvmlDeviceGetClockInfo");
    TM_NVML_ENTRY(power_limit, "nvmlDeviceGetPowerManagementLimit");
    TM_NVML_ENTRY(total_energy, "nvmlDeviceGetTotalEnergyConsumption");
    TM_NVML_ENTRY(samples, "nvmlDeviceGetSamples");
#undef TM_NVML_ENTRY
    if (!init || !n->shutdown || !n->device_count || !n->handle_by_index) {
        say(why, why_size, "NVML lacks nvmlInit_v2, nvmlShutdown or the device count and handles");
    } else if (init() != 0) {
        say(why, why_size, "NVML does not start (nvmlInit_v2 failed)");
    } else {
        return n;
    }
    dlclose(library);
    free(n);
    return NULL;
}

void tm_nvml_close(tm_nvml *n) {
    if (!n) return;
    n->shutdown();
    dlclose(n->library);
    free(n);
}
