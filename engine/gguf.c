/*
 * gguf.c - GGUF reader (mmap, fully bounds-checked) and writer.
 *
 * DESIGN: the reader walks the file with a cursor {base, size, pos}; every read goes through
 * cursor_take(), which checks the remaining bytes first, so no read can pass the end. Before
 * allocating for a count (keys, tensors, array elements) the count is checked against the
 * smallest number of bytes each element needs, so a huge count in a short file is an error and
 * not a huge allocation. Arrays may nest, up to MAX_ARRAY_DEPTH. Errors go through one helper
 * that formats "LABEL: at byte N: <what>", and every parse failure unwinds through one cleanup.
 *
 * The writer serialises metadata into a growing buffer as it is added, keeps a tensor list,
 * and lays the data section out with each tensor aligned; data is either given up front or
 * produced by a fill callback at write time, one tensor at a time, so a 40 GB file needs
 * no more memory than its largest tensor.
 */
#define _GNU_SOURCE
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ARRAY_DEPTH 8
#define MAX_KEY_LENGTH 65535
#define MAX_NAME_LENGTH 65535

typedef struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    const char *label;
    tm_error_t *error;
} cursor;

TM_PRINTF(3, 4)
static tm_status parse_error(cursor *c, tm_status status, const char *format, ...) {
    char what[384];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    return tm_error_set(c->error, status, "%s: %s", c->label, what);
}

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

/* Pointer to the next n bytes, advancing; NULL (no error set) if fewer remain. */
static const uint8_t *cursor_take(cursor *c, uint64_t n) {
    if (n > remaining(c)) return NULL;
    const uint8_t *p = c->base + c->pos;
    c->pos += n;
    return p;
}

static bool read_u32(cursor *c, uint32_t *out) {
    const uint8_t *p = cursor_take(c, 4);
    if (!p) return false;
    memcpy(out, p, 4);
    return true;
}
static bool read_u64(cursor *c, uint64_t *out) {
    const uint8_t *p = cursor_take(c, 8);
    if (!p) return false;
    memcpy(out, p, 8);
    return true;
}

/* A length-prefixed string; `what` names it for the error ("key", "tensor name", ...). */
static tm_status read_string(cursor *c, const char *what, const char **data, uint64_t *length) {
    uint64_t at = c->pos;
    if (!read_u64(c, length)) return parse_error(c, TM_ERR_FORMAT, "at byte %llu: truncated length of %s",
                                                 (unsigned long long)at, what);
    const uint8_t *p = cursor_take(c, *length);
    if (!p)
        return parse_error(c, TM_ERR_FORMAT, "at byte %llu: %s of %llu bytes runs past the end of the file (%llu bytes)",
                           (unsigned long long)at, what, (unsigned long long)*length, (unsigned long long)c->size);
    *data = (const char *)p;
    return TM_OK;
}

/* Copy of a key or tensor name: non-empty, bounded, no NUL bytes, valid UTF-8. */
static bool valid_utf8(const uint8_t *s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t byte = s[i];
        int extra = byte < 0x80 ? 0 : (byte >> 5) == 6 ? 1 : (byte >> 4) == 14 ? 2 : (byte >> 3) == 30 ? 3 : -1;
        if (extra < 0 || byte == 0 || (extra == 1 && byte < 0xc2)) return false;
        if ((uint64_t)extra >= n - i) return false; /* sequence runs past the end */
        for (int k = 1; k <= extra; k++)
            if ((s[i + (uint64_t)k] & 0xc0) != 0x80) return false;
        i += (uint64_t)extra + 1;
    }
    return true;
}
static tm_status read_identifier(cursor *c, const char *what, uint64_t max_length, char **out) {
    uint64_t at = c->pos;
    const char *data = NULL;
    uint64_t length = 0;
    tm_status status = read_string(c, what, &data, &length);
    if (status) return status;
    if (length == 0 || length > max_length)
        return parse_error(c, TM_ERR_FORMAT, "at byte %llu: %s has length %llu (must be 1..%llu)", (unsigned long long)at,
                           what, (unsigned long long)length, (unsigned long long)max_length);
    if (!valid_utf8((const uint8_t *)data, length))
        return parse_error(c, TM_ERR_FORMAT, "at byte %llu: %s is not valid UTF-8 or contains a NUL byte",
                           (unsigned long long)at, what);
    *out = malloc(length + 1);
    if (!*out) return parse_error(c, TM_ERR_NO_MEMORY, "out of memory copying %s", what);
    memcpy(*out, data, length);
    (*out)[length] = 0;
    return TM_OK;
}

const char *tm_gguf_value_type_name(tm_gguf_value_type type) {
    static const char *const names[TM_GGUF_TYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
        "uint64", "int64", "float64"};
    return (unsigned)type < TM_GGUF_TYPE_COUNT ? names[type] : "unknown";
}

