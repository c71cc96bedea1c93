/*
 * energy.c - the device's energy meters (see energy.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "energy.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvml.h"
#ifdef TM_CUDA
#include "kernels.h"
#endif

#define MAX_PACKAGES 16
#define SAMPLE_WAIT_S 0.1 /* the longest wait for the power sample after a window (H200: one every 16-24 ms) */

struct tm_energy_meter {
    char source[240];
    /* GPU */
    tm_nvml *nvml;
    tm_nvml_device device;
    bool has_counter, has_samples;
    tm_nvml_sample *samples; /* the driver's sample buffer, copied */
    unsigned int sample_capacity;
    /* CPU: RAPL packages, each counter's last raw value, its range and the joules accumulated */
    int n_packages;
    char paths[MAX_PACKAGES][96];
    unsigned long long last_uj[MAX_PACKAGES], range_uj[MAX_PACKAGES];
    double joules;
};

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool read_u64(const char *path, unsigned long long *value) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fscanf(f, "%llu", value) == 1;
    fclose(f);
    return ok;
}

double tm_energy_integrate(const double *t, const double *watts, int n, double from, double to) {
    if (n < 2 || !(from <= to) || t[0] > from || t[n - 1] < to) return NAN;
    double joules = 0;
    for (int i = 0; i + 1 < n; i++) {
        const double t0 = t[i], t1 = t[i + 1];
        if (!(t1 > t0) || t1 <= from || t0 >= to) continue;
        const double a = from > t0 ? from : t0, b = to < t1 ? to : t1;
        const double slope = (watts[i + 1] - watts[i]) / (t1 - t0);
        const double wa = watts[i] + slope * (a - t0), wb = watts[i] + slope * (b - t0);
        joules += 0.5 * (wa + wb) * (b - a);
    }
    return joules;
}

/* Samples of `type` newer than since_us into m->samples; how many (0 when none or on error). */
static unsigned int fetch_samples(tm_energy_meter *m, int type, unsigned long long since_us) {
    int value_type = 0;
    unsigned int count = m->sample_capacity;
    int status = m->nvml->samples(m->device, type, since_us, &value_type, &count, m->samples);
    return status == 0 && value_type == TM_NVML_VALUE_UNSIGNED_INT ? count : 0;
}

/* Whether this GPU keeps power samples (sizes the copy of its buffer); their median interval in ms. */
static bool open_samples(tm_energy_meter *m, double *interval_ms) {
    if (!m->nvml->samples) return false;
    int value_type = 0;
    unsigned int capacity = 0;
    if (m->nvml->samples(m->device, TM_NVML_TOTAL_POWER_SAMPLES, 0, &value_type, &capacity, NULL) != 0 || capacity < 2) return false;
    m->sample_capacity = capacity + 16;
    if (!(m->samples = calloc(m->sample_capacity, sizeof *m->samples))) return false;
    unsigned int n = fetch_samples(m, TM_NVML_TOTAL_POWER_SAMPLES, 0);
    if (n < 2) return false;
    double gaps[512];
    int n_gaps = 0;
    for (unsigned int i = 1; i < n && n_gaps < 512; i++) gaps[n_gaps++] = (double)(m->samples[i].timestamp_us - m->samples[i - 1].timestamp_us);
    for (int i = 1; i < n_gaps; i++) /* insertion sort: a few hundred at most */
        for (int j = i; j > 0 && gaps[j - 1] > gaps[j]; j--) {
            double swap = gaps[j];
            gaps[j] = gaps[j - 1], gaps[j - 1] = swap;
        }
    *interval_ms = gaps[n_gaps / 2] * 1e-3;
    return true;
}

