/*
 * common.cuh - what every CUDA file of TensorMesh shares: checked CUDA calls and the block
 * layouts of the weight types (the same bytes as engine/quant.h, readable from device code).
 */
#ifndef TM_CUDA_COMMON_CUH
#define TM_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

/* Returns cudaError_t from the enclosing function after printing call, file and line. */
#define TM_CUDA_CHECK(call)                                                                              \
    do {                                                                                                 \
        cudaError_t tm_cuda_status_ = (call);                                                            \
        if (tm_cuda_status_ != cudaSuccess) {                                                            \
            fprintf(stderr, "CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(tm_cuda_status_),    \
                    cudaGetErrorString(tm_cuda_status_), #call, __FILE__, __LINE__);                     \
            return tm_cuda_status_;                                                                      \
        }                                                                                                \
    } while (0)

/* After a launch: the launch error, checked like a call. */
#define TM_CUDA_CHECK_LAUNCH() TM_CUDA_CHECK(cudaGetLastError())

#endif /* TM_CUDA_COMMON_CUH */