uint64_t tm_gguf_value_type_size(tm_gguf_value_type type) {
    switch (type) {
    case TM_GGUF_UINT8: case TM_GGUF_INT8: case TM_GGUF_BOOL: return 1;
    case TM_GGUF_UINT16: case TM_GGUF_INT16: return 2;
    case TM_GGUF_UINT32: case TM_GGUF_INT32: case TM_GGUF_FLOAT32: return 4;
    case TM_GGUF_UINT64: case TM_GGUF_INT64: case TM_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Decode one primitive element at p into the value's scalar fields. */
static void decode_scalar(tm_gguf_value_type type, const uint8_t *p, tm_gguf_value *value) {
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
    switch (type) {
    case TM_GGUF_UINT8: memcpy(&u8, p, 1); value->u64 = u8; break;
    case TM_GGUF_INT8: memcpy(&i8, p, 1); value->i64 = i8; break;
    case TM_GGUF_UINT16: memcpy(&u16, p, 2); value->u64 = u16; break;
    case TM_GGUF_INT16: memcpy(&i16, p, 2); value->i64 = i16; break;
    case TM_GGUF_UINT32: memcpy(&u32, p, 4); value->u64 = u32; break;
    case TM_GGUF_INT32: memcpy(&i32, p, 4); value->i64 = i32; break;
    case TM_GGUF_FLOAT32: memcpy(&f32, p, 4); value->f64 = f32; break;
    case TM_GGUF_BOOL: value->b = *p != 0; break;
    case TM_GGUF_UINT64: memcpy(&value->u64, p, 8); break;
    case TM_GGUF_INT64: memcpy(&value->i64, p, 8); break;
    case TM_GGUF_FLOAT64: memcpy(&value->f64, p, 8); break;
    default: break;
    }
}

static void free_value(tm_gguf_value *value) {
    if (value->type != TM_GGUF_ARRAY || !value->array.items) return;
    for (uint64_t i = 0; i < value->array.count; i++) free_value(&value->array.items[i]);
    free(value->array.items);
    value->array.items = NULL;
}

/* Parse a value of `type` at the cursor. `key` names it in errors. */
static tm_status read_value(cursor *c, const char *key, tm_gguf_value_type type, int depth, tm_gguf_value *value) {
    memset(value, 0, sizeof *value);
    value->type = type;
    value->offset = c->pos;
    if ((unsigned)type >= TM_GGUF_TYPE_COUNT)
        return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: unknown value type %u", key,
                           (unsigned long long)c->pos, (unsigned)type);
    if (type == TM_GGUF_STRING) {
        tm_status status = read_string(c, "string value", &value->string.data, &value->string.length);
        return status ? tm_error_prefix(c->error, "key '%s': ", key) : TM_OK;
    }
    if (type != TM_GGUF_ARRAY) {
        const uint8_t *p = cursor_take(c, tm_gguf_value_type_size(type));
        if (!p)
            return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: truncated %s value", key,
                               (unsigned long long)value->offset, tm_gguf_value_type_name(type));
        decode_scalar(type, p, value);
        return TM_OK;
    }
    /* array: element type, count, elements */
    if (depth >= MAX_ARRAY_DEPTH)
        return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: arrays nested deeper than %d", key,
                           (unsigned long long)value->offset, MAX_ARRAY_DEPTH);
    uint32_t element_type;
    uint64_t count;
    if (!read_u32(c, &element_type) || !read_u64(c, &count))
        return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: truncated array header", key,
                           (unsigned long long)value->offset);
    if (element_type >= TM_GGUF_TYPE_COUNT)
        return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: unknown array element type %u", key,
                           (unsigned long long)value->offset, element_type);
    value->array.element_type = (tm_gguf_value_type)element_type;
    value->array.count = count;
    uint64_t element_size = tm_gguf_value_type_size(value->array.element_type);
    if (element_size) {
        uint64_t n_bytes;
        if (!tm_mul_u64(count, element_size, &n_bytes) || n_bytes > remaining(c))
            return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: array of %llu %s runs past the end of the file",
                               key, (unsigned long long)value->offset, (unsigned long long)count,
                               tm_gguf_value_type_name(value->array.element_type));
        value->array.data = cursor_take(c, n_bytes);
        return TM_OK;
    }
    /* strings (>= 8 bytes each) or nested arrays (>= 12 bytes each) */
    uint64_t minimum = element_type == TM_GGUF_STRING ? 8 : 12;
    if (count > remaining(c) / minimum)
        return parse_error(c, TM_ERR_FORMAT, "key '%s' at byte %llu: array count %llu cannot fit in the %llu bytes left",
                           key, (unsigned long long)value->offset, (unsigned long long)count,
                           (unsigned long long)remaining(c));
    value->array.items = calloc(count ? count : 1, sizeof(tm_gguf_value));
    if (!value->array.items) return parse_error(c, TM_ERR_NO_MEMORY, "key '%s': out of memory for %llu items", key,
                                                (unsigned long long)count);
    for (uint64_t i = 0; i < count; i++) {
        tm_status status = read_value(c, key, value->array.element_type, depth + 1, &value->array.items[i]);
        if (status) {
            value->array.count = i + 1; /* free what was parsed */
            free_value(value);
            return status;
        }
    }
    return TM_OK;
}

void tm_gguf_close(tm_gguf *gguf) {
    if (!gguf) return;
    for (uint64_t i = 0; i < gguf->n_kv; i++) {
        free(gguf->kvs[i].key);
        free_value(&gguf->kvs[i].value);
    }
    free(gguf->kvs);
    for (uint64_t i = 0; i < gguf->n_tensors; i++) free(gguf->tensors[i].name);
    free(gguf->tensors);
    if ((gguf->owns_mapping || gguf->owns_memory) && gguf->base && gguf->size)
        munmap((void *)gguf->base, gguf->size);
    free(gguf->label);
    free(gguf);
}

