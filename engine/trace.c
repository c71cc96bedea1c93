/*
 * trace.c - see trace.h: one NVTX domain, created at the first range; a per-thread depth count
 * so callers can unwind.
 */
#include "trace.h"

#include <stdio.h>

#ifdef TM_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

static bool detail;
static _Thread_local int depth;

void tm_trace_set_detail(bool on) { detail = on; }
bool tm_trace_detail(void) { return detail; }
int tm_trace_depth(void) { return depth; }

#ifdef TM_NVTX
static nvtxDomainHandle_t domain(void) {
    static nvtxDomainHandle_t handle;
    if (!handle) handle = nvtxDomainCreateA("tensormesh"); /* a race creates it twice: the tool sees one name */
    return handle;
}
#endif

void tm_trace_push(const char *name) {
    depth++;
#ifdef TM_NVTX
    nvtxEventAttributes_t attributes = {0};
    attributes.version = NVTX_VERSION;
    attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = name;
    nvtxDomainRangePushEx(domain(), &attributes);
#else
    (void)name;
#endif
}

void tm_trace_pop(void) {
    if (depth == 0) return;
    depth--;
#ifdef TM_NVTX
    nvtxDomainRangePop(domain());
#endif
}

void tm_trace_unwind(int to_depth) {
    while (depth > to_depth) tm_trace_pop();
}

void tm_trace_layer_name(char *out, int capacity, int layer) { snprintf(out, (size_t)capacity, "layer %d", layer); }
