/*
 * suite.h - declarative benchmark suites (YAML) and their expansion into cases.
 *
 * A suite file:
 *   name: smoke                      # required
 *   kind: throughput                 # throughput | memory | kernels | ipc | scaling
 *   model: synthetic:tiny:q4_k_m     # a GGUF path or synthetic:PRESET:TYPE
 *   params: {threads: 2}             # fixed parameters of every case
 *   axes:                            # cartesian product, in the order written
 *     batch: [1, 2, 4]               #   a list
 *     prompt_tokens: {range: [16, 64, 16]}     # start, stop (inclusive), step
 *     seq_len: {powers_of_two: [128, 2048]}    # 128, 256, ..., 2048
 *   skip: [{batch: 4, prompt_tokens: 64}]      # cases matching every key of a rule are dropped
 *   warmup: 1                        # unmeasured repetitions per case
 *   stop: {min_repetitions: 3, min_seconds: 0.5, max_relative_noise: 0.05, timeout_seconds: 60}
 * Parameter names are checked against the kind's list. Every error names file:line:column and
 * the key, and suggests the nearest valid key.
 */
#ifndef TM_SUITE_H
#define TM_SUITE_H

#include "tensormesh.h"

typedef struct tm_suite_param {
    char *name;
    char *value; /* scalar text as written */
} tm_suite_param;

typedef struct tm_suite_axis {
    char *name;
    char **values;
    int n_values;
} tm_suite_axis;

typedef struct tm_suite_rule {
    tm_suite_param *params;
    int n_params;
} tm_suite_rule;

typedef struct tm_suite {
    char *path, *name, *kind, *model;
    tm_suite_param *params;
    int n_params;
    tm_suite_axis *axes;
    int n_axes;
    tm_suite_rule *skip;
    int n_skip;
    int warmup;
    int min_repetitions;
    double min_seconds, max_relative_noise, timeout_seconds;
} tm_suite;

typedef struct tm_suite_case {
    char *name;                /* SUITE/key=value,key=value over the axes (stable across runs) */
    tm_suite_param *params;    /* fixed params, then one value per axis */
    int n_params;
} tm_suite_case;

tm_status tm_suite_load(const char *path, tm_suite **out, tm_error_t *error);
void tm_suite_free(tm_suite *suite);
/* The cases in order (last axis fastest), skip rules applied. */
tm_status tm_suite_expand(const tm_suite *suite, tm_suite_case **cases, int *n_cases, tm_error_t *error);
void tm_suite_cases_free(tm_suite_case *cases, int n_cases);
/* Value of a case parameter, or fallback. */
const char *tm_case_param(const tm_suite_case *c, const char *name, const char *fallback);
/* The case's parameters as a JSON object (malloc'ed). */
char *tm_case_params_json(const tm_suite_case *c);

#endif /* TM_SUITE_H */
