/*
 * gguf.h - read and write GGUF files (versions 2 and 3).
 *
 * Reader guarantees: the file is mapped read-only and never copied; every count, length, offset
 * and size is checked against the bytes that remain, with overflow-safe arithmetic, before it is
 * used or allocated for; on any problem tm_gguf_open returns TM_ERR_FORMAT/UNSUPPORTED with a
 * message that names the file, the key or tensor, and the byte offset, and nothing leaks.
 * After a successful open: every tensor's data lies inside the file, is aligned to the file's
 * alignment, does not overlap another tensor, and has a supported type whose row size divides.
 *
 * Writer guarantees: metadata in the order it was added, tensor data aligned to the alignment,
 * output that this reader and the `gguf` Python package both read back unchanged.
 */
#ifndef TM_GGUF_H
#define TM_GGUF_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "quant.h"

#define TM_GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define TM_GGUF_DEFAULT_ALIGNMENT 32
#define TM_GGUF_MAX_DIMS 4

typedef enum tm_gguf_value_type {
    TM_GGUF_UINT8 = 0,
    TM_GGUF_INT8 = 1,
    TM_GGUF_UINT16 = 2,
    TM_GGUF_INT16 = 3,
    TM_GGUF_UINT32 = 4,
    TM_GGUF_INT32 = 5,
    TM_GGUF_FLOAT32 = 6,
    TM_GGUF_BOOL = 7,
    TM_GGUF_STRING = 8,
    TM_GGUF_ARRAY = 9,
    TM_GGUF_UINT64 = 10,
    TM_GGUF_INT64 = 11,
    TM_GGUF_FLOAT64 = 12,
    TM_GGUF_TYPE_COUNT = 13,
} tm_gguf_value_type;

/* A metadata value. Scalars are decoded; strings and primitive arrays point into the mapping. */
typedef struct tm_gguf_value {
    tm_gguf_value_type type;
    uint64_t offset; /* byte offset of the value in the file */
    union {
        uint64_t u64;  /* UINT8..UINT64 */
        int64_t i64;   /* INT8..INT64 */
        double f64;    /* FLOAT32, FLOAT64 */
        bool b;        /* BOOL */
        struct {
            const char *data; /* not NUL-terminated */
            uint64_t length;
        } string;
        struct {
            tm_gguf_value_type element_type;
            uint64_t count;
            const void *data;             /* primitive elements, little-endian, unaligned */
            struct tm_gguf_value *items;  /* STRING or ARRAY elements, decoded; NULL otherwise */
        } array;
    };
} tm_gguf_value;

typedef struct tm_gguf_kv {
    char *key; /* NUL-terminated copy */
    tm_gguf_value value;
} tm_gguf_kv;

typedef struct tm_gguf_tensor {
    char *name;                         /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t dims[TM_GGUF_MAX_DIMS];    /* dims[0] is the contiguous (row) dimension; unused = 1 */
    tm_type type;
    uint64_t offset;                    /* relative to the data section */
    uint64_t n_elements;
    uint64_t n_bytes;
    const void *data;                   /* inside the mapping */
    uint64_t info_offset;               /* byte offset of its tensor info in the file */
} tm_gguf_tensor;

typedef struct tm_gguf {
    char *label;             /* path or "<memory>" name: used in every message */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;    /* start of the data section */
    uint64_t n_kv;
    tm_gguf_kv *kvs;
    uint64_t n_tensors;
    tm_gguf_tensor *tensors;
    const uint8_t *base;     /* the whole file */
    uint64_t size;
    bool owns_mapping;       /* munmap on close */
    bool owns_memory;        /* free()/munmap of a buffer handed over by tm_gguf_open_memory */
} tm_gguf;

/* Map and parse a file. */
tm_status tm_gguf_open(const char *path, tm_gguf **out, tm_error_t *error);
/* Parse a buffer; with take_ownership the buffer (from tm_gguf_writer_to_memory) is released on
 * close. label names it in messages. */
tm_status tm_gguf_open_memory(const void *data, uint64_t size, const char *label, bool take_ownership,
                              tm_gguf **out, tm_error_t *error);
void tm_gguf_close(tm_gguf *gguf);

