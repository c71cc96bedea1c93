/*
 * inspect.c - `tensormesh inspect`: a GGUF file's metadata, tensor table and totals, as text or
 * as JSON (every value in full, strings as UTF-8 with invalid bytes replaced by U+FFFD).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: tensormesh inspect FILE [--json] [--hash] [--all]\n"
            "       tensormesh inspect --synthetic PRESET:TYPE [--json]\n\n"
            "  --json       machine-readable output: every metadata value in full, every tensor\n"
            "  --hash       with --json: add the CRC-32 (zlib's) of each tensor's bytes (reads the whole file)\n"
            "  --all        print long arrays in full in the text output (default: first 8 items)\n"
            "  --synthetic  inspect an in-memory synthetic model instead of a file\n");
}

/* CRC-32 as zlib computes it (reflected polynomial 0xEDB88320), so Python can check it. */
static uint32_t crc32_of(const uint8_t *p, uint64_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t crc = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* ---- JSON -------------------------------------------------------------------------------- */

static void json_string(const char *s, uint64_t n) {
    putchar('"');
    for (uint64_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int extra = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
        bool valid = extra >= 0 && (extra != 1 || c >= 0xc2) && (uint64_t)extra < n - i;
        for (int k = 1; valid && k <= extra; k++) valid = ((unsigned char)s[i + (uint64_t)k] & 0xc0) == 0x80;
        if (!valid) {
            fputs("\\ufffd", stdout);
            i++;
            continue;
        }
        if (extra > 0) {
            fwrite(s + i, 1, (size_t)extra + 1, stdout);
            i += (uint64_t)extra + 1;
            continue;
        }
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f) printf("\\u%04x", c);
        else putchar(c);
        i++;
    }
    putchar('"');
}

static void json_value(const tm_gguf_value *v);

static void json_primitive(tm_gguf_value_type type, const tm_gguf_value *v) {
    switch (type) {
    case TM_GGUF_UINT8: case TM_GGUF_UINT16: case TM_GGUF_UINT32: case TM_GGUF_UINT64:
        printf("%" PRIu64, v->u64);
        break;
    case TM_GGUF_INT8: case TM_GGUF_INT16: case TM_GGUF_INT32: case TM_GGUF_INT64:
        printf("%" PRId64, v->i64);
        break;
    case TM_GGUF_FLOAT32: printf("%.9g", v->f64); break;
    case TM_GGUF_FLOAT64: printf("%.17g", v->f64); break;
    case TM_GGUF_BOOL: fputs(v->b ? "true" : "false", stdout); break;
    default: fputs("null", stdout); break;
    }
}

static void json_value(const tm_gguf_value *v) {
    if (v->type == TM_GGUF_STRING) {
        json_string(v->string.data, v->string.length);
    } else if (v->type == TM_GGUF_ARRAY) {
        printf("{\"element_type\": \"%s\", \"items\": [", tm_gguf_value_type_name(v->array.element_type));
        for (uint64_t i = 0; i < v->array.count; i++) {
            if (i) fputs(", ", stdout);
            if (v->array.items) {
                json_value(&v->array.items[i]);
            } else {
                tm_gguf_value element = {.type = v->array.element_type};
                if (v->array.element_type == TM_GGUF_FLOAT32 || v->array.element_type == TM_GGUF_FLOAT64)
                    element.f64 = tm_gguf_array_f64(v, i);
                else if (v->array.element_type == TM_GGUF_BOOL)
                    element.b = tm_gguf_array_u64(v, i) & 0xff;
                else
                    element.u64 = tm_gguf_array_u64(v, i); /* i64 aliases u64 */
                json_primitive(v->array.element_type, &element);
            }
        }
        fputs("]}", stdout);
    } else {
        json_primitive(v->type, v);
    }
}

static void print_json(const tm_gguf *g, bool hash) {
    printf("{\"version\": %u, \"alignment\": %" PRIu64 ", \"data_offset\": %" PRIu64 ", \"file_size\": %" PRIu64 ",\n",
           g->version, g->alignment, g->data_offset, g->size);
    printf(" \"metadata\": [\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        printf("  {\"key\": ");
        json_string(g->kvs[i].key, strlen(g->kvs[i].key));
        printf(", \"type\": \"%s\", \"value\": ", tm_gguf_value_type_name(g->kvs[i].value.type));
        json_value(&g->kvs[i].value);
        printf("}%s\n", i + 1 < g->n_kv ? "," : "");
    }
    printf(" ],\n \"tensors\": [\n");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tm_gguf_tensor *t = &g->tensors[i];
        printf("  {\"name\": ");
        json_string(t->name, strlen(t->name));
        printf(", \"type\": \"%s\", \"type_id\": %d, \"shape\": [", tm_type_name(t->type), (int)t->type);
        for (uint32_t d = 0; d < t->n_dims; d++) printf("%s%" PRIu64, d ? ", " : "", t->dims[d]);
        printf("], \"offset\": %" PRIu64 ", \"bytes\": %" PRIu64, t->offset, t->n_bytes);
        if (hash) printf(", \"crc32\": %" PRIu32, crc32_of(t->data, t->n_bytes));
        printf("}%s\n", i + 1 < g->n_tensors ? "," : "");
    }
    printf(" ]\n}\n");
}

