/*
 * kv_cache.c - the paged key/value cache (see kv_cache.h).
 *
 * DESIGN: a bitmap of free pages and, per sequence slot, one page table per layer (a growable
 * array of page ids in stream order). Reserving first counts the pages needed in every layer and
 * checks the free count, then takes them, so failure changes nothing. Pages are always taken
 * lowest id first, so the pages in use stay packed at the start of the pool whatever order
 * earlier sequences freed theirs (a stack of freed pages hands later sequences the pages of
 * whichever freed last, spread over the pool once a batch has decoded with its sequences' pages
 * interleaved). Measured (H200, 7B q4_k_m, one engine running 128 x8, then 512 x4, then
 * 2048 x8, decode tokens/s, stack / lowest first, two runs each): 128 x8 2819, 2832 / 2895, 2895;
 * 512 x4 1311, 1311 / 1427, 1419 (a fresh pool's 1430); 2048 x8 1685, 1683 / 1699, 1677.
 * Cost: reserve/truncate are O(pages moved) plus, for a take, the scan from the lowest word that
 * may hold a free page; tm_kv_key is O(1).
 */
#include "kv_cache.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct page_table {
    int32_t *pages;
    int64_t n_pages, capacity;
} page_table;

typedef struct sequence_slot {
    bool active;
    int64_t n_tokens;       /* capacity reserved, in tokens */
    page_table *layers;     /* n_layer */
    int64_t unchanged;      /* leading page-table entries unchanged since the last take (tm_kv_seq_take_unchanged) */
} sequence_slot;

struct tm_kv_cache {
    tm_kv_layout layout;
    uint64_t row_bytes;         /* bytes of one token in one layer: K and V of every kv head */
    uint64_t head_bytes;        /* bytes of one head's vector */
    int64_t rows_per_page;      /* > 0 when a row fits in a page */
    int64_t pages_per_row;      /* > 0 when it does not */
    int64_t n_pages;
    uint64_t *free_bits;        /* bit p set: page p is free */
    int64_t n_free;
    int64_t lowest_word;        /* no free page below word lowest_word of free_bits */
    uint8_t *storage;           /* n_pages * page_size host bytes, or NULL */
    float *scales;              /* TM_KV_Q8: n_pages * scales_per_page, or NULL */
    int64_t scales_per_page;    /* TM_KV_Q8: page_size / head_bytes, else 0 */
    uint64_t row_scale_bytes;   /* TM_KV_Q8: the scales of a row's 2 n_head_kv vectors, else 0 */
    int max_sequences;
    sequence_slot *sequences;
};

static uint64_t element_bytes(tm_kv_type type) { return type == TM_KV_F32 ? 4 : type == TM_KV_Q8 ? 1 : 2; }

uint64_t tm_kv_scale_bytes_per_page(const tm_kv_layout *layout) {
    if (layout->type != TM_KV_Q8 || layout->head_dim <= 0) return 0;
    return (uint64_t)(layout->page_size / (uint64_t)layout->head_dim) * sizeof(float);
}

uint64_t tm_kv_row_bytes(const tm_kv_layout *layout) {
    return 2ull * (uint64_t)layout->n_head_kv * (uint64_t)layout->head_dim * element_bytes(layout->type);
}

uint64_t tm_kv_position_bytes(const tm_kv_layout *layout) {
    return tm_kv_row_bytes(layout) + (layout->type == TM_KV_Q8 ? 2ull * (uint64_t)layout->n_head_kv * sizeof(float) : 0);
}

int64_t tm_kv_pages_for_tokens(const tm_kv_layout *layout, int64_t n_tokens) {
    uint64_t row = tm_kv_row_bytes(layout);
    if (row <= layout->page_size) {
        int64_t per_page = (int64_t)(layout->page_size / row);
        return (n_tokens + per_page - 1) / per_page;
    }
    return n_tokens * (int64_t)((row + layout->page_size - 1) / layout->page_size);
}

