/*
 * tm_testtool.c - lets the Python tests drive engine code on files:
 *   tm_testtool dequant TYPE BLOCKS.bin OUT.f32       dequantize raw blocks (scalar reference)
 *   tm_testtool dot TYPE ROWS.bin X.f32 OUT.f32       per row: dot_f32, dot_q8 (scalar), and the
 *                                                    active (SIMD) dot_q8/dot_f32, 3 floats a row
 *   tm_testtool quantize TYPE X.f32 OUT.bin           quantize floats (activation types, f16/bf16)
 *   tm_testtool copy IN.gguf OUT.gguf                 read with our reader, rewrite with our writer
 *   tm_testtool seeds DIR                             small valid GGUF files: a fuzzing seed corpus
 *   tm_testtool tokenize MODEL IN OUT                 IN: strings separated by NUL bytes; OUT: a JSON
 *                                                    line per string: ids (no BOS, special tokens
 *                                                    parsed) and whether decode(encode(s)) == s
 *   tm_testtool generate MODEL IDS N [exact|fast] [f32|f16] [cpu|cuda]
 *                                                    greedy ids after the prompt ids, via the engine API
 *   tm_testtool stats VALUES.f64                      JSON summary (tm_summarize, 2000 bootstrap rounds)
 *   tm_testtool mannwhitney A.f64 B.f64               two-sided Mann-Whitney U p-value
 *   tm_testtool logits MODEL IDS OUT.f32 [exact|fast] [f32|f16] [THREADS] [CHUNK] [cpu|cuda]
 *                                                    logits of every position of the comma-separated
 *                                                    token ids, fed CHUNK tokens per forward call
 * Exit status 0 on success, 1 with a message on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "tensormesh.h"
#include "gguf.h"
#include "stats.h"
#include "tokenizer.h"
#include "quant.h"

static void *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc((size_t)*size + 1);
    if (data && fread(data, 1, (size_t)*size, f) != (size_t)*size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) {
        fprintf(stderr, "cannot write %s\n", path);
        if (f) fclose(f);
        return 1;
    }
    return fclose(f) != 0;
}

static int fail(const char *message) {
    fprintf(stderr, "tm_testtool: %s\n", message);
    return 1;
}

/* A few small valid files covering every value type, nested arrays and several tensor types. */
static int write_seeds(const char *dir) {
    tm_rng_t rng;
    tm_rng_seed(&rng, 1);
    for (int variant = 0; variant < 3; variant++) {
        tm_gguf_writer *w = tm_gguf_writer_create(variant == 2 ? 2 : 3, variant == 1 ? 64 : 32);
        tm_error_t error = {0};
        uint8_t *payloads[3] = {NULL, NULL, NULL};
        if (variant >= 1) {
            uint8_t u8s[4] = {1, 2, 3, 4};
            double f64s[2] = {1.5, -2.5};
            const char *strings[3] = {"<s>", "\xe2\x96\x81the", "</s>"};
            int32_t inner_values[2] = {7, 8};
            tm_gguf_value inner = {.type = TM_GGUF_ARRAY, .array = {TM_GGUF_INT32, 2, inner_values, NULL}};
            tm_gguf_value nested = {.type = TM_GGUF_ARRAY, .array = {TM_GGUF_ARRAY, 1, NULL, &inner}};
            tm_gguf_writer_set_string(w, "general.architecture", "llama");
            tm_gguf_writer_set_u32(w, "llama.block_count", 1);
            tm_gguf_writer_set_i32(w, "a.i32", -5);
            tm_gguf_writer_set_f32(w, "a.f32", 0.5f);
            tm_gguf_writer_set_bool(w, "a.bool", true);
            tm_gguf_writer_set_array(w, "a.u8s", TM_GGUF_UINT8, u8s, 4);
            tm_gguf_writer_set_array(w, "a.f64s", TM_GGUF_FLOAT64, f64s, 2);
            tm_gguf_writer_set_string_array(w, "tokenizer.ggml.tokens", strings, 3);
            tm_gguf_writer_add_kv(w, "a.nested", &nested);
            const tm_type types[3] = {TM_TYPE_F32, TM_TYPE_Q4_0, TM_TYPE_Q4_K};
            int n_tensors = variant == 1 ? 3 : 1;
            for (int t = 0; t < n_tensors; t++) { /* the writer keeps the pointers until it writes */
                uint64_t dims[2] = {256, 2}, bytes;
                tm_type_row_bytes(types[t], 256, &bytes);
                payloads[t] = malloc(bytes * 2);
                tm_rng_fill(&rng, payloads[t], bytes * 2);
                char name[32];
                snprintf(name, sizeof name, "blk.0.%s.weight", tm_type_name(types[t]));
                tm_gguf_writer_add_tensor(w, name, types[t], 2, dims, payloads[t], &error);
            }
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%d.gguf", dir, variant);
        tm_status status = tm_gguf_writer_to_file(w, path, NULL, NULL, NULL, &error);
        tm_gguf_writer_free(w);
        for (int t = 0; t < 3; t++) free(payloads[t]);
        if (status) return fail(error.message);
    }
    return 0;
}

/* argv[6], a KV type's name (f16, f32, q8), or `fallback` when absent or unknown. */
static tm_kv_type kv_type_argument(int argc, char **argv, tm_kv_type fallback) {
    const int type = argc > 6 ? tm_kv_type_from_name(argv[6]) : -1;
    return type < 0 ? fallback : (tm_kv_type)type;
}

static int logits_command(int argc, char **argv) {
    tm_error_t error = {0};
    tm_model *model;
    int threads = argc > 7 ? atoi(argv[7]) : 2;
    if (tm_model_open(argv[2], NULL, threads, &model, &error)) return fail(error.message);
    int32_t tokens[4096];
    int n = 0;
    for (char *p = argv[3]; *p && n < 4096; n++) {
        tokens[n] = (int32_t)strtol(p, &p, 10);
        if (*p == ',') p++;
    }
    tm_kv_layout layout = {model->config.n_layer, model->config.n_head_kv, model->config.head_dim,
                           kv_type_argument(argc, argv, TM_KV_F32), TM_KV_DEFAULT_PAGE_SIZE};
    tm_kv_cache *kv;
    bool cuda = argc > 9 && !strcmp(argv[9], "cuda");
    if (tm_kv_create(&layout, tm_kv_pages_for_tokens(&layout, n) * layout.n_layer, 1, !cuda, &kv, &error))
        return fail(error.message);
    tm_threadpool *pool = tm_threadpool_create(threads);
    tm_backend_cpu_options options = {pool, argc > 5 && !strcmp(argv[5], "fast") ? TM_PRECISION_FAST : TM_PRECISION_EXACT};
    tm_backend *backend;
#ifdef TM_CUDA
    if (cuda ? tm_backend_cuda_create(model, NULL, &backend, &error) : tm_backend_cpu_create(model, &options, &backend, &error))
        return fail(error.message);
#else
    if (cuda) return fail("this build has no CUDA backend");
    if (tm_backend_cpu_create(model, &options, &backend, &error)) return fail(error.message);
#endif
    int seq = tm_kv_seq_new(kv), chunk = argc > 8 ? atoi(argv[8]) : n;
    if (chunk <= 0) chunk = n;
    int vocab = model->config.n_vocab;
    float *logits = malloc((size_t)n * (size_t)vocab * sizeof *logits);
    int32_t positions[4096], seqs[4096];
    uint8_t want[4096];
    for (int i = 0; i < n; i++) positions[i] = i, seqs[i] = seq, want[i] = 1;
    if (tm_kv_reserve(kv, seq, n)) return fail("kv cache full");
    for (int start = 0; start < n; start += chunk) {
        int count = TM_MIN(chunk, n - start);
        tm_batch batch = {count, tokens + start, positions + start, seqs + start, want + start};
        if (backend->forward(backend, &batch, kv, logits + (size_t)start * vocab, &error)) return fail(error.message);
    }
    int status = write_file(argv[4], logits, (size_t)n * (size_t)vocab * sizeof *logits);
    free(logits);
    backend->free(backend);
    tm_kv_free(kv);
    tm_threadpool_free(pool);
    tm_model_free(model);
    return status;
}

static int tokenize_command(const char *model_path, const char *in_path, const char *out_path) {
    tm_error_t error = {0};
    tm_gguf *g;
    if (tm_gguf_open(model_path, &g, &error)) return fail(error.message);
    tm_tokenizer *t;
    if (tm_tokenizer_load(g, &t, &error)) return fail(error.message);
    long size;
    char *input = read_file(in_path, &size);
    FILE *out = fopen(out_path, "w");
    if (!input || !out) return fail("cannot read input or write output");
    for (long start = 0; start < size;) {
        long end = start;
        while (end < size && input[end]) end++;
        int32_t *ids;
        int n;
        if (tm_tokenizer_encode(t, input + start, (size_t)(end - start), false, true, &ids, &n, &error)) return fail(error.message);
        char *text;
        size_t length;
        if (tm_tokenizer_decode(t, ids, n, true, &text, &length, &error)) return fail(error.message);
        bool roundtrip = length == (size_t)(end - start) && !memcmp(text, input + start, length);
        fprintf(out, "{\"ids\": [");
        for (int i = 0; i < n; i++) fprintf(out, "%s%d", i ? ", " : "", ids[i]);
        fprintf(out, "], \"roundtrip\": %s}\n", roundtrip ? "true" : "false");
        free(ids);
        free(text);
        start = end + 1;
    }
    fclose(out);
    free(input);
    tm_tokenizer_free(t);
    tm_gguf_close(g);
    return 0;
}

static int generate_command(int argc, char **argv) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    options.model_path = argv[2];
    options.n_threads = 2;
    options.precision = argc > 5 && !strcmp(argv[5], "exact");
    options.kv_type = kv_type_argument(argc, argv, TM_KV_F16);
    options.max_sequences = 1;
    if (argc > 7) options.device = argv[7];
    tm_engine *engine;
    tm_error_t error = {0};
    if (tm_engine_create(&options, &engine, &error)) return fail(error.message);
    int32_t tokens[4096];
    int n = 0;
    for (char *p = argv[3]; *p && n < 4096; n++) {
        tokens[n] = (int32_t)strtol(p, &p, 10);
        if (*p == ',') p++;
    }
    tm_request_params params;
    tm_request_params_default(&params);
    params.prompt_tokens = tokens;
    params.n_prompt_tokens = n;
    params.max_tokens = atoi(argv[4]);
    params.ignore_eos = true;
    int id;
    if (tm_engine_submit(engine, &params, &id, &error)) return fail(error.message);
    while (tm_engine_busy(engine))
        if (tm_engine_step(engine, &error)) return fail(error.message);
    const int32_t *generated;
    int count = tm_engine_request_tokens(engine, id, &generated);
    for (int i = 0; i < count; i++) printf("%s%d", i ? "," : "", generated[i]);
    printf("\n");
    tm_engine_free(engine);
    return 0;
}

