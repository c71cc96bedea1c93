/*
 * synth.c - synthetic llama models (see synth.h).
 *
 * DESIGN: a model is described as a list of tensors (name, type, shape, standard deviation)
 * built from the preset and the recipe, plus metadata and a generated vocabulary. The GGUF
 * writer lays it out; its fill callback generates each tensor in fixed chunks of blocks, each
 * chunk from its own random stream seeded by (seed, tensor, chunk), so the bytes do not depend
 * on how many threads share the work. Generation is O(bytes) and bound by memory bandwidth.
 */
#define _POSIX_C_SOURCE 200809L
#include "synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHUNK_BLOCKS 8192

static const tm_synth_preset preset_table[] = {
    /* name            vocab   embd   layer head kv  ff     ctx    rope      eps   tied   vocab */
    {"tiny",           1024,   256,   4,    8,   4,  768,   2048,  10000.0f, 1e-5f, false, TM_SYNTH_VOCAB_SPM},
    {"smollm2-135m",   49152,  576,   30,   9,   3,  1536,  8192,  100000.0f, 1e-5f, true, TM_SYNTH_VOCAB_BPE_SMOLLM},
    {"llama2-7b",      32000,  4096,  32,   32,  32, 11008, 4096,  10000.0f, 1e-5f, false, TM_SYNTH_VOCAB_SPM},
    {"llama2-13b",     32000,  5120,  40,   40,  40, 13824, 4096,  10000.0f, 1e-5f, false, TM_SYNTH_VOCAB_SPM},
    {"llama2-70b",     32000,  8192,  80,   64,  8,  28672, 4096,  10000.0f, 1e-5f, false, TM_SYNTH_VOCAB_SPM},
    {"llama3-8b",      128256, 4096,  32,   32,  8,  14336, 8192,  500000.0f, 1e-5f, false, TM_SYNTH_VOCAB_BPE_LLAMA3},
    {"llama3-70b",     128256, 8192,  80,   64,  8,  28672, 8192,  500000.0f, 1e-5f, false, TM_SYNTH_VOCAB_BPE_LLAMA3},
};
#define N_PRESETS (sizeof preset_table / sizeof preset_table[0])

const tm_synth_preset *tm_synth_find_preset(const char *name) {
    for (size_t i = 0; i < N_PRESETS; i++)
        if (strcmp(preset_table[i].name, name) == 0) return &preset_table[i];
    return NULL;
}

const tm_synth_preset *const *tm_synth_presets(void) {
    static const tm_synth_preset *list[N_PRESETS + 1];
    for (size_t i = 0; i < N_PRESETS; i++) list[i] = &preset_table[i];
    return list;
}

static const char *const recipe_names[] = {"q4_k_m", "q8_0", "f16"};

bool tm_synth_recipe_from_name(const char *name, tm_synth_recipe *out) {
    for (int i = 0; i < 3; i++)
        if (strcmp(recipe_names[i], name) == 0) {
            *out = (tm_synth_recipe)i;
            return true;
        }
    return false;
}