const tm_gguf_kv *tm_gguf_find_kv(const tm_gguf *gguf, const char *key) {
    for (uint64_t i = 0; i < gguf->n_kv; i++)
        if (strcmp(gguf->kvs[i].key, key) == 0) return &gguf->kvs[i];
    return NULL;
}

const tm_gguf_tensor *tm_gguf_find_tensor(const tm_gguf *gguf, const char *name) {
    for (uint64_t i = 0; i < gguf->n_tensors; i++)
        if (strcmp(gguf->tensors[i].name, name) == 0) return &gguf->tensors[i];
    return NULL;
}

static int compare_tensor_offsets(const void *a, const void *b) {
    const tm_gguf_tensor *x = *(tm_gguf_tensor *const *)a, *y = *(tm_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static tm_status read_tensor_info(cursor *c, tm_gguf *gguf, uint64_t index) {
    tm_gguf_tensor *t = &gguf->tensors[index];
    t->info_offset = c->pos;
    char what[64];
    snprintf(what, sizeof what, "name of tensor %llu", (unsigned long long)index);
    tm_status status = read_identifier(c, what, MAX_NAME_LENGTH, &t->name);
    if (status) return status;
    for (uint64_t j = 0; j < index; j++)
        if (strcmp(gguf->tensors[j].name, t->name) == 0)
            return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: duplicate tensor name", t->name,
                               (unsigned long long)t->info_offset);
    if (!read_u32(c, &t->n_dims))
        return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: truncated dimension count", t->name,
                           (unsigned long long)c->pos);
    if (t->n_dims < 1 || t->n_dims > TM_GGUF_MAX_DIMS)
        return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: %u dimensions (must be 1..%d)", t->name,
                           (unsigned long long)t->info_offset, t->n_dims, TM_GGUF_MAX_DIMS);
    t->n_elements = 1;
    for (uint32_t d = 0; d < TM_GGUF_MAX_DIMS; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t at = c->pos;
        if (!read_u64(c, &t->dims[d]))
            return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: truncated dimension %u", t->name,
                               (unsigned long long)at, d);
        if (t->dims[d] == 0 || t->dims[d] > (uint64_t)INT64_MAX || !tm_mul_u64(t->n_elements, t->dims[d], &t->n_elements) ||
            t->n_elements > (uint64_t)INT64_MAX)
            return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: dimension %u = %llu is zero or overflows",
                               t->name, (unsigned long long)at, d, (unsigned long long)t->dims[d]);
    }
    uint32_t type;
    uint64_t type_at = c->pos;
    if (!read_u32(c, &type) || !read_u64(c, &t->offset))
        return parse_error(c, TM_ERR_FORMAT, "tensor '%s' at byte %llu: truncated type/offset", t->name,
                           (unsigned long long)type_at);
    const tm_type_traits *traits = tm_type_traits_scalar((tm_type)type);
    if (!traits || !traits->random_blocks) /* random_blocks: the types that store weights */
        return parse_error(c, TM_ERR_UNSUPPORTED, "tensor '%s' at byte %llu: tensor type %u (%s) is not supported",
                           t->name, (unsigned long long)type_at, type, tm_type_name(type));
    t->type = (tm_type)type;
    uint64_t row_bytes;
    if (!tm_type_row_bytes(t->type, t->dims[0], &row_bytes) ||
        !tm_mul_u64(row_bytes, t->n_elements / t->dims[0], &t->n_bytes))
        return parse_error(c, TM_ERR_FORMAT,
                           "tensor '%s' at byte %llu: row length %llu is not a multiple of the %s block size %d",
                           t->name, (unsigned long long)t->info_offset, (unsigned long long)t->dims[0], traits->name,
                           traits->block_size);
    return TM_OK;
}

