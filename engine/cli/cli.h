/*
 * cli.h - subcommands of the `tensormesh` command and the small helpers they share.
 * Each subcommand returns the process exit status: 0 ok, 1 the work failed, 2 bad usage.
 */
#ifndef TM_CLI_H
#define TM_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "../common.h"
#include "../gguf.h"

typedef struct tm_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} tm_cli_command;

int tm_cli_generate(int argc, char **argv);
int tm_cli_synth(int argc, char **argv);
int tm_cli_inspect(int argc, char **argv);
int tm_cli_bench(int argc, char **argv);

/* Value of flag argv[*i] (advancing *i); prints an error and returns NULL when it is missing. */
const char *tm_cli_flag_value(int argc, char **argv, int *i);
/* Parse a whole decimal integer in [min, max]; prints "COMMAND: FLAG: ..." on error. */
bool tm_cli_parse_int(const char *command, const char *flag, const char *text, long long min, long long max,
                      long long *out);

/* Open a model given as a path or as a synthetic spec (exactly one of the two non-NULL). */
tm_status tm_cli_open_model(const char *path, const char *synthetic, int n_threads, tm_gguf **out, tm_error_t *error);

#endif /* TM_CLI_H */
