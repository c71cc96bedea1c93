/*
 * backend_cuda.c - the CUDA backend: the llama forward pass on one GPU, composed of the kernels
 * of kernels/cuda (C-linkage launchers), behind the same interface as the CPU backend.
 *
 * DESIGN: weights are uploaded once into one device allocation (the weight arena), tensor by
 * tensor; the KV pool (pages x page size) lives on the device while the page bookkeeping stays
 * in kv_cache.c on the host: each forward copies the batch's page tables (per layer) to the
 * device. This first version runs every matrix product as one GEMV per token with float
 * activations (the correctness baseline; batched GEMM, fused ops and CUDA graphs come with the
 * speed work), and returns logits to the host, where the engine samples.
 * Guarantees: see backend.h; every CUDA call is checked and a failure becomes a status whose
 * message names the call; an allocation that does not fit is TM_ERR_NO_MEMORY naming the bytes.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "kernels.h"

#define CHECK_CUDA(call)                                                                                             \
    do {                                                                                                             \
        cudaError_t cuda_status_ = (call);                                                                           \
        if (cuda_status_ != cudaSuccess)                                                                             \
            return tm_error_set(error, cuda_status_ == cudaErrorMemoryAllocation ? TM_ERR_NO_MEMORY : TM_ERR_INTERNAL, \
                                "CUDA: %s failed: %s (%s:%d)", #call, cudaGetErrorString(cuda_status_), __FILE__,     \
                                __LINE__);                                                                           \
    } while (0)
#define CHECK_KERNEL(call)                                                                                           \
    do {                                                                                                             \
        if ((call) != 0)                                                                                             \
            return tm_error_set(error, TM_ERR_INTERNAL, "CUDA: %s failed (%s:%d)", #call, __FILE__, __LINE__);      \
    } while (0)

typedef struct device_weight {
    const void *data; /* in the weight arena */
    int type;
    int64_t rows, cols;
} device_weight;

typedef struct cuda_backend {
    const tm_model *model;
    int device;
    uint8_t *arena;            /* all weights */
    uint64_t arena_bytes;
    device_weight token_embd, output_norm, output;
    device_weight *layers;     /* n_layer x 9 in tm_layer_weights order */
    void *kv_pool;             /* pages x page size */
    int64_t kv_pool_pages;
    int capacity;              /* tokens the run buffers hold */
    float *x, *xb, *q, *k, *v, *att, *delta, *gate, *up, *logits;
    int32_t *tokens, *positions, *n_keys, *page_tables;
    int64_t *page_offsets;
    int64_t page_table_capacity;
    int32_t *host_page_tables;
    int64_t *host_offsets;
    int32_t *host_n_keys;
} cuda_backend;

static void release(cuda_backend *b) {
    cudaFree(b->arena), cudaFree(b->kv_pool);
    cudaFree(b->x), cudaFree(b->xb), cudaFree(b->q), cudaFree(b->k), cudaFree(b->v), cudaFree(b->att);
    cudaFree(b->delta), cudaFree(b->gate), cudaFree(b->up), cudaFree(b->logits);
    cudaFree(b->tokens), cudaFree(b->positions), cudaFree(b->n_keys), cudaFree(b->page_tables), cudaFree(b->page_offsets);
    free(b->layers), free(b->host_page_tables), free(b->host_offsets), free(b->host_n_keys);
    free(b);
}

static uint64_t weight_bytes(const tm_weight *w) {
    uint64_t row_bytes = 0;
    tm_type_row_bytes(w->type, (uint64_t)w->cols, &row_bytes);
    return row_bytes * (uint64_t)w->rows;
}

/* Copy one weight into the arena at *offset (256-byte aligned). */
static tm_status upload(cuda_backend *b, const tm_weight *w, device_weight *out, uint64_t *offset, tm_error_t *error) {
    uint64_t bytes = weight_bytes(w);
    CHECK_CUDA(cudaMemcpy(b->arena + *offset, w->data, bytes, cudaMemcpyHostToDevice));
    *out = (device_weight){b->arena + *offset, (int)w->type, w->rows, w->cols};
    *offset += (bytes + 255) / 256 * 256;
    return TM_OK;
}