static tm_status parse(tm_gguf *gguf, tm_error_t *error) {
    cursor c = {gguf->base, gguf->size, 0, gguf->label, error};
    uint32_t magic;
    if (!read_u32(&c, &magic))
        return parse_error(&c, TM_ERR_FORMAT, "at byte 0: file of %llu bytes is too short for a GGUF header",
                           (unsigned long long)gguf->size);
    if (magic != TM_GGUF_MAGIC) return parse_error(&c, TM_ERR_FORMAT, "at byte 0: bad magic 0x%08x (not a GGUF file)", magic);
    if (!read_u32(&c, &gguf->version))
        return parse_error(&c, TM_ERR_FORMAT, "at byte 4: truncated version");
    if (gguf->version == 1) return parse_error(&c, TM_ERR_UNSUPPORTED, "at byte 4: GGUF version 1 is not supported (2 and 3 are)");
    if (gguf->version > 0xffff)
        return parse_error(&c, TM_ERR_UNSUPPORTED, "at byte 4: version 0x%08x: a big-endian GGUF file is not supported",
                           gguf->version);
    if (gguf->version < 2 || gguf->version > 3)
        return parse_error(&c, TM_ERR_UNSUPPORTED, "at byte 4: GGUF version %u is not supported (2 and 3 are)", gguf->version);
    uint64_t n_tensors, n_kv;
    if (!read_u64(&c, &n_tensors) || !read_u64(&c, &n_kv))
        return parse_error(&c, TM_ERR_FORMAT, "at byte %llu: truncated tensor/key counts", (unsigned long long)c.pos);
    /* smallest key-value: 8 (key length) + 1 (key) + 4 (type) + 1 (uint8) = 14 bytes;
     * smallest tensor info: 8 + 1 + 4 + 8 + 4 + 8 = 33 bytes */
    if (n_kv > remaining(&c) / 14)
        return parse_error(&c, TM_ERR_FORMAT, "at byte 16: %llu metadata keys cannot fit in a file of %llu bytes",
                           (unsigned long long)n_kv, (unsigned long long)gguf->size);
    if (n_tensors > remaining(&c) / 33)
        return parse_error(&c, TM_ERR_FORMAT, "at byte 8: %llu tensors cannot fit in a file of %llu bytes",
                           (unsigned long long)n_tensors, (unsigned long long)gguf->size);
    /* from here gguf->n_kv and gguf->n_tensors count what is allocated and parsed, for cleanup */
    gguf->kvs = calloc(n_kv ? n_kv : 1, sizeof *gguf->kvs);
    gguf->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *gguf->tensors);
    if (!gguf->kvs || !gguf->tensors) return parse_error(&c, TM_ERR_NO_MEMORY, "out of memory for the header tables");

    for (uint64_t i = 0; i < n_kv; i++) {
        tm_gguf_kv *kv = &gguf->kvs[i];
        uint64_t at = c.pos;
        char what[64];
        snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
        gguf->n_kv = i + 1;
        tm_status status = read_identifier(&c, what, MAX_KEY_LENGTH, &kv->key);
        if (status) return status;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(gguf->kvs[j].key, kv->key) == 0)
                return parse_error(&c, TM_ERR_FORMAT, "key '%s' at byte %llu: duplicate key", kv->key, (unsigned long long)at);
        uint32_t type;
        if (!read_u32(&c, &type))
            return parse_error(&c, TM_ERR_FORMAT, "key '%s' at byte %llu: truncated value type", kv->key, (unsigned long long)c.pos);
        status = read_value(&c, kv->key, (tm_gguf_value_type)type, 0, &kv->value);
        if (status) return status;
    }

    gguf->alignment = TM_GGUF_DEFAULT_ALIGNMENT;
    const tm_gguf_kv *alignment = tm_gguf_find_kv(gguf, "general.alignment");
    if (alignment) {
        if (alignment->value.type != TM_GGUF_UINT32)
            return parse_error(&c, TM_ERR_FORMAT, "key 'general.alignment' at byte %llu: type %s, expected uint32",
                               (unsigned long long)alignment->value.offset, tm_gguf_value_type_name(alignment->value.type));
        uint64_t a = alignment->value.u64;
        if (a == 0 || (a & (a - 1)))
            return parse_error(&c, TM_ERR_FORMAT, "key 'general.alignment' at byte %llu: %llu is not a power of two",
                               (unsigned long long)alignment->value.offset, (unsigned long long)a);
        gguf->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf->n_tensors = i + 1;
        tm_status status = read_tensor_info(&c, gguf, i);
        if (status) return status;
    }

    uint64_t data_offset = (c.pos + gguf->alignment - 1) / gguf->alignment * gguf->alignment; /* pos < 2^63 */
    gguf->data_offset = data_offset;
    tm_gguf_tensor **by_offset = malloc((n_tensors ? n_tensors : 1) * sizeof *by_offset);
    if (!by_offset) return parse_error(&c, TM_ERR_NO_MEMORY, "out of memory checking tensor offsets");
    tm_status status = TM_OK;
    for (uint64_t i = 0; i < n_tensors && !status; i++) {
        tm_gguf_tensor *t = &gguf->tensors[i];
        by_offset[i] = t;
        uint64_t start, end;
        if (t->offset % gguf->alignment)
            status = parse_error(&c, TM_ERR_FORMAT, "tensor '%s' (info at byte %llu): data offset %llu is not aligned to %llu",
                                 t->name, (unsigned long long)t->info_offset, (unsigned long long)t->offset,
                                 (unsigned long long)gguf->alignment);
        else if (!tm_add_u64(data_offset, t->offset, &start) || !tm_add_u64(start, t->n_bytes, &end) || end > gguf->size)
            status = parse_error(&c, TM_ERR_FORMAT,
                                 "tensor '%s' (info at byte %llu): %llu bytes at data offset %llu (data section at byte %llu) "
                                 "run past the end of the file (%llu bytes)",
                                 t->name, (unsigned long long)t->info_offset, (unsigned long long)t->n_bytes,
                                 (unsigned long long)t->offset, (unsigned long long)data_offset, (unsigned long long)gguf->size);
        else
            t->data = gguf->base + start;
    }
    if (!status && n_tensors > 1) {
        qsort(by_offset, n_tensors, sizeof *by_offset, compare_tensor_offsets);
        for (uint64_t i = 1; i < n_tensors && !status; i++)
            if (by_offset[i - 1]->offset + by_offset[i - 1]->n_bytes > by_offset[i]->offset)
                status = parse_error(&c, TM_ERR_FORMAT, "tensor '%s' (info at byte %llu): data overlaps tensor '%s'",
                                     by_offset[i]->name, (unsigned long long)by_offset[i]->info_offset, by_offset[i - 1]->name);
    }
    free(by_offset);
    return status;
}

