/*
 * test_gemv_cuda.c - the CUDA GEMV of every weight type against the CPU reference on random
 * blocks (random bytes, random finite scales): each output within 1e-5 of sum |w_i x_i| of a
 * float64 product over the CPU's dequantized weights (float32 accumulation in a different
 * order on the GPU), for shapes with an odd row count; the output is poisoned with NaN first, so
 * an unwritten row fails. Without a CUDA device it reports itself skipped (exit 77).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "kernels.h"
#include "random_blocks.h"

#define SKIPPED 77

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_gemv_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    printf("device: %s\n", device);
    const tm_type types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                             TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    const int64_t shapes[][2] = {{37, 1024}, {300, 4096}};
    tm_rng_t rng;
    tm_rng_seed(&rng, 5);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        for (int s = 0; s < 2; s++) {
            const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            uint64_t row_bytes;
            tm_type_row_bytes(types[k], (uint64_t)cols, &row_bytes);
            uint8_t *w = malloc(row_bytes * (uint64_t)rows);
            float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)rows * sizeof *y), *w_row = malloc((size_t)cols * sizeof *w_row);
            test_random_blocks(&rng, types[k], w, rows * cols);
            for (int64_t i = 0; i < cols; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
            void *d_w, *d_x, *d_y;
            CHECK(cudaMalloc(&d_w, row_bytes * (uint64_t)rows) == cudaSuccess && cudaMalloc(&d_x, (size_t)cols * 4) == cudaSuccess &&
                      cudaMalloc(&d_y, (size_t)rows * 4) == cudaSuccess, "cudaMalloc");
            cudaMemcpy(d_w, w, row_bytes * (uint64_t)rows, cudaMemcpyHostToDevice);
            cudaMemcpy(d_x, x, (size_t)cols * 4, cudaMemcpyHostToDevice);
            cudaMemset(d_y, 0xff, (size_t)rows * 4); /* NaN poison */
            CHECK(tm_cuda_gemv((int)types[k], d_w, rows, cols, d_x, d_y, NULL) == 0, "%s launch", traits->name);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s kernel", traits->name);
            cudaMemcpy(y, d_y, (size_t)rows * 4, cudaMemcpyDeviceToHost);
            int bad = 0;
            double worst = 0;
            for (int64_t r = 0; r < rows; r++) {
                traits->dequantize_row(w + (uint64_t)r * row_bytes, w_row, cols);
                double sum = 0, magnitude = 0;
                for (int64_t i = 0; i < cols; i++) {
                    sum += (double)w_row[i] * x[i];
                    magnitude += fabs((double)w_row[i] * x[i]);
                }
                double error = fabs(y[r] - sum) / (magnitude + 1e-30);
                if (!(error <= 1e-5)) bad++;
                if (error > worst || error != error) worst = error;
            }
            CHECK(bad == 0, "%s %lldx%lld: %d rows outside 1e-5 (worst %.3g)", traits->name, (long long)rows, (long long)cols, bad,
                  worst);
            cudaFree(d_w), cudaFree(d_x), cudaFree(d_y);
            free(w), free(x), free(y), free(w_row);
        }
    CHECK(tm_cuda_gemv(TM_TYPE_Q4_K, NULL, 1, 100, NULL, NULL, NULL) != 0, "a row that is not whole blocks is refused");
    return check_report("test_gemv_cuda");
}
