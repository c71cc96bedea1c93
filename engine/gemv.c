/*
 * gemv.c - see gemv.h. Activation rows are quantized on the calling thread (O(tokens * cols));
 * each thread then runs the table's dot over its share of rows for every token
 * (O(rows * cols * tokens), memory bound at one token, compute bound at many).
 *
 * DESIGN: each thread owns a contiguous segment of row tiles and takes them from the front, so
 * its weights stream in address order (handing out interleaved tiles measured 30 % slower: the
 * prefetcher loses the stream). A thread whose segment is empty takes tiles from the back of
 * the fullest other segment, so a thread slowed by its neighbours on the host does not hold
 * the whole matmul up. A segment's front and back live in one 64-bit atomic word: a tile is
 * claimed by compare-and-swap while front < back.
 */
#include "gemv.h"

#include <stdatomic.h>
#include <stdlib.h>

#define ROW_TILE 8 /* weight rows kept hot in L1/L2 while every token passes over them */
#define MAX_SEGMENTS 64

/* front (low 32 bits) and back (high 32 bits) tile indexes of one thread's segment */
typedef struct segment {
    _Alignas(64) atomic_ullong front_back;
} segment;

typedef struct matmul_task {
    const tm_type_traits *traits;
    const uint8_t *weights;
    uint64_t row_bytes;
    int64_t rows, cols, n_tokens;
    const float *x;
    const uint8_t *x_quantized; /* NULL: float activations */
    uint64_t x_row_bytes;
    float *y;
    int n_segments;
    segment segments[MAX_SEGMENTS];
} matmul_task;

/* Claim a tile from the front (own segment) or the back (another's); -1 when it is empty. */
static long long claim_tile(segment *s, bool from_back) {
    unsigned long long value = atomic_load_explicit(&s->front_back, memory_order_relaxed);
    for (;;) {
        unsigned long long front = value & 0xffffffffull, back = value >> 32;
        if (front >= back) return -1;
        unsigned long long next = from_back ? (front | (back - 1) << 32) : ((front + 1) | back << 32);
        if (atomic_compare_exchange_weak_explicit(&s->front_back, &value, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return (long long)(from_back ? back - 1 : front);
    }
}


static void run_tile(const matmul_task *t, long long tile_index) {
    long long tile = tile_index * ROW_TILE, tile_end = TM_MIN(tile + ROW_TILE, t->rows);
    for (int64_t token = 0; token < t->n_tokens; token++) {
        float *y = t->y + token * t->rows;
        const uint8_t *row = t->weights + (uint64_t)tile * t->row_bytes;
        if (t->x_quantized) {
            const uint8_t *xq = t->x_quantized + (uint64_t)token * t->x_row_bytes;
            for (long long r = tile; r < tile_end; r++, row += t->row_bytes) y[r] = t->traits->dot_q8(row, xq, t->cols);
        } else {
            const float *x = t->x + token * t->cols;
            for (long long r = tile; r < tile_end; r++, row += t->row_bytes) y[r] = t->traits->dot_f32(row, x, t->cols);
        }
    }
}

static void matmul_part(void *arg, int thread_index, int n_threads) {
    matmul_task *t = arg;
    (void)n_threads;
    long long tile;
    if (thread_index < t->n_segments)
        while ((tile = claim_tile(&t->segments[thread_index], false)) >= 0) run_tile(t, tile);
    for (;;) { /* help the segment with the most tiles left, from its back */
        int fullest = -1;
        unsigned long long most = 0;
        for (int s = 0; s < t->n_segments; s++) {
            unsigned long long value = atomic_load_explicit(&t->segments[s].front_back, memory_order_relaxed);
            unsigned long long left = (value >> 32) > (value & 0xffffffffull) ? (value >> 32) - (value & 0xffffffffull) : 0;
            if (left > most) {
                most = left;
                fullest = s;
            }
        }
        if (fullest < 0) return;
        if ((tile = claim_tile(&t->segments[fullest], true)) >= 0) run_tile(t, tile);
    }
}

uint64_t tm_matmul_scratch_bytes(tm_type type, int64_t cols, int64_t n_tokens) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    uint64_t bytes = 0;
    if (traits && traits->activation_type != TM_TYPE_F32) tm_type_row_bytes(traits->activation_type, (uint64_t)cols, &bytes);
    return bytes * (uint64_t)n_tokens;
}

tm_status tm_matmul(tm_threadpool *pool, tm_type type, const void *weights, int64_t rows, int64_t cols, const float *x,
                    int64_t n_tokens, float *y, bool float_activations, void *scratch, tm_error_t *error) {
    const tm_type_traits *traits = tm_type_traits_get(type);
    if (!traits || !traits->random_blocks)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "matmul: weight type %s is not supported", tm_type_name(type));
    matmul_task task = {traits, weights, 0, rows, cols, n_tokens, x, NULL, 0, y, 0, {{0}}};
    if (!tm_type_row_bytes(type, (uint64_t)cols, &task.row_bytes))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "matmul: %lld columns is not a multiple of the %s block size %d",
                            (long long)cols, traits->name, traits->block_size);
    void *owned = NULL;
    if (traits->activation_type != TM_TYPE_F32 && !float_activations) {
        if (!scratch && !(scratch = owned = malloc(tm_matmul_scratch_bytes(type, cols, n_tokens))))
            return tm_error_set(error, TM_ERR_NO_MEMORY, "matmul: out of memory for the activation rows");
        const tm_type_traits *activation = tm_type_traits_get(traits->activation_type);
        tm_type_row_bytes(traits->activation_type, (uint64_t)cols, &task.x_row_bytes);
        for (int64_t t = 0; t < n_tokens; t++)
            activation->quantize_row(x + t * cols, (uint8_t *)scratch + (uint64_t)t * task.x_row_bytes, cols);
        task.x_quantized = scratch;
    }
    long long n_tiles = (rows + ROW_TILE - 1) / ROW_TILE;
    task.n_segments = pool ? TM_MIN(tm_threadpool_size(pool), MAX_SEGMENTS) : 1;
    for (int i = 0; i < task.n_segments; i++) {
        long long begin, end;
        tm_split_range(n_tiles, 1, i, task.n_segments, &begin, &end);
        atomic_init(&task.segments[i].front_back, (unsigned long long)begin | (unsigned long long)end << 32);
    }
    if (pool)
        tm_threadpool_run(pool, matmul_part, &task);
    else
        matmul_part(&task, 0, 1);
    free(owned);
    return TM_OK;
}
