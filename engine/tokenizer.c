/*
 * tokenizer.c - SentencePiece-style and byte-level BPE tokenizers over a GGUF vocabulary
 * (see tokenizer.h).
 *
 * DESIGN: the vocabulary strings stay in the GGUF mapping (the tokenizer must not outlive it);
 * a hash table maps piece -> id and another maps a merge (left id, right id) -> (rank, result).
 * Encoding first cuts the text at special tokens, then each plain fragment goes through the
 * family's algorithm:
 *   SPM: symbols = UTF-8 characters; a max-heap of adjacent pairs whose concatenation is a
 *        piece, by score (ties: leftmost); merge until none is left: O(n log n).
 *   BPE: the pre-tokenizer cuts words; each word's bytes become byte symbols; the lowest-rank
 *        adjacent merge is applied until none applies: O(w^2) per word of w bytes.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>

#include "unicode.h"

enum { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5, TOKEN_BYTE = 6 };

typedef enum pre_tokenizer { PRE_GPT2, PRE_LLAMA3, PRE_SMOLLM } pre_tokenizer;

typedef struct piece {
    const char *text;
    int length;
    int type;
    float score;
} piece;

typedef struct merge_slot {
    uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
    int32_t rank;
    int32_t result;
} merge_slot;

struct tm_tokenizer {
    bool spm;                 /* else byte-level BPE */
    pre_tokenizer pre;
    int n_vocab;
    piece *pieces;
    int32_t *piece_table;     /* open addressing: id + 1, 0 = empty */
    uint64_t piece_mask;
    merge_slot *merges;
    uint64_t merge_mask;
    int32_t byte_token[256];  /* SPM: <0xXX>; BPE: the byte's mapped character; -1 when absent */
    uint32_t byte_to_code_point[256];
    int16_t code_point_to_byte[512]; /* inverse of the byte-level map, -1 elsewhere */
    int32_t *specials;        /* control and user-defined ids, longest first */
    int n_specials;
    int32_t bos, eos, unknown;
    bool add_bos, add_space_prefix;
    bool *end_of_generation;  /* per id */
    tm_chat_format chat;
    char *default_system;     /* chatml templates that insert one */
};

/* ---- hashing ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, int n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static int32_t find_piece(const tm_tokenizer *t, const char *s, int n) {
    for (uint64_t i = hash_bytes(s, n) & t->piece_mask;; i = (i + 1) & t->piece_mask) {
        int32_t slot = t->piece_table[i];
        if (!slot) return -1;
        const piece *p = &t->pieces[slot - 1];
        if (p->length == n && memcmp(p->text, s, (size_t)n) == 0) return slot - 1;
    }
}

static const merge_slot *find_merge(const tm_tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
    for (uint64_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (!t->merges[i].key) return NULL;
        if (t->merges[i].key == key) return &t->merges[i];
    }
}

/* ---- growable id buffer ------------------------------------------------------------------ */

typedef struct id_buffer {
    int32_t *ids;
    int n, capacity;
    bool failed;
} id_buffer;

static void push_id(id_buffer *b, int32_t id) {
    if (b->failed) return;
    if (b->n == b->capacity) {
        int capacity = b->capacity ? 2 * b->capacity : 64;
        int32_t *grown = realloc(b->ids, (size_t)capacity * sizeof *grown);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->ids = grown;
        b->capacity = capacity;
    }
    b->ids[b->n++] = id;
}

/* ---- loading ----------------------------------------------------------------------------- */

static void gpt2_byte_map(uint32_t map[256]) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        map[b] = direct ? (uint32_t)b : 256u + (uint32_t)extra++;
    }
}

static bool piece_equals(const piece *p, const char *s) {
    return p->length == (int)strlen(s) && memcmp(p->text, s, (size_t)p->length) == 0;
}

/* Special tokens longest first, so the longest match wins (insertion sort: a few hundred). */
static void sort_specials_by_length(tm_tokenizer *t) {
    for (int i = 1; i < t->n_specials; i++) {
        int32_t id = t->specials[i];
        int j = i;
        while (j > 0 && t->pieces[t->specials[j - 1]].length < t->pieces[id].length) {
            t->specials[j] = t->specials[j - 1];
            j--;
        }
        t->specials[j] = id;
    }
}

