/*
 * kv_cache.h - the paged key/value cache.
 *
 * A pool of fixed-size pages (default 4 KiB) holds the keys and values of every sequence. Each
 * (sequence, layer) pair is a stream: a logical array of token rows, row = [K of every kv head]
 * [V of every kv head]; the stream's page table maps it onto pages. When a row fits in a page,
 * a page holds page_size / row_bytes whole rows; when it does not, a row spans
 * ceil(row_bytes / page_size) pages, and the page size must be a multiple of one head's vector,
 * so no head vector ever straddles two pages. Attention reads through tm_kv_key/tm_kv_value,
 * never assuming contiguous KV. The 8-bit type (TM_KV_Q8) keeps each head vector's values as int8
 * in the same geometry (one byte an element) and its scale beside the page: a page has one float
 * slot per head_dim bytes, the vector at byte offset o of page p using slot o / head_dim of page p
 * (tm_kv_key_scale / tm_kv_value_scale); a token costs (head_dim + 4) / (2 head_dim) of its f16
 * bytes: 0.516 at head_dim 128 (the Llama models), 0.531 at 64 (SmolLM2).
 *
 * Guarantees: tm_kv_reserve either gives a sequence room for the requested tokens in every
 * layer or changes nothing and returns TM_ERR_NO_MEMORY (the scheduler's "cache full" signal);
 * pages are taken lowest id first (the pages in use stay packed at the pool's start); freeing
 * returns every page; tm_kv_sanity checks that every page is free exactly once or owned
 * by exactly one stream slot, and that the counts agree. Not thread-safe: one owner (the
 * scheduler) changes it; the forward pass only reads page tables and writes rows.
 */
#ifndef TM_KV_CACHE_H
#define TM_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define TM_KV_DEFAULT_PAGE_SIZE 4096

typedef enum tm_kv_type {
    TM_KV_F16 = 0, /* default, as llama.cpp */
    TM_KV_F32 = 1, /* exact: for reference comparisons */
    TM_KV_Q8 = 2,  /* 8-bit: q = round(x / d), d = max |x| / 127 per head vector (tm_kv_store_vector) */
} tm_kv_type;

typedef struct tm_kv_layout {
    int n_layer;
    int n_head_kv;
    int head_dim;
    tm_kv_type type;
    uint32_t page_size;     /* bytes */
} tm_kv_layout;

typedef struct tm_kv_cache tm_kv_cache;

/* n_pages pages of layout.page_size; storage: allocate host memory for them (the CPU backend; a
 * device backend keeps its own). TM_KV_Q8 needs a page size that is a multiple of head_dim. */
tm_status tm_kv_create(const tm_kv_layout *layout, int64_t n_pages, int max_sequences, bool host_storage,
                       tm_kv_cache **out, tm_error_t *error);
void tm_kv_free(tm_kv_cache *kv);

/* Sizing helpers. The row's bytes (the page geometry's), and the bytes of the scales a page keeps
 * beside it (TM_KV_Q8: page_size / head_dim floats; 0 for the other types). */
uint64_t tm_kv_row_bytes(const tm_kv_layout *layout);
uint64_t tm_kv_scale_bytes_per_page(const tm_kv_layout *layout);
/* Bytes one position of one stream holds: its row and, TM_KV_Q8, the key's and value's scale of each kv head. */
uint64_t tm_kv_position_bytes(const tm_kv_layout *layout);
/* Pages one stream needs to hold n_tokens. */
int64_t tm_kv_pages_for_tokens(const tm_kv_layout *layout, int64_t n_tokens);

/* A free sequence slot (its length 0), or -1 when all max_sequences are in use. */
int tm_kv_seq_new(tm_kv_cache *kv);
/* Grow the sequence's capacity to n_tokens in every layer; TM_ERR_NO_MEMORY (nothing changed)
 * when the free pages do not suffice. */
tm_status tm_kv_reserve(tm_kv_cache *kv, int seq, int64_t n_tokens);
/* Shrink to n_tokens (returning whole pages no longer needed). */
void tm_kv_truncate(tm_kv_cache *kv, int seq, int64_t n_tokens);
/* Return every page of the sequence and its slot. */
void tm_kv_seq_free(tm_kv_cache *kv, int seq);
int64_t tm_kv_seq_capacity(const tm_kv_cache *kv, int seq);
bool tm_kv_seq_active(const tm_kv_cache *kv, int seq);

/* Pointer to the key (value) vector of kv head `head` of token `token` in layer `layer`:
 * head_dim elements of the layout's type. The token must be < the sequence's capacity. */
void *tm_kv_key(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head);
void *tm_kv_value(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head);
/* TM_KV_Q8 with host storage: the scale of that key (value) vector; NULL for the other types. */
float *tm_kv_key_scale(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head);
float *tm_kv_value_scale(const tm_kv_cache *kv, int seq, int layer, int64_t token, int head);

/* The page table of stream (seq, layer): n_pages page ids in stream order (for device mirrors). */
const int32_t *tm_kv_page_table(const tm_kv_cache *kv, int seq, int layer, int64_t *n_pages);

/* For a device mirror of the page tables: how many leading entries of each of the sequence's
 * tables are the same as at the previous call for this sequence (0 at the first call after
 * tm_kv_seq_new). Tables only grow at the end (reserve) or shrink from it (truncate), so the
 * mirror re-copies entries [returned, n_pages). One mirror per cache: the call resets the mark. */
int64_t tm_kv_seq_take_unchanged(tm_kv_cache *kv, int seq);

typedef struct tm_kv_stats {
    int64_t pages_total, pages_free, pages_used;
    uint64_t page_size;
    uint64_t bytes_used;      /* bytes of rows actually holding tokens (capacity), with their q8 scales */
    uint64_t bytes_allocated; /* pages in use x (page size + the page's scale bytes) */
    int sequences_active;
    int max_sequences;
} tm_kv_stats;
void tm_kv_get_stats(const tm_kv_cache *kv, tm_kv_stats *stats);
const tm_kv_layout *tm_kv_get_layout(const tm_kv_cache *kv);
uint8_t *tm_kv_storage(const tm_kv_cache *kv);
/* TM_KV_Q8 with host storage: every page's scale slots, page after page (page_size / head_dim
 * floats a page: the slot of the vector at byte offset o of the storage is o / head_dim, the order
 * kernels/cuda's tm_cuda_kv reads them in); NULL otherwise. */
float *tm_kv_scale_storage(const tm_kv_cache *kv);

/* One head vector of n floats into the cache's encoding at dst: f32 copied, f16 rounded, TM_KV_Q8
 * q = round(x / d) (nearest, ties to even), d = max |x| / 127 (a float, into *scale; 0 and all-zero
 * values for an all-zero vector). The one definition of the 8-bit rounding: the CPU backend stores
 * through it, the CUDA append kernels match it bit for bit (tests/gpu). An f16 scale was tried:
 * rounded from the float32 activations here and from the float64 ones of tests/python's reference
 * it lands on different f16 values near their rounding boundaries and moves a whole vector's
 * rounding (SmolLM2 logits 1.6-2.1e-2 from the emulation, against 0.9e-6-1.1e-3 with the float):
 * the float costs 2 bytes a vector more and keeps the cache checkable against an independent
 * reference. */
void tm_kv_store_vector(void *dst, float *scale, const float *src, int n, tm_kv_type type);

/* Check every invariant; on failure write what is wrong into message and return false. O(pages). */
bool tm_kv_sanity(const tm_kv_cache *kv, char *message, size_t message_size);

#endif /* TM_KV_CACHE_H */