tm_status tm_gguf_open_memory(const void *data, uint64_t size, const char *label, bool take_ownership, tm_gguf **out,
                              tm_error_t *error) {
    *out = NULL;
    tm_gguf *gguf = calloc(1, sizeof *gguf);
    char *label_copy = strdup(label ? label : "<memory>");
    if (!gguf || !label_copy) {
        free(gguf);
        free(label_copy);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory opening %s", label ? label : "<memory>");
    }
    gguf->label = label_copy;
    gguf->base = data;
    gguf->size = size;
    gguf->owns_memory = take_ownership;
    tm_status status = parse(gguf, error);
    if (status) {
        tm_gguf_close(gguf);
        return status;
    }
    *out = gguf;
    return TM_OK;
}

tm_status tm_gguf_open(const char *path, tm_gguf **out, tm_error_t *error) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tm_error_set(error, TM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return tm_error_set(error, TM_ERR_IO, "%s: cannot stat: %s", path, strerror(saved));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tm_error_set(error, TM_ERR_IO, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    void *base = NULL;
    if (size > 0) {
        base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            int saved = errno;
            close(fd);
            return tm_error_set(error, TM_ERR_IO, "%s: cannot mmap %llu bytes: %s", path, (unsigned long long)size,
                                strerror(saved));
        }
    }
    close(fd);
    tm_status status = tm_gguf_open_memory(base, size, path, size > 0, out, error);
    if (status == TM_OK) {
        (*out)->owns_memory = false;
        (*out)->owns_mapping = size > 0;
    }
    return status;
}

/* ---- typed getters ---------------------------------------------------------------------- */

static bool is_unsigned(tm_gguf_value_type t) {
    return t == TM_GGUF_UINT8 || t == TM_GGUF_UINT16 || t == TM_GGUF_UINT32 || t == TM_GGUF_UINT64;
}
static bool is_signed(tm_gguf_value_type t) {
    return t == TM_GGUF_INT8 || t == TM_GGUF_INT16 || t == TM_GGUF_INT32 || t == TM_GGUF_INT64;
}

static tm_status find_or_error(const tm_gguf *gguf, const char *key, const tm_gguf_kv **kv, tm_error_t *error) {
    *kv = tm_gguf_find_kv(gguf, key);
    if (!*kv) return tm_error_set(error, TM_ERR_NOT_FOUND, "%s: metadata key '%s' is missing", gguf->label, key);
    return TM_OK;
}

tm_status tm_gguf_get_u64(const tm_gguf *gguf, const char *key, uint64_t *out, tm_error_t *error) {
    const tm_gguf_kv *kv;
    tm_status status = find_or_error(gguf, key, &kv, error);
    if (status) return status;
    if (is_unsigned(kv->value.type)) {
        *out = kv->value.u64;
        return TM_OK;
    }
    if (is_signed(kv->value.type) && kv->value.i64 >= 0) {
        *out = (uint64_t)kv->value.i64;
        return TM_OK;
    }
    return tm_error_set(error, TM_ERR_FORMAT, "%s: key '%s' at byte %llu: expected a non-negative integer, found %s",
                        gguf->label, key, (unsigned long long)kv->value.offset, tm_gguf_value_type_name(kv->value.type));
}

tm_status tm_gguf_get_f64(const tm_gguf *gguf, const char *key, double *out, tm_error_t *error) {
    const tm_gguf_kv *kv;
    tm_status status = find_or_error(gguf, key, &kv, error);
    if (status) return status;
    if (kv->value.type == TM_GGUF_FLOAT32 || kv->value.type == TM_GGUF_FLOAT64) *out = kv->value.f64;
    else if (is_unsigned(kv->value.type)) *out = (double)kv->value.u64;
    else if (is_signed(kv->value.type)) *out = (double)kv->value.i64;
    else
        return tm_error_set(error, TM_ERR_FORMAT, "%s: key '%s' at byte %llu: expected a number, found %s", gguf->label,
                            key, (unsigned long long)kv->value.offset, tm_gguf_value_type_name(kv->value.type));
    return TM_OK;
}

tm_status tm_gguf_get_string(const tm_gguf *gguf, const char *key, const char **data, uint64_t *length,
                             tm_error_t *error) {
    const tm_gguf_kv *kv;
    tm_status status = find_or_error(gguf, key, &kv, error);
    if (status) return status;
    if (kv->value.type != TM_GGUF_STRING)
        return tm_error_set(error, TM_ERR_FORMAT, "%s: key '%s' at byte %llu: expected a string, found %s", gguf->label,
                            key, (unsigned long long)kv->value.offset, tm_gguf_value_type_name(kv->value.type));
    *data = kv->value.string.data;
    *length = kv->value.string.length;
    return TM_OK;
}

uint64_t tm_gguf_array_u64(const tm_gguf_value *array, uint64_t i) {
    tm_gguf_value element;
    uint64_t size = tm_gguf_value_type_size(array->array.element_type);
    decode_scalar(array->array.element_type, (const uint8_t *)array->array.data + i * size, &element);
    return element.u64;
}
int64_t tm_gguf_array_i64(const tm_gguf_value *array, uint64_t i) {
    tm_gguf_value element;
    uint64_t size = tm_gguf_value_type_size(array->array.element_type);
    decode_scalar(array->array.element_type, (const uint8_t *)array->array.data + i * size, &element);
    return element.i64;
}
double tm_gguf_array_f64(const tm_gguf_value *array, uint64_t i) {
    tm_gguf_value element;
    uint64_t size = tm_gguf_value_type_size(array->array.element_type);
    decode_scalar(array->array.element_type, (const uint8_t *)array->array.data + i * size, &element);
    return element.f64;
}

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct byte_buffer {
    uint8_t *data;
    uint64_t length, capacity;
    bool failed; /* an allocation failed: the writer reports it at write time */
} byte_buffer;

