/*
 * energy.c - the device's energy counter (see energy.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "energy.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TM_CUDA
#include "kernels.h"
#endif

#define MAX_PACKAGES 16

typedef void *nvml_device;
typedef int (*nvml_void_fn)(void);
typedef int (*nvml_bus_fn)(const char *, nvml_device *);
typedef int (*nvml_index_fn)(unsigned int, nvml_device *);
typedef int (*nvml_energy_fn)(nvml_device, unsigned long long *);

struct tm_energy_meter {
    char source[200];
    /* GPU */
    void *nvml;
    nvml_void_fn shutdown;
    nvml_energy_fn energy;
    nvml_device device;
    /* CPU: RAPL packages, each counter's last raw value, its range and the joules accumulated */
    int n_packages;
    char paths[MAX_PACKAGES][96];
    unsigned long long last_uj[MAX_PACKAGES], range_uj[MAX_PACKAGES];
    double joules;
};

static bool read_u64(const char *path, unsigned long long *value) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fscanf(f, "%llu", value) == 1;
    fclose(f);
    return ok;
}

static void open_nvml(tm_energy_meter *m, int index) {
    char bus_id[64] = "";
#ifdef TM_CUDA
    if (!tm_cuda_device_pci_bus_id(index, bus_id, sizeof bus_id)) bus_id[0] = 0;
#endif
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nvml) {
        snprintf(m->source, sizeof m->source, "not measured: no NVML (libnvidia-ml.so.1) on this machine");
        return;
    }
    nvml_void_fn init = (nvml_void_fn)dlsym(nvml, "nvmlInit_v2");
    nvml_void_fn shutdown = (nvml_void_fn)dlsym(nvml, "nvmlShutdown");
    nvml_bus_fn by_bus = (nvml_bus_fn)dlsym(nvml, "nvmlDeviceGetHandleByPciBusId_v2");
    nvml_index_fn by_index = (nvml_index_fn)dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    nvml_energy_fn energy = (nvml_energy_fn)dlsym(nvml, "nvmlDeviceGetTotalEnergyConsumption");
    if (!init || !shutdown || !by_bus || !by_index || !energy || init() != 0) {
        snprintf(m->source, sizeof m->source, "not measured: NVML lacks the energy counter or does not start");
        dlclose(nvml);
        return;
    }
    nvml_device device;
    unsigned long long mj;
    const bool found = bus_id[0] ? by_bus(bus_id, &device) == 0 : by_index((unsigned)index, &device) == 0;
    if (!found || energy(device, &mj) != 0) {
        snprintf(m->source, sizeof m->source, "not measured: NVML has no energy counter for GPU %s", bus_id[0] ? bus_id : "(index)");
        shutdown();
        dlclose(nvml);
        return;
    }
    m->nvml = nvml, m->shutdown = shutdown, m->energy = energy, m->device = device;
    snprintf(m->source, sizeof m->source, "NVML total energy of GPU %s", bus_id[0] ? bus_id : "(NVML index)");
}

static void open_rapl(tm_energy_meter *m) {
    for (int i = 0; i < MAX_PACKAGES; i++) {
        char path[96], range[112];
        snprintf(path, sizeof path, "/sys/class/powercap/intel-rapl:%d/energy_uj", i);
        snprintf(range, sizeof range, "/sys/class/powercap/intel-rapl:%d/max_energy_range_uj", i);
        unsigned long long value, max;
        if (!read_u64(path, &value)) {
            if (i == 0) {
                FILE *exists = fopen("/sys/class/powercap/intel-rapl:0/name", "r");
                snprintf(m->source, sizeof m->source, exists ? "not measured: the RAPL energy counters are not readable here (root only)"
                                                             : "not measured: no RAPL energy counters (/sys/class/powercap) on this host");
                if (exists) fclose(exists);
                return;
            }
            break;
        }
        snprintf(m->paths[i], sizeof m->paths[i], "%s", path);
        m->last_uj[i] = value;
        m->range_uj[i] = read_u64(range, &max) ? max : 0;
        m->n_packages = i + 1;
    }
    snprintf(m->source, sizeof m->source, "RAPL package energy of %d CPU package%s (the whole sockets)", m->n_packages,
             m->n_packages == 1 ? "" : "s");
}

tm_energy_meter *tm_energy_open(const char *device) {
    tm_energy_meter *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (!strncmp(device, "cuda", 4)) open_nvml(m, device[4] == ':' ? atoi(device + 5) : 0);
    else open_rapl(m);
    return m;
}

double tm_energy_joules(tm_energy_meter *m) {
    if (m->nvml) {
        unsigned long long mj;
        return m->energy(m->device, &mj) == 0 ? (double)mj * 1e-3 : NAN;
    }
    if (!m->n_packages) return NAN;
    for (int i = 0; i < m->n_packages; i++) {
        unsigned long long value;
        if (!read_u64(m->paths[i], &value)) return NAN;
        unsigned long long delta = value >= m->last_uj[i] ? value - m->last_uj[i]
                                   : m->range_uj[i] ? value + m->range_uj[i] - m->last_uj[i] : 0; /* wrapped */
        m->joules += (double)delta * 1e-6;
        m->last_uj[i] = value;
    }
    return m->joules;
}

const char *tm_energy_source(const tm_energy_meter *m) { return m->source; }

void tm_energy_close(tm_energy_meter *m) {
    if (!m) return;
    if (m->nvml) {
        m->shutdown();
        dlclose(m->nvml);
    }
    free(m);
}
