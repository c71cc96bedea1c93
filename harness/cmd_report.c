/*
 * cmd_report.c - `tmbench report`: regenerate the performance guide (reports/PERFORMANCE.md and
 * its gnuplot charts) from one stored run, reading nothing but the database.
 *
 * Guarantees: the output depends only on the database (and reports/ROADMAP.md): the same run
 * gives the same bytes; a section or row with no data says "not measured", never a number;
 * figures show medians with the measured ceiling's percentage when the metric has one. Charts
 * are drawn when gnuplot is installed, as SVG and PNG, and linked from the markdown.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "store.h"

static void usage(FILE *out) {
    fprintf(out, "usage: tmbench report [--run ID | --branch B | --commit C] [-o DIR] [--db PATH] [--include-incomplete]\n"
                 "                      [--roadmap FILE]\n\n"
                 "Writes DIR/PERFORMANCE.md (default DIR: reports) from one run (default: the latest complete one),\n"
                 "with gnuplot charts in DIR/charts/ when gnuplot is installed.\n");
}

/* Column text or a dash. */
static const char *text_or(sqlite3_stmt *s, int column, const char *fallback) {
    const unsigned char *t = sqlite3_column_text(s, column);
    return t ? (const char *)t : fallback;
}

/* A byte count as "12.3 MB" / "4.08 GB". */
static void format_bytes(double bytes, char *out, size_t size) {
    if (bytes >= 1e9) snprintf(out, size, "%.2f GB", bytes / 1e9);
    else if (bytes >= 1e6) snprintf(out, size, "%.1f MB", bytes / 1e6);
    else snprintf(out, size, "%.0f kB", bytes / 1e3);
}

/* `value` to `digits` significant digits without an exponent in the range a guide's figures take
 * (11274 -> "11270" where %.4g writes "1.127e+04"; 0.2521 -> "0.2521"). */
typedef struct figure {
    char text[40];
} figure;
static figure significant(double value, int digits) {
    figure f;
    const double magnitude = fabs(value);
    if (magnitude >= pow(10, digits) && magnitude < 1e15) {
        const double step = pow(10, floor(log10(magnitude)) - digits + 1);
        snprintf(f.text, sizeof f.text, "%.0f", round(value / step) * step);
    } else {
        snprintf(f.text, sizeof f.text, "%.*g", digits, value);
    }
    return f;
}

static bool have_gnuplot(void) { return system("gnuplot --version > /dev/null 2>&1") == 0; }

/* `sql` prepared with `run` bound to its first parameter; NULL when it does not prepare (stepping or
 * finalizing NULL is a harmless no-op in SQLite, so a section then shows nothing). */
static sqlite3_stmt *statement_for_run(sqlite3 *db, const char *sql, int64_t run) {
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
        sqlite3_finalize(s);
        return NULL;
    }
    sqlite3_bind_int64(s, 1, run);
    return s;
}

static void hardware_block(FILE *md, sqlite3 *db, int64_t run) {
    const char *sql =
        "SELECT id, status, started_at, coalesce(git_branch, '-'), coalesce(git_commit, '-'), git_dirty, "
        "cpu_model, cpu_count, gpu_names, gpu_count, gpu_driver, cuda_version, gpu_sm_clock_mhz, "
        "gpu_memory_clock_mhz, gpu_power_limit_w, build_type, host_name, suite_names FROM runs WHERE id = ?";
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    if (sqlite3_step(s) == SQLITE_ROW) {
        fprintf(md, "Numbers in this guide come from run %lld (%s, started %s) of suites %s, on branch %s at commit "
                    "%.10s%s, measured by `tmbench` and stored in its SQLite database; regenerate with "
                    "`tmbench report --run %lld`.\n\n",
                (long long)sqlite3_column_int64(s, 0), text_or(s, 1, "?"), text_or(s, 2, "?"), text_or(s, 17, "?"),
                text_or(s, 3, "-"), text_or(s, 4, "-"), sqlite3_column_int(s, 5) ? " (with uncommitted changes)" : "",
                (long long)sqlite3_column_int64(s, 0));
        fprintf(md, "- CPU: %s (%d logical cores)\n", text_or(s, 6, "unknown"), sqlite3_column_int(s, 7));
        if (sqlite3_column_int(s, 9) > 0)
            fprintf(md, "- GPU: %d × %s; driver %s, CUDA %s; max SM clock %d MHz, memory clock %d MHz, power limit %.0f W\n",
                    sqlite3_column_int(s, 9), text_or(s, 8, "?"), text_or(s, 10, "?"), text_or(s, 11, "?"),
                    sqlite3_column_int(s, 12), sqlite3_column_int(s, 13), sqlite3_column_double(s, 14));
        else
            fprintf(md, "- GPU: none\n");
        fprintf(md, "- Build: %s; host %s\n\n", text_or(s, 15, "?"), text_or(s, 16, "?"));
    }
    sqlite3_finalize(s);
}

/* The chart data's blocks: one per (model, KV type, prompt length), at most CHART_LINES, each titled
 * "MODEL, prompt N" (", KV q8" for a cache other than f16; the legend names the model: a run of
 * several models drew same-named lines). */
#define CHART_LINES 16
typedef struct chart_lines {
    char titles[CHART_LINES][160];
    int n;
} chart_lines;

