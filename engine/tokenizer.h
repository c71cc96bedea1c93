/*
 * tokenizer.h - text <-> token ids from a GGUF vocabulary.
 *
 * Two families, chosen by tokenizer.ggml.model:
 *  - "llama": SentencePiece-style. Spaces become U+2581, a space is prefixed to each text
 *    fragment that starts the input or follows a special token (tokenizer.ggml.add_space_prefix,
 *    default on), adjacent pieces are merged best score first, and characters missing from the
 *    vocabulary fall back to <0xXX> byte tokens.
 *  - "gpt2": byte-level BPE with merges ranked by order, after a pre-tokenizer split chosen by
 *    tokenizer.ggml.pre: "llama-bpe" (Llama 3's regex, whole-word lookup before merging),
 *    "smollm" (every digit alone, then GPT-2's regex), anything else GPT-2's regex.
 * Special tokens (control and user-defined) are matched whole in the text when parse_special.
 *
 * Guarantees: any byte string is accepted (invalid UTF-8 included; byte-level and byte-fallback
 * vocabularies keep its bytes, so decode(encode(text)) == text for them); ids returned are
 * < n_vocab; decode never reads outside the vocabulary.
 */
#ifndef TM_TOKENIZER_H
#define TM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct tm_tokenizer tm_tokenizer;

typedef enum tm_chat_format {
    TM_CHAT_NONE = 0,
    TM_CHAT_CHATML,  /* <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen) */
    TM_CHAT_LLAMA3,  /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    TM_CHAT_LLAMA2,  /* <s>[INST] <<SYS>>...<</SYS>> ... [/INST] */
} tm_chat_format;

tm_status tm_tokenizer_load(const tm_gguf *gguf, tm_tokenizer **out, tm_error_t *error);
void tm_tokenizer_free(tm_tokenizer *tokenizer);

int tm_tokenizer_vocab_size(const tm_tokenizer *tokenizer);
int32_t tm_tokenizer_bos(const tm_tokenizer *tokenizer);
int32_t tm_tokenizer_eos(const tm_tokenizer *tokenizer);
bool tm_tokenizer_adds_bos(const tm_tokenizer *tokenizer);
/* End of generation: eos, or an end-of-turn token (<|eot_id|>, <|im_end|>, <|end_of_text|>, ...). */
bool tm_tokenizer_is_end_of_generation(const tm_tokenizer *tokenizer, int32_t id);

/* Encode n bytes of text. add_bos: prepend BOS when the vocabulary wants one. parse_special:
 * match special-token strings in the text. *ids is malloc'ed (caller frees). */
tm_status tm_tokenizer_encode(const tm_tokenizer *tokenizer, const char *text, size_t n, bool add_bos, bool parse_special,
                              int32_t **ids, int *n_ids, tm_error_t *error);

/* Bytes of one token's text into out (up to capacity); returns the full length (may exceed
 * capacity, like snprintf). render_special: control tokens give their text, else nothing. */
int tm_tokenizer_token_text(const tm_tokenizer *tokenizer, int32_t id, bool render_special, char *out, int capacity);

/* Text of a token sequence, malloc'ed and NUL-terminated; *length excludes the NUL. The space
 * SentencePiece prefixed is removed from the start. */
tm_status tm_tokenizer_decode(const tm_tokenizer *tokenizer, const int32_t *ids, int n_ids, bool render_special,
                              char **text, size_t *length, tm_error_t *error);

/* The raw string of a token as stored in the vocabulary (not NUL-terminated). */
const char *tm_tokenizer_piece(const tm_tokenizer *tokenizer, int32_t id, int *length);

/* The chat format recognised in tokenizer.chat_template (TM_CHAT_NONE when absent/unknown). */
tm_chat_format tm_tokenizer_chat_format(const tm_tokenizer *tokenizer);
/* A single-turn chat prompt: optional system text, the user's text, and the assistant header,
 * in the model's format (with its default system prompt when the template has one). */
tm_status tm_tokenizer_apply_chat(const tm_tokenizer *tokenizer, const char *system, const char *user, char **prompt,
                                  tm_error_t *error);

#endif /* TM_TOKENIZER_H */
