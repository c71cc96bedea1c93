/*
 * tensormesh.h - the public C API of the TensorMesh engine.
 *
 * Guarantees: opaque handles, plain C types only (no CUDA types), status codes that only grow at
 * the end. Every function that can fail on user input returns a tm_status and, where it takes a
 * tm_error_t, writes a message that names the file, field and byte offset that was wrong.
 */
#ifndef TENSORMESH_H
#define TENSORMESH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TM_VERSION_STRING "0.1.0"

/* Status codes: append only. */
typedef enum tm_status {
    TM_OK = 0,
    TM_ERR_IO = 1,          /* open/read/write/mmap failed */
    TM_ERR_FORMAT = 2,      /* a file is malformed (truncated, bad magic, out-of-range field) */
    TM_ERR_UNSUPPORTED = 3, /* valid but not supported here (unknown tensor type, version) */
    TM_ERR_INVALID_ARG = 4, /* a caller passed a bad argument (unknown preset, bad flag value) */
    TM_ERR_NO_MEMORY = 5,   /* host or device allocation failed */
    TM_ERR_NOT_FOUND = 6,   /* a looked-up key or tensor is absent */
    TM_ERR_INTERNAL = 7,    /* a broken invariant: a bug in TensorMesh */
} tm_status;

/* An error report: the status plus a human-readable message (file, key/tensor, byte offset). */
typedef struct tm_error {
    tm_status status;
    char message[512];
} tm_error_t;

/* Name of a status code, e.g. "format error". Never NULL. */
const char *tm_status_name(tm_status status);

#ifdef __cplusplus
}
#endif

#endif /* TENSORMESH_H */