/* Into `expression` (size bytes): SQL over `c` (a case) that labels it by the params in which the
 * run's throughput cases differ, the table's own columns (model, prompt, batch, KV type) aside:
 * "key=value, ..." of those it sets, '' where none (or no param differs). So cases of one shape
 * measured under several settings (suites/sampling.yaml's sampling params, suites/overlap.yaml's
 * overlap) get rows and chart lines told apart. Keys are suite parameter names; one with a
 * character other than [A-Za-z0-9_] is left out rather than quoted. */
static void settings_label_sql(sqlite3 *db, int64_t run, char *expression, size_t size) {
    const char *sql = "SELECT j.key FROM cases c, json_each(c.params) j WHERE c.run_id = ?1 AND c.kind = 'throughput' AND "
                      "j.key NOT IN ('prompt_tokens', 'batch', 'kv_type', 'model') GROUP BY j.key HAVING count(DISTINCT j.value) > 1 "
                      "OR count(*) < (SELECT count(*) FROM cases WHERE run_id = ?1 AND kind = 'throughput') ORDER BY j.key";
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    size_t used = (size_t)snprintf(expression, size, "ltrim(''");
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(s, 0);
        bool plain = key && *key;
        for (const char *k = key; plain && *k; k++) plain = isalnum((unsigned char)*k) || *k == '_';
        if (!plain) continue;
        const int n = snprintf(expression + used, size - used, " || coalesce(', %s=' || json_extract(c.params, '$.%s'), '')", key, key);
        if (n < 0 || (size_t)n >= size - used - 16) break; /* room for the closing below */
        used += (size_t)n;
    }
    sqlite3_finalize(s);
    snprintf(expression + used, size - used, ", ', ')");
}

/* out = "MODEL (SETTINGS)", or MODEL where settings is empty (settings_label_sql's label). */
static void model_with_settings(char *out, size_t size, const char *model, const char *settings) {
    snprintf(out, size, *settings ? "%s (%s)" : "%s%s", model, settings);
}

/* Section 1: throughput cases, each with its KV cache type (a run may measure the same model and
 * shape with several: suites/gpu-kv8.yaml), labelled with its settings where the run's cases differ
 * in them (settings_label_sql); writes the chart data when charts_dir is set (a block per line of
 * `lines`; cases past CHART_LINES lines stay in the table only). Returns rows. */
static int throughput_section(FILE *md, sqlite3 *db, int64_t run, const char *charts_dir, chart_lines *lines) {
    lines->n = 0;
    char label[3072], sql[6144];
    settings_label_sql(db, run, label, sizeof label);
    snprintf(sql, sizeof sql,
        "SELECT c.suite, coalesce(c.model, '-'), json_extract(c.params, '$.prompt_tokens'), json_extract(c.params, '$.batch'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'decode_tokens_per_s'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'step_latency_p50_ms'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'step_latency_p90_ms'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'step_latency_p99_ms'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'time_to_first_token_ms'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'prompt_tokens_per_s'), "
        "(SELECT relative_noise FROM metrics WHERE case_id = c.id AND metric = 'decode_tokens_per_s'), "
        "(SELECT ceiling FROM metrics WHERE case_id = c.id AND metric = 'decode_tokens_per_s'), c.status, "
        "coalesce(json_extract(c.params, '$.kv_type'), 'f16'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'decode_gb_per_s'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'decode_joules_per_token'), "
        "(SELECT relative_noise FROM metrics WHERE case_id = c.id AND metric = 'decode_joules_per_token'), %s "
        "FROM cases c WHERE c.run_id = ? AND c.kind = 'throughput' ORDER BY c.model, 14, 18, 3, 4, c.id", label);
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    FILE *data = NULL;
    if (charts_dir) {
        char path[4200];
        snprintf(path, sizeof path, "%s/throughput.dat", charts_dir);
        data = fopen(path, "w");
    }
    int rows = 0;
    long long last_prompt = -1;
    char last_model[128] = "", last_kv[16] = "", last_settings[256] = "";
    bool charted = false; /* this case's line has a block */
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (rows++ == 0)
            fprintf(md, "| model | seq_len (prompt) | batch | KV | decode tokens/s (all sequences) | roofline tokens/s (share) "
                        "| decode GB/s | J per decode token | step latency p50 / p90 / p99 (ms) | time to first token (ms) "
                        "| prompt tokens/s |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        const char *kv = text_or(s, 13, "f16"), *settings = text_or(s, 17, "");
        char model_cell[512]; /* the model, with the settings that tell this case from others of its shape */
        model_with_settings(model_cell, sizeof model_cell, text_or(s, 1, "-"), settings);
        if (sqlite3_column_type(s, 4) == SQLITE_NULL) {
            fprintf(md, "| %s | %s | %s | %s | not measured (%s) | not measured | not measured | not measured | not measured "
                        "| not measured | not measured |\n",
                    model_cell, text_or(s, 2, "-"), text_or(s, 3, "-"), kv, text_or(s, 12, "?"));
            continue;
        }
        char roofline[64] = "not measured", rate[48] = "not measured", energy[48] = "not measured";
        if (sqlite3_column_type(s, 11) != SQLITE_NULL && sqlite3_column_double(s, 11) > 0)
            snprintf(roofline, sizeof roofline, "%s (%.0f %%)", significant(sqlite3_column_double(s, 11), 4).text,
                     100 * sqlite3_column_double(s, 4) / sqlite3_column_double(s, 11));
        if (sqlite3_column_type(s, 14) != SQLITE_NULL) snprintf(rate, sizeof rate, "%s", significant(sqlite3_column_double(s, 14), 4).text);
        if (sqlite3_column_type(s, 15) != SQLITE_NULL)
            snprintf(energy, sizeof energy, "%.3g ± %.1f %%", sqlite3_column_double(s, 15), 100 * sqlite3_column_double(s, 16));
        fprintf(md, "| %s | %s | %s | %s | %s ± %.1f %% | %s | %s | %s | %s / %s / %s | %s | %s |\n", model_cell,
                text_or(s, 2, "-"), text_or(s, 3, "-"), kv, significant(sqlite3_column_double(s, 4), 4).text,
                100 * sqlite3_column_double(s, 10), roofline, rate, energy, significant(sqlite3_column_double(s, 5), 3).text,
                significant(sqlite3_column_double(s, 6), 3).text, significant(sqlite3_column_double(s, 7), 3).text,
                significant(sqlite3_column_double(s, 8), 3).text, significant(sqlite3_column_double(s, 9), 4).text);
        if (data) { /* gnuplot data: one block per (model, KV type, settings, prompt length), two blank lines between blocks */
            const long long prompt = sqlite3_column_int64(s, 2);
            const char *model = text_or(s, 1, "-");
            if (prompt != last_prompt || strcmp(model, last_model) != 0 || strcmp(kv, last_kv) != 0 || strcmp(settings, last_settings) != 0) {
                charted = lines->n < CHART_LINES;
                if (charted) {
                    const bool f16 = strcmp(kv, "f16") == 0;
                    fprintf(data, "%s# %s kv_type=%s prompt_tokens=%lld%s%s\n", lines->n ? "\n\n" : "", model, kv, prompt,
                            *settings ? " " : "", settings);
                    snprintf(lines->titles[lines->n++], sizeof lines->titles[0], "%s, prompt %lld%s%s%s%s", model, prompt, f16 ? "" : ", KV ",
                             f16 ? "" : kv, *settings ? ", " : "", settings);
                }
                last_prompt = prompt;
                snprintf(last_model, sizeof last_model, "%s", model);
                snprintf(last_kv, sizeof last_kv, "%s", kv);
                snprintf(last_settings, sizeof last_settings, "%s", settings);
            }
            if (charted)
                fprintf(data, "%lld %.6g %.6g %.6g %.6g\n", sqlite3_column_int64(s, 3), sqlite3_column_double(s, 4),
                        sqlite3_column_double(s, 5), sqlite3_column_double(s, 6), sqlite3_column_double(s, 7));
        }
    }
    sqlite3_finalize(s);
    if (data) fclose(data);
    if (!rows) fprintf(md, "not measured: this run has no throughput cases.\n");
    return rows;
}

