/*
 * test_gemv_cuda.c - the CUDA GEMV of every weight type against the CPU reference on random
 * blocks (random bytes, random finite scales): each output within 1e-5 of sum |w_i x_i| of a
 * float64 product over the CPU's dequantized weights (float32 accumulation in a different
 * order on the GPU), for shapes with an odd row count; the output is poisoned with NaN first, so
 * an unwritten row fails. The batched decode GEMV (2, 5 and 16 activation rows against each
 * weight read once) is held to the same 1e-5. The prefill GEMM (tensor cores, 37 rows; 150 for
 * q4_k/q5_k/q6_k, two 128-token tiles of the fused kernel, the second partial) rounds activations
 * and dequantized weights to f16, so its bound is 2e-3 of sum |w_i x_i|
 * (two roundings of 2^-11 each plus float32 accumulation), 8e-3 for bf16 weights (activations
 * rounded to bf16, 2^-8), 1e-5 for f32 weights (SGEMM); the decode product of f16 / bf16 weights
 * on 16-bit tensor cores (2, 5, 8, 9 and 16 tokens) to the same bounds; its workspace is the minimum, so
 * quantized weights go through several 128-row tiles. The fast decode products for q4_k and
 * q6_k (activations quantized to 8 bits with one scale a 256-value block, integer dot products; 1, 2, 5 and 16
 * tokens) are held to 1e-2 of sum |w_i x_i|: each activation moves by at most max|x|/254 of its
 * block (~8e-3 of the mean |x| for inputs uniform in [-1, 1]) and the errors have random signs,
 * so the measured worst (printed) sits far below.
 * The k-quant prefill products run dequantized inside the tensor-core product (gemm_fused.cu),
 * forced for every shape: wgmma where the device runs it in the parent (TM_GEMM_FUSED=2; these
 * small grids take its 64-token blocks) and with 128-token blocks in the "wgmma-128" child,
 * mma.sync in the "dp4a" child (TM_GEMM_FUSED=1); dequantize + cuBLAS in the "dp4a-subblocks"
 * child (TM_GEMM_FUSED=0).
 * The tensor-core decode products of 2..8 tokens stage their activations (and q6_k weights) in
 * shared memory for wide products where the device has room (sm_90); here TM_MMQ_INPUTS=2 takes
 * that layout for every shape the device fits it (8-warp blocks in the parent, 4 in the "dp4a"
 * child, 3 in the "wgmma-128" child: the 70B's Q/K/V launch's, TM_MMQ_WARPS=3), and the "dp4a-subblocks" child turns it off (TM_MMQ_INPUTS=0, the layout of the 7B's
 * products and of an RTX 4090), so both layouts meet the same bounds. Where the device fits two
 * of its blocks an SM (sm_90), the products outside the staged-activations layout (the Q/K/V launch
 * with its rope epilogue too) take mmq_persistent_kernel instead, the 7B's since session 26; both children turn it off
 * (TM_MMQ_PERSISTENT=0) to keep testing mmq_kernel's weights-only layout (an RTX 4090's), and the
 * "persistent" child takes it in three blocks (TM_MMQ_PERSISTENT_BLOCKS=3; 8 warps each, the
 * choice for products of fewer tiles than the 4-warp slots, and "persistent-4-warps" in blocks of 4
 * warps, the choice for products of more, as the 7B's gate/up at 8 tokens), so a block runs
 * through several tiles (its stages holding the activations of up to 8 tokens as well, by default,
 * and in the parent; "persistent" reads them from global memory, TM_MMQ_PERSISTENT_INPUTS=0; in
 * "persistent-4-warps" the stages of launches without a q6_k part hold both token groups' at 9..16
 * tokens, TM_MMQ_PERSISTENT_INPUTS2=2, which by default only products of many tiles take),
 * across the parts' types in the parts check and with the rope targets of each tile in
 * test_qkv_rope, and warps with no block of a tile (1024 columns: 4 blocks for 8
 * warps) still add their zero sums; q8_0's tensor-core kernel (gemv_q8_0.cu) likewise runs through
 * several tiles a block there (its groups of 8 blocks: 1024 columns, 4 groups for 8 warps). That
 * kernel stages the activations of up to 8 tokens in shared memory on sm_90; the "dp4a" and
 * "persistent-4-warps" children read them from global memory (TM_Q80_STAGE_X=0), a block a tile
 * and several tiles a block.
 * The Q/K/V products with the rope and KV append in their epilogue equal the separate launches bit
 * for bit (test_qkv_rope; one token in the dp4a child, where pairs_kernel takes it). One token's
 * f16 / bf16 products in one launch likewise (test_sixteen_bit_parts), and those of several tokens on
 * 16-bit tensor cores (test_sixteen_bit_token_parts; blocks of 8 warps, or 4 for launches of more
 * tiles than 8-warp blocks fit the GPU at once, every launch in 4 in the "pairs-split-2" child,
 * TM_MMA16_WARPS=4, and in 8 in "pairs-whole-rows"); the one-token 16-bit kernel
 * takes batches of 2 pieces a lane, 8 in the "dp4a" child and 4 in "dp4a-subblocks". pairs_kernel
 * (one token; the parent streams those instead, TM_GEMV_STREAM=1) reads its q4_k and q5_k weights
 * through L1 by default (the "dp4a" child), all of them around L1 in the "persistent" child
 * (TM_PAIRS_WEIGHT_LINES=0) and all through L1 in "persistent-4-warps" (3); it splits rows of 64
 * blocks or more (600 x 28672 here) over 4 warps, rows of 24 or more (48 x 8448 too) in the
 * "pairs-split-4" child and over 2 warps in "pairs-split-2", and none in "pairs-whole-rows"
 * (TM_PAIRS_SPLIT, TM_PAIRS_SPLIT_BLOCKS).
 * Without a CUDA device it reports itself skipped (exit 77).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cublas_v2.h>

#include "check.h"
#include "device_weights.h"
#include "kernels.h"
#include "random_blocks.h"

#define SKIPPED 77

/* Runs this test again in a child process with TM_TEST_GEMV_CHILD=`name` and the settings in
 * `environment` ("NAME=value NAME=value"); its wait status (0: every check passed). */
static int run_child(const char *name, const char *environment) {
    fflush(stdout);
    char self[4096];
    const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) return -1;
    self[length] = '\0';
    const pid_t pid = fork();
    if (pid == 0) {
        char settings[256];
        snprintf(settings, sizeof settings, "%s", environment);
        for (char *save = NULL, *item = strtok_r(settings, " ", &save); item; item = strtok_r(NULL, " ", &save)) {
            char *equals = strchr(item, '=');
            if (!equals) _exit(126);
            *equals = '\0';
            setenv(item, equals + 1, 1);
        }
        setenv("TM_TEST_GEMV_CHILD", name, 1);
        execl(self, self, (char *)NULL);
        _exit(127);
    }
    int status = -1;
    if (pid > 0 && waitpid(pid, &status, 0) != pid) status = -1;
    return status;
}

/* Outputs y[j][r] (n tokens) farther than bound * sum_i |w_ri x_ji| from the float64 product of the
 * dequantized rows w_rows with x; the worst relative error (NaN counts as outside) in *worst. */
