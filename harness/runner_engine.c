/*
 * runner_engine.c - the `throughput` and `memory` runners: both drive the engine through its
 * public API only (tensormesh.h), with `batch` requests of `prompt_tokens` random prompt tokens
 * generating `gen_tokens` tokens each (end-of-generation ignored), all submitted at once.
 *
 * throughput metrics per repetition: decode tokens/s over all sequences (engine decode time),
 * prompt tokens/s (engine prefill time), decode step latency p50/p90/p99 (wall time of each
 * step that processed no prompt tokens), time to first token (median over the requests), the
 * bytes a decode step must read a second (decode_gb_per_s: the weights a forward pass reads
 * whole, tm_engine_stats.step_weight_bytes, plus every sequence's KV at the decode steps' mean
 * context, prompt_tokens + gen_tokens / 2 positions, times the steps a second) and the energy a
 * decode token costs (decode_joules_per_token: the device's energy over the decode phase, from the
 * end of the last step that processed prompt tokens to the end of the repetition, divided by the
 * tokens generated in it; energy.h: on a GPU its power samples integrated over the phase, or its
 * energy counter where the samples do not reach back that far; not stored where neither is
 * readable). The counter advances in steps (every 100 ms on the H200), so a short phase measured
 * by it alone (the 7B's 64 tokens: ~120 ms) is a noisy sample; the noise column says how noisy.
 * TM_ENERGY_COMPARE=1 (a measuring aid) prints each repetition's samples' and counter's joules.
 * With the param step_events: 1 (a measuring aid; CUDA: events around each replayed decode step,
 * 5-11 us a step) also device_idle_us_per_step: the device's idle before a decode step
 * (the previous step's sampling kernel ended -> this step's graph launched: the host's
 * turnaround), averaged over the repetition's timed steps; not stored where no step was timed.
 * The param overlap (default 1) is the engine's overlapped steps (tm_engine_options.no_step_overlap
 * when 0: each step's tokens read before the next is launched), for A/B runs (suites/overlap.yaml).
 * The requests sample greedily unless the params say otherwise: temperature, top_k, top_p, min_p,
 * repetition_penalty, penalty_last_n (tm_sampling's meaning; each request seeded from the case's
 * generator; suites/sampling.yaml).
 * The roofline: the device's bandwidth ceiling is measured once per device and thread count, right
 * after the first engine on it is made (ceilings.h: the GPU's device-to-device copy, the figure
 * ../shared/docs/TARGETS.md's rooflines use; the host's memory read with the engine's threads on
 * the CPU); decode_gb_per_s is stored with it as its ceiling and decode tokens/s with
 * batch x ceiling / bytes a step (the report's "roofline tokens/s (share)").
 * A throughput case whose batch did not all run at once, or whose pool ran full while it decoded
 * (preemptions: the KV pool too small for it), fails.
 * memory metrics: weight bytes, KV bytes allocated at the peak and in use, their sum, and the
 * process's resident set (VmRSS) and peak (VmHWM) from /proc.
 * The engine is kept between cases whose engine options are equal (model load is not measured).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ceilings.h"
#include "common.h"
#include "energy.h"
#include "runner.h"
#include "stats.h"

struct tm_runner_state {
    char *model;
    char *device;
    tm_engine_options options;
    tm_engine *engine;
    int batch, prompt_tokens, gen_tokens;
    const char *name; /* the case being run (for errors) */
    bool memory_kind;
    tm_sampling sampling;    /* every request's, but the seed (parse_sampling) */
    uint64_t seed;
    double bytes_per_step;   /* what a decode step of this case reads (see above) */
    double ceiling_gb_per_s; /* the engine's device's bandwidth ceiling; 0: not measured */
    tm_energy_meter *energy; /* of the engine's device */
};

/* Bandwidth ceilings measured so far in this process, by device and thread count: measured once. */
static struct {
    char device[32];
    int threads;
    double gb_per_s;
} measured_ceilings[8];
static int n_measured_ceilings;