/* Decode at each longer prompt against the shortest prompt measured in the same suite with the same
 * model, batch, KV type and settings (settings_label_sql; the speed issue bounds 2048 x8 against
 * 128 x8 at 15 %): nothing when no pair was measured. */
static void long_prompt_section(FILE *md, sqlite3 *db, int64_t run) {
    char label[3072], sql[6144];
    settings_label_sql(db, run, label, sizeof label);
    snprintf(sql, sizeof sql,
        "WITH d AS (SELECT c.id, c.suite AS suite, coalesce(c.model, '-') AS model, json_extract(c.params, '$.batch') AS batch, "
        "%s AS settings, "
        "coalesce(json_extract(c.params, '$.kv_type'), 'f16') AS kv, "
        "json_extract(c.params, '$.prompt_tokens') AS prompt, m.median AS rate, m.ceiling AS roof FROM cases c JOIN metrics m ON m.case_id = c.id "
        "AND m.metric = 'decode_tokens_per_s' WHERE c.run_id = ? AND c.kind = 'throughput' AND c.status = 'complete' AND "
        "json_extract(c.params, '$.batch') IS NOT NULL AND json_extract(c.params, '$.prompt_tokens') IS NOT NULL), "
        "shortest AS (SELECT suite, model, batch, kv, settings, min(prompt) AS prompt FROM d GROUP BY suite, model, batch, kv, settings) "
        "SELECT l.model, l.batch, l.prompt, l.rate, s.prompt, s.rate, l.suite, l.kv, l.roof, s.roof, l.settings FROM d l JOIN shortest k "
        "ON k.suite = l.suite AND k.model = l.model AND k.batch = l.batch AND k.kv = l.kv AND k.settings = l.settings JOIN d s ON "
        "s.suite = k.suite AND s.model = k.model AND s.batch = k.batch AND s.kv = k.kv AND s.settings = k.settings AND s.prompt = k.prompt "
        "WHERE l.prompt > k.prompt ORDER BY l.suite, l.model, l.kv, l.settings, l.batch, l.prompt", label);
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    if (!s) return;
    int rows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (rows++ == 0)
            fprintf(md, "\nDecode at a longer prompt against the shortest of the same suite, model, KV type and batch:\n\n"
                        "| suite | model | KV | batch | prompt | decode tokens/s | shortest prompt | decode tokens/s | change "
                        "| the roofline's change |\n|---|---|---|---|---|---|---|---|---|---|\n");
        const double rate = sqlite3_column_double(s, 3), base = sqlite3_column_double(s, 5);
        const double roof = sqlite3_column_double(s, 8), base_roof = sqlite3_column_double(s, 9);
        char roof_change[32] = "not measured"; /* what the longer context's KV reads cost at the ceiling alone */
        if (roof > 0 && base_roof > 0) snprintf(roof_change, sizeof roof_change, "%+.1f %%", 100 * (roof / base_roof - 1));
        char model_cell[512];
        model_with_settings(model_cell, sizeof model_cell, text_or(s, 0, "-"), text_or(s, 10, ""));
        fprintf(md, "| %s | %s | %s | %lld | %lld | %s | %lld | %s | %+.1f %% | %s |\n", text_or(s, 6, "-"), model_cell,
                text_or(s, 7, "f16"), sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2), significant(rate, 4).text,
                sqlite3_column_int64(s, 4), significant(base, 4).text, base > 0 ? 100 * (rate / base - 1) : 0.0, roof_change);
    }
    sqlite3_finalize(s);
}

