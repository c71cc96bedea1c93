/*
 * store.c - the SQLite results store (see store.h).
 *
 * DESIGN: one prepared statement per call, executed in autocommit mode (each statement is its
 * own transaction); WAL with synchronous=NORMAL keeps a killed writer from corrupting anything
 * (SQLite's journal guarantees) while samples stay cheap to append.
 */
#define _POSIX_C_SOURCE 200809L
#include "store.h"

#include "common.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SCHEMA_VERSION 1

extern const unsigned char tm_schema_sql[]; /* results/schema.sql, NUL-terminated (generated) */

struct tm_store {
    sqlite3 *db;
    char *path;
};

int tm_store_schema_version(void) { return SCHEMA_VERSION; }
sqlite3 *tm_store_db(tm_store *store) { return store->db; }

static tm_status db_error(tm_store *store, tm_error_t *error, const char *what) {
    return tm_error_set(error, TM_ERR_IO, "%s: %s: %s", store->path, what, sqlite3_errmsg(store->db));
}

static void utc_now(char out[32]) {
    time_t now = time(NULL);
    struct tm utc;
    gmtime_r(&now, &utc);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &utc);
}

void tm_store_close(tm_store *store) {
    if (!store) return;
    sqlite3_close(store->db);
    free(store->path);
    free(store);
}