const char *tm_synth_recipe_name(tm_synth_recipe recipe) { return recipe_names[recipe]; }

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between. */
static bool use_more_bits(int layer, int n_layer) {
    return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

/* llama.cpp falls back to a 32-element type when a row does not divide into 256-element blocks. */
static tm_type k_quant_fallback(tm_type type, uint64_t n_cols) {
    if (n_cols % TM_QK_K == 0) return type;
    switch (type) {
    case TM_TYPE_Q4_K: return TM_TYPE_Q5_0;
    case TM_TYPE_Q5_K: return TM_TYPE_Q5_1;
    case TM_TYPE_Q6_K: return TM_TYPE_Q8_0;
    default: return type;
    }
}

tm_type tm_synth_tensor_type(const tm_synth_preset *preset, tm_synth_recipe recipe, const char *name, uint32_t n_dims,
                             uint64_t n_cols) {
    if (n_dims < 2) return TM_TYPE_F32;
    if (recipe == TM_SYNTH_F16) return TM_TYPE_F16;
    if (recipe == TM_SYNTH_Q8_0) return TM_TYPE_Q8_0;
    tm_type type = TM_TYPE_Q4_K;
    int layer = -1;
    if (strncmp(name, "blk.", 4) == 0) layer = atoi(name + 4);
    if (strcmp(name, "output.weight") == 0) {
        type = TM_TYPE_Q6_K;
    } else if (strstr(name, "attn_v.weight")) {
        if (use_more_bits(layer, (int)preset->n_layer)) type = TM_TYPE_Q6_K;
        /* llama.cpp's 70B rule: attn_v is 8x smaller under GQA, so it gets Q5_K at little cost */
        if (preset->n_layer == 80 && type == TM_TYPE_Q4_K) type = TM_TYPE_Q5_K;
    } else if (strstr(name, "ffn_down")) {
        if (use_more_bits(layer, (int)preset->n_layer)) type = TM_TYPE_Q6_K;
    }
    return k_quant_fallback(type, n_cols);
}

/* ---- the tensor list --------------------------------------------------------------------- */

typedef struct synth_tensor {
    char name[64];
    tm_type type;
    uint32_t n_dims;
    uint64_t dims[2];
    float stddev;
    bool is_norm; /* 1-D norm weight: values near 1 */
} synth_tensor;

typedef struct synth_model {
    const tm_synth_options *options;
    synth_tensor *tensors;
    uint32_t n_tensors;
    char **tokens; /* vocabulary pieces */
    float *scores;
    int32_t *token_types;
    char **merges; /* BPE only */
    uint32_t n_merges;
    uint32_t bos, eos;
    double started;
} synth_model;

static void add_tensor(synth_model *m, const char *name, uint32_t n_dims, uint64_t cols, uint64_t rows) {
    synth_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->dims[0] = cols;
    t->dims[1] = rows;
    t->is_norm = n_dims == 1;
    t->stddev = t->is_norm ? 0.03f : 1.0f / sqrtf((float)cols);
    t->type = tm_synth_tensor_type(m->options->preset, m->options->recipe, name, n_dims, cols);
}

static bool build_tensor_list(synth_model *m) {
    const tm_synth_preset *p = m->options->preset;
    uint64_t head_dim = p->n_embd / p->n_head, kv_dim = head_dim * p->n_head_kv;
    m->tensors = calloc(3 + 9 * (size_t)p->n_layer, sizeof *m->tensors);
    if (!m->tensors) return false;
    char name[64];
    add_tensor(m, "token_embd.weight", 2, p->n_embd, p->n_vocab);
    for (uint32_t l = 0; l < p->n_layer; l++) {
#define LAYER_TENSOR(suffix, n_dims, cols, rows)                        \
    snprintf(name, sizeof name, "blk.%u." suffix, l);                   \
    add_tensor(m, name, n_dims, cols, rows);
        LAYER_TENSOR("attn_norm.weight", 1, p->n_embd, 1)
        LAYER_TENSOR("attn_q.weight", 2, p->n_embd, p->n_embd)
        LAYER_TENSOR("attn_k.weight", 2, p->n_embd, kv_dim)
        LAYER_TENSOR("attn_v.weight", 2, p->n_embd, kv_dim)
        LAYER_TENSOR("attn_output.weight", 2, p->n_embd, p->n_embd)
        LAYER_TENSOR("ffn_norm.weight", 1, p->n_embd, 1)
        LAYER_TENSOR("ffn_gate.weight", 2, p->n_embd, p->n_ff)
        LAYER_TENSOR("ffn_up.weight", 2, p->n_embd, p->n_ff)
        LAYER_TENSOR("ffn_down.weight", 2, p->n_ff, p->n_embd)
#undef LAYER_TENSOR
    }
    add_tensor(m, "output_norm.weight", 1, p->n_embd, 1);
    if (!p->tied_embeddings) add_tensor(m, "output.weight", 2, p->n_embd, p->n_vocab);
    return true;
}

/* ---- the vocabulary ---------------------------------------------------------------------- */

/* UTF-8 of a code point < 0x10000 into out (NUL-terminated); returns the length. */
static int utf8_encode(uint32_t code_point, char *out) {
    int n;
    if (code_point < 0x80) {
        out[0] = (char)code_point;
        n = 1;
    } else if (code_point < 0x800) {
        out[0] = (char)(0xc0 | (code_point >> 6));
        out[1] = (char)(0x80 | (code_point & 0x3f));
        n = 2;
    } else {
        out[0] = (char)(0xe0 | (code_point >> 12));
        out[1] = (char)(0x80 | ((code_point >> 6) & 0x3f));
        out[2] = (char)(0x80 | (code_point & 0x3f));
        n = 3;
    }
    out[n] = 0;
    return n;
}

/* GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to 256 + k. */
static void gpt2_byte_order(uint32_t code_points[256], uint8_t bytes[256]) {
    int n = 0;
    bool direct[256] = {false};
    for (int b = 33; b <= 126; b++) direct[b] = true;
    for (int b = 161; b <= 172; b++) direct[b] = true;
    for (int b = 174; b <= 255; b++) direct[b] = true;
    for (int b = 0; b < 256; b++)
        if (direct[b]) {
            bytes[n] = (uint8_t)b;
            code_points[n++] = (uint32_t)b;
        }
    int extra = 0;
    for (int b = 0; b < 256; b++)
        if (!direct[b]) {
            bytes[n] = (uint8_t)b;
            code_points[n++] = 256u + (uint32_t)extra++;
        }
}

static const char letters[] = "etaoinshrdlcumwfgypbvkjxqz";

/* Append merged pieces level by level: level n has `space`+w (|w| = n-1) and w (|w| = n), over
 * 26 letters. Every piece's prefix without its last letter exists already, so each BPE merge
 * (prefix, last letter) is valid. Stops when `count` reaches `limit`. */
static bool add_word_pieces(synth_model *m, uint32_t *count, uint32_t limit, const char *space, bool with_merges) {
    for (int level = 2; *count < limit; level++) {
        for (int with_space = 1; with_space >= 0 && *count < limit; with_space--) {
            int n_letters = with_space ? level - 1 : level;
            long long combinations = 1;
            for (int k = 0; k < n_letters; k++) combinations *= 26;
            for (long long c = 0; c < combinations && *count < limit; c++) {
                char piece[64];
                int length = 0;
                if (with_space) length += snprintf(piece, sizeof piece, "%s", space);
                long long rest = c;
                char word[16];
                for (int k = n_letters - 1; k >= 0; k--) {
                    word[k] = letters[rest % 26];
                    rest /= 26;
                }
                memcpy(piece + length, word, (size_t)n_letters);
                length += n_letters;
                piece[length] = 0;
                if (!(m->tokens[*count] = strdup(piece))) return false;
                m->scores[*count] = -(float)*count;
                m->token_types[*count] = 1;
                if (with_merges) {
                    char merge[80];
                    snprintf(merge, sizeof merge, "%.*s %c", length - 1, piece, piece[length - 1]);
                    if (!(m->merges[m->n_merges++] = strdup(merge))) return false;
                }
                (*count)++;
            }
        }
    }
    return true;
}

static bool add_token(synth_model *m, uint32_t *count, const char *piece, int32_t type) {
    if (!(m->tokens[*count] = strdup(piece))) return false;
    m->scores[*count] = type == 1 ? -(float)*count : 0.0f;
    m->token_types[*count] = type;
    (*count)++;
    return true;
}

static bool build_vocab(synth_model *m) {
    const tm_synth_preset *p = m->options->preset;
    uint32_t n = p->n_vocab, count = 0;
    m->tokens = calloc(n, sizeof *m->tokens);
    m->scores = calloc(n, sizeof *m->scores);
    m->token_types = calloc(n, sizeof *m->token_types);
    m->merges = calloc(n, sizeof *m->merges);
    if (!m->tokens || !m->scores || !m->token_types || !m->merges) return false;
    char piece[16];
    if (p->vocab == TM_SYNTH_VOCAB_SPM) {
        /* <unk>, <s>, </s>, 256 byte-fallback pieces, then pieces; SentencePiece's space is U+2581 */
        if (!add_token(m, &count, "<unk>", 2) || !add_token(m, &count, "<s>", 3) || !add_token(m, &count, "</s>", 3))
            return false;
        for (int b = 0; b < 256; b++) {
            snprintf(piece, sizeof piece, "<0x%02X>", b);
            if (!add_token(m, &count, piece, 6)) return false;
        }
        utf8_encode(0x2581, piece);
        if (!add_token(m, &count, piece, 1)) return false;
        for (int c = 33; c < 127; c++) {
            piece[0] = (char)c;
            piece[1] = 0;
            if (!add_token(m, &count, piece, 1)) return false;
        }
        utf8_encode(0x2581, piece);
        m->bos = 1;
        m->eos = 2;
        return add_word_pieces(m, &count, n, piece, false);
    }
    /* byte-level BPE: specials (SmolLM2 puts them first, Llama 3 last), 256 byte symbols, merges */
    uint32_t n_special = p->vocab == TM_SYNTH_VOCAB_BPE_LLAMA3 ? 256 : 3;
    if (p->vocab == TM_SYNTH_VOCAB_BPE_SMOLLM) {
        if (!add_token(m, &count, "<|endoftext|>", 3) || !add_token(m, &count, "<|im_start|>", 3) ||
            !add_token(m, &count, "<|im_end|>", 3))
            return false;
        m->bos = 1;
        m->eos = 2;
    }
    uint32_t code_points[256];
    uint8_t bytes[256];
    gpt2_byte_order(code_points, bytes);
    for (int i = 0; i < 256; i++) {
        utf8_encode(code_points[i], piece);
        if (!add_token(m, &count, piece, 1)) return false;
    }
    char space[8];
    utf8_encode(256 + 32, space); /* byte 0x20 is the 33rd non-printable: U+0120 'Ġ' */
    uint32_t regular = p->vocab == TM_SYNTH_VOCAB_BPE_LLAMA3 ? n - n_special : n;
    if (!add_word_pieces(m, &count, regular, space, true)) return false;
    if (p->vocab == TM_SYNTH_VOCAB_BPE_LLAMA3) {
        static const char *const named[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                            "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                            "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                                            "<|eom_id|>", "<|eot_id|>"};
        m->bos = count;
        m->eos = count + 1;
        for (uint32_t i = 0; count < n; i++) {
            char reserved[48];
            if (i < 10) snprintf(reserved, sizeof reserved, "%s", named[i]);
            else snprintf(reserved, sizeof reserved, "<|reserved_special_token_%u|>", i - 7);
            if (!add_token(m, &count, reserved, 3)) return false;
        }
    }
    return true;
}

static void free_model(synth_model *m) {
    uint32_t n = m->options && m->options->preset ? m->options->preset->n_vocab : 0;
    for (uint32_t i = 0; m->tokens && i < n; i++) free(m->tokens[i]);
    for (uint32_t i = 0; m->merges && i < m->n_merges; i++) free(m->merges[i]);
    free(m->tokens);
    free(m->scores);
    free(m->token_types);
    free(m->merges);
    free(m->tensors);
}

/* ---- GGUF assembly ----------------------------------------------------------------------- */

static uint32_t llama_file_type(tm_synth_recipe recipe) {
    switch (recipe) {
    case TM_SYNTH_Q4_K_M: return 15; /* LLAMA_FTYPE_MOSTLY_Q4_K_M */
    case TM_SYNTH_Q8_0: return 7;    /* LLAMA_FTYPE_MOSTLY_Q8_0 */
    case TM_SYNTH_F16: return 1;     /* LLAMA_FTYPE_MOSTLY_F16 */
    }
    return 0;
}

static tm_status build_writer(synth_model *m, tm_gguf_writer **out, tm_error_t *error) {
    const tm_synth_preset *p = m->options->preset;
    *out = NULL;
    if (!build_tensor_list(m) || !build_vocab(m)) return tm_error_set(error, TM_ERR_NO_MEMORY, "synth: out of memory");
    tm_gguf_writer *w = tm_gguf_writer_create(3, TM_GGUF_DEFAULT_ALIGNMENT);
    if (!w) return tm_error_set(error, TM_ERR_NO_MEMORY, "synth: out of memory");
    char name[96];
    snprintf(name, sizeof name, "synthetic %s %s", p->name, tm_synth_recipe_name(m->options->recipe));
    tm_status s = TM_OK;
    s = s ? s : tm_gguf_writer_set_string(w, "general.architecture", "llama");
    s = s ? s : tm_gguf_writer_set_string(w, "general.name", name);
    s = s ? s : tm_gguf_writer_set_u32(w, "general.file_type", llama_file_type(m->options->recipe));
    s = s ? s : tm_gguf_writer_set_u32(w, "general.quantization_version", 2);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.vocab_size", p->n_vocab);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.context_length", p->n_ctx);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.embedding_length", p->n_embd);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.block_count", p->n_layer);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.feed_forward_length", p->n_ff);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.rope.dimension_count", p->n_embd / p->n_head);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.attention.head_count", p->n_head);
    s = s ? s : tm_gguf_writer_set_u32(w, "llama.attention.head_count_kv", p->n_head_kv);
    s = s ? s : tm_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", p->rms_norm_eps);
    s = s ? s : tm_gguf_writer_set_f32(w, "llama.rope.freq_base", p->rope_freq_base);
    bool spm = p->vocab == TM_SYNTH_VOCAB_SPM;
    s = s ? s : tm_gguf_writer_set_string(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!spm)
        s = s ? s : tm_gguf_writer_set_string(w, "tokenizer.ggml.pre",
                                              p->vocab == TM_SYNTH_VOCAB_BPE_LLAMA3 ? "llama-bpe" : "smollm");
    s = s ? s : tm_gguf_writer_set_string_array(w, "tokenizer.ggml.tokens", (const char *const *)m->tokens, p->n_vocab);
    if (spm) s = s ? s : tm_gguf_writer_set_array(w, "tokenizer.ggml.scores", TM_GGUF_FLOAT32, m->scores, p->n_vocab);
    s = s ? s : tm_gguf_writer_set_array(w, "tokenizer.ggml.token_type", TM_GGUF_INT32, m->token_types, p->n_vocab);
    if (!spm)
        s = s ? s : tm_gguf_writer_set_string_array(w, "tokenizer.ggml.merges", (const char *const *)m->merges, m->n_merges);
    s = s ? s : tm_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", m->bos);
    s = s ? s : tm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", m->eos);
    if (spm) s = s ? s : tm_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    s = s ? s : tm_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    if (s) {
        tm_gguf_writer_free(w);
        return tm_error_set(error, s, "synth: cannot build metadata (%s)", tm_status_name(s));
    }
    for (uint32_t i = 0; i < m->n_tensors && !m->options->vocab_only; i++) {
        s = tm_gguf_writer_add_tensor(w, m->tensors[i].name, m->tensors[i].type, m->tensors[i].n_dims,
                                      m->tensors[i].dims, NULL, error);
        if (s) {
            tm_gguf_writer_free(w);
            return s;
        }
    }
    *out = w;
    return TM_OK;
}

