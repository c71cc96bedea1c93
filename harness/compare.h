/*
 * compare.h - the verdict of one metric between a base and a head sample set.
 *
 * change = (median_head - median_base) / median_base. A change counts as real when the
 * Mann-Whitney U test gives p < alpha; it counts as large when |change| >= threshold.
 *   real and large            -> FASTER or SLOWER (by the metric's direction), CHANGED for a
 *                                metric with no better direction (a board's power, a clock)
 *   real and small, or not real and small -> SAME
 *   large but not real         -> NOISY (the samples cannot tell)
 */
#ifndef TM_COMPARE_H
#define TM_COMPARE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum tm_verdict { TM_SAME = 0, TM_FASTER = 1, TM_SLOWER = 2, TM_NOISY = 3, TM_CHANGED = 4 } tm_verdict;

/* Which way a metric is better (runner.h's metric specs, the metrics table's higher_is_better column). */
typedef enum tm_better { TM_BETTER_LOWER = 0, TM_BETTER_HIGHER = 1, TM_BETTER_NEITHER = 2 } tm_better;

typedef struct tm_comparison {
    double base_median, head_median;
    double change;   /* fraction: +0.05 = 5 % larger */
    double p_value;
    tm_verdict verdict;
} tm_comparison;

tm_comparison tm_compare_samples(const double *base, size_t n_base, const double *head, size_t n_head,
                                 tm_better better, double threshold, double alpha);
const char *tm_verdict_name(tm_verdict verdict);

#endif /* TM_COMPARE_H */