static int memory_section(FILE *md, sqlite3 *db, int64_t run) {
    const char *sql =
        "SELECT coalesce(c.model, '-'), json_extract(c.params, '$.batch'), json_extract(c.params, '$.prompt_tokens'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'weight_bytes'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'kv_bytes_allocated'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'kv_bytes_used'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'total_bytes'), "
        "(SELECT median FROM metrics WHERE case_id = c.id AND metric = 'process_peak_rss_bytes'), "
        "coalesce(json_extract(c.params, '$.kv_type'), 'f16'), "
        /* the KV bytes in use of the same model, batch and prompt with the f16 cache, in this run */
        "(SELECT m.median FROM metrics m JOIN cases f ON f.id = m.case_id WHERE f.run_id = c.run_id AND f.kind = 'memory' "
        "AND f.model IS c.model AND json_extract(f.params, '$.batch') IS json_extract(c.params, '$.batch') "
        "AND json_extract(f.params, '$.prompt_tokens') IS json_extract(c.params, '$.prompt_tokens') "
        "AND coalesce(json_extract(f.params, '$.kv_type'), 'f16') = 'f16' AND m.metric = 'kv_bytes_used' LIMIT 1) "
        "FROM cases c WHERE c.run_id = ? AND c.kind = 'memory' ORDER BY c.model, 2, 3, 9, c.id";
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    int rows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (rows++ == 0)
            fprintf(md, "| model | batch | prompt | KV type | weights | KV cache (allocated / used) | KV used vs f16 | total | "
                        "process peak RSS |\n"
                        "|---|---|---|---|---|---|---|---|---|\n");
        if (sqlite3_column_type(s, 6) == SQLITE_NULL) {
            fprintf(md, "| %s | %s | %s | %s | not measured | not measured | not measured | not measured | not measured |\n",
                    text_or(s, 0, "-"), text_or(s, 1, "-"), text_or(s, 2, "-"), text_or(s, 8, "f16"));
            continue;
        }
        char versus[32] = "-";
        const double f16_used = sqlite3_column_double(s, 9), used = sqlite3_column_double(s, 5);
        if (sqlite3_column_type(s, 9) != SQLITE_NULL && f16_used > 0) snprintf(versus, sizeof versus, "%.3f", used / f16_used);
        char weights[32], kv[32], kv_used[32], total[32], rss[32];
        format_bytes(sqlite3_column_double(s, 3), weights, sizeof weights);
        format_bytes(sqlite3_column_double(s, 4), kv, sizeof kv);
        format_bytes(sqlite3_column_double(s, 5), kv_used, sizeof kv_used);
        format_bytes(sqlite3_column_double(s, 6), total, sizeof total);
        format_bytes(sqlite3_column_double(s, 7), rss, sizeof rss);
        fprintf(md, "| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s |\n", text_or(s, 0, "-"), text_or(s, 1, "-"), text_or(s, 2, "-"),
                text_or(s, 8, "f16"), weights, kv, kv_used, versus, total, rss);
    }
    sqlite3_finalize(s);
    if (!rows) fprintf(md, "not measured: this run has no memory cases.\n");
    return rows;
}

/* text for a gnuplot single-quoted string: single quotes dropped. */
static const char *gnuplot_text(const char *text, char *out, size_t capacity) {
    size_t n = 0;
    for (; *text && n + 1 < capacity; text++)
        if (*text != '\'') out[n++] = *text;
    out[n] = 0;
    return out;
}

/* gnuplot: decode tokens/s vs batch (a line per model and prompt length) and the first line's
 * latency percentiles vs batch. Titles go into gnuplot single-quoted strings: quotes dropped. */
static bool draw_charts(const char *charts_dir, const chart_lines *lines) {
    char script_path[4200];
    snprintf(script_path, sizeof script_path, "%s/charts.gp", charts_dir);
    FILE *script = fopen(script_path, "w");
    if (!script) return false;
    const char *formats[2][2] = {{"svg size 800,480 dynamic", "svg"}, {"png size 800,480", "png"}};
    char title[160];
    for (int f = 0; f < 2; f++) {
        fprintf(script,
                "set terminal %s\nset grid\nset key left top noenhanced\nset xlabel 'batch (sequences)'\n"
                "set output '%s/throughput_vs_batch.%s'\nset title 'Decode throughput vs batch'\n"
                "set ylabel 'decode tokens/s (all sequences)'\nset logscale x 2\n"
                "plot ",
                formats[f][0], charts_dir, formats[f][1]);
        for (int p = 0; p < lines->n; p++)
            fprintf(script, "%s'%s/throughput.dat' index %d using 1:2 with linespoints title '%s'", p ? ", " : "", charts_dir, p,
                    gnuplot_text(lines->titles[p], title, sizeof title));
        fprintf(script,
                "\nset output '%s/latency_percentiles.%s'\nset title 'Decode step latency, %s'\n"
                "set ylabel 'ms per step'\n"
                "plot '%s/throughput.dat' index 0 using 1:3 with linespoints title 'p50', '' index 0 using 1:4 with "
                "linespoints title 'p90', '' index 0 using 1:5 with linespoints title 'p99'\nunset logscale x\n",
                charts_dir, formats[f][1], gnuplot_text(lines->titles[0], title, sizeof title), charts_dir);
    }
    fclose(script);
    char command[8600];
    snprintf(command, sizeof command, "gnuplot '%s' > '%s/gnuplot.log' 2>&1", script_path, charts_dir);
    return system(command) == 0;
}