enum { DECODE_TOKENS_PER_S = 0, DECODE_GB_PER_S = 6, DECODE_JOULES_PER_TOKEN = 7, DEVICE_IDLE_US_PER_STEP = 8 }; /* places the runner names */
static const tm_metric_spec throughput_metrics[] = {
    [DECODE_TOKENS_PER_S] = {"decode_tokens_per_s", "tokens/s", TM_BETTER_HIGHER},
    {"prompt_tokens_per_s", "tokens/s", TM_BETTER_HIGHER},
    {"step_latency_p50_ms", "ms", TM_BETTER_LOWER},
    {"step_latency_p90_ms", "ms", TM_BETTER_LOWER},
    {"step_latency_p99_ms", "ms", TM_BETTER_LOWER},
    {"time_to_first_token_ms", "ms", TM_BETTER_LOWER},
    [DECODE_GB_PER_S] = {"decode_gb_per_s", "GB/s", TM_BETTER_HIGHER},
    [DECODE_JOULES_PER_TOKEN] = {"decode_joules_per_token", "J/token", TM_BETTER_LOWER},
    [DEVICE_IDLE_US_PER_STEP] = {"device_idle_us_per_step", "us", TM_BETTER_LOWER},
};
static const tm_metric_spec memory_metrics[] = {
    {"total_bytes", "bytes", TM_BETTER_LOWER},
    {"weight_bytes", "bytes", TM_BETTER_LOWER},
    {"kv_bytes_allocated", "bytes", TM_BETTER_LOWER},
    {"kv_bytes_used", "bytes", TM_BETTER_LOWER},
    {"process_rss_bytes", "bytes", TM_BETTER_LOWER},
    {"process_peak_rss_bytes", "bytes", TM_BETTER_LOWER},
    {"device_weight_bytes", "bytes", TM_BETTER_LOWER},     /* the backend's device memory by purpose (0 on the CPU) */
    {"device_kv_bytes", "bytes", TM_BETTER_LOWER},
    {"device_activation_bytes", "bytes", TM_BETTER_LOWER},
    {"device_workspace_bytes", "bytes", TM_BETTER_LOWER},
};

static bool parse_int_param(const tm_suite_case *c, const char *name, long long fallback, long long min, long long max,
                            long long *out, tm_error_t *error) {
    const char *text = tm_case_param(c, name, NULL);
    if (!text) {
        *out = fallback;
        return true;
    }
    char *end;
    long long value = strtoll(text, &end, 10);
    if (end == text || *end || value < min || value > max) {
        tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: parameter %s = '%s' is not an integer in [%lld, %lld]", c->name, name,
                     text, min, max);
        return false;
    }
    *out = value;
    return true;
}

static bool parse_float_param(const tm_suite_case *c, const char *name, double fallback, double min, double max, double *out,
                              tm_error_t *error) {
    const char *text = tm_case_param(c, name, NULL);
    if (!text) {
        *out = fallback;
        return true;
    }
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end || !(value >= min && value <= max)) {
        tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: parameter %s = '%s' is not a number in [%g, %g]", c->name, name, text, min, max);
        return false;
    }
    *out = value;
    return true;
}

/* The requests' sampling from the case's params (tm_sampling's meaning; default greedy, no
 * penalty): temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n. */
static bool parse_sampling(const tm_suite_case *c, tm_sampling *sampling, tm_error_t *error) {
    double temperature, top_p, min_p, penalty;
    long long top_k, last_n;
    tm_sampling_default(sampling);
    if (!parse_float_param(c, "temperature", 0, 0, 100, &temperature, error) || !parse_int_param(c, "top_k", 0, 0, 1 << 20, &top_k, error) ||
        !parse_float_param(c, "top_p", 1, 0, 1, &top_p, error) || !parse_float_param(c, "min_p", 0, 0, 1, &min_p, error) ||
        !parse_float_param(c, "repetition_penalty", 1, 1e-3, 100, &penalty, error) ||
        !parse_int_param(c, "penalty_last_n", sampling->penalty_last_n, 0, 1 << 20, &last_n, error))
        return false;
    sampling->temperature = (float)temperature, sampling->top_k = (int)top_k, sampling->top_p = (float)top_p;
    sampling->min_p = (float)min_p, sampling->repetition_penalty = (float)penalty, sampling->penalty_last_n = (int)last_n;
    return true;
}

