/*
 * profiler.c - see profiler.h. CUPTI delivers activity records in buffers we hand it
 * (buffer_requested) and return to us when full or flushed (buffer_completed, possibly on a
 * CUPTI thread); records are parsed there into pending lists under a mutex, and
 * tm_profiler_collect writes the pending lists to SQLite.
 */
#define _GNU_SOURCE
#include "profiler.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TM_CUPTI
#include <cupti.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sqlite3.h>

#include "kernels.h"

/* the C++ runtime's demangler (libstdc++ is linked for the CUDA libraries) */
extern char *__cxa_demangle(const char *mangled, char *output, size_t *length, int *status);

typedef struct kernel_record {
    char *name;
    int grid[3], block[3];
    int registers, shared_memory;
    uint64_t start, end;
    uint32_t stream, graph;
    bool is_kernel;
} kernel_record;

typedef struct open_range {
    uint32_t id;
    char *name;
    uint64_t start;
} open_range;

typedef struct range_record {
    char *name;
    uint64_t start, end;
} range_record;

struct tm_profiler {
    pthread_mutex_t lock;
    kernel_record *kernels;
    size_t n_kernels, kernels_capacity;
    range_record *ranges;
    size_t n_ranges, ranges_capacity;
    open_range *open;
    size_t n_open, open_capacity;
    uint64_t dropped, dropped_reported;
    uint64_t total_kernels, total_memory, total_ranges;
};

static tm_profiler *active; /* CUPTI's callbacks are process-wide */

#define BUFFER_BYTES (8u << 20)

static bool grow(void **items, size_t *capacity, size_t count, size_t size) {
    if (count < *capacity) return true;
    size_t wanted = *capacity ? 2 * *capacity : 1024;
    void *grown = realloc(*items, wanted * size);
    if (!grown) return false;
    *items = grown;
    *capacity = wanted;
    return true;
}

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = aligned_alloc(8, BUFFER_BYTES);
    *size = *buffer ? BUFFER_BYTES : 0;
    *max_records = 0;
}

static char *demangled(const char *name) {
    int status = 0;
    char *pretty = name ? __cxa_demangle(name, NULL, NULL, &status) : NULL;
    return pretty && status == 0 ? pretty : strdup(name ? name : "?");
}

static void add_kernel(tm_profiler *p, kernel_record record) {
    if (grow((void **)&p->kernels, &p->kernels_capacity, p->n_kernels, sizeof *p->kernels)) p->kernels[p->n_kernels++] = record;
    else free(record.name), p->dropped++;
}

static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    tm_profiler *p = active;
    CUpti_Activity *record = NULL;
    if (p) pthread_mutex_lock(&p->lock);
    while (p && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)record;
            add_kernel(p, (kernel_record){demangled(k->name), {k->gridX, k->gridY, k->gridZ}, {k->blockX, k->blockY, k->blockZ},
                                          k->registersPerThread, k->staticSharedMemory + k->dynamicSharedMemory, k->start, k->end,
                                          k->streamId, k->graphId, true});
        } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)record;
            static const char *const kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH", "PtoP"};
            char name[96];
            snprintf(name, sizeof name, "memcpy %s %llu B", m->copyKind < 11 ? kinds[m->copyKind] : "?", (unsigned long long)m->bytes);
            add_kernel(p, (kernel_record){strdup(name), {0}, {0}, 0, 0, m->start, m->end, m->streamId, m->graphId, false});
        } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)record;
            char name[64];
            snprintf(name, sizeof name, "memset %llu B", (unsigned long long)m->bytes);
            add_kernel(p, (kernel_record){strdup(name), {0}, {0}, 0, 0, m->start, m->end, m->streamId, m->graphId, false});
        } else if (record->kind == CUPTI_ACTIVITY_KIND_MARKER) {
            const CUpti_ActivityMarker2 *m = (const CUpti_ActivityMarker2 *)record;
            if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_START) {
                if (grow((void **)&p->open, &p->open_capacity, p->n_open, sizeof *p->open))
                    p->open[p->n_open++] = (open_range){m->id, strdup(m->name ? m->name : "?"), m->timestamp};
            } else if (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_END) {
                for (size_t i = p->n_open; i-- > 0;)
                    if (p->open[i].id == m->id) {
                        if (grow((void **)&p->ranges, &p->ranges_capacity, p->n_ranges, sizeof *p->ranges))
                            p->ranges[p->n_ranges++] = (range_record){p->open[i].name, p->open[i].start, m->timestamp};
                        else free(p->open[i].name);
                        p->open[i] = p->open[--p->n_open];
                        break;
                    }
            }
        }
    }
    size_t dropped = 0;
    if (p && cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS) p->dropped += dropped;
    if (p) pthread_mutex_unlock(&p->lock);
    (void)size;
    free(buffer);
}

