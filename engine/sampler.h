/*
 * sampler.h - choose the next token from logits: repetition penalty, top-k, top-p, min-p,
 * temperature, then a seeded draw; temperature 0 is greedy (argmax, lowest id on ties).
 *
 * Guarantees: the same logits, history, parameters and generator state give the same token on
 * every platform; the returned id is in [0, n_vocab); the logits array is used as scratch.
 * Cost: O(n_vocab) plus O(n_vocab log k) with top-k; without it O(n_vocab) plus O(m log n_vocab)
 * for the m best candidates top-p and the draw look at (a heap over all, popped as needed; past
 * n_vocab / 8 of them the rest is sorted at once). Without top-k the softmax's sum and, where no
 * filter cuts the candidates, the draw's total are taken in id order (with top-k, best first).
 */
#ifndef TM_SAMPLER_H
#define TM_SAMPLER_H

#include "common.h"
#include "tensormesh.h"

typedef struct tm_sampler_candidate {
    int32_t id;
    float logit; /* then probability */
} tm_sampler_candidate;

/* candidates: scratch of n_vocab entries. */
int32_t tm_sample(const tm_sampling *params, float *logits, int n_vocab, const int32_t *history, int n_history,
                  tm_rng_t *rng, tm_sampler_candidate *candidates);
/* The same with the penalty window given as its distinct ids (penalized), plus `last` (-1: none),
 * a token that ends the window and is penalized unless penalized lists it (a token the caller has
 * not seen: the engine's overlapped steps), and the draw taken already (uniform: the generator's
 * next number where temperature > 0, else unused): the same token as tm_sample for the same
 * logits and generator state. */
int32_t tm_sample_drawn(const tm_sampling *params, float *logits, int n_vocab, const int32_t *penalized, int n_penalized,
                        int32_t last, double uniform, tm_sampler_candidate *candidates);

#endif /* TM_SAMPLER_H */