const tm_gguf_kv *tm_gguf_find_kv(const tm_gguf *gguf, const char *key);
const tm_gguf_tensor *tm_gguf_find_tensor(const tm_gguf *gguf, const char *name);

/* Typed getters: TM_ERR_NOT_FOUND when absent, TM_ERR_FORMAT (naming the key) when the stored
 * type cannot represent the requested one exactly. Integers of any width are accepted when the
 * value fits. */
tm_status tm_gguf_get_u64(const tm_gguf *gguf, const char *key, uint64_t *out, tm_error_t *error);
tm_status tm_gguf_get_f64(const tm_gguf *gguf, const char *key, double *out, tm_error_t *error);
tm_status tm_gguf_get_string(const tm_gguf *gguf, const char *key, const char **data, uint64_t *length,
                             tm_error_t *error);

const char *tm_gguf_value_type_name(tm_gguf_value_type type);
/* Size in bytes of a primitive element type; 0 for STRING/ARRAY/unknown. */
uint64_t tm_gguf_value_type_size(tm_gguf_value_type type);
/* Element i of a primitive array as integer/float (caller checks the element type). */
uint64_t tm_gguf_array_u64(const tm_gguf_value *array, uint64_t i);
int64_t tm_gguf_array_i64(const tm_gguf_value *array, uint64_t i);
double tm_gguf_array_f64(const tm_gguf_value *array, uint64_t i);

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct tm_gguf_writer tm_gguf_writer;

/* Fills the n_bytes of tensor `index` into dst (called once per tensor whose data was NULL). */
typedef tm_status (*tm_gguf_fill_fn)(void *user, uint64_t index, void *dst, uint64_t n_bytes, tm_error_t *error);
/* Progress after each tensor: done/total tensors and bytes. */
typedef void (*tm_gguf_progress_fn)(void *user, uint64_t tensors_done, uint64_t n_tensors,
                                    uint64_t bytes_done, uint64_t bytes_total);

tm_gguf_writer *tm_gguf_writer_create(uint32_t version, uint64_t alignment);
void tm_gguf_writer_free(tm_gguf_writer *writer);

/* Metadata setters; keys must be unique (a repeated key is an invalid-argument error). */
tm_status tm_gguf_writer_add_kv(tm_gguf_writer *writer, const char *key, const tm_gguf_value *value);
tm_status tm_gguf_writer_set_u32(tm_gguf_writer *writer, const char *key, uint32_t value);
tm_status tm_gguf_writer_set_i32(tm_gguf_writer *writer, const char *key, int32_t value);
tm_status tm_gguf_writer_set_f32(tm_gguf_writer *writer, const char *key, float value);
tm_status tm_gguf_writer_set_bool(tm_gguf_writer *writer, const char *key, bool value);
tm_status tm_gguf_writer_set_string(tm_gguf_writer *writer, const char *key, const char *value);
/* Primitive array: count elements of element_type, raw little-endian. */
tm_status tm_gguf_writer_set_array(tm_gguf_writer *writer, const char *key, tm_gguf_value_type element_type,
                                   const void *elements, uint64_t count);
tm_status tm_gguf_writer_set_string_array(tm_gguf_writer *writer, const char *key, const char *const *strings,
                                          uint64_t count);

/* Tensor with dims[0] the row length. data == NULL: ask the fill callback at write time. */
tm_status tm_gguf_writer_add_tensor(tm_gguf_writer *writer, const char *name, tm_type type, uint32_t n_dims,
                                    const uint64_t *dims, const void *data, tm_error_t *error);

/* Total size of the file that would be written. */
uint64_t tm_gguf_writer_file_size(const tm_gguf_writer *writer);

tm_status tm_gguf_writer_to_file(tm_gguf_writer *writer, const char *path, tm_gguf_fill_fn fill,
                                 tm_gguf_progress_fn progress, void *user, tm_error_t *error);
/* Writes into an anonymous mapping; hand it to tm_gguf_open_memory(take_ownership=true). */
tm_status tm_gguf_writer_to_memory(tm_gguf_writer *writer, void **out_data, uint64_t *out_size,
                                   tm_gguf_fill_fn fill, tm_gguf_progress_fn progress, void *user,
                                   tm_error_t *error);

#endif /* TM_GGUF_H */
