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

/* choose() without top-k: the same filters and draw over the candidates in best-first order, taken
 * as far as they are needed (the softmax's sum and, without top-p, the draw's total over every
 * candidate in id order instead of best-first: the same up to float64 rounding). */
static int32_t choose_unbounded(const tm_sampling *p, const float *logits, int n, double uniform, tm_sampler_candidate *c) {
    int best_id = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best_id]) best_id = i;
    const double best = logits[best_id];
    for (int i = 0; i < n; i++) c[i] = (tm_sampler_candidate){i, logits[i]};
    ranked r;
    ranked_init(&r, c, n);
    int keep = n;
    if (p->top_p > 0 && p->top_p < 1) {
        double sum = 0, cumulative = 0;
        for (int i = 0; i < n; i++) sum += exp((double)logits[i] - best);
        for (int i = 0; i < n; i++) {
            cumulative += exp((double)ranked_at(&r, i)->logit - best) / sum;
            if (cumulative >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) { /* the best candidates at or above the threshold: a prefix of the order */
        const float threshold = (float)best + logf(p->min_p);
        int above = 0;
        for (int i = 0; i < n; i++) above += logits[i] >= threshold;
        keep = TM_MAX(1, TM_MIN(keep, above));
    }
    /* the draw's weights: over the kept prefix in order where it was cut, else over all in id order */
    double total = 0;
    if (keep < n)
        for (int i = 0; i < keep; i++) total += (float)exp(((double)ranked_at(&r, i)->logit - best) / p->temperature);
    else
        for (int i = 0; i < n; i++) total += (float)exp(((double)logits[i] - best) / p->temperature);
    double draw = uniform * total, acc = 0;
    for (int i = 0; i < keep; i++) {
        const tm_sampler_candidate *candidate = ranked_at(&r, i);
        acc += (float)exp(((double)candidate->logit - best) / p->temperature);
        if (draw < acc) return candidate->id;
    }
    return ranked_at(&r, keep - 1)->id;
}

/* The token after penalties: greedy, or the filters and the draw at `uniform` (in [0, 1)). */
static int32_t choose(const tm_sampling *p, float *logits, int n_vocab, double uniform, tm_sampler_candidate *c) {
    if (p->temperature <= 0) {
        int32_t best = 0;
        for (int i = 1; i < n_vocab; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    if (p->top_k <= 0 || p->top_k >= n_vocab) return choose_unbounded(p, logits, n_vocab, uniform, c);
    int n = n_vocab;
    for (int i = 0; i < n; i++) c[i] = (tm_sampler_candidate){i, logits[i]};
    n = top_k(c, n, p->top_k > 0 ? p->top_k : n);
    /* softmax over the survivors (sorted best first), at temperature 1 for the filters */
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].logit - c[0].logit);
    if (p->top_p > 0 && p->top_p < 1) {
        double cumulative = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cumulative += exp((double)c[i].logit - c[0].logit) / sum;
            if (cumulative >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0) {
        /* keep tokens whose probability is at least min_p times the best one's */
        float threshold = c[0].logit + logf(p->min_p);
        int keep = 1;
        while (keep < n && c[keep].logit >= threshold) keep++;
        n = keep;
    }
    double total = 0, best = c[0].logit;
    for (int i = 0; i < n; i++) {
        c[i].logit = (float)exp(((double)c[i].logit - best) / p->temperature);
        total += c[i].logit;
    }
    double draw = uniform * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].logit;
        if (draw < acc) return c[i].id;
    }
    return c[n - 1].id;
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