static void open_nvml(tm_energy_meter *m, int index) {
    char bus_id[64] = "", why[160];
#ifdef TM_CUDA
    if (!tm_cuda_device_pci_bus_id(index, bus_id, sizeof bus_id)) bus_id[0] = 0;
#endif
    if (!(m->nvml = tm_nvml_open(why, sizeof why))) {
        snprintf(m->source, sizeof m->source, "not measured: %s", why);
        return;
    }
    const bool found = bus_id[0] ? m->nvml->handle_by_pci_bus_id && m->nvml->handle_by_pci_bus_id(bus_id, &m->device) == 0
                                 : m->nvml->handle_by_index((unsigned)index, &m->device) == 0;
    const char *gpu = bus_id[0] ? bus_id : "(NVML index)";
    unsigned long long mj;
    m->has_counter = found && m->nvml->total_energy && m->nvml->total_energy(m->device, &mj) == 0;
    double interval_ms = 0;
    m->has_samples = found && open_samples(m, &interval_ms);
    if (m->has_samples && m->has_counter)
        snprintf(m->source, sizeof m->source, "NVML of GPU %s: its power samples (every %.0f ms) over each window they cover, "
                 "else its total-energy counter", gpu, interval_ms);
    else if (m->has_samples)
        snprintf(m->source, sizeof m->source, "NVML power samples (every %.0f ms) of GPU %s over each window they cover", interval_ms, gpu);
    else if (m->has_counter)
        snprintf(m->source, sizeof m->source, "NVML total-energy counter of GPU %s", gpu);
    else {
        snprintf(m->source, sizeof m->source, "not measured: NVML has neither an energy counter nor power samples for GPU %s", gpu);
        tm_nvml_close(m->nvml);
        m->nvml = NULL;
    }
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

/* The counter now (joules since a fixed moment); NaN when unreadable. */
static double counter_joules(tm_energy_meter *m) {
    if (m->nvml) {
        unsigned long long mj;
        return m->has_counter && m->nvml->total_energy(m->device, &mj) == 0 ? (double)mj * 1e-3 : NAN;
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

tm_energy_mark tm_energy_mark_now(tm_energy_meter *m) {
    tm_energy_mark mark;
    mark.wall_s = wall_seconds();
    mark.counter_joules = counter_joules(m);
    mark.wall_after_s = wall_seconds();
    return mark;
}

/* The power samples integrated over [from, to] (waiting up to SAMPLE_WAIT_S for one after `to`);
 * NaN when the driver's buffer no longer reaches back to `from` or no sample comes after `to`. */
static double sampled_joules(tm_energy_meter *m, double from, double to) {
    const unsigned long long since_us = (unsigned long long)((from - 1.0) * 1e6);
    const double give_up = wall_seconds() + SAMPLE_WAIT_S;
    unsigned int n = fetch_samples(m, TM_NVML_TOTAL_POWER_SAMPLES, since_us);
    while ((n == 0 || (double)m->samples[n - 1].timestamp_us * 1e-6 < to) && wall_seconds() < give_up) {
        nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL);
        n = fetch_samples(m, TM_NVML_TOTAL_POWER_SAMPLES, since_us);
    }
    double *t = malloc(2 * (size_t)(n ? n : 1) * sizeof *t);
    if (!t) return NAN;
    double *watts = t + n;
    for (unsigned int i = 0; i < n; i++) t[i] = (double)m->samples[i].timestamp_us * 1e-6, watts[i] = m->samples[i].value.u32 * 1e-3;
    const double joules = tm_energy_integrate(t, watts, (int)n, from, to);
    free(t);
    return joules;
}

double tm_energy_between(tm_energy_meter *m, tm_energy_mark from, tm_energy_mark to, tm_energy_method *method, double *counter) {
    const double difference = to.counter_joules - from.counter_joules; /* NaN when either is */
    if (counter) *counter = difference;
    const double sampled = m->has_samples ? sampled_joules(m, from.wall_after_s, to.wall_s) : NAN;
    tm_energy_method used = !isnan(sampled) ? TM_ENERGY_SAMPLES : !isnan(difference) ? TM_ENERGY_COUNTER : TM_ENERGY_NONE;
    if (method) *method = used;
    return used == TM_ENERGY_SAMPLES ? sampled : difference;
}

double tm_energy_sm_clock_mhz(tm_energy_meter *m) {
    unsigned int mhz;
    return m->nvml && m->nvml->clock_info && m->nvml->clock_info(m->device, TM_NVML_CLOCK_SM, &mhz) == 0 ? (double)mhz : NAN;
}

const char *tm_energy_method_name(tm_energy_method method) {
    return method == TM_ENERGY_SAMPLES ? "samples" : method == TM_ENERGY_COUNTER ? "counter" : "none";
}

bool tm_energy_compare_requested(void) {
    const char *value = getenv("TM_ENERGY_COMPARE");
    return value && !strcmp(value, "1");
}

const char *tm_energy_source(const tm_energy_meter *m) { return m->source; }

void tm_energy_close(tm_energy_meter *m) {
    if (!m) return;
    tm_nvml_close(m->nvml);
    free(m->samples);
    free(m);
}