static tm_status gemv_tokens(const device_weight *w, const float *x, int n_tokens, float *y, tm_error_t *error) {
    for (int t = 0; t < n_tokens; t++)
        CHECK_KERNEL(tm_cuda_gemv(w->type, w->data, w->rows, w->cols, x + (int64_t)t * w->cols, y + (int64_t)t * w->rows, NULL));
    return TM_OK;
}

static tm_status ensure_buffers(cuda_backend *b, const tm_batch *batch, tm_kv_cache *kv, tm_error_t *error) {
    const tm_model_config *c = &b->model->config;
    if (!b->kv_pool) {
        tm_kv_stats stats;
        tm_kv_get_stats(kv, &stats);
        b->kv_pool_pages = stats.pages_total;
        CHECK_CUDA(cudaMalloc(&b->kv_pool, (size_t)stats.pages_total * stats.page_size));
    }
    if (batch->n_tokens > b->capacity) {
        size_t T = (size_t)batch->n_tokens, q_dim = (size_t)c->n_head * c->head_dim, kv_dim = (size_t)c->n_head_kv * c->head_dim;
        cudaFree(b->x), cudaFree(b->xb), cudaFree(b->q), cudaFree(b->k), cudaFree(b->v), cudaFree(b->att);
        cudaFree(b->delta), cudaFree(b->gate), cudaFree(b->up), cudaFree(b->logits);
        cudaFree(b->tokens), cudaFree(b->positions), cudaFree(b->n_keys), cudaFree(b->page_offsets);
        b->capacity = 0;
        CHECK_CUDA(cudaMalloc((void **)&b->x, T * c->n_embd * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->xb, T * c->n_embd * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->q, T * q_dim * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->k, T * kv_dim * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->v, T * kv_dim * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->att, T * q_dim * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->delta, T * c->n_embd * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->gate, T * c->n_ff * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->up, T * c->n_ff * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->logits, T * c->n_vocab * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->tokens, T * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->positions, T * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->n_keys, T * 4));
        CHECK_CUDA(cudaMalloc((void **)&b->page_offsets, T * 8));
        free(b->host_offsets), free(b->host_n_keys);
        b->host_offsets = malloc(T * 8);
        b->host_n_keys = malloc(T * 4);
        if (!b->host_offsets || !b->host_n_keys) return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
        b->capacity = batch->n_tokens;
    }
    return TM_OK;
}

