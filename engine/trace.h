/*
 * trace.h - NVTX ranges of the engine (domain "tensormesh"): model load, weight upload, each
 * prefill or decode step, sampling; with detail on (tm_trace_set_detail, the engine option
 * nvtx_detail, `--nvtx-detail`), also one range per layer and per operation of the forward pass
 * (CPU and CUDA backends; on CUDA, decode steps then run without graphs, whose kernels would
 * otherwise be launched outside any range). Built on the header-only NVTX3 of the CUDA toolkit:
 * with no tool attached (Nsight Systems, Nsight Compute, CUPTI, or any NVTX_INJECTION64_PATH
 * library) each call is a branch on a null function pointer. Without the toolkit (TM_NVTX
 * undefined) the ranges compile to nothing.
 *
 * Guarantees: pushes and pops nest per thread; tm_trace_unwind(depth) closes every range opened
 * above `depth` (the engine unwinds after each step, so an error inside the forward pass never
 * leaves a range open); names are copied by the tool before the call returns.
 */
#ifndef TM_TRACE_H
#define TM_TRACE_H

#include <stdbool.h>

void tm_trace_push(const char *name);
void tm_trace_pop(void);
/* Ranges open on this thread; close ranges down to `depth`. */
int tm_trace_depth(void);
void tm_trace_unwind(int depth);

/* Per-layer and per-operation ranges (off by default; process-wide). */
void tm_trace_set_detail(bool on);
bool tm_trace_detail(void);

/* In a forward pass: a range when detail is on (`detail` a local copy of tm_trace_detail()). An
 * early error return may leave these open; the engine's per-step unwind closes them. */
#define TM_DETAIL_BEGIN(name)              \
    do {                                   \
        if (detail) tm_trace_push(name);   \
    } while (0)
#define TM_DETAIL_END()                    \
    do {                                   \
        if (detail) tm_trace_pop();        \
    } while (0)
/* "layer N" as a range name, when detail is on. */
void tm_trace_layer_name(char *out, int capacity, int layer);

#endif /* TM_TRACE_H */
