/*
 * compare.h - the verdict of one metric between a base and a head sample set.
 *
 * change = (median_head - median_base) / median_base. A change counts as real when the
 * Mann-Whitney U test gives p < alpha; it counts as large when |change| >= threshold.
 *   real and large            -> FASTER or SLOWER (by the metric's direction)
 *   real and small, or not real and small -> SAME
 *   large but not real         -> NOISY (the samples cannot tell)
 */
#ifndef TM_COMPARE_H
#define TM_COMPARE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum tm_verdict { TM_SAME = 0, TM_FASTER = 1, TM_SLOWER = 2, TM_NOISY = 3 } tm_verdict;

typedef struct tm_comparison {
    double base_median, head_median;
    double change;   /* fraction: +0.05 = 5 % larger */
    double p_value;
    tm_verdict verdict;
} tm_comparison;

tm_comparison tm_compare_samples(const double *base, size_t n_base, const double *head, size_t n_head,
                                 bool higher_is_better, double threshold, double alpha);
const char *tm_verdict_name(tm_verdict verdict);

#endif /* TM_COMPARE_H */
