/*
 * test_compare.c - diff verdicts on generated samples (normal noise from a seeded generator):
 *  - a 5 % drop of a higher-is-better metric with 1 % noise and 10 samples a side is SLOWER,
 *    a 5 % rise FASTER, and for a lower-is-better metric (latency) the directions swap;
 *  - over 1000 seeded trials of identical distributions, fewer than 1 % are called SLOWER
 *    (defaults: threshold 3 %, alpha 0.01);
 *  - a 5 % shift with 20 % noise is not called SLOWER or FASTER (NOISY or SAME);
 *  - a 5 % shift either way of a metric with no better direction is CHANGED, never SLOWER/FASTER.
 */
#include <math.h>
#include <string.h>

#include "check.h"
#include "common.h"
#include "compare.h"

static double normal(tm_rng_t *rng) { /* Box-Muller */
    double u = (tm_rng_next(rng) >> 11) * 0x1.0p-53, v = (tm_rng_next(rng) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static void draw(tm_rng_t *rng, double *out, int n, double mean, double relative_noise) {
    for (int i = 0; i < n; i++) out[i] = mean * (1 + relative_noise * normal(rng));
}

int main(void) {
    tm_rng_t rng;
    tm_rng_seed(&rng, 2026);
    double base[10], head[10];
    int slower = 0, faster = 0, latency_right = 0;
    for (int trial = 0; trial < 50; trial++) {
        draw(&rng, base, 10, 100, 0.01);
        draw(&rng, head, 10, 95, 0.01);
        slower += tm_compare_samples(base, 10, head, 10, TM_BETTER_HIGHER, 0.03, 0.01).verdict == TM_SLOWER;
        faster += tm_compare_samples(head, 10, base, 10, TM_BETTER_HIGHER, 0.03, 0.01).verdict == TM_FASTER;
        latency_right += tm_compare_samples(base, 10, head, 10, TM_BETTER_LOWER, 0.03, 0.01).verdict == TM_FASTER;
    }
    CHECK(slower == 50 && faster == 50 && latency_right == 50, "5 %% shift, 1 %% noise: slower %d, faster %d, latency %d of 50",
          slower, faster, latency_right);
    int false_slower = 0;
    for (int trial = 0; trial < 1000; trial++) {
        draw(&rng, base, 10, 100, 0.01);
        draw(&rng, head, 10, 100, 0.01);
        false_slower += tm_compare_samples(base, 10, head, 10, TM_BETTER_HIGHER, 0.03, 0.01).verdict == TM_SLOWER;
    }
    CHECK(false_slower < 10, "identical distributions called SLOWER %d times of 1000", false_slower);
    int decided = 0;
    for (int trial = 0; trial < 100; trial++) {
        draw(&rng, base, 10, 100, 0.20);
        draw(&rng, head, 10, 95, 0.20);
        tm_verdict v = tm_compare_samples(base, 10, head, 10, TM_BETTER_HIGHER, 0.03, 0.01).verdict;
        decided += v == TM_SLOWER || v == TM_FASTER;
    }
    CHECK(decided < 15, "5 %% shift under 20 %% noise is rarely decided (%d of 100)", decided);
    int changed = 0, judged = 0;
    for (int trial = 0; trial < 50; trial++) { /* a metric with no better direction (a board's power): CHANGED either way */
        draw(&rng, base, 10, 100, 0.01);
        draw(&rng, head, 10, trial % 2 ? 95 : 105, 0.01);
        tm_verdict v = tm_compare_samples(base, 10, head, 10, TM_BETTER_NEITHER, 0.03, 0.01).verdict;
        changed += v == TM_CHANGED;
        judged += v == TM_SLOWER || v == TM_FASTER;
    }
    CHECK(changed == 50 && judged == 0, "5 %% shifts of a descriptive metric: CHANGED %d, FASTER/SLOWER %d of 50", changed, judged);
    CHECK(!strcmp(tm_verdict_name(TM_CHANGED), "CHANGED"), "the verdict's name");
    tm_comparison c = tm_compare_samples(base, 10, base, 10, TM_BETTER_HIGHER, 0.03, 0.01);
    CHECK(c.verdict == TM_SAME && c.change == 0 && c.p_value > 0.9, "a set against itself is SAME (p %.3f)", c.p_value);
    return check_report("test_compare");
}
