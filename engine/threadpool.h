/*
 * threadpool.h - a fixed set of worker threads that run one parallel task at a time.
 *
 * Guarantees: tm_threadpool_run calls task(arg, i, n) exactly once for every i in [0, n) with
 * n = the pool's thread count, the caller's thread being i = 0, and returns after all calls
 * have returned (a full barrier: their writes are visible to the caller). Workers spin briefly
 * before sleeping so back-to-back calls (one per layer in decode) do not pay a wake-up each time.
 * One task at a time: tm_threadpool_run is not reentrant and not for concurrent callers.
 */
#ifndef TM_THREADPOOL_H
#define TM_THREADPOOL_H

typedef struct tm_threadpool tm_threadpool;
typedef void (*tm_threadpool_task)(void *arg, int thread_index, int n_threads);

/* n_threads <= 0: one per online CPU. Returns NULL when threads cannot be created. */
tm_threadpool *tm_threadpool_create(int n_threads);
void tm_threadpool_free(tm_threadpool *pool);
int tm_threadpool_size(const tm_threadpool *pool);
void tm_threadpool_run(tm_threadpool *pool, tm_threadpool_task task, void *arg);

/* [begin, end) of the i-th of n near-equal parts of [0, total), in units of `granule`. */
void tm_split_range(long long total, long long granule, int i, int n, long long *begin, long long *end);

#endif /* TM_THREADPOOL_H */