/* The default system prompt a chatml template writes when the first message is not a system
 * one: the text between "<|im_start|>system\n" and "<|im_end|>" inside the template. */
static char *chatml_default_system(const char *template_text, uint64_t length) {
    const char *marker = "<|im_start|>system\n";
    size_t marker_length = strlen(marker);
    for (uint64_t i = 0; i + marker_length <= length; i++) {
        if (memcmp(template_text + i, marker, marker_length) != 0) continue;
        const char *start = template_text + i + marker_length;
        for (const char *p = start; p + 10 <= template_text + length; p++)
            if (memcmp(p, "<|im_end|>", 10) == 0) {
                if (memchr(start, '\'', (size_t)(p - start)) || memchr(start, '{', (size_t)(p - start))) return NULL;
                return strndup(start, (size_t)(p - start));
            }
    }
    return NULL;
}

static bool contains(const char *s, uint64_t n, const char *needle) {
    size_t k = strlen(needle);
    for (uint64_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0) return true;
    return false;
}

tm_status tm_tokenizer_load(const tm_gguf *g, tm_tokenizer **out, tm_error_t *error) {
    *out = NULL;
    const char *model;
    uint64_t model_length;
    tm_status s = tm_gguf_get_string(g, "tokenizer.ggml.model", &model, &model_length, error);
    if (s) return s;
    bool spm = model_length == 5 && !memcmp(model, "llama", 5);
    if (!spm && !(model_length == 4 && !memcmp(model, "gpt2", 4)))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%.*s' is not supported (llama, gpt2)",
                            g->label, (int)TM_MIN(model_length, 32), model);
    const tm_gguf_kv *tokens = tm_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!tokens || tokens->value.type != TM_GGUF_ARRAY || tokens->value.array.element_type != TM_GGUF_STRING ||
        tokens->value.array.count == 0 || tokens->value.array.count > (1u << 24))
        return tm_error_set(error, TM_ERR_FORMAT, "%s: tokenizer.ggml.tokens is missing or not a non-empty string array",
                            g->label);
    tm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    t->spm = spm;
    t->n_vocab = (int)tokens->value.array.count;
    const tm_gguf_kv *types = tm_gguf_find_kv(g, "tokenizer.ggml.token_type");
    const tm_gguf_kv *scores = tm_gguf_find_kv(g, "tokenizer.ggml.scores");
    if (types && (types->value.type != TM_GGUF_ARRAY || types->value.array.count != tokens->value.array.count ||
                  types->value.array.element_type != TM_GGUF_INT32)) {
        s = tm_error_set(error, TM_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be int32 x %d", g->label, t->n_vocab);
        goto fail;
    }
    if (scores && (scores->value.type != TM_GGUF_ARRAY || scores->value.array.count != tokens->value.array.count ||
                   scores->value.array.element_type != TM_GGUF_FLOAT32)) {
        s = tm_error_set(error, TM_ERR_FORMAT, "%s: tokenizer.ggml.scores must be float32 x %d", g->label, t->n_vocab);
        goto fail;
    }
    t->pieces = calloc((size_t)t->n_vocab, sizeof *t->pieces);
    uint64_t table_size = 1;
    while (table_size < 2 * (uint64_t)t->n_vocab) table_size <<= 1;
    t->piece_table = calloc(table_size, sizeof *t->piece_table);
    t->piece_mask = table_size - 1;
    t->end_of_generation = calloc((size_t)t->n_vocab, sizeof *t->end_of_generation);
    t->specials = malloc((size_t)t->n_vocab * sizeof *t->specials);
    if (!t->pieces || !t->piece_table || !t->end_of_generation || !t->specials) {
        s = tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory for %d tokens", t->n_vocab);
        goto fail;
    }
    for (int i = 0; i < t->n_vocab; i++) {
        const tm_gguf_value *v = &tokens->value.array.items[i];
        if (v->string.length > 4096) {
            s = tm_error_set(error, TM_ERR_FORMAT, "%s: token %d at byte %llu is %llu bytes long", g->label, i,
                             (unsigned long long)v->offset, (unsigned long long)v->string.length);
            goto fail;
        }
        piece *p = &t->pieces[i];
        p->text = v->string.data;
        p->length = (int)v->string.length;
        p->type = types ? (int)tm_gguf_array_i64(&types->value, (uint64_t)i) : TOKEN_NORMAL;
        p->score = scores ? (float)tm_gguf_array_f64(&scores->value, (uint64_t)i) : 0.0f;
        if (p->type == TOKEN_CONTROL || p->type == TOKEN_USER_DEFINED)
            if (p->length > 0) t->specials[t->n_specials++] = i;
        uint64_t slot = hash_bytes(p->text, p->length) & t->piece_mask;
        while (t->piece_table[slot]) {
            const piece *other = &t->pieces[t->piece_table[slot] - 1];
            if (other->length == p->length && !memcmp(other->text, p->text, (size_t)p->length)) break; /* first id wins */
            slot = (slot + 1) & t->piece_mask;
        }
        if (!t->piece_table[slot]) t->piece_table[slot] = i + 1;
    }
    sort_specials_by_length(t);

    /* byte tokens */
    for (int b = 0; b < 256; b++) t->byte_token[b] = -1;
    for (int i = 0; i < 512; i++) t->code_point_to_byte[i] = -1;
    if (spm) {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_token[b] = find_piece(t, name, 6);
        }
    } else {
        gpt2_byte_map(t->byte_to_code_point);
        for (int b = 0; b < 256; b++) {
            char utf8[4];
            int n = tm_utf8_encode(t->byte_to_code_point[b], utf8);
            t->byte_token[b] = find_piece(t, utf8, n);
            t->code_point_to_byte[t->byte_to_code_point[b]] = (int16_t)b;
        }
    }

    /* merges (BPE): "left right" -> rank, with the merged piece's id */
    if (!spm) {
        const tm_gguf_kv *merges = tm_gguf_find_kv(g, "tokenizer.ggml.merges");
        if (!merges || merges->value.type != TM_GGUF_ARRAY || merges->value.array.element_type != TM_GGUF_STRING) {
            s = tm_error_set(error, TM_ERR_FORMAT, "%s: a gpt2 tokenizer needs tokenizer.ggml.merges (string array)", g->label);
            goto fail;
        }
        uint64_t n_merges = merges->value.array.count, size = 1;
        while (size < 2 * n_merges + 2) size <<= 1;
        t->merges = calloc(size, sizeof *t->merges);
        t->merge_mask = size - 1;
        if (!t->merges) {
            s = tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory for merges");
            goto fail;
        }
        char joined[8192];
        for (uint64_t r = 0; r < n_merges; r++) {
            const tm_gguf_value *v = &merges->value.array.items[r];
            const char *text = v->string.data, *space = memchr(text, ' ', v->string.length);
            if (!space || v->string.length >= sizeof joined || space == text) {
                s = tm_error_set(error, TM_ERR_FORMAT, "%s: merge %llu at byte %llu is not 'left right'", g->label,
                                 (unsigned long long)r, (unsigned long long)v->offset);
                goto fail;
            }
            int left_length = (int)(space - text), right_length = (int)v->string.length - left_length - 1;
            int32_t left = find_piece(t, text, left_length), right = find_piece(t, space + 1, right_length);
            memcpy(joined, text, (size_t)left_length);
            memcpy(joined + left_length, space + 1, (size_t)right_length);
            int32_t result = find_piece(t, joined, left_length + right_length);
            if (left < 0 || right < 0 || result < 0) continue; /* a merge we can never use */
            uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
            uint64_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & t->merge_mask;
            while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
            if (t->merges[i].key) continue; /* the first (best) rank wins */
            t->merges[i] = (merge_slot){key, (int32_t)r, result};
        }
        const char *pre;
        uint64_t pre_length;
        t->pre = PRE_GPT2;
        if (!tm_gguf_get_string(g, "tokenizer.ggml.pre", &pre, &pre_length, NULL)) {
            if ((pre_length == 9 && !memcmp(pre, "llama-bpe", 9)) || (pre_length == 6 && !memcmp(pre, "llama3", 6)))
                t->pre = PRE_LLAMA3;
            else if (pre_length == 6 && !memcmp(pre, "smollm", 6))
                t->pre = PRE_SMOLLM;
        }
    }

    /* special ids and flags */
    uint64_t value;
    t->bos = !tm_gguf_get_u64(g, "tokenizer.ggml.bos_token_id", &value, NULL) && value < (uint64_t)t->n_vocab ? (int32_t)value : -1;
    t->eos = !tm_gguf_get_u64(g, "tokenizer.ggml.eos_token_id", &value, NULL) && value < (uint64_t)t->n_vocab ? (int32_t)value : -1;
    t->unknown = !tm_gguf_get_u64(g, "tokenizer.ggml.unknown_token_id", &value, NULL) && value < (uint64_t)t->n_vocab
                     ? (int32_t)value : -1;
    const tm_gguf_kv *flag = tm_gguf_find_kv(g, "tokenizer.ggml.add_bos_token");
    t->add_bos = flag && flag->value.type == TM_GGUF_BOOL ? flag->value.b : spm;
    flag = tm_gguf_find_kv(g, "tokenizer.ggml.add_space_prefix");
    t->add_space_prefix = spm && (flag && flag->value.type == TM_GGUF_BOOL ? flag->value.b : true);
    if (t->eos >= 0) t->end_of_generation[t->eos] = true;
    static const char *const end_names[] = {"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>",
                                            "<end_of_turn>", "<|end|>", "</s>"};
    for (int i = 0; i < t->n_specials; i++)
        for (size_t k = 0; k < sizeof end_names / sizeof end_names[0]; k++)
            if (piece_equals(&t->pieces[t->specials[i]], end_names[k])) t->end_of_generation[t->specials[i]] = true;

    const char *template_text;
    uint64_t template_length;
    if (!tm_gguf_get_string(g, "tokenizer.chat_template", &template_text, &template_length, NULL)) {
        if (contains(template_text, template_length, "<|im_start|>")) {
            t->chat = TM_CHAT_CHATML;
            t->default_system = chatml_default_system(template_text, template_length);
        } else if (contains(template_text, template_length, "<|start_header_id|>")) {
            t->chat = TM_CHAT_LLAMA3;
        } else if (contains(template_text, template_length, "[INST]")) {
            t->chat = TM_CHAT_LLAMA2;
        }
    }
    *out = t;
    return TM_OK;