static int count_outside(const float *y, const double *w_rows, const float *x, int64_t rows, int64_t cols, int n, double bound,
                         double *worst) {
    int bad = 0;
    *worst = 0;
    for (int j = 0; j < n; j++)
        for (int64_t r = 0; r < rows; r++) {
            double sum = 0, magnitude = 0;
            for (int64_t i = 0; i < cols; i++) {
                sum += w_rows[r * cols + i] * x[j * cols + i];
                magnitude += fabs(w_rows[r * cols + i] * x[j * cols + i]);
            }
            double error = fabs(y[j * rows + r] - sum) / (magnitude + 1e-30);
            if (!(error <= bound)) bad++;
            if (error > *worst || error != error) *worst = error;
        }
    return bad;
}

/* Random weights of `type` (rows x cols) on the device (weights_to_device: NULL when that failed),
 * and their values in float64 in *w_rows (rows * cols, malloc'd): what a part is checked against. */
static void *random_part(tm_rng_t *rng, tm_type type, int64_t rows, int64_t cols, double **w_rows) {
    const tm_type_traits *traits = tm_type_traits_scalar(type);
    uint64_t row_bytes;
    tm_type_row_bytes(type, (uint64_t)cols, &row_bytes);
    uint8_t *w = malloc(row_bytes * (uint64_t)rows);
    float *w_row = malloc((size_t)cols * 4);
    test_random_blocks(rng, type, w, rows * cols);
    *w_rows = malloc((size_t)rows * cols * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        traits->dequantize_row(w + (uint64_t)r * row_bytes, w_row, cols);
        for (int64_t i = 0; i < cols; i++) (*w_rows)[r * cols + i] = w_row[i];
    }
    void *d_w = weights_to_device(type, w, rows, cols);
    free(w), free(w_row);
    return d_w;
}

/* One token's f16 / bf16 products in one launch (tm_cuda_gemv_16bit_parts: Q/K/V-like parts of 517,
 * 37 and 300 rows of 1032 columns, 129 16-byte pieces a row, so a lane's last batch is partial; and
 * two parts, gate/up-like, of 64 rows of 8200): each part equals its own tm_cuda_gemv launch bit for
 * bit and is within 1e-5 of sum |w_i x_i| of the float64 product (float32 accumulation, float
 * activations); mixed types and widths not a multiple of 8 are declined. */