static void buffer_append(byte_buffer *b, const void *data, uint64_t n) {
    if (b->failed || n == 0) return;
    if (b->length + n > b->capacity) {
        uint64_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity < b->length + n) capacity *= 2;
        uint8_t *grown = realloc(b->data, capacity);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->length, data, n);
    b->length += n;
}
static void buffer_u32(byte_buffer *b, uint32_t v) { buffer_append(b, &v, 4); }
static void buffer_u64(byte_buffer *b, uint64_t v) { buffer_append(b, &v, 8); }
static void buffer_string(byte_buffer *b, const char *s, uint64_t n) {
    buffer_u64(b, n);
    buffer_append(b, s, n);
}

typedef struct writer_tensor {
    char *name;
    tm_type type;
    uint32_t n_dims;
    uint64_t dims[TM_GGUF_MAX_DIMS];
    uint64_t n_bytes;
    uint64_t offset; /* in the data section */
    const void *data;
} writer_tensor;

struct tm_gguf_writer {
    uint32_t version;
    uint64_t alignment;
    byte_buffer kv_bytes; /* serialised key-values */
    uint64_t n_kv;
    char **keys;
    writer_tensor *tensors;
    uint64_t n_tensors, tensors_capacity;
    uint64_t data_bytes; /* data section size including padding */
};

tm_gguf_writer *tm_gguf_writer_create(uint32_t version, uint64_t alignment) {
    if ((version != 2 && version != 3) || alignment == 0 || (alignment & (alignment - 1))) return NULL;
    tm_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->version = version;
    w->alignment = alignment;
    if (alignment != TM_GGUF_DEFAULT_ALIGNMENT && tm_gguf_writer_set_u32(w, "general.alignment", (uint32_t)alignment)) {
        tm_gguf_writer_free(w);
        return NULL;
    }
    return w;
}

