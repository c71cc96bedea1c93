/*
 * unicode.h - the little Unicode the tokenizer needs: UTF-8 decoding that never reads past the
 * end and maps invalid bytes to U+FFFD (consuming one byte), encoding, and the categories the
 * pre-tokenizers test (letter, number, mark, White_Space).
 */
#ifndef TM_UNICODE_H
#define TM_UNICODE_H

#include <stddef.h>
#include <stdint.h>

typedef struct tm_unicode_range {
    uint32_t first, last;
    uint8_t flags;
} tm_unicode_range;

enum { TM_UNICODE_LETTER = 1, TM_UNICODE_NUMBER = 2, TM_UNICODE_WHITESPACE = 4, TM_UNICODE_MARK = 8 };

extern const tm_unicode_range tm_unicode_ranges[];
extern const int tm_unicode_range_count;

/* Decode the code point at s[0..n); *length gets the bytes consumed (>= 1 when n > 0).
 * Invalid or truncated sequences give 0xFFFD with *length = 1. */
uint32_t tm_utf8_decode(const char *s, size_t n, int *length);
/* Encode into out (4 bytes room); returns the byte count. */
int tm_utf8_encode(uint32_t code_point, char *out);
/* Length of the UTF-8 sequence a lead byte starts (1 for invalid bytes). */
int tm_utf8_sequence_length(uint8_t lead);
uint8_t tm_unicode_flags(uint32_t code_point);

#endif /* TM_UNICODE_H */