/* Every kernels case on the roofline of this run's ceilings (log-log: TFLOP/s against flop/byte). */
static bool draw_roofline(const char *charts_dir, double copy_gb_per_s, double gemm_tflop_per_s) {
    char script_path[4200];
    snprintf(script_path, sizeof script_path, "%s/roofline.gp", charts_dir);
    FILE *script = fopen(script_path, "w");
    if (!script) return false;
    const char *formats[2][2] = {{"svg size 800,520 dynamic", "svg"}, {"png size 800,520", "png"}};
    for (int f = 0; f < 2; f++)
        fprintf(script,
                "set terminal %s\nset output '%s/roofline.%s'\nset title 'Kernels on the roofline (ceilings measured in the same run)'\n"
                "set logscale xy 10\nset grid\nset key left top\nset xlabel 'arithmetic intensity (flop/byte)'\n"
                "set ylabel 'TFLOP/s'\nset xrange [0.01:1e6]\nset yrange [0.001:%g]\nset samples 400\nset termoption noenhanced\n"
                "roof(x) = (x * %g / 1000 < %g) ? x * %g / 1000 : %g\n"
                "plot roof(x) with lines lw 2 title 'roofline (%.0f GB/s, %.0f TFLOP/s)', "
                "'%s/roofline.dat' using 1:2 with points pt 7 title 'kernels cases', "
                "'' using 1:2:3 with labels offset 0.5,0.5 left font ',7' notitle\n",
                formats[f][0], charts_dir, formats[f][1], gemm_tflop_per_s * 3, copy_gb_per_s, gemm_tflop_per_s, copy_gb_per_s,
                gemm_tflop_per_s, copy_gb_per_s, gemm_tflop_per_s, charts_dir);
    fclose(script);
    char command[8600];
    snprintf(command, sizeof command, "gnuplot '%s' >> '%s/gnuplot.log' 2>&1", script_path, charts_dir);
    return system(command) == 0;
}

/* 1.1: per throughput case with CUPTI records (tmbench run --profile), the launch shapes (kernel,
 * grid, block) that add the most to their streams' timelines per timed repetition: each launch's
 * time and its exposed part, the time past the end of every earlier record (kernel, copy or
 * memset) on its stream. Launched plainly (--profile's default) a launch's exposed part is its
 * time less any overlap the hardware allows; with TM_DEPENDENT_LAUNCH=1 a kernel that starts
 * early and waits for its predecessor inside counts that wait in its time but not in its exposed
 * part, which is then what it costs the step. One kernel serving several products (the decode
 * products of different sizes) shows once per shape. */
static void top_kernels_section(FILE *md, sqlite3 *db, int64_t run) {
    sqlite3_stmt *top;
    const char *cases_sql =
        "SELECT c.id, c.name, count(DISTINCT k.repetition), sum(k.end_ns - k.start_ns) FROM cases c JOIN "
        "kernel_records k ON k.case_id = c.id AND k.repetition >= 0 AND k.grid IS NOT NULL WHERE c.run_id = ? AND "
        "c.kind = 'throughput' GROUP BY c.id ORDER BY c.id";
    sqlite3_stmt *cases = statement_for_run(db, cases_sql, run);
    sqlite3_prepare_v2(db,
                       "WITH timeline AS (SELECT name, grid, block, start_ns, end_ns, max(end_ns) OVER (PARTITION BY repetition, "
                       "stream ORDER BY start_ns, end_ns, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before "
                       "FROM kernel_records WHERE case_id = ? AND repetition >= 0) "
                       "SELECT name, grid, block, count(*), sum(end_ns - start_ns), "
                       "sum(max(0, end_ns - max(start_ns, coalesce(before, start_ns)))) AS exposed FROM timeline "
                       "WHERE grid IS NOT NULL GROUP BY name, grid, block ORDER BY exposed DESC, 5 DESC, 1, 2 LIMIT 8",
                       -1, &top, NULL);
    int shown = 0;
    fprintf(md, "\n### 1.1 Where the GPU time goes\n\n");
    while (sqlite3_step(cases) == SQLITE_ROW) {
        int64_t case_id = sqlite3_column_int64(cases, 0);
        int repetitions = sqlite3_column_int(cases, 2);
        double total_ns = sqlite3_column_double(cases, 3);
        fprintf(md, "%s**%s**: %.3f ms of kernels per repetition (%d repetitions recorded)\n\n"
                    "| kernel | grid | block | launches per repetition | time a launch | exposed a launch | time per repetition | share |\n"
                    "|---|---|---|---|---|---|---|---|\n",
                shown ? "\n" : "", (const char *)sqlite3_column_text(cases, 1), total_ns / repetitions / 1e6, repetitions);
        sqlite3_reset(top);
        sqlite3_bind_int64(top, 1, case_id);
        while (sqlite3_step(top) == SQLITE_ROW) {
            char name[120];
            snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(top, 0));
            for (char *c = name; *c; c++)
                if (*c == '|') *c = '/'; /* keep the table intact */
            double launches = sqlite3_column_double(top, 3), ns = sqlite3_column_double(top, 4), exposed = sqlite3_column_double(top, 5);
            fprintf(md, "| `%s` | %s | %s | %.1f | %.2f us | %.2f us | %.1f us | %.1f %% |\n", name, text_or(top, 1, "?"),
                    text_or(top, 2, "?"), launches / repetitions, ns / launches / 1e3, exposed / launches / 1e3, ns / repetitions / 1e3,
                    100.0 * ns / total_ns);
        }
        shown++;
    }
    if (!shown) fprintf(md, "not measured: no throughput case of this run was profiled (tmbench run --profile).\n");
    else
        fprintf(md, "\nExposed: the part of a launch past the end of every earlier record on its stream, what it adds to the "
                    "stream's timeline. `--profile` launches kernels plainly unless TM_DEPENDENT_LAUNCH is set; with "
                    "TM_DEPENDENT_LAUNCH=1 kernels start early and wait for their predecessor inside, so a launch's time then "
                    "counts that wait and its exposed part is what it costs the step.\n");
    sqlite3_finalize(cases), sqlite3_finalize(top);
}

