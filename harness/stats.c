/*
 * stats.c - see stats.h. Sorting is O(n log n); the bootstrap is O(rounds * n log n).
 */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void tm_sort_doubles(double *values, size_t n) { qsort(values, n, sizeof *values, compare_doubles); }

double tm_percentile_sorted(const double *sorted, size_t n, double p) {
    if (n == 0) return 0;
    double position = p * (double)(n - 1);
    size_t low = (size_t)position;
    size_t high = low + 1 < n ? low + 1 : low;
    return sorted[low] + (position - (double)low) * (sorted[high] - sorted[low]);
}

int tm_summarize(const double *values, size_t n, int bootstrap_rounds, uint64_t seed, tm_summary *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    if (n == 0) return 0;
    double *sorted = malloc(n * sizeof *sorted);
    if (!sorted) return -1;
    memcpy(sorted, values, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, compare_doubles);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += sorted[i];
    out->mean = sum / (double)n;
    double squares = 0;
    for (size_t i = 0; i < n; i++) squares += (sorted[i] - out->mean) * (sorted[i] - out->mean);
    out->stdev = n > 1 ? sqrt(squares / (double)(n - 1)) : 0; /* sample standard deviation */
    out->min = sorted[0];
    out->max = sorted[n - 1];
    out->median = tm_percentile_sorted(sorted, n, 0.5);
    out->p10 = tm_percentile_sorted(sorted, n, 0.10);
    out->p90 = tm_percentile_sorted(sorted, n, 0.90);
    out->p99 = tm_percentile_sorted(sorted, n, 0.99);
    out->relative_noise = out->mean != 0 ? out->stdev / fabs(out->mean) : 0;
    out->median_low = out->median_high = out->median;
    if (bootstrap_rounds > 0 && n > 1) {
        double *medians = malloc((size_t)bootstrap_rounds * sizeof *medians), *resample = malloc(n * sizeof *resample);
        if (!medians || !resample) {
            free(medians), free(resample), free(sorted);
            return -1;
        }
        tm_rng_t rng;
        tm_rng_seed(&rng, seed);
        for (int r = 0; r < bootstrap_rounds; r++) {
            for (size_t i = 0; i < n; i++) resample[i] = sorted[tm_rng_next(&rng) % n];
            qsort(resample, n, sizeof *resample, compare_doubles);
            medians[r] = tm_percentile_sorted(resample, n, 0.5);
        }
        qsort(medians, (size_t)bootstrap_rounds, sizeof *medians, compare_doubles);
        out->median_low = tm_percentile_sorted(medians, (size_t)bootstrap_rounds, 0.025);
        out->median_high = tm_percentile_sorted(medians, (size_t)bootstrap_rounds, 0.975);
        free(medians);
        free(resample);
    }
    free(sorted);
    return 0;
}

typedef struct ranked {
    double value;
    int group; /* 0: a, 1: b */
} ranked;

static int compare_ranked(const void *x, const void *y) {
    return compare_doubles(&((const ranked *)x)->value, &((const ranked *)y)->value);
}

double tm_mann_whitney_p(const double *a, size_t n_a, const double *b, size_t n_b) {
    if (n_a == 0 || n_b == 0) return 1.0;
    size_t n = n_a + n_b;
    ranked *all = malloc(n * sizeof *all);
    if (!all) return 1.0;
    for (size_t i = 0; i < n_a; i++) all[i] = (ranked){a[i], 0};
    for (size_t i = 0; i < n_b; i++) all[n_a + i] = (ranked){b[i], 1};
    qsort(all, n, sizeof *all, compare_ranked);
    /* average ranks over ties; tie correction sum(t^3 - t) */
    double rank_sum_a = 0, ties = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && all[j].value == all[i].value) j++;
        double average_rank = (double)(i + 1 + j) / 2.0, t = (double)(j - i);
        ties += t * t * t - t;
        for (size_t k = i; k < j; k++)
            if (all[k].group == 0) rank_sum_a += average_rank;
        i = j;
    }
    free(all);
    double na = (double)n_a, nb = (double)n_b, total = (double)n;
    double u = rank_sum_a - na * (na + 1) / 2.0;
    double mean = na * nb / 2.0;
    double variance = na * nb / 12.0 * ((total + 1) - ties / (total * (total - 1)));
    if (variance <= 0) return 1.0;
    double z = (fabs(u - mean) - 0.5) / sqrt(variance);
    if (z < 0) z = 0;
    return erfc(z / sqrt(2.0)); /* two-sided */
}
