/*
 * energy.h - the energy the device a case runs on draws, read from the device's own counter.
 *
 * GPU ("cuda", "cuda:N"): NVML's total-energy counter of that GPU (millijoules since the driver
 * loaded; Volta and later), the GPU found by the PCI bus id CUDA gives for the engine's device
 * index (NVML's own numbering ignores CUDA_VISIBLE_DEVICES). NVML is opened with dlopen, so a
 * machine without the driver still runs everything else. The counter advances in steps and a read
 * is slow (H200, driver 580: every 100 ms, and 3.9 ms a read), so read it at the ends of a window
 * of a second or more, never inside a timed loop; a shorter window is a noisy sample.
 * CPU ("cpu"): the RAPL package counters of the kernel's powercap interface
 * (/sys/class/powercap/intel-rapl:N/energy_uj, every package; wrap-around at max_energy_range_uj
 * handled), which cover whole sockets, so other work on the host counts too; most kernels let
 * only root read them.
 * Guarantees: tm_energy_joules never decreases while the meter is open; where no counter can be
 * read it returns NaN and tm_energy_source says why. Not thread-safe (one runner owns a meter).
 */
#ifndef TM_ENERGY_H
#define TM_ENERGY_H

typedef struct tm_energy_meter tm_energy_meter;

/* A meter for the engine's resolved device ("cpu", "cuda", "cuda:N"); NULL only when out of memory. */
tm_energy_meter *tm_energy_open(const char *device);
/* Joules the device has drawn since some fixed moment (differences are what count); NaN when unavailable. */
double tm_energy_joules(tm_energy_meter *meter);
/* What the meter reads ("NVML total energy of GPU 0000:1B:00.0"), or why it reads nothing. */
const char *tm_energy_source(const tm_energy_meter *meter);
void tm_energy_close(tm_energy_meter *meter);

#endif /* TM_ENERGY_H */
