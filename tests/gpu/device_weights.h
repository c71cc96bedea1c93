/*
 * device_weights.h - GGUF-layout weights from host memory into a fresh device buffer in the device
 * layout every kernel reads (kernels.h: q6_k blocks padded to 224 bytes, q8_0 rows split), as the engine uploads
 * them. NULL when the type/shape is refused or the copy fails.
 */
#ifndef TM_TEST_DEVICE_WEIGHTS_H
#define TM_TEST_DEVICE_WEIGHTS_H

#include <cuda_runtime_api.h>

#include "kernels.h"
#include "quant.h"

static void *weights_to_device(tm_type type, const void *host, int64_t rows, int64_t cols) {
    uint64_t bytes = tm_cuda_weight_row_bytes((int)type, cols) * (uint64_t)rows;
    void *device = NULL;
    if (!bytes || cudaMalloc(&device, bytes) != cudaSuccess) return NULL;
    if (tm_cuda_upload_weight((int)type, device, host, rows, cols, NULL) != 0) {
        cudaFree(device);
        return NULL;
    }
    return device;
}

#endif /* TM_TEST_DEVICE_WEIGHTS_H */
