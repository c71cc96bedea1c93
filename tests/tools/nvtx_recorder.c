/*
 * nvtx_recorder.c - a minimal NVTX injection library for tests: loaded by NVTX3 when
 * NVTX_INJECTION64_PATH names it, it attaches to the core domain callbacks and writes one line
 * per event to the file named by TM_NVTX_LOG: "push DOMAIN NAME" and "pop DOMAIN". (nvToolsExt.h
 * brings the injection types: NvtxGetExportTableFunc_t, the callback tables and their ids.)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nvtx3/nvToolsExt.h>

static FILE *out;

/* Domain handles point at their names, kept in a fixed table (no allocation: leak checkers stay quiet). */
static char domain_names[8][64];
static int n_domains;

static nvtxDomainHandle_t domain_create(const char *name) {
    for (int i = 0; i < n_domains; i++)
        if (!strcmp(domain_names[i], name)) return (nvtxDomainHandle_t)domain_names[i];
    if (n_domains == 8) return (nvtxDomainHandle_t)"?";
    snprintf(domain_names[n_domains], sizeof domain_names[0], "%s", name);
    return (nvtxDomainHandle_t)domain_names[n_domains++];
}

static int range_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *attributes) {
    const char *name = attributes && attributes->messageType == NVTX_MESSAGE_TYPE_ASCII ? attributes->message.ascii : "?";
    fprintf(out, "push %s %s\n", (const char *)domain, name);
    fflush(out);
    return 0;
}

static int range_pop(nvtxDomainHandle_t domain) {
    fprintf(out, "pop %s\n", (const char *)domain);
    fflush(out);
    return 0;
}

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
    const char *path = getenv("TM_NVTX_LOG");
    if (!path || !(out = fopen(path, "w"))) return 0;
    const NvtxExportTableCallbacks *callbacks = (const NvtxExportTableCallbacks *)get_export_table(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size) || size <= NVTX_CBID_CORE2_DomainCreateA)
        return 0;
    *table[NVTX_CBID_CORE2_DomainCreateA] = (NvtxFunctionPointer)domain_create;
    *table[NVTX_CBID_CORE2_DomainRangePushEx] = (NvtxFunctionPointer)range_push;
    *table[NVTX_CBID_CORE2_DomainRangePop] = (NvtxFunctionPointer)range_pop;
    return 1;
}
