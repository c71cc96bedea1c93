/*
 * check.h - the few assertion macros the C unit tests use. A failed CHECK prints file:line and
 * a message and counts a failure; a test program exits non-zero when any check failed.
 */
#ifndef TM_CHECK_H
#define TM_CHECK_H

#include <stdio.h>

static int check_failures, check_passes;

#define CHECK(condition, ...)                                                   \
    do {                                                                        \
        if (condition) {                                                        \
            check_passes++;                                                     \
        } else {                                                                \
            check_failures++;                                                   \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

/* Print the summary and return the exit status for main(). */
static inline int check_report(const char *name) {
    printf("%s: %d checks passed, %d failed\n", name, check_passes, check_failures);
    return check_failures ? 1 : 0;
}

#endif
