/*
 * compare.c - see compare.h.
 */
#include "compare.h"

#include <math.h>

#include "stats.h"

const char *tm_verdict_name(tm_verdict verdict) {
    static const char *const names[] = {"SAME", "FASTER", "SLOWER", "NOISY", "CHANGED"};
    return names[verdict];
}

tm_comparison tm_compare_samples(const double *base, size_t n_base, const double *head, size_t n_head,
                                 tm_better better, double threshold, double alpha) {
    tm_comparison c = {0};
    tm_summary b, h;
    tm_summarize(base, n_base, 0, 0, &b);
    tm_summarize(head, n_head, 0, 0, &h);
    c.base_median = b.median;
    c.head_median = h.median;
    c.change = b.median != 0 ? (h.median - b.median) / fabs(b.median) : 0;
    c.p_value = tm_mann_whitney_p(base, n_base, head, n_head);
    bool real = c.p_value < alpha, large = fabs(c.change) >= threshold;
    if (real && large) c.verdict = better == TM_BETTER_NEITHER ? TM_CHANGED : (c.change > 0) == (better == TM_BETTER_HIGHER) ? TM_FASTER : TM_SLOWER;
    else if (large) c.verdict = TM_NOISY;
    else c.verdict = TM_SAME;
    return c;
}
