/*
 * test_gguf.c - the GGUF reader and writer.
 *  - round trip: every value type, nested arrays, strings with multi-byte UTF-8, tensors of
 *    every weight type, through memory and through a file; the copy is byte-identical;
 *  - a malformed corpus: a valid file truncated at every byte of its header and at points in
 *    its data, and hand-made files with one bad field each (huge counts, offsets past the end,
 *    misaligned data, unknown types, bad strings, ...). Each must fail with the expected status
 *    and a message naming the field and the byte offset; none may crash (run under ASan in the
 *    sanitizer build).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"

/* ---- a tiny byte builder for hand-made files --------------------------------------------- */

typedef struct bytes {
    uint8_t data[1 << 16];
    uint64_t length;
} bytes;

static void put(bytes *b, const void *p, uint64_t n) {
    memcpy(b->data + b->length, p, n);
    b->length += n;
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_str(bytes *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad_to(bytes *b, uint64_t alignment) {
    while (b->length % alignment) b->data[b->length++] = 0;
}

/* Expect failure with `status` and a message containing `fragment`. */
static void expect_error(const void *data, uint64_t size, tm_status status, const char *fragment, const char *what) {
    tm_gguf *g = NULL;
    tm_error_t error = {0};
    tm_status got = tm_gguf_open_memory(data, size, "crafted.gguf", false, &g, &error);
    CHECK(got == status, "%s: status %s, expected %s (%s)", what, tm_status_name(got), tm_status_name(status),
          error.message);
    CHECK(g == NULL, "%s: no handle on failure", what);
    CHECK(strstr(error.message, fragment) != NULL, "%s: message '%s' lacks '%s'", what, error.message, fragment);
    CHECK(strstr(error.message, "crafted.gguf") != NULL, "%s: message '%s' does not name the file", what, error.message);
    if (g) tm_gguf_close(g);
}

/* A valid file with one uint32 key and one f32 tensor of 8 elements (header crafted by hand). */
typedef struct crafted {
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    uint32_t key_type;
    uint64_t key_length;    /* 0: the real length */
    const char *key;
    uint32_t n_dims;
    uint64_t dim0;
    uint32_t tensor_type;
    uint64_t tensor_offset;
    uint64_t data_bytes;    /* bytes of data actually present */
} crafted;

static crafted crafted_default(void) {
    crafted c = {TM_GGUF_MAGIC, 3, 1, 1, TM_GGUF_UINT32, 0, "general.answer", 1, 8, TM_TYPE_F32, 0, 32};
    return c;
}

static uint64_t build(const crafted *c, bytes *b) {
    b->length = 0;
    put_u32(b, c->magic);
    put_u32(b, c->version);
    put_u64(b, c->n_tensors);
    put_u64(b, c->n_kv);
    put_u64(b, c->key_length ? c->key_length : strlen(c->key));
    put(b, c->key, strlen(c->key));
    put_u32(b, c->key_type);
    put_u32(b, 42);
    put_str(b, "weights");
    put_u32(b, c->n_dims);
    for (uint32_t d = 0; d < c->n_dims && d < 8; d++) put_u64(b, d == 0 ? c->dim0 : 1);
    put_u32(b, c->tensor_type);
    put_u64(b, c->tensor_offset);
    pad_to(b, 32);
    uint64_t header = b->length;
    for (uint64_t i = 0; i < c->data_bytes; i++) b->data[b->length++] = (uint8_t)i;
    return header;
}

static void test_crafted(void) {
    static bytes b;
    crafted c = crafted_default();
    build(&c, &b);
    tm_gguf *g;
    tm_error_t error = {0};
    CHECK(tm_gguf_open_memory(b.data, b.length, "crafted.gguf", false, &g, &error) == TM_OK, "baseline: %s", error.message);
    if (g) {
        uint64_t answer = 0;
        CHECK(tm_gguf_get_u64(g, "general.answer", &answer, &error) == TM_OK && answer == 42, "baseline value");
        CHECK(g->n_tensors == 1 && g->tensors[0].n_bytes == 32, "baseline tensor");
        tm_gguf_close(g);
    }

#define CASE(field, value, status, fragment)         \
    do {                                             \
        c = crafted_default();                       \
        c.field = value;                             \
        build(&c, &b);                               \
        expect_error(b.data, b.length, status, fragment, #field " = " #value); \
    } while (0)
    CASE(magic, 0x46554746u, TM_ERR_FORMAT, "bad magic");
    CASE(version, 1, TM_ERR_UNSUPPORTED, "version 1");
    CASE(version, 4, TM_ERR_UNSUPPORTED, "version 4");
    CASE(version, 0x03000000u, TM_ERR_UNSUPPORTED, "big-endian");
    CASE(n_tensors, UINT64_MAX, TM_ERR_FORMAT, "tensors cannot fit");
    CASE(n_kv, 1ull << 40, TM_ERR_FORMAT, "metadata keys cannot fit");
    CASE(key_length, 1ull << 62, TM_ERR_FORMAT, "runs past the end");
    CASE(key_length, UINT64_MAX, TM_ERR_FORMAT, "runs past the end");
    CASE(key, "", TM_ERR_FORMAT, "length 0");
    CASE(key, "bad\xff" "key", TM_ERR_FORMAT, "not valid UTF-8");
    CASE(key, "bad\xc3", TM_ERR_FORMAT, "not valid UTF-8");
    CASE(key_type, 13, TM_ERR_FORMAT, "unknown value type 13");
    CASE(key_type, 0xffffffffu, TM_ERR_FORMAT, "unknown value type");
    CASE(n_dims, 0, TM_ERR_FORMAT, "0 dimensions");
    CASE(n_dims, 5, TM_ERR_FORMAT, "5 dimensions");
    CASE(dim0, 0, TM_ERR_FORMAT, "dimension 0 = 0");
    CASE(dim0, 1ull << 63, TM_ERR_FORMAT, "overflows");
    CASE(dim0, 1ull << 40, TM_ERR_FORMAT, "run past the end");
    CASE(tensor_type, 99, TM_ERR_UNSUPPORTED, "type 99 (unknown)");
    CASE(tensor_type, 17, TM_ERR_UNSUPPORTED, "iq2_xs");
    CASE(tensor_type, TM_TYPE_Q8_K, TM_ERR_UNSUPPORTED, "q8_k");
    CASE(tensor_type, TM_TYPE_Q4_0, TM_ERR_FORMAT, "not a multiple of the q4_0 block size 32");
    CASE(tensor_offset, 16, TM_ERR_FORMAT, "not aligned");
    CASE(tensor_offset, 1ull << 62, TM_ERR_FORMAT, "run past the end");
    CASE(tensor_offset, UINT64_MAX - 15, TM_ERR_FORMAT, "not aligned");
    CASE(tensor_offset, UINT64_MAX & ~31ull, TM_ERR_FORMAT, "run past the end");
    CASE(data_bytes, 31, TM_ERR_FORMAT, "run past the end");
    CASE(key, "general.alignment", TM_ERR_FORMAT, "not a power of two"); /* value 42 */
#undef CASE

    /* truncated at every byte of the header and at points in the data */
    c = crafted_default();
    uint64_t header = build(&c, &b);
    int accepted = 0;
    for (uint64_t cut = 0; cut < b.length; cut++) {
        tm_gguf *t = NULL;
        tm_error_t e = {0};
        if (tm_gguf_open_memory(b.data, cut, "crafted.gguf", false, &t, &e) == TM_OK) {
            accepted++;
            tm_gguf_close(t);
        } else {
            CHECK(strstr(e.message, "byte") != NULL, "truncated at %llu: message '%s' names no byte offset",
                  (unsigned long long)cut, e.message);
        }
    }
    CHECK(accepted == 0, "%d truncated files (of %llu, header %llu bytes) were accepted", accepted,
          (unsigned long long)b.length, (unsigned long long)header);
}

/* Hand-made files with structures the default builder cannot express. */
static void test_crafted_structures(void) {
    static bytes b;
    /* duplicate key */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 2);
    put_str(&b, "a.key"), put_u32(&b, TM_GGUF_UINT8), b.data[b.length++] = 1;
    put_str(&b, "a.key"), put_u32(&b, TM_GGUF_UINT8), b.data[b.length++] = 2;
    expect_error(b.data, b.length, TM_ERR_FORMAT, "key 'a.key' at byte 42: duplicate key", "duplicate key");

    /* string value longer than the file */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "s"), put_u32(&b, TM_GGUF_STRING), put_u64(&b, 1000), put(&b, "abc", 3);
    expect_error(b.data, b.length, TM_ERR_FORMAT, "key 's': ", "string past end");

    /* array with a huge count of uint32 */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "arr"), put_u32(&b, TM_GGUF_ARRAY), put_u32(&b, TM_GGUF_UINT32), put_u64(&b, 1ull << 62);
    expect_error(b.data, b.length, TM_ERR_FORMAT, "array of 4611686018427387904 uint32 runs past the end", "array count");

    /* array of strings whose count could never fit */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "arr"), put_u32(&b, TM_GGUF_ARRAY), put_u32(&b, TM_GGUF_STRING), put_u64(&b, 1000000);
    put_str(&b, "x");
    expect_error(b.data, b.length, TM_ERR_FORMAT, "cannot fit", "string array count");

    /* unknown array element type */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "arr"), put_u32(&b, TM_GGUF_ARRAY), put_u32(&b, 77), put_u64(&b, 1), put_u32(&b, 0);
    expect_error(b.data, b.length, TM_ERR_FORMAT, "unknown array element type 77", "array element type");

    /* arrays nested too deep */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "deep"), put_u32(&b, TM_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) put_u32(&b, TM_GGUF_ARRAY), put_u64(&b, 1);
    put_u32(&b, TM_GGUF_UINT8), put_u64(&b, 0);
    expect_error(b.data, b.length, TM_ERR_FORMAT, "nested deeper", "deep nesting");

    /* general.alignment of the wrong type */
    b.length = 0;
    put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 0), put_u64(&b, 1);
    put_str(&b, "general.alignment"), put_u32(&b, TM_GGUF_UINT64), put_u64(&b, 64);
    expect_error(b.data, b.length, TM_ERR_FORMAT, "expected uint32", "alignment type");

    /* two tensors: duplicate name, then overlapping data */
    for (int variant = 0; variant < 2; variant++) {
        b.length = 0;
        put_u32(&b, TM_GGUF_MAGIC), put_u32(&b, 3), put_u64(&b, 2), put_u64(&b, 0);
        put_str(&b, "t0"), put_u32(&b, 1), put_u64(&b, 16), put_u32(&b, TM_TYPE_F32), put_u64(&b, 0);
        put_str(&b, variant == 0 ? "t0" : "t1"), put_u32(&b, 1), put_u64(&b, 16), put_u32(&b, TM_TYPE_F32), put_u64(&b, 32);
        pad_to(&b, 32);
        for (int i = 0; i < 128; i++) b.data[b.length++] = 0;
        expect_error(b.data, b.length, TM_ERR_FORMAT, variant == 0 ? "duplicate tensor name" : "overlaps tensor 't0'",
                     variant == 0 ? "duplicate tensor" : "overlap");
    }
}