static void release(tm_runner_state *s) {
    if (!s) return;
    tm_energy_close(s->energy);
    tm_engine_free(s->engine);
    free(s->model);
    free(s->device);
    free(s);
}

/* The bandwidth ceiling of `device` (the engine's, resolved) with `threads` threads on the CPU:
 * measured at its first use in this process (printed), 0 with a warning when it cannot be. The GPU's
 * is measured on the current CUDA device, which the engine just made its own. */
static double device_ceiling(const char *device, int threads) {
    const bool gpu = strncmp(device, "cuda", 4) == 0;
    if (gpu) threads = 0;
    for (int i = 0; i < n_measured_ceilings; i++)
        if (!strcmp(measured_ceilings[i].device, device) && measured_ceilings[i].threads == threads) return measured_ceilings[i].gb_per_s;
    tm_error_t error = {0};
    double gb_per_s = 0;
    tm_status status = gpu ? tm_gpu_copy_ceiling(&gb_per_s, &error) : tm_host_read_ceiling(threads, &gb_per_s, &error);
    if (status) fprintf(stderr, "      warning: no roofline for %s: %s\n", device, error.message);
    else printf("      ceiling: %s %.0f GB/s\n", gpu ? "device copy" : "host memory read", gb_per_s);
    if (n_measured_ceilings < (int)(sizeof measured_ceilings / sizeof measured_ceilings[0])) {
        snprintf(measured_ceilings[n_measured_ceilings].device, sizeof measured_ceilings[0].device, "%s", device);
        measured_ceilings[n_measured_ceilings].threads = threads;
        measured_ceilings[n_measured_ceilings++].gb_per_s = gb_per_s;
    }
    return gb_per_s;
}

/* decode tokens/s against the roofline (batch x ceiling / bytes a step), decode GB/s against the ceiling */
static double throughput_ceiling(tm_runner_state *s, int metric) {
    if (!s || s->ceiling_gb_per_s <= 0 || s->bytes_per_step <= 0) return 0;
    if (metric == DECODE_TOKENS_PER_S) return s->batch * s->ceiling_gb_per_s * 1e9 / s->bytes_per_step;
    return metric == DECODE_GB_PER_S ? s->ceiling_gb_per_s : 0;
}

