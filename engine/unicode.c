/*
 * unicode.c - UTF-8 and category look-ups (see unicode.h). Categories: binary search over the
 * generated ranges, O(log ranges); White_Space from the Unicode property list (25 code points).
 */
#include "unicode.h"

int tm_utf8_sequence_length(uint8_t lead) {
    if (lead < 0x80) return 1;
    if ((lead >> 5) == 6) return 2;
    if ((lead >> 4) == 14) return 3;
    if ((lead >> 3) == 30) return 4;
    return 1;
}

uint32_t tm_utf8_decode(const char *s, size_t n, int *length) {
    const uint8_t *p = (const uint8_t *)s;
    *length = 1;
    if (n == 0) return 0xFFFD;
    int expected = tm_utf8_sequence_length(p[0]);
    if (p[0] < 0x80) return p[0];
    if (expected == 1 || (size_t)expected > n) return 0xFFFD;
    uint32_t cp = p[0] & (0x7f >> expected);
    for (int i = 1; i < expected; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0xFFFD;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* reject overlong forms, surrogates and values past U+10FFFF */
    static const uint32_t minimum[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < minimum[expected] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0xFFFD;
    *length = expected;
    return cp;
}

int tm_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

uint8_t tm_unicode_flags(uint32_t cp) {
    uint8_t flags = is_white_space(cp) ? TM_UNICODE_WHITESPACE : 0;
    int low = 0, high = tm_unicode_range_count - 1;
    while (low <= high) {
        int mid = (low + high) / 2;
        if (cp < tm_unicode_ranges[mid].first) high = mid - 1;
        else if (cp > tm_unicode_ranges[mid].last) low = mid + 1;
        else return (uint8_t)(flags | tm_unicode_ranges[mid].flags);
    }
    return flags;
}
