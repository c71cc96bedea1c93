/*
 * commands.h - tmbench's subcommands that live in their own files (tmbench.c dispatches).
 * Each returns the exit status: 0 ok, 1 failure (or, for diff, a regression), 2 bad usage.
 */
#ifndef TM_COMMANDS_H
#define TM_COMMANDS_H

#include <stdbool.h>
#include <string.h>

#define TM_DEFAULT_DB "results/tensormesh.db"

/* Whether an argument asks for a (sub)command's usage: --help or -h. */
static inline bool tm_is_help_option(const char *argument) { return !strcmp(argument, "--help") || !strcmp(argument, "-h"); }

int tm_command_diff(int argc, char **argv);
int tm_command_report(int argc, char **argv);
int tm_command_export(int argc, char **argv);

#endif /* TM_COMMANDS_H */