/* ---- writer -> reader round trip ------------------------------------------------------- */

static void test_round_trip(void) {
    tm_gguf_writer *w = tm_gguf_writer_create(3, 64);
    CHECK(w != NULL, "writer");
    uint8_t u8s[3] = {1, 2, 255};
    int16_t i16s[2] = {-32768, 32767};
    double f64s[2] = {3.141592653589793, -1e300};
    int64_t i64s[2] = {INT64_MIN, INT64_MAX};
    uint64_t u64s[1] = {UINT64_MAX};
    uint8_t bools[3] = {1, 0, 1};
    const char *strings[3] = {"plain", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", ""};
    CHECK(!tm_gguf_writer_set_u32(w, "t.u32", 4000000000u), "u32");
    CHECK(!tm_gguf_writer_set_i32(w, "t.i32", -7), "i32");
    CHECK(!tm_gguf_writer_set_f32(w, "t.f32", 0.1f), "f32");
    CHECK(!tm_gguf_writer_set_bool(w, "t.bool", true), "bool");
    CHECK(!tm_gguf_writer_set_string(w, "t.string", strings[1]), "string");
    CHECK(!tm_gguf_writer_set_array(w, "t.u8s", TM_GGUF_UINT8, u8s, 3), "u8 array");
    CHECK(!tm_gguf_writer_set_array(w, "t.i16s", TM_GGUF_INT16, i16s, 2), "i16 array");
    CHECK(!tm_gguf_writer_set_array(w, "t.f64s", TM_GGUF_FLOAT64, f64s, 2), "f64 array");
    CHECK(!tm_gguf_writer_set_array(w, "t.i64s", TM_GGUF_INT64, i64s, 2), "i64 array");
    CHECK(!tm_gguf_writer_set_array(w, "t.u64s", TM_GGUF_UINT64, u64s, 1), "u64 array");
    CHECK(!tm_gguf_writer_set_array(w, "t.bools", TM_GGUF_BOOL, bools, 3), "bool array");
    CHECK(!tm_gguf_writer_set_array(w, "t.empty", TM_GGUF_INT32, NULL, 0), "empty array");
    CHECK(!tm_gguf_writer_set_string_array(w, "t.strings", strings, 3), "string array");
    CHECK(tm_gguf_writer_set_u32(w, "t.u32", 1) == TM_ERR_INVALID_ARG, "a repeated key is refused");
    /* nested: [[1, 2], [3]] of int32 and [["a"], []] */
    int32_t first[2] = {1, 2}, second[1] = {3};
    tm_gguf_value inner[2] = {{.type = TM_GGUF_ARRAY, .array = {TM_GGUF_INT32, 2, first, NULL}},
                              {.type = TM_GGUF_ARRAY, .array = {TM_GGUF_INT32, 1, second, NULL}}};
    tm_gguf_value nested = {.type = TM_GGUF_ARRAY, .array = {TM_GGUF_ARRAY, 2, NULL, inner}};
    CHECK(!tm_gguf_writer_add_kv(w, "t.nested", &nested), "nested array");

    const tm_type types[] = {TM_TYPE_F32, TM_TYPE_F16, TM_TYPE_BF16, TM_TYPE_Q4_0, TM_TYPE_Q4_1, TM_TYPE_Q5_0,
                             TM_TYPE_Q5_1, TM_TYPE_Q8_0, TM_TYPE_Q4_K, TM_TYPE_Q5_K, TM_TYPE_Q6_K};
    uint8_t *payloads[11];
    uint64_t sizes[11];
    tm_rng_t rng;
    tm_rng_seed(&rng, 9);
    for (int i = 0; i < 11; i++) {
        uint64_t dims[2] = {512, 3};
        char name[32];
        snprintf(name, sizeof name, "tensor.%s", tm_type_name(types[i]));
        tm_type_row_bytes(types[i], 512, &sizes[i]);
        sizes[i] *= 3;
        payloads[i] = malloc(sizes[i]);
        tm_rng_fill(&rng, payloads[i], sizes[i]);
        tm_error_t e = {0};
        CHECK(!tm_gguf_writer_add_tensor(w, name, types[i], 2, dims, payloads[i], &e), "add tensor: %s", e.message);
    }
    tm_error_t e = {0};
    uint64_t bad_dims[1] = {100};
    CHECK(tm_gguf_writer_add_tensor(w, "bad", TM_TYPE_Q4_K, 1, bad_dims, payloads[0], &e) == TM_ERR_INVALID_ARG,
          "a row that does not fit the block size is refused");

    void *memory;
    uint64_t size;
    CHECK(!tm_gguf_writer_to_memory(w, &memory, &size, NULL, NULL, NULL, &e), "to memory: %s", e.message);
    CHECK(size == tm_gguf_writer_file_size(w), "predicted size %llu vs %llu", (unsigned long long)tm_gguf_writer_file_size(w),
          (unsigned long long)size);
    char path[] = "/tmp/tm_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(!tm_gguf_writer_to_file(w, path, NULL, NULL, NULL, &e), "to file: %s", e.message);

    tm_gguf *g = NULL, *from_file = NULL;
    CHECK(!tm_gguf_open_memory(memory, size, "round-trip", true, &g, &e), "open: %s", e.message);
    CHECK(!tm_gguf_open(path, &from_file, &e), "open file: %s", e.message);
    if (g && from_file) {
        CHECK(from_file->size == g->size && memcmp(from_file->base, g->base, g->size) == 0, "file and memory bytes equal");
        CHECK(g->alignment == 64 && g->data_offset % 64 == 0, "alignment 64 honoured");
        uint64_t u = 0;
        double f = 0;
        const char *s;
        uint64_t length;
        CHECK(!tm_gguf_get_u64(g, "t.u32", &u, &e) && u == 4000000000u, "u32 value");
        CHECK(tm_gguf_get_u64(g, "t.i32", &u, &e) == TM_ERR_FORMAT && strstr(e.message, "'t.i32'"),
              "negative int refused as unsigned, naming the key");
        CHECK(!tm_gguf_get_f64(g, "t.f32", &f, &e) && (float)f == 0.1f, "f32 value");
        CHECK(!tm_gguf_get_string(g, "t.string", &s, &length, &e) && length == strlen(strings[1]) &&
                  !memcmp(s, strings[1], length), "string value");
        CHECK(tm_gguf_get_u64(g, "missing", &u, &e) == TM_ERR_NOT_FOUND && strstr(e.message, "'missing'"),
              "missing key names the key");
        CHECK(tm_gguf_find_kv(g, "t.bool")->value.b, "bool value");
        const tm_gguf_value *v = &tm_gguf_find_kv(g, "t.i64s")->value;
        CHECK(v->array.count == 2 && tm_gguf_array_i64(v, 0) == INT64_MIN && tm_gguf_array_i64(v, 1) == INT64_MAX, "i64s");
        v = &tm_gguf_find_kv(g, "t.f64s")->value;
        CHECK(tm_gguf_array_f64(v, 0) == f64s[0] && tm_gguf_array_f64(v, 1) == f64s[1], "f64s");
        v = &tm_gguf_find_kv(g, "t.i16s")->value;
        CHECK(tm_gguf_array_i64(v, 0) == -32768, "i16s sign-extended");
        v = &tm_gguf_find_kv(g, "t.strings")->value;
        CHECK(v->array.count == 3 && v->array.items[2].string.length == 0 &&
                  v->array.items[1].string.length == strlen(strings[1]), "string array");
        v = &tm_gguf_find_kv(g, "t.nested")->value;
        CHECK(v->array.count == 2 && v->array.items[0].array.count == 2 && tm_gguf_array_i64(&v->array.items[0], 1) == 2 &&
                  tm_gguf_array_i64(&v->array.items[1], 0) == 3, "nested array");
        CHECK(tm_gguf_find_kv(g, "t.empty")->value.array.count == 0, "empty array");
        CHECK(g->n_tensors == 11, "tensor count");
        for (int i = 0; i < 11 && i < (int)g->n_tensors; i++) {
            const tm_gguf_tensor *t = &g->tensors[i];
            CHECK(t->type == types[i] && t->n_bytes == sizes[i] && !memcmp(t->data, payloads[i], sizes[i]) &&
                      ((const uint8_t *)t->data - g->base) % 64 == 0, "tensor %s", t->name);
        }
        /* copy: every kv and tensor through the writer again gives the same bytes */
        tm_gguf_writer *copy = tm_gguf_writer_create(g->version, g->alignment);
        for (uint64_t i = 0; i < g->n_kv; i++)
            if (strcmp(g->kvs[i].key, "general.alignment") != 0) tm_gguf_writer_add_kv(copy, g->kvs[i].key, &g->kvs[i].value);
        for (uint64_t i = 0; i < g->n_tensors; i++)
            tm_gguf_writer_add_tensor(copy, g->tensors[i].name, g->tensors[i].type, g->tensors[i].n_dims, g->tensors[i].dims,
                                      g->tensors[i].data, &e);
        void *copied;
        uint64_t copied_size;
        CHECK(!tm_gguf_writer_to_memory(copy, &copied, &copied_size, NULL, NULL, NULL, &e), "copy");
        CHECK(copied_size == g->size && !memcmp(copied, g->base, g->size), "copy is byte-identical");
        tm_gguf *reread;
        if (!tm_gguf_open_memory(copied, copied_size, "copy", true, &reread, &e)) tm_gguf_close(reread);
        tm_gguf_writer_free(copy);
    }
    tm_gguf_close(g);
    tm_gguf_close(from_file);
    unlink(path);
    for (int i = 0; i < 11; i++) free(payloads[i]);
    tm_gguf_writer_free(w);

    CHECK(tm_gguf_open("/nonexistent/model.gguf", &g, &e) == TM_ERR_IO && strstr(e.message, "/nonexistent/model.gguf"),
          "missing file names the path: %s", e.message);
    CHECK(tm_gguf_open("/tmp", &g, &e) == TM_ERR_IO, "a directory is refused");
}

int main(void) {
    test_crafted();
    test_crafted_structures();
    test_round_trip();
    return check_report("test_gguf");
}