static int stats_command(int argc, char **argv) {
    long size_a, size_b = 0;
    double *a = read_file(argv[2], &size_a), *b = argc > 3 ? read_file(argv[3], &size_b) : NULL;
    if (!a || (argc > 3 && !b)) return fail("cannot read values");
    if (!strcmp(argv[1], "mannwhitney")) {
        printf("%.17g\n", tm_mann_whitney_p(a, (size_t)size_a / 8, b, (size_t)size_b / 8));
    } else {
        tm_summary s;
        tm_summarize(a, (size_t)size_a / 8, 2000, 1, &s);
        printf("{\"n\": %zu, \"median\": %.17g, \"mean\": %.17g, \"stdev\": %.17g, \"min\": %.17g, \"max\": %.17g, "
               "\"p10\": %.17g, \"p90\": %.17g, \"p99\": %.17g, \"relative_noise\": %.17g, \"median_low\": %.17g, "
               "\"median_high\": %.17g}\n",
               s.n, s.median, s.mean, s.stdev, s.min, s.max, s.p10, s.p90, s.p99, s.relative_noise, s.median_low,
               s.median_high);
    }
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "seeds")) return write_seeds(argv[2]);
    if ((argc == 3 && !strcmp(argv[1], "stats")) || (argc == 4 && !strcmp(argv[1], "mannwhitney")))
        return stats_command(argc, argv);
    if (argc >= 5 && !strcmp(argv[1], "generate")) return generate_command(argc, argv);
    if (argc == 5 && !strcmp(argv[1], "tokenize")) return tokenize_command(argv[2], argv[3], argv[4]);
    if (argc >= 5 && !strcmp(argv[1], "logits")) return logits_command(argc, argv);
    if (argc == 4 && !strcmp(argv[1], "copy")) {
        tm_gguf *g;
        tm_error_t error = {0};
        if (tm_gguf_open(argv[2], &g, &error)) return fail(error.message);
        tm_gguf_writer *w = tm_gguf_writer_create(g->version, g->alignment);
        for (uint64_t i = 0; i < g->n_kv; i++)
            if (strcmp(g->kvs[i].key, "general.alignment") != 0 && tm_gguf_writer_add_kv(w, g->kvs[i].key, &g->kvs[i].value))
                return fail("cannot add a key");
        for (uint64_t i = 0; i < g->n_tensors; i++)
            if (tm_gguf_writer_add_tensor(w, g->tensors[i].name, g->tensors[i].type, g->tensors[i].n_dims, g->tensors[i].dims,
                                          g->tensors[i].data, &error))
                return fail(error.message);
        int status = tm_gguf_writer_to_file(w, argv[3], NULL, NULL, NULL, &error) ? fail(error.message) : 0;
        tm_gguf_writer_free(w);
        tm_gguf_close(g);
        return status;
    }
    if (argc < 5) return fail("usage: dequant|dot|quantize TYPE IN... OUT, or copy IN OUT");
    tm_type type;
    if (!tm_type_from_name(argv[2], &type) && strcmp(argv[2], "q8_k") != 0) return fail("unknown type");
    if (!strcmp(argv[2], "q8_k")) type = TM_TYPE_Q8_K;
    const tm_type_traits *scalar = tm_type_traits_scalar(type), *active = tm_type_traits_get(type);
    long size;
    uint8_t *input = read_file(argv[3], &size);
    if (!input) return fail("cannot read input");
    int status = 0;
    if (!strcmp(argv[1], "dequant") && argc == 5) {
        int64_t n = size / scalar->block_bytes * scalar->block_size;
        float *out = malloc((size_t)n * sizeof *out + 1);
        scalar->dequantize_row(input, out, n);
        status = write_file(argv[4], out, (size_t)n * sizeof *out);
        free(out);
    } else if (!strcmp(argv[1], "quantize") && argc == 5) {
        int64_t n = size / 4;
        uint64_t bytes;
        if (!scalar->quantize_row || !tm_type_row_bytes(type, (uint64_t)n, &bytes)) return fail("cannot quantize to this type");
        uint8_t *out = malloc(bytes + 1);
        scalar->quantize_row((const float *)input, out, n);
        status = write_file(argv[4], out, bytes);
        free(out);
    } else if (!strcmp(argv[1], "dot") && argc == 6) {
        long x_size;
        float *x = read_file(argv[4], &x_size);
        if (!x) return fail("cannot read x");
        int64_t n = x_size / 4;
        uint64_t row_bytes;
        if (!tm_type_row_bytes(type, (uint64_t)n, &row_bytes)) return fail("x length is not whole blocks");
        int64_t rows = size / (long)row_bytes;
        float *out = calloc((size_t)rows * 3, sizeof *out);
        void *xq = NULL;
        if (scalar->activation_type != TM_TYPE_F32) {
            uint64_t xq_bytes;
            tm_type_row_bytes(scalar->activation_type, (uint64_t)n, &xq_bytes);
            xq = malloc(xq_bytes);
            tm_type_traits_scalar(scalar->activation_type)->quantize_row(x, xq, n);
        }
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = input + r * (int64_t)row_bytes;
            out[3 * r] = scalar->dot_f32(row, x, n);
            out[3 * r + 1] = xq ? scalar->dot_q8(row, xq, n) : scalar->dot_f32(row, x, n);
            out[3 * r + 2] = xq ? active->dot_q8(row, xq, n) : active->dot_f32(row, x, n);
        }
        status = write_file(argv[5], out, (size_t)rows * 3 * sizeof *out);
        free(out), free(x), free(xq);
    } else {
        status = fail("bad arguments");
    }
    free(input);
    return status;
}
