/*
 * runner.h - the runners that turn a suite case into measured repetitions, one entry per kind.
 *
 * A runner prepares a case (engine, inputs), then runs repetitions on request; each repetition
 * reports its metric values, which the driver (tmbench.c) stores one by one as samples and
 * summarises when the case's stopping rule is met. The first metric is the case's primary one:
 * its relative noise drives the stopping rule.
 */
#ifndef TM_RUNNER_H
#define TM_RUNNER_H

#include <stdbool.h>

#include "compare.h"
#include "suite.h"

#define TM_MAX_METRICS 16

typedef struct tm_metric_spec {
    const char *name;       /* e.g. decode_tokens_per_s */
    const char *unit;       /* tokens/s, ms, bytes */
    tm_better better;       /* lower, higher, or neither (descriptive: diff says CHANGED) */
} tm_metric_spec;

typedef struct tm_runner_state tm_runner_state;

typedef struct tm_runner {
    const char *kind;
    const tm_metric_spec *metrics;
    int n_metrics;
    /* Prepare a case; the state may be reused by the next case (engines are cached). */
    tm_status (*prepare)(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, tm_error_t *error);
    /* One repetition: values[i] for metrics[i]; NaN for a metric after the first that this
     * repetition could not measure (no sample is stored for it; one never measured has no summary). */
    tm_status (*repeat)(tm_runner_state *state, double *values, tm_error_t *error);
    void (*release)(tm_runner_state *state);
    /* optional: the measured ceiling metrics[i] compares to (stored with its summary), 0 if none */
    double (*ceiling)(tm_runner_state *state, int metric);
} tm_runner;

/* The kernels kind (runner_kernels.c). */
extern const tm_runner tm_kernels_runner;

/* The runner of a kind, or NULL when the kind has none in this build. */
const tm_runner *tm_runner_for_kind(const char *kind);

#endif /* TM_RUNNER_H */
