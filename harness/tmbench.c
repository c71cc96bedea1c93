/*
 * tmbench.c - the benchmark harness command: run suites into the SQLite store, list cases, list
 * stored runs.
 *
 * Guarantees: every sample is stored the moment it is measured; Ctrl-C (SIGINT) or SIGTERM
 * finishes the current write, marks the current case failed and the run interrupted, and exits
 * 130; a run killed outright keeps status 'running' (incomplete) and is left out of reports.
 * Exit status: 0 ok, 1 a case or the run failed, 2 bad usage or a bad suite file.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "common.h"
#include "environment.h"
#include "counters.h"
#include "profiler.h"
#include "runner.h"
#include "stats.h"
#include "store.h"
#include "suite.h"

#define DEFAULT_DB TM_DEFAULT_DB
#define MAX_REPETITIONS 10000

static volatile sig_atomic_t interrupted;
static void on_signal(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: tmbench run SUITE.yaml... [--filter GLOB] [--db PATH] [--tag K=V]... [--profile] [--counters] [--ncu GLOB]\n"
            "                   [--dry-run]\n"
            "       tmbench list SUITE.yaml...\n"
            "       tmbench runs [--db PATH] [--all] [--branch B] [--tag K=V] [--ids]\n"
            "       tmbench report [--run ID|--branch B|--commit C] [-o DIR] [--db PATH]\n"
            "       tmbench diff BASE HEAD [--threshold PCT] [--alpha P] [--format md|csv|json] [--db PATH]\n"
            "       tmbench export --format csv|json|md|sql [--db PATH] [--all]\n\n"
            "  run      run every case of the suites (cases whose name matches GLOB with --filter),\n"
            "           storing each sample in the database (default " DEFAULT_DB "); --profile also\n"
            "           records every kernel, copy and NVTX range (CUPTI) per repetition (kernels launched plainly\n"
            "           unless TM_DEPENDENT_LAUNCH is set, so a record is not its wait); --counters adds one\n"
            "           untimed repetition per case under the CUPTI range profiler (per kernel: DRAM bytes, flops,\n"
            "           tensor ops, utilization); --ncu GLOB runs the matching cases under Nsight Compute and tags\n"
            "           the run with the report's path\n"
            "  list     print the expanded cases of suite files\n"
            "  runs     print the stored runs (--all: incomplete ones too; --ids: their ids only)\n"
            "  report   regenerate the performance guide (DIR/PERFORMANCE.md, gnuplot charts) from a run\n"
            "  diff     compare two runs case by case (Mann-Whitney U); exit 1 when anything is SLOWER\n"
            "  export   metric summaries as csv/json/markdown, or the whole database as SQL\n"
            "A case's name is SUITE/axis=value,...; suites are YAML (see suites/README.md).\n");
}

static uint64_t fnv1a(uint64_t hash, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) hash = (hash ^ p[i]) * 0x100000001b3ull;
    return hash;
}

/* FNV-1a 64 over the bytes of every suite file, as hex. */
static void hash_files(char **paths, int n, char out[17]) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(paths[i], "rb");
        unsigned char buffer[65536];
        size_t got;
        while (f && (got = fread(buffer, 1, sizeof buffer, f)) > 0) hash = fnv1a(hash, buffer, got);
        if (f) fclose(f);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)hash);
}

typedef struct loaded {
    tm_suite *suite;
    tm_suite_case *cases;
    int n_cases;
} loaded;

static int load_all(char **paths, int n, const char *filter, loaded *out, int *total) {
    *total = 0;
    for (int i = 0; i < n; i++) {
        tm_error_t error = {0};
        if (tm_suite_load(paths[i], &out[i].suite, &error) ||
            tm_suite_expand(out[i].suite, &out[i].cases, &out[i].n_cases, &error)) {
            fprintf(stderr, "tmbench: %s\n", error.message);
            return 2;
        }
        if (!tm_runner_for_kind(out[i].suite->kind)) {
            fprintf(stderr, "tmbench: %s: kind '%s' has no runner in this build (throughput, memory)\n", paths[i],
                    out[i].suite->kind);
            return 2;
        }
        int kept = 0;
        for (int k = 0; k < out[i].n_cases; k++) {
            if (filter && fnmatch(filter, out[i].cases[k].name, 0) != 0) continue;
            tm_suite_case moved = out[i].cases[k];
            out[i].cases[k] = out[i].cases[kept];
            out[i].cases[kept++] = moved;
        }
        /* the cases past `kept` are the filtered-out ones: free them */
        for (int k = kept; k < out[i].n_cases; k++) {
            tm_suite_case *c = &out[i].cases[k];
            for (int p = 0; p < c->n_params; p++) free(c->params[p].name), free(c->params[p].value);
            free(c->params);
            free(c->name);
        }
        out[i].n_cases = kept;
        *total += kept;
    }
    return 0;
}

