/*
 * common.c - helpers shared by the tensormesh subcommands: flag values, integers, model opening.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "../synth.h"
#include "cli.h"

const char *tm_cli_flag_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "tensormesh %s: %s needs a value\n", argv[0], argv[*i]);
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

bool tm_cli_parse_int(const char *command, const char *flag, const char *text, long long min, long long max,
                      long long *out) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max) {
        fprintf(stderr, "tensormesh %s: %s: '%s' is not an integer in [%lld, %lld]\n", command, flag, text, min, max);
        return false;
    }
    *out = value;
    return true;
}

tm_status tm_cli_open_model(const char *path, const char *synthetic, int n_threads, tm_gguf **out, tm_error_t *error) {
    if (path && synthetic) return tm_error_set(error, TM_ERR_INVALID_ARG, "give a model path or --synthetic, not both");
    if (path) return tm_gguf_open(path, out, error);
    if (!synthetic) return tm_error_set(error, TM_ERR_INVALID_ARG, "no model given (a GGUF path or --synthetic PRESET:TYPE)");
    tm_synth_options options = {.seed = 1, .progress = true};
    tm_status status = tm_synth_parse_spec(synthetic, &options, error);
    if (status) return status;
    options.pool = tm_threadpool_create(n_threads);
    status = tm_synth_open_memory(&options, out, error);
    tm_threadpool_free(options.pool);
    return status;
}