static tm_status prepare(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, bool memory_kind,
                         tm_error_t *error) {
    long long batch, prompt, gen, threads, max_batch_tokens, ctx, max_sequences;
    if (!parse_int_param(c, "batch", 1, 1, 1024, &batch, error) ||
        !parse_int_param(c, "prompt_tokens", 128, 1, 1 << 20, &prompt, error) ||
        !parse_int_param(c, "gen_tokens", 32, 1, 1 << 20, &gen, error) ||
        !parse_int_param(c, "threads", 0, 0, 1024, &threads, error) ||
        !parse_int_param(c, "max_batch_tokens", 512, 1, 1 << 20, &max_batch_tokens, error) ||
        !parse_int_param(c, "ctx", 0, 0, 1 << 24, &ctx, error) ||
        !parse_int_param(c, "max_sequences", 0, 0, 1024, &max_sequences, error))
        return TM_ERR_INVALID_ARG;
    const char *precision = tm_case_param(c, "precision", "fast"), *kv_type = tm_case_param(c, "kv_type", "f16");
    const char *device = tm_case_param(c, "device", "auto");
    if (strcmp(precision, "fast") && strcmp(precision, "exact"))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: precision '%s' (fast or exact)", c->name, precision);
    if (tm_kv_type_from_name(kv_type) < 0)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: kv_type '%s' (f16, f32 or q8)", c->name, kv_type);
    const char *model = tm_case_param(c, "model", suite->model); /* a case's model (an axis) overrides the suite's */
    if (!model) return tm_error_set(error, TM_ERR_INVALID_ARG, "%s: a %s suite needs a 'model'", suite->path, suite->kind);
    long long kv_bytes, step_events, overlap;
    if (!parse_int_param(c, "kv_bytes", 0, 0, (long long)1 << 50, &kv_bytes, error) ||
        !parse_int_param(c, "step_events", 0, 0, 1, &step_events, error) || !parse_int_param(c, "overlap", 1, 0, 1, &overlap, error))
        return TM_ERR_INVALID_ARG;
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.n_threads = (int)threads;
    options.precision = !strcmp(precision, "exact");
    options.kv_type = tm_kv_type_from_name(kv_type);
    if (max_sequences && max_sequences < batch)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: max_sequences %lld is below batch %lld", c->name, max_sequences, batch);
    options.max_sequences = (int)(max_sequences ? max_sequences : batch); /* fixed: one engine serves every case */
    options.max_batch_tokens = (int)max_batch_tokens;
    options.n_ctx = ctx ? (int)ctx : (int)(prompt + gen + 1);
    options.device = device;
    options.kv_bytes = (uint64_t)kv_bytes;
    options.time_device_steps = step_events != 0;
    options.no_step_overlap = overlap == 0;
    tm_runner_state *s = *state;
    bool reuse = s && !strcmp(s->model, model) && s->options.kv_bytes == options.kv_bytes && s->options.n_threads == options.n_threads &&
                 s->options.precision == options.precision && s->options.kv_type == options.kv_type &&
                 s->options.max_sequences == options.max_sequences && s->options.n_ctx == options.n_ctx &&
                 s->options.max_batch_tokens == options.max_batch_tokens && !strcmp(s->options.device, device) &&
                 s->options.time_device_steps == options.time_device_steps && s->options.no_step_overlap == options.no_step_overlap;
    if (!reuse) {
        release(s);
        *state = s = calloc(1, sizeof *s);
        if (!s || !(s->model = strdup(model))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
        s->options = options;
        if (!(s->device = strdup(device))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
        s->options.device = s->device;
        if (!strncmp(model, "synthetic:", 10)) s->options.synthetic = s->model + 10;
        else s->options.model_path = s->model;
        tm_status status = tm_engine_create(&s->options, &s->engine, error);
        if (status) {
            release(s);
            *state = NULL;
            return status;
        }
        if (!memory_kind) {
            s->ceiling_gb_per_s = device_ceiling(tm_engine_device(s->engine), (int)threads);
            if (!(s->energy = tm_energy_open(tm_engine_device(s->engine)))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
            printf("      energy: %s\n", tm_energy_source(s->energy));
        }
    }
    s->batch = (int)batch;
    s->name = c->name;
    s->prompt_tokens = (int)prompt;
    s->gen_tokens = (int)gen;
    s->memory_kind = memory_kind;
    if (!parse_sampling(c, &s->sampling, error)) return TM_ERR_INVALID_ARG;
    s->seed = 1;
    tm_engine_stats stats;
    tm_engine_get_stats(s->engine, &stats);
    s->bytes_per_step = (double)stats.step_weight_bytes + (double)stats.kv_bytes_per_position * (double)batch * ((double)prompt + gen / 2.0);
    if (!memory_kind && s->ceiling_gb_per_s > 0)
        printf("      roofline: %.4g tokens/s (%.4g GB a decode step at %.0f GB/s)\n", throughput_ceiling(s, DECODE_TOKENS_PER_S),
               s->bytes_per_step / 1e9, s->ceiling_gb_per_s);
    return TM_OK;
}

static tm_status prepare_throughput(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, tm_error_t *error) {
    return prepare(state, suite, c, false, error);
}
static tm_status prepare_memory(tm_runner_state **state, const tm_suite *suite, const tm_suite_case *c, tm_error_t *error) {
    return prepare(state, suite, c, true, error);
}

/* VmRSS and VmHWM of this process in bytes (0 when /proc is unavailable). */
static void process_memory(double *rss, double *peak) {
    *rss = *peak = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        long long kb;
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1) *rss = (double)kb * 1024;
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) *peak = (double)kb * 1024;
    }
    fclose(f);
}

/* A throughput case measures its batch decoding together. The first step admits every request the KV
 * pool holds (the engine's FIFO admission): `waiting` requests still queued after it waited for
 * earlier ones to finish; `preemptions`: the pool ran full while the batch decoded and sequences
 * were recomputed from their prompts. Either way the figure would be another workload's: the error
 * says which, and names the pool. */