static void test_sixteen_bit_parts(tm_rng_t *rng) {
    const tm_type types[2] = {TM_TYPE_F16, TM_TYPE_BF16};
    for (int k = 0; k < 2; k++)
        for (int shape = 0; shape < 2; shape++) {
            const int n_parts = shape == 0 ? 3 : 2;
            const int64_t cols = shape == 0 ? 1032 : 8200, part_rows[3] = {shape == 0 ? 517 : 64, shape == 0 ? 37 : 64, 300};
            const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
            float *x = malloc((size_t)cols * 4);
            for (int64_t i = 0; i < cols; i++) x[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
            void *d_x;
            CHECK(cudaMalloc(&d_x, (size_t)cols * 4) == cudaSuccess, "cudaMalloc");
            cudaMemcpy(d_x, x, (size_t)cols * 4, cudaMemcpyHostToDevice);
            tm_cuda_gemv_part parts[3];
            float *separate[3], *together[3];
            double *w_rows[3];
            for (int p = 0; p < n_parts; p++) {
                void *d_w = random_part(rng, types[k], part_rows[p], cols, &w_rows[p]);
                CHECK(d_w != NULL && cudaMalloc((void **)&separate[p], (size_t)part_rows[p] * 4) == cudaSuccess &&
                          cudaMalloc((void **)&together[p], (size_t)part_rows[p] * 4) == cudaSuccess,
                      "part %d upload, cudaMalloc", p);
                cudaMemset(separate[p], 0xff, (size_t)part_rows[p] * 4), cudaMemset(together[p], 0xff, (size_t)part_rows[p] * 4);
                CHECK(tm_cuda_gemv((int)types[k], d_w, part_rows[p], cols, d_x, separate[p], NULL) == 0, "part %d alone", p);
                parts[p] = (tm_cuda_gemv_part){d_w, (int)types[k], part_rows[p], together[p]};
            }
            CHECK(tm_cuda_gemv_16bit_parts(parts, n_parts, cols, d_x, NULL) == 0, "%s parts launch", traits->name);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s parts kernel", traits->name);
            for (int p = 0; p < n_parts; p++) {
                const size_t bytes = (size_t)part_rows[p] * 4;
                float *a = malloc(bytes), *b = malloc(bytes);
                cudaMemcpy(a, separate[p], bytes, cudaMemcpyDeviceToHost), cudaMemcpy(b, together[p], bytes, cudaMemcpyDeviceToHost);
                CHECK(!memcmp(a, b, bytes), "%s %d parts x %lld: part %d in one launch equals its own launch bit for bit", traits->name,
                      n_parts, (long long)cols, p);
                double worst;
                const int bad = count_outside(b, w_rows[p], x, part_rows[p], cols, 1, 1e-5, &worst);
                CHECK(bad == 0, "%s part %d (%lld x %lld) in one launch: %d outputs outside 1e-5 (worst %.3g)", traits->name, p,
                      (long long)part_rows[p], (long long)cols, bad, worst);
                free(a), free(b);
            }
            if (shape == 0) {
                tm_cuda_gemv_part mixed[2] = {parts[0], parts[1]};
                mixed[1].type = types[1 - k];
                CHECK(tm_cuda_gemv_16bit_parts(mixed, 2, cols, d_x, NULL) == cudaErrorNotSupported, "mixed f16 / bf16 parts are declined");
                CHECK(tm_cuda_gemv_16bit_parts(parts, 1, cols - 4, d_x, NULL) == cudaErrorNotSupported,
                      "a width not a multiple of 8 is declined");
            }
            for (int p = 0; p < n_parts; p++) cudaFree((void *)parts[p].weights), cudaFree(separate[p]), cudaFree(together[p]), free(w_rows[p]);
            cudaFree(d_x);
            free(x);
        }
}

/* Several tokens' f16 / bf16 products in one launch on 16-bit tensor cores
 * (tm_cuda_gemv_16bit_tokens_parts: parts of 512, 128 and 48 rows of 1056 columns, and of 4096,
 * 1024 and 512 rows, 5 and 16 tokens; 1056 columns are 33 steps, so the 8 classes of a row's steps
 * are uneven): each part equals its own tm_cuda_gemv_16bit_tokens launch bit for bit (the larger
 * parts, 352 tiles in one launch, outnumber the blocks of 8 warps an H200 or an RTX 4090 holds, so
 * that launch takes 4-warp blocks where the parts alone take 8: mma16_warps) and meets that
 * kernel's bounds against float64 (2e-3 f16, 8e-3 bf16: activations rounded once); a part whose
 * rows are not whole 16-row tiles is declined, y untouched. f16: the launch taking the activations
 * already in f16 (tm_cuda_gemv_f16_tokens_parts_half_x, x rounded to nearest even on the host)
 * equals the float-activation launch bit for bit; bf16 weights are declined there. */
static void test_sixteen_bit_token_parts(tm_rng_t *rng) {
    const tm_type types[2] = {TM_TYPE_F16, TM_TYPE_BF16};
    const int64_t cols = 1056, shapes[2][3] = {{512, 128, 48}, {4096, 1024, 512}};
    const int counts[2] = {5, 16};
    for (int case_index = 0; case_index < 8; case_index++) {
        const int shape = case_index / 4, k = case_index / 2 % 2, c = case_index % 2;
        const int64_t *part_rows = shapes[shape];
        const int n = counts[c];
        const double bound = types[k] == TM_TYPE_F16 ? 2e-3 : 8e-3;
        const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
        float *x = malloc((size_t)cols * n * 4);
        for (int64_t i = 0; i < cols * n; i++) x[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
        void *d_x;
        CHECK(cudaMalloc(&d_x, (size_t)cols * n * 4) == cudaSuccess, "cudaMalloc");
        cudaMemcpy(d_x, x, (size_t)cols * n * 4, cudaMemcpyHostToDevice);
        tm_cuda_gemv_part parts[3];
        float *separate[3], *together[3];
        double *w_rows[3];
        for (int p = 0; p < 3; p++) {
            void *d_w = random_part(rng, types[k], part_rows[p], cols, &w_rows[p]);
            const size_t bytes = (size_t)part_rows[p] * n * 4;
            CHECK(d_w != NULL && cudaMalloc((void **)&separate[p], bytes) == cudaSuccess && cudaMalloc((void **)&together[p], bytes) == cudaSuccess,
                  "part %d upload, cudaMalloc", p);
            cudaMemset(separate[p], 0xff, bytes), cudaMemset(together[p], 0xff, bytes);
            CHECK(tm_cuda_gemv_16bit_tokens((int)types[k], d_w, part_rows[p], cols, d_x, n, separate[p], NULL) == 0, "part %d alone", p);
            parts[p] = (tm_cuda_gemv_part){d_w, (int)types[k], part_rows[p], together[p]};
        }
        CHECK(tm_cuda_gemv_16bit_tokens_parts(parts, 3, cols, d_x, n, NULL) == 0, "%s x%d parts launch", traits->name, n);
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s x%d parts kernel", traits->name, n);
        for (int p = 0; p < 3; p++) {
            const size_t bytes = (size_t)part_rows[p] * n * 4;
            float *a = malloc(bytes), *b = malloc(bytes);
            cudaMemcpy(a, separate[p], bytes, cudaMemcpyDeviceToHost), cudaMemcpy(b, together[p], bytes, cudaMemcpyDeviceToHost);
            CHECK(!memcmp(a, b, bytes), "%s x%d: part %d in one launch equals its own launch bit for bit", traits->name, n, p);
            double worst;
            const int bad = count_outside(b, w_rows[p], x, part_rows[p], cols, n, bound, &worst);
            CHECK(bad == 0, "%s x%d part %d (%lld x %lld) in one launch: %d outputs outside %g (worst %.3g)", traits->name, n, p,
                  (long long)part_rows[p], (long long)cols, bad, bound, worst);
            free(a), free(b);
        }
        /* the activations already in f16: the same bits */
        tm_f16_t *x16 = malloc((size_t)cols * n * 2);
        for (int64_t i = 0; i < cols * n; i++) x16[i] = tm_f32_to_f16(x[i]);
        void *d_x16;
        CHECK(cudaMalloc(&d_x16, (size_t)cols * n * 2) == cudaSuccess, "cudaMalloc");
        cudaMemcpy(d_x16, x16, (size_t)cols * n * 2, cudaMemcpyHostToDevice);
        float *halved[3];
        tm_cuda_gemv_part half_parts[3];
        for (int p = 0; p < 3; p++) {
            CHECK(cudaMalloc((void **)&halved[p], (size_t)part_rows[p] * n * 4) == cudaSuccess, "cudaMalloc");
            cudaMemset(halved[p], 0xff, (size_t)part_rows[p] * n * 4);
            half_parts[p] = parts[p], half_parts[p].y = halved[p];
        }
        const int half_status = tm_cuda_gemv_f16_tokens_parts_half_x(half_parts, 3, cols, d_x16, n, NULL);
        cudaDeviceSynchronize();
        if (types[k] == TM_TYPE_F16) {
            CHECK(half_status == 0, "f16 x%d parts launch with f16 activations", n);
            for (int p = 0; p < 3; p++) {
                const size_t bytes = (size_t)part_rows[p] * n * 4;
                float *a = malloc(bytes), *b = malloc(bytes);
                cudaMemcpy(a, together[p], bytes, cudaMemcpyDeviceToHost), cudaMemcpy(b, halved[p], bytes, cudaMemcpyDeviceToHost);
                CHECK(!memcmp(a, b, bytes), "f16 x%d part %d: f16 activations give the float activations' result bit for bit", n, p);
                free(a), free(b);
            }
        } else {
            CHECK(half_status == cudaErrorNotSupported, "bf16 weights with f16 activations are declined");
        }
        for (int p = 0; p < 3; p++) cudaFree(halved[p]);
        cudaFree(d_x16), free(x16);
        tm_cuda_gemv_part ragged[2] = {parts[0], parts[1]};
        ragged[1].rows = 120;
        cudaMemset(together[0], 0xff, (size_t)part_rows[0] * n * 4);
        uint32_t first = 0;
        const int status = tm_cuda_gemv_16bit_tokens_parts(ragged, 2, cols, d_x, n, NULL);
        cudaDeviceSynchronize();
        cudaMemcpy(&first, together[0], 4, cudaMemcpyDeviceToHost);
        CHECK(status == cudaErrorNotSupported && first == 0xffffffffu, "a part of 120 rows (not whole tiles) is declined, y untouched");
        for (int p = 0; p < 3; p++) cudaFree((void *)parts[p].weights), cudaFree(separate[p]), cudaFree(together[p]), free(w_rows[p]);
        cudaFree(d_x);
        free(x);
    }
}

/* The Q/K/V products with the rope and the KV append in their epilogue (tm_cuda_gemv_q8_qkv_rope)
 * against tm_cuda_gemv_q8_parts then tm_cuda_rope_kv_append: the queries and the whole KV pool bit
 * for bit, on random weights and activations, at 1, 2, 5, 8, 9 and 16 tokens (one token:
 * pairs_kernel; more: the int8 tensor-core kernel, a partial last token group at 5 and 9), for f16
 * and f32 caches, all-q4_k parts with cache rows sharing 4 KiB pages, a q6_k V (the 7B's mix)
 * with rows spanning 256-byte pages and a q5_k V (the 70B's other layers; declined at one token,
 * where pairs_kernel takes the rope only without a q5_k part), 6 heads of 64 (rows 384) with 2 kv
 * heads, only the first 48 dimensions rotated, tokens in two streams (own page tables) at
 * positions partly past the angle table (computed there), the second of two layers (the step's
 * targets found for both). A q5_k key part likewise. */
static void test_qkv_rope(tm_rng_t *rng) {
    /* two layers' page tables (layer_pages entries apart, each two streams' tables of stream_pages),
     * a random permutation of the pool's pages; the products make layer 1's keys and values */
    enum { stream_pages = 96, layer_pages = 2 * stream_pages, n_pages = 2 * layer_pages };
    const int n_head = 6, n_kv = 2, hd = 64, n_rot = 48, table_positions = 10;
    const int64_t q_rows = (int64_t)n_head * hd, kv_rows = (int64_t)n_kv * hd;
    int32_t tables[n_pages];
    for (int i = 0; i < n_pages; i++) tables[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        const int j = (int)(tm_rng_uniform(rng) * (i + 1)) % (i + 1), t = tables[i];
        tables[i] = tables[j], tables[j] = t;
    }
    static const int token_counts[] = {1, 2, 5, 8, 9, 16};
    float factors[32];
    for (int i = 0; i < hd / 2; i++) factors[i] = 1.0f + 0.125f * i;
    void *d_factors = NULL, *d_angles = NULL, *d_tables = NULL;
    cudaMalloc(&d_factors, sizeof factors), cudaMalloc(&d_tables, sizeof tables);
    cudaMemcpy(d_factors, factors, sizeof factors, cudaMemcpyHostToDevice), cudaMemcpy(d_tables, tables, sizeof tables, cudaMemcpyHostToDevice);
    CHECK(cudaMalloc(&d_angles, tm_cuda_rope_table_bytes(table_positions, n_rot)) == cudaSuccess &&
              tm_cuda_rope_table(d_angles, table_positions, n_rot, 10000.0f, 1.0f, d_factors, NULL) == 0,
          "rope table");
    const char *pairs_setting = getenv("TM_GEMV_PAIRS"), *stream_setting = getenv("TM_GEMV_STREAM");
    const bool one_token_fused = !(pairs_setting && !strcmp(pairs_setting, "0")) && !(stream_setting && !strcmp(stream_setting, "1"));
    static const tm_type v_types[3] = {TM_TYPE_Q4_K, TM_TYPE_Q6_K, TM_TYPE_Q5_K};
    for (int run = 0; run < 36; run++) {
        const int n = token_counts[run % 6], kv_f32 = run / 6 % 2, q6_v = run / 12 == 1;
        const tm_type v_type = v_types[run / 12];
        const char *v_name = v_type == TM_TYPE_Q6_K ? "q6_k" : v_type == TM_TYPE_Q5_K ? "q5_k" : "q4_k";
        /* 4096 columns with the q5_k and q6_k V: 16 blocks, two a warp, so mmq_persistent_kernel's rope
         * targets are done at a tile's last wait (at 1024 columns, one a warp, its warp 0 waits for
         * them), and a warp adds several q6_k blocks (the sums' float steps must be the same in the
         * rope and plain instantiations: explicit __fmaf_rn, gemv_q8.cu) */
        const int64_t cols = v_type == TM_TYPE_Q4_K ? 1024 : 4096;
        /* with the q6_k V, 256-byte pages: a cache row (512 or 1024 bytes) spans 2 or 4 of them */
        const int page_size = q6_v ? 256 : 4096;
        const size_t pool_bytes = (size_t)n_pages * page_size;
        const tm_type part_types[3] = {TM_TYPE_Q4_K, TM_TYPE_Q4_K, v_type};
        const int64_t part_rows[3] = {q_rows, kv_rows, kv_rows};
        int32_t positions[16];
        int64_t offsets[16];
        for (int t = 0; t < n; t++) positions[t] = 4 + 2 * (t / 2) + (t % 2) * 3, offsets[t] = t % 2 ? stream_pages : 0; /* two streams */
        float *x = malloc((size_t)cols * n * 4);
        for (int64_t i = 0; i < cols * n; i++) x[i] = 2.0f * tm_rng_uniform(rng) - 1.0f;
        void *d_x, *d_q8, *d_positions, *d_offsets, *pool_fused, *pool_separate;
        cudaMalloc(&d_x, (size_t)cols * n * 4), cudaMalloc(&d_q8, tm_cuda_q8_1_bytes(cols * n));
        cudaMalloc(&d_positions, sizeof positions), cudaMalloc(&d_offsets, sizeof offsets);
        cudaMalloc(&pool_fused, pool_bytes), cudaMalloc(&pool_separate, pool_bytes);
        cudaMemset(pool_fused, 0, pool_bytes), cudaMemset(pool_separate, 0, pool_bytes);
        cudaMemcpy(d_x, x, (size_t)cols * n * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(d_positions, positions, sizeof positions, cudaMemcpyHostToDevice), cudaMemcpy(d_offsets, offsets, sizeof offsets, cudaMemcpyHostToDevice);
        CHECK(tm_cuda_quantize_q8_1(d_x, n, cols, d_q8, NULL) == 0, "quantize");
        tm_cuda_gemv_part parts[3];
        float *y[3], *q_fused;
        for (int p = 0; p < 3; p++) {
            uint64_t row_bytes;
            tm_type_row_bytes(part_types[p], (uint64_t)cols, &row_bytes);
            uint8_t *w = malloc(row_bytes * part_rows[p]);
            test_random_blocks(rng, part_types[p], w, part_rows[p] * cols);
            parts[p] = (tm_cuda_gemv_part){weights_to_device(part_types[p], w, part_rows[p], cols), (int)part_types[p], part_rows[p], NULL};
            free(w);
            cudaMalloc((void **)&y[p], (size_t)part_rows[p] * n * 4);
            parts[p].y = y[p];
        }
        cudaMalloc((void **)&q_fused, (size_t)q_rows * n * 4);
        cudaMemset(q_fused, 0xff, (size_t)q_rows * n * 4);
        const int kv_type = kv_f32 ? TM_CUDA_KV_F32 : TM_CUDA_KV_F16;
        tm_cuda_rope_kv rope = {n_head, n_kv, hd, n_rot, 10000.0f, 1.0f, d_factors, d_angles, table_positions,
                                {pool_separate, NULL, kv_type, page_size}, (const int32_t *)d_tables + layer_pages, d_offsets, d_positions, NULL, 0};
        CHECK(tm_cuda_gemv_q8_parts(parts, 3, cols, d_q8, n, NULL) == 0 && tm_cuda_rope_kv_append(y[0], y[1], y[2], n, &rope, NULL) == 0,
              "the separate launches");
        rope.kv.pool = pool_fused, rope.pages = d_tables; /* the step's targets of both layers */
        void *d_targets = NULL;
        CHECK(cudaMalloc(&d_targets, tm_cuda_rope_targets_bytes(n, 2, &rope)) == cudaSuccess &&
                  tm_cuda_rope_targets(d_targets, n, 2, layer_pages, &rope, NULL) == 0,
              "rope targets");
        rope.targets = d_targets, rope.layer = 1, rope.pages = (const int32_t *)d_tables + layer_pages;
        tm_cuda_gemv_part fused_parts[3] = {parts[0], parts[1], parts[2]};
        fused_parts[0].y = q_fused;
        const int status = tm_cuda_gemv_q8_qkv_rope(fused_parts, cols, d_q8, n, &rope, NULL);
        tm_cuda_rope_kv q8_rope = rope; /* an 8-bit cache: declined before anything is launched */
        q8_rope.kv.type = TM_CUDA_KV_Q8, q8_rope.kv.scales = (float *)d_targets, q8_rope.kv.page_size = 4096;
        CHECK(tm_cuda_gemv_q8_qkv_rope(fused_parts, cols, d_q8, n, &q8_rope, NULL) == cudaErrorNotSupported,
              "qkv + rope, %d tokens: an 8-bit cache is declined", n);
        if (n == 1 && (!one_token_fused || v_type == TM_TYPE_Q5_K)) {
            CHECK(status == cudaErrorNotSupported, "one token with the streamed or sub-block kernels or a q5_k V is declined (%d)", status);
        } else {
            CHECK(status == 0, "fused launch (%d tokens): %d", n, status);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "fused kernel");
            const size_t q_bytes = (size_t)q_rows * n * 4;
            float *a = malloc(q_bytes), *b = malloc(q_bytes);
            uint8_t *pa = malloc(pool_bytes), *pb = malloc(pool_bytes);
            cudaMemcpy(a, q_fused, q_bytes, cudaMemcpyDeviceToHost), cudaMemcpy(b, y[0], q_bytes, cudaMemcpyDeviceToHost);
            cudaMemcpy(pa, pool_fused, pool_bytes, cudaMemcpyDeviceToHost), cudaMemcpy(pb, pool_separate, pool_bytes, cudaMemcpyDeviceToHost);
            int64_t written = 0;
            for (size_t i = 0; i < pool_bytes; i++) written += pb[i] != 0;
            CHECK(!memcmp(a, b, q_bytes), "qkv + rope, %d tokens, %s cache, %s V: the queries equal the separate launches' bit for bit", n,
                  kv_f32 ? "f32" : "f16", v_name);
            CHECK(!memcmp(pa, pb, pool_bytes) && written > (int64_t)n * kv_rows,
                  "qkv + rope, %d tokens, %s cache, %s V: the KV pool equals the separate launches' bit for bit (%lld bytes written)", n,
                  kv_f32 ? "f32" : "f16", v_name, (long long)written);
            free(a), free(b), free(pa), free(pb);
        }
        if (n == 1 || n == 5) { /* a q5_k key part: declined at one token, taken by the tensor-core kernel at 5 */
            uint64_t row_bytes;
            tm_type_row_bytes(TM_TYPE_Q5_K, (uint64_t)cols, &row_bytes);
            uint8_t *w = malloc(row_bytes * kv_rows);
            test_random_blocks(rng, TM_TYPE_Q5_K, w, kv_rows * cols);
            tm_cuda_gemv_part with_q5k[3] = {fused_parts[0], fused_parts[1], fused_parts[2]};
            with_q5k[1].weights = weights_to_device(TM_TYPE_Q5_K, w, kv_rows, cols), with_q5k[1].type = TM_TYPE_Q5_K;
            free(w);
            const int q5 = tm_cuda_gemv_q8_qkv_rope(with_q5k, cols, d_q8, n, &rope, NULL);
            CHECK(n == 1 ? q5 == cudaErrorNotSupported : q5 == 0, "a q5_k key part at %d tokens: %d", n, q5);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "q5_k part");
            cudaFree((void *)with_q5k[1].weights);
        }
        fused_parts[1].rows = kv_rows + 16;
        CHECK(tm_cuda_gemv_q8_qkv_rope(fused_parts, cols, d_q8, n, &rope, NULL) == cudaErrorInvalidValue,
              "key rows other than n_head_kv * head_dim are refused");
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "no error pending");
        for (int p = 0; p < 3; p++) cudaFree((void *)parts[p].weights), cudaFree(y[p]);
        cudaFree(q_fused), cudaFree(d_x), cudaFree(d_q8), cudaFree(d_positions), cudaFree(d_offsets), cudaFree(pool_fused), cudaFree(d_targets);
        cudaFree(pool_separate);
        free(x);
    }
    cudaFree(d_factors), cudaFree(d_angles), cudaFree(d_tables);
}