void tm_gguf_writer_free(tm_gguf_writer *w) {
    if (!w) return;
    free(w->kv_bytes.data);
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

static tm_status begin_kv(tm_gguf_writer *w, const char *key, tm_gguf_value_type type) {
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return TM_ERR_INVALID_ARG;
    char **keys = realloc(w->keys, (w->n_kv + 1) * sizeof *keys);
    if (!keys) return TM_ERR_NO_MEMORY;
    w->keys = keys;
    if (!(w->keys[w->n_kv] = strdup(key))) return TM_ERR_NO_MEMORY;
    w->n_kv++;
    buffer_string(&w->kv_bytes, key, strlen(key));
    buffer_u32(&w->kv_bytes, (uint32_t)type);
    return w->kv_bytes.failed ? TM_ERR_NO_MEMORY : TM_OK;
}

static void serialise_value(byte_buffer *b, const tm_gguf_value *v) {
    uint64_t size = tm_gguf_value_type_size(v->type);
    if (v->type == TM_GGUF_STRING) {
        buffer_string(b, v->string.data, v->string.length);
    } else if (v->type == TM_GGUF_ARRAY) {
        buffer_u32(b, (uint32_t)v->array.element_type);
        buffer_u64(b, v->array.count);
        uint64_t element_size = tm_gguf_value_type_size(v->array.element_type);
        if (element_size)
            buffer_append(b, v->array.data, element_size * v->array.count);
        else
            for (uint64_t i = 0; i < v->array.count; i++) serialise_value(b, &v->array.items[i]);
    } else if (size) {
        uint8_t bytes[8];
        uint8_t u8 = (uint8_t)v->u64; uint16_t u16 = (uint16_t)v->u64; uint32_t u32 = (uint32_t)v->u64;
        int8_t i8 = (int8_t)v->i64; int16_t i16 = (int16_t)v->i64; int32_t i32 = (int32_t)v->i64;
        float f32 = (float)v->f64;
        switch (v->type) {
        case TM_GGUF_UINT8: memcpy(bytes, &u8, 1); break;
        case TM_GGUF_INT8: memcpy(bytes, &i8, 1); break;
        case TM_GGUF_UINT16: memcpy(bytes, &u16, 2); break;
        case TM_GGUF_INT16: memcpy(bytes, &i16, 2); break;
        case TM_GGUF_UINT32: memcpy(bytes, &u32, 4); break;
        case TM_GGUF_INT32: memcpy(bytes, &i32, 4); break;
        case TM_GGUF_FLOAT32: memcpy(bytes, &f32, 4); break;
        case TM_GGUF_BOOL: bytes[0] = v->b ? 1 : 0; break;
        case TM_GGUF_UINT64: memcpy(bytes, &v->u64, 8); break;
        case TM_GGUF_INT64: memcpy(bytes, &v->i64, 8); break;
        case TM_GGUF_FLOAT64: memcpy(bytes, &v->f64, 8); break;
        default: break;
        }
        buffer_append(b, bytes, size);
    }
}

tm_status tm_gguf_writer_add_kv(tm_gguf_writer *w, const char *key, const tm_gguf_value *value) {
    tm_status status = begin_kv(w, key, value->type);
    if (status) return status;
    serialise_value(&w->kv_bytes, value);
    return w->kv_bytes.failed ? TM_ERR_NO_MEMORY : TM_OK;
}

tm_status tm_gguf_writer_set_u32(tm_gguf_writer *w, const char *key, uint32_t value) {
    tm_gguf_value v = {.type = TM_GGUF_UINT32, .u64 = value};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_i32(tm_gguf_writer *w, const char *key, int32_t value) {
    tm_gguf_value v = {.type = TM_GGUF_INT32, .i64 = value};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_f32(tm_gguf_writer *w, const char *key, float value) {
    tm_gguf_value v = {.type = TM_GGUF_FLOAT32, .f64 = value};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_bool(tm_gguf_writer *w, const char *key, bool value) {
    tm_gguf_value v = {.type = TM_GGUF_BOOL, .b = value};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_string(tm_gguf_writer *w, const char *key, const char *value) {
    tm_gguf_value v = {.type = TM_GGUF_STRING, .string = {value, strlen(value)}};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_array(tm_gguf_writer *w, const char *key, tm_gguf_value_type element_type,
                                   const void *elements, uint64_t count) {
    if (!tm_gguf_value_type_size(element_type)) return TM_ERR_INVALID_ARG;
    tm_gguf_value v = {.type = TM_GGUF_ARRAY, .array = {element_type, count, elements, NULL}};
    return tm_gguf_writer_add_kv(w, key, &v);
}
tm_status tm_gguf_writer_set_string_array(tm_gguf_writer *w, const char *key, const char *const *strings,
                                          uint64_t count) {
    tm_status status = begin_kv(w, key, TM_GGUF_ARRAY);
    if (status) return status;
    buffer_u32(&w->kv_bytes, TM_GGUF_STRING);
    buffer_u64(&w->kv_bytes, count);
    for (uint64_t i = 0; i < count; i++) buffer_string(&w->kv_bytes, strings[i], strlen(strings[i]));
    return w->kv_bytes.failed ? TM_ERR_NO_MEMORY : TM_OK;
}

tm_status tm_gguf_writer_add_tensor(tm_gguf_writer *w, const char *name, tm_type type, uint32_t n_dims,
                                    const uint64_t *dims, const void *data, tm_error_t *error) {
    if (n_dims < 1 || n_dims > TM_GGUF_MAX_DIMS)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "tensor '%s': %u dimensions (must be 1..%d)", name, n_dims,
                            TM_GGUF_MAX_DIMS);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return tm_error_set(error, TM_ERR_INVALID_ARG, "tensor '%s' added twice", name);
    uint64_t rows = 1, row_bytes, n_bytes;
    for (uint32_t d = 1; d < n_dims; d++)
        if (!tm_mul_u64(rows, dims[d], &rows)) return tm_error_set(error, TM_ERR_INVALID_ARG, "tensor '%s': size overflows", name);
    if (!tm_type_row_bytes(type, dims[0], &row_bytes) || !tm_mul_u64(row_bytes, rows, &n_bytes))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "tensor '%s': row length %llu does not fit type %s", name,
                            (unsigned long long)dims[0], tm_type_name(type));
    if (w->n_tensors == w->tensors_capacity) {
        uint64_t capacity = w->tensors_capacity ? 2 * w->tensors_capacity : 64;
        writer_tensor *grown = realloc(w->tensors, capacity * sizeof *grown);
        if (!grown) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory adding tensor '%s'", name);
        w->tensors = grown;
        w->tensors_capacity = capacity;
    }
    writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory adding tensor '%s'", name);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < n_dims; d++) t->dims[d] = dims[d];
    t->n_bytes = n_bytes;
    t->offset = w->data_bytes;
    t->data = data;
    w->data_bytes += (n_bytes + w->alignment - 1) / w->alignment * w->alignment;
    w->n_tensors++;
    return TM_OK;
}

/* Header: magic, version, counts, key-values, tensor infos, padding to the alignment. */
static tm_status build_header(const tm_gguf_writer *w, byte_buffer *header) {
    buffer_u32(header, TM_GGUF_MAGIC);
    buffer_u32(header, w->version);
    buffer_u64(header, w->n_tensors);
    buffer_u64(header, w->n_kv);
    buffer_append(header, w->kv_bytes.data, w->kv_bytes.length);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        buffer_string(header, t->name, strlen(t->name));
        buffer_u32(header, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) buffer_u64(header, t->dims[d]);
        buffer_u32(header, (uint32_t)t->type);
        buffer_u64(header, t->offset);
    }
    static const uint8_t zeros[4096];
    uint64_t padded = (header->length + w->alignment - 1) / w->alignment * w->alignment;
    while (header->length < padded) buffer_append(header, zeros, TM_MIN(padded - header->length, sizeof zeros));
    return header->failed || w->kv_bytes.failed ? TM_ERR_NO_MEMORY : TM_OK;
}

uint64_t tm_gguf_writer_file_size(const tm_gguf_writer *w) {
    byte_buffer header = {0};
    build_header(w, &header);
    uint64_t size = header.length + w->data_bytes;
    free(header.data);
    return size;
}

/* Writes the data section through `sink`, one tensor at a time. */
typedef tm_status (*sink_fn)(void *sink_state, uint64_t offset, const void *data, uint64_t n, tm_error_t *error);

static tm_status write_tensors(tm_gguf_writer *w, uint64_t data_start, uint8_t *direct, sink_fn sink, void *sink_state,
                               tm_gguf_fill_fn fill, tm_gguf_progress_fn progress, void *user, tm_error_t *error) {
    uint64_t bytes_done = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        writer_tensor *t = &w->tensors[i];
        const void *data = t->data;
        void *scratch = NULL;
        if (!data) {
            if (!fill) return tm_error_set(error, TM_ERR_INVALID_ARG, "tensor '%s' has no data and no fill callback", t->name);
            void *dst = direct ? direct + data_start + t->offset : (scratch = malloc(t->n_bytes ? t->n_bytes : 1));
            if (!dst) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory for tensor '%s' (%llu bytes)", t->name,
                                          (unsigned long long)t->n_bytes);
            tm_status status = fill(user, i, dst, t->n_bytes, error);
            if (status) {
                free(scratch);
                return status;
            }
            data = dst;
        } else if (direct) {
            memcpy(direct + data_start + t->offset, data, t->n_bytes);
        }
        if (sink) {
            tm_status status = sink(sink_state, data_start + t->offset, data, t->n_bytes, error);
            free(scratch);
            if (status) return status;
        }
        bytes_done += t->n_bytes;
        if (progress) progress(user, i + 1, w->n_tensors, bytes_done, w->data_bytes);
    }
    return TM_OK;
}

typedef struct file_sink {
    int fd;
    const char *path;
} file_sink;

static tm_status file_sink_write(void *state, uint64_t offset, const void *data, uint64_t n, tm_error_t *error) {
    file_sink *f = state;
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t written = pwrite(f->fd, p, TM_MIN(n, (uint64_t)1 << 30), (off_t)offset);
        if (written < 0) {
            if (errno == EINTR) continue;
            return tm_error_set(error, TM_ERR_IO, "%s: write at byte %llu failed: %s", f->path, (unsigned long long)offset,
                                strerror(errno));
        }
        p += written;
        offset += (uint64_t)written;
        n -= (uint64_t)written;
    }
    return TM_OK;
}