fail:
    tm_tokenizer_free(t);
    return s;
}

void tm_tokenizer_free(tm_tokenizer *t) {
    if (!t) return;
    free(t->pieces);
    free(t->piece_table);
    free(t->merges);
    free(t->specials);
    free(t->end_of_generation);
    free(t->default_system);
    free(t);
}

int tm_tokenizer_vocab_size(const tm_tokenizer *t) { return t->n_vocab; }
int32_t tm_tokenizer_bos(const tm_tokenizer *t) { return t->bos; }
int32_t tm_tokenizer_eos(const tm_tokenizer *t) { return t->eos; }
bool tm_tokenizer_adds_bos(const tm_tokenizer *t) { return t->add_bos && t->bos >= 0; }
bool tm_tokenizer_is_end_of_generation(const tm_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->end_of_generation[id];
}
tm_chat_format tm_tokenizer_chat_format(const tm_tokenizer *t) { return t->chat; }
const char *tm_tokenizer_piece(const tm_tokenizer *t, int32_t id, int *length) {
    *length = t->pieces[id].length;
    return t->pieces[id].text;
}

/* ---- SentencePiece-style ----------------------------------------------------------------- */

typedef struct spm_symbol {
    int prev, next;    /* -1 at the ends */
    int offset, length; /* bytes of the escaped text; length 0 = merged away */
} spm_symbol;

