/*
 * trace.c - see trace.h: one NVTX domain, created at the first range.
 */
#include "trace.h"

#ifdef TM_NVTX
#include <nvtx3/nvToolsExt.h>

static nvtxDomainHandle_t domain(void) {
    static nvtxDomainHandle_t handle;
    if (!handle) handle = nvtxDomainCreateA("tensormesh"); /* a race creates it twice: the tool sees one name */
    return handle;
}

void tm_trace_push(const char *name) {
    nvtxEventAttributes_t attributes = {0};
    attributes.version = NVTX_VERSION;
    attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = name;
    nvtxDomainRangePushEx(domain(), &attributes);
}

void tm_trace_pop(void) { nvtxDomainRangePop(domain()); }
#else
typedef int tm_trace_off; /* nothing to build without NVTX */
#endif