/* Concatenate the page tables of every batch token's stream for `layer` and copy them over. */
static tm_status upload_page_tables(cuda_backend *b, const tm_batch *batch, const tm_kv_cache *kv, int layer, tm_error_t *error) {
    int64_t total = 0;
    for (int t = 0; t < batch->n_tokens; t++) {
        int64_t n;
        tm_kv_page_table(kv, batch->seq[t], layer, &n);
        total += n;
    }
    if (total > b->page_table_capacity) {
        cudaFree(b->page_tables);
        free(b->host_page_tables);
        b->page_table_capacity = 0;
        b->host_page_tables = malloc((size_t)total * 4);
        if (!b->host_page_tables) return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
        CHECK_CUDA(cudaMalloc((void **)&b->page_tables, (size_t)total * 4));
        b->page_table_capacity = total;
    }
    int64_t used = 0;
    for (int t = 0; t < batch->n_tokens; t++) {
        int64_t n;
        const int32_t *table = tm_kv_page_table(kv, batch->seq[t], layer, &n);
        b->host_offsets[t] = used;
        memcpy(b->host_page_tables + used, table, (size_t)n * 4);
        used += n;
    }
    CHECK_CUDA(cudaMemcpy(b->page_tables, b->host_page_tables, (size_t)used * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(b->page_offsets, b->host_offsets, (size_t)batch->n_tokens * 8, cudaMemcpyHostToDevice));
    return TM_OK;
}

static tm_status forward(tm_backend *backend, const tm_batch *batch, tm_kv_cache *kv, float *logits, tm_error_t *error) {
    cuda_backend *b = backend->context;
    const tm_model_config *c = &b->model->config;
    const int T = batch->n_tokens, D = c->n_embd;
    const tm_kv_layout *layout = tm_kv_get_layout(kv);
    const int kv_f32 = layout->type == TM_KV_F32;
    tm_status s;
    for (int t = 0; t < T; t++)
        if (batch->tokens[t] < 0 || batch->tokens[t] >= c->n_vocab || batch->positions[t] >= tm_kv_seq_capacity(kv, batch->seq[t]))
            return tm_error_set(error, TM_ERR_INVALID_ARG, "forward: token %d (id %d, position %d) is out of range", t,
                                batch->tokens[t], batch->positions[t]);
    if ((s = ensure_buffers(b, batch, kv, error))) return s;
    CHECK_CUDA(cudaSetDevice(b->device));
    for (int t = 0; t < T; t++) b->host_n_keys[t] = batch->positions[t] + 1;
    CHECK_CUDA(cudaMemcpy(b->tokens, batch->tokens, (size_t)T * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(b->positions, batch->positions, (size_t)T * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(b->n_keys, b->host_n_keys, (size_t)T * 4, cudaMemcpyHostToDevice));

    CHECK_KERNEL(tm_cuda_embed(b->token_embd.type, b->token_embd.data, D, b->tokens, T, b->x, NULL));
    for (int l = 0; l < c->n_layer; l++) {
        const device_weight *w = &b->layers[(size_t)l * 9];
        const float *attn_norm = w[0].data, *ffn_norm = w[5].data;
        if ((s = upload_page_tables(b, batch, kv, l, error))) return s;
        /* attention block */
        CHECK_KERNEL(tm_cuda_rmsnorm(b->xb, b->x, attn_norm, T, D, c->rms_norm_eps, NULL));
        if ((s = gemv_tokens(&w[1], b->xb, T, b->q, error)) || (s = gemv_tokens(&w[2], b->xb, T, b->k, error)) ||
            (s = gemv_tokens(&w[3], b->xb, T, b->v, error)))
            return s;
        CHECK_KERNEL(tm_cuda_rope(b->q, T, c->n_head, c->head_dim, c->n_rot, c->rope_freq_base, c->rope_freq_scale, NULL,
                                  b->positions, NULL));
        CHECK_KERNEL(tm_cuda_rope(b->k, T, c->n_head_kv, c->head_dim, c->n_rot, c->rope_freq_base, c->rope_freq_scale, NULL,
                                  b->positions, NULL));
        CHECK_KERNEL(tm_cuda_kv_append(b->k, b->v, T, c->n_head_kv, c->head_dim, b->kv_pool, kv_f32, layout->page_size,
                                       b->page_tables, b->page_offsets, b->positions, NULL));
        CHECK_KERNEL(tm_cuda_paged_attention(b->q, b->att, T, c->n_head, c->n_head_kv, c->head_dim, b->kv_pool, kv_f32,
                                             layout->page_size, b->page_tables, b->page_offsets, b->n_keys, NULL));
        if ((s = gemv_tokens(&w[4], b->att, T, b->delta, error))) return s;
        CHECK_KERNEL(tm_cuda_add(b->x, b->delta, (int64_t)T * D, NULL));
        /* feed-forward block */
        CHECK_KERNEL(tm_cuda_rmsnorm(b->xb, b->x, ffn_norm, T, D, c->rms_norm_eps, NULL));
        if ((s = gemv_tokens(&w[6], b->xb, T, b->gate, error)) || (s = gemv_tokens(&w[7], b->xb, T, b->up, error))) return s;
        CHECK_KERNEL(tm_cuda_swiglu(b->gate, b->up, (int64_t)T * c->n_ff, NULL));
        if ((s = gemv_tokens(&w[8], b->gate, T, b->delta, error))) return s;
        CHECK_KERNEL(tm_cuda_add(b->x, b->delta, (int64_t)T * D, NULL));
    }
    /* final norm and LM head for the tokens that want logits */
    int n_out = 0;
    CHECK_KERNEL(tm_cuda_rmsnorm(b->xb, b->x, b->output_norm.data, T, D, c->rms_norm_eps, NULL));
    for (int t = 0; t < T; t++)
        if (batch->want_logits[t])
            CHECK_KERNEL(tm_cuda_gemv(b->output.type, b->output.data, b->output.rows, b->output.cols, b->xb + (int64_t)t * D,
                                      b->logits + (int64_t)n_out++ * c->n_vocab, NULL));
    if (n_out) CHECK_CUDA(cudaMemcpy(logits, b->logits, (size_t)n_out * c->n_vocab * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaDeviceSynchronize());
    return TM_OK;
}

static void backend_free(tm_backend *backend) {
    if (!backend) return;
    if (backend->context) release(backend->context);
    free(backend);
}

tm_status tm_backend_cuda_create(const tm_model *model, int device, tm_backend **out, tm_error_t *error) {
    *out = NULL;
    char name[256];
    if (!tm_cuda_device_name(name, sizeof name))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "cuda backend: no CUDA device is available");
    int count = 0;
    CHECK_CUDA(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count)
        return tm_error_set(error, TM_ERR_INVALID_ARG, "cuda backend: device %d does not exist (%d present)", device, count);
    CHECK_CUDA(cudaSetDevice(device));
    const tm_model_config *c = &model->config;
    if (model->rope_freqs)
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "cuda backend: llama3 rope frequency factors are not supported yet");
    cuda_backend *b = calloc(1, sizeof *b);
    tm_backend *backend = calloc(1, sizeof *backend);
    if (!b || !backend || !(b->layers = calloc((size_t)c->n_layer * 9, sizeof *b->layers))) {
        free(backend);
        if (b) release(b);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: out of memory");
    }
    b->model = model;
    b->device = device;
    /* the arena: every tensor, 256-byte aligned */
    uint64_t total = 0;
    const tm_weight *top[3] = {&model->token_embd, &model->output_norm, &model->output};
    for (int i = 0; i < (c->tied_embeddings ? 2 : 3); i++) total += (weight_bytes(top[i]) + 255) / 256 * 256;
    for (int l = 0; l < c->n_layer; l++) { /* tm_layer_weights is nine tm_weight fields in a row */
        const tm_weight *w = (const tm_weight *)&model->layers[l];
        for (int k = 0; k < 9; k++) total += (weight_bytes(&w[k]) + 255) / 256 * 256;
    }
    cudaError_t status = cudaMalloc((void **)&b->arena, total);
    if (status != cudaSuccess) {
        release(b);
        free(backend);
        return tm_error_set(error, TM_ERR_NO_MEMORY, "cuda backend: %llu bytes of weights do not fit on %s: %s",
                            (unsigned long long)total, name, cudaGetErrorString(status));
    }
    b->arena_bytes = total;
    uint64_t offset = 0;
    tm_status s = upload(b, &model->token_embd, &b->token_embd, &offset, error);
    if (!s) s = upload(b, &model->output_norm, &b->output_norm, &offset, error);
    if (!s && model->config.tied_embeddings) b->output = b->token_embd;
    else if (!s) s = upload(b, &model->output, &b->output, &offset, error);
    for (int l = 0; l < c->n_layer && !s; l++) {
        const tm_weight *w = (const tm_weight *)&model->layers[l];
        for (int k = 0; k < 9 && !s; k++) s = upload(b, &w[k], &b->layers[(size_t)l * 9 + k], &offset, error);
    }
    if (s) {
        release(b);
        free(backend);
        return s;
    }
    backend->name = "cuda";
    backend->context = b;
    backend->forward = forward;
    backend->free = backend_free;
    *out = backend;
    return TM_OK;
}
