/*
 * common.cuh - what every CUDA file of TensorMesh shares: checked CUDA calls, the block layouts
 * of the weight types (the same bytes as engine/quant.h, readable from device code), the rope
 * rotation, the 16-byte loads that fetch whole lines into L2 (weights, KV), the warp's sum, and a
 * pointer's shared-memory address.
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

/* The 32-bit shared-window address of a pointer into shared memory (what cp.async, ldmatrix, mapa
 * and the mbarrier instructions take). */
__device__ __forceinline__ uint32_t shared_address(const void *pointer) { return (uint32_t)__cvta_generic_to_shared(pointer); }

/* The sum of `value` over the warp's 32 lanes, in every lane (all lanes call; a butterfly, so the
 * additions happen in the same order whatever the values). */
template <typename T> __device__ __forceinline__ T sum_over_warp(T value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

/* The largest `value` over the warp's 32 lanes, in every lane (all lanes call). */
__device__ __forceinline__ float max_over_warp(float value) {
    for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

/* 16 bytes from global memory that no kernel of the launch writes, the miss fetching the whole
 * 128-byte line into L2 (.L2::128B): for reads that sweep every byte of a run of lines in 16-byte
 * pieces split over several instructions or warps (a q4_k block is 144 bytes, so half its lane
 * pairs' pieces start mid-sector). ldg_line16 keeps the line in L1 (a lane's next pieces of it hit
 * there: the decode attention's keys and values, and the one-token q4_k / q5_k weights, whose two
 * loads a lane are the halves of each sector: gemv_q8.cu's pairs_weight_lines); ldg_stream16 does
 * not allocate in L1 (bytes read once a step: the other weights), leaving L1 to the activations
 * every warp re-reads (70B decode x1 55.74 -> 56.39 tokens/s when L1::no_allocate came in). H200, session 11, each against the same build
 * without the 128-byte fetch: quantized weights 7B decode x1 482.7 / 478.7 -> 489.7 / 489.4
 * (64-byte fetches 488, 256-byte 471-474); decode attention 490.6 / 491.1 -> 496.4 / 495.8; f16
 * weights 8B decode x1 186.2 -> 189.3, x8 1417 -> 1504. */
__device__ __forceinline__ uint4 ldg_line16(const void *p) {
    uint4 v;
    asm("ld.global.nc.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 ldg_stream16(const void *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* The rope angle of pair i (elements 2i, 2i+1) at `position` as (cos, sin) in float (llama.cpp's
 * "normal" rope, as engine/ops_cpu.c: the angle in float64). */
__device__ __forceinline__ float2 rope_angle(int i, int n_rot, int position, float freq_base, float freq_scale, const float *freq_factors) {
    double theta = position * (double)freq_scale * pow((double)freq_base, -2.0 * i / n_rot);
    if (freq_factors) theta /= freq_factors[i];
    return make_float2((float)cos(theta), (float)sin(theta));
}

/* The pair rotated by the angle (cos, sin); explicit roundings: no contraction into FMAs, so every
 * kernel inlining this agrees. */
__device__ __forceinline__ void rope_rotate(float *pair, float2 angle) {
    float a = pair[0], b = pair[1];
    pair[0] = __fsub_rn(__fmul_rn(a, angle.x), __fmul_rn(b, angle.y));
    pair[1] = __fadd_rn(__fmul_rn(a, angle.y), __fmul_rn(b, angle.x));
}

/* Rope of pair i at `position`. Shared by the rope kernels so they agree bit for bit (and with a
 * table of rope_angle, tm_cuda_rope_table). */
__device__ __forceinline__ void rope_pair(float *pair, int i, int n_rot, int position, float freq_base, float freq_scale,
                                          const float *freq_factors) {
    rope_rotate(pair, rope_angle(i, n_rot, position, freq_base, freq_scale, freq_factors));
}

#endif /* TM_CUDA_COMMON_CUH */