/* 2.1: every kernels case with its time and its share of the ceilings measured in the same run. */
static int kernels_section(FILE *md, sqlite3 *db, int64_t run, const char *charts_dir, double *copy_out, double *gemm_out) {
    const char *sql =
        "SELECT c.name, c.status, t.median, t.relative_noise, g.median, f.median, pb.median, pf.median, g.ceiling, "
        "f.ceiling, json_extract(c.params, '$.op'), json_extract(c.params, '$.head_dim'), "
        "json_extract(c.params, '$.tokens'), hc.bytes, hc.flops, hc.ns, pr.median FROM cases c "
        "LEFT JOIN (SELECT case_id, sum(CASE WHEN counter = 'dram_bytes' THEN value END) AS bytes, "
        "sum(CASE WHEN counter IN ('fp32_flops', 'fp16_flops', 'tensor_flops') THEN value END) AS flops, "
        "sum(CASE WHEN counter = 'gpu_time_ns' THEN value END) AS ns FROM hardware_counters "
        "WHERE scope LIKE 'kernel %' AND scope NOT LIKE '%flush_read_kernel%' GROUP BY case_id) hc ON hc.case_id = c.id "
        "LEFT JOIN metrics t ON t.case_id = c.id AND t.metric = 'time_us' "
        "LEFT JOIN metrics g ON g.case_id = c.id AND g.metric = 'gb_per_s' "
        "LEFT JOIN metrics f ON f.case_id = c.id AND f.metric = 'tflop_per_s' "
        "LEFT JOIN metrics pb ON pb.case_id = c.id AND pb.metric = 'pct_of_copy_bandwidth' "
        "LEFT JOIN metrics pf ON pf.case_id = c.id AND pf.metric = 'pct_of_gemm_flops' "
        "LEFT JOIN metrics pr ON pr.case_id = c.id AND pr.metric = 'pct_of_same_size_read' "
        "WHERE c.run_id = ? AND c.kind = 'kernels' ORDER BY c.id";
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    int rows = 0;
    double copy_ceiling = 0, gemm_ceiling = 0;
    char data_path[4200];
    snprintf(data_path, sizeof data_path, "%s/roofline.dat", charts_dir);
    FILE *data = fopen(data_path, "w"); /* arithmetic intensity (flop/byte), TFLOP/s, label: the roofline chart */
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (!rows)
            fprintf(md, "| case | time (us) | GB/s | TFLOP/s | %% of copy bandwidth | %% of a same-size read | %% of GEMM flops | "
                        "counters: DRAM GB/s | counters: TFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n");
        rows++;
        const char *op = text_or(s, 10, "");
        int head_dim = sqlite3_column_int(s, 11), tokens = sqlite3_column_int(s, 12);
        bool guide_row = !strcmp(op, "flash") && ((head_dim == 128 && tokens == 4096) || (head_dim == 256 && tokens == 8192));
        if (sqlite3_column_type(s, 2) == SQLITE_NULL) {
            fprintf(md, "| %s | not measured (%s) | | | | | | | |\n", (const char *)sqlite3_column_text(s, 0), text_or(s, 1, "?"));
            continue;
        }
        if (sqlite3_column_type(s, 8) != SQLITE_NULL) copy_ceiling = sqlite3_column_double(s, 8);
        if (sqlite3_column_type(s, 9) != SQLITE_NULL) gemm_ceiling = sqlite3_column_double(s, 9);
        double gb = sqlite3_column_double(s, 4), tflops = sqlite3_column_double(s, 5);
        if (data && gb > 0 && tflops > 0) {
            const char *name = (const char *)sqlite3_column_text(s, 0), *slash = strchr(name, '/');
            fprintf(data, "%.6g %.6g \"%s\"\n", tflops * 1e3 / gb, tflops, slash ? slash + 1 : name);
        }
        /* hardware counters of the op's kernels (the counter pass, without the L2 flush): what the card saw */
        char counted_gb[32] = "–", counted_tflops[32] = "–";
        const double counted_ns = sqlite3_column_double(s, 15);
        if (sqlite3_column_type(s, 15) != SQLITE_NULL && counted_ns > 0) {
            snprintf(counted_gb, sizeof counted_gb, "%.4g", sqlite3_column_double(s, 13) / counted_ns);
            snprintf(counted_tflops, sizeof counted_tflops, "%.4g", sqlite3_column_double(s, 14) / counted_ns / 1e3);
        }
        /* the case's own ceiling: a read of its bytes in one launch (runs before it had none: "–") */
        char same_size[32] = "–";
        if (sqlite3_column_type(s, 16) != SQLITE_NULL && sqlite3_column_double(s, 16) > 0)
            snprintf(same_size, sizeof same_size, "%.1f", sqlite3_column_double(s, 16));
        fprintf(md, "| %s%s | %.4g ± %.1f %% | %.4g | %.4g | %.1f | %s | %.1f | %s | %s |\n", (const char *)sqlite3_column_text(s, 0),
                guide_row ? " (guide row)" : "", sqlite3_column_double(s, 2), 100 * sqlite3_column_double(s, 3),
                sqlite3_column_double(s, 4), sqlite3_column_double(s, 5), sqlite3_column_double(s, 6), same_size,
                sqlite3_column_double(s, 7), counted_gb, counted_tflops);
    }
    sqlite3_finalize(s);
    if (data) fclose(data);
    *copy_out = copy_ceiling, *gemm_out = gemm_ceiling;
    if (!rows) fprintf(md, "not measured: this run has no kernels cases.\n");
    else
        fprintf(md, "\nCeilings measured in the same run: device-to-device copy %.0f GB/s, 16-bit GEMM %.0f TFLOP/s. Each "
                    "repetition is one run timed with CUDA events after an L2 flush (a `chain` case: that many launches "
                    "back to back, each over its own copy of the weights, timed together and reported per launch); the "
                    "same-size read is each case's own ceiling: one launch reading the case's bytes, all requested at once, "
                    "chained as the case is; attention flops count 4 per "
                    "(query, key, dimension), causal cases half the pairs. The counters columns (runs with --counters) "
                    "are the DRAM bytes and the FP32 + FP16 + tensor flops the hardware counted for the op's kernels, "
                    "over their GPU time.\n",
                copy_ceiling, gemm_ceiling);
    return rows;
}