static tm_status batch_apart(const tm_runner_state *s, const tm_engine_stats *after, int waiting, int preemptions,
                             tm_error_t *error) {
    char reason[192];
    if (waiting > 0)
        snprintf(reason, sizeof reason, "only %d of its %d sequences ran at once", s->batch - waiting, s->batch);
    else
        snprintf(reason, sizeof reason, "the KV pool ran full while its %d sequences decoded: %d preemptions (sequences recomputed "
                 "from their prompts)", s->batch, preemptions);
    return tm_error_set(error, TM_ERR_INVALID_ARG, "case %s: %s; a KV pool of %lld pages of %llu bytes is too small for the batch: "
                        "raise kv_bytes (or lower ctx)", s->name, reason, (long long)after->kv_pages_total,
                        (unsigned long long)after->kv_page_size);
}

static tm_status repeat(tm_runner_state *s, double *values, tm_error_t *error) {
    int vocab = tm_engine_vocab_size(s->engine);
    int32_t *prompt = malloc((size_t)s->prompt_tokens * sizeof *prompt);
    int *ids = malloc((size_t)s->batch * sizeof *ids);
    double *latencies = malloc((size_t)(s->gen_tokens + 8) * sizeof *latencies);
    if (!prompt || !ids || !latencies) {
        free(prompt), free(ids), free(latencies);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
    }
    tm_rng_t rng;
    tm_rng_seed(&rng, s->seed++);
    tm_engine_stats before, after;
    tm_engine_get_stats(s->engine, &before);
    tm_status status = TM_OK;
    for (int r = 0; r < s->batch && !status; r++) {
        for (int i = 0; i < s->prompt_tokens; i++) prompt[i] = (int32_t)(tm_rng_next(&rng) % (uint64_t)vocab);
        tm_request_params params;
        tm_request_params_default(&params);
        params.prompt_tokens = prompt;
        params.n_prompt_tokens = s->prompt_tokens;
        params.max_tokens = s->gen_tokens;
        params.ignore_eos = true;
        params.sampling = s->sampling;
        params.sampling.seed = s->seed * 1000003u + (uint64_t)r; /* s->seed: the repetition's, already advanced */
        status = tm_engine_submit(s->engine, &params, &ids[r], error);
    }
    int n_latencies = 0, waiting = -1; /* requests still queued after the first step (admission) */
    uint64_t kv_peak = 0, kv_used_peak = 0;
    /* The decode phase's energy: a mark after every step that processed prompt tokens (the phase
     * starts after the last of them) and one at the end. A mark reads the energy counter, which
     * costs milliseconds on some GPUs (3.9 ms an H200 NVML call), so never between decode steps. */
    tm_energy_mark phase_start = {0, 0, NAN};
    int64_t phase_tokens = 0;
    while (!status && tm_engine_busy(s->engine)) {
        tm_engine_stats step_before, step_after;
        tm_engine_get_stats(s->engine, &step_before);
        double t0 = tm_time_seconds();
        status = tm_engine_step(s->engine, error);
        double elapsed = tm_time_seconds() - t0;
        tm_engine_get_stats(s->engine, &step_after);
        const bool decode_step = step_after.prompt_tokens == step_before.prompt_tokens && step_after.steps > step_before.steps;
        if (decode_step && n_latencies < s->gen_tokens + 8) latencies[n_latencies++] = elapsed * 1e3;
        if (!decode_step && s->energy) {
            phase_start = tm_energy_mark_now(s->energy);
            phase_tokens = step_after.generated_tokens;
        }
        kv_peak = TM_MAX(kv_peak, step_after.kv_bytes_allocated);
        kv_used_peak = TM_MAX(kv_used_peak, step_after.kv_bytes_used);
        if (waiting < 0) waiting = step_after.requests_queued;
    }
    tm_engine_get_stats(s->engine, &after);
    double phase_joules = NAN;
    if (s->energy && phase_start.wall_s > 0) {
        const tm_energy_mark phase_end = tm_energy_mark_now(s->energy);
        phase_tokens = after.generated_tokens - phase_tokens;
        tm_energy_method method;
        double counter_joules;
        phase_joules = tm_energy_between(s->energy, phase_start, phase_end, &method, &counter_joules);
        if (tm_energy_compare_requested())
            printf("      energy: decode phase %.3f s, %lld tokens: %s %.3f J, counter %.3f J\n", phase_end.wall_s - phase_start.wall_after_s,
                   (long long)phase_tokens, tm_energy_method_name(method), phase_joules, counter_joules);
    }
    double ttft[1024];
    int n_ttft = 0, preemptions = 0;
    for (int r = 0; r < s->batch; r++) {
        tm_request_info info;
        if (!status && tm_engine_request_info(s->engine, ids[r], &info) == TM_OK) {
            if (n_ttft < 1024) ttft[n_ttft++] = (info.first_token_at - info.submitted_at) * 1e3;
            preemptions += info.preemptions;
        }
        tm_engine_release(s->engine, ids[r]);
    }
    if (!status && !s->memory_kind && (waiting > 0 || preemptions > 0)) status = batch_apart(s, &after, waiting, preemptions, error);
    if (!status && s->memory_kind) {
        values[1] = (double)after.weight_bytes;
        values[2] = (double)kv_peak;
        values[3] = (double)kv_used_peak;
        values[0] = values[1] + values[2];
        process_memory(&values[4], &values[5]);
        values[6] = (double)after.device_weight_bytes;
        values[7] = (double)after.device_kv_bytes;
        values[8] = (double)after.device_activation_bytes;
        values[9] = (double)after.device_workspace_bytes;
    } else if (!status) {
        /* the first token of each sequence comes out of prefill: decode made the rest */
        double decode_tokens = (double)(after.generated_tokens - before.generated_tokens) - s->batch;
        double decode_seconds = after.decode_seconds - before.decode_seconds;
        double prefill_seconds = after.prefill_seconds - before.prefill_seconds;
        values[0] = decode_seconds > 0 ? decode_tokens / decode_seconds : 0;
        values[1] = prefill_seconds > 0 ? (double)(after.prompt_tokens - before.prompt_tokens) / prefill_seconds : 0;
        tm_sort_doubles(latencies, (size_t)n_latencies);
        values[2] = tm_percentile_sorted(latencies, (size_t)n_latencies, 0.50);
        values[3] = tm_percentile_sorted(latencies, (size_t)n_latencies, 0.90);
        values[4] = tm_percentile_sorted(latencies, (size_t)n_latencies, 0.99);
        tm_sort_doubles(ttft, (size_t)n_ttft);
        values[5] = tm_percentile_sorted(ttft, (size_t)n_ttft, 0.5);
        values[DECODE_GB_PER_S] = values[DECODE_TOKENS_PER_S] / s->batch * s->bytes_per_step / 1e9;
        values[DECODE_JOULES_PER_TOKEN] = phase_tokens > 0 && phase_joules >= 0 ? phase_joules / (double)phase_tokens : NAN;
        const int64_t timed = after.device_timed_steps - before.device_timed_steps;
        values[DEVICE_IDLE_US_PER_STEP] = timed > 0 ? (after.device_idle_seconds - before.device_idle_seconds) * 1e6 / (double)timed : NAN;
    }
    free(prompt), free(ids), free(latencies);
    return status;
}

static const tm_runner runners[] = {
    {"throughput", throughput_metrics, (int)(sizeof throughput_metrics / sizeof throughput_metrics[0]), prepare_throughput,
     repeat, release, throughput_ceiling},
    {"memory", memory_metrics, (int)(sizeof memory_metrics / sizeof memory_metrics[0]), prepare_memory, repeat, release, NULL},
};

const tm_runner *tm_runner_for_kind(const char *kind) {
    for (size_t i = 0; i < sizeof runners / sizeof runners[0]; i++)
        if (!strcmp(runners[i].kind, kind)) return &runners[i];
    if (!strcmp(kind, tm_kernels_runner.kind)) return &tm_kernels_runner;
    return NULL;
}