typedef struct fill_job {
    const synth_model *model;
    const synth_tensor *tensor;
    const tm_type_traits *traits;
    uint64_t tensor_index;
    uint8_t *dst;
    uint64_t n_blocks;
} fill_job;

static void fill_chunks(void *arg, int thread_index, int n_threads) {
    const fill_job *job = arg;
    uint64_t n_chunks = (job->n_blocks + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    for (uint64_t chunk = (uint64_t)thread_index; chunk < n_chunks; chunk += (uint64_t)n_threads) {
        tm_rng_t rng;
        tm_rng_seed(&rng, job->model->options->seed * 0x100000001b3ull ^ (job->tensor_index << 32) ^ chunk);
        uint64_t first = chunk * CHUNK_BLOCKS;
        uint64_t count = TM_MIN((uint64_t)CHUNK_BLOCKS, job->n_blocks - first);
        uint8_t *dst = job->dst + first * (uint64_t)job->traits->block_bytes;
        job->traits->random_blocks(&rng, dst, (int64_t)count, job->tensor->stddev);
        if (job->tensor->is_norm) {
            float *values = (float *)dst;
            for (uint64_t i = 0; i < count; i++) values[i] += 1.0f;
        }
    }
}

static tm_status fill_tensor(void *user, uint64_t index, void *dst, uint64_t n_bytes, tm_error_t *error) {
    const synth_model *m = user;
    const synth_tensor *t = &m->tensors[index];
    fill_job job = {m, t, tm_type_traits_scalar(t->type), index, dst, 0};
    job.n_blocks = n_bytes / (uint64_t)job.traits->block_bytes;
    (void)error;
    if (m->options->pool)
        tm_threadpool_run(m->options->pool, fill_chunks, &job);
    else
        fill_chunks(&job, 0, 1);
    return TM_OK;
}

static void report_progress(void *user, uint64_t done, uint64_t total, uint64_t bytes_done, uint64_t bytes_total) {
    const synth_model *m = user;
    if (!m->options->progress || bytes_total < (256u << 20)) return; /* small models build in a blink */
    double elapsed = tm_time_seconds() - m->started;
    double rate = elapsed > 0 ? (double)bytes_done / elapsed : 0;
    double eta = rate > 0 ? (double)(bytes_total - bytes_done) / rate : 0;
    bool terminal = isatty(STDERR_FILENO);
    /* a terminal gets a line redrawn in place; a log gets a line per tenth of the tensors */
    uint64_t every = terminal ? 16 : TM_MAX(total / 10, 1);
    if (done == total || done % every == 0)
        fprintf(stderr, "%ssynth: tensor %llu/%llu  %.2f/%.2f GB  %.2f GB/s  ETA %.0f s%s", terminal ? "\r" : "",
                (unsigned long long)done, (unsigned long long)total, (double)bytes_done / 1e9, (double)bytes_total / 1e9,
                rate / 1e9, eta, terminal ? "   " : "\n");
    if (done == total && terminal) fputc('\n', stderr);
}

static tm_status check_options(const tm_synth_options *options, tm_error_t *error) {
    if (!options->preset) return tm_error_set(error, TM_ERR_INVALID_ARG, "synth: no preset given");
    if ((unsigned)options->recipe > TM_SYNTH_F16) return tm_error_set(error, TM_ERR_INVALID_ARG, "synth: unknown type");
    return TM_OK;
}

tm_status tm_synth_file_size(const tm_synth_options *options, uint64_t *out_size, tm_error_t *error) {
    synth_model m = {.options = options};
    tm_gguf_writer *w = NULL;
    tm_status s = check_options(options, error);
    if (!s) s = build_writer(&m, &w, error);
    if (!s) *out_size = tm_gguf_writer_file_size(w);
    tm_gguf_writer_free(w);
    free_model(&m);
    return s;
}

tm_status tm_synth_write_file(const tm_synth_options *options, const char *path, tm_error_t *error) {
    synth_model m = {.options = options, .started = tm_time_seconds()};
    tm_gguf_writer *w = NULL;
    tm_status s = check_options(options, error);
    if (!s) s = build_writer(&m, &w, error);
    if (!s) s = tm_gguf_writer_to_file(w, path, fill_tensor, report_progress, &m, error);
    tm_gguf_writer_free(w);
    free_model(&m);
    return s;
}

tm_status tm_synth_open_memory(const tm_synth_options *options, tm_gguf **out, tm_error_t *error) {
    synth_model m = {.options = options, .started = tm_time_seconds()};
    tm_gguf_writer *w = NULL;
    void *data = NULL;
    uint64_t size = 0;
    *out = NULL;
    tm_status s = check_options(options, error);
    if (!s) s = build_writer(&m, &w, error);
    if (!s) s = tm_gguf_writer_to_memory(w, &data, &size, fill_tensor, report_progress, &m, error);
    tm_gguf_writer_free(w);
    free_model(&m);
    if (s) return s;
    char label[96];
    snprintf(label, sizeof label, "synthetic:%s:%s", options->preset->name, tm_synth_recipe_name(options->recipe));
    return tm_gguf_open_memory(data, size, label, true, out, error);
}

tm_status tm_synth_parse_spec(const char *spec, tm_synth_options *options, tm_error_t *error) {
    const char *colon = strchr(spec, ':');
    char preset[64];
    size_t length = colon ? (size_t)(colon - spec) : strlen(spec);
    if (length >= sizeof preset) length = sizeof preset - 1;
    memcpy(preset, spec, length);
    preset[length] = 0;
    options->preset = tm_synth_find_preset(preset);
    if (!options->preset)
        return tm_error_set(error, TM_ERR_INVALID_ARG,
                            "synthetic model '%s': unknown preset '%s' (presets: tiny, smollm2-135m, llama2-7b, "
                            "llama2-13b, llama2-70b, llama3-8b, llama3-70b)", spec, preset);
    options->recipe = TM_SYNTH_Q4_K_M;
    if (colon && !tm_synth_recipe_from_name(colon + 1, &options->recipe))
        return tm_error_set(error, TM_ERR_INVALID_ARG, "synthetic model '%s': unknown type '%s' (types: q4_k_m, q8_0, f16)",
                            spec, colon + 1);
    return TM_OK;
}