/* Kernels cases measured under a sustained load (power_seconds): the board's power and clock while
 * the op ran back to back; nothing where the run has none. */
static void kernel_power_section(FILE *md, sqlite3 *db, int64_t run) {
    const char *sql = "SELECT c.name, s.median, p.median, p.relative_noise, j.median, k.median FROM cases c "
                      "JOIN metrics p ON p.case_id = c.id AND p.metric = 'power_w' "
                      "LEFT JOIN metrics s ON s.case_id = c.id AND s.metric = 'sustained_gb_per_s' "
                      "LEFT JOIN metrics j ON j.case_id = c.id AND j.metric = 'joules_per_gb' "
                      "LEFT JOIN metrics k ON k.case_id = c.id AND k.metric = 'sm_clock_mhz' "
                      "WHERE c.run_id = ? AND c.kind = 'kernels' ORDER BY c.id";
    sqlite3_stmt *s = statement_for_run(db, sql, run);
    int rows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (!rows++)
            fprintf(md, "\nUnder a sustained load (cases with `power_seconds`: the op's chain run back to back, no flushes, "
                        "after a warm-up; the GPU's NVML power samples over the window, its SM clock polled meanwhile):\n\n"
                        "| case | sustained GB/s | board power (W) | J per GB moved | SM clock (MHz) |\n|---|---|---|---|---|\n");
        fprintf(md, "| %s | %.4g | %.4g ± %.1f %% | %.3g | %.0f |\n", (const char *)sqlite3_column_text(s, 0), sqlite3_column_double(s, 1),
                sqlite3_column_double(s, 2), 100 * sqlite3_column_double(s, 3), sqlite3_column_double(s, 4), sqlite3_column_double(s, 5));
    }
    sqlite3_finalize(s);
}

