/*
 * test_energy.c - the energy meters' arithmetic and their contract (energy.h):
 *  - tm_energy_integrate is exact on power that is linear in time (one line through every sample,
 *    sampled at uneven 16-24 ms gaps as the H200's driver does), agrees with a fine numerical
 *    integral of the linear interpolation of random samples, handles a window inside one gap, and
 *    returns NaN for a window the samples do not cover (either end) or a reversed one;
 *  - a meter on the CPU and on a GPU either measures (joules >= 0 over a short window, the method
 *    named) or says why not (NaN, method none, a source beginning "not measured").
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "common.h"
#include "energy.h"

static double uniform(tm_rng_t *rng) { return (tm_rng_next(rng) >> 11) * 0x1.0p-53; }

/* n sample times from t0, 16-24 ms apart */
static void sample_times(tm_rng_t *rng, double *t, int n, double t0) {
    t[0] = t0;
    for (int i = 1; i < n; i++) t[i] = t[i - 1] + 0.016 + 0.008 * uniform(rng);
}

/* the linear interpolation of the samples at time x (t[0] <= x <= t[n-1]) */
static double interpolate(const double *t, const double *w, int n, double x) {
    int i = 0;
    while (i + 2 < n && t[i + 1] < x) i++;
    return w[i] + (w[i + 1] - w[i]) * (x - t[i]) / (t[i + 1] - t[i]);
}

static void check_meter(const char *device) {
    tm_energy_meter *m = tm_energy_open(device);
    CHECK(m != NULL, "%s: a meter", device);
    if (!m) return;
    const char *source = tm_energy_source(m);
    CHECK(source && source[0], "%s: a source", device);
    tm_energy_mark a = tm_energy_mark_now(m);
    nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    tm_energy_mark b = tm_energy_mark_now(m);
    CHECK(a.wall_after_s >= a.wall_s && b.wall_s > a.wall_after_s && b.wall_after_s >= b.wall_s, "%s: marks in time order", device);
    const double clock = tm_energy_sm_clock_mhz(m);
    CHECK(isnan(clock) || (clock > 0 && clock < 10000), "%s: an SM clock (%g MHz) or none", device, clock);
    tm_energy_method method;
    double counter;
    const double joules = tm_energy_between(m, a, b, &method, &counter);
    if (!strncmp(source, "not measured", 12)) {
        CHECK(isnan(joules) && method == TM_ENERGY_NONE && isnan(counter), "%s (%s): %g J by method %d", device, source, joules,
              (int)method);
    } else {
        CHECK(joules >= 0 && method != TM_ENERGY_NONE, "%s (%s): %g J by method %d", device, source, joules, (int)method);
        CHECK(isnan(counter) || counter >= 0, "%s: the counter's difference %g", device, counter);
    }
    printf("%s: %s; 50 ms: %g J\n", device, source, joules);
    tm_energy_close(m);
}

int main(void) {
    tm_rng_t rng;
    tm_rng_seed(&rng, 36);
    enum { N = 120 };
    double t[N], w[N];

    /* power linear in time: the trapezoids are exact */
    sample_times(&rng, t, N, 1.7e9);
    for (int i = 0; i < N; i++) w[i] = 150 + 300 * (t[i] - t[0]);
    for (int trial = 0; trial < 100; trial++) {
        double from = t[0] + (t[N - 1] - t[0]) * uniform(&rng), to = t[0] + (t[N - 1] - t[0]) * uniform(&rng);
        if (from > to) {
            double swap = from;
            from = to, to = swap;
        }
        const double exact = 150 * (to - from) + 150 * ((to - t[0]) * (to - t[0]) - (from - t[0]) * (from - t[0]));
        const double got = tm_energy_integrate(t, w, N, from, to);
        CHECK(fabs(got - exact) <= 1e-6 * (exact + 1e-3), "linear power over [%.4f, %.4f]: %.9g J, exact %.9g", from - t[0], to - t[0],
              got, exact);
    }

    /* random samples against a fine numerical integral of their interpolation */
    for (int i = 0; i < N; i++) w[i] = 100 + 800 * uniform(&rng);
    const double from = t[3] + 0.0071, to = t[N - 5] - 0.0033;
    double fine = 0;
    const int steps = 200000;
    for (int k = 0; k < steps; k++) fine += interpolate(t, w, N, from + (to - from) * (k + 0.5) / steps) * (to - from) / steps;
    const double got = tm_energy_integrate(t, w, N, from, to);
    CHECK(fabs(got - fine) <= 1e-6 * fine, "random samples: %.9g J, midpoint sum %.9g", got, fine);

    /* a window inside one gap: the mean of the interpolated ends times the width */
    const double a = t[10] + 0.002, b = t[10] + 0.009;
    const double inside = 0.5 * (interpolate(t, w, N, a) + interpolate(t, w, N, b)) * (b - a);
    CHECK(fabs(tm_energy_integrate(t, w, N, a, b) - inside) <= 1e-9 * inside, "inside one gap");
    CHECK(tm_energy_integrate(t, w, N, a, a) == 0, "an empty window is 0 J");

    /* windows the samples do not cover, and nonsense */
    CHECK(isnan(tm_energy_integrate(t, w, N, t[0] - 0.001, t[5])), "starts before the first sample: NaN");
    CHECK(isnan(tm_energy_integrate(t, w, N, t[5], t[N - 1] + 0.001)), "ends after the last sample: NaN");
    CHECK(isnan(tm_energy_integrate(t, w, N, t[9], t[5])), "a reversed window: NaN");
    CHECK(isnan(tm_energy_integrate(t, w, 1, t[0], t[0])), "one sample: NaN");

    check_meter("cpu");
    check_meter("cuda");
    return check_report("test_energy");
}
