/*
 * common.c - error reporting, random numbers and the clock shared by every engine module.
 */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

const char *tm_status_name(tm_status status) {
    switch (status) {
    case TM_OK: return "ok";
    case TM_ERR_IO: return "I/O error";
    case TM_ERR_FORMAT: return "format error";
    case TM_ERR_UNSUPPORTED: return "unsupported";
    case TM_ERR_INVALID_ARG: return "invalid argument";
    case TM_ERR_NO_MEMORY: return "out of memory";
    case TM_ERR_NOT_FOUND: return "not found";
    case TM_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

tm_status tm_error_set(tm_error_t *error, tm_status status, const char *format, ...) {
    if (error) {
        va_list args;
        va_start(args, format);
        error->status = status;
        vsnprintf(error->message, sizeof error->message, format, args);
        va_end(args);
    }
    return status;
}

tm_status tm_error_prefix(tm_error_t *error, const char *format, ...) {
    if (!error) return TM_ERR_INTERNAL;
    char prefix[256];
    char old[sizeof error->message];
    va_list args;
    va_start(args, format);
    vsnprintf(prefix, sizeof prefix, format, args);
    va_end(args);
    memcpy(old, error->message, sizeof old);
    old[sizeof old - 1] = 0;
    size_t prefix_length = strnlen(prefix, sizeof error->message - 1);
    size_t old_length = strnlen(old, sizeof error->message - 1 - prefix_length);
    memcpy(error->message, prefix, prefix_length);
    memcpy(error->message + prefix_length, old, old_length);
    error->message[prefix_length + old_length] = 0;
    return error->status;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void tm_rng_seed(tm_rng_t *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) rng->state[i] = splitmix64(&seed);
}

void tm_rng_fill(tm_rng_t *rng, void *buffer, size_t n) {
    uint8_t *out = buffer;
    while (n >= 8) {
        uint64_t r = tm_rng_next(rng);
        memcpy(out, &r, 8);
        out += 8;
        n -= 8;
    }
    if (n) {
        uint64_t r = tm_rng_next(rng);
        memcpy(out, &r, n);
    }
}

double tm_time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