/* ---- text -------------------------------------------------------------------------------- */

static void text_string(const char *s, uint64_t n, uint64_t limit) {
    putchar('"');
    for (uint64_t i = 0; i < n && i < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c < 0x20) printf("\\x%02x", c);
        else putchar(c);
    }
    fputs(n > limit ? "...\"" : "\"", stdout);
}

static void text_value(const tm_gguf_value *v, bool all) {
    if (v->type == TM_GGUF_STRING) {
        text_string(v->string.data, v->string.length, all ? UINT64_MAX : 120);
    } else if (v->type == TM_GGUF_ARRAY) {
        uint64_t shown = all ? v->array.count : TM_MIN(v->array.count, 8);
        printf("[%s x %" PRIu64 "] [", tm_gguf_value_type_name(v->array.element_type), v->array.count);
        for (uint64_t i = 0; i < shown; i++) {
            if (i) fputs(", ", stdout);
            if (v->array.items) {
                text_value(&v->array.items[i], all);
            } else {
                tm_gguf_value element = {.type = v->array.element_type};
                if (v->array.element_type == TM_GGUF_FLOAT32 || v->array.element_type == TM_GGUF_FLOAT64)
                    element.f64 = tm_gguf_array_f64(v, i);
                else
                    element.u64 = tm_gguf_array_u64(v, i);
                if (v->array.element_type == TM_GGUF_BOOL) element.b = element.u64 & 0xff;
                json_primitive(v->array.element_type, &element);
            }
        }
        fputs(shown < v->array.count ? ", ...]" : "]", stdout);
    } else {
        json_primitive(v->type, v);
    }
}

static void print_text(const tm_gguf *g, bool all) {
    printf("file:        %s\n", g->label);
    printf("GGUF:        version %u, alignment %" PRIu64 ", data at byte %" PRIu64 ", %" PRIu64 " bytes\n", g->version,
           g->alignment, g->data_offset, g->size);
    printf("\nmetadata (%" PRIu64 " keys):\n", g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        printf("  %-44s %-8s ", g->kvs[i].key, tm_gguf_value_type_name(g->kvs[i].value.type));
        text_value(&g->kvs[i].value, all);
        putchar('\n');
    }
    printf("\ntensors (%" PRIu64 "):\n  %-36s %-6s %-24s %14s\n", g->n_tensors, "name", "type", "shape", "bytes");
    uint64_t bytes_by_type[TM_TYPE_COUNT] = {0}, count_by_type[TM_TYPE_COUNT] = {0};
    uint64_t total_bytes = 0, total_elements = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const tm_gguf_tensor *t = &g->tensors[i];
        char shape[64];
        int n = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%" PRIu64, d ? " x " : "", t->dims[d]);
        printf("  %-36s %-6s %-24s %14" PRIu64 "\n", t->name, tm_type_name(t->type), shape, t->n_bytes);
        bytes_by_type[t->type] += t->n_bytes;
        count_by_type[t->type]++;
        total_bytes += t->n_bytes;
        total_elements += t->n_elements;
    }
    printf("\ntotals:\n");
    for (int t = 0; t < TM_TYPE_COUNT; t++)
        if (count_by_type[t])
            printf("  %-6s %5" PRIu64 " tensors %16" PRIu64 " bytes (%5.1f %%)\n", tm_type_name((uint32_t)t), count_by_type[t],
                   bytes_by_type[t], total_bytes ? 100.0 * (double)bytes_by_type[t] / (double)total_bytes : 0.0);
    printf("  parameters %" PRIu64 " (%.3f B), tensor bytes %" PRIu64 " (%.3f GB), %.3f bits per weight\n", total_elements,
           (double)total_elements / 1e9, total_bytes, (double)total_bytes / 1e9,
           total_elements ? 8.0 * (double)total_bytes / (double)total_elements : 0.0);
}

int tm_cli_inspect(int argc, char **argv) {
    const char *path = NULL, *synthetic = NULL;
    bool json = false, hash = false, all = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--hash")) {
            hash = true;
        } else if (!strcmp(a, "--all")) {
            all = true;
        } else if (!strcmp(a, "--synthetic")) {
            if (!(synthetic = tm_cli_flag_value(argc, argv, &i))) return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "tensormesh inspect: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (!path) {
            path = a;
        } else {
            fprintf(stderr, "tensormesh inspect: one file at a time ('%s' and '%s')\n", path, a);
            return 2;
        }
    }
    tm_gguf *g;
    tm_error_t error = {0};
    if (!path && !synthetic) {
        usage(stderr);
        return 2;
    }
    if (tm_cli_open_model(path, synthetic, 0, &g, &error)) {
        fprintf(stderr, "tensormesh inspect: %s\n", error.message);
        return 1;
    }
    if (json) print_json(g, hash);
    else print_text(g, all);
    tm_gguf_close(g);
    return 0;
}
