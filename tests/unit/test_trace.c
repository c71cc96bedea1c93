/*
 * test_trace.c - the engine's NVTX ranges, seen by a tool: tests/tools/nvtx_recorder.c is
 * attached as the NVTX injection library (NVTX_INJECTION64_PATH, set by CTest) and logs every
 * push and pop. One request of 4 prompt tokens and 5 generated tokens on the tiny synthetic model
 * (CPU backend, 4 layers) must show, in domain "tensormesh": "model load" once, then 1 "prefill
 * step" and 4 "decode step" ranges, each with one "sampling" range nested inside; every push
 * popped, nothing popped that was not pushed. With nvtx_detail the same request also shows, in
 * every step, the 4 layers (each holding the 9 operation ranges: attention norm, q/k/v, rope + kv
 * append, attention, attention output, ffn norm, gate/up, swiglu, down) and one "lm head".
 * Skipped (77) when built without NVTX or without the recorder.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tensormesh.h"

#define SKIPPED 77

#ifdef TM_NVTX
typedef struct counts {
    int loads, prefills, decodes, samplings, nested_samplings, layers, ops_in_layers, lm_heads, unbalanced, open, other_domain;
} counts;

static void run_request(bool detail) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "tiny:q4_k_m";
    options.device = "cpu";
    options.n_threads = 1;
    options.nvtx_detail = detail;
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    CHECK(!tm_engine_create(&options, &engine, &error), "engine: %s", error.message);
    if (!engine) return;
    tm_request_params params;
    tm_request_params_default(&params);
    int32_t prompt[4] = {5, 6, 7, 8};
    params.prompt_tokens = prompt;
    params.n_prompt_tokens = 4;
    params.max_tokens = 5;
    params.ignore_eos = true;
    int id;
    CHECK(!tm_engine_submit(engine, &params, &id, &error), "submit: %s", error.message);
    while (tm_engine_busy(engine)) CHECK(!tm_engine_step(engine, &error), "step: %s", error.message);
    tm_engine_free(engine);
}

static const char *const ops[] = {"attention norm", "q/k/v", "rope + kv append", "attention", "attention output",
                                  "ffn norm", "gate/up", "swiglu", "down"};

/* Parse the log from byte `offset` on. */
static counts parse(const char *path, long offset) {
    counts c = {0};
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "the recorder wrote %s", path);
    if (!f) return c;
    fseek(f, offset, SEEK_SET);
    char line[256], stack[32][256];
    int depth = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "push ", 5)) {
            if (strncmp(line + 5, "tensormesh ", 11)) c.other_domain++;
            const char *name = line + 5 + 11, *parent = depth > 0 && depth <= 32 ? stack[depth - 1] : "";
            c.loads += !strcmp(name, "model load");
            c.prefills += !strcmp(name, "prefill step");
            c.decodes += !strcmp(name, "decode step");
            c.lm_heads += !strcmp(name, "lm head");
            c.layers += !strncmp(name, "layer ", 6);
            if (!strcmp(name, "sampling")) {
                c.samplings++;
                c.nested_samplings += !strcmp(parent, "prefill step") || !strcmp(parent, "decode step");
            }
            for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) c.ops_in_layers += !strcmp(name, ops[k]) && !strncmp(parent, "layer ", 6);
            if (depth < 32) snprintf(stack[depth], sizeof stack[depth], "%s", name);
            depth++;
        } else if (!strncmp(line, "pop ", 4)) {
            if (depth == 0) c.unbalanced++;
            else depth--;
        }
    }
    c.open = depth;
    fclose(f);
    return c;
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    return size;
}

#endif /* TM_NVTX */

int main(void) {
#ifndef TM_NVTX
    printf("test_trace: skipped: built without NVTX (TM_CUDA off or no CUDA toolkit)\n");
    return SKIPPED;
#else
    const char *log_path = getenv("TM_NVTX_LOG");
    if (!getenv("NVTX_INJECTION64_PATH") || !log_path) {
        printf("test_trace: skipped: NVTX_INJECTION64_PATH / TM_NVTX_LOG not set (run through ctest)\n");
        return SKIPPED;
    }
    run_request(false);
    counts c = parse(log_path, 0);
    printf("ranges: model load %d, prefill steps %d, decode steps %d, sampling %d (%d nested in a step), layers %d\n", c.loads,
           c.prefills, c.decodes, c.samplings, c.nested_samplings, c.layers);
    CHECK(c.other_domain == 0, "every range is in domain tensormesh");
    CHECK(c.loads == 1, "one model load range (%d)", c.loads);
    CHECK(c.prefills == 1 && c.decodes == 4, "1 prefill and 4 decode steps (%d, %d)", c.prefills, c.decodes);
    CHECK(c.samplings == 5 && c.nested_samplings == 5, "a sampling range inside every step (%d, %d)", c.samplings,
          c.nested_samplings);
    CHECK(c.layers == 0 && c.lm_heads == 0, "no per-layer ranges without detail (%d)", c.layers);
    CHECK(c.open == 0 && c.unbalanced == 0, "pushes and pops balance (open %d, stray pops %d)", c.open, c.unbalanced);

    long offset = file_size(log_path);
    run_request(true);
    c = parse(log_path, offset);
    printf("with detail: layers %d, operations inside layers %d, lm heads %d\n", c.layers, c.ops_in_layers, c.lm_heads);
    CHECK(c.prefills == 1 && c.decodes == 4, "1 prefill and 4 decode steps (%d, %d)", c.prefills, c.decodes);
    CHECK(c.layers == 5 * 4, "4 layer ranges per step (%d over 5 steps)", c.layers);
    CHECK(c.ops_in_layers == 5 * 4 * 9, "9 operation ranges in every layer (%d)", c.ops_in_layers);
    CHECK(c.lm_heads == 5, "one lm head range per step (%d)", c.lm_heads);
    CHECK(c.open == 0 && c.unbalanced == 0, "pushes and pops balance (open %d, stray pops %d)", c.open, c.unbalanced);
    return check_report("test_trace");
#endif
}
