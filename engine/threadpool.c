/*
 * threadpool.c - see threadpool.h.
 *
 * DESIGN: a generation counter announces a new task; workers spin on it for a short while,
 * then sleep on a condition variable. A countdown of outstanding workers, decremented with
 * release semantics, tells the caller when every part is done.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#define SPIN_ITERATIONS 20000

struct tm_threadpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_uint generation;
    atomic_int outstanding;
    atomic_bool stop;
    tm_threadpool_task task;
    void *arg;
};

typedef struct worker_start {
    tm_threadpool *pool;
    int index;
} worker_start;

static void *worker_main(void *p) {
    worker_start start = *(worker_start *)p;
    free(p);
    tm_threadpool *pool = start.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned generation;
        int spins = 0;
        while ((generation = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load(&pool->stop) && spins < SPIN_ITERATIONS)
            spins++;
        if (generation == seen && !atomic_load(&pool->stop)) {
            pthread_mutex_lock(&pool->mutex);
            while ((generation = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->stop)) return NULL;
        seen = generation;
        pool->task(pool->arg, start.index, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->outstanding, 1, memory_order_release);
    }
}

tm_threadpool *tm_threadpool_create(int n_threads) {
    if (n_threads <= 0) n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads <= 0) n_threads = 1;
    tm_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (!pool->threads) {
        tm_threadpool_free(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_start *start = malloc(sizeof *start);
        if (!start) break;
        start->pool = pool;
        start->index = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, start) != 0) {
            free(start);
            pool->n_threads = i; /* keep the threads that did start */
            break;
        }
    }
    return pool;
}

void tm_threadpool_free(tm_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->stop, true);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads && pool->threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int tm_threadpool_size(const tm_threadpool *pool) { return pool->n_threads; }

void tm_threadpool_run(tm_threadpool *pool, tm_threadpool_task task, void *arg) {
    if (pool->n_threads == 1) {
        task(arg, 0, 1);
        return;
    }
    pool->task = task;
    pool->arg = arg;
    atomic_store(&pool->outstanding, pool->n_threads - 1);
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    task(arg, 0, pool->n_threads);
    while (atomic_load_explicit(&pool->outstanding, memory_order_acquire) > 0) {
    }
}

void tm_split_range(long long total, long long granule, int i, int n, long long *begin, long long *end) {
    long long units = (total + granule - 1) / granule;
    long long per = units / n, extra = units % n;
    long long first = i * per + (i < extra ? i : extra);
    long long count = per + (i < extra ? 1 : 0);
    *begin = first * granule < total ? first * granule : total;
    *end = (first + count) * granule < total ? (first + count) * granule : total;
}
