/*
 * cmd_diff.c - `tmbench diff BASE HEAD`: compare two runs case by case and metric by metric.
 *
 * Cases match by suite and case name (which encodes the parameters) when both runs ran on the
 * same hardware (CPU model and GPU names); otherwise nothing is compared and the command says
 * why. Each metric gets base and head medians, the change, the Mann-Whitney p-value and a
 * verdict (compare.h); cases present on one side only are listed. Exit status 1 when any
 * metric is SLOWER, so CI can fail on a regression.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "compare.h"
#include "format.h"
#include "store.h"

typedef enum format { FORMAT_MD, FORMAT_CSV, FORMAT_JSON } format;

static void usage(FILE *out) {
    fprintf(out, "usage: tmbench diff BASE HEAD [--threshold PCT] [--alpha P] [--format md|csv|json] [--db PATH]\n\n"
                 "BASE and HEAD: a run id, a git commit prefix or a branch (its latest complete run).\n"
                 "Verdicts: FASTER/SLOWER when the change is at least PCT %% (default 3) and the Mann-Whitney\n"
                 "p-value is under P (default 0.01); SAME when the change is smaller; NOISY when it is larger\n"
                 "but not significant; CHANGED for a real, large change of a metric with no better direction (a\n"
                 "board's power, a clock: descriptive, never SLOWER). Exit status 1 when anything is SLOWER.\n");
}

/* "model / gpus" of a run, for the hardware match. */
static char *hardware_of(sqlite3 *db, int64_t run) {
    sqlite3_stmt *s;
    char *out = NULL;
    if (sqlite3_prepare_v2(db, "SELECT coalesce(cpu_model, '?') || ' / ' || coalesce(gpu_names, 'no GPU'), "
                               "coalesce(git_branch, '-') || ' @ ' || coalesce(substr(git_commit, 1, 10), '-') "
                               "FROM runs WHERE id = ?", -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, run);
        if (sqlite3_step(s) == SQLITE_ROW) {
            size_t n = strlen((const char *)sqlite3_column_text(s, 0)) + strlen((const char *)sqlite3_column_text(s, 1)) + 8;
            out = malloc(n);
            if (out) snprintf(out, n, "%s\n%s", sqlite3_column_text(s, 0), sqlite3_column_text(s, 1));
        }
    }
    sqlite3_finalize(s);
    return out;
}