#define CHECK_CUPTI(call)                                                                                        \
    do {                                                                                                         \
        CUptiResult cupti_status_ = (call);                                                                      \
        if (cupti_status_ != CUPTI_SUCCESS) {                                                                    \
            const char *text_ = NULL;                                                                            \
            cuptiGetResultString(cupti_status_, &text_);                                                         \
            return tm_error_set(error, TM_ERR_UNSUPPORTED, "profiler: %s failed: %s", #call, text_ ? text_ : "?"); \
        }                                                                                                        \
    } while (0)

tm_status tm_profiler_start(tm_profiler **out, tm_error_t *error) {
    *out = NULL;
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "profiler: no CUDA device is present (timing only)");
    if (active) return tm_error_set(error, TM_ERR_INVALID_ARG, "profiler: already started");
    /* NVTX ranges reach CUPTI through NVTX's injection hook: point it at libcupti unless a tool did */
    Dl_info library;
    if (!getenv("NVTX_INJECTION64_PATH") && dladdr((void *)cuptiActivityEnable, &library) && library.dli_fname)
        setenv("NVTX_INJECTION64_PATH", library.dli_fname, 0);
    /* A kernel launched as a programmatic dependent (kernels/cuda/launch.cuh) starts before its
     * predecessor ends and waits inside, so its activity record would include that wait: profile
     * with plain launches unless the user asked otherwise (read at the first launch, which is later) */
    if (!getenv("TM_DEPENDENT_LAUNCH")) {
        setenv("TM_DEPENDENT_LAUNCH", "0", 0);
        fprintf(stderr, "profile: kernels launched plainly (TM_DEPENDENT_LAUNCH=0) so each record is the kernel's own time\n");
    }
    tm_profiler *p = calloc(1, sizeof *p);
    if (!p) return tm_error_set(error, TM_ERR_NO_MEMORY, "profiler: out of memory");
    pthread_mutex_init(&p->lock, NULL);
    active = p;
    *out = p;
    CHECK_CUPTI(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    CHECK_CUPTI(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CHECK_CUPTI(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    CHECK_CUPTI(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
    CHECK_CUPTI(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MARKER));
    return TM_OK;
}

static tm_status sql_failure(sqlite3 *db, tm_error_t *error) {
    tm_error_set(error, TM_ERR_IO, "profiler: writing records: %s", sqlite3_errmsg(db));
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return TM_ERR_IO;
}

tm_status tm_profiler_collect(tm_profiler *p, tm_store *store, int64_t case_id, int repetition, tm_error_t *error) {
    if (!p) return TM_OK;
    CHECK_CUPTI(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED));
    pthread_mutex_lock(&p->lock);
    sqlite3 *db = tm_store_db(store);
    tm_status status = TM_OK;
    sqlite3_stmt *kernel = NULL, *range = NULL, *dropped = NULL;
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO kernel_records (case_id, repetition, name, grid, block, registers, shared_memory, "
                           "start_ns, end_ns, stream, graph_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &kernel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO nvtx_ranges (case_id, repetition, name, start_ns, end_ns) VALUES (?,?,?,?,?)", -1,
                           &range, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "INSERT INTO hardware_counters (case_id, scope, counter, value) VALUES (?, 'activity', "
                           "'dropped_records', ?)",
                           -1, &dropped, NULL) != SQLITE_OK)
        status = sql_failure(db, error);
    for (size_t i = 0; !status && i < p->n_kernels; i++) {
        const kernel_record *k = &p->kernels[i];
        char grid[48], block[48];
        snprintf(grid, sizeof grid, "%d,%d,%d", k->grid[0], k->grid[1], k->grid[2]);
        snprintf(block, sizeof block, "%d,%d,%d", k->block[0], k->block[1], k->block[2]);
        sqlite3_reset(kernel);
        sqlite3_bind_int64(kernel, 1, case_id);
        sqlite3_bind_int(kernel, 2, repetition);
        sqlite3_bind_text(kernel, 3, k->name, -1, SQLITE_STATIC);
        if (k->is_kernel) {
            sqlite3_bind_text(kernel, 4, grid, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(kernel, 5, block, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int(kernel, 6, k->registers);
            sqlite3_bind_int(kernel, 7, k->shared_memory);
        } else {
            for (int column = 4; column <= 7; column++) sqlite3_bind_null(kernel, column);
        }
        sqlite3_bind_int64(kernel, 8, (sqlite3_int64)k->start);
        sqlite3_bind_int64(kernel, 9, (sqlite3_int64)k->end);
        sqlite3_bind_int64(kernel, 10, k->stream);
        sqlite3_bind_int64(kernel, 11, k->graph);
        if (sqlite3_step(kernel) != SQLITE_DONE) status = sql_failure(db, error);
        if (k->is_kernel) p->total_kernels++;
        else p->total_memory++;
    }
    for (size_t i = 0; !status && i < p->n_ranges; i++) {
        sqlite3_reset(range);
        sqlite3_bind_int64(range, 1, case_id);
        sqlite3_bind_int(range, 2, repetition);
        sqlite3_bind_text(range, 3, p->ranges[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(range, 4, (sqlite3_int64)p->ranges[i].start);
        sqlite3_bind_int64(range, 5, (sqlite3_int64)p->ranges[i].end);
        if (sqlite3_step(range) != SQLITE_DONE) status = sql_failure(db, error);
        p->total_ranges++;
    }
    if (!status && p->dropped > p->dropped_reported) {
        sqlite3_bind_int64(dropped, 1, case_id);
        sqlite3_bind_double(dropped, 2, (double)(p->dropped - p->dropped_reported));
        if (sqlite3_step(dropped) != SQLITE_DONE) status = sql_failure(db, error);
        else p->dropped_reported = p->dropped;
    }
    if (!status && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) status = sql_failure(db, error);
    sqlite3_finalize(kernel), sqlite3_finalize(range), sqlite3_finalize(dropped);
    for (size_t i = 0; i < p->n_kernels; i++) free(p->kernels[i].name);
    for (size_t i = 0; i < p->n_ranges; i++) free(p->ranges[i].name);
    p->n_kernels = p->n_ranges = 0;
    pthread_mutex_unlock(&p->lock);
    return status;
}

void tm_profiler_totals(const tm_profiler *p, uint64_t *kernels, uint64_t *memory_operations, uint64_t *ranges, uint64_t *dropped) {
    *kernels = p ? p->total_kernels : 0;
    *memory_operations = p ? p->total_memory : 0;
    *ranges = p ? p->total_ranges : 0;
    *dropped = p ? p->dropped : 0;
}

void tm_profiler_stop(tm_profiler *p) {
    if (!p) return;
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MEMSET);
    cuptiActivityDisable(CUPTI_ACTIVITY_KIND_MARKER);
    pthread_mutex_lock(&p->lock);
    active = NULL;
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < p->n_kernels; i++) free(p->kernels[i].name);
    for (size_t i = 0; i < p->n_ranges; i++) free(p->ranges[i].name);
    for (size_t i = 0; i < p->n_open; i++) free(p->open[i].name);
    free(p->kernels), free(p->ranges), free(p->open);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

#else /* built without CUPTI */

tm_status tm_profiler_start(tm_profiler **out, tm_error_t *error) {
    *out = NULL;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "profiler: this build has no CUPTI (configured without CUDA; timing only)");
}
tm_status tm_profiler_collect(tm_profiler *p, tm_store *s, int64_t c, int r, tm_error_t *e) {
    (void)p, (void)s, (void)c, (void)r, (void)e;
    return TM_OK;
}
void tm_profiler_totals(const tm_profiler *p, uint64_t *kernels, uint64_t *memory_operations, uint64_t *ranges, uint64_t *dropped) {
    (void)p;
    *kernels = *memory_operations = *ranges = *dropped = 0;
}
void tm_profiler_stop(tm_profiler *p) { (void)p; }
#endif