tm_status tm_kv_create(const tm_kv_layout *layout, int64_t n_pages, int max_sequences, bool host_storage,
                       tm_kv_cache **out, tm_error_t *error) {
    *out = NULL;
    if (layout->n_layer <= 0 || layout->n_head_kv <= 0 || layout->head_dim <= 0 || layout->page_size < 64 ||
        n_pages <= 0 || n_pages > INT32_MAX || max_sequences <= 0 || (unsigned)layout->type > TM_KV_Q8)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "kv cache: invalid layout or sizes (%lld pages of %u bytes)",
                            (long long)n_pages, layout->page_size);
    if (layout->type == TM_KV_Q8 && layout->page_size % (uint32_t)layout->head_dim)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "kv cache: the 8-bit type needs pages of whole head vectors (page size %u, head dim %d)",
                            layout->page_size, layout->head_dim);
    uint64_t head_bytes = (uint64_t)layout->head_dim * element_bytes(layout->type);
    uint64_t row = tm_kv_row_bytes(layout);
    if (row > layout->page_size && layout->page_size % head_bytes)
        return tm_error_set(error, TM_ERR_INVALID_ARG,
                            "kv cache: page size %u is smaller than a token row (%llu bytes) and not a multiple of "
                            "one head's %llu bytes", layout->page_size, (unsigned long long)row, (unsigned long long)head_bytes);
    tm_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return tm_error_set(error, TM_ERR_NO_MEMORY, "kv cache: out of memory");
    kv->layout = *layout;
    kv->row_bytes = row;
    kv->head_bytes = head_bytes;
    if (row <= layout->page_size) kv->rows_per_page = (int64_t)(layout->page_size / row);
    else kv->pages_per_row = (int64_t)((row + layout->page_size - 1) / layout->page_size);
    kv->n_pages = n_pages;
    kv->max_sequences = max_sequences;
    const int64_t words = (n_pages + 63) / 64;
    kv->free_bits = malloc((size_t)words * sizeof *kv->free_bits);
    kv->sequences = calloc((size_t)max_sequences, sizeof *kv->sequences);
    if (host_storage) kv->storage = malloc((size_t)n_pages * layout->page_size);
    kv->scales_per_page = (int64_t)(tm_kv_scale_bytes_per_page(layout) / sizeof(float));
    if (kv->scales_per_page) kv->scales = calloc((size_t)n_pages * (size_t)kv->scales_per_page, sizeof(float));
    kv->row_scale_bytes = kv->scales_per_page ? 2 * (uint64_t)layout->n_head_kv * sizeof(float) : 0;
    if (!kv->free_bits || !kv->sequences || (host_storage && !kv->storage) || (kv->scales_per_page && !kv->scales)) {
        tm_kv_free(kv);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "kv cache: out of memory for %lld pages of %u bytes",
                            (long long)n_pages, layout->page_size);
    }
    for (int64_t w = 0; w < words; w++) kv->free_bits[w] = ~0ull;
    if (n_pages % 64) kv->free_bits[words - 1] = (1ull << (n_pages % 64)) - 1; /* no pages past the end */
    kv->n_free = n_pages;
    kv->lowest_word = 0;
    *out = kv;
    return TM_OK;
}

void tm_kv_free(tm_kv_cache *kv) {
    if (!kv) return;
    for (int s = 0; kv->sequences && s < kv->max_sequences; s++) {
        for (int l = 0; kv->sequences[s].layers && l < kv->layout.n_layer; l++) free(kv->sequences[s].layers[l].pages);
        free(kv->sequences[s].layers);
    }
    free(kv->sequences);
    free(kv->free_bits);
    free(kv->storage);
    free(kv->scales);
    free(kv);
}

/* The lowest free page, taken (the caller has checked that one is free). */
static int32_t take_lowest_page(tm_kv_cache *kv) {
    while (!kv->free_bits[kv->lowest_word]) kv->lowest_word++;
    uint64_t *word = &kv->free_bits[kv->lowest_word];
    const int bit = __builtin_ctzll(*word);
    *word &= *word - 1;
    kv->n_free--;
    return (int32_t)(kv->lowest_word * 64 + bit);
}

static void give_page(tm_kv_cache *kv, int32_t page) {
    kv->free_bits[page / 64] |= 1ull << (page % 64);
    kv->n_free++;
    kv->lowest_word = TM_MIN(kv->lowest_word, (int64_t)(page / 64));
}

int tm_kv_seq_new(tm_kv_cache *kv) {
    for (int s = 0; s < kv->max_sequences; s++) {
        sequence_slot *slot = &kv->sequences[s];
        if (slot->active) continue;
        if (!slot->layers && !(slot->layers = calloc((size_t)kv->layout.n_layer, sizeof *slot->layers))) return -1;
        slot->active = true;
        slot->n_tokens = 0;
        slot->unchanged = 0;
        return s;
    }
    return -1;
}

