/*
 * store.h - the SQLite results store (schema: results/schema.sql, embedded at build time).
 *
 * Guarantees: the database is opened in WAL mode with a busy timeout; an empty file gets the
 * schema, a database of a newer schema version or one that is not a TensorMesh database is
 * refused with a message naming the file, and nothing in it is changed. Every call below is one
 * transaction, so a process killed between (or inside) calls leaves a database that passes
 * PRAGMA integrity_check; a run killed before tm_store_finish_run keeps status 'running'.
 */
#ifndef TM_STORE_H
#define TM_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "stats.h"
#include "tensormesh.h"

typedef struct sqlite3 sqlite3;
typedef struct tm_store tm_store;

/* Environment of a run (strings may be NULL; numbers 0 when unknown). */
typedef struct tm_run_info {
    const char *suite_names, *suite_hash, *command_line, *tags_json;
    const char *git_commit, *git_branch;
    int git_dirty;
    const char *build_type, *build_flags, *host_name, *cpu_model;
    int cpu_count;
    const char *gpu_names, *gpu_driver, *cuda_version;
    int gpu_count, gpu_sm_clock_mhz, gpu_memory_clock_mhz;
    double gpu_power_limit_w;
} tm_run_info;

tm_status tm_store_open(const char *path, tm_store **out, tm_error_t *error);
void tm_store_close(tm_store *store);
sqlite3 *tm_store_db(tm_store *store);
int tm_store_schema_version(void);

tm_status tm_store_begin_run(tm_store *store, const tm_run_info *info, int64_t *run_id, tm_error_t *error);
/* status: "complete", "interrupted" or "failed". */
tm_status tm_store_finish_run(tm_store *store, int64_t run_id, const char *status, tm_error_t *error);
tm_status tm_store_begin_case(tm_store *store, int64_t run_id, const char *suite, const char *kind, const char *name,
                              const char *params_json, const char *model, int64_t *case_id, tm_error_t *error);
tm_status tm_store_add_sample(tm_store *store, int64_t case_id, const char *metric, int repetition, double value,
                              tm_error_t *error);
tm_status tm_store_put_metric(tm_store *store, int64_t case_id, const char *metric, const char *unit,
                              int better, const tm_summary *summary, double ceiling, tm_error_t *error);
/* A run named by id ("12"), git commit prefix or branch (then its latest complete run). */
tm_status tm_store_resolve_run(tm_store *store, const char *spec, bool include_incomplete, int64_t *run_id,
                               tm_error_t *error);
/* Sample values of one metric of one case, in repetition order (malloc'ed). */
tm_status tm_store_samples(tm_store *store, int64_t case_id, const char *metric, double **values, size_t *n,
                           tm_error_t *error);

/* status: "complete", "failed", "timeout" or "skipped"; message may be NULL. */
tm_status tm_store_finish_case(tm_store *store, int64_t case_id, const char *status, const char *message,
                               tm_error_t *error);

#endif /* TM_STORE_H */
