/*
 * trace.h - NVTX ranges of the engine (domain "tensormesh"): model load, weight upload, each
 * prefill or decode step, sampling (per-layer and per-op ranges are not there yet). Built on the
 * header-only NVTX3 of the CUDA toolkit: with no tool attached (Nsight Systems, Nsight Compute, CUPTI, or any NVTX_INJECTION64_PATH
 * library) each call is a branch on a null function pointer. Without the toolkit (TM_NVTX
 * undefined) everything compiles to nothing.
 *
 * Guarantees: pushes and pops nest per thread (tm_trace_pop closes the latest range); names are
 * copied by the tool before the call returns, so stack buffers are fine.
 */
#ifndef TM_TRACE_H
#define TM_TRACE_H

#ifdef TM_NVTX
void tm_trace_push(const char *name);
void tm_trace_pop(void);
#else
static inline void tm_trace_push(const char *name) { (void)name; }
static inline void tm_trace_pop(void) {}
#endif

#endif /* TM_TRACE_H */
