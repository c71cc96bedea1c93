/*
 * ops_cpu.c - see ops_cpu.h.
 */
#include "ops_cpu.h"

#include <math.h>
#include <string.h>

#include "quant.h"

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

void tm_cpu_attention(const float *q, const tm_kv_cache *kv, int seq, int layer, int n_keys, int kv_head, int head_dim,
                      float *out, float *scores) {
    const tm_kv_type type = tm_kv_get_layout(kv)->type;
    const tm_type_traits *key_dot = tm_type_traits_get(type == TM_KV_F32 ? TM_TYPE_F32 : TM_TYPE_F16);
    float scale = 1.0f / sqrtf((float)head_dim), max_score = -INFINITY;
    for (int p = 0; p < n_keys; p++) {
        const void *key = tm_kv_key(kv, seq, layer, p, kv_head);
        if (type == TM_KV_Q8) {
            const int8_t *k = key;
            float dot = 0;
            for (int i = 0; i < head_dim; i++) dot += (float)k[i] * q[i];
            scores[p] = dot * *tm_kv_key_scale(kv, seq, layer, p, kv_head) * scale;
        } else {
            scores[p] = key_dot->dot_f32(key, q, head_dim) * scale;
        }
        max_score = fmaxf(max_score, scores[p]);
    }
    double sum = 0;
    for (int p = 0; p < n_keys; p++) {
        scores[p] = expf(scores[p] - max_score);
        sum += scores[p];
    }
    memset(out, 0, (size_t)head_dim * sizeof *out);
    float inverse = (float)(1.0 / sum);
    for (int p = 0; p < n_keys; p++) {
        const void *value = tm_kv_value(kv, seq, layer, p, kv_head);
        float weight = scores[p] * inverse;
        if (type == TM_KV_F32) {
            const float *v = value;
            for (int i = 0; i < head_dim; i++) out[i] += weight * v[i];
        } else if (type == TM_KV_Q8) {
            const int8_t *v = value;
            const float scaled = weight * *tm_kv_value_scale(kv, seq, layer, p, kv_head);
            for (int i = 0; i < head_dim; i++) out[i] += scaled * (float)v[i];
        } else {
            const tm_f16_t *v = value;
            for (int i = 0; i < head_dim; i++) out[i] += weight * tm_f16_to_f32(v[i]);
        }
    }
}