static void free_all(loaded *suites, int n) {
    for (int i = 0; i < n; i++) {
        tm_suite_cases_free(suites[i].cases, suites[i].n_cases);
        tm_suite_free(suites[i].suite);
    }
}

/* Whether the arguments after the subcommand ask for its usage: -h / --help anywhere except as the
 * value of one of the subcommand's `value_options` (NULL-terminated; NULL: none), so
 * `run S.yaml --filter -h` filters by "-h". */
static bool asks_for_help(int argc, char **argv, const char *const *value_options) {
    for (int i = 1; i < argc; i++) {
        if (tm_is_help_option(argv[i])) return true;
        for (const char *const *option = value_options; option && *option; option++)
            if (!strcmp(argv[i], *option)) {
                i++; /* its value, whatever it looks like */
                break;
            }
    }
    return false;
}

static int command_list(int argc, char **argv) {
    if (asks_for_help(argc, argv, NULL)) {
        usage(stdout);
        return 0;
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    loaded *suites = calloc((size_t)argc, sizeof *suites);
    int total, status = load_all(argv + 1, argc - 1, NULL, suites, &total);
    for (int i = 0; !status && i < argc - 1; i++) {
        const tm_suite *s = suites[i].suite;
        printf("# %s: %s, %d cases, model %s, warmup %d, stop: >= %d repetitions, >= %g s, noise <= %g, timeout %g s\n",
               s->path, s->kind, suites[i].n_cases, s->model ? s->model : "-", s->warmup, s->min_repetitions, s->min_seconds,
               s->max_relative_noise, s->timeout_seconds);
        for (int k = 0; k < suites[i].n_cases; k++) {
            char *json = tm_case_params_json(&suites[i].cases[k]);
            printf("%s  %s\n", suites[i].cases[k].name, json ? json : "");
            free(json);
        }
    }
    free_all(suites, argc - 1);
    free(suites);
    return status;
}

/* Run one case: warm-up, repetitions until the stopping rule holds, samples and summaries stored. */
/* --counters: one more repetition, untimed, under the range profiler (counters.h); its kernels'
 * activity records, with --profile, go to repetition -2000. A failure (counters not permitted,
 * say) is reported and turns counters off for the rest of the run; timing results stay. */
static void counter_pass(tm_store *store, int64_t case_id, const tm_runner *runner, tm_runner_state *state, tm_profiler *profiler,
                         tm_counters **counters) {
    tm_error_t error = {0};
    int n_kernels = 0;
    double values[TM_MAX_METRICS];
    tm_status status = tm_counters_begin_pass(*counters, &error);
    if (!status) {
        tm_status repeated = runner->repeat(state, values, &error);
        tm_error_t end_error = {0};
        status = tm_counters_end_pass(*counters, store, case_id, &n_kernels, &end_error);
        if (repeated) status = repeated;
        else if (status) error = end_error;
    }
    if (profiler) { /* the pass's activity records, whatever became of the counters */
        tm_error_t collect_error = {0};
        if (tm_profiler_collect(profiler, store, case_id, -2000, &collect_error))
            fprintf(stderr, "      profile: %s\n", collect_error.message);
    }
    if (status) {
        fprintf(stderr, "      counters: %s; no counters for the rest of this run (timing unaffected)\n", error.message);
        tm_counters_stop(*counters);
        *counters = NULL;
        return;
    }
    printf("      counters: %d kernels\n", n_kernels);
}

static tm_status run_case(tm_store *store, int64_t run_id, const tm_suite *suite, const tm_suite_case *c,
                          const tm_runner *runner, tm_runner_state **state, tm_profiler *profiler, tm_counters **counters,
                          tm_error_t *error) {
    char *json = tm_case_params_json(c);
    int64_t case_id;
    tm_status status = tm_store_begin_case(store, run_id, suite->name, suite->kind, c->name, json ? json : "{}", tm_case_param(c, "model", suite->model),
                                           &case_id, error);
    free(json);
    if (status) return status;
    double *samples[TM_MAX_METRICS] = {0};
    for (int m = 0; m < runner->n_metrics; m++) samples[m] = malloc(MAX_REPETITIONS * sizeof(double));
    double values[TM_MAX_METRICS];
    int counts[TM_MAX_METRICS] = {0}; /* samples of each metric (a metric may go unmeasured in a repetition) */
    const char *outcome = "complete", *message = NULL;
    char message_buffer[600];
    status = runner->prepare(state, suite, c, error);
    if (!status) status = tm_profiler_collect(profiler, store, case_id, -1000, error); /* set-up (model load...): repetition -1000 */
    for (int w = 0; !status && w < suite->warmup && !interrupted; w++) {
        status = runner->repeat(*state, values, error);
        if (!status) status = tm_profiler_collect(profiler, store, case_id, -(w + 1), error); /* warm-ups: -1, -2, ... */
    }
    int n = 0;
    double started = tm_time_seconds();
    while (!status && !interrupted && n < MAX_REPETITIONS) {
        double elapsed = tm_time_seconds() - started;
        if (n >= suite->min_repetitions && elapsed >= suite->min_seconds) {
            tm_summary primary;
            tm_summarize(samples[0], (size_t)counts[0], 0, 0, &primary);
            if (primary.relative_noise <= suite->max_relative_noise) break;
        }
        if (suite->timeout_seconds > 0 && elapsed >= suite->timeout_seconds) {
            outcome = n >= suite->min_repetitions ? "complete" : "timeout";
            break;
        }
        if ((status = runner->repeat(*state, values, error))) break;
        if ((status = tm_profiler_collect(profiler, store, case_id, n, error))) break;
        for (int m = 0; m < runner->n_metrics && !status; m++) {
            if (isnan(values[m]) && m > 0) continue; /* not measured in this repetition (energy without a counter): no sample */
            samples[m][counts[m]++] = values[m];
            status = tm_store_add_sample(store, case_id, runner->metrics[m].name, n, values[m], error);
        }
        n++;
    }
    if (!status && !interrupted && n > 0 && *counters) counter_pass(store, case_id, runner, *state, profiler, counters);
    if (status) {
        outcome = "failed";
        snprintf(message_buffer, sizeof message_buffer, "%s", error->message);
        message = message_buffer;
    } else if (interrupted) {
        outcome = "failed";
        message = "interrupted";
    }
    for (int m = 0; m < runner->n_metrics && n > 0; m++) {
        if (counts[m] == 0) continue; /* never measured: no summary */
        tm_summary summary;
        tm_summarize(samples[m], (size_t)counts[m], 1000, (uint64_t)case_id, &summary);
        tm_error_t ignored;
        tm_store_put_metric(store, case_id, runner->metrics[m].name, runner->metrics[m].unit,
                            runner->metrics[m].better, &summary, runner->ceiling ? runner->ceiling(*state, m) : 0,
                            &ignored);
        if (m == 0)
            printf("      %s %.4g %s median (p10 %.4g, p90 %.4g, noise %.1f %%, n %d)\n", runner->metrics[m].name,
                   summary.median, runner->metrics[m].unit, summary.p10, summary.p90, 100 * summary.relative_noise, n);
    }
    tm_error_t finish_error;
    tm_store_finish_case(store, case_id, outcome, message, &finish_error);
    for (int m = 0; m < runner->n_metrics; m++) free(samples[m]);
    return status;
}

/* --ncu GLOB: the matching cases again, as a child tmbench under Nsight Compute (NVTX-aware,
 * every process), its report next to the database; the child's run carries the report's path as
 * the tag ncu_report. */
static int run_under_ncu(int argc, char **argv, char **paths, int n_paths, const char *glob, const char *db_path) {
    const char *ncu = NULL;
    if (system("command -v ncu > /dev/null 2>&1") == 0) ncu = "ncu";
    else if (access("/usr/local/cuda/bin/ncu", X_OK) == 0) ncu = "/usr/local/cuda/bin/ncu";
    if (!ncu) {
        fprintf(stderr, "tmbench run --ncu: Nsight Compute (ncu) is not installed (not on PATH, not in /usr/local/cuda/bin)\n");
        return 1;
    }
    char self[4096];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        fprintf(stderr, "tmbench run --ncu: cannot find this program's path: %s\n", strerror(errno));
        return 1;
    }
    self[length] = 0;
    char report[4600], tag[4700], folder[4200];
    const char *slash = strrchr(db_path, '/');
    snprintf(folder, sizeof folder, "%.*sncu", slash ? (int)(slash - db_path + 1) : 0, db_path);
    mkdir(folder, 0755);
    char safe[200];
    snprintf(safe, sizeof safe, "%s", glob);
    for (char *c = safe; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=,", *c)) *c = '_';
    snprintf(report, sizeof report, "%s/%s-%ld", folder, safe, (long)time(NULL));
    snprintf(tag, sizeof tag, "ncu_report=%s.ncu-rep", report);
    const char *child[200];
    int n = 0;
    /* the first 200 kernels of the cases (warm-up and first repetitions: the same work again and
     * again), so a case of thousands of repetitions does not take hours; the rest runs unprofiled */
    const char *ncu_flags[] = {ncu, "--nvtx", "--target-processes", "all", "--set", "full", "--launch-count", "200", "-f", "-o", report,
                               self, "run"};
    for (size_t k = 0; k < sizeof ncu_flags / sizeof ncu_flags[0]; k++) child[n++] = ncu_flags[k];
    for (int k = 0; k < n_paths && n < 180; k++) child[n++] = paths[k];
    child[n++] = "--filter", child[n++] = glob, child[n++] = "--db", child[n++] = db_path, child[n++] = "--tag", child[n++] = tag;
    for (int k = 1; k < argc && n < 196; k++) /* keep the caller's tags */
        if (!strcmp(argv[k], "--tag") && k + 1 < argc) child[n++] = argv[k], child[n++] = argv[++k];
    child[n] = NULL;
    printf("tmbench run --ncu: profiling the first 200 kernels of the cases matching %s under %s (slow: each is replayed)\n", glob,
           ncu);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execvp(child[0], (char *const *)child);
        fprintf(stderr, "tmbench run --ncu: cannot run %s: %s\n", child[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) {
        fprintf(stderr, "tmbench run --ncu: %s\n", strerror(errno));
        return 1;
    }
    char file[4700];
    snprintf(file, sizeof file, "%s.ncu-rep", report);
    if (access(file, R_OK) == 0) printf("tmbench run --ncu: report %s (its path is the run's ncu_report tag)\n", file);
    else fprintf(stderr, "tmbench run --ncu: no report was written (no kernel ran? see ncu's output above)\n");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int command_run(int argc, char **argv) {
    const char *db_path = DEFAULT_DB, *filter = NULL;
    bool dry_run = false, profile = false, want_counters = false;
    const char *ncu_case = NULL;
    char *paths[64], tags[2048] = "{";
    int n_paths = 0;
    size_t tags_length = 1;
    static const char *const value_options[] = {"--db", "--filter", "--tag", "--ncu", NULL};
    if (asks_for_help(argc, argv, value_options)) {
        usage(stdout);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--dry-run")) dry_run = true;
        else if (!strcmp(a, "--profile")) profile = true;
        else if (!strcmp(a, "--counters")) want_counters = true;
        else if ((!strcmp(a, "--db") || !strcmp(a, "--filter") || !strcmp(a, "--tag") || !strcmp(a, "--ncu")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--db")) db_path = v;
            else if (!strcmp(a, "--ncu")) ncu_case = v;
            else if (!strcmp(a, "--filter")) filter = v;
            else {
                const char *equals = strchr(v, '=');
                if (!equals || equals == v || strpbrk(v, "\"\\")) {
                    fprintf(stderr, "tmbench run: --tag '%s' must be KEY=VALUE (no quotes or backslashes)\n", v);
                    return 2;
                }
                tags_length += (size_t)snprintf(tags + tags_length, sizeof tags - tags_length, "%s\"%.*s\": \"%s\"",
                                                tags_length > 1 ? ", " : "", (int)(equals - v), v, equals + 1);
                if (tags_length >= sizeof tags - 2) {
                    fprintf(stderr, "tmbench run: too many --tag values\n");
                    return 2;
                }
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "tmbench run: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (n_paths < 64) {
            paths[n_paths++] = argv[i];
        }
    }
    snprintf(tags + tags_length, sizeof tags - tags_length, "}");
    if (n_paths == 0) {
        usage(stderr);
        return 2;
    }
    loaded suites[64] = {{0}};
    int total, status = load_all(paths, n_paths, filter, suites, &total);
    if (!status && total == 0) { /* --dry-run too: an empty list would look like success */
        fprintf(stderr, "tmbench run: no case matches%s%s\n", filter ? " --filter " : "", filter ? filter : "");
        free_all(suites, n_paths);
        return 2;
    }
    if (status || dry_run) {
        for (int i = 0; !status && i < n_paths; i++)
            for (int k = 0; k < suites[i].n_cases; k++) printf("%s\n", suites[i].cases[k].name);
        free_all(suites, n_paths);
        return status;
    }
    if (ncu_case) {
        free_all(suites, n_paths);
        return run_under_ncu(argc, argv, paths, n_paths, ncu_case, db_path);
    }
    char *slash = strrchr(db_path, '/');
    if (slash) { /* create the database's folder */
        char folder[4096];
        snprintf(folder, sizeof folder, "%.*s", (int)(slash - db_path), db_path);
        if (folder[0] && mkdir(folder, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "tmbench run: cannot create %s: %s\n", folder, strerror(errno));
            free_all(suites, n_paths);
            return 1;
        }
    }
    tm_error_t error = {0};
    tm_store *store;
    if (tm_store_open(db_path, &store, &error)) {
        fprintf(stderr, "tmbench run: %s\n", error.message);
        free_all(suites, n_paths);
        return 1;
    }
    char suite_names[1024] = "", command[4096] = "", hash[17];
    for (int i = 0; i < n_paths; i++)
        snprintf(suite_names + strlen(suite_names), sizeof suite_names - strlen(suite_names), "%s%s", i ? "," : "",
                 suites[i].suite->name);
    for (int i = 0; i < argc; i++)
        snprintf(command + strlen(command), sizeof command - strlen(command), "%s%s", i ? " " : "tmbench ", argv[i]);
    hash_files(paths, n_paths, hash);
    tm_run_info info = {.suite_names = suite_names, .suite_hash = hash, .command_line = command, .tags_json = tags};
    tm_environment_collect(&info);
    int64_t run_id;
    if (tm_store_begin_run(store, &info, &run_id, &error)) {
        fprintf(stderr, "tmbench run: %s\n", error.message);
        tm_environment_free(&info);
        tm_store_close(store);
        free_all(suites, n_paths);
        return 1;
    }
    tm_profiler *profiler = NULL;
    if (profile && tm_profiler_start(&profiler, &error)) {
        fprintf(stderr, "tmbench run --profile: %s\n", error.message);
        tm_profiler_stop(profiler);
        profiler = NULL;
    }
    tm_counters *counters = NULL;
    if (want_counters && tm_counters_start(&counters, &error)) {
        fprintf(stderr, "tmbench run --counters: %s\n", error.message);
        tm_counters_stop(counters);
        counters = NULL;
    } else if (counters && tm_counters_missing(counters)[0]) {
        printf("counters: this chip lacks %s (left out)\n", tm_counters_missing(counters));
    }
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    printf("run %lld: %d cases -> %s\n", (long long)run_id, total, db_path);
    double started = tm_time_seconds();
    int done = 0, failures = 0;
    for (int i = 0; i < n_paths && !interrupted; i++) {
        const tm_runner *runner = tm_runner_for_kind(suites[i].suite->kind);
        tm_runner_state *state = NULL;
        for (int k = 0; k < suites[i].n_cases && !interrupted; k++) {
            double elapsed = tm_time_seconds() - started;
            double eta = done ? elapsed / done * (total - done) : 0;
            printf("[%d/%d] %s  (elapsed %.0f s, ETA %.0f s)\n", done + 1, total, suites[i].cases[k].name, elapsed, eta);
            fflush(stdout);
            if (run_case(store, run_id, suites[i].suite, &suites[i].cases[k], runner, &state, profiler, &counters, &error)) {
                fprintf(stderr, "      failed: %s\n", error.message);
                failures++;
            }
            done++;
        }
        runner->release(state);
    }
    tm_counters_stop(counters);
    if (profiler) {
        uint64_t kernels, memory, ranges, dropped;
        tm_profiler_totals(profiler, &kernels, &memory, &ranges, &dropped);
        printf("profile: %llu kernel records, %llu copies/memsets, %llu NVTX ranges, %llu records dropped\n",
               (unsigned long long)kernels, (unsigned long long)memory, (unsigned long long)ranges, (unsigned long long)dropped);
        tm_profiler_stop(profiler);
    }
    const char *outcome = interrupted ? "interrupted" : "complete";
    if (tm_store_finish_run(store, run_id, outcome, &error)) fprintf(stderr, "tmbench run: %s\n", error.message);
    printf("run %lld %s: %d cases, %d failed, %.1f s\n", (long long)run_id, outcome, done, failures,
           tm_time_seconds() - started);
    tm_environment_free(&info);
    tm_store_close(store);
    free_all(suites, n_paths);
    return interrupted ? 130 : failures ? 1 : 0;
}

static int command_runs(int argc, char **argv) {
    const char *db_path = DEFAULT_DB, *branch = NULL, *tag = NULL;
    bool all = false, ids_only = false;
    static const char *const value_options[] = {"--db", "--branch", "--tag", NULL};
    if (asks_for_help(argc, argv, value_options)) {
        usage(stdout);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) db_path = argv[++i];
        else if (!strcmp(argv[i], "--branch") && i + 1 < argc) branch = argv[++i];
        else if (!strcmp(argv[i], "--tag") && i + 1 < argc) tag = argv[++i];
        else if (!strcmp(argv[i], "--all")) all = true;
        else if (!strcmp(argv[i], "--ids")) ids_only = true;
        else {
            usage(stderr);
            return 2;
        }
    }
    char tag_key[256] = "", tag_value[256] = "";
    if (tag) {
        const char *equals = strchr(tag, '=');
        if (!equals || equals == tag || (size_t)(equals - tag) >= sizeof tag_key - 3) {
            fprintf(stderr, "tmbench runs: --tag '%s' must be KEY=VALUE\n", tag);
            return 2;
        }
        snprintf(tag_key, sizeof tag_key, "$.%.*s", (int)(equals - tag), tag);
        snprintf(tag_value, sizeof tag_value, "%s", equals + 1);
    }
    tm_error_t error = {0};
    tm_store *store;
    if (tm_store_open(db_path, &store, &error)) {
        fprintf(stderr, "tmbench runs: %s\n", error.message);
        return 1;
    }
    sqlite3_stmt *statement;
    const char *sql = "SELECT r.id, r.status, r.started_at, r.suite_names, coalesce(r.git_branch, '-'), "
                      "coalesce(substr(r.git_commit, 1, 10), '-'), r.git_dirty, (SELECT count(*) FROM cases c WHERE c.run_id = r.id) "
                      "FROM runs r WHERE (?1 OR r.status = 'complete') AND (?2 IS NULL OR r.git_branch = ?2) "
                      "AND (?3 = '' OR json_extract(r.tags, ?3) = ?4) ORDER BY r.id";
    if (sqlite3_prepare_v2(tm_store_db(store), sql, -1, &statement, NULL) != SQLITE_OK) {
        fprintf(stderr, "tmbench runs: %s: %s\n", db_path, sqlite3_errmsg(tm_store_db(store)));
        tm_store_close(store);
        return 1;
    }
    sqlite3_bind_int(statement, 1, all);
    if (branch) sqlite3_bind_text(statement, 2, branch, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(statement, 3, tag_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(statement, 4, tag_value, -1, SQLITE_TRANSIENT);
    if (!ids_only)
        printf("%5s  %-11s  %-20s  %-24s  %-16s  %-10s  %s\n", "run", "status", "started (UTC)", "suites", "branch", "commit",
               "cases");
    while (sqlite3_step(statement) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(statement, 1);
        if (ids_only) {
            printf("%lld\n", (long long)sqlite3_column_int64(statement, 0));
            continue;
        }
        printf("%5lld  %-11s  %-20s  %-24s  %-16s  %-10s%s  %d\n", (long long)sqlite3_column_int64(statement, 0),
               strcmp(status, "running") ? status : "incomplete", sqlite3_column_text(statement, 2),
               sqlite3_column_text(statement, 3), sqlite3_column_text(statement, 4), sqlite3_column_text(statement, 5),
               sqlite3_column_int(statement, 6) ? "+" : " ", sqlite3_column_int(statement, 7));
    }
    sqlite3_finalize(statement);
    tm_store_close(store);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || tm_is_help_option(argv[1])) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "run")) return command_run(argc - 1, argv + 1);
    if (!strcmp(argv[1], "list")) return command_list(argc - 1, argv + 1);
    if (!strcmp(argv[1], "runs")) return command_runs(argc - 1, argv + 1);
    if (!strcmp(argv[1], "diff")) return tm_command_diff(argc - 1, argv + 1);
    if (!strcmp(argv[1], "report")) return tm_command_report(argc - 1, argv + 1);
    if (!strcmp(argv[1], "export")) return tm_command_export(argc - 1, argv + 1);
    fprintf(stderr, "tmbench: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