tm_status tm_kv_reserve(tm_kv_cache *kv, int seq, int64_t n_tokens) {
    sequence_slot *slot = &kv->sequences[seq];
    if (n_tokens <= slot->n_tokens) return TM_OK;
    int64_t need = tm_kv_pages_for_tokens(&kv->layout, n_tokens);
    int64_t have = slot->layers[0].n_pages; /* every layer has the same count */
    int64_t extra = (need - have) * kv->layout.n_layer;
    if (extra > kv->n_free) return TM_ERR_NO_MEMORY;
    for (int l = 0; l < kv->layout.n_layer; l++) {
        page_table *table = &slot->layers[l];
        if (need > table->capacity) {
            int64_t capacity = TM_MAX(need, 2 * table->capacity);
            int32_t *grown = realloc(table->pages, (size_t)capacity * sizeof *grown);
            if (!grown) return TM_ERR_NO_MEMORY; /* earlier layers keep spare capacity only: consistent */
            table->pages = grown;
            table->capacity = capacity;
        }
    }
    for (int l = 0; l < kv->layout.n_layer; l++) {
        page_table *table = &slot->layers[l];
        while (table->n_pages < need) table->pages[table->n_pages++] = take_lowest_page(kv);
    }
    slot->n_tokens = n_tokens;
    return TM_OK;
}

void tm_kv_truncate(tm_kv_cache *kv, int seq, int64_t n_tokens) {
    sequence_slot *slot = &kv->sequences[seq];
    if (n_tokens >= slot->n_tokens) return;
    int64_t keep = tm_kv_pages_for_tokens(&kv->layout, n_tokens);
    for (int l = 0; l < kv->layout.n_layer; l++) {
        page_table *table = &slot->layers[l];
        while (table->n_pages > keep) give_page(kv, table->pages[--table->n_pages]);
    }
    slot->unchanged = TM_MIN(slot->unchanged, keep);
    slot->n_tokens = n_tokens;
}

void tm_kv_seq_free(tm_kv_cache *kv, int seq) {
    if (seq < 0 || seq >= kv->max_sequences || !kv->sequences[seq].active) return;
    tm_kv_truncate(kv, seq, 0);
    kv->sequences[seq].active = false;
}

int64_t tm_kv_seq_take_unchanged(tm_kv_cache *kv, int seq) {
    sequence_slot *slot = &kv->sequences[seq];
    int64_t unchanged = slot->unchanged;
    slot->unchanged = slot->layers ? slot->layers[0].n_pages : 0;
    return unchanged;
}

int64_t tm_kv_seq_capacity(const tm_kv_cache *kv, int seq) { return kv->sequences[seq].n_tokens; }
bool tm_kv_seq_active(const tm_kv_cache *kv, int seq) {
    return seq >= 0 && seq < kv->max_sequences && kv->sequences[seq].active;
}

/* The page and the offset in it of byte `offset_in_row` of token `token`'s row of the stream (seq, layer). */
static int32_t locate(const tm_kv_cache *kv, int seq, int layer, int64_t token, uint64_t offset_in_row, uint64_t *in_page) {
    const page_table *table = &kv->sequences[seq].layers[layer];
    uint64_t page_size = kv->layout.page_size;
    if (kv->rows_per_page) {
        *in_page = (uint64_t)(token % kv->rows_per_page) * kv->row_bytes + offset_in_row;
        return table->pages[token / kv->rows_per_page];
    }
    *in_page = offset_in_row % page_size;
    return table->pages[token * kv->pages_per_row + (int64_t)(offset_in_row / page_size)];
}

/* Byte address of `offset_in_row` within token `token`'s row of the stream (seq, layer). */
static uint8_t *row_address(const tm_kv_cache *kv, int seq, int layer, int64_t token, uint64_t offset_in_row) {
    uint64_t in_page;
    const int32_t page = locate(kv, seq, layer, token, offset_in_row, &in_page);
    return kv->storage + (uint64_t)page * kv->layout.page_size + in_page;
}

/* The scale slot of the head vector at `offset_in_row` (head vectors start at multiples of
 * head_bytes in their page: rows are whole head vectors, and a row spanning pages needs pages of
 * whole head vectors). */
static float *scale_address(const tm_kv_cache *kv, int seq, int layer, int64_t token, uint64_t offset_in_row) {
    if (!kv->scales) return NULL;
    uint64_t in_page;
    const int32_t page = locate(kv, seq, layer, token, offset_in_row, &in_page);
    return kv->scales + (int64_t)page * kv->scales_per_page + (int64_t)(in_page / kv->head_bytes);
}

void *tm_kv_key(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head) {
    return row_address(kv, seq, layer, token, (uint64_t)head * kv->head_bytes);
}

void *tm_kv_value(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head) {
    return row_address(kv, seq, layer, token, (uint64_t)(kv->layout.n_head_kv + head) * kv->head_bytes);
}

float *tm_kv_key_scale(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head) {
    return scale_address(kv, seq, layer, token, (uint64_t)head * kv->head_bytes);
}

float *tm_kv_value_scale(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head) {
    return scale_address(kv, seq, layer, token, (uint64_t)(kv->layout.n_head_kv + head) * kv->head_bytes);
}

