/*
 * synth.c - `tensormesh synth`: write a synthetic llama GGUF (see engine/synth.h).
 */
#include <stdio.h>
#include <string.h>

#include "../synth.h"
#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: tensormesh synth --preset PRESET --type TYPE -o FILE [--seed N] [--threads N]\n"
            "       tensormesh synth --preset PRESET --type TYPE --size     (print the file size only)\n"
            "       tensormesh synth --list\n\n"
            "Writes a llama-architecture GGUF with random weights of the preset's real shapes and the\n"
            "type's tensor-type recipe (q4_k_m follows llama.cpp: Q6_K output, Q6_K attn_v/ffn_down on\n"
            "the 'more bits' layers, Q5_K attn_v on 80-layer models, Q4_K elsewhere).\n\n"
            "  --preset P   tiny, smollm2-135m, llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b\n"
            "  --type T     q4_k_m (default), q8_0, f16\n"
            "  --seed N     random seed (default 1); the same seed gives the same bytes\n"
            "  --threads N  generator threads (default: all CPUs)\n"
            "  --vocab-only metadata and tokenizer only, no tensors (for tokenizer work)\n");
}

int tm_cli_synth(int argc, char **argv) {
    const char *preset_name = NULL, *type_name = "q4_k_m", *output = NULL;
    long long seed = 1, threads = 0;
    bool size_only = false, vocab_only = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            for (const tm_synth_preset *const *p = tm_synth_presets(); *p; p++)
                printf("%-14s vocab %6u  embd %5u  layers %2u  heads %2u/%-2u  ff %5u  ctx %u%s\n", (*p)->name,
                       (*p)->n_vocab, (*p)->n_embd, (*p)->n_layer, (*p)->n_head, (*p)->n_head_kv, (*p)->n_ff,
                       (*p)->n_ctx, (*p)->tied_embeddings ? "  tied embeddings" : "");
            return 0;
        } else if (!strcmp(a, "--size")) {
            size_only = true;
        } else if (!strcmp(a, "--vocab-only")) {
            vocab_only = true;
        } else if (!strcmp(a, "--preset")) {
            if (!(preset_name = tm_cli_flag_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--type")) {
            if (!(type_name = tm_cli_flag_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!(output = tm_cli_flag_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = tm_cli_flag_value(argc, argv, &i)) || !tm_cli_parse_int("synth", a, v, 0, INT64_MAX, &seed)) return 2;
        } else if (!strcmp(a, "--threads")) {
            if (!(v = tm_cli_flag_value(argc, argv, &i)) || !tm_cli_parse_int("synth", a, v, 1, 1024, &threads)) return 2;
        } else {
            fprintf(stderr, "tensormesh synth: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!preset_name || (!output && !size_only)) {
        fprintf(stderr, "tensormesh synth: %s is required\n\n", !preset_name ? "--preset" : "-o FILE");
        usage(stderr);
        return 2;
    }
    tm_synth_options options = {.seed = (uint64_t)seed, .progress = true, .vocab_only = vocab_only};
    tm_error_t error = {0};
    char spec[128];
    snprintf(spec, sizeof spec, "%s:%s", preset_name, type_name);
    if (tm_synth_parse_spec(spec, &options, &error)) {
        fprintf(stderr, "tensormesh synth: %s\n", error.message);
        return 2;
    }
    uint64_t size;
    if (tm_synth_file_size(&options, &size, &error)) {
        fprintf(stderr, "tensormesh synth: %s\n", error.message);
        return 1;
    }
    if (size_only) {
        printf("%llu\n", (unsigned long long)size);
        return 0;
    }
    fprintf(stderr, "synth: %s %s -> %s (%.3f GB)\n", options.preset->name, type_name, output, (double)size / 1e9);
    options.pool = tm_threadpool_create((int)threads);
    tm_status status = tm_synth_write_file(&options, output, &error);
    tm_threadpool_free(options.pool);
    if (status) {
        fprintf(stderr, "tensormesh synth: %s\n", error.message);
        return 1;
    }
    printf("%s: %llu bytes\n", output, (unsigned long long)size);
    return 0;
}
