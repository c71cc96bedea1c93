/*
 * test_trace.c - the engine's NVTX ranges, seen by a tool: tests/tools/nvtx_recorder.c is
 * attached as the NVTX injection library (NVTX_INJECTION64_PATH, set by CTest) and logs every
 * push and pop. One request of 4 prompt tokens and 5 generated tokens on the tiny synthetic model
 * (CPU backend) must show, in domain "tensormesh": "model load" once, then 1 "prefill step" and 4
 * "decode step" ranges, each with one "sampling" range nested inside; every push popped, nothing
 * popped that was not pushed. Skipped (77) when built without NVTX or without the recorder.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tensormesh.h"

#define SKIPPED 77

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
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.synthetic = "tiny:q4_k_m";
    options.device = "cpu";
    options.n_threads = 1;
    tm_engine *engine = NULL;
    tm_error_t error = {0};
    CHECK(!tm_engine_create(&options, &engine, &error), "engine: %s", error.message);
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

    FILE *f = fopen(log_path, "r");
    CHECK(f != NULL, "the recorder wrote %s", log_path);
    if (!f) return check_report("test_trace");
    char line[256], stack[16][256];
    int depth = 0, loads = 0, prefills = 0, decodes = 0, samplings = 0, nested_samplings = 0, unbalanced = 0, other_domain = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "push ", 5)) {
            if (strncmp(line + 5, "tensormesh ", 11)) other_domain++;
            const char *name = line + 5 + 11;
            loads += !strcmp(name, "model load");
            prefills += !strcmp(name, "prefill step");
            decodes += !strcmp(name, "decode step");
            if (!strcmp(name, "sampling")) {
                samplings++;
                nested_samplings += depth > 0 && (!strcmp(stack[depth - 1], "prefill step") || !strcmp(stack[depth - 1], "decode step"));
            }
            if (depth < 16) snprintf(stack[depth], sizeof stack[depth], "%s", name);
            depth++;
        } else if (!strncmp(line, "pop ", 4)) {
            if (depth == 0) unbalanced++;
            else depth--;
        }
    }
    fclose(f);
    printf("ranges: model load %d, prefill steps %d, decode steps %d, sampling %d (%d nested in a step)\n", loads, prefills,
           decodes, samplings, nested_samplings);
    CHECK(other_domain == 0, "every range is in domain tensormesh");
    CHECK(loads == 1, "one model load range (%d)", loads);
    CHECK(prefills == 1 && decodes == 4, "1 prefill and 4 decode steps (%d, %d)", prefills, decodes);
    CHECK(samplings == 5 && nested_samplings == 5, "a sampling range inside every step (%d, %d)", samplings, nested_samplings);
    CHECK(depth == 0 && unbalanced == 0, "pushes and pops balance (open %d, stray pops %d)", depth, unbalanced);
    return check_report("test_trace");
#endif
}