const int32_t *tm_kv_page_table(const tm_kv_cache *kv, int seq, int layer, int64_t *n_pages) {
    const page_table *table = &kv->sequences[seq].layers[layer];
    *n_pages = table->n_pages;
    return table->pages;
}

void tm_kv_get_stats(const tm_kv_cache *kv, tm_kv_stats *stats) {
    memset(stats, 0, sizeof *stats);
    stats->pages_total = kv->n_pages;
    stats->pages_free = kv->n_free;
    stats->pages_used = kv->n_pages - kv->n_free;
    stats->page_size = kv->layout.page_size;
    const uint64_t scale_bytes = (uint64_t)kv->scales_per_page * sizeof(float);
    stats->bytes_allocated = (uint64_t)stats->pages_used * (kv->layout.page_size + scale_bytes);
    stats->max_sequences = kv->max_sequences;
    for (int s = 0; s < kv->max_sequences; s++)
        if (kv->sequences[s].active) {
            stats->sequences_active++;
            stats->bytes_used += (uint64_t)kv->sequences[s].n_tokens * (kv->row_bytes + kv->row_scale_bytes) * (uint64_t)kv->layout.n_layer;
        }
}

const tm_kv_layout *tm_kv_get_layout(const tm_kv_cache *kv) { return &kv->layout; }
uint8_t *tm_kv_storage(const tm_kv_cache *kv) { return kv->storage; }
float *tm_kv_scale_storage(const tm_kv_cache *kv) { return kv->scales; }

void tm_kv_store_vector(void *dst, float *scale, const float *src, int n, tm_kv_type type) {
    if (type == TM_KV_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    if (type == TM_KV_Q8) {
        float largest = 0;
        for (int i = 0; i < n; i++) largest = fmaxf(largest, fabsf(src[i]));
        const float d = largest / 127.0f;
        int8_t *q = dst;
        for (int i = 0; i < n; i++) q[i] = d > 0 ? (int8_t)lrintf(src[i] / d) : 0;
        *scale = d;
        return;
    }
    tm_f16_t *h = dst;
    for (int i = 0; i < n; i++) h[i] = tm_f32_to_f16(src[i]);
}

bool tm_kv_sanity(const tm_kv_cache *kv, char *message, size_t message_size) {
    uint8_t *owner_count = calloc((size_t)kv->n_pages, 1);
    bool ok = owner_count != NULL;
    if (!ok) snprintf(message, message_size, "out of memory checking the kv cache");
    int64_t owned = 0, free_marked = 0;
    const int64_t words = (kv->n_pages + 63) / 64;
    for (int64_t w = 0; ok && w < words; w++)
        for (uint64_t bits = kv->free_bits[w]; ok && bits; bits &= bits - 1) {
            const int64_t page = w * 64 + __builtin_ctzll(bits);
            if (page >= kv->n_pages || w < kv->lowest_word) {
                snprintf(message, message_size, "free page %lld past the pool's %lld pages or below the lowest free word %lld",
                         (long long)page, (long long)kv->n_pages, (long long)kv->lowest_word);
                ok = false;
            } else {
                owner_count[page]++;
                free_marked++;
            }
        }
    if (ok && free_marked != kv->n_free) {
        snprintf(message, message_size, "%lld pages marked free, %lld counted", (long long)free_marked, (long long)kv->n_free);
        ok = false;
    }
    for (int s = 0; ok && s < kv->max_sequences; s++) {
        const sequence_slot *slot = &kv->sequences[s];
        int64_t want = slot->active ? tm_kv_pages_for_tokens(&kv->layout, slot->n_tokens) : 0;
        for (int l = 0; ok && slot->layers && l < kv->layout.n_layer; l++) {
            const page_table *table = &slot->layers[l];
            if (table->n_pages != want || table->n_pages > table->capacity) {
                snprintf(message, message_size, "sequence %d layer %d: %lld pages for %lld tokens, expected %lld", s, l,
                         (long long)table->n_pages, (long long)slot->n_tokens, (long long)want);
                ok = false;
            }
            for (int64_t i = 0; ok && i < table->n_pages; i++) {
                int32_t page = table->pages[i];
                if (page < 0 || page >= kv->n_pages || owner_count[page]++) {
                    snprintf(message, message_size, "sequence %d layer %d slot %lld: page %d out of range or owned twice", s,
                             l, (long long)i, page);
                    ok = false;
                }
            }
            owned += table->n_pages;
        }
    }
    if (ok && owned + kv->n_free != kv->n_pages) {
        snprintf(message, message_size, "%lld owned + %lld free pages != %lld total", (long long)owned,
                 (long long)kv->n_free, (long long)kv->n_pages);
        ok = false;
    }
    free(owner_count);
    return ok;
}
