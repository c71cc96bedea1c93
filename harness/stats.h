/*
 * stats.h - summary statistics of benchmark samples: median, mean, standard deviation, min/max,
 * percentiles (linear interpolation between order statistics, numpy's default), relative noise
 * (stdev / mean), a bootstrap confidence interval of the median, and the Mann-Whitney U test.
 *
 * Guarantees: inputs are not modified; n = 0 gives zeros (and p = 1 for the test); the
 * bootstrap is deterministic for a seed.
 */
#ifndef TM_STATS_H
#define TM_STATS_H

#include <stddef.h>
#include <stdint.h>

typedef struct tm_summary {
    size_t n;
    double median, mean, stdev, min, max, p10, p90, p99;
    double relative_noise;         /* stdev / |mean| (0 when the mean is 0) */
    double median_low, median_high; /* 95 % bootstrap confidence interval of the median */
} tm_summary;

/* Sort ascending in place. */
void tm_sort_doubles(double *values, size_t n);
/* Percentile p in [0, 1] of sorted values. */
double tm_percentile_sorted(const double *sorted, size_t n, double p);
/* Everything in tm_summary; bootstrap_rounds resamples (0: no interval) seeded by seed. */
int tm_summarize(const double *values, size_t n, int bootstrap_rounds, uint64_t seed, tm_summary *out);
/* Two-sided Mann-Whitney U p-value (normal approximation with tie and continuity corrections). */
double tm_mann_whitney_p(const double *a, size_t n_a, const double *b, size_t n_b);

#endif /* TM_STATS_H */
