/*
 * energy.h - the energy the device a case runs on draws over a window of time, from the device's
 * own meters.
 *
 * GPU ("cuda", "cuda:N", the GPU found through NVML by the PCI bus id CUDA gives for the engine's
 * device index, since NVML's own numbering ignores CUDA_VISIBLE_DEVICES): NVML's power samples
 * (nvmlDeviceGetSamples: the driver keeps a few seconds of them, every ~20 ms on an H200 with
 * driver 580), integrated (trapezoids) over the window when they cover all of it; otherwise the
 * difference of its total-energy counter (millijoules; it advances in steps, every 100 ms on that
 * H200, so a window under a second is a noisy sample there, each end up to a step stale). Reading
 * the counter costs ~4 ms there and the samples ~2 ms: mark the ends of a window, never read
 * inside a timed loop. NVML is loaded at run time (nvml.h).
 * CPU ("cpu"): the RAPL package counters of the kernel's powercap interface
 * (/sys/class/powercap/intel-rapl:N/energy_uj, every package; wrap-around at max_energy_range_uj
 * handled), which cover whole sockets, so other work on the host counts too; most kernels let
 * only root read them.
 * Guarantees: a mark's counter never decreases while the meter is open; where nothing can be read
 * tm_energy_between returns NaN and tm_energy_source says why. Not thread-safe (one runner owns a
 * meter).
 */
#ifndef TM_ENERGY_H
#define TM_ENERGY_H

#include <stdbool.h>

typedef struct tm_energy_meter tm_energy_meter;

/* One end of a window: the energy counter and when it was read (the realtime clock, NVML's sample
 * clock), before and after the read (~4 ms on an H200): a window runs from its first mark's end
 * to its last mark's start, so neither read's idle time counts in it. */
typedef struct {
    double wall_s;       /* the read began */
    double wall_after_s; /* the read ended */
    double counter_joules; /* NaN where no counter is readable */
} tm_energy_mark;

typedef enum {
    TM_ENERGY_NONE = 0,    /* nothing measured: NaN */
    TM_ENERGY_SAMPLES = 1, /* power samples integrated over the window */
    TM_ENERGY_COUNTER = 2, /* the energy counter's difference */
} tm_energy_method;

/* A meter for the engine's resolved device ("cpu", "cuda", "cuda:N"); NULL only when out of memory. */
tm_energy_meter *tm_energy_open(const char *device);
tm_energy_mark tm_energy_mark_now(tm_energy_meter *meter);
/* Joules drawn between two marks (from before to): the power samples where they cover the window,
 * else the counter's difference, else NaN; *method (may be NULL) says which. *counter_joules (may
 * be NULL): the counter's difference alone (NaN without a counter), to compare the two. May wait
 * up to ~0.1 s for the sample after `to`. */
double tm_energy_between(tm_energy_meter *meter, tm_energy_mark from, tm_energy_mark to, tm_energy_method *method,
                         double *counter_joules);
/* The GPU's SM clock now (MHz; NVML keeps no clock samples on an H200 with driver 580, so a mean
 * over a window is the caller's polling); NaN on the CPU or where NVML cannot say. */
double tm_energy_sm_clock_mhz(tm_energy_meter *meter);
/* "samples", "counter" or "none" (the runners' TM_ENERGY_COMPARE lines). */
const char *tm_energy_method_name(tm_energy_method method);
/* Whether TM_ENERGY_COMPARE=1 asks the runners to print each window's joules by both GPU meters
 * (the power samples and the counter; a measuring aid, and ci/gpu's check that they agree). */
bool tm_energy_compare_requested(void);
/* What the meter reads ("NVML power samples (every 20 ms) of GPU 0000:1B:00.0, ..."), or why it reads nothing. */
const char *tm_energy_source(const tm_energy_meter *meter);
void tm_energy_close(tm_energy_meter *meter);

/* The integral of power over [from_s, to_s] from n samples (times ascending, watts), linear between
 * samples; NaN unless the samples reach from before from_s to after to_s. Joules. */
double tm_energy_integrate(const double *t_s, const double *watts, int n, double from_s, double to_s);

#endif /* TM_ENERGY_H */
