/*
 * sampler.c - see sampler.h. The filters run in llama.cpp's order: penalties, top-k, top-p,
 * min-p, temperature; each keeps at least one candidate.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

static int compare_candidates(const void *a, const void *b) {
    const tm_sampler_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Keep the k best candidates, sorted best first: a min-heap of size k over all n. */
static int top_k(tm_sampler_candidate *c, int n, int k) {
    if (k >= n) {
        qsort(c, (size_t)n, sizeof *c, compare_candidates);
        return n;
    }
    /* heap in c[0..k): the worst kept candidate at the root */
    for (int i = 0; i < n; i++) {
        tm_sampler_candidate item = c[i];
        int size = i < k ? i : k;
        if (i >= k) {
            if (compare_candidates(&item, &c[0]) >= 0) continue; /* not better than the worst kept */
            /* replace the root and sift down */
            int j = 0;
            for (;;) {
                int child = 2 * j + 1;
                if (child >= k) break;
                if (child + 1 < k && compare_candidates(&c[child + 1], &c[child]) > 0) child++;
                if (compare_candidates(&c[child], &item) <= 0) break;
                c[j] = c[child];
                j = child;
            }
            c[j] = item;
        } else {
            int j = size;
            while (j > 0 && compare_candidates(&c[(j - 1) / 2], &item) < 0) {
                c[j] = c[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            c[j] = item;
        }
    }
    qsort(c, (size_t)k, sizeof *c, compare_candidates);
    return k;
}

static void penalize(const tm_sampling *p, float *logits, int32_t id) {
    logits[id] = logits[id] > 0 ? logits[id] / p->repetition_penalty : logits[id] * p->repetition_penalty;
}

/* Candidates in best-first order on demand, for the filters without top-k: a max-heap over all n
 * (built in O(n)); the i-th best is the i-th popped, popped ones kept in order at the array's end
 * (heap sort's layout: the best at c[n - 1]). Past n / 8 pops the rest is sorted whole, so a flat
 * distribution costs one qsort at most, a peaked one a few pops. */
typedef struct ranked {
    tm_sampler_candidate *c;
    int n, heap, popped; /* heap: the heap's size, c[0..heap); popped: n - heap, the best in order */
} ranked;

static void sift_down(tm_sampler_candidate *c, int size, int j) {
    tm_sampler_candidate item = c[j];
    for (;;) {
        int child = 2 * j + 1;
        if (child >= size) break;
        if (child + 1 < size && compare_candidates(&c[child + 1], &c[child]) < 0) child++; /* the better child */
        if (compare_candidates(&c[child], &item) >= 0) break;
        c[j] = c[child];
        j = child;
    }
    c[j] = item;
}

static void ranked_init(ranked *r, tm_sampler_candidate *c, int n) {
    r->c = c, r->n = n, r->heap = n, r->popped = 0;
    for (int j = n / 2 - 1; j >= 0; j--) sift_down(c, n, j);
}

/* c[0..n), sorted best first, as a ranking with nothing left to rank (reversed into ranked_at's layout). */
static void ranked_sorted(ranked *r, tm_sampler_candidate *c, int n) {
    for (int i = 0, j = n - 1; i < j; i++, j--) {
        tm_sampler_candidate t = c[i];
        c[i] = c[j], c[j] = t;
    }
    r->c = c, r->n = n, r->heap = 0, r->popped = n;
}

static int by_rank_reversed(const void *a, const void *b) { return compare_candidates(b, a); }

/* The i-th best candidate (i < n). */
static const tm_sampler_candidate *ranked_at(ranked *r, int i) {
    if (i >= r->popped && r->popped > r->n / 8) { /* the rest at once, worst first below the popped */
        qsort(r->c, (size_t)r->heap, sizeof *r->c, by_rank_reversed);
        r->popped = r->n, r->heap = 0;
    }
    while (r->popped <= i) {
        tm_sampler_candidate top = r->c[0];
        r->c[0] = r->c[--r->heap];
        sift_down(r->c, r->heap, 0);
        r->c[r->heap] = top;
        r->popped++;
    }
    return &r->c[r->n - 1 - i];
}

/* The weight the draw gives a candidate: its probability at the temperature, unnormalized. */
static float draw_weight(float logit, double best, float temperature) { return (float)exp(((double)logit - best) / temperature); }

/* Top-p, min-p and the draw at `uniform` over n candidates in best-first order (ranked_at). With
 * `all` (the candidates are every id, their logits there) the sums over all of them are taken in id
 * order and min-p counts instead of walking the order, so that only the candidates top-p and the
 * draw reach are ranked. */
static int32_t filter_and_draw(const tm_sampling *p, ranked *r, int n, const float *all, double uniform) {
    const double best = ranked_at(r, 0)->logit;
    int keep = n;
    if (p->top_p > 0 && p->top_p < 1) { /* softmax at temperature 1 for the filters */
        double sum = 0, cumulative = 0;
        for (int i = 0; i < n; i++) sum += exp((double)(all ? all[i] : ranked_at(r, i)->logit) - best);
        for (int i = 0; i < n; i++) {
            cumulative += exp((double)ranked_at(r, i)->logit - best) / sum;
            if (cumulative >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) { /* tokens whose probability is at least min_p times the best one's: a prefix of the order */
        const float threshold = (float)best + logf(p->min_p);
        int above = 1;
        if (all) {
            above = 0;
            for (int i = 0; i < n; i++) above += all[i] >= threshold;
        } else {
            while (above < keep && ranked_at(r, above)->logit >= threshold) above++;
        }
        keep = TM_MAX(1, TM_MIN(keep, above));
    }
    double total = 0;
    if (all && keep == n)
        for (int i = 0; i < n; i++) total += draw_weight(all[i], best, p->temperature);
    else
        for (int i = 0; i < keep; i++) total += draw_weight(ranked_at(r, i)->logit, best, p->temperature);
    double draw = uniform * total, acc = 0;
    for (int i = 0; i < keep; i++) {
        const tm_sampler_candidate *candidate = ranked_at(r, i);
        acc += draw_weight(candidate->logit, best, p->temperature);
        if (draw < acc) return candidate->id;
    }
    return ranked_at(r, keep - 1)->id;
}

/* The token after penalties: greedy, or the filters and the draw at `uniform` (in [0, 1)). With
 * top-k its survivors, sorted; without, every id, ranked as far as the filters and the draw need. */
static int32_t choose(const tm_sampling *p, float *logits, int n_vocab, double uniform, tm_sampler_candidate *c) {
    if (p->temperature <= 0) {
        int32_t best = 0;
        for (int i = 1; i < n_vocab; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (int i = 0; i < n_vocab; i++) c[i] = (tm_sampler_candidate){i, logits[i]};
    ranked r;
    if (p->top_k <= 0 || p->top_k >= n_vocab) {
        ranked_init(&r, c, n_vocab);
        return filter_and_draw(p, &r, n_vocab, logits, uniform);
    }
    const int n = top_k(c, n_vocab, p->top_k);
    ranked_sorted(&r, c, n);
    return filter_and_draw(p, &r, n, NULL, uniform);
}

int32_t tm_sample(const tm_sampling *p, float *logits, int n_vocab, const int32_t *history, int n_history, tm_rng_t *rng,
                  tm_sampler_candidate *c) {
    /* repetition penalty over the last penalty_last_n tokens (each token once) */
    if (p->repetition_penalty != 1.0f && p->repetition_penalty > 0) {
        int start = p->penalty_last_n > 0 && n_history > p->penalty_last_n ? n_history - p->penalty_last_n : 0;
        for (int i = start; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= n_vocab) continue;
            bool seen = false;
            for (int j = start; j < i && !seen; j++) seen = history[j] == id;
            if (!seen) penalize(p, logits, id);
        }
    }
    return choose(p, logits, n_vocab, p->temperature > 0 ? tm_rng_uniform(rng) : 0, c);
}

int32_t tm_sample_drawn(const tm_sampling *p, float *logits, int n_vocab, const int32_t *penalized, int n_penalized, int32_t last,
                        double uniform, tm_sampler_candidate *c) {
    if (p->repetition_penalty != 1.0f && p->repetition_penalty > 0) {
        bool listed = false;
        for (int i = 0; i < n_penalized; i++) {
            listed |= penalized[i] == last;
            if (penalized[i] >= 0 && penalized[i] < n_vocab) penalize(p, logits, penalized[i]);
        }
        if (!listed && last >= 0 && last < n_vocab) penalize(p, logits, last);
    }
    return choose(p, logits, n_vocab, uniform, c);
}