int tm_command_report(int argc, char **argv) {
    const char *db_path = TM_DEFAULT_DB, *out_dir = "reports", *run_spec = NULL, *roadmap = NULL;
    bool include_incomplete = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (tm_is_help_option(a)) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--include-incomplete")) {
            include_incomplete = true;
        } else if ((!strcmp(a, "--run") || !strcmp(a, "--branch") || !strcmp(a, "--commit") || !strcmp(a, "-o") ||
                    !strcmp(a, "--db") || !strcmp(a, "--roadmap")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "-o")) out_dir = v;
            else if (!strcmp(a, "--db")) db_path = v;
            else if (!strcmp(a, "--roadmap")) roadmap = v;
            else run_spec = v;
        } else {
            fprintf(stderr, "tmbench report: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    tm_error_t error = {0};
    tm_store *store;
    if (tm_store_open(db_path, &store, &error)) {
        fprintf(stderr, "tmbench report: %s\n", error.message);
        return 1;
    }
    sqlite3 *db = tm_store_db(store);
    int64_t run = -1;
    if (run_spec) {
        if (tm_store_resolve_run(store, run_spec, include_incomplete, &run, &error)) {
            fprintf(stderr, "tmbench report: %s\n", error.message);
            tm_store_close(store);
            return 1;
        }
    } else {
        sqlite3_stmt *s;
        sqlite3_prepare_v2(db, "SELECT max(id) FROM runs WHERE ?1 OR status = 'complete'", -1, &s, NULL);
        sqlite3_bind_int(s, 1, include_incomplete);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) run = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        if (run < 0) {
            fprintf(stderr, "tmbench report: %s holds no complete run (run a suite first, or --include-incomplete)\n", db_path);
            tm_store_close(store);
            return 1;
        }
    }
    char charts_dir[4096], md_path[4096];
    snprintf(charts_dir, sizeof charts_dir, "%s/charts", out_dir);
    snprintf(md_path, sizeof md_path, "%s/PERFORMANCE.md", out_dir);
    if ((mkdir(out_dir, 0755) != 0 && errno != EEXIST) || (mkdir(charts_dir, 0755) != 0 && errno != EEXIST)) {
        fprintf(stderr, "tmbench report: cannot create %s: %s\n", charts_dir, strerror(errno));
        tm_store_close(store);
        return 1;
    }
    FILE *md = fopen(md_path, "w");
    if (!md) {
        fprintf(stderr, "tmbench report: cannot write %s: %s\n", md_path, strerror(errno));
        tm_store_close(store);
        return 1;
    }
    fprintf(md, "# TensorMesh Performance Guide\n\n<!-- generated by tmbench report from %s; edit the suites or "
                "reports/ROADMAP.md, not this file -->\n\n", db_path);
    hardware_block(md, db, run);
    fprintf(md, "---\n\n## 1. End-to-end throughput\n\n");
    chart_lines lines;
    int throughput_rows = throughput_section(md, db, run, charts_dir, &lines);
    bool charts = lines.n > 0 && have_gnuplot() && draw_charts(charts_dir, &lines);
    if (charts)
        fprintf(md, "\n![decode throughput vs batch](charts/throughput_vs_batch.svg) "
                    "![decode step latency percentiles](charts/latency_percentiles.svg)\n\n"
                    "Charts: [throughput vs batch](charts/throughput_vs_batch.svg) "
                    "([PNG](charts/throughput_vs_batch.png)), [latency percentiles](charts/latency_percentiles.svg) "
                    "([PNG](charts/latency_percentiles.png)).\n");
    else if (throughput_rows)
        fprintf(md, "\nCharts: not drawn (gnuplot is not installed).\n");
    fprintf(md, "\nDecode tokens/s counts every sequence's tokens; ± is the relative noise (stdev/mean) over the "
                "repetitions. The roofline is what the bytes a decode step must read allow at the bandwidth ceiling measured "
                "in the same run on the same device (a GPU's device-to-device copy, the figure ../shared/docs/TARGETS.md "
                "divides by; the host's memory read with the engine's threads on the CPU): batch x ceiling / (the weights a "
                "forward pass reads whole, the token-embedding table excluded unless it is also the output head, + every "
                "sequence's KV cache at the decode steps' mean context); decode GB/s is those bytes a step times the steps a "
                "second. J per decode token: the device's own energy meters over each repetition's decode phase, divided by "
                "its tokens (a GPU's NVML power samples, every ~20 ms, integrated over the phase, or its energy counter "
                "where the samples do not reach back that far; RAPL on the CPU packages; \"not measured\" where nothing "
                "was readable); a counter advances in steps (every 100 ms on an H200), so a short decode phase measured "
                "by one alone is a noisy sample, and the ± says how noisy.\n");
    long_prompt_section(md, db, run);
    top_kernels_section(md, db, run);
    fprintf(md, "\n---\n\n## 2. Micro-benchmarks\n\n### 2.1 Kernels\n\n");
    double copy_ceiling = 0, gemm_ceiling = 0;
    int kernel_rows = kernels_section(md, db, run, charts_dir, &copy_ceiling, &gemm_ceiling);
    kernel_power_section(md, db, run);
    if (kernel_rows && copy_ceiling > 0 && gemm_ceiling > 0) {
        if (have_gnuplot() && draw_roofline(charts_dir, copy_ceiling, gemm_ceiling))
            fprintf(md, "\n![kernels on the roofline](charts/roofline.svg)\n\nChart: [roofline](charts/roofline.svg) "
                        "([PNG](charts/roofline.png)).\n");
        else
            fprintf(md, "\nRoofline chart: not drawn (gnuplot is not installed).\n");
    }
    fprintf(md, "\n### 2.2 Zero-copy IPC latency\n\nnot measured: this run has no ipc cases.\n\n---\n\n"
                "## 3. Memory efficiency\n\n");
    memory_section(md, db, run);
    fprintf(md, "\n---\n\n## 4. Scaling study\n\nnot measured: this run has no scaling cases.\n\n---\n\n"
                "## 5. Profiling with this project\n\n"
                "```bash\n"
                "build/bin/tmbench run suites/smoke.yaml --filter 'smoke/batch=1*'   # one case, every sample stored\n"
                "build/bin/tmbench diff main HEAD                                     # regressions between two runs\n"
                "build/bin/tensormesh bench gemv --threads 2                          # CPU kernels vs the memory-read ceiling\n"
                "perf record -g build/bin/tensormesh generate -m MODEL.gguf -p hi -n 32 && perf report   # CPU hot spots\n"
                "```\n\nEvery sample lives in the results database (`%s`): `sqlite3 %s 'SELECT * FROM metrics'`.\n\n"
                "---\n\n## 6. Road-map\n\n", TM_DEFAULT_DB, TM_DEFAULT_DB);
    FILE *road = fopen(roadmap ? roadmap : "reports/ROADMAP.md", "r");
    if (road) {
        char line[1024];
        while (fgets(line, sizeof line, road))
            if (line[0] != '#') fputs(line, md); /* the file's own heading is replaced by ours */
        fclose(road);
    } else {
        fprintf(md, "not written: %s is missing.\n", roadmap ? roadmap : "reports/ROADMAP.md");
    }
    fclose(md);
    tm_store_close(store);
    printf("%s written from run %lld%s\n", md_path, (long long)run, charts ? " (with charts)" : "");
    return 0;
}
