/*
 * ops_cpu.c - see ops_cpu.h.
 */
#include "ops_cpu.h"

#include <math.h>

void tm_cpu_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    double sum_sq = 0;
    for (int i = 0; i < n; i++) sum_sq += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(sum_sq / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void tm_cpu_rope(float *vec, int n_heads, const tm_rope_params *p, int position) {
    for (int i = 0; i < p->n_rot / 2; i++) {
        double theta = position * (double)p->freq_scale * pow(p->freq_base, -2.0 * i / p->n_rot);
        if (p->freq_factors) theta /= p->freq_factors[i];
        float cos_theta = (float)cos(theta), sin_theta = (float)sin(theta);
        for (int h = 0; h < n_heads; h++) {
            float *pair = vec + h * p->head_dim + 2 * i;
            float a = pair[0], b = pair[1];
            pair[0] = a * cos_theta - b * sin_theta;
            pair[1] = a * sin_theta + b * cos_theta;
        }
    }
}

void tm_cpu_swiglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}