typedef struct spm_bigram {
    int left, right;
    float score;
    int length; /* left.length + right.length when it was made */
} spm_bigram;

typedef struct spm_heap {
    spm_bigram *items;
    int n, capacity;
} spm_heap;

static bool bigram_before(const spm_bigram *a, const spm_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static bool heap_push(spm_heap *h, spm_bigram item) {
    if (h->n == h->capacity) {
        int capacity = h->capacity ? 2 * h->capacity : 64;
        spm_bigram *grown = realloc(h->items, (size_t)capacity * sizeof *grown);
        if (!grown) return false;
        h->items = grown;
        h->capacity = capacity;
    }
    int i = h->n++;
    while (i > 0 && bigram_before(&item, &h->items[(i - 1) / 2])) {
        h->items[i] = h->items[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->items[i] = item;
    return true;
}

static spm_bigram heap_pop(spm_heap *h) {
    spm_bigram top = h->items[0], last = h->items[--h->n];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= h->n) break;
        if (child + 1 < h->n && bigram_before(&h->items[child + 1], &h->items[child])) child++;
        if (!bigram_before(&h->items[child], &last)) break;
        h->items[i] = h->items[child];
        i = child;
    }
    if (h->n > 0) h->items[i] = last;
    return top;
}

static bool spm_try_bigram(const tm_tokenizer *t, const char *text, spm_symbol *symbols, int left, int right,
                           spm_heap *heap) {
    if (left < 0 || right < 0) return true;
    int length = symbols[left].length + symbols[right].length;
    int32_t id = find_piece(t, text + symbols[left].offset, length);
    if (id < 0) return true;
    return heap_push(heap, (spm_bigram){left, right, t->pieces[id].score, length});
}

/* Tokenize escaped text (spaces already U+2581) into b. */
static tm_status spm_tokenize(const tm_tokenizer *t, const char *text, int n, id_buffer *b, tm_error_t *error) {
    spm_symbol *symbols = malloc((size_t)(n + 1) * sizeof *symbols);
    spm_heap heap = {0};
    int n_symbols = 0;
    tm_status status = TM_OK;
    if (!symbols) return tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    for (int offset = 0; offset < n;) {
        int length = TM_MIN(tm_utf8_sequence_length((uint8_t)text[offset]), n - offset);
        symbols[n_symbols] = (spm_symbol){n_symbols - 1, n_symbols + 1, offset, length};
        n_symbols++;
        offset += length;
    }
    if (n_symbols) symbols[n_symbols - 1].next = -1;
    bool ok = true;
    for (int i = 1; i < n_symbols && ok; i++) ok = spm_try_bigram(t, text, symbols, i - 1, i, &heap);
    while (ok && heap.n > 0) {
        spm_bigram bigram = heap_pop(&heap);
        spm_symbol *left = &symbols[bigram.left], *right = &symbols[bigram.right];
        if (left->length == 0 || right->length == 0 || left->length + right->length != bigram.length) continue;
        left->length += right->length;
        right->length = 0;
        left->next = right->next;
        if (right->next >= 0) symbols[right->next].prev = bigram.left;
        ok = spm_try_bigram(t, text, symbols, left->prev, bigram.left, &heap) &&
             spm_try_bigram(t, text, symbols, bigram.left, left->next, &heap);
    }
    if (!ok) status = tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    for (int i = 0; !status && n_symbols && i >= 0; i = symbols[i].next) {
        int32_t id = find_piece(t, text + symbols[i].offset, symbols[i].length);
        if (id >= 0) {
            push_id(b, id);
            continue;
        }
        for (int k = 0; k < symbols[i].length; k++) { /* byte fallback */
            int32_t byte_id = t->byte_token[(uint8_t)text[symbols[i].offset + k]];
            if (byte_id >= 0) push_id(b, byte_id);
            else if (t->unknown >= 0) push_id(b, t->unknown);
        }
    }
    free(symbols);
    free(heap.items);
    return status;
}

/* ---- byte-level BPE ---------------------------------------------------------------------- */

/* BPE of one pre-tokenized word (raw bytes). */
static tm_status bpe_word(const tm_tokenizer *t, const char *word, int n, id_buffer *b, tm_error_t *error) {
    if (t->pre == PRE_LLAMA3) { /* llama3's ignore_merges: a word that is a piece stays whole */
        char mapped[4 * 256];
        int length = 0;
        for (int i = 0; i < n && n <= 256; i++) length += tm_utf8_encode(t->byte_to_code_point[(uint8_t)word[i]], mapped + length);
        int32_t id = n <= 256 ? find_piece(t, mapped, length) : -1;
        if (id >= 0) {
            push_id(b, id);
            return TM_OK;
        }
    }
    int32_t stack_symbols[256];
    int32_t *symbols = n <= 256 ? stack_symbols : malloc((size_t)n * sizeof *symbols);
    if (!symbols) return tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    int count = 0;
    for (int i = 0; i < n; i++) symbols[count++] = t->byte_token[(uint8_t)word[i]];
    for (;;) {
        int best = -1;
        const merge_slot *best_merge = NULL;
        for (int i = 0; i + 1 < count; i++) {
            if (symbols[i] < 0 || symbols[i + 1] < 0) continue;
            const merge_slot *m = find_merge(t, symbols[i], symbols[i + 1]);
            if (m && (!best_merge || m->rank < best_merge->rank)) {
                best = i;
                best_merge = m;
            }
        }
        if (!best_merge) break;
        symbols[best] = best_merge->result;
        memmove(symbols + best + 1, symbols + best + 2, (size_t)(count - best - 2) * sizeof *symbols);
        count--;
    }
    for (int i = 0; i < count; i++) {
        if (symbols[i] >= 0) push_id(b, symbols[i]);
        else if (t->unknown >= 0) push_id(b, t->unknown);
    }
    if (symbols != stack_symbols) free(symbols);
    return TM_OK;
}

/* Code points of a fragment with their byte offsets; invalid bytes decode as U+FFFD. */
typedef struct code_points {
    uint32_t *cp;
    int *offset; /* n + 1 entries: offset[n] = byte length */
    int n;
} code_points;

static bool is_letter(uint32_t c) { return tm_unicode_flags(c) & TM_UNICODE_LETTER; }
static bool is_number(uint32_t c) { return tm_unicode_flags(c) & TM_UNICODE_NUMBER; }
static bool is_space(uint32_t c) { return tm_unicode_flags(c) & TM_UNICODE_WHITESPACE; }
static bool is_other(uint32_t c) { return !(tm_unicode_flags(c) & (TM_UNICODE_LETTER | TM_UNICODE_NUMBER | TM_UNICODE_WHITESPACE)); }
static uint32_t lower_ascii(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's 't 're 've 'm 'll 'd at i (case-insensitively when fold): the match length, or 0. */
static int contraction(const code_points *p, int i, bool fold) {
    if (p->cp[i] != '\'' || i + 1 >= p->n) return 0;
    uint32_t a = fold ? lower_ascii(p->cp[i + 1]) : p->cp[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= p->n) return 0;
    uint32_t b = fold ? lower_ascii(p->cp[i + 2]) : p->cp[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S) then \s+: a whitespace run, leaving its last space to the next word when one follows. */
static int whitespace_run(const code_points *p, int i) {
    int k = i;
    while (k < p->n && is_space(p->cp[k])) k++;
    if (k == i) return 0;
    if (k < p->n && k - 1 > i) return k - 1 - i;
    return k - i;
}

/* Length in code points of the llama3 pre-tokenizer's match at i (see tokenizer.h). */
static int llama3_match(const code_points *p, int i) {
    const uint32_t *c = p->cp;
    int n = p->n, k;
    if ((k = contraction(p, i, true))) return k;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    k = i;
    if (!is_letter(c[k]) && c[k] != '\r' && c[k] != '\n' && !is_number(c[k]) && k + 1 < n && is_letter(c[k + 1])) k++;
    if (is_letter(c[k])) {
        while (k < n && is_letter(c[k])) k++;
        return k - i;
    }
    /* \p{N}{1,3} */
    if (is_number(c[i])) {
        k = i;
        while (k < n && k - i < 3 && is_number(c[k])) k++;
        return k - i;
    }
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    k = i;
    if (c[k] == ' ' && k + 1 < n && is_other(c[k + 1])) k++;
    if (is_other(c[k])) {
        while (k < n && is_other(c[k])) k++;
        while (k < n && (c[k] == '\r' || c[k] == '\n')) k++;
        return k - i;
    }
    /* \s*[\r\n]+ : through the last newline of the whitespace run */
    int last_newline = -1;
    for (k = i; k < n && is_space(c[k]); k++)
        if (c[k] == '\r' || c[k] == '\n') last_newline = k;
    if (last_newline >= 0) return last_newline + 1 - i;
    if ((k = whitespace_run(p, i))) return k;
    return 1;
}

/* GPT-2's pre-tokenizer match at i. */
static int gpt2_match(const code_points *p, int i) {
    const uint32_t *c = p->cp;
    int n = p->n, k;
    if ((k = contraction(p, i, false))) return k;
    int start = (c[i] == ' ' && i + 1 < n) ? i + 1 : i;
    if (is_letter(c[start])) {
        for (k = start; k < n && is_letter(c[k]);) k++;
        return k - i;
    }
    if (is_number(c[start])) {
        for (k = start; k < n && is_number(c[k]);) k++;
        return k - i;
    }
    if (is_other(c[start])) {
        for (k = start; k < n && is_other(c[k]);) k++;
        return k - i;
    }
    if ((k = whitespace_run(p, i))) return k;
    return 1;
}

static tm_status bpe_fragment(const tm_tokenizer *t, const char *text, int n, id_buffer *b, tm_error_t *error) {
    code_points p = {malloc((size_t)(n + 1) * sizeof(uint32_t)), malloc((size_t)(n + 1) * sizeof(int)), 0};
    tm_status status = TM_OK;
    if (!p.cp || !p.offset) status = tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    for (int offset = 0; !status && offset < n;) {
        int length;
        p.offset[p.n] = offset;
        p.cp[p.n++] = tm_utf8_decode(text + offset, (size_t)(n - offset), &length);
        offset += length;
    }
    if (p.offset) p.offset[p.n] = n;
    for (int i = 0; !status && i < p.n;) {
        int length;
        if (t->pre == PRE_SMOLLM && is_number(p.cp[i])) length = 1; /* every digit alone */
        else if (t->pre == PRE_LLAMA3) length = llama3_match(&p, i);
        else {
            /* GPT-2's regex, run on the text between digits for smollm */
            code_points part = p;
            if (t->pre == PRE_SMOLLM) {
                int end = i;
                while (end < p.n && !is_number(p.cp[end])) end++;
                part.n = end;
            }
            length = gpt2_match(&part, i);
        }
        status = bpe_word(t, text + p.offset[i], p.offset[i + length] - p.offset[i], b, error);
        i += length;
    }
    free(p.cp);
    free(p.offset);
    return status;
}

/* ---- encode / decode --------------------------------------------------------------------- */

/* The special token starting at text[i], longest first; -1 when none. */
static int32_t special_at(const tm_tokenizer *t, const char *text, size_t n, size_t i) {
    for (int k = 0; k < t->n_specials; k++) {
        const piece *p = &t->pieces[t->specials[k]];
        if ((size_t)p->length <= n - i && p->text[0] == text[i] && !memcmp(p->text, text + i, (size_t)p->length))
            return t->specials[k];
    }
    return -1;
}

static tm_status encode_fragment(const tm_tokenizer *t, const char *text, size_t n, bool after_special, id_buffer *b,
                                 tm_error_t *error) {
    if (n > (size_t)INT32_MAX / 4) return tm_error_set(error, TM_ERR_INVALID_ARG, "tokenizer: text of %zu bytes is too long", n);
    if (!t->spm) return bpe_fragment(t, text, (int)n, b, error);
    /* escape: optional leading space, then every ' ' as U+2581 (3 bytes) */
    char *escaped = malloc(3 * n + 4);
    if (!escaped) return tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    int length = 0;
    if (t->add_space_prefix && after_special) length += tm_utf8_encode(0x2581, escaped);
    for (size_t i = 0; i < n; i++) {
        if (text[i] == ' ') length += tm_utf8_encode(0x2581, escaped + length);
        else escaped[length++] = text[i];
    }
    tm_status status = spm_tokenize(t, escaped, length, b, error);
    free(escaped);
    return status;
}

tm_status tm_tokenizer_encode(const tm_tokenizer *t, const char *text, size_t n, bool add_bos, bool parse_special,
                              int32_t **ids, int *n_ids, tm_error_t *error) {
    id_buffer b = {0};
    *ids = NULL;
    *n_ids = 0;
    if (add_bos && tm_tokenizer_adds_bos(t)) push_id(&b, t->bos);
    bool after_special = true;
    size_t start = 0;
    tm_status status = TM_OK;
    for (size_t i = 0; i <= n && !status; i++) {
        int32_t special = (parse_special && i < n && t->n_specials) ? special_at(t, text, n, i) : -1;
        if (special < 0 && i < n) continue;
        if (i > start) {
            status = encode_fragment(t, text + start, i - start, after_special, &b, error);
            after_special = false;
        }
        if (special >= 0) {
            push_id(&b, special);
            after_special = true;
            i += (size_t)t->pieces[special].length - 1;
            start = i + 1;
        }
    }
    if (!status && b.failed) status = tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory");
    if (status) {
        free(b.ids);
        return status;
    }
    *ids = b.ids;
    *n_ids = b.n;
    return TM_OK;
}

int tm_tokenizer_token_text(const tm_tokenizer *t, int32_t id, bool render_special, char *out, int capacity) {
    if (id < 0 || id >= t->n_vocab) return 0;
    const piece *p = &t->pieces[id];
    char buffer[4096 * 2];
    int length = 0;
    if (p->type == TOKEN_CONTROL || p->type == TOKEN_UNUSED) {
        if (!render_special) return 0;
        memcpy(buffer, p->text, (size_t)p->length);
        length = p->length;
    } else if (t->spm && p->type == TOKEN_BYTE && p->length == 6) {
        buffer[length++] = (char)strtol(p->text + 3, NULL, 16);
    } else if (t->spm) {
        for (int i = 0; i < p->length;) {
            if (i + 3 <= p->length && !memcmp(p->text + i, "\xe2\x96\x81", 3)) {
                buffer[length++] = ' ';
                i += 3;
            } else {
                buffer[length++] = p->text[i++];
            }
        }
    } else if (p->type == TOKEN_USER_DEFINED) {
        memcpy(buffer, p->text, (size_t)p->length);
        length = p->length;
    } else {
        for (int i = 0; i < p->length;) {
            int k;
            uint32_t cp = tm_utf8_decode(p->text + i, (size_t)(p->length - i), &k);
            int byte = cp < 512 ? t->code_point_to_byte[cp] : -1;
            if (byte >= 0) {
                buffer[length++] = (char)byte;
            } else {
                memcpy(buffer + length, p->text + i, (size_t)k);
                length += k;
            }
            i += k;
        }
    }
    if (out && capacity > 0) memcpy(out, buffer, (size_t)TM_MIN(length, capacity));
    return length;
}

tm_status tm_tokenizer_decode(const tm_tokenizer *t, const int32_t *ids, int n_ids, bool render_special, char **text,
                              size_t *length, tm_error_t *error) {
    size_t capacity = 64, n = 0;
    char *out = malloc(capacity);
    bool first_text = true;
    for (int i = 0; out && i < n_ids; i++) {
        char piece_text[4096 * 2];
        int k = tm_tokenizer_token_text(t, ids[i], render_special, piece_text, sizeof piece_text);
        int skip = 0;
        if (k > 0 && first_text && t->add_space_prefix && t->pieces[ids[i]].type != TOKEN_CONTROL) {
            if (piece_text[0] == ' ') skip = 1;
            first_text = false;
        }
        while (n + (size_t)k + 1 > capacity) {
            char *grown = realloc(out, capacity * 2);
            if (!grown) {
                free(out);
                out = NULL;
                break;
            }
            out = grown;
            capacity *= 2;
        }
        if (!out) break;
        memcpy(out + n, piece_text + skip, (size_t)(k - skip));
        n += (size_t)(k - skip);
    }
    if (!out) return tm_error_set(error, TM_ERR_NO_MEMORY, "tokenizer: out of memory decoding");
    out[n] = 0;
    *text = out;
    *length = n;
    return TM_OK;
}

tm_status tm_tokenizer_apply_chat(const tm_tokenizer *t, const char *system, const char *user, char **prompt,
                                  tm_error_t *error) {
    size_t size = strlen(user) + (system ? strlen(system) : 0) + (t->default_system ? strlen(t->default_system) : 0) + 256;
    char *out = malloc(size);
    if (!out) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory");
    switch (t->chat) {
    case TM_CHAT_CHATML:
        if (!system) system = t->default_system;
        if (system)
            snprintf(out, size, "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
                     system, user);
        else
            snprintf(out, size, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
        break;
    case TM_CHAT_LLAMA3:
        /* <|begin_of_text|> is the BOS the encoder adds */
        if (system)
            snprintf(out, size,
                     "<|start_header_id|>system<|end_header_id|>\n\n%s<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                     system, user);
        else
            snprintf(out, size,
                     "<|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     user);
        break;
    case TM_CHAT_LLAMA2:
        if (system) snprintf(out, size, "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]", system, user);
        else snprintf(out, size, "[INST] %s [/INST]", user);
        break;
    default:
        free(out);
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "the model has no chat template TensorMesh recognises "
                                                       "(chatml, llama3, llama2)");
    }
    *prompt = out;
    return TM_OK;
}