tm_status tm_gguf_writer_to_file(tm_gguf_writer *w, const char *path, tm_gguf_fill_fn fill, tm_gguf_progress_fn progress,
                                 void *user, tm_error_t *error) {
    byte_buffer header = {0};
    if (build_header(w, &header)) {
        free(header.data);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory building the GGUF header");
    }
    /* write to a temporary name and rename, so a failed write never leaves a half file behind */
    size_t temp_length = strlen(path) + 16;
    char *temp_path = malloc(temp_length);
    if (!temp_path) {
        free(header.data);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
    }
    snprintf(temp_path, temp_length, "%s.partial", path);
    int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    tm_status status = TM_OK;
    if (fd < 0) {
        status = tm_error_set(error, TM_ERR_IO, "%s: cannot create: %s", temp_path, strerror(errno));
        goto done;
    }
    file_sink sink = {fd, temp_path};
    uint64_t total = header.length + w->data_bytes;
    if (ftruncate(fd, (off_t)total) != 0) {
        status = tm_error_set(error, TM_ERR_IO, "%s: cannot size to %llu bytes: %s", temp_path, (unsigned long long)total,
                              strerror(errno));
        goto done;
    }
    status = file_sink_write(&sink, 0, header.data, header.length, error);
    if (!status) status = write_tensors(w, header.length, NULL, file_sink_write, &sink, fill, progress, user, error);
    if (!status && fsync(fd) != 0) status = tm_error_set(error, TM_ERR_IO, "%s: fsync failed: %s", temp_path, strerror(errno));
    if (close(fd) != 0 && !status) status = tm_error_set(error, TM_ERR_IO, "%s: close failed: %s", temp_path, strerror(errno));
    fd = -1;
    if (!status && rename(temp_path, path) != 0)
        status = tm_error_set(error, TM_ERR_IO, "%s: cannot rename to %s: %s", temp_path, path, strerror(errno));
done:
    if (fd >= 0) close(fd);
    if (status) unlink(temp_path);
    free(temp_path);
    free(header.data);
    return status;
}

tm_status tm_gguf_writer_to_memory(tm_gguf_writer *w, void **out_data, uint64_t *out_size, tm_gguf_fill_fn fill,
                                   tm_gguf_progress_fn progress, void *user, tm_error_t *error) {
    byte_buffer header = {0};
    *out_data = NULL;
    *out_size = 0;
    if (build_header(w, &header)) {
        free(header.data);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory building the GGUF header");
    }
    uint64_t total = header.length + w->data_bytes;
    uint8_t *memory = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) {
        free(header.data);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cannot reserve %llu bytes for an in-memory model: %s",
                            (unsigned long long)total, strerror(errno));
    }
    memcpy(memory, header.data, header.length);
    free(header.data);
    tm_status status = write_tensors(w, header.length, memory, NULL, NULL, fill, progress, user, error);
    if (status) {
        munmap(memory, total);
        return status;
    }
    *out_data = memory;
    *out_size = total;
    return TM_OK;
}
