/*
 * cmd_export.c - `tmbench export --format csv|json|md|sql`: the stored results for other tools.
 * csv, json and md give one row per (run, case, metric) summary of complete runs (--all: every
 * run); sql gives the schema and every row of every table as INSERT statements, which sqlite3
 * replays into an identical database.
 */
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "format.h"
#include "store.h"

extern const unsigned char tm_schema_sql[];

static void usage(FILE *out) {
    fprintf(out, "usage: tmbench export --format csv|json|md|sql [--db PATH] [--all]\n");
}

static int export_sql(sqlite3 *db) {
    printf("%s\n", (const char *)tm_schema_sql);
    static const char *const tables[] = {"runs", "cases", "samples", "metrics", "kernel_records", "nvtx_ranges",
                                         "hardware_counters"};
    for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
        char sql[512], select[8192] = "SELECT 'INSERT INTO ";
        snprintf(sql, sizeof sql, "PRAGMA table_info(%s)", tables[t]);
        sqlite3_stmt *info;
        if (sqlite3_prepare_v2(db, sql, -1, &info, NULL) != SQLITE_OK) return 1;
        snprintf(select + strlen(select), sizeof select - strlen(select), "%s VALUES(' ", tables[t]);
        int columns = 0;
        while (sqlite3_step(info) == SQLITE_ROW)
            snprintf(select + strlen(select), sizeof select - strlen(select), "%s quote(\"%s\")", columns++ ? "|| ',' ||" : "||",
                     sqlite3_column_text(info, 1));
        sqlite3_finalize(info);
        snprintf(select + strlen(select), sizeof select - strlen(select), " || ');' FROM %s ORDER BY rowid", tables[t]);
        sqlite3_stmt *rows;
        if (sqlite3_prepare_v2(db, select, -1, &rows, NULL) != SQLITE_OK) {
            fprintf(stderr, "tmbench export: %s\n", sqlite3_errmsg(db));
            return 1;
        }
        while (sqlite3_step(rows) == SQLITE_ROW) printf("%s\n", sqlite3_column_text(rows, 0));
        sqlite3_finalize(rows);
    }
    return 0;
}

int tm_command_export(int argc, char **argv) {
    const char *db_path = TM_DEFAULT_DB, *format = NULL;
    bool all = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
        else if (!strcmp(argv[i], "--db") && i + 1 < argc) db_path = argv[++i];
        else if (!strcmp(argv[i], "--all")) all = true;
        else if (tm_is_help_option(argv[i])) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!format || (strcmp(format, "csv") && strcmp(format, "json") && strcmp(format, "md") && strcmp(format, "sql"))) {
        fprintf(stderr, "tmbench export: --format must be csv, json, md or sql\n");
        return 2;
    }
    tm_error_t error = {0};
    tm_store *store;
    if (tm_store_open(db_path, &store, &error)) {
        fprintf(stderr, "tmbench export: %s\n", error.message);
        return 1;
    }
    sqlite3 *db = tm_store_db(store);
    if (!strcmp(format, "sql")) {
        int status = export_sql(db);
        tm_store_close(store);
        return status;
    }
    sqlite3_stmt *s;
    const char *sql = "SELECT r.id, coalesce(r.git_branch, ''), coalesce(r.git_commit, ''), r.status, c.suite, c.name, "
                      "m.metric, m.unit, m.n, m.median, m.p10, m.p90, m.relative_noise, m.median_low, m.median_high "
                      "FROM metrics m JOIN cases c ON c.id = m.case_id JOIN runs r ON r.id = c.run_id "
                      "WHERE ?1 OR r.status = 'complete' ORDER BY r.id, c.id, m.rowid";
    sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    sqlite3_bind_int(s, 1, all);
    bool csv = !strcmp(format, "csv"), json = !strcmp(format, "json");
    if (csv) printf("run,branch,commit,status,suite,case,metric,unit,n,median,p10,p90,relative_noise,median_low,median_high\n");
    else if (json) printf("[");
    else printf("| run | suite | case | metric | n | median | p10 | p90 | noise |\n|---|---|---|---|---|---|---|---|---|\n");
    int rows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *text[8];
        for (int k = 1; k <= 7; k++) text[k] = (const char *)sqlite3_column_text(s, k);
        double values[6];
        for (int k = 0; k < 6; k++) values[k] = sqlite3_column_double(s, 9 + k);
        if (csv) {
            printf("%lld", (long long)sqlite3_column_int64(s, 0));
            for (int k = 1; k <= 7; k++) putchar(','), tm_print_csv_field(text[k]);
            printf(",%d,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g\n", sqlite3_column_int(s, 8), values[0], values[1], values[2],
                   values[3], values[4], values[5]);
        } else if (json) {
            static const char *const keys[8] = {"", "branch", "commit", "status", "suite", "case", "metric", "unit"};
            printf("%s\n  {\"run\": %lld", rows ? "," : "", (long long)sqlite3_column_int64(s, 0));
            for (int k = 1; k <= 7; k++) printf(", \"%s\": ", keys[k]), tm_print_json_string(text[k]);
            printf(", \"n\": %d, \"median\": %.17g, \"p10\": %.17g, \"p90\": %.17g, \"relative_noise\": %.17g, "
                   "\"median_low\": %.17g, \"median_high\": %.17g}",
                   sqlite3_column_int(s, 8), values[0], values[1], values[2], values[3], values[4], values[5]);
        } else {
            printf("| %lld | %s | %s | %s (%s) | %d | %.4g | %.4g | %.4g | %.1f %% |\n", (long long)sqlite3_column_int64(s, 0),
                   text[4], text[5], text[6], text[7], sqlite3_column_int(s, 8), values[0], values[1], values[2],
                   100 * values[3]);
        }
        rows++;
    }
    if (json) printf("\n]\n");
    sqlite3_finalize(s);
    tm_store_close(store);
    return 0;
}