int tm_command_diff(int argc, char **argv) {
    const char *db_path = TM_DEFAULT_DB, *base_spec = NULL, *head_spec = NULL;
    double threshold = 0.03, alpha = 0.01;
    format fmt = FORMAT_MD;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (tm_is_help_option(a)) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "--db") || !strcmp(a, "--threshold") || !strcmp(a, "--alpha") || !strcmp(a, "--format")) &&
                   i + 1 < argc) {
            const char *v = argv[++i];
            char *end;
            if (!strcmp(a, "--db")) db_path = v;
            else if (!strcmp(a, "--format")) {
                if (!strcmp(v, "md")) fmt = FORMAT_MD;
                else if (!strcmp(v, "csv")) fmt = FORMAT_CSV;
                else if (!strcmp(v, "json")) fmt = FORMAT_JSON;
                else {
                    fprintf(stderr, "tmbench diff: --format: '%s' (md, csv, json)\n", v);
                    return 2;
                }
            } else {
                double value = strtod(v, &end);
                if (*end || end == v || value < 0 || (!strcmp(a, "--alpha") && value > 1)) {
                    fprintf(stderr, "tmbench diff: %s: '%s' is not a valid number\n", a, v);
                    return 2;
                }
                if (!strcmp(a, "--threshold")) threshold = value / 100;
                else alpha = value;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "tmbench diff: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (!base_spec) base_spec = a;
        else if (!head_spec) head_spec = a;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (!base_spec || !head_spec) {
        usage(stderr);
        return 2;
    }
    tm_error_t error = {0};
    tm_store *store;
    if (tm_store_open(db_path, &store, &error)) {
        fprintf(stderr, "tmbench diff: %s\n", error.message);
        return 1;
    }
    int64_t base, head;
    if (tm_store_resolve_run(store, base_spec, false, &base, &error) || tm_store_resolve_run(store, head_spec, false, &head, &error)) {
        fprintf(stderr, "tmbench diff: %s\n", error.message);
        tm_store_close(store);
        return 1;
    }
    sqlite3 *db = tm_store_db(store);
    char *base_hw = hardware_of(db, base), *head_hw = hardware_of(db, head);
    bool same_hardware = base_hw && head_hw && !strncmp(base_hw, head_hw, strcspn(base_hw, "\n") + 1);
    if (fmt == FORMAT_MD) {
        printf("## tmbench diff: run %lld (%s) -> run %lld (%s)\n\n", (long long)base, base_hw ? strchr(base_hw, '\n') + 1 : "?",
               (long long)head, head_hw ? strchr(head_hw, '\n') + 1 : "?");
        printf("Hardware: %.*s%s. Threshold %.1f %%, alpha %g.\n\n", (int)strcspn(head_hw ? head_hw : "?", "\n"),
               head_hw ? head_hw : "?", same_hardware ? "" : " (differs from the base run: no case is compared)",
               threshold * 100, alpha);
        printf("| case | metric | base | head | change | p | verdict |\n|---|---|---|---|---|---|---|\n");
    } else if (fmt == FORMAT_CSV) {
        printf("case,metric,unit,base_median,head_median,change_percent,p_value,verdict\n");
    } else {
        printf("{\"base_run\": %lld, \"head_run\": %lld, \"same_hardware\": %s, \"rows\": [", (long long)base, (long long)head,
               same_hardware ? "true" : "false");
    }
    /* matched metrics */
    sqlite3_stmt *matched;
    const char *sql = "SELECT hc.name, bc.id, hc.id, m.metric, m.unit, m.higher_is_better FROM cases hc "
                      "JOIN cases bc ON bc.run_id = ?1 AND bc.name = hc.name AND bc.suite = hc.suite "
                      "JOIN metrics m ON m.case_id = hc.id WHERE hc.run_id = ?2 AND ?3 ORDER BY hc.id, m.rowid";
    int counts[5] = {0}, rows = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &matched, NULL) != SQLITE_OK) {
        fprintf(stderr, "tmbench diff: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    sqlite3_bind_int64(matched, 1, base);
    sqlite3_bind_int64(matched, 2, head);
    sqlite3_bind_int(matched, 3, same_hardware);
    while (sqlite3_step(matched) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(matched, 0), *metric = (const char *)sqlite3_column_text(matched, 3);
        const char *unit = (const char *)sqlite3_column_text(matched, 4);
        double *b = NULL, *h = NULL;
        size_t nb, nh;
        if (tm_store_samples(store, sqlite3_column_int64(matched, 1), metric, &b, &nb, &error) ||
            tm_store_samples(store, sqlite3_column_int64(matched, 2), metric, &h, &nh, &error) || !nb || !nh) {
            free(b), free(h);
            continue;
        }
        tm_comparison c = tm_compare_samples(b, nb, h, nh, (tm_better)sqlite3_column_int(matched, 5), threshold, alpha);
        counts[c.verdict]++;
        const char *verdict = tm_verdict_name(c.verdict);
        if (fmt == FORMAT_MD)
            printf("| %s | %s (%s) | %.4g | %.4g | %+.1f %% | %.2g | %s%s%s |\n", name, metric, unit, c.base_median, c.head_median,
                   100 * c.change, c.p_value, c.verdict == TM_SLOWER || c.verdict == TM_FASTER ? "**" : "", verdict,
                   c.verdict == TM_SLOWER || c.verdict == TM_FASTER ? "**" : "");
        else if (fmt == FORMAT_CSV) {
            tm_print_csv_field(name);
            printf(",%s,%s,%.17g,%.17g,%.6f,%.6g,%s\n", metric, unit, c.base_median, c.head_median, 100 * c.change, c.p_value,
                   verdict);
        } else {
            printf("%s\n  {\"case\": ", rows ? "," : "");
            tm_print_json_string(name);
            printf(", \"metric\": \"%s\", \"unit\": \"%s\", \"base_median\": %.17g, \"head_median\": %.17g, "
                   "\"change_percent\": %.6f, \"p_value\": %.6g, \"verdict\": \"%s\"}",
                   metric, unit, c.base_median, c.head_median, 100 * c.change, c.p_value, verdict);
        }
        rows++;
        free(b), free(h);
    }
    sqlite3_finalize(matched);
    /* cases on one side only */
    static const char *const one_side = "SELECT name FROM cases WHERE run_id = ?1 AND (NOT ?3 OR name NOT IN "
                                        "(SELECT name FROM cases WHERE run_id = ?2)) ORDER BY id";
    for (int side = 0; side < 2; side++) {
        sqlite3_stmt *s;
        sqlite3_prepare_v2(db, one_side, -1, &s, NULL);
        sqlite3_bind_int64(s, 1, side ? head : base);
        sqlite3_bind_int64(s, 2, side ? base : head);
        sqlite3_bind_int(s, 3, same_hardware);
        int listed = 0;
        while (sqlite3_step(s) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(s, 0);
            if (fmt == FORMAT_MD) printf("%s%s", listed++ ? ", " : (side ? "\nOnly in head: " : "\nOnly in base: "), name);
            else if (fmt == FORMAT_CSV) {
                tm_print_csv_field(name);
                printf(",,,,,,,%s\n", side ? "ONLY_IN_HEAD" : "ONLY_IN_BASE");
            } else {
                printf("%s\n  {\"case\": ", rows++ ? "," : "");
                tm_print_json_string(name);
                printf(", \"verdict\": \"%s\"}", side ? "ONLY_IN_HEAD" : "ONLY_IN_BASE");
            }
        }
        if (listed && fmt == FORMAT_MD) printf("\n");
        sqlite3_finalize(s);
    }
    if (fmt == FORMAT_MD)
        printf("\n**%d FASTER, %d SLOWER, %d SAME, %d NOISY, %d CHANGED (no better direction)**\n", counts[TM_FASTER],
               counts[TM_SLOWER], counts[TM_SAME], counts[TM_NOISY], counts[TM_CHANGED]);
    else if (fmt == FORMAT_JSON)
        printf("\n], \"faster\": %d, \"slower\": %d, \"same\": %d, \"noisy\": %d, \"changed\": %d}\n", counts[TM_FASTER],
               counts[TM_SLOWER], counts[TM_SAME], counts[TM_NOISY], counts[TM_CHANGED]);
    free(base_hw), free(head_hw);
    tm_store_close(store);
    return counts[TM_SLOWER] ? 1 : 0;
}