tm_status tm_store_open(const char *path, tm_store **out, tm_error_t *error) {
    *out = NULL;
    tm_store *store = calloc(1, sizeof *store);
    if (!store || !(store->path = strdup(path))) {
        free(store);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory opening %s", path);
    }
    tm_status status = TM_OK;
    if (sqlite3_open_v2(path, &store->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        status = db_error(store, error, "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(store->db, 10000);
    int version = -1;
    sqlite3_stmt *statement = NULL;
    if (sqlite3_prepare_v2(store->db, "PRAGMA user_version", -1, &statement, NULL) != SQLITE_OK ||
        sqlite3_step(statement) != SQLITE_ROW) {
        sqlite3_finalize(statement);
        status = tm_error_set(error, TM_ERR_FORMAT, "%s: not a SQLite database, or damaged (%s)", path,
                              sqlite3_errmsg(store->db));
        goto fail;
    }
    version = sqlite3_column_int(statement, 0);
    sqlite3_finalize(statement);
    if (version > SCHEMA_VERSION) {
        status = tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: results schema version %d is newer than this tmbench's %d",
                              path, version, SCHEMA_VERSION);
        goto fail;
    }
    if (version == 0) {
        /* empty database: it must hold no foreign tables */
        if (sqlite3_prepare_v2(store->db, "SELECT count(*) FROM sqlite_master", -1, &statement, NULL) != SQLITE_OK ||
            sqlite3_step(statement) != SQLITE_ROW) {
            sqlite3_finalize(statement);
            status = db_error(store, error, "cannot read the schema");
            goto fail;
        }
        int tables = sqlite3_column_int(statement, 0);
        sqlite3_finalize(statement);
        if (tables > 0) {
            status = tm_error_set(error, TM_ERR_FORMAT, "%s: a SQLite database that is not a TensorMesh results database "
                                                        "(user_version 0 with %d objects); refusing to change it", path, tables);
            goto fail;
        }
    }
    char *message = NULL;
    if (sqlite3_exec(store->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", NULL, NULL,
                     &message) != SQLITE_OK) {
        status = tm_error_set(error, TM_ERR_IO, "%s: cannot configure: %s", path, message ? message : "?");
        sqlite3_free(message);
        goto fail;
    }
    if (version == 0) {
        char *schema = NULL;
        if (sqlite3_exec(store->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(store->db, (const char *)tm_schema_sql, NULL, NULL, &schema) != SQLITE_OK ||
            sqlite3_exec(store->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
            status = tm_error_set(error, TM_ERR_IO, "%s: cannot create the schema: %s", path, schema ? schema : "?");
            sqlite3_free(schema);
            goto fail;
        }
    }
    *out = store;
    return TM_OK;
fail:
    tm_store_close(store);
    return status;
}

/* Prepare, bind arguments described by `types` ('t' text or NULL, 'i' int64, 'd' double, 'n' a double
 * bound as NULL), step once. */
static tm_status execute(tm_store *store, tm_error_t *error, int64_t *last_id, const char *sql, const char *types, ...) {
    sqlite3_stmt *statement;
    if (sqlite3_prepare_v2(store->db, sql, -1, &statement, NULL) != SQLITE_OK) return db_error(store, error, "prepare");
    va_list args;
    va_start(args, types);
    for (int i = 0; types[i]; i++) {
        int index = i + 1;
        switch (types[i]) {
        case 't': {
            const char *text = va_arg(args, const char *);
            if (text) sqlite3_bind_text(statement, index, text, -1, SQLITE_TRANSIENT);
            else sqlite3_bind_null(statement, index);
            break;
        }
        case 'i': sqlite3_bind_int64(statement, index, va_arg(args, int64_t)); break;
        case 'd': sqlite3_bind_double(statement, index, va_arg(args, double)); break;
        default: /* 'n': consumes a double, binds NULL */
            (void)va_arg(args, double);
            sqlite3_bind_null(statement, index);
            break;
        }
    }
    va_end(args);
    int rc = sqlite3_step(statement);
    sqlite3_finalize(statement);
    if (rc != SQLITE_DONE) return db_error(store, error, "write");
    if (last_id) *last_id = sqlite3_last_insert_rowid(store->db);
    return TM_OK;
}

tm_status tm_store_begin_run(tm_store *store, const tm_run_info *r, int64_t *run_id, tm_error_t *error) {
    char now[32];
    utc_now(now);
    return execute(store, error, run_id,
                   "INSERT INTO runs (started_at, suite_names, suite_hash, command_line, tags, git_commit, git_branch, "
                   "git_dirty, build_type, build_flags, host_name, cpu_model, cpu_count, gpu_names, gpu_count, gpu_driver, "
                   "cuda_version, gpu_sm_clock_mhz, gpu_memory_clock_mhz, gpu_power_limit_w) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   "tttttttittttitittiid", now, r->suite_names ? r->suite_names : "", r->suite_hash ? r->suite_hash : "",
                   r->command_line ? r->command_line : "", r->tags_json, r->git_commit, r->git_branch, (int64_t)r->git_dirty,
                   r->build_type, r->build_flags, r->host_name, r->cpu_model, (int64_t)r->cpu_count, r->gpu_names,
                   (int64_t)r->gpu_count, r->gpu_driver, r->cuda_version, (int64_t)r->gpu_sm_clock_mhz,
                   (int64_t)r->gpu_memory_clock_mhz, r->gpu_power_limit_w);
}

tm_status tm_store_finish_run(tm_store *store, int64_t run_id, const char *status, tm_error_t *error) {
    char now[32];
    utc_now(now);
    return execute(store, error, NULL, "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", "tti", status, now, run_id);
}

tm_status tm_store_begin_case(tm_store *store, int64_t run_id, const char *suite, const char *kind, const char *name,
                              const char *params_json, const char *model, int64_t *case_id, tm_error_t *error) {
    char now[32];
    utc_now(now);
    return execute(store, error, case_id,
                   "INSERT INTO cases (run_id, suite, kind, name, params, model, started_at) VALUES (?,?,?,?,?,?,?)", "ittttt"
                   "t", run_id, suite, kind, name, params_json, model, now);
}

tm_status tm_store_add_sample(tm_store *store, int64_t case_id, const char *metric, int repetition, double value,
                              tm_error_t *error) {
    return execute(store, error, NULL, "INSERT INTO samples (case_id, metric, repetition, value) VALUES (?,?,?,?)", "itid",
                   case_id, metric, (int64_t)repetition, value);
}

tm_status tm_store_put_metric(tm_store *store, int64_t case_id, const char *metric, const char *unit,
                              int better, const tm_summary *s, double ceiling, tm_error_t *error) {
    return execute(store, error, NULL,
                   "INSERT OR REPLACE INTO metrics (case_id, metric, unit, higher_is_better, n, median, mean, stdev, min, "
                   "max, p10, p90, p99, relative_noise, median_low, median_high, ceiling) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   ceiling > 0 ? "ittiiddddddddddd" "d" : "ittiiddddddddddd" "n", case_id, metric, unit,
                   (int64_t)better, (int64_t)s->n, s->median, s->mean, s->stdev, s->min, s->max, s->p10, s->p90,
                   s->p99, s->relative_noise, s->median_low, s->median_high, ceiling);
}

tm_status tm_store_finish_case(tm_store *store, int64_t case_id, const char *status, const char *message,
                               tm_error_t *error) {
    char now[32];
    utc_now(now);
    return execute(store, error, NULL, "UPDATE cases SET status = ?, message = ?, finished_at = ? WHERE id = ?", "ttti",
                   status, message, now, case_id);
}

tm_status tm_store_resolve_run(tm_store *store, const char *spec, bool include_incomplete, int64_t *run_id,
                               tm_error_t *error) {
    static const char *const queries[] = {
        "SELECT id FROM runs WHERE CAST(id AS TEXT) = ?1 AND (?2 OR status = 'complete')",
        "SELECT id FROM runs WHERE length(?1) >= 4 AND git_commit LIKE ?1 || '%' AND (?2 OR status = 'complete') ORDER BY id DESC LIMIT 1",
        "SELECT id FROM runs WHERE git_branch = ?1 AND (?2 OR status = 'complete') ORDER BY id DESC LIMIT 1",
    };
    for (size_t q = 0; q < sizeof queries / sizeof queries[0]; q++) {
        sqlite3_stmt *statement;
        if (sqlite3_prepare_v2(store->db, queries[q], -1, &statement, NULL) != SQLITE_OK)
            return db_error(store, error, "query runs");
        sqlite3_bind_text(statement, 1, spec, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(statement, 2, include_incomplete);
        int rc = sqlite3_step(statement);
        if (rc == SQLITE_ROW) *run_id = sqlite3_column_int64(statement, 0);
        sqlite3_finalize(statement);
        if (rc == SQLITE_ROW) return TM_OK;
    }
    return tm_error_set(error, TM_ERR_NOT_FOUND, "%s: no %srun matches '%s' (a run id, a commit prefix or a branch)",
                        store->path, include_incomplete ? "" : "complete ", spec);
}

tm_status tm_store_samples(tm_store *store, int64_t case_id, const char *metric, double **values, size_t *n,
                           tm_error_t *error) {
    *values = NULL;
    *n = 0;
    sqlite3_stmt *statement;
    if (sqlite3_prepare_v2(store->db, "SELECT value FROM samples WHERE case_id = ? AND metric = ? ORDER BY repetition", -1,
                           &statement, NULL) != SQLITE_OK)
        return db_error(store, error, "query samples");
    sqlite3_bind_int64(statement, 1, case_id);
    sqlite3_bind_text(statement, 2, metric, -1, SQLITE_TRANSIENT);
    size_t capacity = 0;
    while (sqlite3_step(statement) == SQLITE_ROW) {
        if (*n == capacity) {
            capacity = capacity ? 2 * capacity : 64;
            double *grown = realloc(*values, capacity * sizeof *grown);
            if (!grown) {
                sqlite3_finalize(statement);
                free(*values);
                *values = NULL;
                return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory reading samples");
            }
            *values = grown;
        }
        (*values)[(*n)++] = sqlite3_column_double(statement, 0);
    }
    sqlite3_finalize(statement);
    return TM_OK;
}
