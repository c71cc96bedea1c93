/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader: any input must either parse into a handle
 * whose tensors all lie inside the input, or fail with a message; never crash or leak.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tm_gguf *g = NULL;
    tm_error_t error = {0};
    if (tm_gguf_open_memory(data, size, "fuzz", false, &g, &error) == TM_OK) {
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const uint8_t *p = g->tensors[i].data;
            assert(p >= data && p + g->tensors[i].n_bytes <= data + size);
            volatile uint8_t sink = g->tensors[i].n_bytes ? p[g->tensors[i].n_bytes - 1] : 0;
            (void)sink;
        }
        for (uint64_t i = 0; i < g->n_kv; i++) assert(g->kvs[i].key[0] != 0);
        tm_gguf_close(g);
    } else {
        assert(error.message[0] != 0);
    }
    return 0;
}
