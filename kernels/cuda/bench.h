/*
 * bench.h - C API of kernels/cuda/bench.cu: one operation's device-side benchmark for the
 * harness's kernels suite (inputs allocated and filled once; each run timed with CUDA events after
 * an L2 flush, one launch or a chain of them), with the bytes and flops one launch must move.
 */
#ifndef TM_CUDA_BENCH_H
#define TM_CUDA_BENCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tm_bench_op {
    TM_BENCH_COPY = 0,          /* device-to-device copy of `rows` bytes: the bandwidth ceiling */
    TM_BENCH_GEMM_F16,          /* cuBLAS rows^3 GEMM, f16 in and out, float32 accumulation: a flop ceiling */
    TM_BENCH_GEMM_BF16,         /* the same in bf16 */
    TM_BENCH_GEMV,              /* the decode product of the engine's fast path: rows x cols of `type`, tokens 1..16 */
    TM_BENCH_GEMM,              /* the prefill product (tm_cuda_gemm): rows x cols of `type`, `tokens` tokens */
    TM_BENCH_FLASH,             /* flash attention over one `tokens`-long sequence in f16 pages, causal or not */
    TM_BENCH_DECODE_ATTENTION,  /* paged decode attention: `batch` sequences of `context` tokens */
    TM_BENCH_RMSNORM,           /* rows x cols */
    TM_BENCH_ROPE,              /* tokens x heads x head_dim */
    TM_BENCH_COPY_KERNEL,       /* `rows` bytes copied by a kernel (the counters' DRAM-bytes check) */
    TM_BENCH_READ,              /* `rows` bytes read by a kernel, all of them requested at once: what one launch reading
                                   that many bytes can do (the same-size ceiling of a decode product) */
} tm_bench_op;

typedef struct tm_cuda_bench_spec {
    tm_bench_op op;
    int type;                   /* ggml type id (gemv, gemm) */
    int64_t rows, cols;
    int tokens, head_dim, heads, kv_heads, context, batch, causal;
    int exact;                  /* flash: the float32 kernel (causal only) instead of the tensor-core one */
    int whole;                  /* decode_attention: the kernel without splits (tm_cuda_decode_attention_whole) */
    int chain;                  /* gemv, read: one run is `chain` launches back to back in the stream, each over its own
                                   copy of the weights (so each reads memory), as a decode step's launches follow one
                                   another; the time reported is a launch's share (0 or 1: one launch) */
    int read_words;             /* read: 16-byte words a thread, all requested at once: 1, 2, 4, 8 or 16 (0: 4) */
} tm_cuda_bench_spec;

typedef struct tm_cuda_bench tm_cuda_bench;

/* 0, or -1 with the reason in message (no device, out of memory, unsupported shape). */
int tm_cuda_bench_create(const tm_cuda_bench_spec *spec, tm_cuda_bench **out, char *message, int capacity);
/* One run after an L2 flush: its time in milliseconds (CUDA events), divided by the chain's launches.
 * The flush also covers the host's queuing of the run; a run the GPU started before the host had
 * queued it all is redone behind more flushes (bench.cu). */
int tm_cuda_bench_run(tm_cuda_bench *bench, double *milliseconds, char *message, int capacity);
/* The op's chain over and over, no flushes between, for about `seconds` of host time (a load held
 * long enough for the device's power meters), in batches of ~10 ms (sized by the last
 * tm_cuda_bench_run, which it makes first only where there was none), one always queued behind the
 * running one, so the GPU does not idle between them: the launches made and their GPU time in
 * milliseconds (events around all of them). between(context), when not NULL, is called after each
 * wait for a batch, while the next runs (the caller's polling of the device, e.g. its clock). */
int tm_cuda_bench_sustain(tm_cuda_bench *bench, double seconds, long long *launches, double *milliseconds, void (*between)(void *),
                          void *context, char *message, int capacity);
/* Runs returned although the GPU started timing them before the host had queued them all, even
 * behind the most flushes (a host taking longer to queue a run than 16 flushes take: ~1 ms on an
 * H200); launches serialized by a profiler are not counted. */
int tm_cuda_bench_uncovered_runs(const tm_cuda_bench *bench);
/* Bytes and flops one launch must move (the operands once; 4 flops per query-key-dimension in attention). */
void tm_cuda_bench_cost(const tm_cuda_bench *bench, double *bytes, double *flops);
void tm_cuda_bench_free(tm_cuda_bench *bench);

#ifdef __cplusplus
}
#endif

#endif /* TM_CUDA_BENCH_H */
