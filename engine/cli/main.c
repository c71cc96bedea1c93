/*
 * main.c - the `tensormesh` command: a table of subcommands, each in its own file.
 *
 * Guarantees: `tensormesh --help` and `tensormesh CMD --help` print usage and exit 0; an unknown
 * command or flag prints what was wrong and the usage to stderr and exits 2; a failed command
 * prints the error message (file, key/tensor, byte offset) and exits 1.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const tm_cli_command commands[] = {
    {"generate", "generate text from a prompt (streams it, then prints tokens/s)", tm_cli_generate},
    {"synth", "write a synthetic llama GGUF with random weights of a real model's shapes", tm_cli_synth},
    {"inspect", "print a GGUF file's metadata, tensor table and totals", tm_cli_inspect},
    {"bench", "measure CPU kernels (gemv per weight type)", tm_cli_bench},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out) {
    fprintf(out, "usage: tensormesh COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`tensormesh COMMAND --help` describes a command's options.\n"
                 "Wherever a model file is accepted, --synthetic PRESET:TYPE builds one in memory instead.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("tensormesh %s\n", TM_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "tensormesh: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