int main(void) {
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device)) {
        printf("test_gemv_cuda: skipped: no CUDA device\n");
        return SKIPPED;
    }
    /* With TM_GEMV_STREAM=1, one-token q8 products take the streamed kernel on sm_90 (gemv_stream.cu,
     * off by default) from TM_STREAM_MIN_KB KiB of weights a block; 0 here sends every test shape
     * through it. Then the whole test runs again in child processes with TM_GEMV_STREAM=0, for the
     * dp4a kernels every device uses by default: TM_TEST_GEMV_CHILD=dp4a with TM_MMQ_WARPS=4 too (the tensor-core
     * kernel's blocks of 4 warps, its choice for large products; the test's shapes take 8), its
     * q4_k, q5_k and q6_k rows a lane a pair of sub-blocks (pairs_kernel, the default); dp4a-subblocks
     * with a lane a sub-block (TM_GEMV_PAIRS=0, the path of several tokens) and the
     * tensor-core kernel's activations read from global memory (TM_MMQ_INPUTS=0). */
    const char *child = getenv("TM_TEST_GEMV_CHILD");
    if (!child)
        setenv("TM_GEMV_STREAM", "1", 0), setenv("TM_STREAM_MIN_KB", "0", 0), setenv("TM_GEMM_FUSED", "2", 0), setenv("TM_MMQ_INPUTS", "2", 0);
    printf("device: %s%s%s\n", device, child ? ", one-token products on " : "", child ? child : "");
    const tm_type types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                             TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    /* 272 x 2816: whole 16-row tiles and an odd number of 256-column blocks, so 2..16 tokens of
     * q4_k/q5_k/q6_k take the tensor-core kernel with its eight warps splitting the blocks unevenly;
     * 48 x 8448: 33 blocks, five for warp 0, so its three shared-memory stages are each reused */
    const int64_t shapes[][2] = {{37, 1024}, {300, 4096}, {272, 2816}, {48, 8448}};
    tm_rng_t rng;
    tm_rng_seed(&rng, 5);
    cublasHandle_t cublas;
    CHECK(cublasCreate(&cublas) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        for (int s = 0; s < 4; s++) {
            const tm_type_traits *traits = tm_type_traits_scalar(types[k]);
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            uint64_t row_bytes;
            tm_type_row_bytes(types[k], (uint64_t)cols, &row_bytes);
            uint8_t *w = malloc(row_bytes * (uint64_t)rows);
            const bool fused = types[k] == TM_TYPE_Q4_K || types[k] == TM_TYPE_Q5_K || types[k] == TM_TYPE_Q6_K;
            const int max_tokens = fused ? 150 : 37;
            float *x = malloc((size_t)cols * max_tokens * sizeof *x), *y = malloc((size_t)rows * max_tokens * sizeof *y);
            double *w_rows = malloc((size_t)rows * cols * sizeof *w_rows);
            float *w_row = malloc((size_t)cols * sizeof *w_row);
            test_random_blocks(&rng, types[k], w, rows * cols);
            for (int64_t i = 0; i < cols * max_tokens; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
            for (int64_t r = 0; r < rows; r++) {
                traits->dequantize_row(w + (uint64_t)r * row_bytes, w_row, cols);
                for (int64_t i = 0; i < cols; i++) w_rows[r * cols + i] = w_row[i];
            }
            void *d_w = weights_to_device(types[k], w, rows, cols), *d_x, *d_y, *d_workspace;
            uint64_t workspace_bytes = tm_cuda_gemm_min_workspace(cols, max_tokens);
            CHECK(d_w && cudaMalloc(&d_x, (size_t)cols * max_tokens * 4) == cudaSuccess &&
                      cudaMalloc(&d_y, (size_t)rows * max_tokens * 4) == cudaSuccess && cudaMalloc(&d_workspace, workspace_bytes) == cudaSuccess,
                  "upload, cudaMalloc");
            cudaMemcpy(d_x, x, (size_t)cols * max_tokens * 4, cudaMemcpyHostToDevice);
            const int token_counts[] = {1, 2, 5, 16, 37, max_tokens};
            for (int c = 0; c < (fused ? 6 : 5); c++) {
                int n = token_counts[c];
                bool gemm = n > TM_CUDA_GEMV_MAX_TOKENS;
                double bound = !gemm ? 1e-5 : types[k] == TM_TYPE_F32 ? 1e-5 : types[k] == TM_TYPE_BF16 ? 8e-3 : 2e-3;
                cudaMemset(d_y, 0xff, (size_t)rows * n * 4); /* NaN poison */
                int status = n == 1 ? tm_cuda_gemv((int)types[k], d_w, rows, cols, d_x, d_y, NULL)
                             : !gemm ? tm_cuda_gemv_batched((int)types[k], d_w, rows, cols, d_x, n, d_y, NULL)
                                     : tm_cuda_gemm(cublas, (int)types[k], d_w, rows, cols, d_x, n, d_y, d_workspace, workspace_bytes, NULL);
                CHECK(status == 0, "%s x%d launch", traits->name, n);
                CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s x%d kernel", traits->name, n);
                cudaMemcpy(y, d_y, (size_t)rows * n * 4, cudaMemcpyDeviceToHost);
                double worst;
                int bad = count_outside(y, w_rows, x, rows, cols, n, bound, &worst);
                CHECK(bad == 0, "%s %lldx%lld, %d tokens (%s): %d outputs outside %g (worst %.3g)", traits->name, (long long)rows,
                      (long long)cols, n, n == 1 ? "gemv" : gemm ? "gemm" : "batched gemv", bad, bound, worst);
                if (gemm) printf("gemm %s %lldx%lld x%d: worst %.3g of sum |w x| (bound %g)\n", traits->name, (long long)rows, (long long)cols, n, worst, bound);
            }
            if (tm_cuda_gemv_q8_supported((int)types[k])) {
                void *d_q8;
                CHECK(cudaMalloc(&d_q8, tm_cuda_q8_1_bytes(cols * 16)) == cudaSuccess, "cudaMalloc");
                /* tensor cores: 8-token groups, one or two (q8_0 where the rows are whole 16-row tiles: 272 and 48 rows);
                 * q8_0's dp4a kernel: at most 1, 2, 4, 8 or 16 */
                const int q8_counts[] = {1, 2, 3, 5, 8, 9, 16};
                for (int c = 0; c < 7; c++) {
                    int n = q8_counts[c];
                    cudaMemset(d_y, 0xff, (size_t)rows * n * 4);
                    CHECK(tm_cuda_quantize_q8_1(d_x, n, cols, d_q8, NULL) == 0 &&
                              tm_cuda_gemv_q8((int)types[k], d_w, rows, cols, d_q8, n, d_y, NULL) == 0,
                          "%s q8 x%d launch", traits->name, n);
                    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s q8 x%d kernel", traits->name, n);
                    cudaMemcpy(y, d_y, (size_t)rows * n * 4, cudaMemcpyDeviceToHost);
                    double worst;
                    int bad = count_outside(y, w_rows, x, rows, cols, n, 1e-2, &worst);
                    CHECK(bad == 0, "%s %lldx%lld, %d tokens (q8 activations): %d outputs outside 1e-2 (worst %.3g)", traits->name,
                          (long long)rows, (long long)cols, n, bad, worst);
                    printf("q8 %s %lldx%lld x%d: worst %.3g of sum |w x| (bound 1e-2)\n", traits->name, (long long)rows, (long long)cols, n,
                           worst);
                }
                cudaFree(d_q8);
            }
            /* f16 / bf16 at 2..16 tokens on 16-bit tensor cores (gemv_mma16.cu, the engine's decode path
             * for several sequences): activations rounded once to the weight's type, float32
             * accumulation: the bounds of the cuBLAS product above (2e-3 f16, 8e-3 bf16). Shapes with
             * rows not a multiple of 16 are refused (cudaErrorNotSupported) and y keeps its poison. */
            if (types[k] == TM_TYPE_F16 || types[k] == TM_TYPE_BF16) {
                const int counts[] = {2, 5, 8, 9, 16};
                const double bound = types[k] == TM_TYPE_F16 ? 2e-3 : 8e-3;
                const bool fits = rows % 16 == 0 && cols % 32 == 0;
                for (int c = 0; c < 5; c++) {
                    int n = counts[c];
                    cudaMemset(d_y, 0xff, (size_t)rows * n * 4);
                    int status = tm_cuda_gemv_16bit_tokens((int)types[k], d_w, rows, cols, d_x, n, d_y, NULL);
                    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s mma16 x%d kernel", traits->name, n);
                    cudaMemcpy(y, d_y, (size_t)rows * n * 4, cudaMemcpyDeviceToHost);
                    if (!fits) {
                        uint32_t first;
                        memcpy(&first, y, 4);
                        CHECK(status == cudaErrorNotSupported && first == 0xffffffffu, "%s %lldx%lld x%d: refused, y untouched", traits->name,
                              (long long)rows, (long long)cols, n);
                        continue;
                    }
                    CHECK(status == 0, "%s mma16 x%d launch", traits->name, n);
                    double worst;
                    int bad = count_outside(y, w_rows, x, rows, cols, n, bound, &worst);
                    CHECK(bad == 0, "%s %lldx%lld, %d tokens (16-bit tensor cores): %d outputs outside %g (worst %.3g)", traits->name,
                          (long long)rows, (long long)cols, n, bad, bound, worst);
                    printf("mma16 %s %lldx%lld x%d: worst %.3g of sum |w x| (bound %g)\n", traits->name, (long long)rows, (long long)cols, n,
                           worst, bound);
                }
            }
            cudaFree(d_w), cudaFree(d_x), cudaFree(d_y), cudaFree(d_workspace);
            free(w), free(x), free(y), free(w_row), free(w_rows);
        }
    /* Shapes for the streamed one-token product (gemv_stream.cu, sm_90): 80000 x 256 gives each of
     * the ~264 blocks ~300 rows, more 32-row tiles than the ring's 8 stages, so stages are refilled;
     * 600 x 28672 has rows of 15.75-24.5 KiB, two or one a stage (the stage target halved until two
     * fit beside 32 KiB of activations), each row's 112 blocks split over the eight warps and added
     * by the producer. Same 1e-2 bound. */
    {
        const tm_type stream_types[] = {TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
        const int64_t stream_shapes[][2] = {{80000, 256}, {600, 28672}};
        for (int k = 0; k < 3; k++)
            for (int s = 0; s < 2; s++) {
                const int64_t rows = stream_shapes[s][0], cols = stream_shapes[s][1];
                uint64_t row_bytes;
                tm_type_row_bytes(stream_types[k], (uint64_t)cols, &row_bytes);
                uint8_t *w = malloc(row_bytes * (uint64_t)rows);
                float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)rows * sizeof *y), *w_row = malloc((size_t)cols * sizeof *w_row);
                test_random_blocks(&rng, stream_types[k], w, rows * cols);
                for (int64_t i = 0; i < cols; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
                void *d_w = weights_to_device(stream_types[k], w, rows, cols), *d_x, *d_y, *d_q8;
                CHECK(d_w && cudaMalloc(&d_x, (size_t)cols * 4) == cudaSuccess && cudaMalloc(&d_y, (size_t)rows * 4) == cudaSuccess &&
                          cudaMalloc(&d_q8, tm_cuda_q8_1_bytes(cols)) == cudaSuccess,
                      "upload, cudaMalloc");
                cudaMemcpy(d_x, x, (size_t)cols * 4, cudaMemcpyHostToDevice);
                cudaMemset(d_y, 0xff, (size_t)rows * 4);
                CHECK(tm_cuda_quantize_q8_1(d_x, 1, cols, d_q8, NULL) == 0 && tm_cuda_gemv_q8((int)stream_types[k], d_w, rows, cols, d_q8, 1, d_y, NULL) == 0,
                      "streamed launch");
                CHECK(cudaDeviceSynchronize() == cudaSuccess, "streamed kernel");
                cudaMemcpy(y, d_y, (size_t)rows * 4, cudaMemcpyDeviceToHost);
                const tm_type_traits *traits = tm_type_traits_scalar(stream_types[k]);
                int bad = 0;
                double worst = 0;
                for (int64_t r = 0; r < rows; r++) {
                    traits->dequantize_row(w + (uint64_t)r * row_bytes, w_row, cols);
                    double sum = 0, magnitude = 0;
                    for (int64_t i = 0; i < cols; i++) sum += (double)w_row[i] * x[i], magnitude += fabs((double)w_row[i] * x[i]);
                    double error = fabs(y[r] - sum) / (magnitude + 1e-30);
                    if (!(error <= 1e-2)) bad++;
                    if (error > worst || error != error) worst = error;
                }
                CHECK(bad == 0, "%s %lldx%lld, 1 token (%s): %d outputs outside 1e-2 (worst %.3g)", traits->name, (long long)rows,
                      (long long)cols, child ? child : "streamed", bad, worst);
                printf("q8 %s %lldx%lld x1: worst %.3g of sum |w x| (bound 1e-2)\n", traits->name, (long long)rows, (long long)cols, worst);
                cudaFree(d_w), cudaFree(d_x), cudaFree(d_y), cudaFree(d_q8);
                free(w), free(x), free(y), free(w_row);
            }
    }
    /* the device layout: q6_k blocks padded from 210 to 224 bytes, zeros after each block's bytes,
     * across more blocks than one upload chunk; q8_0 rows split into their values, then their scales
     * (weights.cu), across more rows than one upload chunk; the other types copied as they are */
    CHECK(tm_cuda_weight_row_bytes(TM_TYPE_Q6_K, 4096) == 16 * 224 && tm_cuda_weight_row_bytes(TM_TYPE_Q4_K, 4096) == 16 * 144 &&
              tm_cuda_weight_row_bytes(TM_TYPE_F16, 4096) == 8192 && tm_cuda_weight_row_bytes(TM_TYPE_Q6_K, 300) == 0,
          "device row bytes");
    {
        const int64_t rows = 520, cols = 65536, blocks = rows * cols / 256; /* 133120 blocks: two upload chunks */
        uint8_t *host = malloc((size_t)blocks * 210), *back = malloc((size_t)blocks * 224);
        test_random_blocks(&rng, TM_TYPE_Q6_K, host, rows * cols);
        void *d_layout = weights_to_device(TM_TYPE_Q6_K, host, rows, cols);
        CHECK(d_layout != NULL, "q6_k upload");
        cudaMemcpy(back, d_layout, (size_t)blocks * 224, cudaMemcpyDeviceToHost);
        int64_t moved = 0, unpadded = 0;
        for (int64_t b = 0; b < blocks; b++) {
            moved += memcmp(back + b * 224, host + b * 210, 210) != 0;
            for (int i = 210; i < 224; i++) unpadded += back[b * 224 + i] != 0;
        }
        CHECK(moved == 0 && unpadded == 0, "q6_k device layout: %lld blocks differ, %lld padding bytes not zero", (long long)moved,
              (long long)unpadded);
        cudaFree(d_layout);
        free(host), free(back);
    }
    {
        const int64_t rows = 4100, cols = 4096, blocks = cols / 32, row_bytes = blocks * 34; /* 4096 rows a chunk: two chunks */
        CHECK(tm_cuda_weight_row_bytes(TM_TYPE_Q8_0, cols) == (uint64_t)row_bytes, "q8_0 device row bytes");
        uint8_t *host = malloc((size_t)(rows * row_bytes)), *back = malloc((size_t)(rows * row_bytes));
        test_random_blocks(&rng, TM_TYPE_Q8_0, host, rows * cols);
        void *d_layout = weights_to_device(TM_TYPE_Q8_0, host, rows, cols);
        CHECK(d_layout != NULL, "q8_0 upload");
        cudaMemcpy(back, d_layout, (size_t)(rows * row_bytes), cudaMemcpyDeviceToHost);
        int64_t misplaced = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < blocks; b++) {
                const uint8_t *block = host + r * row_bytes + b * 34, *row = back + r * row_bytes;
                misplaced += memcmp(row + cols + 2 * b, block, 2) != 0 || memcmp(row + 32 * b, block + 2, 32) != 0;
            }
        CHECK(misplaced == 0, "q8_0 device layout: %lld blocks not at their split places", (long long)misplaced);
        cudaFree(d_layout);
        free(host), free(back);
    }
    CHECK(tm_cuda_gemv(TM_TYPE_Q4_K, NULL, 1, 100, NULL, NULL, NULL) != 0, "a row that is not whole blocks is refused");
    CHECK(tm_cuda_gemv_batched(TM_TYPE_Q4_K, NULL, 1, 256, NULL, 17, NULL, NULL) != 0, "more than 16 tokens are refused");
    /* several q8 products in one launch (Q/K/V shapes; q4_k, q5_k and q6_k mixed, q4_k with a q6_k V
     * as the 7B's, q4_k alone, or q8_0 alone: gemv_q8_0.cu) equal the separate ones bit for bit, at 1
     * token and at 5 */
    for (int variant = 0; variant < 8; variant++) {
        const int n = variant < 4 ? 1 : 5, kind = variant % 4;
        static const char *const kind_names[4] = {"q4_k", "mixed", "q4_k + q6_k", "q8_0"};
        const int64_t cols = 1024, part_rows[3] = {512, 128, 128};
        tm_type part_types[3] = {TM_TYPE_Q4_K, kind == 1 ? TM_TYPE_Q5_K : TM_TYPE_Q4_K, kind ? TM_TYPE_Q6_K : TM_TYPE_Q4_K};
        if (kind == 3) part_types[0] = part_types[1] = part_types[2] = TM_TYPE_Q8_0;
        tm_cuda_gemv_part parts[3];
        float *separate[3], *together[3];
        void *d_x, *d_q8;
        float *x = malloc((size_t)cols * n * 4);
        for (int64_t i = 0; i < cols * n; i++) x[i] = 2.0f * tm_rng_uniform(&rng) - 1.0f;
        cudaMalloc(&d_x, (size_t)cols * n * 4), cudaMalloc(&d_q8, tm_cuda_q8_1_bytes(cols * n));
        cudaMemcpy(d_x, x, (size_t)cols * n * 4, cudaMemcpyHostToDevice);
        CHECK(tm_cuda_quantize_q8_1(d_x, n, cols, d_q8, NULL) == 0, "quantize");
        for (int p = 0; p < 3; p++) {
            uint64_t row_bytes;
            tm_type_row_bytes(part_types[p], (uint64_t)cols, &row_bytes);
            uint8_t *w = malloc(row_bytes * part_rows[p]);
            test_random_blocks(&rng, part_types[p], w, part_rows[p] * cols);
            void *d_w = weights_to_device(part_types[p], w, part_rows[p], cols);
            CHECK(d_w != NULL, "part %d upload", p);
            free(w);
            cudaMalloc((void **)&separate[p], (size_t)part_rows[p] * n * 4), cudaMalloc((void **)&together[p], (size_t)part_rows[p] * n * 4);
            cudaMemset(together[p], 0xff, (size_t)part_rows[p] * n * 4);
            CHECK(tm_cuda_gemv_q8((int)part_types[p], d_w, part_rows[p], cols, d_q8, n, separate[p], NULL) == 0, "part %d alone", p);
            parts[p] = (tm_cuda_gemv_part){d_w, (int)part_types[p], part_rows[p], together[p]};
        }
        CHECK(tm_cuda_gemv_q8_parts(parts, 3, cols, d_q8, n, NULL) == 0, "parts launch");
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "parts kernel");
        for (int p = 0; p < 3; p++) {
            size_t bytes = (size_t)part_rows[p] * n * 4;
            float *a = malloc(bytes), *b = malloc(bytes);
            cudaMemcpy(a, separate[p], bytes, cudaMemcpyDeviceToHost), cudaMemcpy(b, together[p], bytes, cudaMemcpyDeviceToHost);
            CHECK(!memcmp(a, b, bytes), "%s parts, %d tokens: part %d in one launch equals its own launch bit for bit", kind_names[kind], n,
                  p);
            free(a), free(b);
            cudaFree((void *)parts[p].weights), cudaFree(separate[p]), cudaFree(together[p]);
        }
        if (n == 5 && kind < 3) {
            parts[1].rows = 129;
            CHECK(tm_cuda_gemv_q8_parts(parts, 3, cols, d_q8, n, NULL) == cudaErrorNotSupported, "rows not a multiple of 4 are declined");
        }
        if (kind == 3) {
            parts[1].type = TM_TYPE_Q4_K;
            CHECK(tm_cuda_gemv_q8_parts(parts, 3, cols, d_q8, n, NULL) == cudaErrorNotSupported, "q8_0 beside a k-quant is declined");
        }
        cudaFree(d_x), cudaFree(d_q8);
        free(x);
    }
    test_qkv_rope(&rng);
    test_sixteen_bit_parts(&rng);
    test_sixteen_bit_token_parts(&rng);
    cublasDestroy(cublas);
    if (!child) {
        CHECK(run_child("dp4a", "TM_GEMV_STREAM=0 TM_MMQ_WARPS=4 TM_MMQ_PERSISTENT=0 TM_GEMM_FUSED=1 TM_GEMV16_LOADS=8 TM_Q80_STAGE_X=0") == 0,
              "the run with one-token products on dp4a (and k-quant prefill on mma.sync) passed");
        CHECK(run_child("dp4a-subblocks",
                        "TM_GEMV_STREAM=0 TM_GEMV_PAIRS=0 TM_GEMM_FUSED=0 TM_MMQ_INPUTS=0 TM_MMQ_PERSISTENT=0 TM_GEMV16_LOADS=4 TM_Q80_MMA=0") == 0,
              "the run with a lane a sub-block (k-quant prefill through cuBLAS, no staged activations) passed");
        CHECK(run_child("wgmma-128", "TM_GEMM_FUSED=2 TM_GEMM_FUSED_TOKENS=128 TM_MMQ_WARPS=3") == 0,
              "the run with k-quant prefill in 128-token blocks of the fused kernel (and 3-warp tensor-core tiles) passed");
        CHECK(run_child("persistent", "TM_GEMV_STREAM=0 TM_MMQ_INPUTS=0 TM_MMQ_PERSISTENT_BLOCKS=3 TM_MMQ_PERSISTENT_INPUTS=0 "
                                      "TM_PAIRS_WEIGHT_LINES=0") == 0,
              "the run with the several-token k-quant and q8_0 products in three persistent blocks passed");
        CHECK(run_child("persistent-4-warps", "TM_GEMV_STREAM=0 TM_MMQ_INPUTS=0 TM_MMQ_PERSISTENT_BLOCKS=3 TM_MMQ_PERSISTENT_WARPS=4 "
                                              "TM_MMQ_PERSISTENT_INPUTS2=2 TM_Q80_STAGE_X=0 TM_PAIRS_WEIGHT_LINES=3") == 0,
              "the run with the several-token k-quant products in three persistent blocks of 4 warps passed");
        CHECK(run_child("pairs-split-4", "TM_GEMV_STREAM=0 TM_PAIRS_SPLIT=4 TM_PAIRS_SPLIT_BLOCKS=24") == 0,
              "the run with one-token rows of 24 blocks or more split over 4 warps passed");
        CHECK(run_child("pairs-split-2", "TM_GEMV_STREAM=0 TM_PAIRS_SPLIT=2 TM_PAIRS_SPLIT_BLOCKS=24 TM_MMA16_WARPS=4") == 0,
              "the run with one-token rows of 24 blocks or more split over 2 warps (and 16-bit tiles in 4-warp blocks) passed");
        CHECK(run_child("pairs-whole-rows", "TM_GEMV_STREAM=0 TM_PAIRS_SPLIT=1 TM_MMA16_WARPS=8") == 0,
              "the run with one-token rows a warp each (and 16-bit tiles in 8-warp blocks) passed");
    }
    char name[64];
    snprintf(name, sizeof name, "test_gemv_cuda%s%s%s", child ? " (" : "", child ? child : "", child ? ")" : "");
    return check_report(name);
}
